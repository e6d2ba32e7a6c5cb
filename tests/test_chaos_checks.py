"""The chaos checks (chaos/checks.py, chaos/linearizability.py) on hand-built histories.

Each check gets histories that must pass and histories with the fault it exists to find
planted in them (a duplicate, a lost acknowledged write, a resurrected release, an unknown
operation applied twice, a non-linearizable answer, two leaders in a term, digests that
differ, a node over capacity, a tenant over quota, a pod address outside its node or shared, a
lost or moved or resurrected pod, a stall after the last heal), which it must flag. A Hypothesis property generates
linearizable histories from a sequential execution of a pool with jittered intervals and
unknown outcomes: they must always pass.

Times in these tests are milliseconds (`ms`), turned into the nanoseconds histories hold.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from chaos.checks import (
    EXIT_INVARIANT,
    CheckResult,
    check_acknowledged_claims,
    check_applied_at_most_once,
    check_linearizable,
    check_liveness,
    check_no_double_allocation,
    check_one_leader_per_term,
    check_replicas_agree,
    check_scheduler_invariants,
    run_checks,
)
from chaos.history import (
    AllocationState,
    ClaimState,
    FaultRecord,
    History,
    Kind,
    MemberState,
    NodeState,
    Op,
    Outcome,
    PodState,
    QuotaState,
    StatusSample,
    pod_key,
    pods_pool,
)
from chaos.linearizability import PoolModel, Verdict, check_pool, pool_model
from chaos.runner import builds_seen
from node import raft

MS = 1_000_000
POOL = "p"
POOL_CIDR = "10.0.0.0/29"
MODEL = pool_model(POOL, POOL_CIDR)


def key(name: str) -> str:
    return f"acme/web/default/{name}"


@dataclass
class Builder:
    """Operations by hand: times in ms, claim names short, answers as the client saw them."""

    ops: list[Op] = field(default_factory=list)

    def add(
        self,
        kind: Kind,
        name: str | None,
        invoke_ms: float,
        complete_ms: float | None,
        outcome: Outcome,
        *,
        cidr: str | None = None,
        code: str | None = None,
        prefix: int | None = 32,
        pool: str = POOL,
        idem: str | None = None,
        listed: dict[str, str] | None = None,
        process: str = "w0",
        deadline_s: float | None = None,
        uid: str | None = None,
    ) -> Op:
        result: dict[str, Any] = {}
        if cidr is not None:
            result["cidr"] = cidr
        if uid is not None:
            result["uid"] = uid
        if listed is not None:
            result["claims"] = {key(claim): value for claim, value in listed.items()}
        op = Op(
            op_id=len(self.ops),
            process=process,
            kind=kind,
            pool=pool,
            claim=key(name) if name is not None else None,
            args={"prefixLength": prefix} if kind is Kind.CLAIM and prefix is not None else {},
            key=idem if idem is not None else f"k{len(self.ops)}",
            invoke_ns=int(invoke_ms * MS),
            complete_ns=int(complete_ms * MS) if complete_ms is not None else None,
            outcome=outcome,
            result=result,
            code=code,
            deadline_ns=int(deadline_s * 1e9) if deadline_s is not None else None,
        )
        self.ops.append(op)
        return op

    def claim(self, name: str, start: float, end: float | None, cidr: str | None = None, **kw: Any) -> Op:
        outcome = kw.pop("outcome", Outcome.OK if cidr is not None else Outcome.UNKNOWN)
        return self.add(Kind.CLAIM, name, start, end, outcome, cidr=cidr, **kw)

    def release(self, name: str, start: float, end: float | None, outcome: Outcome = Outcome.OK, **kw: Any) -> Op:
        return self.add(Kind.RELEASE, name, start, end, outcome, **kw)

    def history(self, final: Sequence[MemberState] = (), **kw: Any) -> History:
        return History(ops=list(self.ops), final=list(final), **kw)


def member_state(
    member: str,
    claims: dict[str, str],
    *,
    pool: str = POOL,
    applied: int = 10,
    digest: str = "d" * 64,
    uids: dict[str, str] | None = None,
    extra_allocations: Sequence[AllocationState] = (),
    spaces: dict[str, str] | None = None,
    problems: tuple[str, ...] | None = (),
) -> MemberState:
    claim_states = tuple(ClaimState(key(name), pool, cidr, (uids or {}).get(name, "")) for name, cidr in claims.items())
    allocations = tuple(AllocationState(key(name), pool, cidr, key(name), "Bound") for name, cidr in claims.items())
    return MemberState(
        member=member,
        applied_index=applied,
        digest_index=applied,
        digest=digest,
        claims=claim_states,
        allocations=allocations + tuple(extra_allocations),
        address_spaces=spaces or {pool: "default"},
        invariant_problems=problems,
    )


def everywhere(claims: dict[str, str], **kw: Any) -> list[MemberState]:
    return [member_state(member, claims, **kw) for member in ("m1", "m2", "m3")]


def assert_pass(result: CheckResult) -> None:
    assert result.passed, result.report()


def assert_fail(result: CheckResult, *fragments: str) -> None:
    assert not result.passed and not result.inconclusive, result.report()
    text = "\n".join(result.evidence)
    for fragment in fragments:
        assert fragment in text, result.report()


# ---- 1. no address held by two claims at once --------------------------------------------------


def test_double_allocation_passes_reuse_after_release() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 2, 3, "10.0.0.1/32")
    b.release("a", 4, 5)
    b.claim("c", 4.5, 6, "10.0.0.0/32")  # concurrent with a's release: may follow it
    assert_pass(check_no_double_allocation(b.history(everywhere({"b": "10.0.0.1/32", "c": "10.0.0.0/32"}))))


def test_double_allocation_flags_two_claims_holding_one_address() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 2, 3, "10.0.0.0/32")  # planted duplicate: a was never released
    assert_fail(check_no_double_allocation(b.history()), "held at once", key("a"), key("b"))


def test_double_allocation_flags_a_claim_acknowledged_before_the_release_began() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("c", 2, 3, "10.0.0.0/32")
    b.release("a", 4, 5)  # too late: c was acknowledged while a still held the address
    assert_fail(check_no_double_allocation(b.history()), "held at once")


def test_double_allocation_flags_overlapping_blocks_of_different_sizes() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/30", prefix=30)
    b.claim("b", 2, 3, "10.0.0.2/32")
    assert_fail(check_no_double_allocation(b.history()), "10.0.0.0/30", "10.0.0.2/32")


def test_double_allocation_flags_overlap_in_a_final_state() -> None:
    final = member_state(
        "m2",
        {"a": "10.0.0.0/30"},
        extra_allocations=[AllocationState(key("x"), POOL, "10.0.0.2/31", key("x"), "Bound")],
    )
    assert_fail(check_no_double_allocation(History(final=[final])), "m2: allocations 10.0.0.0/30")


def test_double_allocation_allows_the_same_block_in_two_address_spaces() -> None:
    final = member_state(
        "m1",
        {"a": "10.0.0.0/30"},
        extra_allocations=[AllocationState(key("x"), "q", "10.0.0.0/30", key("x"), "Bound")],
        spaces={POOL: "default", "q": "vrf-blue"},
    )
    assert_pass(check_no_double_allocation(History(final=[final])))


# ---- 2. acknowledged claims present, released ones gone ------------------------------------------


def test_acknowledged_passes_when_everything_is_where_it_should_be() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32", uid="u-a")
    b.claim("b", 0, 2, "10.0.0.1/32", uid="u-b")
    b.release("b", 3, 4)
    final = everywhere({"a": "10.0.0.0/32"}, uids={"a": "u-a"})
    assert_pass(check_acknowledged_claims(b.history(final)))


def test_acknowledged_flags_a_lost_write() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 0, 2, "10.0.0.1/32")
    final = [*everywhere({"a": "10.0.0.0/32", "b": "10.0.0.1/32"})[:2], member_state("m3", {"a": "10.0.0.0/32"})]
    assert_fail(check_acknowledged_claims(b.history(final)), "m3: lost acknowledged claim", key("b"))


def test_acknowledged_flags_a_changed_allocation() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32", uid="u-a")
    assert_fail(check_acknowledged_claims(b.history(everywhere({"a": "10.0.0.4/32"}))), "acknowledged")
    assert_fail(
        check_acknowledged_claims(b.history(everywhere({"a": "10.0.0.0/32"}, uids={"a": "u-other"}))), "uid u-a"
    )


def test_acknowledged_flags_a_resurrected_release() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.release("a", 2, 3)
    assert_fail(check_acknowledged_claims(b.history(everywhere({"a": "10.0.0.0/32"}))), "released claim is back")


def test_acknowledged_allows_what_unknown_operations_may_have_done() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.release("a", 2, 30, Outcome.UNKNOWN, code="timeout")  # may or may not have released a
    b.claim("b", 0, 1, "10.0.0.1/32")
    b.release("b", 2, 3)
    b.claim("b", 1, 9, outcome=Outcome.UNKNOWN, code="timeout")  # may have re-created b after the release
    for held in ({}, {"a": "10.0.0.0/32"}, {"a": "10.0.0.0/32", "b": "10.0.0.1/32"}):
        assert_pass(check_acknowledged_claims(b.history(everywhere(held))))


def test_acknowledged_without_a_final_state_is_inconclusive() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    result = check_acknowledged_claims(b.history())
    assert result.inconclusive and not result.passed


# ---- 3. unknown outcomes applied at most once ----------------------------------------------------


def test_at_most_once_passes_an_unknown_claim_present_once() -> None:
    b = Builder()
    b.claim("a", 0, 10, outcome=Outcome.UNKNOWN, code="timeout", idem="ka")
    b.claim("a", 11, 12, "10.0.0.0/32", idem="ka")  # the retry with the same key
    assert_pass(check_applied_at_most_once(b.history(everywhere({"a": "10.0.0.0/32"}))))


def test_at_most_once_flags_one_key_answering_two_allocations() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32", idem="ka")
    b.claim("a", 2, 3, "10.0.0.1/32", idem="ka")
    assert_fail(check_applied_at_most_once(b.history(everywhere({"a": "10.0.0.0/32"}))), "key ka answered 2")


def test_at_most_once_flags_an_unknown_claim_applied_twice() -> None:
    b = Builder()
    b.claim("a", 0, 10, outcome=Outcome.UNKNOWN, code="outcome_unknown")
    twice = member_state(
        "m1",
        {"a": "10.0.0.0/32"},
        extra_allocations=[AllocationState(key("a-2"), POOL, "10.0.0.1/32", key("a"), "Bound")],
    )
    assert_fail(check_applied_at_most_once(b.history([twice])), "2 bound allocations", "unknown outcome")
    listed_twice = MemberState(
        "m1",
        5,
        5,
        "d",
        (ClaimState(key("a"), POOL, "10.0.0.0/32", "u1"), ClaimState(key("a"), POOL, "10.0.0.1/32", "u2")),
        (),
        {POOL: "default"},
    )
    assert_fail(check_applied_at_most_once(b.history([listed_twice])), "listed 2 times")


def test_at_most_once_flags_an_orphaned_allocation() -> None:
    orphan = member_state(
        "m1", {}, extra_allocations=[AllocationState(key("gone"), POOL, "10.0.0.3/32", key("gone"), "Bound")]
    )
    assert_fail(check_applied_at_most_once(History(final=[orphan])), "does not exist")


# ---- 4. linearizable per pool ----------------------------------------------------------------


def lin(b: Builder, final: dict[str, str] | None = None, model: PoolModel = MODEL, **kw: Any) -> CheckResult:
    history = b.history(everywhere(final) if final is not None else ())
    return check_linearizable(history, {POOL: model}, **kw)


def test_linearizable_passes_concurrent_claims_and_releases() -> None:
    b = Builder()
    b.claim("a", 0, 10, "10.0.0.1/32")
    b.claim("b", 1, 9, "10.0.0.0/32")  # concurrent: either order
    b.release("a", 11, 12)
    b.add(Kind.READ, "a", 13, 14, Outcome.FAIL, code="not_found")
    b.add(Kind.READ, "b", 13, 15, Outcome.OK, cidr="10.0.0.0/32")
    b.add(Kind.LIST, None, 16, 17, Outcome.OK, listed={"b": "10.0.0.0/32"})
    b.release("b", 18, 19)
    b.release("b", 20, 21, Outcome.FAIL, code="not_found")
    assert_pass(lin(b, {}))


def test_linearizable_flags_a_claim_answering_an_address_already_held() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 2, 3, "10.0.0.0/32")
    assert_fail(lin(b), "no linearization", key("b"))


def test_linearizable_flags_a_list_showing_a_state_that_never_existed() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 2, 3, "10.0.0.1/32")
    b.add(Kind.LIST, None, 4, 5, Outcome.OK, listed={"b": "10.0.0.1/32"})  # a vanished without a release
    assert_fail(lin(b), "no linearization")


def test_linearizable_flags_a_stale_read_after_a_release() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.release("a", 2, 3)
    b.add(Kind.READ, "a", 4, 5, Outcome.OK, cidr="10.0.0.0/32")
    assert_fail(lin(b), "no linearization")


def test_linearizable_flags_exhaustion_with_room_left() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/30", prefix=30)
    b.claim("b", 2, 3, outcome=Outcome.FAIL, code="pool_exhausted", prefix=30)  # 10.0.0.4/30 is free
    assert_fail(lin(b), "no linearization")


def test_linearizable_accepts_exhaustion_of_a_full_pool_and_alignment() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/31", prefix=31)
    b.claim("b", 2, 3, "10.0.0.5/32")
    # 10.0.0.2/31 is free, so a /30 is not: only 10.0.0.4/30 is aligned, and b sits in it.
    b.claim("c", 4, 5, outcome=Outcome.FAIL, code="pool_exhausted", prefix=30)
    b.claim("d", 6, 7, outcome=Outcome.FAIL, code="pool_exhausted", prefix=29)
    assert_pass(lin(b))
    b.claim("e", 8, 9, outcome=Outcome.FAIL, code="pool_exhausted", prefix=31)  # 10.0.0.2/31 is free
    assert_fail(lin(b), "no linearization")


def test_linearizable_accepts_exhaustion_concurrent_with_a_release() -> None:
    model = pool_model(POOL, "10.0.0.0/31")
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("b", 2, 3, "10.0.0.1/32")
    b.release("a", 4, 10)
    b.claim("c", 5, 6, outcome=Outcome.FAIL, code="pool_exhausted")  # before the release took effect
    b.claim("d", 11, 12, "10.0.0.0/32")
    assert_pass(lin(b, model=model))


def test_linearizable_respects_reserved_addresses() -> None:
    model = pool_model(POOL, POOL_CIDR, reserved_leading=1, reserved_trailing=1)
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    assert_fail(lin(b, model=model), "no linearization")


def test_linearizable_lets_an_unknown_claim_take_effect_late() -> None:
    b = Builder()
    b.claim("u", 0, 5, outcome=Outcome.UNKNOWN, code="timeout")
    b.add(Kind.LIST, None, 6, 7, Outcome.OK, listed={})  # not yet applied
    b.claim("a", 8, 9, "10.0.0.1/32")
    assert_pass(lin(b, {"u": "10.0.0.0/32", "a": "10.0.0.1/32"}))  # ... but applied by the end
    assert_pass(lin(b, {"a": "10.0.0.1/32"}))  # or never


def test_linearizable_flags_an_unknown_claim_that_took_a_held_address() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("u", 2, 5, outcome=Outcome.UNKNOWN, code="timeout")
    assert_fail(lin(b, {"a": "10.0.0.0/32", "u": "10.0.0.0/32"}), "no linearization")


def test_linearizable_flags_a_release_of_something_never_claimed() -> None:
    b = Builder()
    b.release("ghost", 0, 1)
    assert_fail(lin(b), "no linearization")


def test_linearizable_counts_an_unobserved_unknown_claim_as_occupying_room() -> None:
    model = pool_model(POOL, "10.0.0.0/31")
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.claim("u", 2, 3, outcome=Outcome.UNKNOWN, code="timeout")  # took 10.0.0.1, never observed
    b.claim("c", 4, 5, outcome=Outcome.FAIL, code="pool_exhausted")
    b.release("u", 6, 7)  # proves u took effect
    assert_pass(lin(b, {"a": "10.0.0.0/32"}, model=model))
    b.ops[1] = Op(**{**b.ops[1].__dict__, "kind": Kind.READ, "outcome": Outcome.FAIL, "code": "not_found"})
    assert_fail(lin(b, {"a": "10.0.0.0/32"}, model=model), "no linearization")  # then nothing filled the pool


def test_linearizable_with_a_tiny_budget_is_inconclusive_not_pass() -> None:
    b = Builder()
    for number in range(6):
        b.claim(f"c{number}", 0, 10, f"10.0.0.{number}/32")
    result = lin(b, step_budget=3)
    assert result.inconclusive and not result.passed, result.report()
    assert "budget" in result.report()


def test_linearizable_without_a_pool_model_is_inconclusive() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    result = check_linearizable(b.history(), {})
    assert result.inconclusive and not result.passed


def test_linearizable_cuts_long_histories_into_segments() -> None:
    b = Builder()
    for number in range(300):  # sequential: every gap between operations is a quiescent point
        name = f"c{number}"
        b.claim(name, 10 * number, 10 * number + 2, f"10.0.0.{number % 8}/32")
        b.release(name, 10 * number + 3, 10 * number + 5)
    result = check_pool(MODEL, b.ops, {})
    assert result.verdict is Verdict.LINEARIZABLE
    assert result.segments >= 600


# ---- 5. replicas agree --------------------------------------------------------------------------


def sample(
    member: str,
    at: int,
    *,
    index: int = 5,
    digest: str = "aaa",
    term: int = 1,
    role: str = "follower",
    leader: str | None = "m1",
) -> StatusSample:
    return StatusSample(at * MS, member, role, term, leader, index, index, index, digest)


def test_replicas_agree_passes_equal_digests() -> None:
    history = History(
        statuses=[sample("m1", 0), sample("m2", 1), sample("m3", 2, index=6, digest="bbb")],
        final=everywhere({}),
    )
    assert_pass(check_replicas_agree(history))


def test_replicas_agree_flags_two_digests_at_one_index() -> None:
    history = History(statuses=[sample("m1", 0), sample("m2", 1, digest="zzz")], final=everywhere({}))
    assert_fail(check_replicas_agree(history), "applied index 5: 2 digests")


def test_replicas_agree_flags_a_final_divergence_and_broken_invariants() -> None:
    final = [member_state("m1", {}), member_state("m2", {}), member_state("m3", {}, digest="e" * 64)]
    assert_fail(check_replicas_agree(History(final=final)), "different applied index/digest")
    final = [member_state("m1", {}), member_state("m2", {}, problems=("pool p: capacity says 3, allocations 2",))]
    assert_fail(check_replicas_agree(History(final=final)), "check_invariants")


def test_replicas_agree_flags_a_member_that_stopped_itself() -> None:
    assert raft.EXIT_INVARIANT == EXIT_INVARIANT  # the checks keep their own copy of the server's code
    final = [member_state("m1", {}), dataclasses.replace(member_state("m2", {}), unexpected_exits=(EXIT_INVARIANT,))]
    assert_fail(check_replicas_agree(History(final=final)), "m2: a process of it exited by itself with code 70")


# ---- 6. one leader per term ------------------------------------------------------------------


def test_one_leader_per_term_passes_successive_leaders() -> None:
    statuses = [
        sample("m1", 0, role="leader", leader="m1"),
        sample("m2", 1, leader="m1"),
        sample("m2", 2, term=2, role="leader", leader="m2"),
        sample("m3", 3, term=2, leader="m2"),
        sample("m1", 4, term=3, role="candidate", leader=None),
    ]
    assert_pass(check_one_leader_per_term(History(statuses=statuses)))


def test_one_leader_per_term_flags_two_leaders() -> None:
    statuses = [
        sample("m1", 0, term=4, role="leader", leader="m1"),
        sample("m2", 1, term=4, role="leader", leader="m2"),
    ]
    assert_fail(check_one_leader_per_term(History(statuses=statuses)), "term 4 had 2 leaders")
    statuses = [sample("m3", 0, term=7, leader="m1"), sample("m2", 1, term=7, leader="m2")]  # as followers saw it
    assert_fail(check_one_leader_per_term(History(statuses=statuses)), "term 7 had 2 leaders")


def test_one_leader_per_term_without_samples_is_inconclusive() -> None:
    result = check_one_leader_per_term(History())
    assert result.inconclusive and not result.passed


# ---- 7. scheduler invariants ----------------------------------------------------------------------

MIB = 1 << 20
WEB = ("acme", "web")
API = ("acme", "api")
NODE_CIDRS = {"n1": "10.244.1.0/24", "n2": "10.244.2.0/24"}
QUOTA_LIMITS: dict[str, dict[str, Any]] = {
    "acme/web": {"cpuMillis": 2000, "pods": 3},
    "acme": {"pods": 5, "memoryBytes": 1024 * MIB},
}


def pod(
    name: str,
    node: str | None = None,
    ip: str | None = None,
    *,
    cpu: int = 400,
    memory: int = 64 * MIB,
    tenant: tuple[str, str] = WEB,
) -> PodState:
    return PodState(
        pod_key(*tenant, "default", name), f"uid-{name}", "Bound" if node else "Pending", node, ip, cpu, memory
    )


# a and b bound for acme/web, c pending (too big for any node), d bound for acme/api.
CLEAN_PODS = (
    pod("a", "n1", "10.244.1.1"),
    pod("b", "n2", "10.244.2.1"),
    pod("c", cpu=5000),
    pod("d", "n1", "10.244.1.2", cpu=300, tenant=API),
)


def node(
    name: str, pods: Sequence[PodState], *, cpu: int = 1000, memory: int = 1024 * MIB, max_pods: int = 3
) -> NodeState:
    """A node whose record counts exactly the pods bound to it."""
    mine = [item for item in pods if item.phase == "Bound" and item.node == name]
    return NodeState(
        name,
        cpu,
        memory,
        max_pods,
        sum(item.cpu_millis for item in mine),
        sum(item.memory_bytes for item in mine),
        len(mine),
        True,
        "Registered",
        False,
        NODE_CIDRS[name],
    )


def quota(scope: str, limits: dict[str, Any], pods: Sequence[PodState]) -> QuotaState:
    """A quota whose usage is exactly what its tenant's pods use."""
    org, _, project = scope.partition("/")
    mine = [item for item in pods if item.key.startswith(scope + "/")]
    bound = [item for item in mine if item.phase == "Bound"]
    used = {
        "cpuMillis": sum(item.cpu_millis for item in bound),
        "memoryBytes": sum(item.memory_bytes for item in bound),
        "pods": len(bound),
        "services": 0,
        "pendingPods": sum(item.phase == "Pending" for item in mine),
        "addressesByClass": {},
        "addressesByPool": {},
    }
    return QuotaState(scope, org, project, dict(limits), used)


