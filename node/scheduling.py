"""A member's share of scheduling, outside the log: planning pods, node heartbeats, leader timers.

The state machine decides (statemachine/scheduler.py); this module only keeps a member's own
hints and clocks, none of which is replicated:

* `Planner`: the proposer's model of every node's scheduling record (`nst/<name>`), loaded once
  from the member's store and then kept current from the writes of each applied entry, plus
  this member's own in-flight plans (a reservation of cpu, memory and one pod on the planned
  node, released when the request is answered or fails). `plan` runs the same quota check,
  `fit` and `score` as `statemachine.scheduler.plan_pod`, so its choice is the one `plan_pod`
  would make on the state plus the reservations; but instead of scoring every node per pod it
  keeps, per distinct pod shape ("signature": requests, selectors, tolerations, policy,
  priority), a heap
  of the nodes that fit ordered by (score desc, name asc), updated only for the nodes that
  change. Pods planned together against the same state therefore spread (or pack) as they
  would one after another, instead of all naming the same node and falling back to the apply's
  full search. A plan is only a hint: apply verifies it with `fit` (and searches if it no
  longer fits), so a stale table, a leader change or another member's plans cost time, never
  correctness.
* `HeartbeatTable`: when each node was last heard, by this member (HTTP) or by a peer
  (forwarded on the Raft keep-alive). Thread-safe: the HTTP loop records, the tick thread
  forwards and receives.
* `NodeMonitor` and `SchedulingTimers`: the leader's verdicts. A Ready node not heard for
  `node_grace_s` becomes NotReady, a NotReady node heard again becomes Ready: each one
  `node.condition` proposal per transition, never a log entry per heartbeat. A new leader
  judges nobody before a full grace period from its election (its heartbeat table may be
  younger than that). A NotReady node's pods are evicted when they have tolerated it as long as
  they may (`node.evict_unready`, `NodeMonitor.evictions_due`), one node at a time, and not
  while most nodes are NotReady. Pods that tolerate a node's NoExecute taints for a time are
  evicted when it runs out (`node.evict_tainted`, from the earliest time in each node record the
  planner holds: `Planner.taint_evictions_due`). While pods are pending, `scheduler.retry` every
  `pending_retry_s` (backing off while the sweeps bind nothing: `sweep_interval_s`); and
  after capacity grows (a node joins, becomes Ready or schedulable, frees resources or its
  nomination; a quota is set or removed: `Planner.capacity_events`), a *pass*: sweeps in a row,
  each followed by a pause of `pass_pause_factor` times its own duration (so a pass spends at
  most a quarter of the time sweeping, whatever a sweep costs at this cluster's size), until the
  whole queue has been swept once. The apply of the event itself offers the freed nodes only to
  their nominees and the first `retry_heads_max` queue entries, so without a pass a pod further
  back that fits waited for the timer's sweeps to reach it: (pending / 16) x 2 s, 21 minutes
  behind 10,000 pending pods.

Everything that grows is bounded: heartbeat names (`heartbeat_names_max`), names forwarded per
keep-alive (`sightings_per_message_max`), plans in flight (`plans_in_flight_max`), signature
heaps (`plan_signatures_max`, each compacted past `heap_slack` entries per node), condition
proposals in flight (`conditions_in_flight_max`, also for node.evict_tainted), evictions in flight
(`evictions_in_flight_max`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from node.clock import wall_clock_ms
from node.config import Timing
from statemachine import keys, pods, priorities, quotas
from statemachine.codec import Envelope, Principal, encode_envelope, loads
from statemachine.errors import Rejected
from statemachine.machine import Ok
from statemachine.nodes import NodeState, nodes_max
from statemachine.pods import Needs
from statemachine.scheduler import (
    NODE_STATE_END,
    Cluster,
    charge_of,
    fill_default_requests,
    fit,
    score,
    sweep_pods_max,
)
from statemachine.view import ReadView, Write

log = logging.getLogger("allot.scheduling")
_OBSERVED_PREFIXES = (keys.NODE_STATE, keys.SCHEDULER, keys.QUOTA)  # what Planner.observe reads

plans_in_flight_max = 4096  # plans reserved and not answered; beyond this pods go unplanned
plan_signatures_max = 16  # pod shapes with a candidate heap; the least recently used is dropped
heap_slack = 4  # a heap holding more than this many entries per node is rebuilt
heartbeat_names_max = 2 * nodes_max  # names in the heartbeat table (peers' names are unchecked)
sightings_per_message_max = 2000  # node names forwarded on one keep-alive (the rest wait 100 ms)
conditions_in_flight_max = 256  # node.condition proposals the leader has waiting at once
# Eviction from NotReady nodes, paced and held as Kubernetes' node lifecycle controller does
# (--node-eviction-rate, --unhealthy-zone-threshold): one node at a time, and none while more
# than 55 % of the nodes are NotReady, which looks like the leader losing the heartbeats (a
# broken path from the agents) rather than the nodes dying; evicting then would move every pod.
evictions_in_flight_max = 1
eviction_hold_percent = 55
monitor_period_max_s = 1.0  # the leader checks heartbeats at least this often
# Between the sweeps of a pass: `pass_pause_factor` times the last sweep's duration (proposal to
# result: the Raft round and the apply), kept within [min, max]. 3 lets sweeps take at most a
# quarter of the time; measured by exploratory testing before this, a fixed 0.25 s pause took
# 143 s to reach pods behind 9,705 pending ones whose sweeps cost a few milliseconds each.
pass_pause_factor = 3.0
pass_pause_min_s = 0.02
pass_pause_max_s = 0.25
# The timer sweeps' backoff while they find nothing (`SchedulingTimers.sweep_interval_s`): at
# most this long between two, so a pending pod's reason is at most this stale.
sweep_backoff_max_s = 60.0

LEADER_PRINCIPAL = Principal("allot-leader", "", "", "admin")  # the leader's timers act as the platform
REASON_HEARTBEAT_MISSED = "NodeStatusUnknown"
REASON_HEARTBEAT_RESUMED = "NodeHeartbeatResumed"

Signature = tuple[Any, ...]  # requests, selector, affinity, tolerations, policy, priority


@dataclass
class PodPlan:
    """A node chosen for one pod.create, reserved in the planner until `Planner.release`."""

    node_name: str
    cpu_millis: int
    memory_bytes: int
    released: bool = False


class _Candidates:
    """The nodes a pod of one signature fits, as a heap of (-score, name, version).

    An entry is current while its version is the node's version; every change to a node pushes
    a fresh entry when the node fits, so the first current entry is the node `search` would
    choose (highest score, then lowest name). Stale entries are dropped when they surface."""

    def __init__(self, needs: Needs, policy: str) -> None:
        self.needs = needs
        self.policy = policy
        self.entries: list[tuple[int, str, int]] = []

    def offer(self, name: str, state: NodeState, version: int) -> None:
        if fit(state, self.needs, None) is None:
            heapq.heappush(self.entries, (-score(state, self.needs, self.policy, None), name, version))

    def rebuild(self, states: Mapping[str, NodeState], versions: Mapping[str, int]) -> None:
        needs, policy = self.needs, self.policy
        self.entries = [
            (-score(state, needs, policy, None), name, versions[name])
            for name, state in states.items()
            if fit(state, needs, None) is None
        ]
        heapq.heapify(self.entries)

    def best(self, versions: Mapping[str, int]) -> str | None:
        entries = self.entries
        while entries:
            _, name, version = entries[0]
            if versions.get(name) == version:
                return name
            heapq.heappop(entries)
        return None


def _capacity_grew(before: NodeState | None, after: NodeState) -> bool:
    """Whether a node's new record could let a pod fit that did not before."""
    if before is None:
        return True
    return (
        (after.ready and not before.ready)
        or (after.schedulable and not before.schedulable)
        or after.cpu_used < before.cpu_used
        or after.memory_used < before.memory_used
        or after.pods_used < before.pods_used
        or after.cpu_capacity > before.cpu_capacity
        or after.memory_capacity > before.memory_capacity
        or after.pods_capacity > before.pods_capacity
        or (before.nominee is not None and after.nominee != before.nominee)
        or after.labels != before.labels  # node.update: a selector may match now
        or any(taint not in after.taints for taint in before.taints)
    )


