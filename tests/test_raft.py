"""node/raft.py against pysyncobj: the pinned version, and "synced before acknowledged".

The ordering tests run three `AllotRaft` members in this process, on free 127.0.0.1 ports, each
with its own LMDB store and journal, configured the way `ReplicatedMember` configures them. On
each member's instance they wrap the journal's `add` and `setRaftCommitIndex`, the member's
`write_back_journal` (the fdatasync) and the transport's `send`, and record in order what
happens on the tick thread. Then they check:

* a follower never sends a successful `next_node_idx` (its acknowledgement of appended entries)
  while an entry at or below the index it acknowledges was added but not yet flushed;
* a leader never moves its commit index over one of its own entries that is not yet flushed.

`test_entries_are_synced_before_they_are_acknowledged` proposes 61 entries (through the leader
and, forwarded, through a follower) with pysyncobj ticking on its own threads.
`test_leader_syncs_its_election_noop_before_committing_it` drives the ticks by hand through the
one interleaving where a new leader's election no-op used to be committed unsynced (it is
appended while messages are handled, after the tick's sync; node/raft.py now also syncs when
the commit index is recorded). `test_removing_the_ack_sync_is_caught` runs the first test's
workload without the `before_ack` hook and sees followers acknowledge unsynced entries, and
`test_ordering_checker_flags_unsynced_acknowledgements` shows the checker flags both kinds. The
tick callback's sync is not needed for safety (the commit-index hook syncs the leader's copy);
it lets the leader's sync run while the followers sync theirs.

`test_commit_reaches_followers_before_the_leader_applies` and
`test_queued_commands_leave_in_one_append_entries` pin what `AllotRaft._coalesce_append_entries`
changes in pysyncobj's sending, `test_idle_followers_skip_repeated_acknowledgements` the
acknowledgements a follower leaves out, and
`test_an_acknowledgement_never_moves_a_followers_next_index_back` that pipelined sends reach a
follower once (pysyncobj sent every entry of that test twice).
`test_a_follower_replaying_a_long_backlog_does_not_start_an_election` slows a follower's apply
so its backlog outlasts the longest election timeout, and checks that it stays a follower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import cbor2
import pysyncobj.version
import pytest
from pysyncobj import FAIL_REASON
from pysyncobj.monotonic import monotonic as pysyncobj_clock
from pysyncobj.syncobj import _COMMAND_TYPE, _RAFT_STATE

import node.raft
from chaos.cluster import free_ports, wait_until
from node.build_identity import build_id
from node.config import Timing
from node.raft import AllotRaft, DumpWriter, encode_batch, raft_conf
from node.store import LmdbStore
from statemachine import Envelope, Ok, Principal, encode_envelope, keys, pools
from statemachine.context import Meta
from statemachine.errors import Rejected

SECRET = "raft-ordering-test-secret-0123456789abcdef"
ADMIN = Principal("root", "", "", "admin")
TENANT = Principal("alice", "acme", "web", "member")
wait_s = 20.0
NOOP_COMMAND = bytes([_COMMAND_TYPE.NO_OP])


def test_pysyncobj_version_is_pinned() -> None:
    """node/raft.py reaches into pysyncobj's private attributes: a new version must be reviewed."""
    assert pysyncobj.version.VERSION == node.raft.PYSYNCOBJ_VERSION


# ---- recording ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # "add" (an entry written to the journal), "flush_begin" and "flush" (an
    # fdatasync began, ended), "ack" (a successful next_node_idx sent), "commit" (the commit
    # index set)
    index: int = 0  # add: the entry's index; ack: the last index acknowledged; commit: the new index
    leader: bool = False  # commit: set while this member was the leader
    noop: bool = False  # add: pysyncobj's own no-op entry (appended by a new leader), not a command


class UnsyncedAcknowledgement(AssertionError):
    """An entry was acknowledged (or committed by the leader) before it was synced."""


def ordering_violations(events: list[Event]) -> list[str]:
    """Every acknowledgement or leader commit covering an entry added but not flushed yet.

    A flush covers the entries added before it began ("flush_begin"; the leader's fdatasync
    runs on another thread while entries are added); a recording without a begin (the checker's
    own cases) covers everything added before the flush."""
    unflushed: dict[int, int] = {}  # index -> position of the add
    covered: dict[int, int] | None = None  # what the flush in progress covers
    violations = []
    for position, event in enumerate(events):
        if event.kind == "add":
            unflushed[event.index] = position
        elif event.kind == "flush_begin":
            covered = dict(unflushed)
        elif event.kind == "flush":
            for index, added_at in (unflushed if covered is None else covered).copy().items():
                if unflushed.get(index) == added_at:
                    del unflushed[index]
            covered = None
        elif event.kind == "ack" or (event.kind == "commit" and event.leader):
            exposed = sorted(i for i in unflushed if i <= event.index)
            if exposed:
                what = "acknowledged" if event.kind == "ack" else "committed by the leader"
                violations.append(f"event {position}: {what} up to {event.index} before flushing {exposed}")
    return violations


def check_ordering(events: list[Event]) -> None:
    violations = ordering_violations(events)
    if violations:
        raise UnsyncedAcknowledgement(f"{len(violations)} violation(s): {violations[:10]}")


