"""Placing pods on nodes: one fit function, one score, one search, used by the proposer's
planner and by apply alike; the pending queue and its retries; nominations.

Fit (`fit`), in this order, the first failure being the node's reason:
  node not ready, node cordoned, node selector mismatch, node affinity mismatch, untolerated
  taint, too many pods, Insufficient cpu, Insufficient memory.
The tenant's quota is checked once per placement, before any node (it does not depend on the
node). A node whose pod count is below `capacity.pods` always has a free pod address (nodes.py),
so the address needs no separate filter; bind takes it from the node's pod CIDR.

Score (`score`), integers only, higher wins, ties broken on the lowest node name:
  spread  = sum over cpu, memory, pods of (capacity - used after placing) * 1000 // capacity
  binpack = sum over cpu, memory, pods of used after placing * 1000 // capacity
The pod count term spreads pods that request nothing.

Plan at the proposer, verify in apply: `plan_pod(view, spec, principal)` runs the full search
against the proposer's latest applied state and names a node; pod.create carries it as
`plan.nodeName`. Apply checks the quota, then `fit` against that one node (two reads: the node's
record and the ledgers), and binds. Only when there is no plan, or the plan no longer fits, does
apply search every node (bounded by `nodes.nodes_max`).

Pending queue: `pq/<rank><uid>` ordered by priority (descending) then age (the uid is the log
position of creation). A pending pod's reason is written when it is fully evaluated (creation,
a sweep, a quota retry, a drain).

Retries, in the apply of the event that could make pods fit:
* capacity grows on known nodes (a node registers, becomes Ready, is uncordoned; a bound pod is
  deleted): those nodes' nominees first, then the first `retry_heads_max` queue entries, each
  checked against those nodes only (a few fit checks, no full search);
* a quota is raised or removed: of the first `retry_heads_max` queue entries, up to
  `retry_full_searches_max` of that tenant's pods get a full search;
* a drain: up to `retry_full_searches_max` queue heads get a full search (the evicted pods are
  back in the queue);
* `scheduler.retry` (issued by the leader on a timer, or by an operator): a full search for up
  to `sweep_pods_max` queue entries from a cursor that walks the whole queue and wraps, so every
  pending pod is fully evaluated again within (pending / sweep size) sweeps, or twice that when
  a retry triggered by grown capacity or a loosened quota moves the cursor back (at most once
  per walk: `_rewind_sweep`).

No starvation by smaller pods (nominations): when a full search finds no node, the pod nominates
the lowest-named node that passes every filter except resources, would hold the pod if it were
empty, and has no nominee yet; failing that, the lowest-named such node whose nominee has a
lower priority, which then loses its nomination (it stays pending, and may nominate again at
its next full evaluation). From then on, `fit` counts the nominee's requests (and one pod) as
used on that node for every other pod of the nominee's priority or lower, so none of them can
take capacity the nominee waits for; pods of a higher priority do not count it, as Kubernetes
counts nominated pods. Whenever capacity grows on that node the nominee is tried first. Against
pods of its priority or lower, the node's free capacity therefore only grows until the nominee
fits, and the nominee binds in the first apply in which it does. A nomination is dropped when
the node is cordoned, drained, becomes NotReady or is deleted, when the pod binds elsewhere or
is deleted, and when a higher-priority pod takes it over.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from statemachine import keys, nodes, pods, priorities, quotas
from statemachine.addresses import format_address, parse_address
from statemachine.codec import Principal, dump_record, loads
from statemachine.context import MODIFIED, Context, parse_uid
from statemachine.errors import InvariantViolation, Rejected
from statemachine.nodes import NodeState
from statemachine.pods import BINPACK, PHASE_BOUND, PHASE_PENDING, SPREAD, Needs
from statemachine.view import ReadView, prefix_end

NOT_READY: Final = "node not ready"
CORDONED: Final = "node cordoned"
SELECTOR_MISMATCH: Final = "node selector mismatch"
AFFINITY_MISMATCH: Final = "node affinity mismatch"
UNTOLERATED_TAINT: Final = "untolerated taint"
TOO_MANY_PODS: Final = "too many pods"
INSUFFICIENT_CPU: Final = "Insufficient cpu"
INSUFFICIENT_MEMORY: Final = "Insufficient memory"
REASON_ORDER: Final = (
    NOT_READY,
    CORDONED,
    SELECTOR_MISMATCH,
    AFFINITY_MISMATCH,
    UNTOLERATED_TAINT,
    TOO_MANY_PODS,
    INSUFFICIENT_CPU,
    INSUFFICIENT_MEMORY,
)
RESOURCE_REASONS: Final = (TOO_MANY_PODS, INSUFFICIENT_CPU, INSUFFICIENT_MEMORY)
REASON_UNSCHEDULABLE: Final = "Unschedulable"
REASON_QUOTA: Final = "QuotaExceeded"
REASON_EVICTED: Final = "Evicted"
score_scale = 1000

retry_heads_max = 32  # queue entries examined by one triggered retry
retry_full_searches_max = 4  # full searches by one triggered retry (each reads every node)
sweep_pods_max = 16  # full searches one scheduler.retry may ask for
# Pods in the queue, cluster-wide and per project, as pod.create admits them. Pods sent back to
# the queue by a drain, a NoExecute taint or a NotReady node's eviction are never refused, so
# the queue may pass these by what the nodes held (bounded too: nodes_max times each node's
# pods); creates are refused until it is back under them.
pending_pods_max = 100_000
pending_pods_per_project_max = 10_000
# An org of many projects must not fill the cluster's queue alone, leaving every other tenant's
# pod that does not fit at once refused (code review, 2026-12-08): five orgs at the limit do.
pending_pods_per_org_max = 20_000

NODE_STATE_END: Final = prefix_end(keys.NODE_STATE)
QUEUE_END: Final = prefix_end(keys.QUEUE)


@dataclass
class Cluster:
    """The scheduler singleton (key `sched`)."""

    nodes: int = 0
    pending: int = 0
    policy: str = SPREAD
    sweep_cursor: bytes = b""  # the queue key the last sweep stopped at
    # The sweeps have reached the queue's end since a triggered retry last moved the cursor
    # back (`_rewind_sweep`): at most one rewind per walk, so the tail is never starved.
    # Records written before this field decode with it True.
    sweep_rewind_allowed: bool = True

    def to_plain(self) -> list[Any]:
        return [self.nodes, self.pending, self.policy, self.sweep_cursor, self.sweep_rewind_allowed]

    @classmethod
    def load(cls, view: ReadView) -> Cluster:
        raw = view.get(keys.SCHEDULER)
        return cls() if raw is None else cls(*loads(raw))

    def save(self, ctx: Context) -> None:
        ctx.ov.put(keys.SCHEDULER, dump_record(self.to_plain()))


# ---- fit and score -----------------------------------------------------------------------------


def _affinity_holds(labels: dict[str, str], affinity: tuple[tuple[str, str, tuple[str, ...]], ...]) -> bool:
    for key, operator, values in affinity:
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        else:
            ok = not present
        if not ok:
            return False
    return True


def static_fit(state: NodeState, needs: Needs) -> str | None:
    """The filters that do not depend on what is bound: the first that fails, or None."""
    if not state.ready:
        return NOT_READY
    if not state.schedulable:
        return CORDONED
    labels = state.labels
    for key, value in needs.selector:
        if labels.get(key) != value:
            return SELECTOR_MISMATCH
    if needs.affinity and not _affinity_holds(labels, needs.affinity):
        return AFFINITY_MISMATCH
    for key, value, effect in state.taints:
        if not pods.tolerated(needs.tolerations, key, value, effect):
            return UNTOLERATED_TAINT
    return None


def committed(state: NodeState, pod_key: bytes | None, priority: int) -> tuple[int, int, int]:
    """(cpu, memory, pods) taken on the node as a pod of this priority, other than the nominee,
    sees it: the nominee's reservation counts for pods of its priority or lower, not for higher
    ones (as Kubernetes counts nominated pods)."""
    if state.nominee is not None and state.nominee != pod_key and priority <= state.nominee_priority:
        return (
            state.cpu_used + state.nominee_cpu,
            state.memory_used + state.nominee_memory,
            state.pods_used + 1,
        )
    return state.cpu_used, state.memory_used, state.pods_used


def resource_fit(state: NodeState, needs: Needs, pod_key: bytes | None) -> str | None:
    cpu, memory, pod_count = committed(state, pod_key, needs.priority)
    if pod_count + 1 > state.pods_capacity:
        return TOO_MANY_PODS
    if cpu + needs.cpu_millis > state.cpu_capacity:
        return INSUFFICIENT_CPU
    if memory + needs.memory_bytes > state.memory_capacity:
        return INSUFFICIENT_MEMORY
    return None


def fit(state: NodeState, needs: Needs, pod_key: bytes | None) -> str | None:
    """Why the pod cannot go on this node now, or None when it can."""
    return static_fit(state, needs) or resource_fit(state, needs, pod_key)


def score(state: NodeState, needs: Needs, policy: str, pod_key: bytes | None) -> int:
    cpu, memory, pod_count = committed(state, pod_key, needs.priority)
    cpu += needs.cpu_millis
    memory += needs.memory_bytes
    pod_count += 1
    if policy == BINPACK:
        return (
            cpu * score_scale // state.cpu_capacity
            + memory * score_scale // state.memory_capacity
            + pod_count * score_scale // state.pods_capacity
        )
    return (
        (state.cpu_capacity - cpu) * score_scale // state.cpu_capacity
        + (state.memory_capacity - memory) * score_scale // state.memory_capacity
        + (state.pods_capacity - pod_count) * score_scale // state.pods_capacity
    )


def _fits_when_empty(state: NodeState, needs: Needs) -> bool:
    return needs.cpu_millis <= state.cpu_capacity and needs.memory_bytes <= state.memory_capacity


@dataclass
class Found:
    node: str | None  # the best feasible node
    total: int  # nodes examined
    reasons: dict[str, int]  # first failing filter -> nodes
    nominate: str | None  # the first node nobody reserved where the pod could (no node fits)
    displace: str | None = None  # the first such node whose nominee has a lower priority
    # (cpu, memory, pods) that other pods of the searched pod's project, and of its org, hold
    # reserved on nodes (nominations); and the part of it the displaced nominee holds: see
    # `reservation`.
    reserved_by_project: tuple[int, int, int] = (0, 0, 0)
    reserved_by_org: tuple[int, int, int] = (0, 0, 0)
    displaced_of_project: tuple[int, int, int] = (0, 0, 0)
    displaced_of_org: tuple[int, int, int] = (0, 0, 0)


@lru_cache(maxsize=nodes.nodes_max)
def _searched_state(raw: bytes) -> NodeState:
    """A node's scheduling record as `search` reads it, decoded once per distinct record.

    Decoding was half of a full search's time, and between two searches only the nodes that
    changed have new records. Decoding is a pure function of the bytes, so remembering it
    cannot change a result; the cache holds at most one entry per possible node (a cluster
    that outgrows it just decodes more). The states it returns are shared: read them, never
    change them (search only reads; everything that writes a node loads its own copy)."""
    return NodeState.from_plain(loads(raw))


def search(view: ReadView, needs: Needs, pod_key: bytes | None, policy: str) -> Found:
    """Every node, in name order: the best by `score` among those that fit."""
    best: str | None = None
    best_score = -1
    reasons: dict[str, int] = {}
    nominate: str | None = None
    displace: str | None = None  # the first node whose nominee has a lower priority
    displaced: NodeState | None = None  # that node's record
    total = 0
    org_prefix = project_prefix = b""
    if pod_key is not None:
        org, project = keys.split_path(pod_key, keys.POD)[:2]
        org_prefix = keys.POD + org.encode() + b"/"
        project_prefix = org_prefix + project.encode() + b"/"
    project_cpu = project_memory = project_pods = org_cpu = org_memory = org_pods = 0
    for state_key, raw in view.scan(keys.NODE_STATE, NODE_STATE_END):
        total += 1
        state = _searched_state(raw)
        nominee = state.nominee
        if org_prefix and nominee is not None and nominee != pod_key and nominee.startswith(org_prefix):
            org_cpu += state.nominee_cpu
            org_memory += state.nominee_memory
            org_pods += 1
            if nominee.startswith(project_prefix):
                project_cpu += state.nominee_cpu
                project_memory += state.nominee_memory
                project_pods += 1
        reason = static_fit(state, needs) or resource_fit(state, needs, pod_key)
        if reason is None:
            node_score = score(state, needs, policy, pod_key)
            if node_score > best_score:  # strictly: on a tie the earlier (lower) name stays
                best, best_score = state_key[len(keys.NODE_STATE) :].decode(), node_score
            continue
        reasons[reason] = reasons.get(reason, 0) + 1
        if reason in RESOURCE_REASONS and (nominate is None or displace is None) and _fits_when_empty(state, needs):
            if state.nominee in (None, pod_key):
                if nominate is None:
                    nominate = state_key[len(keys.NODE_STATE) :].decode()
            elif displace is None and state.nominee_priority < needs.priority:
                displace = state_key[len(keys.NODE_STATE) :].decode()
                displaced = state
    displaced_of_project = displaced_of_org = (0, 0, 0)
    if displaced is not None and displaced.nominee is not None and org_prefix:
        share = (displaced.nominee_cpu, displaced.nominee_memory, 1)
        displaced_of_org = share if displaced.nominee.startswith(org_prefix) else (0, 0, 0)
        displaced_of_project = share if displaced.nominee.startswith(project_prefix) else (0, 0, 0)
    return Found(
        best,
        total,
        reasons,
        nominate,
        displace,
        (project_cpu, project_memory, project_pods),
        (org_cpu, org_memory, org_pods),
        displaced_of_project,
        displaced_of_org,
    )


def unschedulable_message(found: Found) -> str:
    if found.total == 0:
        return "0/0 nodes available: no nodes are registered"
    ordered = sorted(found.reasons.items(), key=lambda item: (-item[1], REASON_ORDER.index(item[0])))
    parts = [f"{reason} on {count} node{'' if count == 1 else 's'}" for reason, count in ordered]
    return f"0/{found.total} nodes available: " + "; ".join(parts)


def charge_of(spec: dict[str, Any]) -> quotas.Charge:
    requests = spec["requests"]
    return quotas.Charge(cpu_millis=requests["cpuMillis"], memory_bytes=requests["memoryBytes"], pods=1)


def unrequested(own_requests: tuple[str, ...], tenant: quotas.Tenant) -> list[str]:
    """The requests a pod neither gave nor got from the project's `defaultRequests`. A default
    of 0 counts as none: the quota stores a default left out as 0 (`quotas.check_requests`), and
    a `defaultRequests` naming only the CPU must not let pods run past a memory limit."""
    defaults = tenant.project_ledger.default_requests or [0, 0]
    fields = ("cpuMillis", "memoryBytes")
    return [field for field, default in zip(fields, defaults, strict=True) if field not in own_requests and not default]


def fill_default_requests(spec: dict[str, Any], own_requests: tuple[str, ...], tenant: quotas.Tenant) -> list[str]:
    """Each request the pod did not give takes the project's default (checked requests are
    in spec already, the others zero): a pod naming only its CPU is still charged memory.
    Returns the requests it filled in."""
    defaults = tenant.project_ledger.default_requests
    if defaults is None:
        return []
    filled: list[str] = []
    for field, default in (("cpuMillis", defaults[0]), ("memoryBytes", defaults[1])):
        if field not in own_requests:
            spec["requests"][field] = default
            filled.append(field)
    return filled


def plan_pod(view: ReadView, spec: Any, principal: Principal) -> str | None:
    """The node the proposer should name in pod.create's `plan.nodeName`, judged on its latest
    applied state with the same fit and score apply uses; None when nothing fits (or the spec
    is bad: apply will say why)."""
    if not principal.has_tenant:
        return None
    try:
        checked, own_requests, own_priority = pods.check_spec(spec)
        priorities.resolve(view, checked, own_priority)
    except Rejected:
        return None
    tenant = quotas.Tenant(view, principal.org, principal.project)
    fill_default_requests(checked, own_requests, tenant)
    if (
        tenant.priority_refusal(checked["priority"]) is not None
        or tenant.unrequested_refusal(unrequested(own_requests, tenant)) is not None
        or tenant.shortfall(charge_of(checked)) is not None
    ):
        return None
    needs = Needs.of(checked)
    return search(view, needs, None, needs.policy or Cluster.load(view).policy).node


# ---- binding and the queue -----------------------------------------------------------------------


def _status(
    phase: str, pod_ip: str | None, reason: str | None, message: str | None, nominated: str | None, evicted: str | None
) -> dict[str, Any]:
    return {
        "phase": phase,
        "podIP": pod_ip,
        "reason": reason,
        "message": message,
        "nominatedNodeName": nominated,
        "evictedFrom": evicted,
    }


def bind(
    ctx: Context,
    pod: dict[str, Any],
    pod_key: bytes,
    name: str,
    state: NodeState,
    tenant: quotas.Tenant,
    charge: quotas.Charge | None = None,
) -> None:
    """Bind the pod to the node: its address, the node's usage and the quota charge, together.
    `charge` is the pod's `charge_of`, when the caller has it already."""
    block = nodes.take_pod_address(ctx, name, state, pod_key)
    requests = pod["spec"]["requests"]
    state.cpu_used += requests["cpuMillis"]
    state.memory_used += requests["memoryBytes"]
    state.pods_used += 1
    previous_nomination = pod["status"]["nominatedNodeName"]
    if state.nominee == pod_key:
        clear_reservation(state)
    elif previous_nomination is not None:
        _drop_nomination(ctx, previous_nomination, pod_key)
    due_ms: int | None = None
    if state.taints and state.taint_eviction_ms != nodes.UNTIMED:  # a NoExecute taint tolerated for a time
        stay_ms = pods.no_execute_ms(pod["spec"], nodes.no_execute_rows(state))
        if stay_ms == pods.NOT_TOLERATED:
            raise InvariantViolation(
                f"pod {pods.pod_id(pod_key)} binds to node {name}, whose taint it does not tolerate"
            )
        if stay_ms is not None:  # its time counts from now
            due_ms = ctx.now_ms + stay_ms
            state.taint_eviction_ms = nodes.earlier(due_ms, state.taint_eviction_ms)
    nodes.save_state(ctx, name, state)
    tenant.add(charge or charge_of(pod["spec"]), 1)
    tenant.save(ctx)
    ctx.ov.put(keys.pod_on_node_key(name, pod_key), nodes.index_value(due_ms))
    pod["spec"]["nodeName"] = name
    pod["status"] = _status(PHASE_BOUND, format_address(block.family, block.address), None, None, None, None)


