"""Multi-process tests of the replicated server: real `allot serve` processes on 127.0.0.1.

Most tests share one three-member cluster (module-scoped, distinct pool and claim names per
test); each begins by bringing every member back (`ensure_all_running`), so a failed test does
not leave the next one a broken cluster. A `ledger` remembers every write the cluster
acknowledged, and the full-restart test at the end checks all of them. The snapshot tests use a
second cluster that snapshots every 50 log entries.

Waits poll with deadlines (chaos/cluster.py); when one expires the failure carries each
member's status and log tail.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import itertools
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chaos.cluster import (
    REPO_ROOT,
    Cluster,
    Reply,
    Unreachable,
    child_environment,
    free_ports,
    http_request,
    open_watch,
    reap_process,
    register_process,
    serve_command,
    wait_until,
    write_secret,
)
from node import accelerate, config
from node import cli as node_cli
from node import cluster as node_cluster
from node.cluster import PlannedMember, Supervisor, member_command, plan, settled
from node.tokens import generate_token_file
from tests.harness import member_pids_using

ACME = "acme/web"
GLOBEX = "globex/prod"
RETRYABLE_STATUSES = frozenset({503, 504})
attempt_timeout_s = 3.0  # one write attempt; then the same Idempotency-Key goes to another member
write_deadline_s = 30.0  # one write, all attempts included
write_attempts_max = 1000  # one write: attempts across members (the deadline usually ends it first)
retry_pause_s_max = 0.2  # pause after trying every member once: 0.05 s, 0.1 s, ... up to this
failover_bound_s = 15.0  # kill to first acknowledged write; the design measures 0.2-0.8 s


# ---- shared state ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """A claim the cluster acknowledged (2xx), and what it said."""

    name: str
    cidr: str
    uid: str
    status: int
    member: str
    attempts: int
    attempt_started_s: float  # monotonic time the successful attempt was sent
    acked_s: float  # monotonic time its answer arrived


@dataclass
class Ledger:
    """Every claim the shared cluster acknowledged, by name: all must survive everything."""

    acks: dict[str, Ack] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ack: Ack) -> None:
        with self.lock:
            previous = self.acks.get(ack.name)
            assert previous is None or (previous.cidr, previous.uid) == (ack.cidr, ack.uid), (previous, ack)
            self.acks[ack.name] = ack


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture(scope="module")
def snapshot_cluster() -> Iterator[Cluster]:
    with Cluster(snapshot_entries=50) as running:
        yield running


@pytest.fixture(scope="module")
def snapshot_ledger() -> Ledger:
    return Ledger()


# ---- helpers -----------------------------------------------------------------------------------


def claim_body(name: str, pool: str, prefix_length: int) -> dict[str, Any]:
    return {"name": name, "spec": {"poolRef": pool, "prefixLength": prefix_length}}


def create_pool(cluster: Cluster, member_id: str, name: str, cidr: str) -> None:
    reply = write_with_retries(
        cluster, "/v1/ippools", {"name": name, "spec": {"cidr": cidr}}, f"pool-{name}", member_id
    )
    assert reply.status in (200, 201), reply


def write_with_retries(
    cluster: Cluster,
    path: str,
    body: dict[str, Any],
    key: str,
    first_member: str,
    *,
    token: str | None = None,
    deadline_s: float = write_deadline_s,
    attempts_out: list[tuple[str, float, float]] | None = None,
) -> Reply:
    """POST with an Idempotency-Key until an answer that is not 503/504/unreachable.

    Every retry goes to the next member with the same key: what the design promises is safe.
    `attempts_out` receives (member, sent, answered) monotonic times of every attempt."""
    members = cluster.member_ids
    position = members.index(first_member)
    deadline = time.monotonic() + deadline_s
    last: str = "no attempt"
    attempt = 0
    while time.monotonic() < deadline and attempt < write_attempts_max:
        member_id = members[(position + attempt) % len(members)]
        attempt += 1
        sent = time.monotonic()
        try:
            reply = cluster.request(
                member_id,
                "POST",
                path,
                token=token,
                body=body,
                headers={"Idempotency-Key": key},
                timeout_s=min(attempt_timeout_s, max(0.1, deadline - sent)),
            )
        except Unreachable as exc:
            last = str(exc)
            reply = None
        if attempts_out is not None:
            attempts_out.append((member_id, sent, time.monotonic()))
        if reply is not None:
            if reply.status not in RETRYABLE_STATUSES:
                return reply
            last = f"{reply.status} {reply.body}"
        if attempt % len(members) == 0:  # every member tried once: a back-off, not a wait for a condition
            time.sleep(min(retry_pause_s_max, 0.05 * (attempt // len(members))))
    raise AssertionError(
        f"POST {path} with key {key} got no answer in {attempt} attempts and {deadline_s:.0f} s; last: {last}"
    )


def create_claim(
    cluster: Cluster,
    ledger: Ledger | None,
    member_id: str,
    name: str,
    pool: str,
    prefix_length: int = 32,
    *,
    tenant: str = ACME,
) -> Ack:
    attempts: list[tuple[str, float, float]] = []
    reply = write_with_retries(
        cluster,
        "/v1/ipclaims",
        claim_body(name, pool, prefix_length),
        f"claim-{tenant.replace('/', '-')}-{name}",
        member_id,
        token=cluster.tenant_tokens[tenant],
        attempts_out=attempts,
    )
    assert reply.status in (200, 201), f"creating claim {name}: {reply.status} {reply.body}"
    member, sent, answered = attempts[-1]
    ack = Ack(
        name=name,
        cidr=reply.body["status"]["allocatedCIDR"],
        uid=reply.body["metadata"]["uid"],
        status=reply.status,
        member=member,
        attempts=len(attempts),
        attempt_started_s=sent,
        acked_s=answered,
    )
    if ledger is not None:
        ledger.record(ack)
    return ack


def claims_by_name(cluster: Cluster, member_id: str, *, tenant: str = ACME) -> dict[str, dict[str, Any]]:
    """Every claim of the tenant on one member (stale read: exactly what that member holds)."""
    items = cluster.list_all(member_id, "ipclaims", token=cluster.tenant_tokens[tenant])
    names = [item["metadata"]["name"] for item in items]
    assert len(names) == len(set(names)), f"{member_id} lists a claim twice: {sorted(names)}"
    return {item["metadata"]["name"]: item for item in items}


def assert_no_overlap(cidrs: list[str], where: str) -> None:
    networks = sorted(ipaddress.IPv4Network(cidr) for cidr in cidrs)
    for lower, upper in itertools.pairwise(networks):
        assert lower.broadcast_address < upper.network_address, f"{where}: {lower} and {upper} overlap"


def restart_all_and_check(cluster: Cluster, writers: WriterPool, ledger: Ledger) -> None:
    """Start every member again after kill_all, let the writers' retries finish, and check that
    every acknowledged write survived on all of them. The writers' retries fail (nothing is
    running) until the cluster is back."""
    for member_id in cluster.member_ids:
        cluster.start_member(member_id, wait=False)
    for member_id in cluster.member_ids:
        cluster.wait_member_up(member_id)
    writers.finish(timeout_s=write_deadline_s + 10)
    assert not writers.errors, writers.errors
    cluster.wait_for_leader()
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert_ledger_held(cluster, ledger, cluster.member_ids)


def assert_ledger_held(cluster: Cluster, ledger: Ledger, member_ids: list[str] | None = None) -> None:
    """Every acknowledged claim is on every given member, once, with the answer's CIDR and uid."""
    with ledger.lock:
        acks = dict(ledger.acks)
    for member_id in member_ids or cluster.running_ids():
        held = claims_by_name(cluster, member_id)
        missing = sorted(set(acks) - set(held))
        assert not missing, f"{member_id} lost {len(missing)} acknowledged claim(s): {missing[:20]}"
        for name, ack in acks.items():
            got = (held[name]["status"]["allocatedCIDR"], held[name]["metadata"]["uid"])
            assert got == (ack.cidr, ack.uid), f"{member_id}: claim {name} is {got}, was acknowledged as {ack}"
        assert_no_overlap([item["status"]["allocatedCIDR"] for item in held.values()], member_id)


