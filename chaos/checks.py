"""Checks over a chaos run's History: pure functions, each returning a CheckResult.

Every check can fail: `tests/test_chaos_checks.py` plants the fault each one looks for. A check
that has nothing to look at (no status samples, no final state) is *inconclusive*, which is not
a pass. Evidence is a bounded list of short lines a reader can act on.

1. `check_no_double_allocation`: no two claims hold overlapping blocks of one address space at
   once: in each member's final state, and over the history (two acknowledged claims whose
   certain holding times overlap).
2. `check_acknowledged_claims`: every acknowledged claim is in every member's final state with
   its CIDR (and uid), unless a release may have removed it; no claim released for certain comes
   back unless a later claim may have re-created it.
3. `check_applied_at_most_once`: one idempotency key never answered two different allocations;
   no member lists a claim twice or binds two allocations to one claim; no allocation is left
   bound to a claim that does not hold it.
4. `check_linearizable`: per pool, claims, releases, reads and lists are linearizable
   (chaos/linearizability.py).
5. `check_replicas_agree`: every digest reported for one applied index is the same; after the
   run every member reports the same applied index and digest, and its stored state passes
   `check_invariants` (when inspected); no member process exited by itself.
6. `check_one_leader_per_term`: no two members were seen leading the same term.
7. `check_scheduler_invariants`: in every member's final state no node is over capacity, no
   tenant's usage passes its quota or differs from the sum of its pods, every bound pod has one
   address inside its node's pod CIDR and no two share one; every pod acknowledged bound is still
   on its node with its address unless a delete may have removed it; no pod deleted for certain
   comes back. A run without pods passes, saying so ("no pods in this run").
8. `check_liveness`: after the last fault healed, a write succeeded within a bound; no client
   call outlived its deadline (plus slack).

Checks 1-4 read IPAM operations only; pod operations (`Kind.POD_CREATE`, `Kind.POD_DELETE`,
keyed by tenant, not by IP pool) are check 7's.

Holding times (checks 1 and 2). An acknowledged claim certainly holds its block from its
completion until the invoke of the first release of its key that may follow it (a release not
completed before the claim began, acknowledged or of unknown outcome). Failed operations changed
nothing. Pending operations count as unknown.
"""

from __future__ import annotations

import argparse
import heapq
import ipaddress
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from chaos.history import IPAM_KINDS, History, Kind, MemberState, NodeState, Op, Outcome, PodState, QuotaState
from chaos.linearizability import (
    PoolModel,
    Verdict,
    carried_states_max,
    check_pool,
    parse_block,
    step_budget_default,
)

evidence_lines_max = 20
recovery_bound_s_default = 15.0  # last heal -> first acknowledged write
deadline_s_default = 30.0  # a client call without a recorded deadline
deadline_slack_s_default = 2.0
_FOREVER = 1 << 62
# node.raft.EXIT_INVARIANT, kept here so the checks do not import the server (a test pins it).
EXIT_INVARIANT = 70


@dataclass(frozen=True)
class CheckResult:
    name: str
    passed: bool
    evidence: tuple[str, ...] = ()
    inconclusive: bool = False

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "INCONCLUSIVE" if self.inconclusive else "FAIL"

    def report(self) -> str:
        lines = [f"{self.verdict:<12} {self.name}"]
        lines.extend(f"    {line}" for line in self.evidence)
        return "\n".join(lines)


@dataclass
class _Evidence:
    """Bounded evidence: the first lines, and how many more there were."""

    lines: list[str] = field(default_factory=list)
    more: int = 0

    def add(self, line: str) -> None:
        if len(self.lines) < evidence_lines_max:
            self.lines.append(line)
        else:
            self.more += 1

    def __bool__(self) -> bool:
        return bool(self.lines)

    def result(self, name: str, *, inconclusive: bool = False) -> CheckResult:
        lines = list(self.lines)
        if self.more:
            lines.append(f"... and {self.more} more")
        return CheckResult(name, not self.lines and not inconclusive, tuple(lines), inconclusive)


def _effective(op: Op) -> Outcome:
    return Outcome.UNKNOWN if op.outcome is Outcome.PENDING else op.outcome


def _may_follow(later: Op, earlier: Op) -> bool:
    """Could `later` take effect after `earlier` did? (It did not complete before `earlier` began.)"""
    if _effective(later) is Outcome.FAIL:
        return False
    if _effective(later) is Outcome.UNKNOWN:
        return True
    return later.complete_ns is None or later.complete_ns > earlier.invoke_ns