def unbind(ctx: Context, pod: dict[str, Any], pod_key: bytes, tenant: quotas.Tenant) -> str:
    """Undo bind: free the address, the node's usage and the charge. Returns the node's name.
    The pod object is left as it was (a deleted pod's last event still names its node)."""
    name = pod["spec"]["nodeName"]
    state = nodes.load_state(ctx.ov, name)
    if state is None:
        raise InvariantViolation(f"pod {pods.pod_id(pod_key)} is bound to missing node {name}")
    nodes.free_pod_address(ctx, name, state, parse_address(pod["status"]["podIP"], "status.podIP"), pod_key)
    requests = pod["spec"]["requests"]
    state.cpu_used -= requests["cpuMillis"]
    state.memory_used -= requests["memoryBytes"]
    state.pods_used -= 1
    nodes.save_state(ctx, name, state)
    tenant.add(charge_of(pod["spec"]), -1)
    tenant.save(ctx)
    ctx.ov.delete(keys.pod_on_node_key(name, pod_key))
    return str(name)


def queue_key_of(pod: dict[str, Any]) -> bytes:
    return keys.queue_key(pod["spec"]["priority"], parse_uid(pod["metadata"]["uid"]))


def enqueue(ctx: Context, pod: dict[str, Any], pod_key: bytes, tenant: quotas.Tenant, cluster: Cluster) -> None:
    ctx.ov.put(queue_key_of(pod), pod_key)
    tenant.add_pending(1)
    tenant.save(ctx)
    cluster.pending += 1