@dataclass
class Recorder:
    """Wraps one member's journal and transport (instance attributes only) and logs events."""

    raft: AllotRaft
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def install(self) -> None:
        journal = self.raft._SyncObj__raftLog
        add, set_commit = journal.add, journal.setRaftCommitIndex
        flush = self.raft.write_back_journal
        transport: Any = self.raft.allot_transport  # Any: its methods are replaced on the instance
        assert transport is not None
        send = transport.send

        def recording_add(command: Any, index: int, term: int) -> Any:
            result = add(command, index, term)
            self._record(Event("add", index, noop=bytes(command) == NOOP_COMMAND))
            return result

        def recording_flush() -> Any:
            self._record(Event("flush_begin"))
            result = flush()
            self._record(Event("flush"))
            return result

        def recording_commit(index: int) -> Any:
            # Recorded once the call returns: node/raft.py syncs inside it, and pysyncobj applies
            # and answers only after it. What is recorded is the commit index in force after the
            # call: a leader whose own copy is not synced yet holds it below `index`.
            result = set_commit(index)
            self._record(Event("commit", self.raft._SyncObj__raftCommitIndex, leader=bool(self.raft._isLeader())))
            return result

        def recording_send(peer: Any, message: Any) -> bool:
            sent = bool(send(peer, message))  # the before_ack hook runs inside, before the wire
            if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
                # What the acknowledgement named on the wire: before_ack may have cut it back.
                self._record(Event("ack", transport.last_acknowledged))
            return sent

        journal.add = recording_add
        self.raft.write_back_journal = recording_flush  # type: ignore[method-assign]
        journal.setRaftCommitIndex = recording_commit
        transport.send = recording_send

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.events)


# ---- three members in one process ------------------------------------------------------------


@dataclass
class InProcessMember:
    raft: AllotRaft
    store: LmdbStore
    recorder: Recorder


def build_member(directory: Path, address: str, peers: list[str], *, auto_tick: bool = True) -> InProcessMember:
    """An AllotRaft member configured as `ReplicatedMember` configures one."""
    timing = Timing()
    raft_dir = directory / "raft"
    raft_dir.mkdir(parents=True, exist_ok=True)
    store = LmdbStore(directory / "state")
    dump_path = raft_dir / "dump"
    conf = raft_conf(timing, SECRET, address, raft_dir / "journal", dump_path, auto_tick=auto_tick)
    try:
        raft = AllotRaft(
            address, peers, conf, store, DumpWriter(store, dump_path), lambda index: None, timing.keepalive_s
        )
    except BaseException:
        store.close()
        raise
    recorder = Recorder(raft)
    recorder.install()  # before the first election (>= 0.3 s away): no entry exists yet
    return InProcessMember(raft, store, recorder)


@contextmanager
def three_members(directory: Path) -> Iterator[list[InProcessMember]]:
    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    members: list[InProcessMember] = []
    try:
        for number, address in enumerate(addresses):
            peers = [other for other in addresses if other != address]
            members.append(build_member(directory / f"m{number + 1}", address, peers))
        for member in members:
            member.raft.waitBinded()
        yield members
    finally:
        for member in members:
            member.raft.destroy()
        deadline = time.monotonic() + 10.0
        for member in members:
            while member.raft.tick_thread_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            member.store.close()


def _members_state(members: list[InProcessMember], stops: list[str]) -> str:
    """What a timed-out wait prints: each member's Raft view and store, and any stop."""
    lines = [
        f"member {number}: leader={member.raft._getLeader()}"
        f" term={member.raft._SyncObj__raftCurrentTerm}"
        f" commit={member.raft._SyncObj__raftCommitIndex}"
        f" last_applied={member.raft.raftLastApplied} log={member.raft.last_log_index()}"
        f" store.applied_index={member.store.applied_index}"
        for number, member in enumerate(members, 1)
    ]
    return "\n".join([*lines, f"stops: {stops}"])


def leader_of(members: list[InProcessMember]) -> InProcessMember | None:
    leaders = {str(member.raft._getLeader()) for member in members}
    if len(leaders) != 1 or "None" in leaders:
        return None
    return next((member for member in members if member.raft._isLeader()), None)