def _writes_by_claim(ops: Iterable[Op]) -> dict[str, list[Op]]:
    by_claim: dict[str, list[Op]] = defaultdict(list)
    for op in ops:
        if op.claim is not None and op.kind in (Kind.CLAIM, Kind.RELEASE):
            by_claim[op.claim].append(op)
    return by_claim


def _holding_end(claim_op: Op, writes: Sequence[Op]) -> int:
    """Until when an acknowledged claim certainly held its block (exclusive)."""
    end = _FOREVER
    for other in writes:
        if other.kind is Kind.RELEASE and _may_follow(other, claim_op):
            end = min(end, other.invoke_ns)
    return end


# ---- 1. no block held twice -------------------------------------------------------------------


def check_no_double_allocation(history: History) -> CheckResult:
    name = "no address held by two claims at once"
    evidence = _Evidence()
    for state in history.final:
        _final_overlaps(state, evidence)
    spaces = _address_spaces(history)
    by_claim = _writes_by_claim(history.ops)
    holdings: list[tuple[int, int, Op]] = []  # (from, until, claim op)
    for writes in by_claim.values():
        for op in writes:
            if op.kind is Kind.CLAIM and op.outcome is Outcome.OK and op.cidr and op.complete_ns is not None:
                until = _holding_end(op, writes)
                if op.complete_ns < until:
                    holdings.append((op.complete_ns, until, op))
    _history_overlaps(holdings, spaces, evidence)
    return evidence.result(name)


def _address_spaces(history: History) -> dict[str, str]:
    spaces: dict[str, str] = {}
    for state in history.final:
        spaces.update(state.address_spaces)
    spaces.update({str(pool): str(space) for pool, space in history.meta.get("address_spaces", {}).items()})
    return spaces


def _final_overlaps(state: MemberState, evidence: _Evidence) -> None:
    for what, items in (
        ("allocations", [(item.key, item.pool, item.cidr) for item in state.allocations]),
        ("claims", [(item.key, item.pool, item.cidr) for item in state.claims]),
    ):
        by_space: dict[tuple[str, int], list[tuple[int, int, str, str]]] = defaultdict(list)
        for key, pool, cidr in items:
            block = parse_block(cidr)
            space = state.address_spaces.get(pool, "default")
            by_space[(space, block.version)].append((block.start, block.end, cidr, key))
        for (space, _), blocks in sorted(by_space.items()):
            blocks.sort()
            widest: tuple[int, int, str, str] | None = None
            for entry in blocks:  # sorted by start: overlapping the widest reaching one so far
                if widest is not None and entry[0] <= widest[1]:
                    evidence.add(
                        f"{state.member}: {what} {widest[2]} ({widest[3]}) and {entry[2]} ({entry[3]}) "
                        f"overlap in address space {space}"
                    )
                if widest is None or entry[1] > widest[1]:
                    widest = entry


def _history_overlaps(holdings: list[tuple[int, int, Op]], spaces: Mapping[str, str], evidence: _Evidence) -> None:
    """Sweep over time: each new holding against those still held."""
    holdings.sort(key=lambda item: (item[0], item[2].op_id))
    active: list[tuple[int, int, Op]] = []  # heap by until
    for start, until, op in holdings:
        while active and active[0][0] <= start:
            heapq.heappop(active)
        block = parse_block(op.cidr or "")
        space = spaces.get(op.pool, "default")
        for _, _, other in active:
            other_block = parse_block(other.cidr or "")
            if spaces.get(other.pool, "default") != space or not block.overlaps(other_block):
                continue
            if other.claim == op.claim:
                if other.cidr != op.cidr:
                    evidence.add(
                        f"claim {op.claim} acknowledged with two CIDRs at once: {other.describe()} / {op.describe()}"
                    )
                continue
            evidence.add(f"held at once in address space {space}: {other.describe()} / {op.describe()}")
        heapq.heappush(active, (until, op.op_id, op))


# ---- 2. acknowledged claims stay, released ones stay away --------------------------------------