def dequeue(ctx: Context, pod: dict[str, Any], tenant: quotas.Tenant, cluster: Cluster) -> None:
    ctx.ov.delete(queue_key_of(pod))
    tenant.add_pending(-1)
    tenant.save(ctx)
    cluster.pending -= 1


def clear_reservation(state: NodeState) -> None:
    state.nominee = None
    state.nominee_cpu = 0
    state.nominee_memory = 0
    state.nominee_priority = 0


def _drop_nomination(ctx: Context, name: str, pod_key: bytes) -> None:
    state = nodes.load_state(ctx.ov, name)
    if state is None or state.nominee != pod_key:
        raise InvariantViolation(f"pod {pods.pod_id(pod_key)} says it nominated node {name}, which disagrees")
    clear_reservation(state)
    nodes.save_state(ctx, name, state)


def release_nomination(ctx: Context, name: str, state: NodeState) -> None:
    """Drop the node's nomination (the node is cordoned, NotReady, drained or deleted); the
    pod stays pending and may nominate again at its next full evaluation. Saves nothing of
    the node: the caller saves its state."""
    if state.nominee is None:
        return
    pod = pods.load(ctx.ov, state.nominee)
    if pod is None or pod["status"]["nominatedNodeName"] != name:
        raise InvariantViolation(f"node {name} is nominated by {state.nominee!r}, which disagrees")
    pod["status"]["nominatedNodeName"] = None
    ctx.write_object(state.nominee, pods.KIND, pod, MODIFIED)
    clear_reservation(state)