def say(capsys: pytest.CaptureFixture[str], text: str) -> None:
    """Print past pytest's capture: numbers a reader of the run wants to see."""
    with capsys.disabled():
        print(f"\n[cluster] {text}", flush=True)


# ---- 1. a write through a follower is read from another member --------------------------------


def test_write_through_follower_read_from_another(cluster: Cluster, ledger: Ledger) -> None:
    leader = cluster.ensure_all_running()
    followers = [member_id for member_id in cluster.member_ids if member_id != leader]
    created = cluster.request(followers[0], "POST", "/v1/ippools", body={"name": "t1", "spec": {"cidr": "10.1.0.0/24"}})
    assert created.status == 201, created
    token = cluster.tenant_tokens[ACME]
    for number in range(10):
        writer, reader = followers[number % 2], followers[(number + 1) % 2]
        name = f"t1-{number}"
        reply = cluster.request(writer, "POST", "/v1/ipclaims", token=token, body=claim_body(name, "t1", 32))
        assert reply.status == 201, reply
        ledger.record(
            Ack(name, reply.body["status"]["allocatedCIDR"], reply.body["metadata"]["uid"], 201, writer, 1, 0, 0)
        )
        for member_id in (reader, leader):  # default consistency: linearizable
            got = cluster.request(member_id, "GET", f"/v1/ipclaims/{name}", token=token)
            assert got.status == 200, (member_id, got)
            assert got.headers.get("X-Allot-Consistency") == "linearizable"
            assert got.body == reply.body, (member_id, got.body, reply.body)
        listed = cluster.request(reader, "GET", "/v1/ipclaims", token=token)
        assert name in {item["metadata"]["name"] for item in listed.body["items"]}
    pool = cluster.request(followers[1], "GET", "/v1/ippools/t1")
    assert pool.body["status"]["capacity"]["allocated"] == 10


# ---- 2. SIGKILL the leader while writes are in flight -----------------------------------------


@dataclass
class WriterPool:
    """Threads creating claims as fast as they can, each retrying across members with its key."""

    cluster: Cluster
    ledger: Ledger
    pool: str
    threads_count: int
    stop: threading.Event = field(default_factory=threading.Event)
    acks: list[Ack] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for number in range(self.threads_count):
            thread = threading.Thread(target=self._run, args=(number,), name=f"writer-{number}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _run(self, number: int) -> None:
        members = self.cluster.member_ids
        count = 0
        while not self.stop.is_set():
            name = f"{self.pool}-w{number}-{count}"
            prefix_length = (32, 30, 29, 31)[count % 4]
            try:
                ack = create_claim(
                    self.cluster,
                    self.ledger,
                    members[(number + count) % len(members)],
                    name,
                    self.pool,
                    prefix_length,
                )
            except AssertionError as exc:
                with self.lock:
                    self.errors.append(str(exc))
                return
            with self.lock:
                self.acks.append(ack)
            count += 1

    def acked(self, since_s: float | None = None) -> int:
        with self.lock:
            return sum(1 for ack in self.acks if since_s is None or ack.attempt_started_s >= since_s)

    def finish(self, timeout_s: float) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [thread.name for thread in self.threads if thread.is_alive()]
        assert not alive, f"writer threads still running after {timeout_s:.0f} s: {alive}"


def test_leader_killed_during_writes(cluster: Cluster, ledger: Ledger, capsys: pytest.CaptureFixture[str]) -> None:
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "t2", "10.2.0.0/16")
    writers = WriterPool(cluster, ledger, "t2", threads_count=6)
    writers.start()
    try:
        wait_until("30 acknowledged writes before the kill", lambda: writers.acked() >= 30 or None, 30.0)
        assert cluster.leader() == leader, "the leader changed before the kill"
        killed_s = time.monotonic()
        cluster.kill(leader)
        wait_until(
            "30 acknowledged writes sent after the kill",
            lambda: writers.acked(since_s=killed_s) >= 30 or None,
            40.0,
            on_timeout=cluster.describe,
        )
    finally:
        writers.finish(timeout_s=write_deadline_s + 10)
    assert not writers.errors, writers.errors
    after_kill = [ack for ack in writers.acks if ack.attempt_started_s >= killed_s]
    failover_s = min(ack.acked_s for ack in after_kill) - killed_s
    retried = sum(1 for ack in writers.acks if ack.attempts > 1)
    say(
        capsys,
        f"failover: leader {leader} SIGKILLed; first write sent after the kill acknowledged {failover_s:.3f} s "
        f"after it ({len(writers.acks)} writes acknowledged, {retried} needed retries)",
    )
    assert failover_s < failover_bound_s

    survivors = cluster.running_ids()
    assert leader not in survivors and len(survivors) == 2
    converged = cluster.wait_converged(member_ids=survivors)
    acked = {ack.name: ack for ack in writers.acks}
    for member_id in survivors:
        held = {name: item for name, item in claims_by_name(cluster, member_id).items() if name.startswith("t2-")}
        missing = sorted(set(acked) - set(held))
        assert not missing, f"{member_id} lost acknowledged claims: {missing}"
        for name, ack in acked.items():
            assert held[name]["status"]["allocatedCIDR"] == ack.cidr, (member_id, name, held[name], ack)
            assert held[name]["metadata"]["uid"] == ack.uid, (member_id, name)
        cidrs = [item["status"]["allocatedCIDR"] for item in held.values()]
        assert_no_overlap(cidrs, member_id)
        allocations = {
            item["metadata"]["name"]: item["spec"]["cidr"]
            for item in cluster.list_all(member_id, "ipallocations", token=cluster.tenant_tokens[ACME])
            if item["metadata"]["name"].startswith("t2-")
        }
        assert allocations == {name: item["status"]["allocatedCIDR"] for name, item in held.items()}, member_id
        pool = cluster.request(member_id, "GET", "/v1/ippools/t2", params={"consistency": "stale"}).body
        assert pool["status"]["capacity"]["allocated"] == sum(ipaddress.ip_network(c).num_addresses for c in cidrs)
    assert converged.applied_index > 0