def check_acknowledged_claims(history: History) -> CheckResult:
    name = "acknowledged claims present, released claims gone"
    evidence = _Evidence()
    if not history.final:
        evidence.add("no final state recorded: nothing to compare the acknowledgements with")
        return evidence.result(name, inconclusive=True)
    by_claim = _writes_by_claim(history.ops)
    for state in history.final:
        held: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for claim in state.claims:
            held[claim.key].append((claim.cidr, claim.uid))
        for key, writes in sorted(by_claim.items()):
            _check_claim_key(state.member, key, writes, held.get(key, []), evidence)
    return evidence.result(name)


def _check_claim_key(
    member: str, key: str, writes: Sequence[Op], held: Sequence[tuple[str, str]], evidence: _Evidence
) -> None:
    for op in writes:
        if op.outcome is not Outcome.OK:
            continue
        if op.kind is Kind.CLAIM:
            if any(_may_follow(other, op) for other in writes if other.kind is Kind.RELEASE):
                continue
            if not held:
                evidence.add(f"{member}: lost acknowledged claim {op.describe()}")
                continue
            uid = op.result.get("uid")
            matching = [item for item in held if item[0] == op.cidr and (uid is None or item[1] == uid)]
            if not matching:
                shown = ", ".join(f"{cidr} uid {held_uid}" for cidr, held_uid in held)
                evidence.add(f"{member}: holds {key} as {shown}, acknowledged {op.describe()} uid {uid}")
        elif held and not any(_may_follow(other, op) for other in writes if other.kind is Kind.CLAIM):
            evidence.add(f"{member}: released claim is back as {held[0][0]}: {op.describe()}")


# ---- 3. applied at most once ----------------------------------------------------------------


def check_applied_at_most_once(history: History) -> CheckResult:
    name = "unknown outcomes applied at most once"
    evidence = _Evidence()
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in history.ops:
        if op.key is not None and op.outcome is Outcome.OK and op.kind is Kind.CLAIM:
            by_key[op.key].append(op)
    for key, ops in sorted(by_key.items()):
        answers = {(op.cidr, op.result.get("uid")) for op in ops}
        if len(answers) > 1:
            evidence.add(
                f"idempotency key {key} answered {len(answers)} allocations: "
                + " / ".join(op.describe() for op in ops[:3])
            )
    unknown = {
        op.claim
        for op in history.ops
        if op.claim is not None and op.kind in IPAM_KINDS and _effective(op) is Outcome.UNKNOWN
    }
    if not history.final:
        violated = bool(evidence)
        evidence.add("no final state recorded: cannot count what the unknown operations left")
        return evidence.result(name, inconclusive=not violated)
    for state in history.final:
        _duplicates_in_state(state, unknown, evidence)
    return evidence.result(name)


def _duplicates_in_state(state: MemberState, unknown: set[str], evidence: _Evidence) -> None:
    def note(key: str) -> str:
        return " (an operation on it had an unknown outcome)" if key in unknown else ""

    claims: dict[str, list[str]] = defaultdict(list)
    for claim in state.claims:
        claims[claim.key].append(claim.cidr)
    for key, cidrs in sorted(claims.items()):
        if len(cidrs) > 1:
            evidence.add(f"{state.member}: claim {key} listed {len(cidrs)} times: {', '.join(cidrs)}{note(key)}")
    bound: dict[str, list[str]] = defaultdict(list)
    for allocation in state.allocations:
        if allocation.claim is not None:
            bound[allocation.claim].append(allocation.cidr)
    for key, cidrs in sorted(bound.items()):
        if len(cidrs) > 1:
            evidence.add(
                f"{state.member}: claim {key} has {len(cidrs)} bound allocations: {', '.join(cidrs)}{note(key)}"
            )
        elif key not in claims:
            evidence.add(
                f"{state.member}: allocation {cidrs[0]} is bound to claim {key}, which does not exist{note(key)}"
            )
        elif cidrs[0] not in claims[key]:
            evidence.add(
                f"{state.member}: claim {key} holds {claims[key][0]} but its allocation is {cidrs[0]}{note(key)}"
            )


# ---- 4. linearizable per pool --------------------------------------------------------------------