@dataclass
class Proposals:
    """Batches proposed through `apply_batch`, and their callbacks' answers."""

    expected: int
    results: list[tuple[Any, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)

    def callback(self) -> Callable[[Any, int], None]:
        def answered(result: Any, error: int) -> None:
            with self.lock:
                self.results.append((result, error))
                if len(self.results) == self.expected:
                    self.done.set()

        return answered


def batch(number: int) -> bytes:
    ts_ms = 1_767_225_600_000 + number
    if number == 0:
        envelope = Envelope("pool.create", {"name": "edge", "spec": {"cidr": "10.0.0.0/16"}}, ADMIN, None, ts_ms)
    else:
        envelope = Envelope("claim.create", {"name": f"c-{number}", "spec": {"poolRef": "edge"}}, TENANT, None, ts_ms)
    return encode_batch([encode_envelope(envelope)], build=build_id(), proposer="test")


def record_ordering(directory: Path, *, ack_sync: bool = True) -> list[list[Event]]:
    """Run three members, propose entries through the leader and a follower, return the events.

    `ack_sync=False` removes the `before_ack` hook (showing that the checks catch its absence)."""
    with three_members(directory) as members:
        leader = wait_until("a leader", lambda: leader_of(members), wait_s)
        follower = next(member for member in members if member is not leader)
        for member in members:
            if not ack_sync and member.raft.allot_transport is not None:
                member.raft.allot_transport.before_ack = None
        rounds, per_round = 6, 10
        proposals = Proposals(expected=1 + rounds * per_round)
        leader.raft.apply_batch(batch(0), callback=proposals.callback())
        for round_number in range(rounds):  # bursts: several entries per append, some forwarded
            proposer = leader if round_number % 2 == 0 else follower
            for position in range(per_round):
                proposer.raft.apply_batch(batch(1 + round_number * per_round + position), callback=proposals.callback())
            wait_until(
                f"round {round_number} to commit",
                lambda n=round_number: len(proposals.results) >= 1 + (n + 1) * per_round or None,  # type: ignore[misc]
                wait_s,
            )
        assert proposals.done.wait(wait_s)
        assert all(error == FAIL_REASON.SUCCESS for _, error in proposals.results), proposals.results
        # Each proposer applied its own entries; a follower's may be applied there first.
        last = max(member.store.applied_index for member in members)
        wait_until(
            "every member to apply everything",
            lambda: all(member.store.applied_index == last for member in members) or None,
            wait_s,
        )
        return [member.recorder.snapshot() for member in members]


def test_entries_are_synced_before_they_are_acknowledged(tmp_path: Path) -> None:
    recorded = record_ordering(tmp_path)
    acks_after_adds = 0
    leader_commits = 0
    for events in recorded:
        check_ordering(events)
        assert sum(1 for event in events if event.kind == "add" and not event.noop) >= 61
        added_since_ack = False
        for event in events:
            if event.kind == "add":
                added_since_ack = True
            elif event.kind == "ack":
                acks_after_adds += added_since_ack
                added_since_ack = False
            elif event.kind == "commit" and event.leader:
                leader_commits += 1
    # The checks above looked at something: followers acknowledged fresh entries, the leader
    # advanced its commit index over them.
    assert acks_after_adds >= 10, acks_after_adds
    assert leader_commits >= 6, leader_commits


def tick_until(what: str, members: list[InProcessMember], done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + wait_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        for member in members:
            member.raft.doTick(0.002)


def partners_connected(member: InProcessMember) -> bool:
    status = member.raft.getStatus()
    return all(value == 2 for key, value in status.items() if key.startswith("partner_node_status_server_"))


@contextmanager
def hand_ticked_members(directory: Path) -> Iterator[list[InProcessMember]]:
    """Three members that tick only when the test ticks them (autoTick=False), connected, with
    no election started yet (nobody's election timer runs out on its own)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    members: list[InProcessMember] = []
    try:
        for number, address in enumerate(addresses):
            peers = [other for other in addresses if other != address]
            members.append(build_member(directory / f"m{number + 1}", address, peers, auto_tick=False))
        never = time.monotonic() + 3600
        for member in members:
            member.raft._SyncObj__raftElectionDeadline = never
        tick_until("the members to connect", members, lambda: all(partners_connected(m) for m in members))
        yield members
    finally:
        for member in members:
            member.raft.destroy()
            member.store.close()


def elect_first(members: list[InProcessMember]) -> InProcessMember:
    """Hand-ticked: make the first member leader and wait until its election no-op is applied
    everywhere. Returns the leader."""
    leader = members[0]
    leader.raft._SyncObj__raftElectionDeadline = 0.0
    tick_until("a leader", members, lambda: leader_of(members) is leader)
    tick_until(
        "the election no-op to be applied everywhere",
        members,
        lambda: all(m.raft.raftLastApplied == leader.raft.raftLastApplied >= 1 for m in members),
    )
    return leader


def test_leader_syncs_its_election_noop_before_committing_it(tmp_path: Path) -> None:
    """Deterministic interleaving, driving the ticks by hand (autoTick=False).

    The candidate C holds both vote grants in its sockets. In the tick where C handles the
    first grant it becomes leader and appends its no-op while handling messages, after that
    tick's sync. pysyncobj sent the no-op at once, and C's next tick could compute the commit
    index over it before its tick callback synced; node/raft.py now sends AppendEntries from
    the tick callback and records a commit index only as far as its journal is synced. When C sends
    the no-op (hooked on C's send) the followers run one tick each: they append and ask for a
    sync. All then tick until C commits (the followers acknowledge once synced), and no commit
    may cover an unsynced entry."""
    with hand_ticked_members(tmp_path) as members:
        candidate, followers = members[0], members[1:]
        candidate.raft._SyncObj__raftElectionDeadline = 0.0
        candidate.raft.doTick(0.0)  # becomes candidate, asks for votes
        assert candidate.raft.getStatus()["state"] == _RAFT_STATE.CANDIDATE
        for follower in followers:
            follower.raft.doTick(0.5)  # grants its vote
        by_address = {str(member.raft.selfNode): member for member in followers}
        transport: Any = candidate.raft.allot_transport  # Any: its send is replaced on the instance
        assert transport is not None
        send = transport.send
        ticked: set[str] = set()

        def send_then_let_follower_run(peer: Any, message: Any) -> bool:
            sent = bool(send(peer, message))
            if isinstance(message, dict) and message.get("type") == "append_entries" and str(peer) not in ticked:
                ticked.add(str(peer))
                by_address[str(peer)].raft.doTick(0.5)  # appends, asks for a sync
            return sent

        transport.send = send_then_let_follower_run
        try:
            # Both grants: leader, no-op appended; then sent (and the followers acknowledge it).
            tick_until("the no-op to reach both followers", [candidate], lambda: ticked == set(by_address))
        finally:
            transport.send = send
        assert candidate.raft.getStatus()["state"] == _RAFT_STATE.LEADER

        def leader_committed() -> bool:
            return any(event.kind == "commit" and event.leader for event in candidate.recorder.snapshot())

        # The followers acknowledge the no-op once their sync threads synced it: they tick too.
        tick_until("the leader to commit its no-op", members, leader_committed)
        events = candidate.recorder.snapshot()
        for follower in followers:
            check_ordering(follower.recorder.snapshot())  # followers: synced before acknowledging
        check_ordering(events)


def test_slow_dump_install_restarts_the_election_timer(tmp_path: Path) -> None:
    """Installing a leader's large dump blocks the tick thread for longer than an election
    timeout; the member must not then depose the leader it just heard from."""
    address, *peers = (f"127.0.0.1:{port}" for port in free_ports(3))
    member = build_member(tmp_path / "m1", address, peers, auto_tick=False)
    try:
        timing = Timing()
        slow_s = timing.election_timeout_max_s + 0.1

        def slow_install(path: str) -> tuple[Any, Any, Any]:
            time.sleep(slow_s)  # stands in for verifying and installing a big snapshot
            return (b"", 1, 1), (b"", 0, 0), set()

        member.raft._dump_writer.deserialize = slow_install  # type: ignore[method-assign]
        member.raft._load_dump(str(tmp_path / "dump"))
        remaining_s = member.raft._SyncObj__raftElectionDeadline - pysyncobj_clock()
        assert remaining_s >= timing.election_timeout_min_s - 0.1, remaining_s
    finally:
        member.raft.destroy()
        member.store.close()


def test_a_follower_replaying_a_long_backlog_does_not_start_an_election(tmp_path: Path) -> None:
    """pysyncobj applies every committed entry in one tick and checks the election timer at the
    start of the next, before reading any message. A follower whose backlog takes longer than an
    election timeout to apply (a rebuilt member replaying the entries after a dump) must not
    then depose the leader it was applying entries from."""
    timing = Timing()
    entries = 4
    per_entry_s = timing.election_timeout_max_s / 2  # the backlog: twice the longest timeout
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)
        follower, other = members[1], members[2]
        term = leader.raft.raftCurrentTerm
        apply_entry = follower.store.apply_entry

        def slow_apply(index: int, envelopes: Sequence[bytes]) -> Any:
            time.sleep(per_entry_s)
            return apply_entry(index, envelopes)

        follower.store.apply_entry = slow_apply  # type: ignore[method-assign]
        proposals = Proposals(expected=entries)
        for number in range(entries):
            leader.raft.apply_batch(batch(number), callback=proposals.callback())
        # Committed by the leader and the other follower; the follower's sockets fill meanwhile.
        tick_until("the entries to commit", [leader, other], proposals.done.is_set)
        leader.raft.doTick(0.0)  # the new commit index, to both followers
        follower.raft.doTick(0.01)  # reads the entries and the commit index
        follower.raft.doTick(0.0)  # applies the backlog: 2 x the longest election timeout
        assert follower.raft.raftLastApplied == leader.raft.raftLastApplied
        follower.raft.doTick(0.0)  # the first thing this tick does is check the election timer
        assert follower.raft.getStatus()["state"] == _RAFT_STATE.FOLLOWER
        assert follower.raft.raftCurrentTerm == term


def stall_first_sync(member: InProcessMember, stall_s: float) -> list[float]:
    """Make the member's next fdatasync take `stall_s` longer (a disk busy with someone else's
    writes). Returns a list that receives the moment the stall began."""
    write_back = member.raft.write_back_journal
    stall_started: list[float] = []

    def stalling_write_back() -> None:
        if not stall_started:
            stall_started.append(time.monotonic())
            time.sleep(stall_s)
        write_back()

    member.raft.write_back_journal = stalling_write_back  # type: ignore[method-assign]
    return stall_started


def test_a_slow_leader_disk_neither_stops_heartbeats_nor_commits_unsynced(tmp_path: Path) -> None:
    """The leader's fdatasync runs off its tick thread. A journal sync stuck for longer than the
    longest election timeout (a disk busy with other writes: measured stalls of 0.1-1.3 s on
    this machine while a large file was written) used to stop the leader's tick, hence its
    heartbeats, and the followers elected a new leader. Now the tick goes on; the leader only
    holds back its commit index until its own copy of the entry is synced."""
    timing = Timing()
    stall_s = timing.election_timeout_max_s + 0.3
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)
        term = leader.raft.raftCurrentTerm
        stall_started = stall_first_sync(leader, stall_s)
        proposals = Proposals(expected=1)
        leader.raft.apply_batch(batch(0), callback=proposals.callback())
        deadline = time.monotonic() + stall_s + wait_s
        while not proposals.done.is_set():
            assert time.monotonic() < deadline, "the entry was never committed"
            for member in members:
                member.raft.doTick(0.002)
            if stall_started and time.monotonic() < stall_started[0] + stall_s - 0.05:
                # Both followers hold the entry, synced; the leader's copy is not: no commit.
                assert not proposals.done.is_set(), "committed before the leader's own copy was synced"
        assert stall_started and time.monotonic() >= stall_started[0] + stall_s - 0.05
        assert proposals.results[0][1] == FAIL_REASON.SUCCESS
        for member in members:
            assert member.raft.raftCurrentTerm == term
        assert leader_of(members) is leader
        assert leader.raft.commits_held_for_sync > 0
        for events in (member.recorder.snapshot() for member in members):
            check_ordering(events)


def test_a_follower_with_a_slow_disk_keeps_answering_and_acknowledges_only_synced_entries(
    tmp_path: Path,
) -> None:
    """A follower's fdatasync runs on its sync thread too. While it is stuck for longer than an
    election timeout, the follower goes on reading and answering the leader, acknowledging only
    entries that are synced, and acknowledges the new entry once its sync is done. It used to
    sync on its tick thread: it read nothing meanwhile, and pysyncobj, checking the election
    timer first thing in the next tick, made it depose the leader it was acknowledging."""
    timing = Timing()
    stall_s = timing.election_timeout_max_s + 0.3
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)
        follower = members[1]
        term = leader.raft.raftCurrentTerm
        stall_started = stall_first_sync(follower, stall_s)
        entry = leader.raft._SyncObj__getCurrentLogIndex() + 1
        proposals = Proposals(expected=1)
        leader.raft.apply_batch(batch(0), callback=proposals.callback())

        def follower_acknowledged_entry() -> bool:
            return any(event.kind == "ack" and event.index >= entry for event in follower.recorder.snapshot())

        deadline = time.monotonic() + stall_s + wait_s
        while not follower_acknowledged_entry():
            assert time.monotonic() < deadline, "the follower never acknowledged the entry"
            for member in members:
                member.raft.doTick(0.002)
            if stall_started and time.monotonic() < stall_started[0] + stall_s - 0.05:
                assert not follower_acknowledged_entry(), "acknowledged before its sync finished"
        assert stall_started and time.monotonic() >= stall_started[0] + stall_s - 0.05
        assert proposals.done.is_set()  # the leader and the other follower committed it meanwhile
        assert follower.raft.acks_held_for_sync > 0
        for member in members:
            assert member.raft.raftCurrentTerm == term
        assert follower.raft.getStatus()["state"] == _RAFT_STATE.FOLLOWER
        assert leader_of(members) is leader
        for events in (member.recorder.snapshot() for member in members):
            check_ordering(events)


def test_ordering_checker_flags_unsynced_acknowledgements() -> None:
    """The checker itself: an ack or a leader commit before the flush is a violation."""
    fine = [Event("add", 5), Event("flush"), Event("ack", 5), Event("add", 6), Event("ack", 5)]
    assert ordering_violations(fine) == []
    assert ordering_violations([Event("add", 5), Event("ack", 5), Event("flush")])
    assert ordering_violations([Event("add", 7), Event("commit", 7, leader=True), Event("flush")])
    assert ordering_violations([Event("add", 7), Event("commit", 7, leader=False)]) == []  # a follower's
    assert ordering_violations([Event("add", 7), Event("commit", 6, leader=True)]) == []
    noop_commit = [Event("add", 2, noop=True), Event("commit", 2, leader=True)]
    assert ordering_violations(noop_commit)
    # An entry added while an fdatasync runs (on the leader's sync thread) is not covered by it.
    during = [Event("add", 8), Event("flush_begin"), Event("add", 9), Event("flush")]
    assert ordering_violations([*during, Event("commit", 8, leader=True)]) == []
    assert ordering_violations([*during, Event("commit", 9, leader=True)])


def test_removing_the_ack_sync_is_caught(tmp_path: Path) -> None:
    """The ordering check can fail: without the `before_ack` hook followers acknowledge entries
    they have not synced, and the recorded events show it."""
    recorded = record_ordering(tmp_path, ack_sync=False)
    assert any(ordering_violations(events) for events in recorded)


# ---- how AppendEntries are sent (AllotRaft._coalesce_append_entries) ----------------------------


def test_commit_reaches_followers_before_the_leader_applies(tmp_path: Path) -> None:
    """Every entry the leader applies was first announced as committed to both followers, so a
    follower answering its own clients does not wait for the leader's apply (pysyncobj applies
    first and tells the followers after)."""
    with three_members(tmp_path) as members:
        leader = wait_until("a leader", lambda: leader_of(members), wait_s)
        followers = {str(member.raft.selfNode) for member in members if member is not leader}
        log: list[tuple[str, str, int]] = []  # ("sent", follower, commit index) or ("apply", "", index)
        lock = threading.Lock()
        transport: Any = leader.raft.allot_transport  # Any: its send is replaced on the instance
        send = transport.send

        def recording_send(peer: Any, message: Any) -> bool:
            if isinstance(message, dict) and message.get("type") == "append_entries":
                with lock:
                    log.append(("sent", str(peer), int(message["commit_index"])))
            return bool(send(peer, message))

        apply_entry = leader.store.apply_entry

        def recording_apply(index: int, envelopes: Any) -> Any:
            with lock:
                log.append(("apply", "", index))
            return apply_entry(index, envelopes)

        transport.send = recording_send
        leader.store.apply_entry = recording_apply  # type: ignore[method-assign]
        proposals = Proposals(expected=21)
        for number in range(21):
            leader.raft.apply_batch(batch(number), callback=proposals.callback())
        assert proposals.done.wait(wait_s)
        assert all(error == FAIL_REASON.SUCCESS for _, error in proposals.results), proposals.results
        with lock:
            events = list(log)
        applied = [index for kind, _, index in events if kind == "apply"]
        assert len(applied) >= 21, applied
        for position, (kind, _, index) in enumerate(events):
            if kind == "apply":
                told = {peer for what, peer, commit in events[:position] if what == "sent" and commit >= index}
                assert told == followers, f"entry {index} applied before {sorted(followers - told)} heard it committed"


def test_queued_commands_leave_in_one_append_entries(tmp_path: Path) -> None:
    """Five commands queued at the leader go to each follower in one AppendEntries message of
    five entries (pysyncobj sends one message per command), and all five commit."""
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)
        sent: list[tuple[str, int]] = []  # (follower, entries in the message)
        transport: Any = leader.raft.allot_transport  # Any: its send is replaced on the instance
        send = transport.send

        def recording_send(peer: Any, message: Any) -> bool:
            if isinstance(message, dict) and message.get("type") == "append_entries":
                sent.append((str(peer), len(message.get("entries") or [])))
            return bool(send(peer, message))

        transport.send = recording_send
        proposals = Proposals(expected=5)
        for number in range(5):
            leader.raft.apply_batch(batch(number), callback=proposals.callback())
        leader.raft.doTick(0.0)  # appends the five, then sends
        transport.send = send
        followers = sorted(str(member.raft.selfNode) for member in members[1:])
        assert sorted(sent) == [(follower, 5) for follower in followers], sent
        tick_until("the five commands to commit", members, proposals.done.is_set)
        assert all(error == FAIL_REASON.SUCCESS for _, error in proposals.results), proposals.results


def test_an_acknowledgement_never_moves_a_followers_next_index_back(tmp_path: Path) -> None:
    """Pipelined sends: each round the leader sends the new entry, then (in the same tick) reads
    the followers' acknowledgement of the previous round, which names an older next index.
    pysyncobj sets the next index back to it, so the next round sends the previous entry again
    and the follower deletes it and appends it again; AllotRaft keeps the larger index. The
    followers receive every entry exactly once, and everything commits."""
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)
        followers = members[1:]
        rounds = 8
        proposals = Proposals(expected=rounds)
        for number in range(rounds):
            leader.raft.apply_batch(batch(number), callback=proposals.callback())
            leader.raft.doTick(0.0)  # sends this round's entry, then reads the last round's acks
            for follower in followers:  # each receives it, syncs it and acknowledges it
                tick_until(
                    "the follower to acknowledge the entry", [follower], partial(acknowledged_all, follower, leader)
                )
        tick_until("every round to commit", members, proposals.done.is_set)
        assert all(error == FAIL_REASON.SUCCESS for _, error in proposals.results), proposals.results
        assert [follower.raft.resent_entries_received for follower in followers] == [0, 0]
        assert leader.raft.next_index_regressions_kept > 0  # the interleaving above did happen


def acknowledged_all(follower: InProcessMember, leader: InProcessMember) -> bool:
    """Whether the follower acknowledged everything in the leader's log (its acknowledgements
    follow its sync thread, so holding an entry is not enough)."""
    last = leader.raft._SyncObj__getCurrentLogIndex()
    return any(event.kind == "ack" and event.index >= last for event in follower.recorder.snapshot())


def test_idle_followers_skip_repeated_acknowledgements(tmp_path: Path) -> None:
    """With no writes, heartbeats only: each follower leaves out acknowledgements that repeat
    its last one, yet the leader keeps hearing from both often enough never to step down."""
    timing = Timing()
    heard_within_s = node.raft.repeat_ack_gap_s + 2 * timing.append_entries_period_s + 0.4
    assert heard_within_s < timing.leader_fallback_s
    with three_members(tmp_path) as members:
        leader = wait_until("a leader", lambda: leader_of(members), wait_s)
        term = leader.raft.raftCurrentTerm
        followers = [member for member in members if member is not leader]

        def skipped(member: InProcessMember) -> int:
            transport = member.raft.allot_transport
            assert transport is not None
            return transport.repeated_acks_skipped

        before = [skipped(member) for member in followers]
        deadline = time.monotonic() + wait_s
        while not all(skipped(member) >= start + 10 for member, start in zip(followers, before, strict=True)):
            assert time.monotonic() < deadline, "followers did not skip repeated acknowledgements"
            last_heard = dict(leader.raft._SyncObj__lastResponseTime)
            now = pysyncobj_clock()
            for peer in leader.raft.otherNodes:
                assert now - last_heard[peer] <= heard_within_s, f"the leader has not heard from {peer} lately"
            time.sleep(0.01)  # polling the condition above
        assert leader.raft._isLeader() and leader.raft.raftCurrentTerm == term


def _revision(member: InProcessMember) -> int:
    with member.store.reader() as view:
        return Meta.load(view).revision


def test_a_leaders_decision_applies_only_in_the_term_it_was_made(tmp_path: Path) -> None:
    """The scheduling timers' decisions are fenced by the term their leader made them in
    (`encode_batch(..., leader_term)`): appended in another term, i.e. forwarded to a newer
    leader by a member that lost its leadership (a leader paused past an election, resuming
    with a heartbeat table in which every node looks silent), they are refused on every member
    and change nothing. Appended by their own leader in its term they apply."""
    ts_ms = 1_767_225_600_000

    def pool(name: str) -> bytes:
        envelope = Envelope("pool.create", {"name": name, "spec": {"cidr": "10.0.0.0/16"}}, ADMIN, None, ts_ms)
        return encode_envelope(envelope)

    def fenced(envelopes: list[bytes], leader_term: int) -> bytes:
        return encode_batch(envelopes, leader_term, build=build_id(), proposer="test")

    with three_members(tmp_path) as members:
        leader = wait_until("a leader", lambda: leader_of(members), wait_s)
        follower = next(member for member in members if member is not leader)
        term = leader.raft.raftCurrentTerm
        proposals = Proposals(expected=3)
        # As if made by the follower when it led an earlier term: forwarded, appended in `term`.
        follower.raft.apply_batch(fenced([pool("stale-forwarded")], term - 1), callback=proposals.callback())
        assert wait_until("the forwarded decision", lambda: len(proposals.results) == 1 or None, wait_s)
        leader.raft.apply_batch(fenced([pool("stale-own")], term - 1), callback=proposals.callback())
        leader.raft.apply_batch(fenced([pool("current")], term), callback=proposals.callback())
        assert proposals.done.wait(wait_s)
        assert all(error == FAIL_REASON.SUCCESS for _, error in proposals.results), proposals.results
        (refused_forwarded,), (refused_own,), (applied,) = (result for result, _ in proposals.results)
        for refused in (refused_forwarded, refused_own):
            assert isinstance(refused.result, Rejected) and refused.result.code == "conflict", refused
            assert refused.result.details == {"leaderTerm": term - 1, "entryTerm": term}
            assert refused.writes == ()
        assert isinstance(applied.result, Ok) and applied.result.value["metadata"]["name"] == "current"
        # Each proposer applied its own entries; a follower's may be applied there first.
        last = max(member.store.applied_index for member in members)
        wait_until(
            "every member to apply everything",
            lambda: all(m.store.applied_index == last for m in members) or None,
            wait_s,
        )
        for member in members:
            with member.store.reader() as view:
                assert [
                    name
                    for name in ("stale-forwarded", "stale-own", "current")
                    if pools.load(view, keys.pool_key("", "", name))
                ] == ["current"]
            assert _revision(member) == 1  # only the current term's decision changed the state
            assert member.raft.fenced_entries_refused == 2
        assert len({member.store.digest() for member in members}) == 1


class MemberStopped(Exception):
    pass


def test_the_leader_does_not_append_a_followers_entry_of_another_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower's entry reaches the leader as a forwarded command; when the leader's
    `refuses_forwarded_build` refuses its build (ReplicatedMember's rule: another build while
    a majority runs the leader's), the leader appends nothing and the follower's proposal ends
    with REQUEST_DENIED, so no member meets the entry (applying it would stop each of them).
    Entries of the leader's own build, forwarded or its own, pass as before."""
    ts_ms = 1_767_225_600_000
    own = build_id()
    other = "0" * 16 if own != "0" * 16 else "1" * 16

    cidrs = {"other": "10.0.0.0/16", "old": "10.1.0.0/16", "forwarded": "10.2.0.0/16", "own": "10.3.0.0/16"}

    def pool(name: str) -> bytes:
        return encode_envelope(
            Envelope("pool.create", {"name": name, "spec": {"cidr": cidrs[name]}}, ADMIN, None, ts_ms)
        )

    def entry(name: str, build: str) -> bytes:
        return encode_batch([pool(name)], build=build, proposer="test")

    unstamped = cbor2.dumps([pool("old")])  # an entry of a build from before builds were stamped
    stops: list[str] = []

    def stop_member(reason: str) -> None:  # in place of exiting the test process
        stops.append(reason)
        raise MemberStopped(reason)

    monkeypatch.setattr(node.raft, "stop_member", stop_member)
    with three_members(tmp_path) as members:
        for member in members:
            member.raft.refuses_forwarded_build = lambda build: build != own  # a majority runs `own`
        leader = wait_until("a leader", lambda: leader_of(members), wait_s)
        follower = next(member for member in members if member is not leader)
        wait_until("the follower to know the leader", lambda: follower.raft._getLeader() is not None or None, wait_s)
        last_index = leader.raft.last_log_index()
        refused = Proposals(expected=2)
        follower.raft.apply_batch(entry("other", other), callback=refused.callback())
        follower.raft.apply_batch(unstamped, callback=refused.callback())
        assert refused.done.wait(wait_s), stops
        assert refused.results == [(None, FAIL_REASON.REQUEST_DENIED)] * 2
        assert leader.raft.forwarded_entries_refused == 2
        assert leader.raft.last_log_index() == last_index  # nothing appended

        accepted = Proposals(expected=2)
        follower.raft.apply_batch(entry("forwarded", own), callback=accepted.callback())
        leader.raft.apply_batch(entry("own", own), callback=accepted.callback())
        assert accepted.done.wait(wait_s)
        assert [error for _, error in accepted.results] == [FAIL_REASON.SUCCESS] * 2
        assert all(isinstance(outcome.result, Ok) for (outcome,), _ in accepted.results), accepted.results
        # Each proposer applied its own entries; a follower's may be applied there first.
        last = max(member.store.applied_index for member in members)
        wait_until(
            "every member to apply everything",
            lambda: all(m.store.applied_index == last for m in members) or None,
            wait_s,
            on_timeout=lambda: _members_state(members, stops),
        )
        for member in members:
            with member.store.reader() as view:
                assert [
                    name
                    for name in ("other", "old", "forwarded", "own")
                    if pools.load(view, keys.pool_key("", "", name))
                ] == ["forwarded", "own"]
        assert sum(member.raft.forwarded_entries_refused for member in members) == 2
        assert stops == []