# ---- 3. the killed member restarts and catches up -----------------------------------------------


def test_restarted_member_catches_up(cluster: Cluster, ledger: Ledger) -> None:
    down = [member_id for member_id, member in cluster.members.items() if not member.running]
    if not down:  # run alone: make a member miss some writes first
        leader = cluster.ensure_all_running()
        down = [next(member_id for member_id in cluster.member_ids if member_id != leader)]
        cluster.kill(down[0])
        create_pool(cluster, leader, "t3", "10.3.0.0/24")
        for number in range(20):
            create_claim(cluster, ledger, leader, f"t3-{number}", "t3")
    before = cluster.wait_converged()
    for member_id in down:
        cluster.restart(member_id)
    cluster.wait_for_leader()
    after = cluster.wait_converged(member_ids=cluster.member_ids)
    assert after.applied_index >= before.applied_index
    if after.applied_index == before.applied_index:  # nothing new was committed: the same state
        assert after.digest == before.digest
    assert_ledger_held(cluster, ledger, down)


# ---- 6. a resumed watch sees every event exactly once --------------------------------------------


def test_watch_resumes_exactly_once(cluster: Cluster, ledger: Ledger) -> None:
    leader = cluster.ensure_all_running()
    others = [member_id for member_id in cluster.member_ids if member_id != leader]
    pool = cluster.request(leader, "POST", "/v1/ippools", body={"name": "t6", "spec": {"cidr": "10.6.0.0/24"}})
    assert pool.status == 201, pool
    start_revision = int(pool.headers["X-Allot-Revision"])
    token = cluster.tenant_tokens[ACME]
    expected: list[tuple[str, str, int]] = []  # (type, name, revision) in the order acknowledged
    writer_errors: list[str] = []

    def write() -> None:
        try:
            for number in range(40):
                name = f"t6-{number}"
                reply = cluster.request(leader, "POST", "/v1/ipclaims", token=token, body=claim_body(name, "t6", 32))
                assert reply.status == 201, reply
                expected.append(("ADDED", name, int(reply.headers["X-Allot-Revision"])))
                if number % 3 == 0:
                    gone = cluster.request(leader, "DELETE", f"/v1/ipclaims/{name}", token=token)
                    assert gone.status == 200, gone
                    expected.append(("DELETED", name, int(gone.headers["X-Allot-Revision"])))
        except (AssertionError, Unreachable) as exc:
            writer_errors.append(str(exc))

    writer = threading.Thread(target=write, name="t6-writer", daemon=True)
    writer.start()
    seen: list[tuple[str, str, int]] = []
    resume_from = start_revision
    reconnects = 0
    deadline = time.monotonic() + 30.0
    try:
        # Connect, read a few events, drop the connection; resume from the last revision seen,
        # on the next member each time, until every write's event has arrived.
        while time.monotonic() < deadline:
            member_id = others[reconnects % len(others)] if reconnects % 3 else leader
            reconnects += 1
            with open_watch(cluster.address(member_id), token, kinds="ipclaims", resource_version=resume_from) as watch:
                assert watch.status == 200, watch.status
                for _ in range(7):
                    line = watch.next_line(timeout_s=max(0.1, min(2.0, deadline - time.monotonic())))
                    if line is None:
                        break
                    if line["type"] == "BOOKMARK":
                        continue
                    assert line["type"] in ("ADDED", "MODIFIED", "DELETED"), line
                    metadata = line["object"]["metadata"]
                    revision = int(metadata["resourceVersion"])
                    assert revision > resume_from, f"event at {revision} after resuming from {resume_from}: {line}"
                    resume_from = revision
                    seen.append((line["type"], metadata["name"], revision))
            if not writer.is_alive() and len(seen) >= len(expected):
                break
    finally:
        writer.join(30.0)
    assert not writer_errors, writer_errors
    assert not writer.is_alive()
    assert reconnects > 3, "the watch never had to resume"
    assert seen == expected, f"watch saw {len(seen)} events, expected {len(expected)}:\n{seen}\n{expected}"
    for _, name, _ in expected:
        if name not in {deleted for kind, deleted, _ in expected if kind == "DELETED"}:
            ack = cluster.request(leader, "GET", f"/v1/ipclaims/{name}", token=token).body
            ledger.record(Ack(name, ack["status"]["allocatedCIDR"], ack["metadata"]["uid"], 201, leader, 1, 0, 0))


# ---- 7. no stale read at default consistency ---------------------------------------------------


def read_claim(cluster: Cluster, member_id: str, name: str, timeout_s: float = 5.0) -> Reply | None:
    """GET a claim at default consistency; None when the member does not answer."""
    try:
        return cluster.request(
            member_id, "GET", f"/v1/ipclaims/{name}", token=cluster.tenant_tokens[ACME], timeout_s=timeout_s
        )
    except Unreachable:
        return None


def assert_not_stale(reply: Reply | None, ack: Ack, where: str) -> None:
    """After `ack`, a read may fail (no answer, 503, 504) but must never miss the write."""
    if reply is None or reply.status in RETRYABLE_STATUSES:
        return
    assert reply.status == 200, (
        f"STALE READ from {where}: {reply.status} {reply.body} after {ack.name} was acknowledged"
    )
    assert reply.body["metadata"]["uid"] == ack.uid, (where, reply.body, ack)


def test_no_stale_read_after_leader_killed(cluster: Cluster, ledger: Ledger) -> None:
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "t7", "10.7.0.0/24")
    create_claim(cluster, ledger, leader, "t7-kill-a", "t7")  # A
    cluster.kill(leader)
    survivors = cluster.running_ids()
    b = create_claim(cluster, ledger, survivors[0], "t7-kill-b", "t7")  # B, once some leader takes it
    for _ in range(5):
        for member_id in survivors:
            reply = read_claim(cluster, member_id, "t7-kill-b")
            assert_not_stale(reply, b, member_id)
            assert reply is not None and reply.status == 200, (member_id, reply)  # a leader exists: must answer
    cluster.restart(leader)
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert_not_stale(read_claim(cluster, leader, "t7-kill-b"), b, f"{leader} after restart")


def outcome(reply: Reply | None) -> str:
    return "no answer" if reply is None else f"{reply.status} {reply.code}".strip()