def check_linearizable(
    history: History,
    pools: Mapping[str, PoolModel] | None = None,
    *,
    step_budget: int = step_budget_default,
    carried_max: int = carried_states_max,
) -> CheckResult:
    """Each pool's operations (and its final state on the first member, if recorded)."""
    name = "per-pool history linearizable"
    models = dict(pools) if pools is not None else pool_models_of(history)
    evidence = _Evidence()
    inconclusive = violated = False
    final = history.final[0] if history.final else None
    for pool in history.pools():
        model = models.get(pool)
        if model is None:
            evidence.add(f"pool {pool}: no pool model (its CIDR) given: not checked")
            inconclusive = True
            continue
        result = check_pool(
            model,
            history.ops_of_pool(pool),
            final.claims_of_pool(pool) if final is not None else None,
            step_budget=max(1, step_budget),
            carried_max=carried_max,
        )
        inconclusive |= result.verdict is Verdict.INCONCLUSIVE
        violated |= result.verdict is Verdict.NOT_LINEARIZABLE
        for line in result.evidence:
            evidence.add(line)
    return evidence.result(name, inconclusive=inconclusive and not violated)


def pool_models_of(history: History) -> dict[str, PoolModel]:
    """Pool models saved in the history's meta (`pools`: a list of PoolModel.to_json())."""
    return {model.pool: model for model in (PoolModel.from_json(item) for item in history.meta.get("pools", []))}


# ---- 5. replicas agree ----------------------------------------------------------------------------


def check_replicas_agree(history: History) -> CheckResult:
    name = "replicas agree on the digest at each applied index"
    evidence = _Evidence()
    seen: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for sample in history.statuses:
        if sample.digest is not None and sample.digest_index is not None:
            seen[sample.digest_index][sample.digest].add(sample.member)
    for index, digests in sorted(seen.items()):
        if len(digests) > 1:
            shown = "; ".join(
                f"{digest[:12]} on {','.join(sorted(members))}" for digest, members in sorted(digests.items())
            )
            evidence.add(f"applied index {index}: {len(digests)} digests: {shown}")
    if not history.final:
        violated = bool(evidence)
        evidence.add("no final state recorded: cannot show the members converged")
        return evidence.result(name, inconclusive=not violated)
    finals = {(state.applied_index, state.digest) for state in history.final}
    for state in history.final:
        if state.digest is None or state.digest_index != state.applied_index:
            evidence.add(
                f"{state.member}: final digest is of index {state.digest_index}, applied index {state.applied_index}"
            )
        if state.invariant_problems:
            evidence.add(f"{state.member}: check_invariants: {'; '.join(state.invariant_problems)[:300]}")
        for code in state.unexpected_exits:
            stopped_itself = " (it stopped itself: broken invariant, failed apply or an entry of another build)"
            why = stopped_itself if code == EXIT_INVARIANT else ""
            evidence.add(f"{state.member}: a process of it exited by itself with code {code}{why}")
    if len(finals) > 1:
        shown = ", ".join(
            f"{state.member} {state.applied_index}/{(state.digest or '-')[:12]}" for state in history.final
        )
        evidence.add(f"members ended at different applied index/digest: {shown}")
    return evidence.result(name)


# ---- 6. one leader per term ------------------------------------------------------------------------


def check_one_leader_per_term(history: History) -> CheckResult:
    name = "at most one leader per term"
    evidence = _Evidence()
    leaders: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # term -> leader -> seen by
    for sample in history.statuses:
        if sample.role == "leader":
            leaders[sample.term][sample.member].add(f"{sample.member} (itself)")
        if sample.leader is not None:
            leaders[sample.term][sample.leader].add(sample.member)
    if not leaders:
        evidence.add("no status sample named a leader: nothing to check")
        return evidence.result(name, inconclusive=True)
    for term, named in sorted(leaders.items()):
        if len(named) > 1:
            shown = "; ".join(f"{leader} per {', '.join(sorted(by))}" for leader, by in sorted(named.items()))
            evidence.add(f"term {term} had {len(named)} leaders: {shown}")
    return evidence.result(name)


# ---- 7. scheduler invariants ---------------------------------------------------------------------

# Pods' phases as the API reports them (statemachine/pods.py): bound to a node, or waiting.
PHASE_BOUND = "Bound"
PHASE_PENDING = "Pending"
# Quota usage that pods alone account for (services add services and addresses, not these).
_POD_USAGE = ("cpuMillis", "memoryBytes", "pods", "pendingPods")
_SCALAR_QUOTA_LIMITS = ("cpuMillis", "memoryBytes", "pods", "services")
_ADDRESS_QUOTA_TABLES = ("addressesByClass", "addressesByPool")
NO_PODS_IN_RUN = "no pods in this run"