def scheduled(
    pods: Sequence[PodState] = CLEAN_PODS,
    *,
    limits: dict[str, dict[str, Any]] | None = None,
    members: Sequence[str] = ("m1", "m2", "m3"),
    **node_kw: Any,
) -> list[MemberState]:
    """The same consistent scheduler state on every member (nodes and quotas follow the pods)."""
    nodes = tuple(node(name, pods, **node_kw) for name in NODE_CIDRS)
    quotas = tuple(quota(scope, spec, pods) for scope, spec in (QUOTA_LIMITS if limits is None else limits).items())
    base = member_state("m", {})
    return [
        dataclasses.replace(base, member=member, nodes=nodes, pods=tuple(pods), quotas=quotas, scheduler_observed=True)
        for member in members
    ]


def pod_op(
    b: Builder,
    kind: Kind,
    name: str,
    invoke_ms: float,
    complete_ms: float,
    outcome: Outcome = Outcome.OK,
    *,
    node: str | None = None,
    ip: str | None = None,
    tenant: tuple[str, str] = WEB,
    idem: str | None = None,
) -> Op:
    result: dict[str, Any] = {}
    if kind is Kind.POD_CREATE and outcome is Outcome.OK:
        result = {"phase": "Bound" if node else "Pending", "node": node, "podIP": ip}
    op = Op(
        op_id=len(b.ops),
        process="w0",
        kind=kind,
        pool=pods_pool(*tenant),
        claim=pod_key(*tenant, "default", name),
        args={},
        key=idem if idem is not None else f"pk{len(b.ops)}",
        invoke_ns=int(invoke_ms * MS),
        complete_ns=int(complete_ms * MS),
        outcome=outcome,
        result=result,
        code="timeout" if outcome is Outcome.UNKNOWN else None,
    )
    b.ops.append(op)
    return op


