"""Fault injectors (chaos/nemesis.py) on a real three-member cluster, and seeded schedules.

One partitionable cluster is shared by the fault tests (each starts by bringing every member
back). Each test injects one fault and checks that it really happened (a new leader among the
others; the old one steps down; the data directory is gone; the processes are gone) and that
the heal works: every member agrees on a leader, and all of them converge to one applied index
and digest. The schedule tests need no cluster. Waits poll with deadlines (chaos/cluster.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from chaos.checks import run_checks
from chaos.cluster import Cluster, Reply, Unreachable, wait_until
from chaos.history import FaultRecord, HistoryRecorder, Kind, Outcome, claim_key
from chaos.linearizability import pool_model
from chaos.nemesis import (
    ALL_KINDS,
    LEADER_KINDS,
    FaultKind,
    Nemesis,
    PlannedFault,
    parse_kinds,
    plan_schedule,
)
from chaos.observe import StatusPoller, collect_final_state

step_down_timeout_s = 10.0  # an isolated leader notices (leaderFallbackTimeout is 1 s)
write_timeout_s = 5.0
worker_attempt_s = 3.0  # one request of the schedule test's workload
worker_pause_s = 0.05  # after a refused connection


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster(partitionable=True) as running:
        reply = running.request(
            running.wait_for_leader(), "POST", "/v1/ippools", body={"name": "n", "spec": {"cidr": "10.9.0.0/16"}}
        )
        assert reply.status == 201, reply
        yield running


def claim_through(cluster: Cluster, member_id: str, name: str, timeout_s: float = write_timeout_s) -> int:
    """POST a claim to one member; its HTTP status (0 if it did not answer)."""
    try:
        reply = cluster.request(
            member_id,
            "POST",
            "/v1/ipclaims",
            token=cluster.tenant_tokens["acme/web"],
            body={"name": name, "spec": {"poolRef": "n"}},
            headers={"Idempotency-Key": f"nemesis-{name}"},
            timeout_s=timeout_s,
        )
    except Unreachable:
        return 0
    return reply.status


def planned(kind: FaultKind, pick: int = 0, hold_s: float = 0.0) -> PlannedFault:
    return PlannedFault(1, kind, 0.0, hold_s, pick)


def assert_healed(cluster: Cluster, record: FaultRecord) -> None:
    assert record.error is None, record
    assert record.healed_ns is not None and record.recovered_ns is not None, record
    assert record.injected_ns <= record.healed_ns <= record.recovered_ns
    converged = cluster.wait_converged(member_ids=cluster.member_ids)
    digests = {member_id: (cluster.status(member_id) or {}).get("digest") for member_id in cluster.member_ids}
    assert set(digests.values()) == {converged.digest}, digests


def follower_of(cluster: Cluster, leader: str) -> str:
    return next(member_id for member_id in cluster.member_ids if member_id != leader)


# ---- schedules ---------------------------------------------------------------------------------


def test_schedule_is_reproducible_from_the_seed() -> None:
    first = plan_schedule(42, 120.0)
    assert first == plan_schedule(42, 120.0)
    assert first == plan_schedule(42, 120.0, tuple(reversed(ALL_KINDS)))  # order of kinds does not matter
    assert first != plan_schedule(43, 120.0)
    assert sum(fault.quiet_s + fault.hold_s for fault in first) <= 120.0
    assert [fault.number for fault in first] == list(range(1, len(first) + 1))
    assert {fault.kind for fault in plan_schedule(7, 3600.0)} == set(ALL_KINDS)
    only = plan_schedule(5, 60.0, [FaultKind.PAUSE_LEADER])
    assert only and {fault.kind for fault in only} == {FaultKind.PAUSE_LEADER}
    assert plan_schedule(5, 1.0) == []  # no fault fits
    members = ["m3", "m1", "m2"]
    assert [planned(FaultKind.KILL_MEMBER, pick).member(members) for pick in range(4)] == ["m1", "m2", "m3", "m1"]


def test_fault_kinds_parse() -> None:
    assert parse_kinds("all") == ALL_KINDS
    assert parse_kinds("kill-leader, pause-leader") == (FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER)
    with pytest.raises(ValueError, match="unknown fault"):
        parse_kinds("kill-everything")


# ---- each fault on a real cluster ------------------------------------------------------------------


def test_partition_of_the_leader_elects_another_and_heals(cluster: Cluster) -> None:
    old = cluster.ensure_all_running()
    nemesis = Nemesis(cluster)
    active = nemesis.inject(planned(FaultKind.PARTITION_LEADER))
    assert active.members == (old,) and active.leader_before == old
    others = [member_id for member_id in cluster.member_ids if member_id != old]
    new = cluster.wait_for_leader(member_ids=others)
    assert new != old

    def stepped_down() -> dict[str, object] | None:
        status = cluster.status(old)
        return status if status is not None and status["role"] != "leader" else None

    wait_until(f"the isolated {old} to step down", stepped_down, step_down_timeout_s, on_timeout=cluster.describe)
    assert claim_through(cluster, new, "majority-side") == 201
    assert claim_through(cluster, old, "minority-side", timeout_s=3.0) not in (200, 201)
    record = nemesis.heal(active)
    assert_healed(cluster, record)
    assert record.leader_after in cluster.member_ids
    names = {item["metadata"]["name"] for item in cluster.list_all(old, "ipclaims")}
    assert "majority-side" in names  # the isolated member caught up after the heal


def test_partition_of_a_follower_keeps_the_leader(cluster: Cluster) -> None:
    leader = cluster.ensure_all_running()
    follower = follower_of(cluster, leader)
    nemesis = Nemesis(cluster)
    pick = sorted(cluster.member_ids).index(follower)
    active = nemesis.inject(planned(FaultKind.PARTITION_MEMBER, pick))
    assert active.members == (follower,)
    assert claim_through(cluster, leader, "while-follower-cut") == 201
    lagging = cluster.status(follower) or {}
    leading = cluster.status(leader) or {}
    assert lagging.get("appliedIndex", 0) < leading.get("appliedIndex", 0)  # it really is cut off
    assert_healed(cluster, nemesis.heal(active))


def test_pause_of_the_leader_elects_another_and_resumes(cluster: Cluster) -> None:
    old = cluster.ensure_all_running()
    nemesis = Nemesis(cluster)
    active = nemesis.inject(planned(FaultKind.PAUSE_LEADER))
    assert cluster.members[old].stopped
    new = cluster.wait_for_leader(member_ids=[member_id for member_id in cluster.member_ids if member_id != old])
    assert new != old
    assert claim_through(cluster, new, "while-paused") == 201
    record = nemesis.heal(active)
    assert not cluster.members[old].stopped
    assert_healed(cluster, record)


def test_kill_of_the_leader_restarts_it_with_its_data(cluster: Cluster) -> None:
    old = cluster.ensure_all_running()
    starts = cluster.members[old].starts
    nemesis = Nemesis(cluster)
    active = nemesis.inject(planned(FaultKind.KILL_LEADER))
    assert not cluster.members[old].running and cluster.members[old].exit_codes[-1] == -9
    new = cluster.wait_for_leader(member_ids=[member_id for member_id in cluster.member_ids if member_id != old])
    assert claim_through(cluster, new, "while-killed") == 201
    assert_healed(cluster, nemesis.heal(active))
    assert cluster.members[old].starts == starts + 1


def test_wipe_of_a_member_restarts_it_empty_and_it_catches_up(cluster: Cluster) -> None:
    leader = cluster.ensure_all_running()
    follower = follower_of(cluster, leader)
    nemesis = Nemesis(cluster)
    active = nemesis.inject(planned(FaultKind.WIPE_MEMBER, sorted(cluster.member_ids).index(follower)))
    assert active.members == (follower,)
    assert not cluster.members[follower].data_dir.exists()
    assert claim_through(cluster, leader, "while-wiped") == 201
    assert_healed(cluster, nemesis.heal(active))
    names = {item["metadata"]["name"] for item in cluster.list_all(follower, "ipclaims")}
    assert {"while-wiped", "majority-side"} <= names


def test_kill_of_every_member_restarts_them_all(cluster: Cluster) -> None:
    cluster.ensure_all_running()
    nemesis = Nemesis(cluster)
    active = nemesis.inject(planned(FaultKind.KILL_ALL))
    assert set(active.members) == set(cluster.member_ids)
    assert not any(member.running for member in cluster.members.values())
    assert_healed(cluster, nemesis.heal(active))
    leader = cluster.wait_for_leader()
    names = {item["metadata"]["name"] for item in cluster.list_all(leader, "ipclaims")}
    assert {"while-killed", "while-paused", "while-wiped"} <= names


@dataclass
class ClaimWorker:
    """A small workload for the schedule test: claims fresh names on a small pool and releases
    some, one attempt each on a rotating member, and records every operation as the chaos
    runner will (a 503 or a refused connection changed nothing; a 504, a timeout or a
    connection lost is unknown)."""

    cluster: Cluster
    recorder: HistoryRecorder
    pool: str
    stop: threading.Event = field(default_factory=threading.Event)
    held: list[str] = field(default_factory=list)
    count: int = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.count += 1
            member_id = self.cluster.member_ids[self.count % 3]
            if self.held and self.count % 3 == 0:
                self.release(member_id, self.held.pop(0))
            else:
                self.claim(member_id, f"{self.pool}-{self.count}")

    def attempt(self, op_id: int, member_id: str, method: str, path: str, body: dict[str, Any] | None) -> Reply | None:
        """One request; records a failure or an unknown outcome, returns the reply on success."""
        try:
            reply = self.cluster.request(
                member_id,
                method,
                path,
                token=self.cluster.tenant_tokens["acme/web"],
                body=body,
                headers={"Idempotency-Key": f"{self.pool}-op-{op_id}"},
                timeout_s=worker_attempt_s,
            )
        except Unreachable as exc:
            if isinstance(exc.__cause__, ConnectionRefusedError):
                self.recorder.fail(op_id, "connection_refused")  # nothing was sent: nothing happened
                self.stop.wait(worker_pause_s)  # nobody listens there: do not spin
            else:
                self.recorder.unknown(op_id, "no answer")
            return None
        if reply.status == 504:
            self.recorder.unknown(op_id, reply.code or "504")
            return None
        if not reply.ok:
            self.recorder.fail(op_id, reply.code or str(reply.status))
            return None
        return reply

    def claim(self, member_id: str, name: str) -> None:
        op_id = self.recorder.invoke(
            "w1",
            Kind.CLAIM,
            self.pool,
            claim=claim_key("acme", "web", "default", name),
            args={"prefixLength": 32},
            deadline_s=worker_attempt_s,
        )
        body = {"name": name, "spec": {"poolRef": self.pool, "prefixLength": 32}}
        reply = self.attempt(op_id, member_id, "POST", "/v1/ipclaims", body)
        if reply is not None:
            self.recorder.ok(
                op_id, {"cidr": reply.body["status"]["allocatedCIDR"], "uid": reply.body["metadata"]["uid"]}
            )
        if reply is not None or self.recorder.history_op(op_id).outcome is Outcome.UNKNOWN:
            self.held.append(name)  # an unknown claim may hold an address too: release it later

    def release(self, member_id: str, name: str) -> None:
        op_id = self.recorder.invoke(
            "w1", Kind.RELEASE, self.pool, claim=claim_key("acme", "web", "default", name), deadline_s=worker_attempt_s
        )
        if self.attempt(op_id, member_id, "DELETE", f"/v1/ipclaims/{name}", None) is not None:
            self.recorder.ok(op_id)
        elif self.recorder.history_op(op_id).code != "not_found":
            self.held.append(name)  # it may still be held: try again later


def test_a_seeded_schedule_runs_heals_and_is_observed(cluster: Cluster) -> None:
    """A short schedule of six kinds of fault under a small claim workload, with statuses
    sampled throughout; afterwards every check passes on what was recorded."""
    leader = cluster.ensure_all_running()
    pool_cidr = "10.8.0.0/26"
    assert cluster.request(leader, "POST", "/v1/ippools", body={"name": "w", "spec": {"cidr": pool_cidr}}).status == 201
    schedule = plan_schedule(
        0,  # a seed that draws six kinds of fault into nine seconds
        9.0,
        [kind for kind in ALL_KINDS if kind not in LEADER_KINDS or kind is FaultKind.PARTITION_LEADER],
        quiet_s_range=(0.1, 0.3),
        hold_s_ranges={kind: (0.5, 1.0) for kind in ALL_KINDS},
    )
    assert len({fault.kind for fault in schedule}) >= 6
    recorder = HistoryRecorder()
    nemesis = Nemesis(cluster, recorder)
    worker = ClaimWorker(cluster, recorder, "w")
    thread = threading.Thread(target=worker.run, name="claim-worker", daemon=True)
    started = time.monotonic()
    with StatusPoller(cluster, recorder, interval_s=0.05):
        thread.start()
        try:
            records = nemesis.run(schedule, threading.Event())
            healed = recorder.ops_count
            wait_until(
                "a write acknowledged after the last heal",
                lambda: any(op.outcome is Outcome.OK and op.is_write for op in recorder.history().ops[healed:]),
                30.0,
                on_timeout=cluster.describe,
            )
        finally:
            worker.stop.set()
            thread.join(worker_attempt_s + 5.0)
    assert [record.number for record in records] == [fault.number for fault in schedule]
    assert [record.kind for record in records] == [fault.kind.value for fault in schedule]
    for record in records:
        assert record.error is None, record
    assert time.monotonic() - started < 60.0
    history = recorder.history(final=collect_final_state(cluster))
    assert history.faults == records
    assert len(history.statuses) > 10
    outcomes = {outcome: sum(op.outcome is outcome for op in history.ops) for outcome in Outcome}
    assert outcomes[Outcome.OK] >= 20, outcomes
    results = run_checks(history, {"w": pool_model("w", pool_cidr)}, deadline_s=worker_attempt_s)
    for result in results:
        assert result.passed, result.report() + f"\n{outcomes}"


def test_a_member_that_dies_by_itself_is_recorded_and_faults_are_not(cluster: Cluster) -> None:
    """The faults above killed members many times: none of that counts as dying by itself. A
    process that exits on its own (here: killed behind the harness's back) does, once."""
    cluster.ensure_all_running()
    assert cluster.unexpected_exits == []
    victim = cluster.member_ids[1]
    process = cluster.members[victim].process
    assert process is not None
    os.kill(process.pid, signal.SIGKILL)
    wait_until(f"{victim} to exit", lambda: process.poll() is not None, 10.0)
    cluster.ensure_all_running()
    cluster.kill(victim)  # accounted for already: not recorded twice, and this kill is ours
    cluster.ensure_all_running()
    assert [(member, code) for member, code, _ in cluster.unexpected_exits] == [(victim, -signal.SIGKILL)]
