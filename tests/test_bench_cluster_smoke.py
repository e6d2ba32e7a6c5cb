"""The cluster benchmarks run end to end on a tiny load and print every number they promise.

Numbers are never asserted (benchmarks do not gate CI); this only keeps the harnesses working.
Each starts its own three-member cluster on 127.0.0.1 and reaps it."""

from __future__ import annotations

import pytest

from bench import big_state, failover, http_pods, idle_log


def test_big_state_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    big_state.main(["--allocations", "300", "--timeout", "60", "--fill-timeout", "60"])
    printed = capsys.readouterr().out
    for what in ("fill ", "memory after fill", "restart ", "crash ", "full ", "rebuild ", "digest equal"):
        assert what in printed, printed


def test_failover_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    failover.main(["--kills", "1", "--timeout", "30"])
    printed = capsys.readouterr().out
    for what in ("kill  1: leader", "failover    1 kills: median", "writers "):
        assert what in printed, printed


def test_http_pods_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    http_pods.main(["--nodes", "20", "40", "--clients", "8", "--seconds", "1"])
    printed = capsys.readouterr().out
    for what in ("20 nodes (registered 20", "40 nodes (registered 20", "pods/s created and bound", "answered Pending"):
        assert what in printed, printed


def test_idle_log_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    idle_log.main(["--seconds", "10"])
    printed = capsys.readouterr().out
    for what in ("pod huge: Pending (0/1 nodes available: Insufficient cpu on 1 node)", "entries applied since"):
        assert what in printed, printed
    assert printed.rstrip().splitlines()[-1].split()[0] == "10", printed