def pod_ops() -> Builder:
    """The creates behind CLEAN_PODS, and pod e created and deleted for certain."""
    b = Builder()
    pod_op(b, Kind.POD_CREATE, "a", 0, 1, node="n1", ip="10.244.1.1")
    pod_op(b, Kind.POD_CREATE, "b", 2, 3, node="n2", ip="10.244.2.1")
    pod_op(b, Kind.POD_CREATE, "c", 4, 5)  # Pending
    pod_op(b, Kind.POD_CREATE, "d", 6, 7, node="n1", ip="10.244.1.2", tenant=API)
    pod_op(b, Kind.POD_CREATE, "e", 8, 9, node="n2", ip="10.244.2.2")
    pod_op(b, Kind.POD_DELETE, "e", 10, 11)
    return b


def replaced(pods: Sequence[PodState], name: str, **changes: Any) -> list[PodState]:
    return [dataclasses.replace(item, **changes) if item.key.endswith(f"/{name}") else item for item in pods]


def test_scheduler_passes_a_clean_run() -> None:
    result = check_scheduler_invariants(pod_ops().history(scheduled()))
    assert result.passed and not result.evidence, result.report()


def test_scheduler_allows_what_unknown_and_pending_operations_may_have_done() -> None:
    b = pod_ops()
    pod_op(b, Kind.POD_DELETE, "a", 12, 13, Outcome.UNKNOWN)  # a may be gone
    pod_op(b, Kind.POD_CREATE, "e", 14, 15, Outcome.UNKNOWN)  # e may be back
    pod_op(b, Kind.POD_CREATE, "f", 16, 17, Outcome.UNKNOWN)  # f may exist or not
    pods = [item for item in CLEAN_PODS if not item.key.endswith("/a")]
    pods = replaced(pods, "c", phase="Bound", node="n2", pod_ip="10.244.2.7", cpu_millis=100)  # c bound since
    pods.append(pod("e", "n1", "10.244.1.9"))
    assert_pass(check_scheduler_invariants(b.history(scheduled(pods))))