def _nominate(ctx: Context, pod: dict[str, Any], pod_key: bytes, name: str) -> None:
    """Reserve the node for the pod; a nominee of lower priority there loses its nomination
    (it stays pending and may nominate again at its next full evaluation), as Kubernetes
    clears lower-priority nominated pods for a preemptor."""
    state = nodes.load_state(ctx.ov, name)
    priority = pod["spec"]["priority"]
    if state is None or (state.nominee is not None and state.nominee_priority >= priority):
        raise InvariantViolation(f"node {name} cannot take the nomination of {pods.pod_id(pod_key)}")
    release_nomination(ctx, name, state)
    requests = pod["spec"]["requests"]
    state.nominee = pod_key
    state.nominee_cpu = requests["cpuMillis"]
    state.nominee_memory = requests["memoryBytes"]
    state.nominee_priority = priority
    nodes.save_state(ctx, name, state)
    pod["status"]["nominatedNodeName"] = name


def place(ctx: Context, pod: dict[str, Any], pod_key: bytes, planned: str | None, tenant: quotas.Tenant) -> bool:
    """Bind a pod that is not bound (plan first, then a full search), or leave it pending with
    its reason and maybe a nomination. True when bound. Does not write the pod object."""
    charge = charge_of(pod["spec"])
    shortfall = tenant.shortfall(charge)
    if shortfall is not None:
        # A quota lowered below what the pod alone requests (after it was created) holds it
        # until the quota changes, not until other pods go: the message says which.
        never = tenant.shortfall(charge, alone="the pod")
        _set_pending(pod, REASON_QUOTA, (never or shortfall).message)
        # A pod its quota holds back cannot bind however much a node frees, so its reservation
        # would only keep other pods, other tenants' too, off the node; it may nominate again
        # once the quota lets it be placed.
        nominated = pod["status"]["nominatedNodeName"]
        if nominated is not None:
            _drop_nomination(ctx, nominated, pod_key)
            pod["status"]["nominatedNodeName"] = None
        return False
    needs = Needs.of(pod["spec"])
    if planned is not None:
        state = nodes.load_state(ctx.ov, planned)
        if state is not None and fit(state, needs, pod_key) is None:
            bind(ctx, pod, pod_key, planned, state, tenant, charge)
            return True
    # The cluster record is read only here: a verified plan needs nothing from it.
    found = search(ctx.ov, needs, pod_key, needs.policy or Cluster.load(ctx.ov).policy)
    if found.node is not None:
        state = nodes.load_state(ctx.ov, found.node)
        if state is None:
            raise InvariantViolation(f"search chose node {found.node}, which has no record")
        bind(ctx, pod, pod_key, found.node, state, tenant, charge)
        return True
    _set_pending(pod, REASON_UNSCHEDULABLE, unschedulable_message(found))
    if pod["status"]["nominatedNodeName"] is None:
        reserved = reservation(tenant, charge, found)
        if reserved is not None:
            _nominate(ctx, pod, pod_key, reserved)
    return False