def check_scheduler_invariants(history: History) -> CheckResult:
    """Nodes, pods and quotas in every member's final state, and acknowledged pod writes."""
    name = "scheduler invariants: capacity, quotas, pod addresses, acknowledged pods"
    pod_ops = [op for op in history.ops if op.is_pod]
    observed = [state for state in history.final if state.scheduler_observed]
    if not pod_ops and not any(state.nodes or state.pods or state.quotas for state in history.final):
        # Nothing scheduled and nothing to look at: say so, so a pass is not mistaken for evidence.
        scope = "no final state lists a node, pod or quota" if observed else "no scheduler state was read"
        return CheckResult(
            name, True, (f"{NO_PODS_IN_RUN}: no pod operation was recorded and {scope}; nothing checked",)
        )
    evidence = _Evidence()
    for state in observed:
        _scheduler_state_problems(state, evidence)
        _acknowledged_pod_problems(state, pod_ops, evidence)
    _idempotent_pod_answers(pod_ops, evidence)
    violated = bool(evidence)
    unobserved = [state.member for state in history.final if not state.scheduler_observed]
    if not history.final:
        evidence.add(f"no final state recorded: cannot compare {len(pod_ops)} pod operations with the members")
    elif unobserved:
        evidence.add(f"no scheduler state (nodes, pods, quotas) read from {', '.join(unobserved)}: not checked there")
    return evidence.result(name, inconclusive=not violated and bool(evidence))


def _is_bound(pod: PodState) -> bool:
    return pod.phase == PHASE_BOUND


def _scheduler_state_problems(state: MemberState, evidence: _Evidence) -> None:
    member = state.member
    nodes = {node.name: node for node in state.nodes}
    used: dict[str, list[int]] = {node: [0, 0, 0] for node in nodes}  # cpu, memory, pods
    for pod in state.pods:
        if pod.phase == PHASE_PENDING:
            if pod.node is not None or pod.pod_ip is not None:
                evidence.add(f"{member}: pod {pod.key} is Pending but has node {pod.node} and address {pod.pod_ip}")
            continue
        if not _is_bound(pod):
            evidence.add(f"{member}: pod {pod.key} has unknown phase {pod.phase!r}")
            continue
        if pod.node is None or pod.node not in nodes:
            evidence.add(f"{member}: pod {pod.key} is Bound to node {pod.node}, which is not registered")
            continue
        counted = used[pod.node]
        counted[0] += pod.cpu_millis
        counted[1] += pod.memory_bytes
        counted[2] += 1
    for node_name, (cpu, memory, pod_count) in sorted(used.items()):
        _node_problems(member, nodes[node_name], cpu, memory, pod_count, evidence)
    _pod_address_problems(state, nodes, evidence)
    for quota in state.quotas:
        _quota_problems(member, quota, state.pods, evidence)


def _node_problems(member: str, node: NodeState, cpu: int, memory: int, pod_count: int, evidence: _Evidence) -> None:
    for what, total, capacity in (
        ("cpuMillis", cpu, node.capacity_cpu_millis),
        ("memoryBytes", memory, node.capacity_memory_bytes),
        ("pods", pod_count, node.capacity_pods),
    ):
        if total > capacity:
            evidence.add(f"{member}: node {node.name} over capacity: its bound pods use {what} {total} of {capacity}")
    recorded = (node.allocated_cpu_millis, node.allocated_memory_bytes, node.allocated_pods)
    if recorded != (cpu, memory, pod_count):
        evidence.add(
            f"{member}: node {node.name} reports allocated (cpu, memory, pods) {recorded}, "
            f"its bound pods add up to {(cpu, memory, pod_count)}"
        )


def _pod_address_problems(state: MemberState, nodes: Mapping[str, NodeState], evidence: _Evidence) -> None:
    member = state.member
    holders: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, str] = {}  # address -> pod key
    for pod in state.pods:
        if not _is_bound(pod) or pod.node is None or pod.node not in nodes:
            continue  # a pod Bound to no registered node is reported with the node checks
        if pod.pod_ip is None:
            evidence.add(f"{member}: pod {pod.key} is Bound to {pod.node} without an address")
            continue
        try:
            address = ipaddress.ip_address(pod.pod_ip)
        except ValueError:
            evidence.add(f"{member}: pod {pod.key} has {pod.pod_ip!r}, which is not one address")
            continue
        cidr = ipaddress.ip_network(nodes[pod.node].pod_cidr)
        if address not in cidr:
            evidence.add(f"{member}: pod {pod.key} has {address}, outside node {pod.node}'s pod CIDR {cidr}")
        elif address == cidr.network_address:
            evidence.add(f"{member}: pod {pod.key} has {address}, the address node {pod.node} keeps for itself")
        other = holders.setdefault(address, pod.key)
        if other != pod.key:
            evidence.add(f"{member}: pods {other} and {pod.key} share address {address}")