@pytest.mark.parametrize(
    ("changes", "node_kw", "fragment"),
    [
        ({"cpu_millis": 800}, {}, "node n1 over capacity: its bound pods use cpuMillis 1100 of 1000"),
        ({"memory_bytes": 1000 * MIB}, {}, "node n1 over capacity: its bound pods use memoryBytes"),
        ({}, {"max_pods": 1}, "node n1 over capacity: its bound pods use pods 2 of 1"),
    ],
)
def test_scheduler_flags_a_node_over_capacity(changes: dict[str, Any], node_kw: dict[str, Any], fragment: str) -> None:
    limits: dict[str, dict[str, Any]] = {"acme/web": {}, "acme": {}}  # no quota in the way: only the node is over
    final = scheduled(replaced(CLEAN_PODS, "a", **changes), limits=limits, **node_kw)
    assert_fail(check_scheduler_invariants(pod_ops().history(final)), "m1: " + fragment, "m3: ")


def test_scheduler_flags_a_node_record_that_differs_from_its_pods() -> None:
    final = scheduled()
    n1, n2 = final[1].nodes
    final[1] = dataclasses.replace(final[1], nodes=(dataclasses.replace(n1, allocated_pods=1), n2))
    assert_fail(
        check_scheduler_invariants(pod_ops().history(final)),
        "m2: node n1 reports allocated (cpu, memory, pods) (700, 134217728, 1), its bound pods add up to "
        "(700, 134217728, 2)",
    )