def reservation(tenant: quotas.Tenant, charge: quotas.Charge, found: Found) -> str | None:
    """Where a pod no node fits reserves capacity, if anywhere: the first node nobody reserved;
    else the first whose nominee has a lower priority, which loses its reservation (as
    Kubernetes clears lower-priority nominated pods for a preemptor; a node nobody reserved is
    taken first, to spare that pod the loss of its place).

    Under a quota, a reservation keeps other pods, other tenants' too, off capacity its tenant
    could not use anyway, unless the tenant's usage and its other reservations leave the quota
    room for it (code review, 2026-12-08: four pending pods of a project whose quota allowed
    one each reserved a node, and another tenant's small pod found no room on any of them).
    Taking over a sibling's reservation frees the sibling's share, so a higher-priority pod of
    a project at its quota still takes it over (second review and QA, same day: counted, the
    lower-priority sibling bound first). A pod left without a reservation still binds when
    capacity frees up before another pod takes it, and may reserve at its next full evaluation."""
    if found.nominate is not None and _within_quota(tenant, charge, found.reserved_by_project, found.reserved_by_org):
        return found.nominate
    if found.displace is not None and _within_quota(
        tenant,
        charge,
        _less(found.reserved_by_project, found.displaced_of_project),
        _less(found.reserved_by_org, found.displaced_of_org),
    ):
        return found.displace
    return None


