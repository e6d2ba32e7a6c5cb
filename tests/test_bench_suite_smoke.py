"""The side-by-side suite (`python -m bench`) runs tiny scenarios end to end and writes their report.

Allot only (no peers), a fraction of a second per level, everything written under tmp_path;
the failover read-back check, the merging of failover rows and the report of them on made-up
rows (no store). Numbers are never asserted (benchmarks do not gate CI); this keeps the harness from rotting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import report, suite
from bench.peers.postgres import redo_seconds


def test_suite_contended_scenario_writes_its_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_md = tmp_path / "benchmarks.md"
    report_md.write_text("# Benchmarks\n\nText the lead wrote.\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Allot\n\n## Benchmarks\n\nSome words.\n\n## Layout\n\nMore words.\n")
    out = tmp_path / "suite.json"
    argv = ["--scenario", "contended", "--stores", "allot", "--levels", "1,4", "--runs", "1", "--seconds", "0.3"]
    argv += ["--out", str(out), "--report", str(report_md), "--readme", str(readme), "--charts", str(tmp_path)]
    results = suite.main(argv, quiet=True)

    section = results["contended"]
    assert set(section["stamp"]) == {"date", "machine", "load_average", "load_average_end", "fdatasync_ms", "command"}
    assert "cores" in section["stamp"]["machine"] and section["stamp"]["command"].startswith("python -m bench")
    assert set(section["stores"]) == {"allot"}
    seen = {(row["store"], row["mode"], row["concurrency"]) for row in section["rows"]}
    assert seen == {("allot", mode, level) for mode in ("claim", "churn") for level in (1, 4)}
    for row in section["rows"]:
        (run,) = row["runs"]
        assert set(run["claim"]) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms"}
        assert ("release" in run) == (row["mode"] == "churn")
        assert run["claims"] >= 1 and not run["errors"], run
    assert out.exists()

    written = report_md.read_text()
    assert written.startswith("# Benchmarks\n\nText the lead wrote.\n")
    region = written[written.index(report.SUITE_BEGIN) : written.index(report.SUITE_END)]
    for what in ("### Contended claims: one pool", "| clients | allot claims/s |", "p50 / p95 / p99", "**allot**"):
        assert what in region, region
    headline_readme = readme.read_text()
    benchmarks = headline_readme[headline_readme.index("## Benchmarks") : headline_readme.index("## Layout")]
    assert "Some words." in benchmarks and report.HEADLINE_BEGIN in benchmarks and "| allot |" in benchmarks
    assert headline_readme.endswith("## Layout\n\nMore words.\n")
    assert "### Contended claims" in capsys.readouterr().out

    # Running again replaces the regions instead of adding to them.
    suite.main([*argv, "--levels", "1"], quiet=True)
    assert report_md.read_text().count(report.SUITE_BEGIN) == 1
    assert readme.read_text().count(report.HEADLINE_BEGIN) == 1


def test_suite_scheduler_scenario_keeps_the_other_sections(tmp_path: Path) -> None:
    """Scenario 7 (scheduler, Allot only) on 20 nodes; a section measured earlier stays in the report."""
    out = tmp_path / "suite.json"
    earlier_stamp = {"date": "2026-01-01 00:00 UTC", "machine": "m", "load_average": [0.0], "fdatasync_ms": 0.1}
    earlier = {
        "stamp": {**earlier_stamp, "command": "python -m bench --scenario reads"},
        "config": {"runs": 1, "seconds": 1.0, "claims": 10, "list_limit": 5, "levels": [1]},
        "stores": {"allot": "three members"},
        "skipped": {},
        "rows": [
            {
                "op": "get",
                "consistency": "stale",
                "concurrency": 1,
                "runs": [{"claims_per_s": 123.0, "claim": {"p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}}],
            }
        ],
    }
    out.write_text(json.dumps({"reads": earlier}))
    report_md = tmp_path / "benchmarks.md"
    report_md.write_text("# Benchmarks\n")
    argv = ["--scenario", "scheduler", "--stores", "allot,etcd,postgres", "--nodes", "8,20", "--levels", "1,4"]
    argv += ["--runs", "1", "--seconds", "0.5", "--out", str(out), "--report", str(report_md)]
    argv += ["--readme", str(tmp_path / "README.md"), "--charts", str(tmp_path)]
    results = suite.main(argv, quiet=True)

    section = results["scheduler"]
    assert section["stamp"]["command"].startswith("python -m bench --scenario scheduler")
    assert set(section["stores"]) == {"allot"}
    assert set(section["skipped"]) == {"etcd", "postgres"}
    assert [entry["nodes"] for entry in section["registration"]] == [8, 20]
    assert {(row["nodes"], row["concurrency"]) for row in section["rows"]} == {(8, 1), (8, 4), (20, 1), (20, 4)}
    for row in section["rows"]:
        (run,) = row["runs"]
        assert set(run["create"]) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms"}
        assert run["bound"] + run["pending"] >= 1 and not run["errors"], run
    assert results["reads"] == earlier  # not re-run, so kept as it was, with its own stamp

    written = report_md.read_text()
    region = written[written.index(report.SUITE_BEGIN) : written.index(report.SUITE_END)]
    assert f"### {report.SCHEDULER_TITLE}" in region
    assert "**Allot only.** etcd and PostgreSQL have no scheduler" in region and "270 pods/s" in region
    assert "| nodes | clients | pods/s created and bound |" in region and "| 20 | 4 |" in region
    assert "### Reads (Allot)" in region and "2026-01-01 00:00 UTC" in region
    assert "python -m bench --scenario reads" in region


def test_failover_read_back_check_counts_lost_duplicated_and_in_doubt() -> None:
    acknowledged = [("a", "10.0.0.0/32"), ("b", "10.0.0.1/32"), ("c", "10.0.0.2/32")]
    held = [("a", "10.0.0.0/32"), ("b", "10.0.0.1/32"), ("c", "10.0.0.2/32"), ("d", "10.0.0.3/32")]
    check = suite.check_claims(acknowledged, 0, held)
    assert check["ok"] and (check["rows"], check["expected_rows"], check["in_doubt"]) == (4, 3, 1)

    # "b" is gone, "c" moved to another address, which "d" holds too.
    check = suite.check_claims(acknowledged, 0, [("a", "10.0.0.0/32"), ("c", "10.0.0.9/32"), ("d", "10.0.0.9/32")])
    assert not check["ok"] and check["lost"] == 2 and check["lost_examples"] == ["b", "c"] and check["duplicated"] == 1

    # One address acknowledged to two names is a duplicate even if the store holds one row.
    check = suite.check_claims([*acknowledged, ("e", "10.0.0.0/32")], 0, held)
    assert not check["ok"] and check["duplicated"] == 1


def test_failover_merge_keeps_a_store_not_measured_with_its_own_stamp() -> None:
    """A failover run without etcd (not installed) keeps etcd's earlier row, dated, next to the new
    rows; PostgreSQL's crash-restart row is presented as such, not as a failover."""
    old_stamp = {"date": "2026-01-01 00:00 UTC", "machine": "m", "load_average": [1.0], "command": "python -m bench"}
    new_stamp = {**old_stamp, "date": "2026-02-02 00:00 UTC", "command": "python -m bench --scenario failover"}

    def row(kind: str | None, seconds: float) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "kills": [{"leader": "x", "at_s": 1.0, "failover_s": seconds}],
            "median_s": seconds,
            "worst_s": seconds,
            "best_s": seconds,
            "acknowledged": 10,
            "failed": {},
            "retries": {},
            "timeline": {"bin_s": 0.1, "acks": [1]},
        }
        if kind is not None:
            entry.update(kind=kind, stamp=new_stamp, config={"kills": 1})
        return entry

    previous = {
        "stamp": old_stamp,
        "config": {"kills": 20},
        "stores": {"allot": "three members", "etcd": "three etcd members"},
        "skipped": {"postgres": "single node: no failover to measure"},
        "results": {"allot": row(None, 0.5), "etcd": row(None, 0.4)},
    }
    postgres = {**row(suite.CRASH_RESTART, 1.2), "accepting_median_s": 1.1, "accepting_worst_s": 1.1}
    postgres.update(redo_median_s=0.0, redo_worst_s=0.01)
    postgres["check"] = suite.check_claims([("a", "10.0.0.0/32")], 0, [("a", "10.0.0.0/32")])
    current = {
        "config": {"kills": 1},
        "stores": {"allot": "three members", "postgres": "one node"},
        "skipped": {"etcd": "etcd is not installed"},
        "results": {"allot": row(suite.LEADER_FAILOVER, 0.3), "postgres": postgres},
    }
    merged = {**suite.merge_failover(previous, current), "stamp": new_stamp}
    assert merged["results"]["allot"]["median_s"] == 0.3  # measured again: replaced
    assert merged["results"]["etcd"]["stamp"] == old_stamp and merged["results"]["etcd"]["config"] == {"kills": 20}
    assert merged["stores"]["etcd"] == "three etcd members"
    assert suite.merge_failover(merged, {"results": {}})["results"]["etcd"]["stamp"] == old_stamp  # kept again

    text = "\n".join(report.failover_section(merged))
    assert "| etcd | the leader; leader failover (three members) | 1 | 0.400 s |" in text
    assert "| postgres | postmaster and backends; crash-restart (single node, no replica) | 1 | 1.200 s |" in text
    assert "A crash-restart is not a failover" in text and "**none lost, none duplicated**" in text
    assert "- etcd: not measured in the run of 2026-02-02 00:00 UTC: etcd is not installed." in text
    assert "measured 2026-01-01 00:00 UTC with `python -m bench`" in text and "- allot: not measured" not in text
    headline = report.headline({"contended": {}, "failover": merged})
    assert (
        "kept from earlier runs: etcd's from 2026-01-01 00:00 UTC." in headline
        and "A crash-restart is not a failover" in headline
    )