def test_scheduler_flags_a_pod_bound_to_a_node_that_is_not_registered() -> None:
    final = scheduled()
    final[0] = dataclasses.replace(final[0], nodes=final[0].nodes[:1])
    assert_fail(
        check_scheduler_invariants(pod_ops().history(final)),
        "m1: pod acme/web/default/b is Bound to node n2, which is not registered",
    )


@pytest.mark.parametrize(
    ("limits", "fragment"),
    [
        ({"acme/web": {"pods": 1}}, "quota acme/web over its limit: pods 2 used, limit 1"),
        ({"acme": {"cpuMillis": 1000}}, "quota acme over its limit: cpuMillis 1100 used, limit 1000"),
    ],
)
def test_scheduler_flags_a_tenant_over_its_quota(limits: dict[str, dict[str, Any]], fragment: str) -> None:
    assert_fail(check_scheduler_invariants(pod_ops().history(scheduled(limits=limits))), "m1: " + fragment)


def test_scheduler_flags_an_address_quota_passed() -> None:
    final = scheduled()
    web = final[0].quotas[0]
    over = dataclasses.replace(
        web, limits={"addressesByClass": {"gold": 1}}, used={**web.used, "addressesByClass": {"gold": 2}}
    )
    final[0] = dataclasses.replace(final[0], quotas=(over, *final[0].quotas[1:]))
    assert_fail(
        check_scheduler_invariants(pod_ops().history(final)), "m1: quota acme/web over its limit: addressesByClass.gold"
    )


@pytest.mark.parametrize(
    ("resource", "value", "fragment"),
    [
        ("cpuMillis", 700, "quota acme/web reports cpuMillis 700 used, its pods add up to 800"),
        ("pods", 3, "quota acme/web reports pods 3 used, its pods add up to 2"),
        ("pendingPods", 0, "quota acme/web reports pendingPods 0 used, its pods add up to 1"),
    ],
)
def test_scheduler_flags_usage_that_is_not_the_sum_of_the_pods(resource: str, value: int, fragment: str) -> None:
    final = scheduled()
    web = final[2].quotas[0]
    final[2] = dataclasses.replace(
        final[2], quotas=(dataclasses.replace(web, used={**web.used, resource: value}), *final[2].quotas[1:])
    )
    result = check_scheduler_invariants(pod_ops().history(final))
    assert_fail(result, "m3: " + fragment)
    assert not any(line.startswith(("m1", "m2")) for line in result.evidence), result.report()


def test_scheduler_counts_org_usage_over_all_its_projects() -> None:
    final = scheduled()
    org = final[0].quotas[1]
    assert org.scope == "acme" and org.used["pods"] == 3  # a and b of acme/web, d of acme/api
    final[0] = dataclasses.replace(
        final[0], quotas=(final[0].quotas[0], dataclasses.replace(org, used={**org.used, "pods": 2}))
    )
    assert_fail(
        check_scheduler_invariants(pod_ops().history(final)), "m1: quota acme reports pods 2 used, its pods add up to 3"
    )