def _less(held: tuple[int, int, int], freed: tuple[int, int, int]) -> tuple[int, int, int]:
    return held[0] - freed[0], held[1] - freed[1], held[2] - freed[2]


def _within_quota(
    tenant: quotas.Tenant, charge: quotas.Charge, by_project: tuple[int, int, int], by_org: tuple[int, int, int]
) -> bool:
    """The pod's requests and what its project (and its org) hold reserved fit the quotas."""
    if not tenant.limited:
        return True
    for ledger, scope, (cpu, memory, count) in (
        (tenant.project_ledger, quotas.quota_id(tenant.org, tenant.project), by_project),
        (tenant.org_ledger, tenant.org, by_org),
    ):
        held = quotas.Charge(
            cpu_millis=charge.cpu_millis + cpu, memory_bytes=charge.memory_bytes + memory, pods=charge.pods + count
        )
        if ledger.shortfall(held, scope) is not None:
            return False
    return True


def _set_pending(pod: dict[str, Any], reason: str, message: str) -> None:
    status = pod["status"]
    status["phase"] = PHASE_PENDING
    status["reason"] = reason
    status["message"] = message


def pending_status() -> dict[str, Any]:
    return _status(PHASE_PENDING, None, None, None, None, None)


# ---- retries -------------------------------------------------------------------------------------