class Planner:
    """The proposer's node table and its in-flight plans (see the module docstring).

    Used on the member's event loop only; the tick thread hands it applied writes through
    `loop.call_soon_threadsafe(planner.observe, writes)`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # the leader timers' clock (the heartbeat table's)
        self._truth: dict[str, NodeState] | None = None  # the store's records; None: not loaded
        # When this member applied each NotReady node's transition (on `_clock`), so that a
        # leader elected later counts the eviction timeout from then (`not_ready_for_s`).
        # Bounded by the nodes; unknown for transitions before this process loaded the table.
        self._not_ready_applied: dict[str, float] = {}
        self._effective: dict[str, NodeState] = {}  # truth plus this member's reservations
        self._versions: dict[str, int] = {}
        self._reserved: dict[str, tuple[int, int, int]] = {}  # name -> (cpu, memory, pods) planned
        self._heaps: OrderedDict[Signature, _Candidates] = OrderedDict()
        self._next_version = 0
        self.policy = pods.SPREAD
        self.pending_pods = 0
        self.capacity_events = 0  # applied writes that could let a pending pod fit (observe)
        self.in_flight = 0
        self.plans = 0
        self.unplanned = 0  # plan() calls that named no node

    # -- the table --

    @property
    def loaded(self) -> bool:
        return self._truth is not None

    def invalidate(self) -> None:
        """The store changed wholesale (a snapshot was installed): reload at the next use."""
        self._truth = None
        self._not_ready_applied.clear()  # the snapshot may hold transitions never seen here
        self._effective.clear()
        self._heaps.clear()

    def ensure_loaded(self, view: ReadView) -> None:
        """Read every node record once. Writes applied after this view are replayed by
        `observe` in apply order; writes already in the view may be replayed too, which is
        harmless because each write carries a whole record and the last one wins."""
        if self._truth is not None:
            return
        self._truth = {
            key[len(keys.NODE_STATE) :].decode(): NodeState.from_plain(loads(raw))
            for key, raw in view.scan(keys.NODE_STATE, NODE_STATE_END)
        }
        self._set_cluster(Cluster.load(view))
        self._effective.clear()
        self._heaps.clear()
        for name in self._truth:
            self._refresh(name)

    @staticmethod
    def observed(writes: Iterable[Write]) -> list[Write]:
        """Of applied writes, the ones `observe` reads: node records, the scheduler record and
        quotas (a quota set or removed can let a pending pod fit). Members hand the planner only
        these, from the thread that applies, so the filter is one place for every member."""
        return [write for write in writes if write[0].startswith(_OBSERVED_PREFIXES)]

    def observe(self, writes: Iterable[Write]) -> None:
        """Writes of applied entries, in apply order (`observed` picks them)."""
        truth = self._truth
        if truth is None:
            return  # loading later reads them from the store
        for key, value in writes:
            if key.startswith(keys.NODE_STATE):
                name = key[len(keys.NODE_STATE) :].decode()
                before = truth.get(name)
                if value is None:
                    truth.pop(name, None)
                    self._not_ready_applied.pop(name, None)
                else:
                    state = NodeState.from_plain(loads(value))
                    if _capacity_grew(before, state):
                        self.capacity_events += 1
                    if state.ready:
                        self._not_ready_applied.pop(name, None)
                    elif before is not None and before.ready:
                        self._not_ready_applied[name] = self._clock()
                    truth[name] = state
                self._refresh(name)
            elif key == keys.SCHEDULER and value is not None:
                self._set_cluster(Cluster(*loads(value)))
            elif key.startswith(keys.QUOTA):  # a quota set (maybe raised) or deleted
                self.capacity_events += 1

    def _set_cluster(self, cluster: Cluster) -> None:
        if cluster.policy != self.policy:
            self._heaps.clear()  # signatures without their own policy now score differently
        self.policy = cluster.policy
        self.pending_pods = cluster.pending

    def _refresh(self, name: str) -> None:
        """The node's record or reservation changed: recompute it and offer it to every heap."""
        truth = self._truth
        if truth is None:
            return
        self._next_version += 1
        version = self._next_version
        state = truth.get(name)
        if state is None:
            self._effective.pop(name, None)
            self._versions.pop(name, None)
            return
        reserved = self._reserved.get(name)
        if reserved is not None:
            state = replace(
                state,
                cpu_used=state.cpu_used + reserved[0],
                memory_used=state.memory_used + reserved[1],
                pods_used=state.pods_used + reserved[2],
            )
        self._effective[name] = state
        self._versions[name] = version
        limit = heap_slack * len(self._effective) + 64
        for candidates in self._heaps.values():
            if len(candidates.entries) > limit:
                candidates.rebuild(self._effective, self._versions)
            else:
                candidates.offer(name, state, version)

    # -- planning --

    def plan(self, view: ReadView, spec: Any, principal: Principal) -> PodPlan | None:
        """The node for a pod.create, reserved until `release`; None when nothing fits, the
        spec is invalid (apply will say why), the quota has no room, or too many plans are
        in flight. Same checks, fit and score as `statemachine.scheduler.plan_pod`."""
        if not principal.has_tenant or self.in_flight >= plans_in_flight_max:
            self.unplanned += 1
            return None
        try:
            checked, has_requests, own_priority = pods.check_spec(spec)
            priorities.resolve(view, checked, own_priority)
        except Rejected:
            self.unplanned += 1
            return None
        tenant = quotas.Tenant(view, principal.org, principal.project)
        fill_default_requests(checked, has_requests, tenant)
        if tenant.priority_refusal(checked["priority"]) is not None or tenant.shortfall(charge_of(checked)) is not None:
            self.unplanned += 1
            return None
        self.ensure_loaded(view)
        needs = Needs.of(checked)
        name = self._candidates(needs).best(self._versions)
        if name is None:
            self.unplanned += 1
            return None
        cpu, memory, pod_count = self._reserved.get(name, (0, 0, 0))
        self._reserved[name] = (cpu + needs.cpu_millis, memory + needs.memory_bytes, pod_count + 1)
        self._refresh(name)
        self.in_flight += 1
        self.plans += 1
        return PodPlan(name, needs.cpu_millis, needs.memory_bytes)

    def release(self, plan: PodPlan) -> None:
        """The request was answered (its bind, if any, is in the table by now) or failed."""
        if plan.released:
            return
        plan.released = True
        self.in_flight -= 1
        cpu, memory, pod_count = self._reserved.get(plan.node_name, (0, 0, 0))
        left = (cpu - plan.cpu_millis, memory - plan.memory_bytes, pod_count - 1)
        if left[2] <= 0:
            self._reserved.pop(plan.node_name, None)
        else:
            self._reserved[plan.node_name] = left
        self._refresh(plan.node_name)

    def _candidates(self, needs: Needs) -> _Candidates:
        policy = needs.policy or self.policy
        # The priority too: fit and score count a node's nomination only for pods of the nominee's
        # priority or lower, so two pods of one shape but other priorities may rank nodes apart.
        signature = (
            needs.cpu_millis,
            needs.memory_bytes,
            needs.selector,
            needs.affinity,
            needs.tolerations,
            policy,
            needs.priority,
        )
        candidates = self._heaps.get(signature)
        if candidates is None:
            candidates = _Candidates(needs, policy)
            candidates.rebuild(self._effective, self._versions)
            self._heaps[signature] = candidates
            while len(self._heaps) > plan_signatures_max:
                self._heaps.popitem(last=False)
        else:
            self._heaps.move_to_end(signature)
        return candidates

    # -- what the timers and metrics read --

    def not_ready_for_s(self, name: str, now: float) -> float | None:
        """How long ago (on the timers' clock) this member applied the node's transition to
        NotReady; None when it did not see it (it happened before this process loaded the
        table, or the node is Ready)."""
        applied = self._not_ready_applied.get(name)
        return None if applied is None else max(0.0, now - applied)

    def readiness(self) -> dict[str, bool]:
        """Every node's Ready flag as this member's store has it (the table must be loaded)."""
        return {name: state.ready for name, state in (self._truth or {}).items()}

    def taint_evictions_due(self, now_ms: int) -> list[str]:
        """The nodes with a bound pod whose tolerationSeconds for the node's NoExecute taints
        runs out at or before `now_ms` (wall-clock ms), as this member's store has them, in
        name order. A scan of the node records: at most nodes_max, once per timer period."""
        return sorted(
            name
            for name, state in (self._truth or {}).items()
            if state.taint_eviction_ms is not None and 0 <= state.taint_eviction_ms <= now_ms  # UNTIMED is -1
        )

    def pods_bound(self, name: str) -> int:
        """How many pods are bound to the node, as this member's store has it (0 if unknown)."""
        state = (self._truth or {}).get(name)
        return 0 if state is None else state.pods_used

    def stats(self) -> dict[str, int]:
        truth = self._truth or {}
        ready = sum(1 for state in truth.values() if state.ready)
        return {
            "nodesReady": ready,
            "nodesNotReady": len(truth) - ready,
            "nodesCordoned": sum(1 for state in truth.values() if not state.schedulable),
            "podsBound": sum(state.pods_used for state in truth.values()),
            "podsPending": self.pending_pods,
            "plansInFlight": self.in_flight,
        }