def _quota_problems(member: str, quota: QuotaState, pods: Sequence[PodState], evidence: _Evidence) -> None:
    used, limits = quota.used, quota.limits
    for resource in _SCALAR_QUOTA_LIMITS:
        limit, current = limits.get(resource), used.get(resource, 0)
        if limit is not None and current > limit:
            evidence.add(f"{member}: quota {quota.scope} over its limit: {resource} {current} used, limit {limit}")
    for table in _ADDRESS_QUOTA_TABLES:
        for item, current in sorted(used.get(table, {}).items()):
            limit = limits.get(table, {}).get(item)
            if limit is not None and current > limit:
                evidence.add(
                    f"{member}: quota {quota.scope} over its limit: {table}.{item} {current} used, limit {limit}"
                )
    prefix = f"{quota.scope}/"
    tenant_pods = [pod for pod in pods if pod.key.startswith(prefix)]
    bound = [pod for pod in tenant_pods if _is_bound(pod)]
    expected = {
        "cpuMillis": sum(pod.cpu_millis for pod in bound),
        "memoryBytes": sum(pod.memory_bytes for pod in bound),
        "pods": len(bound),
        "pendingPods": sum(pod.phase == PHASE_PENDING for pod in tenant_pods),
    }
    for resource in _POD_USAGE:
        if resource in used and used[resource] != expected[resource]:
            evidence.add(
                f"{member}: quota {quota.scope} reports {resource} {used[resource]} used, "
                f"its pods add up to {expected[resource]}"
            )


def _pod_writes(pod_ops: Iterable[Op]) -> dict[str, list[Op]]:
    by_pod: dict[str, list[Op]] = defaultdict(list)
    for op in pod_ops:
        if op.claim is not None:
            by_pod[op.claim].append(op)
    return by_pod


def _acknowledged_pod_problems(state: MemberState, pod_ops: Sequence[Op], evidence: _Evidence) -> None:
    """Acknowledged creates still there (bound ones on their node, with their address), unless
    a delete may have come after; acknowledged deletes stay deleted, unless a create may have
    come after."""
    held: dict[str, list[PodState]] = defaultdict(list)
    for pod in state.pods:
        held[pod.key].append(pod)
    for key, writes in sorted(_pod_writes(pod_ops).items()):
        found = held.get(key, [])
        if len(found) > 1:
            evidence.add(f"{state.member}: pod {key} listed {len(found)} times")
        for op in writes:
            if op.outcome is not Outcome.OK:
                continue
            if op.kind is Kind.POD_CREATE:
                if not any(_may_follow(other, op) for other in writes if other.kind is Kind.POD_DELETE):
                    _check_created_pod(state.member, op, found, evidence)
            elif found and not any(_may_follow(other, op) for other in writes if other.kind is Kind.POD_CREATE):
                pod = found[0]
                evidence.add(f"{state.member}: deleted pod is back ({pod.phase} on {pod.node}): {op.describe()}")


def _check_created_pod(member: str, op: Op, found: Sequence[PodState], evidence: _Evidence) -> None:
    if not found:
        evidence.add(f"{member}: lost acknowledged pod {op.describe()}")
        return
    pod = found[0]
    uid = op.result.get("uid")
    if uid is not None and pod.uid != uid:
        evidence.add(f"{member}: pod {pod.key} has uid {pod.uid}, acknowledged with uid {uid}: {op.describe()}")
    node = op.result.get("node")
    if node is None:
        return  # acknowledged Pending: it may have been bound anywhere since
    if not _is_bound(pod) or (pod.node, pod.pod_ip) != (node, op.result.get("podIP")):
        evidence.add(f"{member}: pod {pod.key} is {pod.phase} on {pod.node} {pod.pod_ip}, acknowledged {op.describe()}")