def test_no_stale_read_from_stopped_leader(
    cluster: Cluster, ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    leader = cluster.ensure_all_running()
    others = [member_id for member_id in cluster.member_ids if member_id != leader]
    create_pool(cluster, leader, "t7", "10.7.0.0/24")
    create_claim(cluster, ledger, leader, "t7-stop-a", "t7")  # A
    outcomes: dict[str, list[str]] = {"while stopped": [], "queued while stopped": [], "after SIGCONT": []}
    cluster.stop(leader)
    try:
        new_leader = cluster.wait_for_leader(member_ids=others)
        b = create_claim(cluster, ledger, new_leader, "t7-stop-b", "t7")  # B
        for member_id in others:
            reply = read_claim(cluster, member_id, "t7-stop-b")
            assert reply is not None and reply.status == 200, (member_id, reply)
            assert_not_stale(reply, b, member_id)
        # Reads sent to the frozen old leader after B was acknowledged: they wait in its socket
        # backlog and are answered when it wakes up, still believing it leads for a moment.
        results: queue.Queue[Reply | None] = queue.Queue()
        readers = [
            threading.Thread(
                target=lambda: results.put(read_claim(cluster, leader, "t7-stop-b", timeout_s=20.0)), daemon=True
            )
            for _ in range(3)
        ]
        for thread in readers:
            thread.start()
        # A read that cannot be answered while frozen: no answer within a short timeout is right.
        reply = read_claim(cluster, leader, "t7-stop-b", timeout_s=1.0)
        outcomes["while stopped"].append(outcome(reply))
        assert_not_stale(reply, b, f"{leader} while stopped")
    finally:
        cluster.cont(leader)
    # Right after waking up, before it hears about the new term or just after.
    woke_s = time.monotonic()
    while time.monotonic() - woke_s < 2.0:
        reply = read_claim(cluster, leader, "t7-stop-b", timeout_s=5.0)
        outcomes["after SIGCONT"].append(outcome(reply))
        assert_not_stale(reply, b, f"{leader} after SIGCONT")
    for thread in readers:
        thread.join(25.0)
        assert not thread.is_alive()
    while not results.empty():
        reply = results.get()
        outcomes["queued while stopped"].append(outcome(reply))
        assert_not_stale(reply, b, f"{leader} (read sent while stopped)")
    say(
        capsys,
        f"reads of the SIGSTOPped old leader {leader}: "
        + "; ".join(f"{when}: {dict(collections.Counter(seen))}" for when, seen in outcomes.items()),
    )
    cluster.wait_for_leader(member_ids=cluster.member_ids)
    cluster.wait_converged(member_ids=cluster.member_ids)
    reply = read_claim(cluster, leader, "t7-stop-b")
    assert reply is not None and reply.status == 200, reply
    assert_not_stale(reply, b, f"{leader} after rejoining")


# ---- 8. authentication, tenancy and bad bodies against the real cluster -------------------------


def test_auth_tenancy_and_malformed_bodies(cluster: Cluster) -> None:
    leader = cluster.ensure_all_running()
    follower = next(member_id for member_id in cluster.member_ids if member_id != leader)
    create_pool(cluster, leader, "t8", "10.8.0.0/24")
    acme, globex = cluster.tenant_tokens[ACME], cluster.tenant_tokens[GLOBEX]

    def error(reply: Reply, status: int, code: str) -> None:
        assert reply.status == status, reply
        assert set(reply.body) == {"error"}, reply.body
        assert set(reply.body["error"]) == {"code", "message", "details"}, reply.body
        assert reply.body["error"]["code"] == code, reply.body
        assert reply.body["error"]["message"], reply.body

    wrong = "wrong-token-0123456789abcdefghijklmnopqrstuvwxyz"
    for member_id in cluster.member_ids:
        error(cluster.request(member_id, "GET", "/v1/ipclaims", token=wrong), 401, "unauthorized")
        error(cluster.request(member_id, "GET", "/v1/status", anonymous=True), 401, "unauthorized")
        error(
            cluster.request(member_id, "POST", "/v1/ipclaims", token=wrong, body=claim_body("t8-x", "t8", 32)),
            401,
            "unauthorized",
        )

    created = cluster.request(follower, "POST", "/v1/ipclaims", token=acme, body=claim_body("t8-secret", "t8", 32))
    assert created.status == 201, created
    for member_id in cluster.member_ids:
        error(cluster.request(member_id, "GET", "/v1/ipclaims/t8-secret", token=globex), 404, "not_found")
        error(cluster.request(member_id, "GET", "/v1/ipallocations/t8-secret", token=globex), 404, "not_found")
        listed = cluster.request(member_id, "GET", "/v1/ipclaims", token=globex)
        assert "t8-secret" not in {item["metadata"]["name"] for item in listed.body["items"]}
    error(cluster.request(leader, "DELETE", "/v1/ipclaims/t8-secret", token=globex), 404, "not_found")
    assert cluster.request(leader, "GET", "/v1/ipclaims/t8-secret", token=acme).status == 200

    before = cluster.wait_converged()
    for member_id in cluster.member_ids:
        error(cluster.request(member_id, "POST", "/v1/ipclaims", token=acme, raw=b"{"), 400, "invalid")
        error(cluster.request(member_id, "POST", "/v1/ipclaims", token=acme, raw=b"[1]"), 400, "invalid")
        bad_spec = {"name": "t8-bad", "spec": {"poolRef": "t8", "prefixLength": "wide"}}
        error(cluster.request(member_id, "POST", "/v1/ipclaims", token=acme, body=bad_spec), 400, "invalid")
    after = cluster.wait_converged()
    assert after.revision == before.revision, "a refused request changed the state"
    assert cluster.request(leader, "GET", "/v1/ipclaims/t8-bad", token=acme).status == 404


# ---- 5. SIGKILL every member; every acknowledged write survives ------------------------------------


def test_all_members_killed_and_restarted(cluster: Cluster, ledger: Ledger) -> None:
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "t5", "10.5.0.0/24")
    writers = WriterPool(cluster, ledger, "t5", threads_count=4)
    writers.start()
    try:
        wait_until("20 acknowledged writes", lambda: writers.acked() >= 20 or None, 30.0)
        cluster.kill_all()  # with writes in flight
    finally:
        writers.stop.set()
    restart_all_and_check(cluster, writers, ledger)
    assert len(ledger.acks) >= 20


def test_member_left_alone_answers_no_leader(cluster: Cluster) -> None:
    """With its leader and the other follower dead, a member cannot commit anything: it must say
    so at once (503 no_leader, retry elsewhere), not hold every request to its deadline."""
    leader = cluster.ensure_all_running()
    survivor, other = (member_id for member_id in cluster.member_ids if member_id != leader)
    cluster.kill(leader)
    cluster.kill(other)
    body = {"name": "alone", "spec": {"cidr": "10.99.0.0/24"}}

    def refused_at_once() -> Reply | None:
        started = time.monotonic()
        reply = cluster.request(survivor, "POST", "/v1/ippools", body=body, timeout_s=15.0)
        quick = time.monotonic() - started < 2.0
        return reply if reply.status == 503 and reply.code == "no_leader" and quick else None

    reply = wait_until("a quick 503 no_leader from the survivor", refused_at_once, 20.0, on_timeout=cluster.describe)
    assert reply.headers.get("Retry-After"), reply
    status = cluster.status(survivor) or {}
    assert status.get("leader") is None, status
    cluster.ensure_all_running()


