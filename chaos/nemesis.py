"""Faults injected into a `chaos.cluster.Cluster`, on a schedule a seed reproduces.

`plan_schedule(seed, duration_s, kinds)` draws, with `random.Random(seed)` only, a list of
`PlannedFault`s: which fault, how long to wait quietly before it, how long to hold it, and a
number that picks the member for faults aimed at "a member" (the leader is whoever leads when
the fault starts). The same seed and arguments always give the same schedule.

`Nemesis(cluster).run(schedule, stop)` carries it out, one fault at a time: wait the quiet
time, inject, hold, heal, then wait until every member agrees on a leader again (the recovery
time is recorded: failover as the client sees it is in the history). Every fault becomes a
`FaultRecord`: what was done to whom and when (monotonic ns), the leader before and after, and
an error if it could not be done as planned. Faults:

| kind | inject | heal |
|---|---|---|
| kill-leader, kill-member | SIGKILL | start it again (same data) |
| kill-all | SIGKILL every member at once | start them all |
| pause-leader, pause-member | SIGSTOP | SIGCONT |
| wipe-member | SIGKILL and delete its data directory | start it empty |
| partition-leader, partition-member | cut its Raft links (chaos/proxy.py, stall) | open them |

Partitions need a cluster created with `partitionable=True`. wipe-member is outside Raft's
fault model (a wiped member forgets its vote and its log); a check failing after it is a
finding about that procedure, see docs/chaos.md.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from chaos.cluster import Cluster
from chaos.history import FaultRecord, HistoryRecorder
from chaos.proxy import CutMode

faults_max = 10_000  # one schedule
leader_wait_s = 15.0  # finding the leader a fault is aimed at
recovery_timeout_s_default = 30.0  # after a heal, every member agreeing on a leader


class FaultKind(StrEnum):
    KILL_LEADER = "kill-leader"
    KILL_MEMBER = "kill-member"
    KILL_ALL = "kill-all"
    PAUSE_LEADER = "pause-leader"
    PAUSE_MEMBER = "pause-member"
    WIPE_MEMBER = "wipe-member"
    PARTITION_LEADER = "partition-leader"
    PARTITION_MEMBER = "partition-member"


PARTITION_KINDS = frozenset({FaultKind.PARTITION_LEADER, FaultKind.PARTITION_MEMBER})
LEADER_KINDS = frozenset({FaultKind.KILL_LEADER, FaultKind.PAUSE_LEADER, FaultKind.PARTITION_LEADER})
ALL_KINDS: tuple[FaultKind, ...] = tuple(FaultKind)

# How long each kind of fault is held, in seconds (drawn uniformly between the two).
hold_s_range: dict[FaultKind, tuple[float, float]] = {
    FaultKind.KILL_LEADER: (0.5, 3.0),
    FaultKind.KILL_MEMBER: (0.5, 3.0),
    FaultKind.KILL_ALL: (0.5, 2.0),
    FaultKind.PAUSE_LEADER: (1.0, 4.0),
    FaultKind.PAUSE_MEMBER: (1.0, 4.0),
    FaultKind.WIPE_MEMBER: (0.5, 2.0),
    FaultKind.PARTITION_LEADER: (2.0, 6.0),
    FaultKind.PARTITION_MEMBER: (2.0, 6.0),
}
quiet_s_range_default = (2.0, 6.0)


def parse_kinds(text: str) -> tuple[FaultKind, ...]:
    """'all' or a comma-separated list of kinds ('kill-leader,pause-leader')."""
    if text.strip() == "all":
        return ALL_KINDS
    kinds: list[FaultKind] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            kinds.append(FaultKind(item))
        except ValueError:
            raise ValueError(f"unknown fault {item!r}; known: all, {', '.join(ALL_KINDS)}") from None
    if not kinds:
        raise ValueError("name at least one fault, or 'all'")
    return tuple(kinds)


@dataclass(frozen=True)
class PlannedFault:
    number: int
    kind: FaultKind
    quiet_s: float  # wait this long after the previous fault recovered (or the start)
    hold_s: float  # then hold the fault this long before healing it
    pick: int  # picks the member of a *-member fault: sorted member ids [pick % count]

    def member(self, member_ids: Sequence[str]) -> str:
        ordered = sorted(member_ids)
        return ordered[self.pick % len(ordered)]


def plan_schedule(
    seed: int,
    duration_s: float,
    kinds: Sequence[FaultKind] = ALL_KINDS,
    *,
    quiet_s_range: tuple[float, float] = quiet_s_range_default,
    hold_s_ranges: dict[FaultKind, tuple[float, float]] | None = None,
) -> list[PlannedFault]:
    """Faults whose quiet and hold times add up to at most `duration_s`; the seed reproduces them."""
    if not kinds:
        raise ValueError("no fault kinds to choose from")
    holds = hold_s_ranges or hold_s_range
    rng = random.Random(seed)
    choices = sorted(set(kinds))  # the order of `kinds` must not change the schedule
    planned: list[PlannedFault] = []
    elapsed_s = 0.0
    while len(planned) < faults_max:
        quiet_s = round(rng.uniform(*quiet_s_range), 3)
        kind = rng.choice(choices)
        hold_s = round(rng.uniform(*holds[kind]), 3)
        pick = rng.randrange(1 << 30)
        if elapsed_s + quiet_s + hold_s > duration_s:
            break
        elapsed_s += quiet_s + hold_s
        planned.append(PlannedFault(len(planned) + 1, kind, quiet_s, hold_s, pick))
    return planned


@dataclass
class ActiveFault:
    planned: PlannedFault
    members: tuple[str, ...]
    injected_ns: int
    leader_before: str | None
    detail: str
    heal: Callable[[], None]


class Nemesis:
    """Injects and heals faults on one cluster; records each one (also in `recorder`, if given)."""

    def __init__(
        self,
        cluster: Cluster,
        recorder: HistoryRecorder | None = None,
        *,
        recovery_timeout_s: float = recovery_timeout_s_default,
        partition_mode: CutMode = CutMode.STALL,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.cluster = cluster
        self.recorder = recorder
        self.recovery_timeout_s = recovery_timeout_s
        self.partition_mode = partition_mode
        self.clock_ns = clock_ns
        self.records: list[FaultRecord] = []
        self._lock = threading.Lock()

    # -- one fault --

    def _current_leader(self) -> str | None:
        try:
            return self.cluster.wait_for_leader(leader_wait_s)
        except AssertionError:
            return None

    def inject(self, planned: PlannedFault) -> ActiveFault:
        """Do the fault now. Raises RuntimeError if it cannot be done (no leader to aim at, ...)."""
        cluster = self.cluster
        if planned.kind in PARTITION_KINDS and not cluster.partitionable:
            raise RuntimeError(f"{planned.kind} needs a cluster created with partitionable=True")
        leader = self._current_leader()
        if planned.kind in LEADER_KINDS:
            if leader is None:
                raise RuntimeError("no leader to aim at")
            target = leader
        else:
            target = planned.member(cluster.member_ids)
        role = "the leader" if target == leader else "a follower"
        kind = planned.kind
        members: tuple[str, ...] = (target,)
        heal: Callable[[], None]
        if kind in (FaultKind.KILL_LEADER, FaultKind.KILL_MEMBER):
            cluster.kill(target)
            detail = f"SIGKILL {target} ({role})"
            heal = lambda: self._start(target)  # noqa: E731
        elif kind is FaultKind.KILL_ALL:
            members = tuple(cluster.member_ids)
            cluster.kill_all()
            detail = f"SIGKILL {', '.join(members)} at once (leader was {leader})"
            heal = lambda: self._start(*members)  # noqa: E731
        elif kind in (FaultKind.PAUSE_LEADER, FaultKind.PAUSE_MEMBER):
            cluster.stop(target)
            detail = f"SIGSTOP {target} ({role})"
            heal = lambda: cluster.cont(target)  # noqa: E731
        elif kind is FaultKind.WIPE_MEMBER:
            cluster.kill(target)
            cluster.wipe(target)
            detail = f"SIGKILL {target} ({role}) and delete its data"
            heal = lambda: self._start(target)  # noqa: E731
        else:
            links = cluster.isolate(target, self.partition_mode)
            detail = f"cut {target} ({role}) off: links {', '.join(links)} {self.partition_mode.value}"
            heal = cluster.heal_links
        return ActiveFault(planned, members, self.clock_ns(), leader, detail, heal)

    def _start(self, *member_ids: str) -> None:
        for member_id in member_ids:
            if not self.cluster.members[member_id].running:
                self.cluster.start_member(member_id, wait=False)
        for member_id in member_ids:
            self.cluster.wait_member_up(member_id)

    def heal(self, active: ActiveFault) -> FaultRecord:
        """Undo the fault, wait for every member to agree on a leader, record it all."""
        error: str | None = None
        healed_ns: int | None = None
        try:
            active.heal()
            healed_ns = self.clock_ns()
        except Exception as exc:  # recorded: the run's liveness check reports an unhealed fault
            error = f"heal failed: {type(exc).__name__}: {exc}"
        leader_after: str | None = None
        recovered_ns: int | None = None
        if error is None:
            try:
                leader_after = self.cluster.wait_for_leader(self.recovery_timeout_s, member_ids=self.cluster.member_ids)
                recovered_ns = self.clock_ns()
            except AssertionError as exc:
                error = f"no leader agreed on within {self.recovery_timeout_s:.0f} s of the heal: {str(exc)[:200]}"
        record = FaultRecord(
            number=active.planned.number,
            kind=active.planned.kind.value,
            members=active.members,
            injected_ns=active.injected_ns,
            healed_ns=healed_ns,
            recovered_ns=recovered_ns,
            leader_before=active.leader_before,
            leader_after=leader_after,
            detail=active.detail,
            error=error,
        )
        self._record(record)
        return record

    def _record(self, record: FaultRecord) -> None:
        with self._lock:
            if len(self.records) < faults_max:
                self.records.append(record)
        if self.recorder is not None:
            self.recorder.record_fault(record)

    def apply(self, planned: PlannedFault, stop: threading.Event | None = None) -> FaultRecord:
        """Inject, hold for the planned time (shorter if `stop` is set), heal."""
        try:
            active = self.inject(planned)
        except Exception as exc:
            record = FaultRecord(
                planned.number,
                planned.kind.value,
                (),
                self.clock_ns(),
                healed_ns=self.clock_ns(),
                detail="not injected",
                error=f"{type(exc).__name__}: {exc}",
            )
            self._record(record)
            self.heal_everything()
            return record
        try:
            # Holding the fault is the point, not a wait for a condition.
            (stop or threading.Event()).wait(planned.hold_s)
        finally:
            record = self.heal(active)
        return record

    # -- a schedule --

    def run(self, schedule: Sequence[PlannedFault], stop: threading.Event | None = None) -> list[FaultRecord]:
        """Carry out the schedule in order, until it ends or `stop` is set; heal everything at the end."""
        stopping = stop or threading.Event()
        done: list[FaultRecord] = []
        try:
            for planned in schedule:
                if stopping.wait(planned.quiet_s):
                    break
                done.append(self.apply(planned, stopping))
        finally:
            self.heal_everything()
        return done

    def heal_everything(self) -> None:
        """Whatever state the cluster is in: open the links, resume and start every member."""
        cluster = self.cluster
        cluster.heal_links()
        for member_id, member in cluster.members.items():
            if member.stopped:
                cluster.cont(member_id)
        with contextlib.suppress(AssertionError):
            self._start(*cluster.member_ids)