def _idempotent_pod_answers(pod_ops: Sequence[Op], evidence: _Evidence) -> None:
    """One idempotency key answers one placement (the server repeats the first answer)."""
    by_key: dict[str, list[Op]] = defaultdict(list)
    for op in pod_ops:
        if op.key is not None and op.outcome is Outcome.OK and op.kind is Kind.POD_CREATE:
            by_key[op.key].append(op)
    for idempotency_key, ops in sorted(by_key.items()):
        answers = {(op.result.get("phase"), op.result.get("node"), op.result.get("podIP")) for op in ops}
        if len(answers) > 1:
            evidence.add(
                f"idempotency key {idempotency_key} answered {len(answers)} placements: "
                + " / ".join(op.describe() for op in ops[:3])
            )


# ---- 8. liveness ---------------------------------------------------------------------------------


def check_liveness(
    history: History,
    *,
    recovery_bound_s: float = recovery_bound_s_default,
    deadline_s: float = deadline_s_default,
    slack_s: float = deadline_slack_s_default,
) -> CheckResult:
    name = "writes resume after the last heal; no call outlived its deadline"
    evidence = _Evidence()
    for fault in history.faults:
        if fault.healed_ns is None:
            evidence.add(f"fault #{fault.number} {fault.kind} on {','.join(fault.members)} was never healed")
    healed = [fault.healed_ns for fault in history.faults if fault.healed_ns is not None]
    last_heal = max(healed, default=min((op.invoke_ns for op in history.ops), default=0))
    resumed = [
        op.complete_ns
        for op in history.ops
        if op.is_write and op.outcome is Outcome.OK and op.complete_ns is not None and op.complete_ns >= last_heal
    ]
    if not resumed:
        evidence.add(f"no write was acknowledged after the last heal (at {last_heal / 1e9:.3f}s)")
    elif (min(resumed) - last_heal) / 1e9 > recovery_bound_s:
        evidence.add(
            f"the first write after the last heal was acknowledged {(min(resumed) - last_heal) / 1e9:.1f} s later "
            f"(bound {recovery_bound_s:.1f} s)"
        )
    for op in history.ops:
        if op.outcome is Outcome.PENDING or op.complete_ns is None:
            evidence.add(f"never completed: {op.describe()}")
            continue
        allowed_ns = (op.deadline_ns if op.deadline_ns is not None else int(deadline_s * 1e9)) + int(slack_s * 1e9)
        took_ns = op.complete_ns - op.invoke_ns
        if took_ns > allowed_ns:
            evidence.add(f"took {took_ns / 1e9:.1f} s, allowed {allowed_ns / 1e9:.1f} s: {op.describe()}")
    return evidence.result(name)


# ---- all of them --------------------------------------------------------------------------------


def run_checks(
    history: History,
    pools: Mapping[str, PoolModel] | None = None,
    *,
    step_budget: int = step_budget_default,
    recovery_bound_s: float = recovery_bound_s_default,
    deadline_s: float = deadline_s_default,
    slack_s: float = deadline_slack_s_default,
) -> list[CheckResult]:
    return [
        check_no_double_allocation(history),
        check_acknowledged_claims(history),
        check_applied_at_most_once(history),
        check_linearizable(history, pools, step_budget=step_budget),
        check_replicas_agree(history),
        check_one_leader_per_term(history),
        check_scheduler_invariants(history),
        check_liveness(history, recovery_bound_s=recovery_bound_s, deadline_s=deadline_s, slack_s=slack_s),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m chaos.checks HISTORY.jsonl`: check a saved history again; exit 1 on any failure."""
    parser = argparse.ArgumentParser(prog="python -m chaos.checks", description=main.__doc__)
    parser.add_argument("history", help="a history saved with History.dump (JSON lines)")
    parser.add_argument("--step-budget", type=int, default=step_budget_default, help="linearizability search steps")
    args = parser.parse_args(argv)
    history = History.load(args.history)
    meta = history.meta
    results = run_checks(
        history,
        step_budget=args.step_budget,
        recovery_bound_s=float(meta.get("recovery_bound_s", recovery_bound_s_default)),
        deadline_s=float(meta.get("deadline_s", deadline_s_default)),
        slack_s=float(meta.get("deadline_slack_s", deadline_slack_s_default)),
    )
    print(f"{len(history.ops)} operations, {len(history.faults)} faults, {len(history.statuses)} status samples")
    for result in results:
        print(result.report())
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