def test_a_leader_stopped_cleanly_hands_leadership_over_first(cluster: Cluster, ledger: Ledger) -> None:
    """SIGTERM to the leader (a rolling restart): it asks the most caught-up follower to take
    over and waits for it before it stops, so writes pause for a requested election instead of
    the followers' election timeout; with writes going on, none acknowledged is lost."""
    leader = cluster.ensure_all_running()
    term = int((cluster.status(leader) or {})["term"])
    create_pool(cluster, leader, "t51", "10.51.0.0/16")
    writers = WriterPool(cluster, ledger, "t51", threads_count=2)
    writers.start()
    try:
        wait_until("10 acknowledged writes", lambda: writers.acked() >= 10 or None, 30.0)
        assert cluster.terminate(leader) == 128 + signal.SIGTERM, cluster.log_tail(leader)
        successor = cluster.wait_for_leader()
        acked = writers.acked()
        wait_until(
            "writes acknowledged by the new leader",
            lambda: writers.acked() >= acked + 5 or None,
            30.0,
            on_timeout=cluster.describe,
        )
    finally:
        writers.stop.set()
    said = cluster.log_text(leader)
    assert f"handed leadership over before stopping (leader now: {successor}, term {term + 1})" in said, said[-3000:]
    writers.finish(timeout_s=write_deadline_s + 10)
    assert not writers.errors, writers.errors
    cluster.start_member(leader)
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert_ledger_held(cluster, ledger, cluster.member_ids)


# ---- 4. a wiped follower rebuilds from a snapshot ---------------------------------------------------


def test_wiped_follower_rebuilds_from_snapshot(snapshot_cluster: Cluster, snapshot_ledger: Ledger) -> None:
    cluster, ledger = snapshot_cluster, snapshot_ledger
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "s4", "10.40.0.0/16")
    number = 0

    def write_until_snapshot(member_id: str) -> int:
        nonlocal number
        for _ in range(400):
            create_claim(cluster, ledger, member_id, f"s4-{number}", "s4")
            number += 1
            status = cluster.status(member_id) if number % 10 == 0 else None
            if status is not None and status["snapshotIndex"] > 0:
                return int(status["snapshotIndex"])
        raise AssertionError(f"no snapshot on {member_id} after 400 entries\n{cluster.describe()}")

    first_snapshot = write_until_snapshot(leader)
    follower = next(member_id for member_id in cluster.member_ids if member_id != leader)
    cluster.kill(follower)
    cluster.wipe(follower)
    # More entries, so the leader's log starts after its snapshot: the wiped member must get it.
    for _ in range(60):
        create_claim(cluster, ledger, leader, f"s4-{number}", "s4")
        number += 1
    wait_until(
        "a second snapshot on the leader",
        lambda: (cluster.status(leader) or {}).get("snapshotIndex", 0) > first_snapshot or None,
        30.0,
        on_timeout=cluster.describe,
    )
    cluster.start_member(follower)
    cluster.wait_for_leader()
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert "installed a snapshot at index" in cluster.log_text(follower), cluster.log_tail(follower)
    assert_ledger_held(cluster, ledger, [follower])
    create_claim(cluster, ledger, follower, "s4-after", "s4")  # it serves writes again
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert_ledger_held(cluster, ledger, cluster.member_ids)


def test_full_restart_with_snapshots(snapshot_cluster: Cluster, snapshot_ledger: Ledger) -> None:
    cluster, ledger = snapshot_cluster, snapshot_ledger
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "s5", "10.50.0.0/16")
    writers = WriterPool(cluster, ledger, "s5", threads_count=4)
    writers.start()
    try:
        wait_until("120 acknowledged writes", lambda: writers.acked() >= 120 or None, 60.0)
        cluster.kill_all()
    finally:
        writers.stop.set()
    restart_all_and_check(cluster, writers, ledger)


def test_member_after_power_loss_rebuilds_from_dump_and_journal(
    snapshot_cluster: Cluster, snapshot_ledger: Ledger
) -> None:
    """A member's store runs with sync=False; after a (simulated) power loss its data file is set
    aside and rebuilt from the last dump plus the journal, and the rest from the leader."""
    cluster, ledger = snapshot_cluster, snapshot_ledger
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "s6", "10.60.0.0/16")
    for number in range(120):
        create_claim(cluster, ledger, leader, f"s6-{number}", "s6")
    follower = next(member_id for member_id in cluster.member_ids if member_id != leader)
    cluster.wait_converged(member_ids=cluster.member_ids)
    cluster.kill(follower)
    state_dir = cluster.members[follower].data_dir / "state"
    session = json.loads((state_dir / "session.json").read_text())
    assert session["sync"] is False and session["clean"] is False, session
    # What a reboot after a power loss looks like to the next start: another boot id.
    (state_dir / "session.json").write_text(json.dumps({**session, "boot_id": "another-boot"}))
    for number in range(120, 140):
        create_claim(cluster, ledger, leader, f"s6-{number}", "s6")
    cluster.start_member(follower)
    cluster.wait_converged(member_ids=cluster.member_ids)
    assert (state_dir / "state.mdb.torn").exists()
    assert "set it aside" in cluster.log_text(follower), cluster.log_tail(follower)
    assert_ledger_held(cluster, ledger, [follower])


# ---- 9. `allot serve` refuses a broken configuration at once ---------------------------------------


@pytest.fixture
def serve_files(tmp_path: Path) -> tuple[Path, Path]:
    secret, tokens = tmp_path / "cluster.secret", tmp_path / "tokens.json"
    write_secret(secret)
    generate_token_file(tokens)
    return secret, tokens