class HeartbeatTable:
    """When each node was last heard (this process's monotonic clock), and which sightings this
    member still has to forward to its peers. Thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, names_max: int = heartbeat_names_max) -> None:
        self._clock = clock
        self._names_max = names_max
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._outbox: dict[str, None] = {}  # an ordered set: names heard here since the last forward

    def record(self, name: str, *, forward: bool) -> bool:
        """A heartbeat (forward=True: heard over HTTP, tell the peers). False when the table is
        full of other names (only names forwarded by peers, which are not checked, can fill it)."""
        with self._lock:
            if name not in self._seen and len(self._seen) >= self._names_max:
                return False
            self._seen[name] = self._clock()
            if forward and len(self._outbox) < self._names_max:
                self._outbox[name] = None
            return True

    def record_forwarded(self, names: Iterable[Any]) -> None:
        for name in names:
            if isinstance(name, str):
                self.record(name, forward=False)

    def take_outbox(self, count_max: int = sightings_per_message_max) -> list[str]:
        with self._lock:
            names: list[str] = []
            for name in self._outbox:
                if len(names) == count_max:
                    break
                names.append(name)
            for name in names:
                del self._outbox[name]
            return names

    def last_seen(self, name: str) -> float | None:
        with self._lock:
            return self._seen.get(name)

    def prune(self, known: Mapping[str, Any]) -> None:
        """Forget names that are not registered nodes (deleted, or never were)."""
        with self._lock:
            for name in [name for name in self._seen if name not in known]:
                del self._seen[name]
                self._outbox.pop(name, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)


@dataclass(frozen=True)
class Verdict:
    name: str
    ready: bool
    reason: str


class NodeMonitor:
    """The leader's Ready/NotReady decisions from heartbeat ages (pure apart from the table)."""

    def __init__(self, heartbeats: HeartbeatTable, grace_s: float, pod_eviction_s: float) -> None:
        self.heartbeats = heartbeats
        self.grace_s = grace_s
        self.pod_eviction_s = pod_eviction_s
        self.leader_since: float | None = None
        self._first_known: dict[str, float] = {}  # when this leader first saw each node registered
        self.in_flight: set[str] = set()
        # Eviction (`evictions_due`), each bounded by the registered nodes: when this leader
        # first saw each node NotReady; after how long NotReady the node's next eviction is due,
        # as its last one answered (absent: at once; None: no pod left will go); and the nodes
        # with an eviction proposal in flight.
        self._not_ready_since: dict[str, float] = {}
        self._next_eviction_ms: dict[str, int | None] = {}
        self.evicting: set[str] = set()
        self.evictions_held = False  # too many nodes NotReady at the last check

    def became_leader(self, now: float) -> None:
        self.leader_since = now
        self._first_known.clear()
        self.in_flight.clear()
        self._forget_evictions()

    def lost_leadership(self) -> None:
        self.leader_since = None
        self._first_known.clear()
        self._forget_evictions()

    def _forget_evictions(self) -> None:
        self._not_ready_since.clear()
        self._next_eviction_ms.clear()
        self.evicting.clear()
        self.evictions_held = False

    def evictions_due(
        self,
        readiness: Mapping[str, bool],
        pods_bound: Callable[[str], int],
        now: float,
        not_ready_for_s: Callable[[str], float | None] = lambda _name: None,
    ) -> list[str]:
        """NotReady nodes to propose `node.evict_unready` for now: at once when this leader sees
        a node NotReady with pods (pods with `tolerationSeconds: 0` go then), and after that when
        the last eviction's answer said the next pod goes (`evicted`): each pod at its own
        `tolerationSeconds`, or at `pod_eviction_s` without a matching toleration. NotReady time
        counts from this leader's own verdict; for a node already NotReady when this leader
        first sees it (one an earlier leader judged), from when this member applied that
        transition (`not_ready_for_s`: `Planner.not_ready_for_s`, None when it does not know,
        then from now): a leader change does not restart the timeout (Kubernetes counts from
        the taint's timeAdded), and no clock is compared across members, so eviction is never
        early; a member restarted since counts from its first sight, late at worst.
        Not for a node heard within the grace period (a Ready verdict is due). Each proposal is
        made once (again only if it failed); at most `evictions_in_flight_max` at a time, in the
        readiness map's order, and none while more than `eviction_hold_percent` of the nodes
        are NotReady (`evictions_held`)."""
        if self.leader_since is None:
            return []
        for name in [name for name in self._not_ready_since if readiness.get(name, True)]:
            del self._not_ready_since[name]
            self._next_eviction_ms.pop(name, None)
        not_ready = [name for name, ready in readiness.items() if not ready]
        for name in not_ready:
            if name not in self._not_ready_since:
                self._not_ready_since[name] = now - (not_ready_for_s(name) or 0.0)
        held = len(not_ready) * 100 > len(readiness) * eviction_hold_percent
        if held != self.evictions_held:
            self.evictions_held = held
            if held:
                log.warning(
                    "holding pod evictions: %d of %d nodes are NotReady (more than %d %%); check the path from "
                    "node agents to the members before suspecting the nodes",
                    len(not_ready),
                    len(readiness),
                    eviction_hold_percent,
                )
            else:
                log.info("pod evictions resume: %d of %d nodes are NotReady", len(not_ready), len(readiness))
        due: list[str] = []
        room = evictions_in_flight_max - len(self.evicting)
        for name in not_ready:
            if held or len(due) >= room:
                break
            next_ms = self._next_eviction_ms.get(name, 0)
            if next_ms is None or self.not_ready_ms(name, now) < next_ms or name in self.evicting:
                continue
            seen = self.heartbeats.last_seen(name)
            if name in self.in_flight or (seen is not None and now - seen <= self.grace_s):
                continue
            if pods_bound(name) > 0:
                due.append(name)
        return due

    def marked_not_ready(self, name: str, decided: float) -> None:
        """This leader's NotReady verdict for the node, decided at `decided`, committed: the
        eviction timeout counts from the verdict."""
        if self.leader_since is not None:
            self._not_ready_since[name] = decided
            self._next_eviction_ms.pop(name, None)

    def not_ready_ms(self, name: str, now: float) -> int:
        """How long the node has been NotReady as this leader knows it, in milliseconds."""
        return max(0, int((now - self._not_ready_since.get(name, now)) * 1000))

    def evicted(self, name: str, next_eviction_ms: int | None) -> None:
        """The node's eviction committed; the next one is due when the node has been NotReady
        `next_eviction_ms` (None: never in this spell of NotReady)."""
        if name in self._not_ready_since:
            self._next_eviction_ms[name] = next_eviction_ms

    def verdicts(self, readiness: Mapping[str, bool], now: float) -> list[Verdict]:
        """Transitions to propose now. Nodes with a proposal in flight are skipped, so each
        transition is proposed once (again only if that proposal failed)."""
        if self.leader_since is None:
            return []
        for name in [name for name in self._first_known if name not in readiness]:
            del self._first_known[name]
        found: list[Verdict] = []
        for name, ready in readiness.items():
            first_known = self._first_known.setdefault(name, now)
            if name in self.in_flight:
                continue
            seen = self.heartbeats.last_seen(name)
            if ready:
                # A full grace from the later of: the last heartbeat, this leader's election,
                # the moment this leader first saw the node (a node registered just now).
                heard = max(seen if seen is not None else self.leader_since, self.leader_since, first_known)
                if now - heard > self.grace_s:
                    if seen is not None:  # this member's table knows the last heartbeat
                        silence = f"no heartbeat for {now - seen:.1f} s"
                    else:  # counted from the election or the registration: the silence may be longer
                        silence = f"no heartbeat heard by this leader in {now - heard:.1f} s"
                    found.append(Verdict(name, False, f"{REASON_HEARTBEAT_MISSED}: {silence}"))
            elif seen is not None and now - seen <= self.grace_s:
                found.append(Verdict(name, True, REASON_HEARTBEAT_RESUMED))
        return found