@pytest.mark.parametrize(
    ("name", "changes", "fragment"),
    [
        (
            "b",
            {"pod_ip": "10.244.1.9"},
            "pod acme/web/default/b has 10.244.1.9, outside node n2's pod CIDR 10.244.2.0/24",
        ),
        ("b", {"pod_ip": "10.244.2.0"}, "pod acme/web/default/b has 10.244.2.0, the address node n2 keeps for itself"),
        ("d", {"pod_ip": "10.244.1.1"}, "pods acme/web/default/a and acme/api/default/d share address 10.244.1.1"),
        ("b", {"pod_ip": None}, "pod acme/web/default/b is Bound to n2 without an address"),
        ("b", {"pod_ip": "10.244.2.1/32"}, "pod acme/web/default/b has '10.244.2.1/32', which is not one address"),
        ("c", {"pod_ip": "10.244.2.9"}, "pod acme/web/default/c is Pending but has node None and address 10.244.2.9"),
        ("c", {"phase": "Running"}, "pod acme/web/default/c has unknown phase 'Running'"),
    ],
)
def test_scheduler_flags_pod_addresses(name: str, changes: dict[str, Any], fragment: str) -> None:
    final = scheduled(replaced(CLEAN_PODS, name, **changes))
    assert_fail(check_scheduler_invariants(pod_ops().history(final)), "m1: " + fragment)
    only_final = check_scheduler_invariants(History(final=final))  # no operations: the final state alone
    assert_fail(only_final, "m1: " + fragment)
    assert all(fragment in line for line in only_final.evidence), only_final.report()


def test_scheduler_flags_a_lost_acknowledged_pod() -> None:
    final = scheduled()
    final[2] = scheduled([item for item in CLEAN_PODS if not item.key.endswith("/a")], members=["m3"])[0]
    result = check_scheduler_invariants(pod_ops().history(final))
    assert_fail(result, "m3: lost acknowledged pod #0 w0 pod_create acme/web/default/a -> ok Bound on n1 10.244.1.1")
    assert len(result.evidence) == 1, result.report()


def test_scheduler_flags_a_lost_acknowledged_pending_pod() -> None:
    final = scheduled([item for item in CLEAN_PODS if not item.key.endswith("/c")])
    assert_fail(check_scheduler_invariants(pod_ops().history(final)), "m1: lost acknowledged pod #2", "ok Pending")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"node": "n2", "pod_ip": "10.244.2.5"}, "pod acme/web/default/a is Bound on n2 10.244.2.5, acknowledged #0"),
        ({"pod_ip": "10.244.1.5"}, "pod acme/web/default/a is Bound on n1 10.244.1.5, acknowledged #0"),
        ({"phase": "Pending", "node": None, "pod_ip": None}, "pod acme/web/default/a is Pending on None None"),
        ({"uid": "uid-other"}, "pod acme/web/default/a has uid uid-other, acknowledged with uid uid-a"),
    ],
)
def test_scheduler_flags_an_acknowledged_pod_that_moved(changes: dict[str, Any], fragment: str) -> None:
    b = pod_ops()
    if "uid" in changes:
        b.ops[0] = dataclasses.replace(b.ops[0], result={**b.ops[0].result, "uid": "uid-a"})
    final = scheduled(replaced(CLEAN_PODS, "a", **changes))
    assert_fail(check_scheduler_invariants(b.history(final)), "m1: " + fragment)


def test_scheduler_flags_a_deleted_pod_that_comes_back() -> None:
    final = scheduled([*CLEAN_PODS, pod("e", "n2", "10.244.2.2")])
    assert_fail(
        check_scheduler_invariants(pod_ops().history(final)),
        "m1: deleted pod is back (Bound on n2): #5 w0 pod_delete acme/web/default/e -> ok",
    )
    b = pod_ops()
    pod_op(b, Kind.POD_CREATE, "e", 9.5, 10.5, Outcome.UNKNOWN)  # invoked before the delete ended
    assert_pass(check_scheduler_invariants(b.history(final)))
    b = pod_ops()
    pod_op(b, Kind.POD_CREATE, "e", 12, 13, Outcome.FAIL)  # refused: re-created nothing
    assert_fail(check_scheduler_invariants(b.history(final)), "deleted pod is back")


def test_scheduler_flags_one_key_answering_two_placements() -> None:
    b = pod_ops()
    pod_op(b, Kind.POD_CREATE, "a", 0.5, 1.5, node="n2", ip="10.244.2.3", idem="pk0")  # a retry of #0
    assert_fail(check_scheduler_invariants(b.history(scheduled())), "idempotency key pk0 answered 2 placements")
    assert_fail(check_scheduler_invariants(b.history()), "idempotency key pk0")  # with no final state too


def test_scheduler_without_pods_passes_saying_so() -> None:
    empty = [dataclasses.replace(state, nodes=()) for state in scheduled([], limits={})]
    for history in (History(), Builder().history(everywhere({})), Builder().history(empty)):
        result = check_scheduler_invariants(history)
        assert result.passed and result.evidence[0].startswith("no pods in this run"), result.report()
    idle_nodes = scheduled([], limits={})
    assert not check_scheduler_invariants(Builder().history(idle_nodes)).evidence  # nodes are something to check
    n1, n2 = idle_nodes[0].nodes
    idle_nodes[0] = dataclasses.replace(idle_nodes[0], nodes=(dataclasses.replace(n1, allocated_cpu_millis=5), n2))
    assert_fail(check_scheduler_invariants(Builder().history(idle_nodes)), "m1: node n1 reports allocated")
    quota_only = scheduled([], limits={"acme": {"pods": 1}})
    assert not check_scheduler_invariants(Builder().history(quota_only)).evidence  # a quota is something to check
    broken = [
        dataclasses.replace(quota_only[0], quotas=(dataclasses.replace(quota_only[0].quotas[0], used={"pods": 2}),))
    ]
    assert_fail(
        check_scheduler_invariants(Builder().history(broken)), "quota acme over its limit: pods 2 used, limit 1"
    )


def test_scheduler_without_scheduler_state_is_inconclusive() -> None:
    for final in ([], everywhere({})):  # no final state; final states read before pods were recorded
        result = check_scheduler_invariants(pod_ops().history(final))
        assert result.inconclusive and not result.passed, result.report()
    final = [*scheduled(members=["m1", "m2"]), member_state("m3", {})]
    result = check_scheduler_invariants(pod_ops().history(final))
    assert result.inconclusive and "read from m3: not checked there" in result.report()
    final[0] = dataclasses.replace(final[0], pods=final[0].pods[1:])
    assert_fail(check_scheduler_invariants(pod_ops().history(final)), "m1: lost acknowledged pod")


