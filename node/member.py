"""What the HTTP layer needs from a member, and a local (non-replicated) member.

The HTTP layer builds envelopes and reads state; it does not know about Raft. A `Member`
commits envelopes (through Raft, in the replicated member) and answers each with its own
Outcome, gives linearizable read barriers, read views of the applied state, and a way to wait
for the state to move past a revision (for watches).

`LocalMember` applies envelopes directly to one store, in order, under a lock: a single-member
Allot with the same API, used by the HTTP tests and for trying the API without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from node.clock import wall_clock_ms
from node.config import Timing
from node.memstore import MemoryStore
from node.scheduling import HeartbeatTable, Planner, PodPlan, SchedulingTimers
from statemachine import Outcome, Principal, apply, preview
from statemachine.context import Meta
from statemachine.invariants import digest
from statemachine.view import ReadView


class MemberError(Exception):
    """A request could not be carried out by this member."""


class NoLeaderError(MemberError):
    """No leader is known right now: nothing was proposed; retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float = 0.5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class OverloadedError(MemberError):
    """The proposal queue is full: nothing was proposed; retry later."""

    def __init__(self, message: str, retry_after_s: float = 0.2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WritesPausedError(MemberError):
    """This member proposes nothing now (it is stopping, or its cluster runs mixed builds):
    nothing was proposed; stale reads still answer."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BuildsUnheardError(WritesPausedError):
    """No majority of the members was heard lately naming this member's build (it has just
    started, or its peers are silent): it proposes nothing yet."""


class ClockSkewError(WritesPausedError):
    """This member's wall clock disagrees with a majority's (node/clock.py): it proposes no
    write until it is corrected; reads, linearizable ones included, still answer."""


class OutcomeUnknownError(MemberError):
    """The deadline passed after the proposal left this member: it may or may not apply.

    Retrying with the same request id is safe: the state machine applies it at most once.
    """


class Member(Protocol):
    @property
    def member_id(self) -> str: ...

    async def submit(self, envelope: bytes, timeout_s: float) -> Outcome:
        """Commit one encoded envelope and return its own Outcome once applied here."""

    async def read_barrier(self, timeout_s: float) -> None:
        """Return once this member has applied everything committed before the call began."""

    def reader(self) -> contextlib.AbstractContextManager[ReadView]:
        """A consistent read view of this member's applied state."""

    def dry_run(self, envelope: bytes) -> Outcome:
        """What the envelope would be answered if applied to this member's state now; nothing
        is proposed or written (statemachine.preview)."""

    async def wait_for_change(self, revision: int, timeout_s: float) -> None:
        """Return once the state's revision exceeds `revision`, or the timeout passes."""

    def ready(self) -> bool:
        """Caught up with the leader's commit index and able to serve."""

    def status(self, include_digest: bool = True) -> dict[str, Any]:
        """Member id, role, leader, term, commit and applied index, revision, digest, ...

        The digest hashes the whole state: callers that do not show it (metrics scrapes) pass
        include_digest=False so they never pay for it."""

    def plan_pod(self, spec: Any, principal: Principal) -> PodPlan | None:
        """A node for a pod.create (node/scheduling.py), reserved until `release_plan`."""

    def release_plan(self, plan: PodPlan) -> None:
        """The pod.create carrying this plan was answered or failed."""

    def record_heartbeat(self, name: str) -> bool:
        """A node's heartbeat heard over HTTP: remembered here and forwarded to the peers."""

    def scheduling_stats(self) -> dict[str, int]:
        """Nodes ready / not ready / cordoned, pods bound / pending, plans in flight; what this
        member's leader timers proposed (`SchedulingTimers.stats`)."""


class LocalMember:
    """A single-member Allot: no Raft, every envelope applied at once, in order."""

    def __init__(
        self,
        member_id: str = "local",
        store: MemoryStore | None = None,
        timing: Timing | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self._member_id = member_id
        self._store = store if store is not None else MemoryStore()
        self._lock = threading.Lock()  # one envelope at a time, as the log would order them
        self._index = 0
        self._changed: asyncio.Condition | None = None
        self._started_s = time.monotonic()
        timing = timing or Timing()
        self.planner = Planner(clock)
        self.heartbeats = HeartbeatTable(clock)
        self.timers = SchedulingTimers(
            self.planner,
            self.heartbeats,
            timing.node_grace_s,
            timing.pending_retry_s,
            self._submit_own,
            timing.pod_eviction_s,
            wall_ms,
        )

    @property
    def member_id(self) -> str:
        return self._member_id

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def submit(self, envelope: bytes, timeout_s: float) -> Outcome:
        with self._lock:
            self._index += 1
            outcome = apply(self._store, envelope, self._index)
            self._store.apply_writes(outcome.writes)
            self.planner.observe(Planner.observed(outcome.writes))  # as a replicated member does
        if outcome.writes:
            condition = self._condition()
            async with condition:
                condition.notify_all()
        return outcome

    async def read_barrier(self, timeout_s: float) -> None:
        return None  # one member: everything committed is applied already

    @contextlib.contextmanager
    def reader(self) -> Iterator[ReadView]:
        with self._lock:
            yield self._store

    def dry_run(self, envelope: bytes) -> Outcome:
        with self.reader() as view:
            return preview(view, envelope)

    async def wait_for_change(self, revision: int, timeout_s: float) -> None:
        condition = self._condition()
        async with condition:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    condition.wait_for(lambda: Meta.load(self._store).revision > revision), timeout_s
                )

    def ready(self) -> bool:
        return True

    def status(self, include_digest: bool = True) -> dict[str, Any]:
        with self._lock:
            meta = Meta.load(self._store)
            state_digest = digest(self._store) if include_digest else None
        status = {
            "memberId": self._member_id,
            "role": "leader",
            "leader": self._member_id,
            "term": 1,
            "commitIndex": self._index,
            "appliedIndex": self._index,
            "revision": meta.revision,
            "snapshotIndex": 0,
            "members": [self._member_id],
            "uptimeSeconds": int(time.monotonic() - self._started_s),
        }
        if include_digest:
            status["digest"] = state_digest
        return status

    # -- scheduling (node/scheduling.py) --

    def plan_pod(self, spec: Any, principal: Principal) -> PodPlan | None:
        with self.reader() as view:
            return self.planner.plan(view, spec, principal)

    def release_plan(self, plan: PodPlan) -> None:
        self.planner.release(plan)

    def record_heartbeat(self, name: str) -> bool:
        return self.heartbeats.record(name, forward=False)  # no peers to tell

    def scheduling_stats(self) -> dict[str, int]:
        with self.reader() as view:
            self.planner.ensure_loaded(view)
        return {**self.planner.stats(), **self.timers.stats()}

    def run_timers(self, now: float) -> None:
        """One pass of the leader's timers (this member always leads), at `now` on the
        heartbeat table's clock. Nothing runs them on its own: tests call this."""
        with self.reader() as view:
            self.timers.run_once(view, 1, now)

    async def _submit_own(self, envelope: bytes, leader_term: int) -> Outcome:
        # One member leads term 1 for ever: no other leader can append its decisions.
        return await self.submit(envelope, 10.0)
