"""The suite's report: markdown tables, the README headline, PNG charts.

Everything is rendered from the results file (docs/bench/suite.json), so running one scenario
again refreshes its tables and keeps the others. Text is written only between markers:
`<!-- bench:suite:begin -->` / `<!-- bench:suite:end -->` in docs/benchmarks.md and
`<!-- bench:headline:begin -->` / `<!-- bench:headline:end -->` inside README's "## Benchmarks"
section (appended where absent); nothing outside them changes. Charts need matplotlib (the
`bench` extra); without it they are skipped with a message.
"""

from __future__ import annotations

import os
import re
import statistics
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SUITE_BEGIN, SUITE_END = "<!-- bench:suite:begin -->", "<!-- bench:suite:end -->"
HEADLINE_BEGIN, HEADLINE_END = "<!-- bench:headline:begin -->", "<!-- bench:headline:end -->"
STORE_ORDER = ("allot", "etcd", "etcd-bitmap", "postgres")
COLOURS = {"allot": "#1f77b4", "etcd": "#2ca02c", "etcd-bitmap": "#98df8a", "postgres": "#d62728"}
SCHEDULER_TITLE = "Scheduler: pods created and bound (Allot only)"
FILL_TITLE = "Fill curve: claim latency as one pool fills, and refusals once it is full"
BIG_TITLE = "Big pools: /64 claims from an IPv6 /32, empty vs many live allocations"
ISSUE_BIG_ALLOCATIONS = 1_000_000
NODE_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b")
CLAIM_SCENARIOS = {
    "contended": "Contended claims: one pool",
    "spread": "Spread claims: 100 pools of 100 tenants",
}