Submit = Callable[[bytes, int], Awaitable[Any]]  # (envelope, the term the leader decided it in)


class SchedulingTimers:
    """The leader's periodic work: node conditions and pending-queue sweeps.

    `run_once` is called every `period_s` by the member (and directly by tests with their own
    clock); proposals are submitted as tasks so a slow commit never delays the next check."""

    def __init__(
        self,
        planner: Planner,
        heartbeats: HeartbeatTable,
        grace_s: float,
        pending_retry_s: float,
        submit: Submit,
        pod_eviction_s: float = Timing.pod_eviction_s,
        wall_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.planner = planner
        # Proposals carry the time they were made (the replicated clock, Context.now_ms); the
        # times recorded for tolerationSeconds are of that clock, so they are compared with it.
        self._wall_ms = wall_ms
        self._expiring: set[str] = set()  # nodes with a node.evict_tainted in flight
        self.monitor = NodeMonitor(heartbeats, grace_s, pod_eviction_s)
        self.pending_retry_s = pending_retry_s
        # Timer sweeps in a row that bound nothing, with no capacity growth seen: the sweeps
        # back off (`sweep_interval_s`), as the log would otherwise grow by an entry every
        # pending_retry_s for as long as a pod that fits nowhere waits.
        self.idle_sweeps = 0
        self._submit = submit
        self._next_sweep_s = 0.0
        self._leader_term: int | None = None
        self._sweep_in_flight = False
        self._capacity_events_seen = 0
        self._pass_wanted = False  # capacity grew: sweep the whole queue, sweeps in a row
        self._tasks: set[asyncio.Task[None]] = set()
        self.conditions_proposed = 0
        self.evictions_proposed = 0
        # What this member's proposals did, as their answers said (a proposal that timed out
        # but committed is not counted: its repeat finds nothing left to do).
        self.conditions_changed = 0
        self.nodes_evicted = 0
        self.pods_evicted = 0
        self.sweeps_proposed = 0
        self.passes_started = 0

    def stats(self) -> dict[str, int]:
        """What this member's timers did since it started (as leader; /metrics)."""
        return {
            "nodeConditionsChanged": self.conditions_changed,
            "nodeEvictions": self.nodes_evicted,
            "podsEvicted": self.pods_evicted,
            "evictionsHeld": int(self.monitor.evictions_held),
        }

    @property
    def period_s(self) -> float:
        return min(monitor_period_max_s, self.monitor.grace_s / 4, self.pending_retry_s)

    def run_once(self, view: ReadView, leader_term: int | None, now: float) -> None:
        """One check at `now`. `leader_term` is the term this member leads in, None when it
        does not lead: a new term is a new election, so the grace period starts again."""
        monitor = self.monitor
        if leader_term != self._leader_term:
            self._leader_term = leader_term
            monitor.lost_leadership()
            if leader_term is not None:
                monitor.became_leader(now)
                self._next_sweep_s = now + self.pending_retry_s
                self._capacity_events_seen = self.planner.capacity_events
                self._pass_wanted = False
            # Another leader's sweeps, or none, came between: a whole lap before backing off.
            self.idle_sweeps = 0
        if leader_term is None:
            return
        self.planner.ensure_loaded(view)
        if self.planner.capacity_events != self._capacity_events_seen:
            self._capacity_events_seen = self.planner.capacity_events
            self._pass_wanted = True
            self.idle_sweeps = 0
        if self.planner.pending_pods == 0:
            self.idle_sweeps = 0
        readiness = self.planner.readiness()
        monitor.heartbeats.prune(readiness)
        for verdict in monitor.verdicts(readiness, now):
            if len(monitor.in_flight) >= conditions_in_flight_max:
                break
            monitor.in_flight.add(verdict.name)
            body = {"name": verdict.name, "ready": verdict.ready, "reason": verdict.reason}
            self._spawn(self._condition(verdict.name, body, leader_term, now))
        for name in monitor.evictions_due(
            readiness, self.planner.pods_bound, now, lambda name: self.planner.not_ready_for_s(name, now)
        ):
            monitor.evicting.add(name)
            self._spawn(self._evict(name, leader_term, monitor.not_ready_ms(name, now)))
        for name in self.planner.taint_evictions_due(self._wall_ms()):
            if len(self._expiring) >= conditions_in_flight_max:
                break
            if name not in self._expiring:
                self._expiring.add(name)
                self._spawn(self._expire(name, leader_term))
        if (
            self.planner.pending_pods > 0
            and not self._sweep_in_flight
            and (now >= self._next_sweep_s or self._pass_wanted)
        ):
            self._next_sweep_s = now + self.sweep_interval_s()
            self._sweep_in_flight = True
            self._spawn(self._sweep(leader_term))

    def sweep_interval_s(self) -> float:
        """`pending_retry_s` until the timer sweeps have walked the whole queue once (a lap:
        pending / `sweep_pods_max` sweeps) binding nothing, with no capacity growth seen and
        under this leadership; then doubled with each further idle sweep, up to
        `sweep_backoff_max_s` (or `pending_retry_s` if that is longer). After such a lap
        every pending pod has been evaluated against the state as it is, and nothing it finds
        can have changed but what the sweeps themselves write (nominations, reasons); growth
        ends the backoff at once (the planner's capacity events start a pass), as Kubernetes
        flushes its unschedulable pods on cluster events and otherwise every few minutes."""
        lap = max(1, -(-self.planner.pending_pods // sweep_pods_max))
        ceiling = max(self.pending_retry_s, sweep_backoff_max_s)
        return min(ceiling, self.pending_retry_s * (1 << min(max(0, self.idle_sweeps - lap), 16)))

    def _spawn(self, work: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the proposals started so far (tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _condition(self, name: str, body: dict[str, Any], leader_term: int, decided: float) -> None:
        try:
            self.conditions_proposed += 1
            outcome = await self._submit(self._encode("node.condition", body), leader_term)
            if isinstance(outcome.result, Rejected):  # e.g. fenced: this member no longer leads that term
                log.warning("node %s: ready=%s was refused: %s", name, body["ready"], outcome.result.message)
                return
            self.conditions_changed += 1
            if not body["ready"] and self._leader_term == leader_term:
                self.monitor.marked_not_ready(name, decided)
            log.info("node %s: proposed ready=%s (%s)", name, body["ready"], body["reason"])
        except Exception as exc:  # no leader, timeout, ...: the next check proposes again
            log.warning("node %s: proposing ready=%s failed: %s", name, body["ready"], exc)
        finally:
            self.monitor.in_flight.discard(name)

    async def _evict(self, name: str, leader_term: int, not_ready_ms: int) -> None:
        try:
            self.evictions_proposed += 1
            body = {
                "name": name,
                "notReadyMillis": not_ready_ms,
                "timeoutMillis": round(self.monitor.pod_eviction_s * 1000),
            }
            outcome = await self._submit(self._encode("node.evict_unready", body), leader_term)
            if isinstance(outcome.result, Rejected):  # Ready again, deleted, or fenced
                log.warning("node %s: evicting its pods was refused: %s", name, outcome.result.message)
                return
            status = outcome.result.value["status"]
            self.monitor.evicted(name, status["nextEvictionMillis"])
            evicted = int(status["evictedPods"])
            if evicted:
                self.nodes_evicted += 1
                self.pods_evicted += evicted
                log.info("node %s: NotReady for %d ms, %d pod(s) evicted", name, not_ready_ms, evicted)
        except Exception as exc:  # no leader, timeout, ...: the next check proposes again
            log.warning("node %s: proposing the eviction of its pods failed: %s", name, exc)
        finally:
            self.monitor.evicting.discard(name)

    async def _expire(self, name: str, leader_term: int) -> None:
        """node.evict_tainted: the pods whose tolerationSeconds for the node's NoExecute taints
        ran out go back to the queue. The next check proposes again for times still to come
        (the planner reads them from the node's record once this apply reaches it)."""
        try:
            self.evictions_proposed += 1
            outcome = await self._submit(self._encode("node.evict_tainted", {"name": name}), leader_term)
            if isinstance(outcome.result, Rejected):  # deleted, or fenced
                log.warning(
                    "node %s: evicting pods whose tolerationSeconds ran out was refused: %s",
                    name,
                    outcome.result.message,
                )
                return
            evicted = int(outcome.result.value["status"]["evictedPods"])
            if evicted:
                self.nodes_evicted += 1
                self.pods_evicted += evicted
                log.info(
                    "node %s: %d pod(s) evicted, their tolerationSeconds for its NoExecute taints ran out",
                    name,
                    evicted,
                )
        except Exception as exc:  # no leader, timeout, ...: the next check proposes again
            log.warning("node %s: proposing the eviction of pods whose tolerationSeconds ran out failed: %s", name, exc)
        finally:
            self._expiring.discard(name)

    def _encode(self, command_type: str, body: dict[str, Any]) -> bytes:
        return encode_envelope(Envelope(command_type, body, LEADER_PRINCIPAL, None, self._wall_ms()))

    async def _sweep(self, leader_term: int) -> None:
        """One sweep; or, when capacity grew, a pass: sweeps in a row, paced by their own cost
        (`pass_pause_factor`), enough to cover the queue once (the sweep cursor walks it and
        wraps). Capacity that grows during a pass extends it to a whole queue from then, so
        every pending pod is reconsidered within one pass after the latest growth. One sweep is
        in flight at a time, and a pass ends when this member stops leading `leader_term` or
        nothing is pending. A finished pass is logged with its length and duration."""
        sweeps_left = 1
        pass_started_s: float | None = None
        pass_sweeps = 0
        try:
            while sweeps_left > 0 or self._pass_wanted:
                if self._pass_wanted:
                    self._pass_wanted = False
                    self.passes_started += 1
                    sweeps_left = max(sweeps_left, -(-self.planner.pending_pods // sweep_pods_max))
                    if pass_started_s is None:
                        pass_started_s = time.monotonic()
                self.sweeps_proposed += 1
                pass_sweeps += 1
                started_s = time.monotonic()
                outcome = await self._submit(self._encode("scheduler.retry", {"pods": sweep_pods_max}), leader_term)
                took_s = time.monotonic() - started_s
                bound = outcome.result.value.get("bound", 0) if isinstance(outcome.result, Ok) else 0
                if pass_started_s is None and not bound and not self._pass_wanted:
                    self.idle_sweeps += 1
                else:
                    self.idle_sweeps = 0
                sweeps_left -= 1
                if self._leader_term != leader_term or self.planner.pending_pods == 0:
                    return
                if sweeps_left > 0 or self._pass_wanted:
                    await asyncio.sleep(min(pass_pause_max_s, max(pass_pause_min_s, pass_pause_factor * took_s)))
            if pass_started_s is not None:
                log.info(
                    "pending-queue pass: %d sweeps (%d pods each) in %.1f s; %d pods pending",
                    pass_sweeps,
                    sweep_pods_max,
                    time.monotonic() - pass_started_s,
                    self.planner.pending_pods,
                )
        except Exception as exc:
            log.warning("proposing a pending-queue sweep failed: %s", exc)
        finally:
            self._sweep_in_flight = False