def claims_batch(names: Sequence[str], ts_offset_ms: int) -> bytes:
    envelopes = [
        encode_envelope(
            Envelope(
                "claim.create",
                {"name": name, "spec": {"poolRef": "edge"}},
                TENANT,
                None,
                1_767_225_600_000 + ts_offset_ms,
            )
        )
        for name in names
    ]
    return encode_batch(envelopes, build=build_id(), proposer="test")


def isolate(members: list[InProcessMember], cut_off: InProcessMember) -> Callable[[], None]:
    """Drop every message to and from `cut_off` at the sender; the returned call heals it."""
    isolated = {str(cut_off.raft.selfNode)}
    for member in members:
        transport = member.raft.allot_transport
        assert transport is not None
        send = transport.send

        def dropping(node: Any, message: Any, send: Any = send, sender: InProcessMember = member) -> bool:
            if isolated and (sender is cut_off or str(node) in isolated):
                return True  # lost on the way
            return bool(send(node, message))

        transport.send = dropping  # type: ignore[method-assign]
    return isolated.clear


def elect_and_compact_past(old: InProcessMember, new: InProcessMember, third: InProcessMember, index: int) -> None:
    """`new` leads with `third` while `old` is cut off, writes enough that its dump leaves in
    several chunks (64 KiB each), and compacts its log past `index`."""
    old.raft._SyncObj__raftElectionDeadline = time.monotonic() + 3600
    new.raft._SyncObj__raftElectionDeadline = 0.0
    tick_until("a new leader", [new, third], new.raft._isLeader)
    later = Proposals(6)
    for number in range(6):
        names = [f"real-{number}-{k}" for k in range(800)]
        new.raft.apply_batch(claims_batch(names, 100 + number), callback=later.callback())
    tick_until("the new leader's writes to commit", [new, third], later.done.is_set)
    new.raft.forceLogCompaction()
    tick_until("the new leader to compact its log", [new, third], lambda: new.raft._SyncObj__raftLog[0][1] > index)


