"""The retry budget does not shrink with the number of members.

`RetryPolicy.attempts_max` is counted per member (rounds over the ring), so a call over three
members keeps trying as long as a call over one: long enough to ride out a whole-cluster restart
(every member killed and started again, as `allot up` does after a crash), and never past its
deadline. Counted across all members, 20 attempts over 3 members were under 7 rounds, about 2 s.

Sans-io throughout: `client.core.Call` is driven with explicit `now_s` values; nothing sleeps and
nothing touches a network.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from client import core
from client.core import Call, Done, Endpoint, EndpointRing, Failure, Pause, RequestFactory, RetryPolicy
from client.errors import AllotError, NoLeader, OutcomeUnknown, Unavailable

TOKEN = "t" * 40
connect_s = 0.001  # a refused connection returns at once
JITTER_DRAWS = (0.0, 0.5, 0.999999)  # the pause at its ceiling, in the middle, at its floor


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def members(count: int) -> list[Endpoint]:
    return [Endpoint("http", "127.0.0.1", 8401 + index) for index in range(count)]


def error_body(code: str, details: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": code, "details": details or {}}}).encode()


# What a member does with one attempt at a time: a transport failure, or an HTTP answer.
Outcome = Failure | tuple[int, bytes]
Cluster = Callable[[Endpoint, float], Outcome]


def refusing(_endpoint: Endpoint, _now_s: float) -> Outcome:
    return Failure.CONNECT


@dataclass
class Run:
    """How one call ended: when, with what, after which attempts and pauses."""

    ended_s: float = 0.0
    done: Done | None = None
    error: AllotError | None = None
    attempts: int = 0
    pauses: list[float] = field(default_factory=list)
    endpoints: list[Endpoint] = field(default_factory=list)


def drive(call: Call, cluster: Cluster, now_s: float = 0.0, steps_max: int = 100_000) -> Run:
    """The shells' loop (`Client._execute`) with a simulated clock instead of I/O and sleep."""
    run = Run()
    try:
        for _ in range(steps_max):
            attempt = call.next_attempt(now_s)
            run.endpoints.append(attempt.endpoint)
            outcome = cluster(attempt.endpoint, now_s)
            if isinstance(outcome, Failure):
                now_s += attempt.timeout_s if outcome is Failure.TIMEOUT else connect_s
                step: Pause | Done = call.failed(attempt, outcome, outcome.value, now_s)
            else:
                now_s += connect_s
                status, body = outcome
                step = call.answered(attempt, status, {}, body, now_s)
            if isinstance(step, Done):
                run.done = step
                break
            assert step.seconds >= 0
            run.pauses.append(step.seconds)
            now_s += step.seconds
        else:
            pytest.fail(f"the call neither ended nor gave up in {steps_max} steps")
    except AllotError as error:
        run.error = error
    run.ended_s, run.attempts = now_s, call.attempts
    return run


def read() -> core.Request:
    return RequestFactory(TOKEN).get(core.IPCLAIMS, "web-1")


def write() -> core.Request:
    return RequestFactory(TOKEN).create(core.IPCLAIMS, "web-1", {"poolRef": "edge"})


def call_over(count: int, request: core.Request, policy: RetryPolicy | None = None, draw: float = 0.5) -> Call:
    return Call(request, policy or RetryPolicy(), EndpointRing(members(count)), 0.0, FixedRandom(draw))


# ---- the budget is in rounds ---------------------------------------------------------------------


def test_the_attempt_budget_is_per_member() -> None:
    policy = RetryPolicy()
    assert policy.attempts_max == 20
    assert [policy.attempts_for(count) for count in (1, 3, 64)] == [20, 60, 1280]
    assert policy.attempts_for(0) == 20, "never less than one round"
    assert call_over(3, read()).attempts_max == 60


@pytest.mark.parametrize("draw", JITTER_DRAWS)
@pytest.mark.parametrize("make_request", [read, write], ids=["read", "write"])
def test_three_members_refusing_keep_trying_as_long_as_one(
    draw: float, make_request: Callable[[], core.Request]
) -> None:
    one = drive(call_over(1, make_request(), draw=draw), refusing)
    three = drive(call_over(3, make_request(), draw=draw), refusing)
    for run in (one, three):
        assert isinstance(run.error, Unavailable) and not isinstance(run.error, OutcomeUnknown)
        assert run.ended_s < RetryPolicy().deadline_s, "the attempt budget, not the deadline, ended it"
    assert (one.attempts, three.attempts) == (20, 60), "20 rounds each"
    assert three.error is not None and "60 attempts made" in three.error.message
    assert "the last 8 failures: " in three.error.message, "the quoted failures are not mistaken for all of them"
    # The same back-off, one pause per round: within a round the call moves on at once.
    assert [pause for pause in three.pauses if pause > 0] == [pause for pause in one.pauses if pause > 0]
    assert len(three.pauses) == 3 * len(one.pauses) + 2
    # So it gives up at the same time, give or take the extra refused connections (40 ms).
    assert three.ended_s == pytest.approx(one.ended_s, abs=(three.attempts - one.attempts) * connect_s + 1e-6)
    assert three.ended_s > 7.5, f"three members gave up after {three.ended_s:.2f} s: the budget shrank"