def test_postgres_log_replay_time() -> None:
    log = (
        "LOG:  redo starts at 0/1500790\n"
        "LOG:  redo done at 0/1661228 system usage: CPU: user: 0.00 s, system: 0.00 s, elapsed: 0.12 s\n"
    )
    assert redo_seconds(log) == 0.12
    assert redo_seconds("LOG:  redo is not required\n") is None


def test_suite_fill_and_big_scenarios_write_their_report(tmp_path: Path) -> None:
    """Scenarios 3 and 4 against Allot only: a /24 filled to exhaustion and refused, and /64 claims
    from an IPv6 /32 with 50 live; a section measured earlier (contended) stays."""
    out = tmp_path / "suite.json"
    report_md = tmp_path / "benchmarks.md"
    report_md.write_text("# Benchmarks\n")
    earlier = {"stamp": {"date": "2026-01-01 00:00 UTC", "command": "python -m bench"}, "rows": [], "stores": {}}
    out.write_text(json.dumps({"contended": earlier}))
    argv = ["--scenario", "fill", "--scenario", "big", "--stores", "allot", "--runs", "1"]
    argv += ["--fill-prefix", "24", "--big-allocations", "50", "--big-sample", "5", "--out", str(out)]
    argv += ["--report", str(report_md), "--readme", str(tmp_path / "README.md"), "--charts", str(tmp_path)]
    results = suite.main(argv, quiet=True)
    assert results["contended"] == earlier  # not re-run, kept

    fill = results["fill"]
    assert fill["stamp"]["command"].startswith("python -m bench --scenario fill")
    assert "load_average_end" in fill["stamp"]
    runs_by_store = {row["store"]: row["runs"] for row in fill["rows"]}
    (run,) = runs_by_store["allot"]
    assert run["size"] == 256 and run["claims"] == 256 and not run["errors"], run
    assert [band["from_pct"] for band in run["bands"]] == list(range(0, 100, 10))
    assert sum(band["claims"] for band in run["bands"]) == 256
    assert run["refused"]["count"] == suite.fill_refusals

    big = json.loads(out.read_text())["big"]
    assert big["config"]["live"] == 50 and big["config"]["claim_prefix"] == 64
    ((store, (entry,)),) = [(row["store"], row["runs"]) for row in big["rows"]]
    assert store == "allot" and entry["live"] == 50
    for phase in ("empty", "full"):
        assert entry[phase]["claims"] == 5 and entry[phase]["releases"] == 5 and not entry[phase]["errors"]
    assert entry["claim_ratio"] > 0 and entry["release_ratio"] > 0

    written = report_md.read_text()
    region = written[written.index(report.SUITE_BEGIN) : written.index(report.SUITE_END)]
    assert f"### {report.FILL_TITLE}" in region and "| 90–100 % |" in region and "**full: claim refused**" in region
    assert f"### {report.BIG_TITLE}" in region and "this run used 50**" in region
    assert "not repeated here" not in region