def test_a_deposed_leader_never_applies_its_uncommitted_entries_while_a_snapshot_arrives(tmp_path: Path) -> None:
    """A leader cut off with an entry it could not commit; a new leader compacts its log past
    that index; the old one comes back and is sent a snapshot in several chunks. pysyncobj
    raised the commit index on each chunk over the old log, so the old leader applied its own
    uncommitted entry and answered its client Ok: an acknowledged claim that no replica keeps
    (code review, 2026-12-07). It must wait for the snapshot, and never answer Ok for it."""
    with hand_ticked_members(tmp_path) as members:
        old, new, third = members
        leader = elect_first(members)
        assert leader is old
        first = Proposals(1)
        old.raft.apply_batch(batch(0), callback=first.callback())
        tick_until("the pool to commit", members, first.done.is_set)

        heal = isolate(members, old)
        ghost_answers = Proposals(1)
        old.raft.apply_batch(claims_batch(["ghost"], 1), callback=ghost_answers.callback())
        for _ in range(5):
            old.raft.doTick(0.002)
        ghost_index = old.raft.last_log_index()
        assert old.raft.raftCommitIndex < ghost_index, "cut off: it cannot commit"

        elect_and_compact_past(old, new, third, ghost_index + 1)

        applied_indexes: list[int] = []
        apply_entry = old.store.apply_entry

        def recording(index: int, envelopes: Sequence[bytes]) -> Any:
            applied_indexes.append(index)
            return apply_entry(index, envelopes)

        old.store.apply_entry = recording  # type: ignore[method-assign]
        writer = old.raft._dump_writer
        deserialize = writer.deserialize
        lock_held_while_loading: list[bool] = []

        def loading(path: str) -> tuple[Any, Any, Any]:  # the dump writer must not rename over it meanwhile
            lock_held_while_loading.append(writer.path_lock.locked())
            return deserialize(path)

        writer.deserialize = loading  # type: ignore[method-assign]
        heal()
        third.raft._SyncObj__raftElectionDeadline = time.monotonic() + 3600
        tick_until(
            "the old leader to catch up from the snapshot",
            members,
            lambda: old.store.applied_index >= new.store.applied_index and not old.raft._isLeader(),
        )
        assert ghost_index not in applied_indexes, "the old leader applied an entry that never committed"
        assert not any(error == FAIL_REASON.SUCCESS for _, error in ghost_answers.results), ghost_answers.results
        assert old.raft.snapshot_commits_refused > 0, "the snapshot did arrive in chunks"
        assert lock_held_while_loading and all(lock_held_while_loading), lock_held_while_loading
        for member in members:
            with member.store.reader() as view:
                assert not any(b"ghost" in key for key, _ in view.scan(b"", b"\xff" * 8))