def test_more_members_never_mean_less_outage_tolerance() -> None:
    ended = {count: drive(call_over(count, read()), refusing).ended_s for count in (1, 2, 3, 5, 64)}
    assert all(ended[1] <= seconds < ended[1] + 1.5 for seconds in ended.values()), ended


# ---- a whole-cluster restart -------------------------------------------------------------------

killed_s = 0.0  # every member SIGKILLed
listening_s = 3.0  # restarted 1.5 s later; listening again after starting up
leader_s = 4.5  # an election later, there is a leader


def restarting_cluster(first_attempt_lost: bool) -> Cluster:
    """Refused connections until the members listen again, then no_leader until one is elected.
    With `first_attempt_lost`, the attempt in flight when the members died lost its connection."""
    lost = [first_attempt_lost]

    def member(_endpoint: Endpoint, now_s: float) -> Outcome:
        if lost[0]:
            lost[0] = False
            return Failure.LOST
        if now_s < listening_s:
            return Failure.CONNECT
        if now_s < leader_s:
            return 503, error_body("no_leader", {"retryAfterMillis": 100})
        return 201, b'{"ok": true}'

    return member


@pytest.mark.parametrize("draw", JITTER_DRAWS)
@pytest.mark.parametrize("count", [1, 3])
def test_a_read_rides_out_a_whole_cluster_restart(draw: float, count: int) -> None:
    run = drive(call_over(count, read(), draw=draw), restarting_cluster(first_attempt_lost=False))
    assert run.error is None and run.done is not None and run.done.value == {"ok": True}
    assert leader_s <= run.ended_s <= leader_s + 1.5, "back at most one pause after the leader is there"


@pytest.mark.parametrize("draw", JITTER_DRAWS)
@pytest.mark.parametrize("count", [1, 3])
def test_an_in_flight_write_rides_out_a_whole_cluster_restart(draw: float, count: int) -> None:
    request = write()
    call = call_over(count, request, draw=draw)
    run = drive(call, restarting_cluster(first_attempt_lost=True))
    assert run.error is None, f"gave up after {run.ended_s:.2f} s: {run.error}"
    assert run.done is not None and run.done.status == 201
    assert call.maybe_applied, "the lost attempt may have applied it: the retries carried its key"


# ---- the deadline still ends a call --------------------------------------------------------------


@pytest.mark.parametrize("draw", JITTER_DRAWS)
@pytest.mark.parametrize("count", [1, 3])
def test_the_deadline_still_ends_the_call(draw: float, count: int) -> None:
    policy = RetryPolicy(deadline_s=5.0)  # shorter than the 20 rounds take
    run = drive(call_over(count, read(), policy=policy, draw=draw), refusing)
    assert isinstance(run.error, Unavailable) and "deadline of 5 s" in run.error.message
    assert run.ended_s <= 5.0 + 1e-9, "never past the deadline"
    assert run.ended_s >= 5.0 - policy.backoff_max_s - policy.attempt_time_min_s - connect_s
    assert run.attempts < policy.attempts_for(count)


@pytest.mark.parametrize("count", [1, 3])
def test_a_write_that_may_have_applied_gives_outcome_unknown_at_the_deadline(count: int) -> None:
    request = write()
    policy = RetryPolicy(deadline_s=12.0, attempt_timeout_s=1.0)
    run = drive(call_over(count, request, policy=policy), lambda _endpoint, _now_s: Failure.TIMEOUT)
    assert isinstance(run.error, OutcomeUnknown) and run.error.idempotency_key == request.idempotency_key
    assert 12.0 - policy.backoff_max_s - policy.attempt_timeout_s <= run.ended_s <= 12.0 + 1e-9


def test_with_a_generous_budget_the_deadline_is_the_bound() -> None:
    policy = RetryPolicy(attempts_max=1000)  # the default 30 s deadline ends it first
    run = drive(call_over(3, read(), policy=policy), refusing)
    assert isinstance(run.error, Unavailable) and "deadline of 30 s" in run.error.message
    assert 30.0 - policy.backoff_max_s - policy.attempt_time_min_s - connect_s <= run.ended_s <= 30.0


def test_a_member_s_own_error_is_still_what_a_read_gets() -> None:
    def leaderless(_endpoint: Endpoint, _now_s: float) -> Outcome:
        return 503, error_body("no_leader", {"retryAfterMillis": 100})

    run = drive(call_over(3, read()), leaderless)
    assert isinstance(run.error, NoLeader) and run.attempts == 60
    assert all(pause >= 0.1 for pause in run.pauses if pause > 0), "the member's retry hint is honoured"


# ---- everything stays bounded -------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3, core.endpoints_max])
def test_attempts_and_pauses_stay_bounded_without_a_deadline(count: int) -> None:
    # No jitter floor (a pause may be ~0) and no deadline to speak of: the attempt cap ends it.
    policy = RetryPolicy(deadline_s=1e9, jitter=1.0)
    run = drive(call_over(count, read(), policy=policy, draw=0.999999), refusing)
    assert isinstance(run.error, Unavailable) and run.attempts == policy.attempts_for(count)
    assert f"{run.attempts} attempts made" in run.error.message
    assert all(0 <= pause <= max(policy.backoff_max_s, policy.retry_after_max_s) for pause in run.pauses)
    assert len(run.error.details["failures"]) <= core.failures_kept_max
    tried = collections.Counter(run.endpoints)
    assert set(tried) == set(members(count)) and set(tried.values()) == {policy.attempts_max}, "each member 20 times"
