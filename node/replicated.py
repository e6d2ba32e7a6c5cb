"""The replicated member: batching, proposals with deadlines, read barriers, status.

Requests arrive on the asyncio loop. Envelopes that arrive within `batch_window_s` (or while
the previous batch is being proposed) become ONE Raft log entry, applied in order in one LMDB
transaction on every member; each waiting request gets its own Outcome from this member's own
apply. pysyncobj calls back on its tick thread; results cross to the loop with
`call_soon_threadsafe`.

Linearizable reads: a read waits for a barrier, an entry proposed after the read began and
applied here. Every read waiting at the moment a batch is proposed shares that batch (a batch of
one no-op envelope when nothing else is pending). The entry is committed only by a leader
holding a majority in its term, and it is applied here after everything committed before it, so
the read sees every write acknowledged before it started, even right after a leader change or
while an old leader is cut off (its barrier cannot commit; the read times out instead).

Outcomes of proposals: pysyncobj's MISSING_LEADER, NOT_LEADER and QUEUE_FULL mean nothing was
appended: 503, safe to retry. DISCARDED means another entry won that index: not applied, 503.
REQUEST_DENIED (the leader refused an entry of another build than the majority's) is 503 too.
LEADER_CHANGED, UNKNOWN_OUTCOME and our own deadline mean it may or may not apply: 504, safe to
retry with the same request id (the state machine applies it at most once).

Scheduling (node/scheduling.py): the planner's node table follows the node records written by
each applied entry (handed over from the tick thread with the entry's outcomes, before the
entry's answers, so a plan released on its answer is already in the table); node heartbeats
heard over HTTP ride on the next keep-alive to every peer; the leader's timers (NotReady
verdicts, pending-queue sweeps) run as one task on the loop and propose through `submit` like
any request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from pysyncobj import FAIL_REASON
from pysyncobj.syncobj import _RAFT_STATE

from node.accelerate import build_state
from node.clock import clock_agrees, clock_skew_max_ms, wall_clock_ms
from node.config import MemberConfig
from node.member import (
    BuildsUnheardError,
    ClockSkewError,
    NoLeaderError,
    OutcomeUnknownError,
    OverloadedError,
    WritesPausedError,
)
from node.raft import (
    AllotRaft,
    DumpWriter,
    batch_envelopes_max,
    encode_batch,
    raft_conf,
    recover_dump,
    repair_journal,
)
from node.scheduling import HeartbeatTable, Planner, PodPlan, SchedulingTimers
from node.store import StoreError, open_replica_store
from statemachine import Envelope, Outcome, Principal, encode_envelope, preview, queries
from statemachine.context import Meta
from statemachine.machine import dedup_records_max, dedup_ttl_ms, idempotency_window_ms
from statemachine.pools import pool_id
from statemachine.view import ReadView

log = logging.getLogger("allot.member")
peer_link_warn_s = 10.0  # a peer without a working Raft link this long is logged (once per outage)

batch_bytes_max = 1 << 20  # one log entry carries at most this many envelope bytes
pending_max = 20_000  # envelopes waiting for a batch; beyond this requests get 503
no_leader_retry_s = 0.1  # the pause a 503 no_leader asks for (details.retryAfterMillis)
# Batches proposed by this member and not answered yet. While they are in flight, new envelopes
# gather into the next batch, so entries grow with load instead of staying tiny (each entry
# costs a journal sync and an LMDB commit on every member).
inflight_batches_max = 1
inflight_timeout_s = 1.0  # a proposal whose answer was lost (a forward to a dead leader) frees
# its slot after this, or at once when the leader changes; its requests still wait for their own
# answer or deadline
peer_build_fresh_s = 1.0  # a peer's build counts for this long after its keep-alive (sent every 0.1 s)
clock_handover_interval_s = 1.0  # a leader with a wrong clock asks a peer to take over at most this often
stop_handover_s = 2.0  # a leader being stopped waits this long at most for another member to take over
stop_handover_retry_s = 0.05  # ... asking again this often (pysyncobj refuses a target still catching up)
peer_build_wait_s = 1.0  # a proposal waits this long for a majority's keep-alives before a 503
peer_build_poll_s = 0.02
digest_interval_s = 1.0  # the state digest in /v1/status is recomputed at most this often

_ROLES = {_RAFT_STATE.LEADER: "leader", _RAFT_STATE.FOLLOWER: "follower", _RAFT_STATE.CANDIDATE: "candidate"}
_BARRIER_PRINCIPAL = Principal("allot-barrier", "", "", "admin")
_NOTHING_APPENDED = {FAIL_REASON.MISSING_LEADER, FAIL_REASON.NOT_LEADER, FAIL_REASON.DISCARDED}


@dataclass
class _Batch:
    envelopes: list[bytes] = field(default_factory=list)
    writers: list[asyncio.Future[Outcome]] = field(default_factory=list)
    readers: list[asyncio.Future[None]] = field(default_factory=list)
    size_bytes: int = 0
    release: asyncio.TimerHandle | None = None  # frees the in-flight slot if no answer comes
    released: bool = False
    leader_term: int | None = None  # a leader's own decision, fenced by its term (submit_as_leader)


@dataclass
class RaftSnapshot:
    """What the tick thread last saw: read by other threads without touching pysyncobj."""

    role: str = "follower"
    leader: str | None = None
    term: int = 0
    commit_index: int = 0
    last_log_index: int = 0  # the last entry in this member's log, committed or not
    leader_commit_index: int = 0
    last_applied: int = 0
    has_quorum: bool = False
    peers_connected: tuple[str, ...] = ()  # member ids this member has a working Raft link to


class ReplicatedMember:
    def __init__(self, config: MemberConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = _Batch()
        self._leader_pending: _Batch | None = None  # this leader's own decisions, one term (submit_as_leader)
        self._wake: asyncio.Event | None = None
        self._batcher: asyncio.Task[None] | None = None
        self._inflight_batches: dict[int, _Batch] = {}  # proposed, not answered; by id()
        self._raft_view = RaftSnapshot()
        self._peer_down_since: dict[str, float] = {}  # tick thread only: peer -> when its link was last seen down
        self._peers_warned: set[str] = set()
        self._digest: tuple[int, str, float] = (-1, "", 0.0)
        self._digest_lock = threading.Lock()
        self._digesting = False
        self._change_waiters: set[asyncio.Future[None]] = set()
        self.batches = 0
        self._last_batch_envelopes = 0
        self.batched_envelopes = 0
        self.apply_seconds = 0.0
        raft_dir = config.data_dir / "raft"
        raft_dir.mkdir(parents=True, exist_ok=True)
        self.store, torn = open_replica_store(config.data_dir / "state")
        if torn is not None:
            log.warning(
                "the store's last session ended in a power loss and its data file may be torn: set it aside "
                "as %s; rebuilding from the last dump and the journal, then from the leader",
                torn,
            )
        journal_path, dump_path = raft_dir / "journal", raft_dir / "dump"
        recover_dump(dump_path)  # before anything reads it
        repair_journal(journal_path, dump_path)
        self.dump_writer = DumpWriter(self.store, dump_path)
        conf = raft_conf(config.timing, config.secret(), config.raft_address, journal_path, dump_path)
        self.raft = AllotRaft(
            config.raft_address,
            config.peer_addresses,
            conf,
            self.store,
            self.dump_writer,
            self._on_applied,
            config.timing.keepalive_s,
        )
        self.planner = Planner()
        self.heartbeats = HeartbeatTable()
        self._peer_builds_reported: dict[str, str] = {}  # member id -> another build, logged (tick thread)
        # member id -> (its build, time.monotonic() when its keep-alive said so); written on the
        # tick thread, read (a copy) by the loop's proposals. Bounded by the member ids.
        self._peer_builds: dict[str, tuple[str, float]] = {}
        # member id -> (its wall clock in ms, time.monotonic() when its keep-alive said so); as
        # _peer_builds (node/clock.py says why).
        self._peer_clocks: dict[str, tuple[int, float]] = {}
        self._next_clock_handover_s = 0.0
        self._handover_wanted = False  # set by hand_over_leadership, read by the tick thread
        self._next_stop_handover_s = 0.0
        self.clock_handovers = 0  # leadership hand-overs asked for because this leader's clock was wrong
        self._quiesced = False  # set by quiesce(): this member proposes nothing more
        self.timers = SchedulingTimers(
            self.planner,
            self.heartbeats,
            config.timing.node_grace_s,
            config.timing.pending_retry_s,
            self._submit_own,
            config.timing.pod_eviction_s,
        )
        self._timers_task: asyncio.Task[None] | None = None
        self.metrics = ReplicationMetrics(self)
        self.raft.observe_apply_s = self.metrics.apply_seconds.observe
        self.raft.observe_sync_s = self.metrics.sync_seconds.observe
        self.raft.on_outcomes = self._on_outcomes
        self.raft.on_dump_installed = self._on_dump_installed
        self.raft.keepalive_payload = self._keepalive_payload
        self.raft.on_keepalive = self._on_keepalive
        self.raft.refuses_forwarded_build = self._refuses_forwarded_build
        self.raft.addOnTickCallback(self._observe)
        self.raft.waitBinded()

    # ---- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._batcher = asyncio.create_task(self._run_batcher(), name="allot-batcher")
        self._timers_task = asyncio.create_task(self._run_timers(), name="allot-scheduling-timers")

    async def stop(self) -> None:
        for task in (self._timers_task, self._batcher):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.timers.cancel()
        self.raft.destroy()
        deadline = time.monotonic() + 5
        # The digest thread too: closing the store under it made it die with an lmdb.Error
        # traceback in the log of a member stopping while a /v1/status poll had started one.
        while (self.raft.tick_thread_alive() or self._digesting) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self.store.close()

    @property
    def member_id(self) -> str:
        return self.config.member_id

    # ---- the tick thread's side ----------------------------------------------------------

    def _observe(self) -> None:
        """Tick callback: publish a consistent view of Raft state for other threads."""
        status = self.raft.getStatus()
        leader = status["leader"]
        if leader is not None and status.get(f"partner_node_status_server_{leader.id}", 2) != 2:
            # Our link to the leader is down. pysyncobj keeps naming it, and starts no election
            # while it is connected to nobody, so a member left alone would name a dead leader
            # forever and let every request wait out its deadline (504). Nothing can be
            # forwarded without the link: say "no leader" (503, retry elsewhere) instead.
            leader = None
        previous_leader = self._raft_view.leader
        self._raft_view = RaftSnapshot(
            role=_ROLES.get(status["state"], "unknown"),
            leader=self.config.member_of_address(leader.address) if leader is not None else None,
            term=int(status["raft_term"]),
            commit_index=int(status["commit_idx"]),
            last_log_index=self.raft.last_log_index(),
            leader_commit_index=int(status["leader_commit_idx"] or 0),
            last_applied=int(status["last_applied"]),
            has_quorum=bool(status["has_quorum"]),
            peers_connected=self._check_peer_links(status),
        )
        if self._raft_view.leader != previous_leader and self._loop is not None:
            self._loop.call_soon_threadsafe(self._release_all)
        if self._raft_view.role == "leader":
            self._hand_over_if_clock_wrong()
            self._hand_over_if_stopping()

    def _hand_over_if_stopping(self) -> None:
        """Tick thread, as leader: while `hand_over_leadership` waits, ask the follower
        `_handover_target` names to take over (pysyncobj's transferLeadership refuses one that
        lacks part of the log: asked again every `stop_handover_retry_s`)."""
        now = time.monotonic()
        if not self._handover_wanted or now < self._next_stop_handover_s:
            return
        self._next_stop_handover_s = now + stop_handover_retry_s
        target = self._handover_target(self.peer_clock_offsets_ms())
        # None: no follower qualifies (clocks not heard yet, say); pysyncobj then picks one.
        self.raft.transferLeadership(self.config.members[target] if target is not None else None)

    async def hand_over_leadership(self, timeout_s: float = stop_handover_s) -> str | None:
        """Before a stop: if this member leads, have another member take over, so that writes
        pause for the few milliseconds of a requested election instead of the election timeout
        the followers would wait out (etcd does the same on a clean stop). Meanwhile this
        member proposes nothing and refuses forwarded entries (AllotRaft.handing_over), so a
        follower can hold the whole log, which pysyncobj requires of the one it hands over
        to. Returns the new leader, or None (not the leader, no follower linked, a cluster
        being stopped as a whole, or no follower took over within `timeout_s`: the followers
        then elect one as after a crash)."""
        view = self._raft_view
        if view.role != "leader" or self._quiesced or not view.peers_connected:
            return None  # no follower could take over: do not hold writes back for nothing
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._handover_wanted = self.raft.handing_over = True
        try:
            # Until another member is named leader: stepping down comes first (its vote request
            # names a later term), its first AppendEntries a moment later. The batcher waits
            # until then too: proposed with no leader named, requests would be answered 503.
            while (self._raft_view.role == "leader" or self._raft_view.leader is None) and loop.time() < deadline:
                await asyncio.sleep(0.01)
        finally:
            self._handover_wanted = self.raft.handing_over = False
        view = self._raft_view
        if view.role == "leader" or view.leader is None:
            log.warning("no member took over leadership within %.1f s; stopping (role %s)", timeout_s, view.role)
            return None
        log.info("handed leadership over before stopping (leader now: %s, term %d)", view.leader, view.term)
        return view.leader

    def _hand_over_if_clock_wrong(self) -> None:
        """Tick thread, as leader: hand leadership to a member whose clock agrees with a
        majority's, while this one's does not (Raft's TimeoutNow, pysyncobj's transferLeadership).

        Such a leader refuses the writes sent to it and its own decisions, which only a leader
        makes: node NotReady transitions, evictions, pending-pod sweeps (`_clock_check`). Left
        leading, it stopped all of those for the cluster until its clock was put right. The
        target must have the leader's whole log (pysyncobj refuses otherwise); under a steady
        stream of writes that may take a few tries, one a second. No target whose clock agrees:
        nothing is handed over (every member would refuse the same decisions)."""
        now = time.monotonic()
        if now < self._next_clock_handover_s:
            return
        offsets = self.peer_clock_offsets_ms()
        members = len(self.config.members)
        if clock_agrees(0, offsets, members):
            return
        self._next_clock_handover_s = now + clock_handover_interval_s
        target = self._handover_target(offsets)
        if target is None:
            return
        log.warning(
            "this leader's clock disagrees with a majority's: asking %s, whose clock agrees, to take over", target
        )
        self.clock_handovers += 1
        self.raft.transferLeadership(self.config.members[target])

    def _handover_target(self, offsets: dict[str, int]) -> str | None:
        """Tick thread: the follower to hand leadership to, if any: linked, of this member's
        build, its clock agreeing with a majority's (as this leader estimates the clocks), and
        with the most of the log (pysyncobj hands over only to one that has all of it); on a
        tie the lowest id. pysyncobj's own choice, without a target, ignores clocks and builds:
        a leader stopped for a rolling restart handed over to the member whose clock was wrong,
        which handed over again a few seconds later (QA, 2026-12-08)."""
        members = len(self.config.members)
        clocks = {self.member_id: 0, **offsets}
        other_builds = self.other_builds()
        matched = self.raft.match_indexes()
        best: tuple[int, str] | None = None
        for member in self._raft_view.peers_connected:
            offset = offsets.get(member)
            if offset is None or member in other_builds:
                continue
            if not clock_agrees(offset, {other: value for other, value in clocks.items() if other != member}, members):
                continue
            address = self.config.members[member]
            candidate = (matched.get(address, 0), member)
            if best is None or (-candidate[0], candidate[1]) < (-best[0], best[1]):
                best = candidate
        return best[1] if best is not None else None

    def _check_peer_links(self, status: dict[str, Any]) -> tuple[str, ...]:
        """Tick thread: the peers with a working link; and a warning once a peer has had none
        for `peer_link_warn_s`. pysyncobj drops a connection whose messages do not decrypt
        without a word, so a member started with another cluster's secret, or a peer that is
        down or unreachable, would otherwise leave no trace in any log."""
        now = time.monotonic()
        connected: list[str] = []
        for member_id, address in sorted(self.config.members.items()):
            if member_id == self.config.member_id:
                continue
            if status.get(f"partner_node_status_server_{address}") == 2:
                connected.append(member_id)
                self._peer_down_since.pop(member_id, None)
                if member_id in self._peers_warned:
                    self._peers_warned.discard(member_id)
                    log.info("Raft link to %s (%s) is up again", member_id, address)
                continue
            since = self._peer_down_since.setdefault(member_id, now)
            if now - since >= peer_link_warn_s and member_id not in self._peers_warned:
                self._peers_warned.add(member_id)
                log.warning(
                    "no Raft link to %s (%s) for %.0f s: is it running and reachable, and does it use this "
                    "cluster's secret (%s)? A peer with another secret is dropped without a word",
                    member_id,
                    address,
                    now - since,
                    self.config.secret_file,
                )
        return tuple(connected)

    def _on_applied(self, index: int) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify_changed)

    def _on_outcomes(self, outcomes: list[Outcome]) -> None:
        """Tick thread: hand the node and scheduler records an entry wrote to the planner."""
        if self._loop is None:
            return  # replay at start: the planner loads from the store when first used
        scheduling = Planner.observed(write for outcome in outcomes for write in outcome.writes)
        if scheduling:
            self._loop.call_soon_threadsafe(self.planner.observe, scheduling)

    def _on_dump_installed(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.planner.invalidate)

    def _keepalive_payload(self) -> dict[str, Any]:
        """Tick thread: this member's id and build, and the node heartbeats heard here since
        the last keep-alive."""
        payload: dict[str, Any] = {"member": self.member_id, "build": self.raft.build_id, "wallMs": wall_clock_ms()}
        sightings = self.heartbeats.take_outbox()
        if sightings:
            payload["sightings"] = sightings
        return payload

    def _on_keepalive(self, message: dict[str, Any]) -> None:
        sightings = message.get("sightings")
        if isinstance(sightings, list):
            self.heartbeats.record_forwarded(sightings)
        self._note_peer_build(message.get("member"), message.get("build"))
        member, wall_ms = message.get("member"), message.get("wallMs")
        if member in self.config.members and isinstance(wall_ms, int) and not isinstance(wall_ms, bool):
            self._peer_clocks[member] = (wall_ms, time.monotonic())

    def _note_peer_build(self, member: Any, build: Any) -> None:
        """Remember the peer's build (`other_builds`), and say once per peer and build when it
        runs another build: the first entry a member of one build applies from a member of the
        other stops it (`AllotRaft.apply_batch`), and this line, written before any entry
        passes, names the two."""
        if not isinstance(build, str) or member not in self.config.members:
            return
        self._peer_builds[member] = (build, time.monotonic())
        if build == self.raft.build_id:
            self._peer_builds_reported.pop(member, None)  # back on this build: say it again if it leaves
            return
        if self._peer_builds_reported.get(member) == build:
            return
        self._peer_builds_reported[member] = build  # keyed by the cluster's member ids: bounded
        log.error(
            "member %s runs build %s, this member build %s: every member must run the same build "
            "(README, Upgrading); a member stops at the first log entry of another build",
            member,
            build,
            self.raft.build_id,
        )

    def _notify_changed(self) -> None:
        """On the loop: wake everything waiting for the state to change."""
        waiters, self._change_waiters = self._change_waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- proposals -------------------------------------------------------------------------

    def other_builds(self) -> dict[str, str]:
        """The peers whose keep-alive of the last `peer_build_fresh_s` named another build."""
        now = time.monotonic()
        own = self.raft.build_id
        return {
            member: build
            for member, (build, heard_at) in list(self._peer_builds.items())
            if build != own and now - heard_at <= peer_build_fresh_s
        }

    def quiesce(self) -> None:
        """Propose nothing more: writes, linearizable reads and the leader's own decisions are
        refused from now on (`WritesPausedError`), so that a cluster being stopped (for an
        upgrade) can settle on one log: every member's last entry committed and applied. For
        this process only; `resume` (SIGUSR2) or a restart ends it."""
        if not self._quiesced:
            self._quiesced = True
            log.info("member %s quiesced: it proposes nothing more until SIGUSR2 or a restart", self.member_id)
            # Requests taken before and not proposed yet are refused as a new one is: proposed
            # after the quiesce, one could add an entry after allot up saw the log settled.
            pending, self._pending = self._pending, _Batch()
            leader_batch, self._leader_pending = self._leader_pending, None
            waiting: list[asyncio.Future[Any]] = [*pending.writers, *pending.readers]
            if leader_batch is not None:
                waiting += [*leader_batch.writers, *leader_batch.readers]
            for future in waiting:
                if not future.done():
                    future.set_exception(
                        WritesPausedError(f"member {self.member_id} is stopping (quiesced): nothing was proposed")
                    )

    def resume(self) -> None:
        """End `quiesce`: propose again (an upgrade called off). Entries appended meanwhile by
        other members need nothing: this member never stopped applying."""
        if self._quiesced:
            self._quiesced = False
            log.info("member %s resumed: it proposes again", self.member_id)

    def _enqueue_check(self) -> None:
        if self._quiesced:
            raise WritesPausedError(
                f"member {self.member_id} is stopping (quiesced): it proposes nothing more; "
                "reads with consistency=stale still answer"
            )
        if self._raft_view.leader is None:
            # An election takes one election timeout (0.3-0.6 s) from when the old leader went
            # silent, and this member has been waiting part of it already: ask for a short pause.
            raise NoLeaderError("no leader is known right now; retry shortly", no_leader_retry_s)
        if len(self._pending.envelopes) >= pending_max:
            raise OverloadedError("too many requests are waiting to be proposed; retry shortly")
        self._build_majority_check()

    async def _proposable(self) -> None:
        """`_enqueue_check`, after waiting up to `peer_build_wait_s` while the only objection
        is that no majority was heard yet: a member just started (or just back from a pause)
        hears its peers within a tenth of a second, and its first clients should not get a
        503 for that."""
        deadline: float | None = None
        while True:
            try:
                self._enqueue_check()
                return
            except BuildsUnheardError:
                now = time.monotonic()
                deadline = now + peer_build_wait_s if deadline is None else deadline
                if now >= deadline:
                    raise
                await asyncio.sleep(peer_build_poll_s)

    def _own_build_has_majority(self) -> bool:
        """Whether a majority of the members, this one included, named this member's build in
        a keep-alive of the last `peer_build_fresh_s`. Any thread: it reads a copy."""
        now = time.monotonic()
        own = self.raft.build_id
        same = 1 + sum(
            1
            for build, heard_at in list(self._peer_builds.values())
            if build == own and now - heard_at <= peer_build_fresh_s
        )
        return 2 * same > len(self.config.members)

    def peer_clock_offsets_ms(self) -> dict[str, int]:
        """Each peer heard in the last `peer_build_fresh_s`: how far its wall clock is ahead of
        this member's (negative: behind), estimated from its last keep-alive. Any thread."""
        now_s, own_ms = time.monotonic(), wall_clock_ms()
        return {
            member: wall_ms + int((now_s - heard_at) * 1000) - own_ms
            for member, (wall_ms, heard_at) in list(self._peer_clocks.items())
            if now_s - heard_at <= peer_build_fresh_s
        }

    def _clock_check(self) -> None:
        """Propose writes only while this member's clock agrees with a majority's (node/clock.py):
        the time it stamps on them becomes the cluster's for good. Called after `_proposable`,
        so a majority's keep-alives were heard lately. A read barrier's no-op is not checked:
        the state machine answers a no-op before it reads the envelope's time."""
        offsets = self.peer_clock_offsets_ms()
        if clock_agrees(0, offsets, len(self.config.members)):
            return
        said = ", ".join(f"{member} {offset / 1000:+.1f} s" for member, offset in sorted(offsets.items()))
        raise ClockSkewError(
            f"member {self.member_id}'s clock disagrees with the other members' by more than "
            f"{clock_skew_max_ms / 1000:g} s (their clocks against its own: {said or 'none heard'}): it takes "
            "no writes, since the time it stamps on them becomes the cluster's; correct its clock (NTP)"
        )

    def _refuses_forwarded_build(self, build: str | None) -> bool:
        """Tick thread, on the leader (`AllotRaft._applyCommand`): refuse a follower's entry of
        another build while a majority runs this member's, since every member of that majority
        would stop at it. While this leader's own build is outvoted it refuses nothing: the
        entry is the majority's, this member stops at it, and the others go on."""
        return build != self.raft.build_id and self._own_build_has_majority()

    def _build_majority_check(self) -> None:
        """Propose only while a majority of the members, this one included, were heard lately
        (keep-alives, every 0.1 s) naming this member's build. A member of another build than
        the majority's would make entries that stop every member of the majority's build;
        refusing, it stops instead at the first entry of theirs (AllotRaft.apply_batch). A
        member just started has heard nobody yet: it waits the tenth of a second (exploratory
        testing, 2026-12-07: one started on the wrong build, with clients already sending to
        it, proposed before it heard anyone and stopped both others in 2 of 6 tries)."""
        if self._own_build_has_majority():
            return
        own = self.raft.build_id
        other = self.other_builds()
        if not other:
            raise BuildsUnheardError(
                f"member {self.member_id} has not heard a majority of the members name their build "
                f"in the last {peer_build_fresh_s:.0f} s; retry shortly",
                0.2,
            )
        named = ", ".join(f"{member} runs {build}" for member, build in sorted(other.items()))
        raise WritesPausedError(
            f"the members run different builds ({named}; member {self.member_id} runs {own}), and a majority "
            f"does not run this member's: it takes no writes (README, Upgrading)"
        )

    async def submit(self, envelope: bytes, timeout_s: float) -> Outcome:
        await self._proposable()
        self._clock_check()  # writes only: a read barrier's no-op moves no clock
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._pending.envelopes.append(envelope)
        self._pending.writers.append(future)
        self._pending.size_bytes += len(envelope)
        self._kick()
        return await self._result(future, timeout_s)

    async def submit_as_leader(self, envelope: bytes, leader_term: int, timeout_s: float) -> Outcome:
        """A decision this member made as the leader of `leader_term` (the scheduling timers):
        proposed in an entry fenced by that term, so that it applies only if this member
        appends it while still leading that term (node/raft.py, `apply_batch`). Decisions of
        one term wait together and leave as one entry (a rack going NotReady is one entry, not
        one per node), never with requests: the fence refuses the whole entry."""
        await self._proposable()
        self._clock_check()
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        pending = self._leader_pending
        if pending is not None and pending.leader_term != leader_term:
            # Decided in an earlier term and not yet proposed: the fence would refuse them.
            for writer in pending.writers:
                if not writer.done():
                    writer.set_exception(NoLeaderError("this member's term ended before its decision was proposed"))
            pending = None
        if pending is None:
            pending = self._leader_pending = _Batch(leader_term=leader_term)
        pending.envelopes.append(envelope)
        pending.writers.append(future)
        pending.size_bytes += len(envelope)
        self._kick()
        return await self._result(future, timeout_s)

    async def _result(self, future: asyncio.Future[Outcome], timeout_s: float) -> Outcome:
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise OutcomeUnknownError(
                f"no result within {timeout_s:.1f} s; the write may or may not apply. "
                "Retrying with the same Idempotency-Key is safe"
            ) from None

    async def read_barrier(self, timeout_s: float) -> None:
        await self._proposable()
        if len(self._pending.readers) >= pending_max:
            raise OverloadedError("too many reads are waiting for a barrier; retry shortly")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.readers.append(future)
        self._kick()
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            raise OutcomeUnknownError(
                f"could not confirm this member is current within {timeout_s:.1f} s "
                "(no leader with a majority?); retry, or read with consistency=stale"
            ) from None

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run_batcher(self) -> None:
        if self._wake is None:
            raise RuntimeError("start() must run before the batcher")
        window_s = self.config.timing.batch_window_s
        while True:
            await self._wake.wait()
            self._wake.clear()
            if window_s > 0 and self._last_batch_envelopes > 1:
                # Under load, let the envelopes of this moment join the batch. A lone caller
                # (the last batch held one envelope) is not kept waiting for company that is
                # not coming: under load the one-batch-in-flight rule batches anyway.
                await asyncio.sleep(window_s)
            while self._handover_wanted:  # bounded by hand_over_leadership's deadline
                # Nothing new in the log until a follower with all of it takes over; then the
                # requests go to the new leader, through this member.
                await asyncio.sleep(0.005)
            while self._has_pending() and len(self._inflight_batches) < inflight_batches_max:
                self._propose(self._next_batch())

    def _has_pending(self) -> bool:
        return bool(self._pending.envelopes or self._pending.readers or self._leader_pending)

    def _next_batch(self) -> _Batch:
        """The leader's own decisions first (few, and a node's condition is time-sensitive),
        then requests."""
        leader_batch = self._leader_pending
        if leader_batch is not None:
            self._leader_pending = None
            return leader_batch
        return self._take_batch()

    def _take_batch(self) -> _Batch:
        pending = self._pending
        if len(pending.envelopes) <= batch_envelopes_max and pending.size_bytes <= batch_bytes_max:
            self._pending = _Batch()
            return pending
        taken = _Batch(readers=pending.readers)
        size = 0
        count = 0
        for envelope in pending.envelopes:
            if count == batch_envelopes_max or (count and size + len(envelope) > batch_bytes_max):
                break
            size += len(envelope)
            count += 1
        taken.envelopes, pending.envelopes = pending.envelopes[:count], pending.envelopes[count:]
        taken.writers, pending.writers = pending.writers[:count], pending.writers[count:]
        taken.size_bytes, pending.size_bytes = size, pending.size_bytes - size
        pending.readers = []
        return taken

    def _propose(self, batch: _Batch) -> None:
        envelopes = batch.envelopes
        if not envelopes:  # only readers: one no-op entry is their barrier
            noop = Envelope("noop", {}, _BARRIER_PRINCIPAL, None, wall_clock_ms())
            envelopes = [encode_envelope(noop)]
        loop = asyncio.get_running_loop()
        self.batches += 1
        self.batched_envelopes += len(batch.envelopes)
        self._last_batch_envelopes = len(envelopes)
        self.metrics.batch_envelopes.observe(len(envelopes))
        self._inflight_batches[id(batch)] = batch
        batch.release = loop.call_later(inflight_timeout_s, self._release, batch)

        def on_result(result: Any, error: int) -> None:  # on the tick thread
            loop.call_soon_threadsafe(self._resolve, batch, result, error)

        entry = encode_batch(envelopes, batch.leader_term, build=self.raft.build_id, proposer=self.member_id)
        self.raft.apply_batch(entry, callback=on_result)

    def _release(self, batch: _Batch) -> None:
        if batch.released:
            return
        batch.released = True
        if batch.release is not None:
            batch.release.cancel()
        self._inflight_batches.pop(id(batch), None)
        self._kick()

    def _release_all(self) -> None:
        """The leader changed: answers to batches sent to the old one may never come."""
        for batch in list(self._inflight_batches.values()):
            self._release(batch)

    def _resolve(self, batch: _Batch, result: Any, error: int) -> None:
        self._release(batch)
        if error == FAIL_REASON.SUCCESS and isinstance(result, list):
            for future, outcome in zip(batch.writers, result, strict=False):
                if not future.done():
                    future.set_result(outcome)
            for reader in batch.readers:
                if not reader.done():
                    reader.set_result(None)
            return
        exception: Exception
        if error in _NOTHING_APPENDED:
            exception = NoLeaderError(f"the leader changed before the write was appended (reason {error}); retry")
        elif error == FAIL_REASON.REQUEST_DENIED:  # only AllotRaft._applyCommand denies
            exception = WritesPausedError(
                f"the leader did not append this member's entry: member {self.member_id} runs build "
                f"{self.raft.build_id}, and a majority runs the leader's (README, Upgrading); nothing was written"
            )
        elif error == FAIL_REASON.QUEUE_FULL:
            exception = OverloadedError("the Raft queue is full; retry shortly")
        else:
            exception = OutcomeUnknownError(
                f"the leader changed while the write was in flight (reason {error}); "
                "retrying with the same Idempotency-Key is safe"
            )
        for writer in batch.writers:
            if not writer.done():
                writer.set_exception(exception)
        for reader in batch.readers:
            if not reader.done():
                reader.set_exception(exception)

    # ---- scheduling (node/scheduling.py) ------------------------------------------------------

    def plan_pod(self, spec: Any, principal: Principal) -> PodPlan | None:
        with self.store.reader() as view:
            return self.planner.plan(view, spec, principal)

    def release_plan(self, plan: PodPlan) -> None:
        self.planner.release(plan)

    def record_heartbeat(self, name: str) -> bool:
        return self.heartbeats.record(name, forward=True)

    def scheduling_stats(self) -> dict[str, int]:
        with self.store.reader() as view:
            self.planner.ensure_loaded(view)
        return {**self.planner.stats(), **self.timers.stats()}

    async def _submit_own(self, envelope: bytes, leader_term: int) -> Outcome:
        return await self.submit_as_leader(envelope, leader_term, self.config.timing.node_grace_s)

    async def _run_timers(self) -> None:
        """The leader's timers, checked every `timers.period_s` on every member (only the
        leader acts; a member that becomes leader starts its grace period then)."""
        while True:
            await asyncio.sleep(self.timers.period_s)
            if self._quiesced:
                continue  # a quiesced member proposes nothing, its timers' decisions included
            try:
                view = self._raft_view
                leader_term = view.term if view.role == "leader" else None
                with self.store.reader() as read_view:
                    self.timers.run_once(read_view, leader_term, time.monotonic())
            except Exception:  # a timer bug must not end the member's timers for good
                log.exception("the scheduling timers failed; trying again next period")

    # ---- reads -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reader(self) -> Iterator[ReadView]:
        with self.store.reader() as view:
            yield view

    def dry_run(self, envelope: bytes) -> Outcome:
        with self.store.reader() as view:
            return preview(view, envelope)

    async def wait_for_change(self, revision: int, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            with self.store.reader() as view:
                if Meta.load(view).revision > revision:
                    return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            # No await between the check and registering: a change applied in between is
            # delivered by call_soon_threadsafe after this coroutine yields, so it is not lost.
            waiter: asyncio.Future[None] = loop.create_future()
            self._change_waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                return
            finally:
                self._change_waiters.discard(waiter)

    def ready(self) -> bool:
        """Caught up with the leader's commit, and not quiesced (a member being stopped)."""
        view = self._raft_view
        return not self._quiesced and view.leader is not None and view.last_applied >= view.leader_commit_index

    def _state_digest(self) -> tuple[int, str | None]:
        """(applied index, digest) as last computed. A full-state hash takes time on a large
        state, so it is computed on a background thread, at most once per `digest_interval_s`;
        a caller that needs the digest of the current state waits until digestIndex equals
        appliedIndex."""
        with self._digest_lock:
            index, value, computed_s = self._digest
            stale = index != self.store.applied_index and time.monotonic() - computed_s >= digest_interval_s
            if stale and not self._digesting:
                self._digesting = True
                threading.Thread(target=self._compute_digest, name="allot-digest", daemon=True).start()
        return index, value or None

    def _compute_digest(self) -> None:
        try:
            index, value = self.store.digest_at()
            with self._digest_lock:
                self._digest = (index, value, time.monotonic())
        except StoreError as exc:
            log.info("state digest not computed: %s; computed again on the next status", exc)
        finally:
            self._digesting = False

    def status(self, include_digest: bool = True) -> dict[str, Any]:
        view = self._raft_view
        with self.store.reader() as read_view:
            meta = Meta.load(read_view)
        revision = meta.revision
        status: dict[str, Any] = {
            "memberId": self.member_id,
            "pid": os.getpid(),  # to signal it (chaos by hand: kill -9 the leader)
            "role": view.role,
            "leader": view.leader,
            "term": view.term,
            "commitIndex": view.commit_index,
            "lastLogIndex": view.last_log_index,  # above commitIndex: entries not committed yet
            "appliedIndex": self.store.applied_index,
            "revision": revision,
            "snapshotIndex": self.dump_writer.last_dump_index,
            # How far back a retried request id is still recognised (statemachine/machine.py).
            "idempotency": {
                "records": meta.dedup_records,
                "recordsMax": dedup_records_max,
                "ttlMs": dedup_ttl_ms,
                "windowMs": idempotency_window_ms(meta),
            },
            "members": sorted(self.config.members),
            "hasQuorum": view.has_quorum,
            "peersConnected": list(view.peers_connected),
            "batches": self.batches,
            "batchedEnvelopes": self.batched_envelopes,
            "journalSyncs": self.raft.journal_syncs,
            "appendEntriesSent": self.raft.append_entries_sent,
            "repeatedAcksSkipped": self.raft.repeated_acks_skipped,
            "nextIndexRegressionsKept": self.raft.next_index_regressions_kept,
            "peerClockOffsetsMs": self.peer_clock_offsets_ms(),
            "snapshotCommitsRefused": self.raft.snapshot_commits_refused,
            "failedDumpAcksRefused": self.raft.failed_dump_acks_refused,
            "dumpsSuperseded": self.dump_writer.dumps_superseded,
            "clockHandovers": self.clock_handovers,
            "resentEntriesReceived": self.raft.resent_entries_received,
            "fencedEntriesRefused": self.raft.fenced_entries_refused,
            "forwardedEntriesRefused": self.raft.forwarded_entries_refused,
            "commitsHeldForSync": self.raft.commits_held_for_sync,
            "acksHeldForSync": self.raft.acks_held_for_sync,
            "stateMachineBuild": "compiled" if build_state().compiled else "python",
            "buildId": self.raft.build_id,  # every member must show the same (node/build_identity.py)
            "otherBuilds": self.other_builds(),  # peers heard lately on another build
            # Quiesced, and none of its proposals still waits for an answer (allot up's settle).
            "quiesced": self._quiesced and not self._inflight_batches,
            # Every entry in this member's log committed and applied (pysyncobj's own no-op
            # entries too, which appliedIndex does not count): with every member quiesced and
            # settled at one commitIndex, the cluster can stop on one state (README, Upgrading).
            "logSettled": view.last_log_index == view.commit_index == view.last_applied,
        }
        if include_digest:
            status["digestIndex"], status["digest"] = self._state_digest()
        return status


class ReplicationMetrics:
    """Prometheus metrics of the replicated member, collected into the HTTP app's registry.

    Histograms are created unregistered (`registry=None`) and yielded by `collect`, so each
    member (and each test building several) keeps its own."""

    pools_exported_max = 1000  # per-pool series are bounded: label cardinality is a resource

    def __init__(self, member: ReplicatedMember) -> None:
        self._member = member
        self.apply_seconds = Histogram(
            "allot_apply_duration_seconds",
            "time to apply one log entry (a batch) to the store, in one LMDB transaction",
            buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
            registry=None,
        )
        self.sync_seconds = Histogram(
            "allot_journal_sync_duration_seconds",
            "time to sync the Raft journal before acknowledging",
            buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0),
            registry=None,
        )
        self.batch_envelopes = Histogram(
            "allot_batch_envelopes",
            "envelopes per log entry proposed by this member",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096),
            registry=None,
        )

    def collect(self) -> Iterator[Metric]:
        yield from self.apply_seconds.collect()
        yield from self.sync_seconds.collect()
        yield from self.batch_envelopes.collect()
        raft = self._member.raft
        yield CounterMetricFamily(
            "allot_raft_append_entries_sent",
            "AppendEntries rounds this member sent as leader (one message to each follower)",
            value=raft.append_entries_sent,
        )
        yield CounterMetricFamily(
            "allot_raft_repeated_acks_skipped",
            "acknowledgements this member left out as follower because they repeated its last one",
            value=raft.repeated_acks_skipped,
        )
        yield CounterMetricFamily(
            "allot_raft_next_index_regressions_kept",
            "acknowledgements this member received as leader that would have moved a follower's next index back",
            value=raft.next_index_regressions_kept,
        )
        yield CounterMetricFamily(
            "allot_raft_snapshot_commits_refused",
            "snapshot chunks received as follower that would have moved the commit index over an unchecked log",
            value=raft.snapshot_commits_refused,
        )
        yield CounterMetricFamily(
            "allot_raft_failed_dump_acks_refused",
            "leaders' dumps that failed their check here, answered as a refusal instead of pysyncobj's success",
            value=raft.failed_dump_acks_refused,
        )
        yield CounterMetricFamily(
            "allot_raft_dumps_superseded",
            "this member's own dumps dropped because a leader's newer dump arrived while they were written",
            value=self._member.dump_writer.dumps_superseded,
        )
        yield CounterMetricFamily(
            "allot_raft_fenced_entries_refused",
            "leader-fenced entries (the scheduling timers' decisions) refused because another term appended them",
            value=raft.fenced_entries_refused,
        )
        yield CounterMetricFamily(
            "allot_raft_forwarded_entries_refused",
            "entries a follower of another build forwarded that this member, as leader, did not append",
            value=raft.forwarded_entries_refused,
        )
        yield CounterMetricFamily(
            "allot_raft_resent_entries_received",
            "log entries received as follower at indexes its log already held (repeats, or replacements)",
            value=raft.resent_entries_received,
        )
        yield CounterMetricFamily(
            "allot_raft_commits_held_for_sync",
            "times this member, as leader, held its commit index back until its own journal sync finished",
            value=raft.commits_held_for_sync,
        )
        yield CounterMetricFamily(
            "allot_raft_acks_held_for_sync",
            "acknowledgements this member, as follower, cut back to its synced entries (the rest followed the sync)",
            value=raft.acks_held_for_sync,
        )
        allocated = GaugeMetricFamily(
            "allot_pool_allocated_addresses", "addresses held by allocations and child pools", labels=["pool"]
        )
        total = GaugeMetricFamily(
            "allot_pool_capacity_addresses", "usable addresses (reserved ones excluded)", labels=["pool"]
        )
        with self._member.store.reader() as view:
            listed = queries.list_objects(view, _BARRIER_PRINCIPAL, "ippools", limit=self.pools_exported_max)
        for pool in listed["items"]:
            metadata, capacity = pool["metadata"], pool["status"]["capacity"]
            name = pool_id(metadata["org"], metadata["project"], metadata["name"])
            allocated.add_metric([name], capacity["allocated"])
            total.add_metric([name], capacity["total"])
        yield allocated
        yield total