def test_a_failing_hook_after_apply_keeps_the_answer(tmp_path: Path) -> None:
    """The entry is applied and recorded before the member's hooks run: one that raises (the
    event loop closing under it) is logged, and the client still gets its outcome."""
    with hand_ticked_members(tmp_path) as members:
        leader = elect_first(members)

        def broken_hook(_outcomes: Any) -> None:
            raise RuntimeError("Event loop is closed")

        leader.raft.on_outcomes = broken_hook
        answers = Proposals(1)
        leader.raft.apply_batch(batch(0), callback=answers.callback())
        tick_until("the answer", members, answers.done.is_set)
        ((outcomes, error),) = answers.results
        assert error == FAIL_REASON.SUCCESS and isinstance(outcomes[0].result, Ok), answers.results


def test_a_dump_that_fails_its_check_is_answered_as_a_refusal(tmp_path: Path) -> None:
    """pysyncobj answers a leader's dump with success whether it loaded or not, naming the
    member's own log end. A deposed leader whose log ends in entries of its own term, sent a
    dump that lost a chunk on the way, was then counted by the new leader for entries it does
    not hold, and the new leader committed an entry it alone held (code review, 2026-12-07)."""
    with hand_ticked_members(tmp_path) as members:
        old, new, third = members
        assert elect_first(members) is old
        first = Proposals(1)
        old.raft.apply_batch(batch(0), callback=first.callback())
        tick_until("the pool to commit", members, first.done.is_set)

        heal = isolate(members, old)
        ghosts = Proposals(30)
        for number in range(30):  # a long tail of entries that never commit
            old.raft.apply_batch(claims_batch([f"ghost-{number}"], 1 + number), callback=ghosts.callback())
            old.raft.doTick(0.002)
        elect_and_compact_past(old, new, third, 3)

        transport = new.raft.allot_transport
        assert transport is not None
        send = transport.send
        dropped: list[int] = []

        def losing_a_chunk(node: Any, message: Any) -> bool:
            if str(node) == str(old.raft.selfNode) and isinstance(message, dict) and message.get("serialized"):
                _, is_first, is_last = message["serialized"]
                if not is_first and not is_last and not dropped:
                    dropped.append(1)
                    return True  # lost on the way: the dump arrives damaged
            return bool(send(node, message))

        transport.send = losing_a_chunk  # type: ignore[method-assign]
        failed_loads: list[str] = []
        deserialize = old.raft._dump_writer.deserialize

        def recording(path: str) -> tuple[Any, Any, Any]:
            try:
                return deserialize(path)
            except Exception as exc:
                failed_loads.append(repr(exc))
                raise

        old.raft._dump_writer.deserialize = recording  # type: ignore[method-assign]
        heal()
        third.raft._SyncObj__raftElectionDeadline = time.monotonic() + 3600
        tick_until("the damaged dump to fail its check", members, lambda: bool(dropped and failed_loads))
        for _ in range(5):  # the answer reaches the leader
            for member in (old, new):
                member.raft.doTick(0.002)
        assert old.raft.failed_dump_acks_refused > 0
        old_node = next(node for node in new.raft._SyncObj__raftMatchIndex if str(node) == str(old.raft.selfNode))
        match = new.raft._SyncObj__raftMatchIndex[old_node]
        assert match <= old.raft.raftCommitIndex, (match, old.raft.raftCommitIndex, old.raft.last_log_index())
        # And once the dump comes whole, the old leader catches up and holds none of its ghosts.
        transport.send = send  # type: ignore[method-assign]
        tick_until("the old leader to catch up", members, lambda: old.store.applied_index >= new.store.applied_index)
        assert not any(error == FAIL_REASON.SUCCESS for _, error in ghosts.results)
        with old.store.reader() as view:
            assert not any(b"ghost" in key for key, _ in view.scan(b"", b"\xff" * 8))
