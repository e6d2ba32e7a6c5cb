"""The chaos runner end to end: a short seeded run of leader kills and a leader pause through
`python -m chaos` (the README's test command runs it; about a minute), and the runner's own
pieces: arguments, exit codes, the report."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from chaos import runner
from chaos.checks import CheckResult
from chaos.history import FaultRecord, History, HistoryRecorder, Kind
from chaos.nemesis import FaultKind, parse_kinds, plan_schedule
from tests.harness import member_pids_using

# Seed 1 draws a leader kill, a leader pause, then leader kills. Each fault also takes a few
# seconds to recover from, which the schedule leaves out: 50 s reach four or five faults, and
# at least three (two kills and the pause) however slowly the members recover.
SHORT_SEED = 1
SHORT_DURATION_S = 50.0
SHORT_FAULTS = "kill-leader,pause-leader"
run_timeout_s = 170.0  # the bound for the short run is three minutes


def test_the_short_run_schedule_has_leader_kills_and_a_pause() -> None:
    schedule = plan_schedule(SHORT_SEED, SHORT_DURATION_S, parse_kinds(SHORT_FAULTS))
    assert [fault.kind for fault in schedule[:4]] == [
        FaultKind.KILL_LEADER,
        FaultKind.PAUSE_LEADER,
        FaultKind.KILL_LEADER,
        FaultKind.KILL_LEADER,
    ]
    # The third fault is injected if the first three's quiet and hold times plus the first two
    # recoveries fit in the duration: with recoveries of up to 12 s each (3-4 s is usual).
    assert sum(fault.quiet_s + fault.hold_s for fault in schedule[:3]) + 2 * 12.0 < SHORT_DURATION_S


def test_a_short_seeded_run_passes_every_check(tmp_path: Path) -> None:
    history_file = tmp_path / "history.jsonl"
    command = [
        sys.executable,
        "-m",
        "chaos",
        "--duration",
        str(SHORT_DURATION_S),
        "--seed",
        str(SHORT_SEED),
        "--faults",
        SHORT_FAULTS,
        "--history",
        str(history_file),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=run_timeout_s, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == runner.EXIT_PASSED, output
    history = History.load(history_file)
    planned = plan_schedule(SHORT_SEED, SHORT_DURATION_S, parse_kinds(SHORT_FAULTS))
    injected = [fault.kind for fault in history.faults]
    assert len(injected) >= 3, output
    assert injected == [fault.kind.value for fault in planned[: len(injected)]], output  # the seed's schedule
    assert all(fault.error is None for fault in history.faults), output
    outcomes = Counter((op.kind, op.outcome.value) for op in history.ops)
    assert outcomes[(Kind.CLAIM, "ok")] >= 50, outcomes
    assert outcomes[(Kind.POD_CREATE, "ok")] >= 10, outcomes
    assert outcomes[(Kind.CLAIM, "fail")] >= 1, outcomes  # the small pool ran out at least once
    assert len(history.final) == 3
    for line in ("PASS         no address held by two claims at once", "PASSED:", "leader faults to the next"):
        assert line in output, output
    assert "FAIL " not in output and "INCONCLUSIVE" not in output, output
    patched = re.search(r"node label/taint patches: (\d+) acknowledged", output)
    assert patched is not None and int(patched.group(1)) >= 1, output  # the operator thread ran


def test_bad_arguments_exit_2_with_what_to_fix(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--duration", "0"]) == runner.EXIT_USAGE
    assert "--duration must be between 1 and" in capsys.readouterr().err
    assert runner.main(["--faults", "kill-leader,unplug"]) == runner.EXIT_USAGE
    assert "unknown fault 'unplug'" in capsys.readouterr().err
    assert runner.main(["--workers", "0"]) == runner.EXIT_USAGE
    assert runner.main(["--snapshot-entries", "10"]) == runner.EXIT_USAGE
    assert f"--snapshot-entries must be at least {runner.snapshot_entries_min}" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        runner.main(["--seed", "seven"])
    assert exited.value.code == runner.EXIT_USAGE


def _report(results: list[CheckResult], history: History) -> runner.ChaosReport:
    options = runner.ChaosOptions(duration_s=10.0, seed=4)
    return runner.ChaosReport(options, [], list(history.faults), history, results, 12.0, Path("h.jsonl"))


def test_exit_code_is_1_when_any_check_fails_or_is_inconclusive(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = HistoryRecorder().history()
    verdicts = {
        "pass": [CheckResult("a", True), CheckResult("b", True)],
        "fail": [CheckResult("a", True), CheckResult("b", False, ("#3 w1 claim k -> ok 10.0.0.1/32",))],
        "inconclusive": [CheckResult("a", True), CheckResult("b", False, ("budget spent",), inconclusive=True)],
    }
    for verdict, results in verdicts.items():
        monkeypatch.setattr(runner, "run_chaos", lambda options, results=results: _report(results, empty))
        code = runner.main(["--duration", "10"])
        output = capsys.readouterr().out
        assert code == (runner.EXIT_PASSED if verdict == "pass" else runner.EXIT_CHECK_FAILED), verdict
        assert ("PASSED:" in output) == (verdict == "pass"), output
    assert "#3 w1 claim k -> ok 10.0.0.1/32" not in output  # the inconclusive run's report
    assert "INCONCLUSIVE" in output and "budget spent" in output


def test_the_report_counts_outcomes_and_measures_failover() -> None:
    clock = iter(range(0, 10_000_000_000, 100_000_000))  # 0.1 s per reading
    recorder = HistoryRecorder(clock_ns=lambda: next(clock))
    first = recorder.invoke("c1", Kind.CLAIM, "small", claim="acme/web/default/a", key="k1")  # t=0.0
    recorder.ok(first, {"cidr": "10.77.0.1/32", "uid": "u1"})  # t=0.1
    fault_at_ns = 150_000_000
    second = recorder.invoke("c1", Kind.CLAIM, "small", claim="acme/web/default/b", key="k2")  # t=0.2
    recorder.fail(second, "no_leader")  # t=0.3
    third = recorder.invoke("c1", Kind.CLAIM, "small", claim="acme/web/default/c", key="k3")  # t=0.4
    recorder.unknown(third, "outcome_unknown")  # t=0.5
    fourth = recorder.invoke("c1", Kind.RELEASE, "small", claim="acme/web/default/a", key="k4")  # t=0.6
    recorder.ok(fourth)  # t=0.7
    recorder.record_fault(FaultRecord(1, "kill-leader", ("m1",), fault_at_ns, detail="SIGKILL m1 (the leader)"))
    history = recorder.history()
    [(record, seconds)] = runner.failover_times(history)
    assert record.number == 1 and seconds == pytest.approx(0.55)
    text = runner.render_report(_report([CheckResult("a", True)], history))
    assert "  claim            1 /      1 /      1" in text
    assert "  release          1 /      0 /      0" in text
    assert "failed by code: no_leader 1" in text
    assert "first acknowledged write after 0.55 s" in text
    assert "median 0.55 s, worst 0.55 s over 1" in text
    assert "PASSED: 1 of 1 checks passed" in text


def test_sigterm_stops_the_run_and_its_members() -> None:
    """A run killed from outside (a CI timeout) must not leave its members running."""
    command = [sys.executable, "-m", "chaos", "--duration", "60", "--faults", "pause-member"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert process.stdout is not None
        directory = None
        deadline = time.monotonic() + 60.0
        while directory is None and time.monotonic() < deadline:
            line = process.stdout.readline()  # the runner prints one line per step: no hang
            if not line:
                break
            if line.startswith("cluster up in "):
                directory = line.removeprefix("cluster up in ").split(" (")[0]
        assert directory is not None, "the run never said where its cluster is"
        assert member_pids_using(Path(directory)), "no member was running"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30.0) == runner.EXIT_INTERRUPTED
        assert member_pids_using(Path(directory)) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)
