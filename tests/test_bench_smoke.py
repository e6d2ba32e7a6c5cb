"""The in-process benchmark runs end to end on a tiny load and prints its numbers.

Numbers are never asserted (benchmarks do not gate CI); this only keeps the harness working."""

from __future__ import annotations

import pytest

from bench import ipam_apply, sched_apply
from statemachine import scheduler


def test_ipam_apply_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    ipam_apply.main(["--scenario", "throughput", "--repeats", "1", "--claims", "50"])
    ipam_apply.main(["--scenario", "fill", "--repeats", "1", "--window", "20"])
    ipam_apply.main(["--scenario", "big", "--big-claims", "200", "--big-sample", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# ") and "cores" in lines[0]
    printed = "\n".join(lines)
    for what in ("apply + store writes", "apply alone", "ratio 99 % / 1 %", "/64 claim cost", "/64 release cost"):
        assert what in printed, printed


def test_sched_apply_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    place = scheduler.place
    sched_apply.main(["--nodes", "20", "--pods", "5"])
    assert scheduler.place is place  # the timing wrapper is taken off again
    printed = capsys.readouterr().out
    for what in (
        "verified placement",
        "back to back",
        "apply alone",
        "scheduler.place",
        "in LMDB, 16 pods an entry",
        "fallback search",
        "plan_pod at the proposer",
    ):
        assert what in printed, printed