def _queue_heads(ctx: Context, count: int, after: bytes = b"") -> list[tuple[bytes, bytes]]:
    start = after + b"\x00" if after else keys.QUEUE
    return list(itertools.islice(ctx.ov.scan(start, QUEUE_END), count))


def _load_pod(ctx: Context, pod_key: bytes) -> dict[str, Any]:
    pod = pods.load(ctx.ov, pod_key)
    if pod is None or pod["status"]["phase"] != PHASE_PENDING:
        raise InvariantViolation(f"queue holds {pod_key!r}, which is not a pending pod")
    return pod


def _bind_queued(
    ctx: Context, pod: dict[str, Any], pod_key: bytes, name: str, state: NodeState, tenant: quotas.Tenant
) -> None:
    cluster = Cluster.load(ctx.ov)
    dequeue(ctx, pod, tenant, cluster)
    cluster.save(ctx)
    bind(ctx, pod, pod_key, name, state, tenant)
    ctx.write_object(pod_key, pods.KIND, pod, MODIFIED)


def retry_on_nodes(ctx: Context, names: list[str]) -> int:
    """Capacity or eligibility grew on these nodes: offer it to their nominees, then to the
    first `retry_heads_max` queue entries. Returns the pods bound."""
    bound = 0
    for name in names:
        state = nodes.load_state(ctx.ov, name)
        if state is None or state.nominee is None:
            continue
        nominee_key = state.nominee
        pod = _load_pod(ctx, nominee_key)
        tenant = quotas.Tenant(ctx.ov, pod["metadata"]["org"], pod["metadata"]["project"])
        if tenant.shortfall(charge_of(pod["spec"])) is None and fit(state, Needs.of(pod["spec"]), nominee_key) is None:
            _bind_queued(ctx, pod, nominee_key, name, state, tenant)
            bound += 1
    # The nodes' records are read once for all the queue heads, not once per head, and read
    # again after a bind (which rewrites its node, and may drop a nomination on another).
    states: dict[str, NodeState | None] = {}
    cluster_policy: str | None = None  # binding never changes it
    heads = _queue_heads(ctx, retry_heads_max)
    for _, pod_key in heads:
        pod = _load_pod(ctx, pod_key)
        tenant = quotas.Tenant(ctx.ov, pod["metadata"]["org"], pod["metadata"]["project"])
        if tenant.shortfall(charge_of(pod["spec"])) is not None:
            continue
        needs = Needs.of(pod["spec"])
        policy = needs.policy
        if policy is None:
            if cluster_policy is None:
                cluster_policy = Cluster.load(ctx.ov).policy
            policy = cluster_policy
        best: tuple[int, str, NodeState] | None = None
        for name in names:
            if name not in states:
                states[name] = nodes.load_state(ctx.ov, name)
            state = states[name]
            if state is None or fit(state, needs, pod_key) is not None:
                continue
            node_score = score(state, needs, policy, pod_key)
            if best is None or (-node_score, name) < (-best[0], best[1]):
                best = (node_score, name, state)
        if best is not None:
            _bind_queued(ctx, pod, pod_key, best[1], best[2], tenant)
            states.clear()
            bound += 1
    if len(heads) == retry_heads_max:
        _rewind_sweep(ctx, heads[-1][0])
    return bound