def test_ipam_checks_ignore_pod_operations() -> None:
    """Pod a's key is claim a's key; pods sit in `pods:` pools with no pool model."""
    b = pod_ops()
    b.claim("a", 20, 21, "10.0.0.0/32")
    b.add(Kind.LIST, None, 22, 23, Outcome.OK, listed={"a": "10.0.0.0/32"})
    pod_op(b, Kind.POD_DELETE, "a", 24, 25)  # deletes the pod, not the claim
    pod_op(b, Kind.POD_CREATE, "b", 26, 27, Outcome.UNKNOWN)
    ipam = member_state("m", {"a": "10.0.0.0/32"})
    final = [
        dataclasses.replace(state, claims=ipam.claims, allocations=ipam.allocations)
        for state in scheduled([item for item in CLEAN_PODS if not item.key.endswith("/a")])
    ]
    history = b.history(final, meta={"pools": [MODEL.to_json()]})
    assert history.pools() == [POOL] and [op.kind for op in history.ops_of_pool(POOL)] == [Kind.CLAIM, Kind.LIST]
    for result in (
        check_no_double_allocation(history),
        check_acknowledged_claims(history),
        check_applied_at_most_once(history),
        check_linearizable(history),  # pool models from meta: a `pods:` pool is never asked for
        check_scheduler_invariants(history),
    ):
        assert_pass(result)
    # Claim b listed twice: the unknown create of *pod* b says nothing about claim b.
    twice = (*ipam.claims, ClaimState(key("b"), POOL, "10.0.0.1/32", ""), ClaimState(key("b"), POOL, "10.0.0.2/32", ""))
    history.final[0] = dataclasses.replace(history.final[0], claims=twice)
    result = check_applied_at_most_once(history)
    assert_fail(result, "m1: claim acme/web/default/b listed 2 times: 10.0.0.1/32, 10.0.0.2/32")
    assert "unknown outcome" not in "\n".join(result.evidence), result.report()


# ---- 8. liveness ------------------------------------------------------------------------------


def fault(injected_s: float, healed_s: float | None) -> FaultRecord:
    healed = int(healed_s * 1e9) if healed_s is not None else None
    return FaultRecord(1, "kill-leader", ("m1",), int(injected_s * 1e9), healed)


def test_liveness_passes_writes_resuming_after_the_heal() -> None:
    b = Builder()
    b.claim("a", 0, 100, "10.0.0.0/32")
    b.claim("b", 2_000, 7_000, outcome=Outcome.UNKNOWN, code="timeout", deadline_s=5)
    b.claim("c", 9_000, 9_500, "10.0.0.1/32")
    assert_pass(check_liveness(b.history(faults=[fault(1, 8)]), recovery_bound_s=5))


def test_liveness_flags_no_write_after_the_heal() -> None:
    b = Builder()
    b.claim("a", 0, 100, "10.0.0.0/32")
    b.claim("b", 9_000, 9_500, outcome=Outcome.FAIL, code="pool_exhausted")
    assert_fail(check_liveness(b.history(faults=[fault(1, 8)])), "no write was acknowledged after the last heal")


def test_liveness_flags_slow_recovery_hung_calls_and_unhealed_faults() -> None:
    b = Builder()
    b.claim("a", 30_000, 30_100, "10.0.0.0/32")
    assert_fail(check_liveness(b.history(faults=[fault(1, 8)]), recovery_bound_s=15), "22.1 s later")
    b = Builder()
    b.claim("a", 0, 40_000, "10.0.0.0/32", deadline_s=10)
    assert_fail(check_liveness(b.history(), slack_s=2), "allowed 12.0 s")
    b = Builder()
    b.claim("a", 0, None, outcome=Outcome.PENDING)
    b.claim("b", 1, 2, "10.0.0.1/32")
    assert_fail(check_liveness(b.history()), "never completed")
    assert_fail(check_liveness(b.history(faults=[fault(1, None)])), "never healed")


# ---- all checks on generated linearizable histories ------------------------------------------------


@dataclass
class SequentialPool:
    """A straightforward first-fit pool: the reference the generated histories come from."""

    cidr: str
    held: dict[str, str] = field(default_factory=dict)  # claim key -> CIDR

    def claim(self, claim: str, prefix: int) -> tuple[Outcome, str | None, str | None]:
        if claim in self.held:
            same = ipaddress.ip_network(self.held[claim]).prefixlen == prefix
            return (Outcome.OK, self.held[claim], None) if same else (Outcome.FAIL, None, "already_exists")
        taken = [ipaddress.ip_network(cidr) for cidr in self.held.values()]
        for candidate in ipaddress.ip_network(self.cidr).subnets(new_prefix=prefix):
            if not any(candidate.overlaps(other) for other in taken):
                self.held[claim] = str(candidate)
                return Outcome.OK, str(candidate), None
        return Outcome.FAIL, None, "pool_exhausted"

    def release(self, claim: str) -> tuple[Outcome, str | None]:
        if self.held.pop(claim, None) is None:
            return Outcome.FAIL, "not_found"
        return Outcome.OK, None