def run_serve(command: list[str], timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_ROOT,
        env=child_environment(),
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert time.monotonic() - started < timeout_s
    return result


def test_serve_configuration_errors(tmp_path: Path, serve_files: tuple[Path, Path]) -> None:
    secret, tokens = serve_files
    ports = free_ports(4)
    members = {f"m{number}": f"127.0.0.1:{ports[number - 1]}" for number in range(1, 4)}
    http_address = f"127.0.0.1:{ports[3]}"

    def serve(member_id: str, secret_file: Path = secret, http: str = http_address) -> list[str]:
        return serve_command(member_id, members, http, tmp_path / member_id, secret_file, tokens)

    def config_file(name: str, document: dict[str, Any]) -> list[str]:
        path = tmp_path / name
        path.write_text(json.dumps(document))
        return [sys.executable, "-m", "node.cli", "serve", "--config", str(path)]

    from_file = {
        "memberId": "m4",
        "members": members,
        "http": http_address,
        "dataDir": str(tmp_path / "m4"),
        "secretFile": str(secret),
        "tokenFile": str(tokens),
    }

    def duplicate_key_file() -> list[str]:
        path = tmp_path / "twice.json"
        listed = [f'"{member}": "{address}"' for member, address in members.items()] + ['"m2": "127.0.0.1:1"']
        rest = {key: value for key, value in from_file.items() if key != "members"}
        path.write_text(json.dumps({**rest, "memberId": "m1"})[:-1] + f', "members": {{{", ".join(listed)}}}}}')
        return [sys.executable, "-m", "node.cli", "serve", "--config", str(path)]

    bad_tokens = tmp_path / "bad-tokens.json"
    bad_tokens.write_text("{bad")
    not_a_dir = tmp_path / "not-a-dir"
    not_a_dir.write_text("")
    alone = tmp_path / "alone"  # m1's data dir as a cluster of m1 alone recorded it
    alone.mkdir()
    alone_identity = {"format": 1, "memberId": "m1", "members": {"m1": members["m1"]}, "secretDigest": "0" * 32}
    (alone / "cluster.json").write_text(json.dumps(alone_identity))

    def without(command: list[str], flag: str) -> list[str]:
        at = command.index(flag)
        return command[:at] + command[at + 2 :]

    cases: list[tuple[str, list[str], str]] = [
        ("member id not in the list", serve("m4"), "not in the member list"),
        ("no secret file", without(serve("m1"), "--secret-file"), "give the cluster secret file (--secret-file"),
        ("no token file", without(serve("m1"), "--tokens"), "give the token file (--tokens"),
        ("malformed token file", [*serve("m1")[:-1], str(bad_tokens)], "not valid JSON"),
        ("snapshot entries", [*serve("m1"), "--snapshot-entries", "0"], "--snapshot-entries must be at least 2"),
        (
            "data dir is a file",
            serve_command("m1", members, http_address, not_a_dir, secret, tokens),
            "cannot be used",
        ),
        (
            "another member list on this data",
            serve_command("m1", members, http_address, alone, secret, tokens),
            "belongs to a cluster of members m1, but --members lists m1, m2, m3",
        ),
        ("missing secret file", serve("m1", secret_file=tmp_path / "absent.secret"), "absent.secret"),
        ("--config: the file is read", config_file("m4.json", from_file), "this member (m4) is not in the member list"),
        ("--config: unknown key", config_file("bad.json", {**from_file, "peers": []}), "unknown key peers; the keys"),
        (
            "a member listed twice",
            [*without(serve("m1"), "--members"), "--members", f"m1={members['m1']},m2={members['m2']},m2=127.0.0.1:1"],
            f"member m2 is listed twice ({members['m2']} and 127.0.0.1:1)",
        ),
        ("--config: a key given twice", duplicate_key_file(), "gives 'm2' twice"),
        (
            "--config: relative paths are relative to the file",
            config_file("relative.json", {**from_file, "memberId": "m1", "secretFile": "absent.secret"}),
            f"{tmp_path / 'absent.secret'}:",
        ),
        ("grace out of range", [*serve("m1"), "--node-grace-seconds", "0"], "--node-grace-seconds 0 must be between"),
        (
            "--config: grace not a number",
            config_file("grace.json", {**from_file, "memberId": "m1", "nodeGraceSeconds": "soon"}),
            "nodeGraceSeconds in ",  # the config file's key, then the file's path
        ),
    ]
    for what, command, words in cases:
        result = run_serve(command)
        assert result.returncode == 2, (what, result.returncode, result.stderr[-2000:])
        assert words in result.stderr, (what, result.stderr[-2000:])
        assert "Traceback" not in result.stderr, (what, result.stderr[-2000:])

    for what, port in (("Raft", ports[0]), ("HTTP", ports[3])):
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen(1)
            result = run_serve(serve("m1"))
        finally:
            holder.close()
        assert result.returncode == 2, (what, result.returncode, result.stderr[-2000:])
        assert f"127.0.0.1:{port}" in result.stderr and "not available" in result.stderr, (what, result.stderr)
        assert "Traceback" not in result.stderr, (what, result.stderr[-2000:])


def test_timing_flags_win_over_the_environment(
    tmp_path: Path, serve_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, tokens = serve_files
    monkeypatch.setenv("ALLOT_NODE_GRACE_SECONDS", "7")
    monkeypatch.setenv("ALLOT_PENDING_RETRY_SECONDS", "3")
    monkeypatch.setenv("ALLOT_POD_EVICTION_SECONDS", "90")

    def timing(overrides: dict[str, float] | None) -> tuple[float, float, float]:
        built = config.build(
            member_id="m1",
            members={"m1": "127.0.0.1:7401"},
            http_address="127.0.0.1:8401",
            data_dir=tmp_path / "m1",
            secret_file=secret,
            token_file=tokens,
            check_ports=False,
            timing_overrides=overrides,
        )
        return built.timing.node_grace_s, built.timing.pending_retry_s, built.timing.pod_eviction_s

    assert timing(None) == (7.0, 3.0, 90.0)
    assert timing({"node_grace_s": 12.5, "pod_eviction_s": 30}) == (12.5, 3.0, 30.0)
    command = member_command(
        PlannedMember("m1", "127.0.0.1:1", "127.0.0.1:2", tmp_path),
        [],
        secret,
        tokens,
        {"--node-grace-seconds": 12.5},
    )
    assert command[-2:] == ["--node-grace-seconds", "12.5"]


def test_bad_timing_settings_are_refused_before_anything_is_written(
    tmp_path: Path, serve_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`allot up` checks its timing flags and the environment before it writes under --dir; a
    flag wins over a bad environment variable, which is then not read; a config file's bad value
    is named by its key."""
    directory = tmp_path / "up"
    for bad in ("0", "-1", "nan", "inf"):
        assert node_cli.main(["up", "--dir", str(directory), "--pod-eviction-seconds", bad]) == 2
        assert "--pod-eviction-seconds" in capsys.readouterr().err
    monkeypatch.setenv("ALLOT_POD_EVICTION_SECONDS", "abc")
    assert node_cli.main(["up", "--dir", str(directory)]) == 2
    assert "ALLOT_POD_EVICTION_SECONDS='abc' must be a number of seconds" in capsys.readouterr().err
    assert not directory.exists()
    assert config.timing_from_environment(config.Timing(), given={"pod_eviction_s"}).pod_eviction_s == 300.0
    secret, tokens = serve_files
    settings = {
        "memberId": "m1",
        "members": {"m1": "127.0.0.1:7401"},
        "http": "127.0.0.1:8401",
        "secretFile": str(secret),
        "tokenFile": str(tokens),
        "podEvictionSeconds": "300",
    }
    config_file = tmp_path / "member.json"
    config_file.write_text(json.dumps(settings))
    assert node_cli.main(["serve", "--config", str(config_file)]) == 2
    assert f"podEvictionSeconds in {config_file} must be a number of seconds, not '300'" in capsys.readouterr().err


# ---- 10. `allot up`: starts, answers, restarts a killed member, stops on SIGINT or SIGHUP -------


class AllotUp:
    """An `allot up` process on free ports in a temp directory, its output read by a thread."""

    def __init__(
        self,
        directory: Path,
        http_port: int,
        raft_port: int,
        source_root: Path = REPO_ROOT,
        working_dir: Path | None = None,
    ) -> None:
        """Runs the build in `source_root`; from `working_dir` when given (with source_root on
        PYTHONPATH, as the `allot` command imports its installed package wherever it runs)."""
        self.directory = directory
        self.http_port = http_port
        command = [sys.executable, "-m", "node.cli", "up", "--dir", str(directory)]
        command += ["--http-port", str(http_port), "--raft-port", str(raft_port)]
        environment = child_environment()
        if working_dir is not None:
            command.insert(1, "-P")
            environment["PYTHONPATH"] = str(source_root)
        self.process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=working_dir or source_root,  # `python -m` imports the sources here first: the build that runs
            env=environment,
            start_new_session=True,
        )
        register_process(self.process)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, name="allot-up-output", daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            self.lines.put(raw.decode(errors="replace"))
        self.lines.put(None)

    @property
    def text(self) -> str:
        return "".join(self.output)

    def wait_for(self, words: str, timeout_s: float = 60.0, times: int = 1) -> None:
        """Read output until `times` lines hold `words` (fails when allot up exits first)."""
        deadline = time.monotonic() + timeout_s
        while sum(words in line for line in self.output) < times:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"allot up did not print {words!r} in time:\n" + self.text
            with contextlib.suppress(queue.Empty):
                line = self.lines.get(timeout=remaining)
                assert line is not None, f"allot up exited ({self.process.poll()}) first:\n" + self.text
                self.output.append(line)

    def admin_token(self) -> str:
        return self.token(lambda entry: entry["role"] == "admin")

    def tenant_token(self, scope: str) -> str:
        """The demo tenant's token for `scope` (`acme/web`)."""
        return self.token(lambda entry: f"{entry.get('org')}/{entry.get('project')}" == scope)

    def token(self, wanted: Callable[[dict[str, Any]], bool]) -> str:
        document = json.loads((self.directory / "tokens.json").read_text())
        return str(next(entry["token"] for entry in document["tokens"] if wanted(entry)))

    def all_serve_one_leader(self) -> bool | None:
        leaders: set[Any] = set()
        for number in range(3):
            try:
                reply = http_request(
                    f"127.0.0.1:{self.http_port + number}", "GET", "/v1/status", token=self.admin_token()
                )
            except Unreachable:
                return None
            if reply.status != 200:
                return None
            leaders.add(reply.body.get("leader"))
        return (len(leaders) == 1 and None not in leaders) or None

    def close(self) -> None:
        reap_process(self.process)
        for pid in member_pids_using(self.directory):  # only processes this test started, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_allot_up_refuses_a_token_file_it_cannot_use_before_writing_anything(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{bad")
    members_only = tmp_path / "members-only.json"
    token = "t" * 43
    members_only.write_text(
        json.dumps({"tokens": [{"token": token, "name": "w", "org": "a", "project": "b", "role": "member"}]})
    )
    http_port, raft_port = free_ports(2)
    for given, words in (
        (tmp_path / "absent.json", "no such file"),
        (tmp_path, "is a directory"),
        (broken, "not valid JSON"),
        (members_only, "has no admin token"),
    ):
        data = tmp_path / "data"
        command = [sys.executable, "-m", "node.cli", "up", "--dir", str(data), "--tokens", str(given)]
        result = run_serve([*command, "--http-port", str(http_port), "--raft-port", str(raft_port)])
        assert result.returncode == 2, (given, result.stderr[-2000:])
        assert words in result.stderr and "Traceback" not in result.stderr, (given, result.stderr[-2000:])
        assert not data.exists(), "nothing is written for a cluster that does not start"


def test_allot_up_smoke(tmp_path: Path) -> None:
    http_port = free_ports(3, consecutive=True)[0]
    raft_port = free_ports(3, consecutive=True)[0]
    # Run from a directory holding another `node` package (an older checkout, say): the members
    # must run the code `allot up` runs, not import that one (`python -m` puts the current
    # directory first on the path).
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "node").mkdir(parents=True)
    (elsewhere / "node" / "__init__.py").write_text("")
    (elsewhere / "node" / "cli.py").write_text('raise SystemExit("the node package of the working directory ran")\n')
    up = AllotUp(tmp_path / "up", http_port, raft_port, working_dir=elsewhere)
    try:
        up.wait_for("to watch a failover")  # the banner, every member listed
        status = http_request(f"127.0.0.1:{http_port}", "GET", "/v1/status", token=up.admin_token())
        assert status.status == 200 and status.body["memberId"] == "m1", status
        member_pids = member_pids_using(up.directory)
        assert len(member_pids) == 3, (member_pids, up.text)
        assert all(f"pid {pid} " in up.text for pid in member_pids), up.text  # the banner's
        # A member killed by a signal (a failover to watch) is restarted; the others keep serving.
        # SIGKILL, then a plain kill (SIGTERM: the member stops cleanly, exit 143).
        for number, signum in enumerate((signal.SIGKILL, signal.SIGTERM), start=1):
            victim = member_pids_using(up.directory)[0]
            os.kill(victim, signum)
            up.wait_for(f"was killed by {signum.name}")
            up.wait_for("restarted on its data", 30.0, times=number)
            wait_until("the restarted member to rejoin", up.all_serve_one_leader, 30.0)
            assert len(member_pids_using(up.directory)) == 3 and up.process.poll() is None, up.text
        # A second allot up on the same ports is refused before it starts anything.
        ports = ["--http-port", str(http_port), "--raft-port", str(raft_port)]
        second = subprocess.run(
            [sys.executable, "-m", "node.cli", "up", "--dir", str(tmp_path / "other"), *ports],
            check=False,
            cwd=REPO_ROOT,
            env=child_environment(),
            capture_output=True,
            text=True,
            timeout=30.0,
        )
        assert second.returncode == 2 and "in use already" in second.stderr, second
        assert not (tmp_path / "other").exists(), "the refused allot up wrote no secret or token file"
        assert up.all_serve_one_leader(), "the refused allot up disturbed the running one"
        member_pids = member_pids_using(up.directory)
        os.kill(up.process.pid, signal.SIGHUP)  # the terminal closed: stop like Ctrl-C
        code = up.process.wait(timeout=30.0)
        assert code == 0, f"allot up exited with {code}:\n" + up.text
        assert "stopping before every member applied" not in up.text, "the members settled before they were stopped"
        wait_until("the members of allot up to exit", lambda: not member_pids_using(up.directory) or None, 10.0)
    finally:
        up.close()


def test_allot_up_stops_members_once_each_has_applied_the_committed_log() -> None:
    def status(commit: int, log_settled: bool = True, quiesced: bool = True) -> dict[str, Any]:
        return {"commitIndex": commit, "logSettled": log_settled, "quiesced": quiesced}

    assert settled([status(9), status(9), status(9)])
    assert not settled([status(9), status(9, quiesced=False), status(9)])  # SIGUSR1 not taken yet
    assert settled([status(9), status(9)])  # the third member is down: not waited for
    assert not settled([status(9), status(8), status(9)])  # one behind
    assert not settled([status(9), status(9, False), status(9)])  # an entry not yet committed or applied
    assert not settled([status(9), None, status(9)])  # a member that does not answer
    assert not settled([{"appliedIndex": 9, "commitIndex": 9}])  # a build without logSettled


def test_allot_up_waits_for_the_members_to_settle_with_a_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`settle` polls every running member until they agree; it gives up at its deadline, or at
    a second Ctrl-C, and says which members were behind or down."""
    members = plan(tmp_path, 41000, 41100)
    running = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in members]
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait(timeout=30.0)
    try:
        polls: list[str] = []

        def status_after_polls(http_address: str, _token: str, timeout_s: float) -> dict[str, Any]:
            assert 0 < timeout_s <= 0.5
            polls.append(http_address)
            third_round = len(polls) > 2 * len(members)  # finds them settled
            return {"appliedIndex": 7, "commitIndex": 9, "logSettled": third_round, "quiesced": True}

        monkeypatch.setattr("node.cluster.fetch_status", status_after_polls)
        assert node_cluster.settle(members, running, "token")
        assert len(polls) == 3 * len(members)
        assert capsys.readouterr().out == ""

        monkeypatch.setattr("node.cluster.settle_timeout_s", 0.3)
        monkeypatch.setattr(
            "node.cluster.fetch_status",
            lambda *_args, **_kw: {"appliedIndex": 8, "commitIndex": 9, "logSettled": False},
        )
        started = time.monotonic()
        assert not node_cluster.settle(members, [running[0], running[1], exited], "token")
        assert time.monotonic() - started < 5.0
        said = capsys.readouterr().out
        assert (
            "stopping before every member applied the whole log "
            "(m1 not settled at commit 9, m2 not settled at commit 9, m3 not running)"
        ) in said

        monkeypatch.setattr("node.cluster.settle_timeout_s", 60.0)
        started = time.monotonic()
        assert not node_cluster.settle(members, running, "token", give_up=lambda: True)  # a second Ctrl-C
        assert time.monotonic() - started < 5.0
    finally:
        for process in running:
            process.kill()
            process.wait(timeout=30.0)


def test_members_of_a_killed_allot_up_stop_by_themselves(tmp_path: Path) -> None:
    up = AllotUp(tmp_path / "up", free_ports(3, consecutive=True)[0], free_ports(3, consecutive=True)[0])
    try:
        up.wait_for("to watch a failover")
        assert len(member_pids_using(up.directory)) == 3, up.text
        os.kill(up.process.pid, signal.SIGKILL)  # it cannot stop its members, which run in their own sessions
        up.process.wait(timeout=10.0)
        wait_until("the orphaned members to stop", lambda: not member_pids_using(up.directory) or None, 20.0)
    finally:
        up.close()


def test_metrics_show_replication_and_pools(cluster: Cluster) -> None:
    """/metrics on every member: Raft state, apply and journal-sync latency, batch sizes, and
    per-pool capacity that agrees with the pool's own status; and which build of the state
    machine applies (compiled when `allot compile` left a fresh build, as in CI)."""
    compiled = accelerate.choice_for_new_process().compiled
    leader = cluster.ensure_all_running()
    create_pool(cluster, leader, "t11", "10.11.0.0/24")
    created = cluster.request(
        leader, "POST", "/v1/ipclaims", token=cluster.tenant_tokens[ACME], body=claim_body("t11-a", "t11", 30)
    )
    assert created.status == 201, created
    cluster.wait_converged(member_ids=cluster.member_ids)
    for member_id in cluster.member_ids:
        reply = cluster.request(member_id, "GET", "/metrics", anonymous=True)
        assert reply.status == 200, reply
        text = str(reply.body)
        samples = {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }
        assert samples["allot_apply_duration_seconds_count"] > 0, member_id
        assert samples["allot_journal_sync_duration_seconds_count"] > 0, member_id
        assert samples["allot_member_peers_connected"] == 2, member_id
        status = cluster.request(member_id, "GET", "/v1/status").body
        assert status["peersConnected"] == sorted(set(cluster.member_ids) - {member_id}), status
        sent = samples["allot_raft_append_entries_sent_total"]
        skipped = samples["allot_raft_repeated_acks_skipped_total"]
        assert sent > 0 if member_id == leader else skipped > 0, (member_id, sent, skipped)
        for counter in (
            "allot_raft_next_index_regressions_kept_total",
            "allot_raft_snapshot_commits_refused_total",
            "allot_raft_failed_dump_acks_refused_total",
            "allot_raft_dumps_superseded_total",
            "allot_raft_resent_entries_received_total",
            "allot_raft_fenced_entries_refused_total",
            "allot_raft_commits_held_for_sync_total",
            "allot_raft_acks_held_for_sync_total",
        ):
            assert counter in samples, (member_id, counter)  # exposed; their values depend on timing
        assert samples['allot_pool_allocated_addresses{pool="t11"}'] == 4, member_id
        assert samples['allot_pool_capacity_addresses{pool="t11"}'] == 256, member_id
        assert samples['allot_member_role{role="leader"}'] == (1 if member_id == leader else 0), member_id
        assert samples["allot_state_machine_compiled"] == (1 if compiled else 0), member_id
        status = cluster.request(member_id, "GET", "/v1/status", token=cluster.admin_token)
        assert status.body["stateMachineBuild"] == ("compiled" if compiled else "python"), member_id
        idempotency = status.body["idempotency"]
        assert idempotency["records"] >= 1 and idempotency["recordsMax"] == 200_000, idempotency
        assert idempotency["windowMs"] == idempotency["ttlMs"] == 15 * 60 * 1000, "not full: ids kept for the TTL"
    proposer = cluster.request(leader, "GET", "/metrics", anonymous=True)
    assert "allot_batch_envelopes_count" in str(proposer.body)


def test_allot_up_says_when_killed_members_leave_no_majority(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each kill is restarted; the message says whether the others still form a majority (an
    exploratory tester killed all three and read "the others keep serving" three times)."""
    supervisor = Supervisor(plan(tmp_path, 18401, 18701))
    for position in range(3):
        assert supervisor.restart_due(position, -signal.SIGKILL, now=100.0)
    said = capsys.readouterr().out.splitlines()
    assert said[0].endswith("was killed by SIGKILL; the others keep serving. Restarting it in 1 s on its data.")
    assert "2 of 3 members are down; writes wait until a majority is back" in said[1]
    assert "3 of 3 members are down; writes wait until a majority is back" in said[2]