def median_span(values: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def rate_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    middle, low, high = median_span(values)
    return f"{middle:,.0f} ({low:,.0f}..{high:,.0f})" if len(values) > 1 else f"{middle:,.0f}"


def ratio_cell(values: Sequence[float]) -> str:
    if not values:
        return "–"
    middle, low, high = median_span(values)
    return f"{middle:.2f} ({low:.2f}..{high:.2f})" if len(values) > 1 else f"{middle:.2f}"


def ms(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def latency_cell(runs: Sequence[dict[str, Any]], part: str = "claim") -> str:
    if not runs:
        return "–"
    medians = [statistics.median(run[part][key] for run in runs) for key in ("p50_ms", "p95_ms", "p99_ms")]
    return " / ".join(ms(value) for value in medians)


def ordered(stores: Sequence[str]) -> list[str]:
    return sorted(stores, key=lambda name: (STORE_ORDER.index(name) if name in STORE_ORDER else 99, name))


def stamp_lines(section: dict[str, Any]) -> list[str]:
    stamp = section.get("stamp", {})
    load = ", ".join(str(value) for value in stamp.get("load_average", []))
    if "load_average_end" in stamp:  # the store and the load generator raise it themselves on 2 cores
        load += f" at the start, {', '.join(str(value) for value in stamp['load_average_end'])} at the end"
    else:
        load += " at the start"
    return [
        f"Measured {stamp.get('date', '?')} on {stamp.get('machine', '?')} (load average {load}; "
        f"a 4 KiB append + fdatasync in the temporary directory takes {stamp.get('fdatasync_ms', '?')} ms), "
        f"with `{stamp.get('command', '?')}`.",
    ]


def store_lines(section: dict[str, Any]) -> list[str]:
    lines = []
    for name in ordered(list(section.get("stores", {}))):
        lines.append(f"- **{name}**: {section['stores'][name]}")
    for name, reason in sorted(section.get("skipped", {}).items()):
        lines.append(f"- **{name}**: not measured: {reason}")
    return lines


def rows_by(section: dict[str, Any], mode: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    found: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in section.get("rows", []):
        if row["mode"] == mode:
            found[(row["store"], int(row["concurrency"]))] = row["runs"]
    return found


def ratios(numerators: Sequence[dict[str, Any]], denominators: Sequence[dict[str, Any]]) -> list[float]:
    """Per-run ratios of claims/s (run i of one store against run i of the other: the same run)."""
    return [
        top["claims_per_s"] / bottom["claims_per_s"]
        for top, bottom in zip(numerators, denominators, strict=False)
        if bottom["claims_per_s"] > 0
    ]


def claims_section(key: str, section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    stores = ordered(list({row["store"] for row in section.get("rows", [])}))
    levels = sorted({int(row["concurrency"]) for row in section.get("rows", [])})
    pools = config.get("pools", 1)
    lines = [f"### {CLAIM_SCENARIOS[key]}", ""]
    lines += stamp_lines(section)
    lines += [
        "",
        f"Single-address claims from {pools} pool{'s' if pools != 1 else ''} (/{config.get('pool_prefix')} each, "
        f"a fresh pool per level), {config.get('seconds')} s per level, {config.get('runs')} run(s): "
        "median (min..max) of the runs; ratios are Allot's claims/s over the peer's in the same run.",
        "",
    ]
    if not stores:
        return [*lines, "No store was measured.", ""]
    peers = [name for name in stores if name != "allot"]
    for mode, title in (("claim", "claims/s"), ("churn", "claim+release pairs/s")):
        table = rows_by(section, mode)
        header = ["clients", *(f"{name} {title}" for name in stores)]
        if "allot" in stores:
            header += [f"allot ÷ {peer}" for peer in peers]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for level in levels:
            cells = [str(level)]
            cells += [rate_cell([run["claims_per_s"] for run in table.get((name, level), [])]) for name in stores]
            if "allot" in stores:
                mine = table.get(("allot", level), [])
                cells += [ratio_cell(ratios(mine, table.get((peer, level), []))) for peer in peers]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        part_titles = [("claim", "claim")] + ([("release", "release")] if mode == "churn" else [])
        for part, label in part_titles:
            header = ["clients", *(f"{name} {label} p50 / p95 / p99 ms" for name in stores)]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for level in levels:
                cells = [str(level)] + [latency_cell(table.get((name, level), []), part) for name in stores]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    errors = error_lines(section)
    if errors:
        lines += ["What the clients saw besides answers (summed over runs):", "", *errors, ""]
    return lines


def clients_saw(parts: Iterable[dict[str, Any]]) -> str:
    """The retries and failures recorded in `parts` (runs, or parts of runs), summed by reason:
    "retried: a 3, b 1; failed: c 2", or "" when there were none."""
    errors: Counter[str] = Counter()
    retries: Counter[str] = Counter()
    for part in parts:
        errors.update(part.get("errors", {}))
        retries.update(part.get("retries", {}))
    said = []
    if retries:
        said.append("retried: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(retries.items())))
    if errors:
        said.append("failed: " + ", ".join(f"{reason} {count:,}" for reason, count in sorted(errors.items())))
    return "; ".join(said)


def error_lines(section: dict[str, Any]) -> list[str]:
    lines = []
    for row in section.get("rows", []):
        said = clients_saw(row["runs"])
        if said:
            lines.append(f"- {row['store']}, {row['concurrency']} clients, {row['mode']}: {said}")
    return lines


CRASH_RESTART_NOTE = (
    "A crash-restart is not a failover: PostgreSQL here is one node with no replica, so it is back only "
    "when the same machine starts the same server again on the same disk (here at once, by the harness; in "
    "production, a supervisor or a person), and while it is down nothing answers. Allot and etcd keep "
    "serving from the two other members while the killed one is away: their time is an election, and it "
    "does not need the dead machine back."
)


def recovery_kind(name: str, entry: dict[str, Any]) -> str:
    return str(entry.get("kind") or ("crash-restart" if name == "postgres" else "leader failover"))


def is_crash_restart(name: str, entry: dict[str, Any]) -> bool:
    return recovery_kind(name, entry).startswith("crash-restart")


def seconds_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f} s"


def failover_section(section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    results = section.get("results", {})
    names = ordered(list(results))
    crashed = [name for name in names if is_crash_restart(name, results[name])]
    lines = [
        "### Failover: SIGKILL the leader under load" + ("; PostgreSQL: SIGKILL and crash-restart" if crashed else ""),
        "",
    ]
    lines += stamp_lines(section)
    lines += [
        "",
        f"{config.get('writers')} writers claim single addresses all the time, and a prober sends a new claim "
        f"every {config.get('probe_interval_ms', 20):g} ms whatever became of the earlier ones (so a request "
        "hanging on a member that lost its leader does not hide that the store recovered). Every request has "
        f"a {config.get('request_timeout_s', 2.0)} s timeout and is retried (same Idempotency-Key for Allot, "
        "the name check for etcd and PostgreSQL) on lost connections, timeouts and busy or leaderless members. "
        "For each kill the harness waits until every member runs, a leader is agreed and a claim was "
        "acknowledged, SIGKILLs the leader, and times the first acknowledged claim *sent after* the kill; then "
        "it restarts the killed member. Timeline: [failover.png](bench/failover.png).",
        "",
    ]
    if crashed:
        lines += [
            "PostgreSQL, one node, has no leader to fail over to; it is measured as a **crash-restart (single "
            "node, no replica)** under the same writers, prober and timeouts: the harness SIGKILLs the "
            "postmaster and every process it forked (backends, checkpointer, WAL writer...), starts the server "
            "again at once on the same data directory (crash recovery replays the WAL), and times the first "
            "acknowledged claim sent after the kill; the asyncpg pool reconnects as calls retry (each within a "
            f"30 s deadline). Before each kill the load runs for {config.get('crash_settle_s', 1.0):g} s after "
            "the previous recovery (Allot's and etcd's run while the killed member restarts). " + CRASH_RESTART_NOTE,
            "",
        ]
    lines += [
        "| store | what is killed, how it recovers | kills | median | worst | best | claims acknowledged "
        "| claims failed | retries seen by clients |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        entry = results[name]
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(entry["failed"].items())) or "0"
        retries = ", ".join(f"{reason} {count:,}" for reason, count in sorted(entry["retries"].items())) or "none"
        what = (
            "postmaster and backends; crash-restart (single node, no replica)"
            if is_crash_restart(name, entry)
            else "the leader; leader failover (three members)"
        )
        lines.append(
            f"| {name} | {what} | {len(entry['kills'])} | {entry['median_s']:.3f} s | {entry['worst_s']:.3f} s | "
            f"{entry['best_s']:.3f} s | {entry['acknowledged']:,} | {failed} | {retries} |"
        )
    lines.append("")
    for name in crashed:
        entry = results[name]
        if "accepting_median_s" in entry:
            redo = entry.get("redo_median_s")
            replay = (
                "the WAL replay it logged took "
                + (f"{redo:.2f} s" if redo else "under 0.01 s")
                + f" (median; worst {entry.get('redo_worst_s') or 0:.2f} s; PostgreSQL logs it to 0.01 s)"
                if redo is not None
                else "it logged no WAL replay time"
            )
            lines.append(
                f"{name}: the restarted server accepted connections {seconds_cell(entry['accepting_median_s'])} "
                f"after the kill (median; worst {seconds_cell(entry['accepting_worst_s'])}; as `pg_isready`, "
                f"polled every 50 ms, saw it); {replay}; the rest is the server starting and its end-of-recovery "
                "checkpoint. A client can be answered a little before `pg_isready` notices. The replay is short "
                "because each restart ends with a checkpoint and little WAL is written between kills: a server "
                "that ran long since its last checkpoint (`checkpoint_timeout` 5 min, `max_wal_size` 1 GB by "
                "default) has more to replay."
            )
            lines.append("")
    checks = check_lines(results)
    if checks:
        lines += checks
    earlier = earlier_lines(section)
    if earlier:
        lines += earlier
    return lines


def check_lines(results: dict[str, Any]) -> list[str]:
    """The read-back after the kills: acknowledged claims against what the store holds."""
    lines = []
    checked = [name for name in ordered(list(results)) if "check" in results[name]]
    for name in checked:
        check = results[name]["check"]
        verdict = "**none lost, none duplicated**" if check["ok"] else "**CLAIMS LOST OR DUPLICATED**"
        lost = f" (e.g. {', '.join(check['lost_examples'])})" if check["lost_examples"] else ""
        lines.append(
            f"- {name}: after the last kill the harness read back the pool: {check['rows']:,} rows for "
            f"{check['acknowledged']:,} acknowledged claims minus {check['released']:,} releases "
            f"(= {check['expected_rows']:,}): {verdict}; {check['lost']:,} acknowledged claims missing or moved"
            f"{lost}, {check['duplicated']:,} addresses held or acknowledged twice, {check['in_doubt']:,} rows "
            "committed whose answer never reached a client (a claim that failed, or was cut off when the "
            "writers stopped)."
        )
    if not lines:
        return []
    unchecked = [name for name in ordered(list(results)) if name not in checked]
    tail = (
        f" {' and '.join(unchecked)} {'is' if len(unchecked) == 1 else 'are'} not read back in this scenario "
        "(their allocators here have no read-back of a pool)."
        if unchecked
        else ""
    )
    return ["Nothing acknowledged lost, nothing given twice?" + tail, "", *lines, ""]


def kept_rows(section: dict[str, Any]) -> list[str]:
    """The stores whose failover row was kept from an earlier run (not measured in this one)."""
    results = section.get("results", {})
    measured = section.get("measured")
    return [] if measured is None else [name for name in ordered(list(results)) if name not in measured]


def earlier_lines(section: dict[str, Any]) -> list[str]:
    """Rows kept from an earlier run (a store not measured this time), each with its own stamp."""
    date = section.get("stamp", {}).get("date")
    lines = []
    for name in kept_rows(section):
        entry = section["results"][name]
        own = entry.get("stamp", {})
        why = section.get("skipped", {}).get(name, "not among --stores")
        load = ", ".join(str(value) for value in own.get("load_average", []))
        lines.append(
            f"- {name}: not measured in the run of {date}: {why}. Its row is from an earlier run, measured "
            f"{own.get('date', '?')} with `{own.get('command', '?')}` (load average {load} at the start, "
            f"{entry.get('config', {}).get('kills', len(entry['kills']))} kills)."
        )
    if not lines:
        return []
    return ["Rows from an earlier run:", "", *lines, ""]


def reads_section(section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    lines = ["### Reads (Allot)", ""]
    lines += stamp_lines(section)
    lines += [
        "",
        f"{config.get('claims')} claims in one pool; `get` reads one claim by name, `list` reads a page of "
        f"{config.get('list_limit')} claims; requests round-robin over the three members; "
        f"{config.get('seconds')} s per row, {config.get('runs')} run(s), median (min..max). Linearizable reads "
        "pass a read barrier first; stale reads answer from the member's own store.",
        "",
        "| read | consistency | clients | reads/s | p50 / p95 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in section.get("rows", []):
        runs = row["runs"]
        lines.append(
            f"| {row['op']} | {row['consistency']} | {row['concurrency']} | "
            f"{rate_cell([run['claims_per_s'] for run in runs])} | {latency_cell(runs)} |"
        )
    return [*lines, ""]


def scheduler_rows(section: dict[str, Any]) -> dict[tuple[int, int], list[dict[str, Any]]]:
    return {(int(row["nodes"]), int(row["concurrency"])): row["runs"] for row in section.get("rows", [])}


def scheduler_section(section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    reference = section.get("reference", {})
    capacity = config.get("node_capacity", {})
    requests = config.get("pod_requests", {})
    counts = [f"{count:,}" for count in config.get("nodes", [])]
    node_counts = " and ".join([", ".join(counts[:-1]), counts[-1]] if len(counts) > 1 else counts)
    lines = [f"### {SCHEDULER_TITLE}", ""]
    lines += stamp_lines(section)
    lines += [
        "",
        "**Allot only.** etcd and PostgreSQL have no scheduler: they store keys or rows and place no pods, so "
        "there is no peer figure in this table and no ratio. For scale, a reference rather than a comparison: "
        f"{reference.get('what', 'kube-scheduler CI')}, i.e. ≥ {reference.get('pods_per_s', 270)} pods/s at "
        f"{reference.get('nodes', 5000):,} nodes. That is another system on other machines (kube-scheduler "
        "binding pods created beforehand, in Kubernetes' CI), quoted for scale, not something measured here.",
        "",
        f"One fresh three-member cluster per run; {node_counts} nodes registered through `POST /v1/nodes` "
        f"({capacity.get('cpuMillis', 0) // 1000} cores, {capacity.get('memoryBytes', 0) >> 30} GiB, "
        f"{capacity.get('pods')} pods each; registration is not timed, and the nodes are added between the "
        "counts), then, at each concurrency, clients spread over the members create pods "
        f"({requests.get('cpuMillis')} millicores, {requests.get('memoryBytes', 0) >> 20} MiB, an Idempotency-Key "
        f"each) for {config.get('seconds')} s. A pod counts when `POST /v1/pods` answers 201 with the pod "
        "already bound (node and pod IP in the answer); latency is that create's, retries included. The node "
        "grace period is an hour (`ALLOT_NODE_GRACE_SECONDS`): no heartbeats are sent, placement is measured. "
        f"{config.get('runs')} run(s): median (min..max) of the runs; bound and Pending are summed over the runs. "
        "Chart: [scheduler.png](bench/scheduler.png). Same code as `python -m bench.http_pods` (bench/http_pods.py).",
        "",
        "| nodes | clients | pods/s created and bound | create p50 / p95 / p99 ms | bound | answered Pending |",
        "|---|---|---|---|---|---|",
    ]
    for (nodes, concurrency), runs in scheduler_rows(section).items():
        bound = sum(run["bound"] for run in runs)
        pending = sum(run["pending"] for run in runs)
        lines.append(
            f"| {nodes:,} | {concurrency} | {rate_cell([run['pods_per_s'] for run in runs])} | "
            f"{latency_cell(runs, 'create')} | {bound:,} | {pending:,} |"
        )
    registration = section.get("registration", [])
    if registration:
        spans = []
        previous = 0
        for entry in registration:
            middle, low, high = median_span(entry["seconds"])
            span = f" ({low:.1f}..{high:.1f})" if len(entry["seconds"]) > 1 else ""
            added = f"the first {entry['nodes']:,}" if not previous else f"{entry['nodes'] - previous:,} more"
            spans.append(f"{added}: {middle:.1f} s{span}")
            previous = entry["nodes"]
        lines += ["", "Registering the nodes (untimed, 32 clients, median of the runs): " + "; ".join(spans) + "."]
    problems = []
    for row in section.get("rows", []):
        said = clients_saw(row["runs"])
        if said:
            problems.append(f"- {row['nodes']:,} nodes, {row['concurrency']} clients: {said}")
    if problems:
        lines += ["", "What the clients saw besides answers (summed over runs):", "", *problems]
    return [*lines, ""]


def render_tables(results: dict[str, Any]) -> str:
    """The markdown between the suite markers of docs/benchmarks.md."""
    lines = [
        "## Side by side: Allot, etcd and PostgreSQL (`python -m bench`)",
        "",
        "Written by `python -m bench` (bench/suite.py) from docs/bench/suite.json; do not edit by hand. One load "
        "generator (asyncio, bench/loadgen.py) drives every store through the same allocator interface "
        "(`claim(pool) -> cidr`, `release`), so the only difference is the store. Everything (three Allot "
        "members, three etcd members, PostgreSQL, the load generator) shares this 2-core machine, which "
        "other engineers' test runs also used while these ran: absolute numbers are noisy, and the spread "
        "(min..max) says how much; compare stores by the ratios taken within a run. Each run starts every "
        "store fresh, one at a time, in a rotating order. Charts: [throughput](bench/throughput.png), "
        "[latency](bench/latency.png), [failover](bench/failover.png)"
        + (", [scheduler](bench/scheduler.png) (Allot only)" if "scheduler" in results else "")
        + (", [fill curve](bench/fill.png)." if "fill" in results else "."),
        "",
        "Durability is on everywhere (Allot and etcd sync their logs before acknowledging, PostgreSQL flushes its "
        "WAL at each commit), but this machine's disk acknowledges an fdatasync in well under a millisecond (the "
        "stamp of each table says how long): on a disk where a sync takes a millisecond or more, stores that "
        "sync once per transaction while holding a lock (PostgreSQL on one contended pool row) fall behind "
        "stores that sync a batch of proposals at once (Allot, etcd) more than they do here.",
        "",
    ]
    configs: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for key in ("contended", "spread", "failover", "fill"):
        configs.update(results.get(key, {}).get("stores", {}))
        for name, reason in results.get(key, {}).get("skipped", {}).items():
            if name not in configs:
                skipped.setdefault(name, reason)
    if configs:
        lines += ["How each store is configured (each the strongest fair way a user would build it):", ""]
        lines += store_lines({"stores": configs, "skipped": {k: v for k, v in skipped.items() if k not in configs}})
        lines.append("")
    for key in CLAIM_SCENARIOS:
        if key in results:
            lines += claims_section(key, results[key])
    if "failover" in results:
        lines += failover_section(results["failover"])
    if "reads" in results:
        lines += reads_section(results["reads"])
    if "scheduler" in results:
        lines += scheduler_section(results["scheduler"])
    if "fill" in results:
        lines += fill_section(results["fill"])
    if "big" in results:
        lines += big_section(results["big"])
    return "\n".join(lines).rstrip() + "\n"


def store_runs(section: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {row["store"]: row["runs"] for row in section.get("rows", [])}


def spread_ms(values: Sequence[float]) -> str:
    """A latency: median of the runs (min..max when there are several)."""
    if not values:
        return "–"
    middle, low, high = median_span(values)
    return f"{ms(middle)} ({ms(low)}..{ms(high)})" if len(values) > 1 else ms(middle)


def quantile_pair(entries: Sequence[dict[str, Any]]) -> str:
    """p50 / p99 ms, each the median of the runs (spread of the p50 when several)."""
    if not entries or not any(entry.get("claims", entry.get("count", 1)) for entry in entries):
        return "–"
    p99 = statistics.median(entry["p99_ms"] for entry in entries)
    return f"{spread_ms([entry['p50_ms'] for entry in entries])} / {ms(p99)}"


def problems_lines(section: dict[str, Any], what: str) -> list[str]:
    """Errors and retries the clients saw, summed over runs and phases, per store."""
    lines = []
    for name, runs in store_runs(section).items():
        said = clients_saw(part for run in runs for part in (run, run.get("empty", {}), run.get("full", {})))
        if said:
            lines.append(f"- {name}: {said}")
    return ["", f"What the clients saw besides answers ({what}, summed over runs):", "", *lines] if lines else []


def fill_section(section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    table = store_runs(section)
    stores = ordered(list(table))
    prefix = config.get("pool_prefix", 16)
    lines = [f"### {FILL_TITLE}", ""]
    lines += stamp_lines(section)
    lines += [
        "",
        f"One /{prefix} pool ({1 << (32 - prefix):,} addresses) per store, filled from empty to full by "
        f"{config.get('clients')} clients claiming single addresses through the allocator; each claim's "
        "latency is filed under the utilisation band the pool was in when the claim was sent (claims "
        "acknowledged before it), until the store refuses a claim because the pool is full. Then "
        f"{config.get('refusals')} more claims of the full pool, {config.get('clients')} at a time, each "
        "refused: the **exhaustion refusal latency**. Every allocator reports a full pool the same way "
        "(`PoolExhausted` in bench/loadgen.py): Allot answers 409 `pool_exhausted`; etcd (key per address) "
        "finds no free address in its hint, counts the pool's keys (`count_only` range) and refuses when "
        "every address has one (a careful client looks at the store before refusing: another client may "
        "have released one); etcd-bitmap finds no clear bit in the bitmap it holds and reads the key again "
        "before refusing; PostgreSQL's function walks from the pool's hint past the last address. "
        f"{config.get('runs')} run(s), each store fresh: p50 is the median of the runs (min..max), p99 the "
        "median of the runs' p99. Chart: [fill.png](bench/fill.png).",
        "",
    ]
    if not stores:
        return [*lines, "No store was measured.", ""]
    header = ["utilisation when sent", *(f"{name} p50 / p99 ms" for name in stores)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    bands = len(table[stores[0]][0]["bands"])
    for band in range(bands):
        first = table[stores[0]][0]["bands"][band]
        cells = [f"{first['from_pct']}–{first['to_pct']} %"]
        cells += [quantile_pair([run["bands"][band] for run in table[name]]) for name in stores]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**full: claim refused**"] + [quantile_pair([run["refused"] for run in table[name]]) for name in stores]
    lines += ["| " + " | ".join(cells) + " |", ""]
    header = ["store", "claims until refused", "fill time", "claims/s over the fill", "refusals timed"]
    header.append("last band p50 ÷ first band p50")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in stores:
        runs = table[name]
        ratios_ = [run["bands"][-1]["p50_ms"] / run["bands"][0]["p50_ms"] for run in runs if run["bands"][0]["p50_ms"]]
        times = [run["elapsed_s"] for run in runs]
        lines.append(
            f"| {name} | {statistics.median(run['claims'] for run in runs):,.0f} | "
            f"{statistics.median(times):.1f} s | {rate_cell([run['claims_per_s'] for run in runs])} | "
            f"{sum(run['refused']['count'] for run in runs):,} | {ratio_cell(ratios_)} |"
        )
    lines += problems_lines(section, "fill and refusals")
    return [*lines, ""]


def big_section(section: dict[str, Any]) -> list[str]:
    config = section.get("config", {})
    table = store_runs(section)
    stores = ordered(list(table))
    live = int(config.get("live", 0))
    lines = [f"### {BIG_TITLE}", ""]
    lines += stamp_lines(section)
    lines += [
        "",
        f"One {config.get('pool')} pool handing out /{config.get('claim_prefix')}s, per store. First "
        f"{config.get('sample')} claims and then their {config.get('sample')} releases, {config.get('clients')} "
        f"at a time, on the empty pool; then the pool is filled with {live:,} live /64s (not timed; the "
        f"fill time is given); then {config.get('sample')} claims and releases again. Ratio: p50 with "
        f"{live:,} live ÷ p50 on the empty pool, taken within a run. {config.get('runs')} run(s), each store "
        "fresh: median (min..max) of the runs. How each store is filled: Allot through its allocator "
        "(64 concurrent claims over HTTP: it has no bulk-load API); etcd and PostgreSQL by a bulk load of "
        "the same allocations their allocator would make (etcd: 128 compare-and-creates per transaction, the "
        "default `--max-txn-ops`, through the same client; PostgreSQL: one COPY of the rows under the pool "
        "row's lock, hint moved past them), because claiming them one by one would only lengthen the "
        "untimed part.",
        "",
    ]
    if live < ISSUE_BIG_ALLOCATIONS:
        allot_fill = [run["fill_s"] for run in table.get("allot", [])]
        estimate = (
            f" Scaled linearly from this run, the Allot fill alone would take about "
            f"{statistics.median(allot_fill) * ISSUE_BIG_ALLOCATIONS / live / 60:.0f} minutes on this machine "
            "(more if it slows as the store grows), per run."
            if allot_fill
            else ""
        )
        lines += [
            f"**The issue asks for {ISSUE_BIG_ALLOCATIONS:,} live allocations; this run used {live:,}**, to "
            "fit the time of a shared 2-core machine: the Allot fill goes through HTTP claims (~1,500–2,000/s "
            "when the machine is quiet, fewer when it is loaded: see the load average above). "
            f"`python -m bench --scenario big --big-allocations {ISSUE_BIG_ALLOCATIONS}` measures the issue's "
            "figure." + estimate,
            "",
        ]
    if not stores:
        return [*lines, "No store was measured.", ""]
    header = ["store", "fill (untimed)"]
    for part in ("claim", "release"):
        header += [f"{part} p50 / p99 ms, empty", f"{part} p50 / p99 ms, {live:,} live", f"{part} ratio"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in stores:
        runs = table[name]
        fill = f"{statistics.median(run['fill_s'] for run in runs):.0f} s, {runs[0]['fill_how']}"
        cells = [name, fill]
        for part in ("claim", "release"):
            cells += [
                quantile_pair([run["empty"][part] for run in runs]),
                quantile_pair([run["full"][part] for run in runs]),
                ratio_cell([run[f"{part}_ratio"] for run in runs]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    skipped = sorted(section.get("skipped", {}).items())
    if skipped:
        lines += ["", *(f"- **{name}**: not measured: {reason}" for name, reason in skipped)]
    lines += problems_lines(section, "timed claims and releases")
    return [*lines, ""]


def headline(results: dict[str, Any]) -> str:
    """The short table for README: contended claims and failover time per store."""
    contended = results.get("contended", {})
    table = rows_by(contended, "claim")
    stores = ordered(list({store for store, _ in table}))
    failover = results.get("failover", {}).get("results", {})
    levels = [level for level in (1, 64, 256) if any((store, level) in table for store in stores)]
    header = ["store", *(f"claims/s, {level} client{'s' if level > 1 else ''}" for level in levels)]
    header += ["p99 at 64 clients", "SIGKILL under load: back to acknowledged writes (median / worst)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for store in stores:
        cells = [store]
        for level in levels:
            runs = table.get((store, level), [])
            cells.append(f"{statistics.median(run['claims_per_s'] for run in runs):,.0f}" if runs else "–")
        runs64 = table.get((store, 64), [])
        cells.append(f"{statistics.median(run['claim']['p99_ms'] for run in runs64):.0f} ms" if runs64 else "–")
        if store in failover:
            entry = failover[store]
            kind = "crash-restart (single node, no replica)" if is_crash_restart(store, entry) else "leader failover"
            cells.append(f"{kind}: {entry['median_s']:.2f} s / {entry['worst_s']:.2f} s")
        elif store == "postgres":
            cells.append("not measured")
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    stamp = contended.get("stamp", {})
    intro = (
        f"Side by side on one 2-core machine (contended claims from one pool; `{stamp.get('command', '?')}`, "
        f"{stamp.get('date', '?')}; medians of runs, shared and noisy machine: the full report with spreads, "
        "churn, 100-pool spread, reads and how each peer is configured is in "
        "[docs/benchmarks.md](docs/benchmarks.md#side-by-side-allot-etcd-and-postgresql-python--m-bench)):"
    )
    scheduler = scheduler_headline(results.get("scheduler", {}))
    failover_words = failover_headline(results.get("failover", {}))
    install = (
        "The peers are optional: `apt-get install etcd-server postgresql` and `pip install -e '.[bench]'` "
        "(asyncpg, matplotlib); `python -m bench` skips a peer that is missing and says so."
    )
    return "\n".join([intro, "", *lines, "", *failover_words, *scheduler, install, ""])


def failover_headline(section: dict[str, Any]) -> list[str]:
    """A few sentences under the README table: where the last column comes from, and what a
    crash-restart is (and is not)."""
    results = section.get("results", {})
    if not results:
        return []
    stamp = section.get("stamp", {})
    words = (
        f"Last column: `{stamp.get('command', '?')}`, {stamp.get('date', '?')}: SIGKILL under load, "
        f"{section.get('config', {}).get('kills', '?')} times, time from the kill to the first acknowledged "
        "claim sent after it."
    )
    earlier = [f"{name}'s from {results[name].get('stamp', {}).get('date', '?')}" for name in kept_rows(section)]
    if earlier:
        words += f" Not re-run then, kept from earlier runs: {', '.join(earlier)}."
    if any(is_crash_restart(name, entry) for name, entry in results.items()):
        words += " " + CRASH_RESTART_NOTE
    return [words, ""]


def scheduler_headline(section: dict[str, Any]) -> list[str]:
    """One sentence for README: pods/s at the largest node count, at 64 clients (or the most measured)."""
    table = scheduler_rows(section)
    if not table:
        return []
    nodes = max(count for count, _ in table)
    levels = sorted(level for count, level in table if count == nodes)
    level = 64 if 64 in levels else levels[-1]
    runs = table[(nodes, level)]
    rate = statistics.median(run["pods_per_s"] for run in runs)
    p99 = statistics.median(run["create"]["p99_ms"] for run in runs)
    best = max(statistics.median(run["pods_per_s"] for run in table[(nodes, other)]) for other in levels)
    stamp = section.get("stamp", {})
    reference = section.get("reference", {}).get("pods_per_s", 270)
    return [
        f"Scheduler (Allot only: etcd and PostgreSQL have no scheduler): {rate:,.0f} pods/s created and bound at "
        f"{nodes:,} nodes with {level} clients (p99 {ms(p99)} ms; best of the concurrencies {best:,.0f} pods/s), "
        f"`{stamp.get('command', '?')}`, {stamp.get('date', '?')}. For reference only, not measured here: "
        f"kube-scheduler's CI expects ≥ {reference} pods/s at 5,000 nodes.",
        "",
    ]


def replace_region(text: str, begin: str, end: str, body: str) -> str:
    """The text with what lies between the markers replaced (markers appended at the end if absent)."""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def replace_in_section(text: str, heading: str, begin: str, end: str, body: str) -> str:
    """Like replace_region, but markers absent are put at the end of the section `heading`."""
    block = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), flags=re.DOTALL)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text, count=1)
    lines = text.split("\n")
    if heading not in lines:
        return text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    start = lines.index(heading)
    stop = next((index for index in range(start + 1, len(lines)) if lines[index].startswith("## ")), len(lines))
    while stop > start + 1 and not lines[stop - 1].strip():
        stop -= 1
    return "\n".join([*lines[:stop], "", block, *lines[stop:]])


def write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_all(
    results: dict[str, Any], *, report_md: Path | None, readme: Path | None, charts_dir: Path | None
) -> list[str]:
    """Write the report region, the README headline and the charts; returns what was done, for people."""
    done: list[str] = []
    if report_md is not None:
        original = report_md.read_text() if report_md.exists() else "# Benchmarks\n"
        write_text_atomically(report_md, replace_region(original, SUITE_BEGIN, SUITE_END, render_tables(results)))
        done.append(f"report: tables written between the suite markers of {report_md}")
    if readme is not None and "contended" in results and readme.exists():
        text = replace_in_section(readme.read_text(), "## Benchmarks", HEADLINE_BEGIN, HEADLINE_END, headline(results))
        write_text_atomically(readme, text)
        done.append(f"report: headline table written into the Benchmarks section of {readme}")
    if charts_dir is not None:
        done += write_charts(results, charts_dir)
    return done


# ---- charts -------------------------------------------------------------------------------------------


def write_charts(results: dict[str, Any], charts_dir: Path) -> list[str]:
    try:
        import matplotlib  # noqa: PLC0415 - optional (the bench extra)

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return ["charts: skipped, matplotlib is not installed (pip install 'allot[bench]')"]
    charts_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    claim_keys = [key for key in CLAIM_SCENARIOS if key in results]
    if claim_keys:
        figure, axes = plt.subplots(1, len(claim_keys), figsize=(6 * len(claim_keys), 4.2), squeeze=False)
        for axis, key in zip(axes[0], claim_keys, strict=True):
            table = rows_by(results[key], "claim")
            for store in ordered(list({store for store, _ in table})):
                levels = sorted(level for name, level in table if name == store)
                rates = [[run["claims_per_s"] for run in table[(store, level)]] for level in levels]
                middle = [statistics.median(values) for values in rates]
                low = [mid - min(values) for mid, values in zip(middle, rates, strict=True)]
                high = [max(values) - mid for mid, values in zip(middle, rates, strict=True)]
                axis.errorbar(
                    levels, middle, yerr=[low, high], marker="o", capsize=3, label=store, color=COLOURS.get(store)
                )
            axis.set_xscale("log", base=2)
            axis.set_xlabel("concurrent clients")
            axis.set_ylabel("claims/s (median, min..max)")
            axis.set_title(CLAIM_SCENARIOS[key])
            axis.grid(True, alpha=0.3)
            axis.legend()
        figure.suptitle(chart_stamp(results[claim_keys[0]]), fontsize=8)
        figure.tight_layout()
        figure.savefig(charts_dir / "throughput.png", dpi=110)
        plt.close(figure)
        written.append(f"charts: {charts_dir / 'throughput.png'}")

        section = results[claim_keys[0]]
        table = rows_by(section, "claim")
        levels = sorted({level for _, level in table})
        stores = ordered(list({store for store, _ in table}))
        figure, axes = plt.subplots(1, len(levels), figsize=(3.6 * len(levels), 4), squeeze=False, sharey=True)
        width = 0.8 / max(1, len(stores))
        for axis, level in zip(axes[0], levels, strict=True):
            for index, store in enumerate(stores):
                runs = table.get((store, level), [])
                if not runs:
                    continue
                values = [
                    statistics.median(run["claim"][key] for run in runs) for key in ("p50_ms", "p95_ms", "p99_ms")
                ]
                positions = [slot + index * width for slot in range(3)]
                axis.bar(positions, values, width, label=store, color=COLOURS.get(store))
            axis.set_xticks([slot + width * (len(stores) - 1) / 2 for slot in range(3)], ["p50", "p95", "p99"])
            axis.set_yscale("log")
            axis.set_title(f"{level} client{'s' if level > 1 else ''}")
            axis.grid(True, axis="y", alpha=0.3)
        axes[0][0].set_ylabel("claim latency, ms (median of runs)")
        handles, labels = axes[0][-1].get_legend_handles_labels()
        figure.legend(handles, labels, loc="lower center", ncol=len(stores), fontsize=8)
        figure.suptitle(f"{CLAIM_SCENARIOS[claim_keys[0]]}\n{chart_stamp(section)}", fontsize=8)
        figure.tight_layout(rect=(0, 0.06, 1, 1))
        figure.savefig(charts_dir / "latency.png", dpi=110)
        plt.close(figure)
        written.append(f"charts: {charts_dir / 'latency.png'}")

    if scheduler_rows(results.get("scheduler", {})):
        written.append(scheduler_chart(results["scheduler"], charts_dir, plt))
    if store_runs(results.get("fill", {})):
        written.append(fill_chart(results["fill"], charts_dir, plt))
    failover = results.get("failover", {}).get("results", {})
    if failover:
        names = ordered(list(failover))
        figure, axes = plt.subplots(len(names), 1, figsize=(11, 3.0 * len(names)), squeeze=False)
        for axis, name in zip(axes[:, 0], names, strict=True):
            entry = failover[name]
            bin_s = entry["timeline"]["bin_s"]
            acks = entry["timeline"]["acks"]
            axis.plot([index * bin_s for index in range(len(acks))], [count / bin_s for count in acks],
                      color=COLOURS.get(name), linewidth=0.8)  # fmt: skip
            for kill in entry["kills"]:
                axis.axvline(kill["at_s"], color="black", linestyle=":", linewidth=0.8)
                axis.axvspan(kill["at_s"], kill["at_s"] + kill["failover_s"], color="red", alpha=0.25)
            axis.set_ylabel("claims/s")
            what = (
                "crash-restarts: SIGKILL the postmaster and backends, restart on the same data "
                "(single node, no replica)"
                if is_crash_restart(name, entry)
                else "leader kills: leader failover (three members)"
            )
            date = entry.get("stamp", {}).get("date")
            axis.set_title(
                f"{name}: {len(entry['kills'])} {what}\nkills dotted, time to the first acknowledged claim red; "
                f"median {entry['median_s']:.2f} s, worst {entry['worst_s']:.2f} s" + (f"; {date}" if date else ""),
                fontsize=9,
            )
            axis.grid(True, alpha=0.3)
        axes[-1][0].set_xlabel("seconds since the writers started")
        figure.suptitle(chart_stamp(results["failover"]), fontsize=8)
        figure.tight_layout()
        figure.savefig(charts_dir / "failover.png", dpi=110)
        plt.close(figure)
        written.append(f"charts: {charts_dir / 'failover.png'}")
    return written


def scheduler_chart(section: dict[str, Any], charts_dir: Path, plt: Any) -> str:
    """pods/s against clients, one line per node count, and the kube-scheduler reference line."""
    table = scheduler_rows(section)
    figure, axis = plt.subplots(figsize=(7, 4.4))
    for index, nodes in enumerate(sorted({count for count, _ in table})):
        levels = sorted(level for count, level in table if count == nodes)
        rates = [[run["pods_per_s"] for run in table[(nodes, level)]] for level in levels]
        middle = [statistics.median(values) for values in rates]
        low = [mid - min(values) for mid, values in zip(middle, rates, strict=True)]
        high = [max(values) - mid for mid, values in zip(middle, rates, strict=True)]
        axis.errorbar(levels, middle, yerr=[low, high], marker="o", capsize=3, label=f"Allot, {nodes:,} nodes",
                      color=NODE_COLOURS[index % len(NODE_COLOURS)])  # fmt: skip
    reference = section.get("reference", {})
    if reference:
        axis.axhline(reference.get("pods_per_s", 270), color="grey", linestyle="--", linewidth=1,
                     label=f"kube-scheduler CI threshold at {reference.get('nodes', 5000):,} nodes "
                     "(reference, not measured here)")  # fmt: skip
    if len({level for _, level in table}) > 1:
        axis.set_xscale("log", base=2)
    axis.set_xlabel("concurrent clients")
    axis.set_ylabel("pods/s created and bound (median, min..max)")
    axis.set_ylim(bottom=0)
    axis.set_title(f"{SCHEDULER_TITLE}: etcd and PostgreSQL have no scheduler", fontsize=10)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.suptitle(chart_stamp(section), fontsize=8)
    figure.tight_layout()
    figure.savefig(charts_dir / "scheduler.png", dpi=110)
    plt.close(figure)
    return f"charts: {charts_dir / 'scheduler.png'}"


def fill_chart(section: dict[str, Any], charts_dir: Path, plt: Any) -> str:
    """Claim latency against utilisation, one line per store (p50 solid, p99 dotted), and the
    refusal latency of the full pool as a marker past 100 %."""
    table = store_runs(section)
    figure, axis = plt.subplots(figsize=(10, 4.6))
    for name in ordered(list(table)):
        runs = table[name]
        bands = runs[0]["bands"]
        middles = [(band["from_pct"] + band["to_pct"]) / 2 for band in bands]
        colour = COLOURS.get(name)
        for key, style, label in (("p50_ms", "-", "p50"), ("p99_ms", ":", "p99")):
            values = [statistics.median(run["bands"][index][key] for run in runs) for index in range(len(bands))]
            axis.plot(middles, values, style, marker="o" if key == "p50_ms" else None, color=colour,
                      label=f"{name} claim {label}")  # fmt: skip
        refused = [run["refused"] for run in runs if run["refused"]["count"]]
        if refused:
            axis.plot([108], [statistics.median(entry["p50_ms"] for entry in refused)], marker="X", markersize=9,
                      linestyle="none", color=colour, label=f"{name} refused (full), p50")  # fmt: skip
    axis.axvline(100, color="grey", linewidth=0.8)
    axis.set_yscale("log")
    axis.set_xlim(0, 112)
    axis.set_xticks([0, 20, 40, 60, 80, 100, 108], ["0", "20", "40", "60", "80", "100", "full"])
    axis.set_xlabel("pool utilisation when the claim was sent, % (band middles)")
    axis.set_ylabel("latency, ms (median of runs)")
    prefix = section.get("config", {}).get("pool_prefix", 16)
    axis.set_title(
        f"Fill curve: one /{prefix} filled by {section.get('config', {}).get('clients')} clients", fontsize=10
    )
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.suptitle(chart_stamp(section), fontsize=8)
    figure.tight_layout()
    figure.savefig(charts_dir / "fill.png", dpi=110)
    plt.close(figure)
    return f"charts: {charts_dir / 'fill.png'}"


def chart_stamp(section: dict[str, Any]) -> str:
    stamp = section.get("stamp", {})
    text = f"{stamp.get('date', '?')} · {stamp.get('machine', '?')} · {stamp.get('command', '?')}"
    return "\n".join(textwrap.wrap(text, 120))