claim_action = st.tuples(st.just("claim"), st.integers(0, 7), st.sampled_from([32, 31, 30, 30]))
action = st.one_of(
    claim_action,
    claim_action,  # claims twice as often as the rest, so the small pool fills up and runs out
    st.tuples(st.just("release"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("read"), st.integers(0, 7), st.just(0)),
    st.tuples(st.just("list"), st.just(0), st.just(0)),
)


@st.composite
def linearizable_histories(draw: st.DrawFn) -> History:
    """Run a random sequence on SequentialPool; each operation's interval is jittered around its
    moment; some writes end unknown, applied or not; the final state is the pool's at the end."""
    pool = SequentialPool(POOL_CIDR)
    actions = draw(st.lists(action, min_size=8, max_size=60))
    ops: list[Op] = []
    for position, (what, number, prefix) in enumerate(actions):
        moment = 100 * (position + 1)
        invoke = moment - draw(st.integers(0, 250))
        complete = moment + draw(st.integers(0, 250))
        claim = key(f"c{number}")
        unknown = what in ("claim", "release") and draw(st.integers(0, 5)) == 0
        applied = not unknown or draw(st.booleans())
        outcome, cidr, code = Outcome.OK, None, None
        result: dict[str, Any] = {}
        if what == "claim":
            outcome, cidr, code = pool.claim(claim, prefix) if applied else (Outcome.UNKNOWN, None, "timeout")
            result = {"cidr": cidr} if cidr is not None else {}
        elif what == "release":
            outcome, code = pool.release(claim) if applied else (Outcome.UNKNOWN, "timeout")
        elif what == "read":
            cidr = pool.held.get(claim)
            outcome, code = (Outcome.OK, None) if cidr is not None else (Outcome.FAIL, "not_found")
            result = {"cidr": cidr} if cidr is not None else {}
        else:
            result = {"claims": dict(pool.held)}
        if unknown:
            outcome, code, result = Outcome.UNKNOWN, "timeout", {}
        kind = {"claim": Kind.CLAIM, "release": Kind.RELEASE, "read": Kind.READ, "list": Kind.LIST}[what]
        ops.append(
            Op(
                op_id=position,
                process=f"w{draw(st.integers(0, 3))}",
                kind=kind,
                pool=POOL,
                claim=claim if kind is not Kind.LIST else None,
                args={"prefixLength": prefix} if kind is Kind.CLAIM else {},
                key=f"k{position}",
                invoke_ns=invoke * MS,
                complete_ns=complete * MS,
                outcome=outcome,
                result=result,
                code=code,
            )
        )
    final = [
        MemberState(
            member,
            len(ops),
            len(ops),
            "f" * 64,
            tuple(ClaimState(claim, POOL, cidr, "") for claim, cidr in pool.held.items()),
            tuple(AllocationState(claim, POOL, cidr, claim, "Bound") for claim, cidr in pool.held.items()),
            {POOL: "default"},
            (),
        )
        for member in ("m1", "m2", "m3")
    ]
    statuses = [StatusSample(0, member, "follower", 1, "m1", 1, 1, 1, "x") for member in ("m1", "m2", "m3")]
    healed = FaultRecord(1, "pause-leader", ("m1",), 0, 1)
    return History(ops=ops, final=final, statuses=statuses, faults=[healed])


@settings(max_examples=300, deadline=None)
@given(linearizable_histories())
def test_generated_linearizable_histories_pass_every_check(history: History) -> None:
    results = run_checks(history, {POOL: MODEL}, deadline_s=3600)
    liveness_applies = any(op.is_write and op.outcome is Outcome.OK for op in history.ops)
    for result in results:
        if result.name.startswith("writes resume") and not liveness_applies:
            continue
        assert result.passed, result.report() + "\n" + "\n".join(op.describe() for op in history.ops)


def held_to_the_end(history: History) -> list[Op]:
    """Acknowledged claims that no release of their key may have undone (an unknown release
    may take effect at any time after its invoke, even long after it was given up)."""

    def may_undo(release: Op, claim: Op) -> bool:
        if release.kind is not Kind.RELEASE or release.claim != claim.claim or release.outcome is Outcome.FAIL:
            return False
        return release.outcome is Outcome.UNKNOWN or (release.complete_ns or 0) > claim.invoke_ns

    return [
        op
        for op in history.ops
        if op.kind is Kind.CLAIM and op.outcome is Outcome.OK and not any(may_undo(other, op) for other in history.ops)
    ]


@settings(max_examples=150, deadline=None)
@given(linearizable_histories(), st.data())
def test_generated_histories_with_a_planted_duplicate_fail(history: History, data: st.DataObject) -> None:
    """The same histories with one more acknowledged claim of a fresh key, answered with an
    address another claim certainly held at the time: checks 1 and 4 must both flag it."""
    held = held_to_the_end(history)
    assume(held)
    victim = data.draw(st.sampled_from(held))
    assert victim.complete_ns is not None
    duplicate = Op(
        op_id=len(history.ops),
        process="w9",
        kind=Kind.CLAIM,
        pool=POOL,
        claim=key("duplicate"),
        args={"prefixLength": 32},
        key="k-duplicate",
        invoke_ns=victim.complete_ns + 1,
        complete_ns=victim.complete_ns + 2,
        outcome=Outcome.OK,
        result={"cidr": str(next(ipaddress.ip_network(victim.cidr or "").subnets(new_prefix=32)))},
    )
    planted = History(ops=[*history.ops, duplicate], statuses=history.statuses, faults=history.faults)
    assert_fail(check_no_double_allocation(planted), "held at once", key("duplicate"))
    assert_fail(check_linearizable(planted, {POOL: MODEL}), "no linearization")


def test_run_checks_reports_every_check() -> None:
    results = run_checks(History())
    names = [result.name for result in results]
    assert len(names) == len(set(names)) == 8
    assert results[6].name == check_scheduler_invariants(History()).name  # check 7 sits between 6 and 8


@pytest.mark.parametrize("outcome", [Outcome.OK, Outcome.FAIL])
def test_check_results_render_a_verdict(outcome: Outcome) -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    if outcome is Outcome.FAIL:
        b.claim("b", 2, 3, "10.0.0.0/32")
    report = check_no_double_allocation(b.history()).report()
    assert report.startswith("PASS" if outcome is Outcome.OK else "FAIL")


def test_linearizable_lets_unknown_operations_replace_a_claim_before_a_list() -> None:
    b = Builder()
    b.claim("a", 0, 1, "10.0.0.0/32")
    b.release("a", 2, 3, Outcome.UNKNOWN, code="timeout")
    b.claim("a", 4, 5, outcome=Outcome.UNKNOWN, code="timeout")  # may have re-created a elsewhere
    b.claim("x", 6, 7, "10.0.0.0/32")  # so 10.0.0.0 was free again: both unknowns took effect
    b.add(Kind.READ, "a", 8, 9, Outcome.OK, cidr="10.0.0.1/32")
    b.add(Kind.LIST, None, 10, 11, Outcome.OK, listed={"a": "10.0.0.1/32", "x": "10.0.0.0/32"})
    assert_pass(lin(b, {"a": "10.0.0.1/32", "x": "10.0.0.0/32"}))
    b.add(Kind.LIST, None, 12, 13, Outcome.OK, listed={"a": "10.0.0.0/32", "x": "10.0.0.0/32"})
    assert_fail(lin(b), "no linearization")


def test_the_report_says_which_build_each_member_ran() -> None:
    """Status samples carry the member's state machine build, through the saved history too;
    a history saved before the field existed still loads, and says nothing of builds."""
    compiled = [StatusSample(0, member, "follower", 1, "m1", 1, 1, 1, "x", "compiled") for member in ("m1", "m2")]
    restarted = StatusSample(5, "m3", "follower", 1, "m1", 1, 1, 1, "x", "python")
    rebuilt = StatusSample(9, "m3", "follower", 1, "m1", 2, 2, 2, "y", "compiled")
    history = History(statuses=[*compiled, restarted, rebuilt])
    assert builds_seen(history) == "m1 compiled, m2 compiled, m3 compiled and python"
    reloaded = History.from_lines(history.lines())
    assert builds_seen(reloaded) == builds_seen(history)
    older = [line.replace(', "build": "compiled"', "").replace(', "build": "python"', "") for line in history.lines()]
    assert all('"build"' not in line for line in older)
    assert builds_seen(History.from_lines(older)) == "not reported"