def reconsider(ctx: Context, pod_key: bytes) -> bool:
    """A full evaluation of one pending pod: bind it, or refresh its reason and nomination
    (the pod is written only when something about it changed). True when bound."""
    pod = _load_pod(ctx, pod_key)
    before = dict(pod["status"])
    tenant = quotas.Tenant(ctx.ov, pod["metadata"]["org"], pod["metadata"]["project"])
    if place(ctx, pod, pod_key, None, tenant):
        cluster = Cluster.load(ctx.ov)
        dequeue(ctx, pod, tenant, cluster)
        cluster.save(ctx)
        ctx.write_object(pod_key, pods.KIND, pod, MODIFIED)
        return True
    if pod["status"] != before:
        ctx.write_object(pod_key, pods.KIND, pod, MODIFIED)
    return False


def retry_heads(ctx: Context, tenant_of_interest: tuple[str, str] | None = None, rewind: bool = True) -> int:
    """Full searches for up to `retry_full_searches_max` of the first `retry_heads_max` queue
    entries (only the given tenant's pods when one is given; an empty project means every
    project of the org). With `rewind`, a retry that stops at its bound moves the sweep cursor
    back (`_rewind_sweep`): only for capacity that grew, which the retry may not have handed
    out in full. Returns the pods bound."""
    searched = bound = 0
    heads = _queue_heads(ctx, retry_heads_max)
    examined = 0
    for _, pod_key in heads:
        if searched == retry_full_searches_max:
            break
        examined += 1
        if tenant_of_interest is not None:
            org, project, _namespace, _name = keys.split_path(pod_key, keys.POD)
            wanted_org, wanted_project = tenant_of_interest
            if org != wanted_org or (wanted_project and project != wanted_project):
                continue
        searched += 1
        bound += reconsider(ctx, pod_key)
    if rewind and (examined < len(heads) or len(heads) == retry_heads_max):
        _rewind_sweep(ctx, heads[examined - 1][0])
    return bound


def _rewind_sweep(ctx: Context, stopped_at: bytes) -> None:
    """A triggered retry stopped at one of its bounds with more of the queue behind
    `stopped_at`: if the sweep cursor is further on, move it back there, so the leader's next
    sweeps offer what the retry could not hand out to the next pods in priority-then-age order,
    not to whichever pods the cursor happened to reach first (a quota raised by 8 whose own
    retry binds 4 must bind the next 4 oldest, not 4 younger ones). At most once per walk of
    the queue: a stream of triggers cannot hold the sweeps near the head and starve the tail."""
    cluster = Cluster.load(ctx.ov)
    if cluster.sweep_rewind_allowed and cluster.sweep_cursor > stopped_at:
        cluster.sweep_cursor = stopped_at
        cluster.sweep_rewind_allowed = False
        cluster.save(ctx)


def sweep(ctx: Context, count: int) -> tuple[int, int]:
    """Full searches for `count` queue entries from the sweep cursor, wrapping once. Returns
    (examined, bound)."""
    cluster = Cluster.load(ctx.ov)
    chosen = _queue_heads(ctx, count, cluster.sweep_cursor)
    reached_end = len(chosen) < count
    if reached_end:
        seen = {queue_key for queue_key, _ in chosen}
        chosen += [item for item in _queue_heads(ctx, count - len(chosen)) if item[0] not in seen]
    bound = 0
    for _, pod_key in chosen:
        bound += reconsider(ctx, pod_key)
    cursor = chosen[-1][0] if chosen else b""
    cluster = Cluster.load(ctx.ov)
    if cluster.sweep_cursor != cursor or (reached_end and not cluster.sweep_rewind_allowed):
        cluster.sweep_cursor = cursor
        cluster.sweep_rewind_allowed = cluster.sweep_rewind_allowed or reached_end
        cluster.save(ctx)
    return len(chosen), bound
