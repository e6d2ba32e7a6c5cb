"""Is one pool's history of claims, releases and reads linearizable?

A Wing–Gong–Lowe search: find an order of the operations, each placed at a point between its
invoke and its completion, in which every answer is what a sequential pool would have given.
Configurations (which operations are placed, the pool's state) already explored are memoised,
as in Lowe's refinement, so the search never repeats work.

**The model** is deliberately weaker than the server, so that a correct server can never fail
it, while every double allocation, lost claim or impossible read does:

* The state is the set of claims the pool holds, each `(claim key, CIDR)`.
* A claim of a key already held answers that key's CIDR (claims are idempotent by name). A
  claim of a new key must answer a block of the requested prefix length inside the pool that
  overlaps no held block and no unavailable range (reserved, excluded, child pools). Which free
  block the server picks (first-fit, best-fit) is not modelled.
* `pool_exhausted` is allowed only when no aligned free block of the requested length exists;
  `already_exists` only when the key is held; a release answers ok only for a held key and
  `not_found` only for a key not held; a read or a list must show exactly the held claims.
* Other refusals (`invalid`, `forbidden`, ...) change nothing and constrain nothing: skipped.

**Unknown outcomes** (timeouts, 504) may take effect at any point after their invoke, or never.
An unknown claim's CIDR is not known, so it takes one of the CIDRs that key was ever observed
with (by any answer, read, list, or the final state); if the key was released later it may also
have held a block nobody observed (a "phantom": occupies room, matches no read). Unknown reads
and lists are dropped (they constrain nothing).

**Segments.** The history is cut at quiescent points, moments when no completed operation is
in flight, and each segment is searched on its own. What carries across a cut is the set of
possible states together with the unknown operations not yet placed, so the result is exact,
not an approximation. A step budget bounds the whole search: exceeding it (or the number of
states carried across a cut) gives "inconclusive", never a pass.

**The final state** (what the members hold after the run) is checked as one last list: every
unknown claim must by then have taken effect or not, consistently with it.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from chaos.history import Kind, Op, Outcome

step_budget_default = 2_000_000  # configurations explored, all segments together
carried_states_max = 20_000  # possible states carried across one quiescent cut
evidence_ops_max = 12

_PHANTOM = ""  # the CIDR of a held block nobody observed
# Refusals the model can judge, by kind; any other refusal changed nothing and says nothing.
_JUDGED_REFUSALS = {
    Kind.CLAIM: frozenset({"pool_exhausted", "already_exists"}),
    Kind.RELEASE: frozenset({"not_found"}),
    Kind.READ: frozenset({"not_found"}),
    Kind.LIST: frozenset[str](),
}


# ---- addresses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    version: int
    start: int
    end: int  # inclusive
    prefix_length: int
    bits: int  # 32 or 128

    def overlaps(self, other: Block) -> bool:
        return self.version == other.version and self.start <= other.end and other.start <= self.end

    def within(self, other: Block) -> bool:
        return self.version == other.version and other.start <= self.start and self.end <= other.end


@functools.lru_cache(maxsize=65_536)
def parse_block(cidr: str) -> Block:
    network = ipaddress.ip_network(cidr, strict=True)
    return Block(
        network.version,
        int(network.network_address),
        int(network.broadcast_address),
        network.prefixlen,
        network.max_prefixlen,
    )


@dataclass(frozen=True)
class PoolModel:
    """What the sequential model needs to know about a pool."""

    pool: str
    cidr: str
    unavailable: tuple[tuple[int, int], ...] = ()  # inclusive address ranges never handed out

    @property
    def block(self) -> Block:
        return parse_block(self.cidr)

    def to_json(self) -> dict[str, Any]:
        return {"pool": self.pool, "cidr": self.cidr, "unavailable": [list(item) for item in self.unavailable]}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> PoolModel:
        return cls(
            str(record["pool"]),
            str(record["cidr"]),
            tuple((int(low), int(high)) for low, high in record.get("unavailable", ())),
        )


def pool_model(
    pool: str,
    cidr: str,
    *,
    reserved_leading: int = 0,
    reserved_trailing: int = 0,
    excluded: Iterable[str] = (),
    child_pools: Iterable[str] = (),
) -> PoolModel:
    block = parse_block(cidr)
    ranges: list[tuple[int, int]] = []
    if reserved_leading:
        ranges.append((block.start, block.start + reserved_leading - 1))
    if reserved_trailing:
        ranges.append((block.end - reserved_trailing + 1, block.end))
    for other in (*excluded, *child_pools):
        carved = parse_block(other)
        ranges.append((carved.start, carved.end))
    return PoolModel(pool, cidr, tuple(sorted(ranges)))


def pool_model_from_object(obj: Mapping[str, Any], pool_id: str, child_pool_cidrs: Iterable[str] = ()) -> PoolModel:
    """A PoolModel from an IPPool object as the HTTP API returns it."""
    spec, status = obj["spec"], obj["status"]
    reserved = spec.get("reserved") or {}
    return pool_model(
        pool_id,
        str(status.get("allocatedCIDR") or spec["cidr"]),
        reserved_leading=int(reserved.get("leading", 0)),
        reserved_trailing=int(reserved.get("trailing", 0)),
        excluded=spec.get("excluded") or (),
        child_pools=child_pool_cidrs,
    )


# ---- the sequential model -------------------------------------------------------------------

# A held claim: (claim key, CIDR, prefix length). The CIDR is _PHANTOM for an unobserved block,
# whose prefix length may be unknown (None).
Held = tuple[str, str, int | None]
State = frozenset[Held]


@functools.lru_cache(maxsize=16_384)
def _by_claim(state: State) -> dict[str, Held]:
    return {entry[0]: entry for entry in state}


def _held(state: State, claim: str) -> Held | None:
    return _by_claim(state).get(claim)


@functools.lru_cache(maxsize=16_384)
def _occupied(model: PoolModel, state: State) -> tuple[tuple[int, int], ...]:
    """Held and unavailable ranges, sorted and merged (cached: the search asks about one state
    many times)."""
    ranges = list(model.unavailable)
    for _, cidr, _ in state:
        if cidr != _PHANTOM:
            block = parse_block(cidr)
            ranges.append((block.start, block.end))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for low, high in ranges:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


@functools.lru_cache(maxsize=16_384)
def _occupied_starts(model: PoolModel, state: State) -> list[int]:
    return [low for low, _ in _occupied(model, state)]


def _fits(model: PoolModel, state: State, cidr: str) -> bool:
    """Inside the pool, and overlapping nothing held or unavailable."""
    block = parse_block(cidr)
    if not block.within(model.block):
        return False
    ranges = _occupied(model, state)
    before = bisect.bisect_right(_occupied_starts(model, state), block.end) - 1  # last range starting in reach
    return before < 0 or ranges[before][1] < block.start


def _free_aligned_blocks(model: PoolModel, state: State, prefix_length: int, enough: int) -> int:
    """How many aligned free blocks of this length the pool has (counting stops at `enough`)."""
    pool = model.block
    if prefix_length < pool.prefix_length or prefix_length > pool.bits:
        return 0
    size = 1 << (pool.bits - prefix_length)
    count = 0
    cursor = pool.start
    for low, high in [*_occupied(model, state), (pool.end + 1, pool.end + 1)]:
        gap_end = min(low - 1, pool.end)
        if gap_end >= cursor:
            first = -(-cursor // size) * size  # the first aligned start at or after the cursor
            if first + size - 1 <= gap_end:
                count += (gap_end - first + 1) // size
                if count >= enough:
                    return enough
        cursor = max(cursor, high + 1)
    return count


@functools.lru_cache(maxsize=16_384)
def _exhaustion_possible(model: PoolModel, state: State, prefix_length: int) -> bool:
    """Could a pool in this state have no free block of this length?

    Phantom blocks (held, position unknown) could each sit in a free block: a phantom as large
    as the wanted block or larger covers 2^(difference) of them, a smaller one spoils one."""
    cover = 0
    for _, cidr, length in state:
        if cidr == _PHANTOM:
            if length is None:
                return True
            cover += 1 << (prefix_length - length) if length <= prefix_length else 1
    return _free_aligned_blocks(model, state, prefix_length, cover + 1) <= cover


@dataclass(frozen=True)
class _Step:
    """An operation as the search uses it."""

    op: Op
    invoke: int
    complete: int | None  # None: unknown outcome, may take effect at any time after invoke
    kind: Kind
    outcome: Outcome
    claim: str | None
    cidr: str | None  # ok claim / read: the CIDR answered
    code: str | None
    prefix_length: int | None
    requested: str | None  # a claim for a specific CIDR
    listed: frozenset[tuple[str, str]] | None  # an ok list: what it showed
    candidates: tuple[Held, ...] = ()  # an unknown claim: what it may have taken


def _successors(model: PoolModel, state: State, step: _Step) -> list[State]:
    """The states after placing `step` now ([] if its answer is impossible here)."""
    held = _held(state, step.claim) if step.claim is not None else None
    if step.kind is Kind.LIST:
        if any(entry[1] == _PHANTOM for entry in state):
            return []
        shown = frozenset((claim, cidr) for claim, cidr, _ in state)
        return [state] if shown == step.listed else []
    if step.kind is Kind.READ:
        if step.outcome is Outcome.OK:
            return [state] if held is not None and held[1] == step.cidr else []
        return [state] if held is None else []  # not_found
    if step.kind is Kind.RELEASE:
        if step.outcome is Outcome.FAIL:
            return [state] if held is None else []  # not_found
        return [state - {held}] if held is not None else []  # ok, or unknown taking effect
    # a claim
    if step.outcome is Outcome.UNKNOWN:
        if held is not None:
            return []  # an idempotent repeat changes nothing: the same as not taking effect
        return [state | {candidate} for candidate in step.candidates if _candidate_fits(model, state, candidate)]
    if step.outcome is Outcome.OK:
        answered = step.cidr
        if answered is None:
            return []
        if held is not None:  # the same spec again answers the claim that exists
            if held[1] == answered:
                return [state]
            if held[1] == _PHANTOM and _fits(model, state, answered):
                return [(state - {held}) | {(held[0], answered, parse_block(answered).prefix_length)}]
            return []
        if step.requested is not None and parse_block(step.requested) != parse_block(answered):
            return []
        block = parse_block(answered)
        if step.prefix_length is not None and block.prefix_length != step.prefix_length:
            return []
        if not _fits(model, state, answered):
            return []
        return [state | {(step.claim or "", answered, block.prefix_length)}]
    if step.code == "already_exists":
        return [state] if held is not None else []
    # pool_exhausted
    if held is not None:
        return []
    if step.prefix_length is None or _exhaustion_possible(model, state, step.prefix_length):
        return [state]
    return []


def _candidate_fits(model: PoolModel, state: State, candidate: Held) -> bool:
    return candidate[1] == _PHANTOM or _fits(model, state, candidate[1])


# ---- preparing the history --------------------------------------------------------------------


def _requested_length(op: Op) -> int | None:
    value = op.args.get("prefixLength")
    if isinstance(value, int):
        return value
    requested = _requested_cidr(op)
    return parse_block(requested).prefix_length if requested is not None else None


def _requested_cidr(op: Op) -> str | None:
    for name in ("cidr", "address"):
        value = op.args.get(name)
        if isinstance(value, str):
            return str(ipaddress.ip_network(value, strict=False))
    return None


def _listed(op: Op) -> frozenset[tuple[str, str]]:
    claims = op.result.get("claims") or {}
    return frozenset((str(claim), str(cidr)) for claim, cidr in claims.items())


def _observations(ops: Sequence[Op], final_claims: Mapping[str, str] | None) -> dict[str, set[str]]:
    """Every CIDR each claim key was seen with, in any answer or in the final state."""
    seen: dict[str, set[str]] = {}
    for op in ops:
        if op.outcome is not Outcome.OK:
            continue
        if op.kind in (Kind.CLAIM, Kind.READ) and op.claim is not None and op.cidr is not None:
            seen.setdefault(op.claim, set()).add(op.cidr)
        elif op.kind is Kind.LIST:
            for claim, cidr in _listed(op):
                seen.setdefault(claim, set()).add(cidr)
    for claim, cidr in (final_claims or {}).items():
        seen.setdefault(claim, set()).add(cidr)
    return seen


def _prepare(ops: Sequence[Op], final_claims: Mapping[str, str] | None) -> list[_Step]:
    seen = _observations(ops, final_claims)
    released = {op.claim for op in ops if op.kind is Kind.RELEASE and op.outcome is not Outcome.FAIL}
    steps: list[_Step] = []
    for op in ops:
        outcome = Outcome.UNKNOWN if op.outcome is Outcome.PENDING else op.outcome
        if outcome is Outcome.UNKNOWN and op.kind in (Kind.READ, Kind.LIST):
            continue  # a read nobody saw the answer of constrains nothing
        if outcome is Outcome.FAIL and op.code not in _JUDGED_REFUSALS[op.kind]:
            continue
        if op.kind is not Kind.LIST and op.claim is None:
            continue
        candidates: tuple[Held, ...] = ()
        if op.kind is Kind.CLAIM and outcome is Outcome.UNKNOWN:
            candidates = _unknown_claim_candidates(op, seen, released, final_claims)
            if not candidates:
                continue  # it cannot have taken effect in any way consistent with what was seen
        steps.append(
            _Step(
                op=op,
                invoke=op.invoke_ns,
                complete=op.complete_ns if outcome is not Outcome.UNKNOWN else None,
                kind=op.kind,
                outcome=outcome,
                claim=op.claim,
                cidr=op.cidr,
                code=op.code,
                prefix_length=_requested_length(op),
                requested=_requested_cidr(op),
                listed=_listed(op) if op.kind is Kind.LIST else None,
                candidates=candidates,
            )
        )
    steps.sort(key=lambda step: (step.invoke, step.op.op_id))
    return steps


def _unknown_claim_candidates(
    op: Op, seen: Mapping[str, set[str]], released: set[str | None], final_claims: Mapping[str, str] | None
) -> tuple[Held, ...]:
    claim = op.claim or ""
    length = _requested_length(op)
    requested = _requested_cidr(op)
    observed = sorted(seen.get(claim, ()))
    if requested is not None:
        observed = [cidr for cidr in observed if parse_block(cidr) == parse_block(requested)]
    if length is not None:
        observed = [cidr for cidr in observed if parse_block(cidr).prefix_length == length]
    candidates: list[Held] = [(claim, cidr, parse_block(cidr).prefix_length) for cidr in observed]
    # A block nobody observed is possible only if the key was released afterwards (or there is
    # no final state to show what is held).
    if claim in released or final_claims is None:
        candidates.append((claim, _PHANTOM, length))
    return tuple(candidates)


# ---- the search ---------------------------------------------------------------------------------


class Verdict(StrEnum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    INCONCLUSIVE = "inconclusive"


@dataclass
class PoolResult:
    pool: str
    verdict: Verdict
    operations: int
    segments: int
    steps: int
    evidence: list[str] = field(default_factory=list)


def _segments(steps: Sequence[_Step]) -> list[list[_Step]]:
    """Cut where no completed operation is in flight (unknown ones do not hold a cut back)."""
    segments: list[list[_Step]] = []
    current: list[_Step] = []
    horizon = -1  # the latest completion among completed steps of the current segment
    for step in steps:
        if current and step.invoke > horizon and any(s.complete is not None for s in current):
            segments.append(current)
            current = []
            horizon = -1
        current.append(step)
        if step.complete is not None:
            horizon = max(horizon, step.complete)
    if current:
        segments.append(current)
    return segments


@dataclass
class _Budget:
    left: int
    used: int = 0


# A configuration carried across a cut: the state and the unknown steps not yet placed.
Carried = tuple[State, frozenset[int]]  # frozenset of op ids


@dataclass
class _SegmentOutcome:
    ends: set[Carried]
    exhausted: bool
    stuck: list[str]


def _may_need(other: _Step, unknown: _Step, state: State) -> bool:
    """Might `other` need `unknown` to have taken effect just before it?

    When this is False, `unknown` can always be moved after `other` instead (same state, both
    answers still possible), so the search never places it right before `other`. Sound as an
    over-approximation: True when unsure only costs search time."""
    if other.claim is not None and other.claim == unknown.claim:
        return True
    if other.kind is Kind.LIST:
        return True
    if unknown.kind is Kind.CLAIM:
        # A claim only ever helps an exhaustion (occupancy); it never makes room for anything.
        return other.kind is Kind.CLAIM and other.outcome is Outcome.FAIL and other.code == "pool_exhausted"
    if other.kind is not Kind.CLAIM or other.outcome is Outcome.FAIL:
        return False  # a release only ever makes room: reads, releases, refusals never need room
    held = _held(state, unknown.claim or "")
    if held is None or held[1] == _PHANTOM:
        return False  # nothing to free (a phantom occupies no known place)
    freed = parse_block(held[1])
    if other.outcome is Outcome.OK:
        return other.cidr is not None and freed.overlaps(parse_block(other.cidr))
    return any(candidate[1] != _PHANTOM and freed.overlaps(parse_block(candidate[1])) for candidate in other.candidates)


def _list_needs(listing: _Step, unknown: _Step, state: State) -> bool:
    """Must `unknown` take effect for the state to match what `listing` showed?"""
    listed = dict(listing.listed or ())
    held = _held(state, unknown.claim or "")
    wanted = listed.get(unknown.claim or "")
    if unknown.kind is Kind.RELEASE:
        return held is not None and held[1] != wanted  # gone from the list, or listed elsewhere
    return held is None and wanted is not None


def _search_segment(
    model: PoolModel,
    segment: Sequence[_Step],
    starts: set[Carried],
    unknown_by_id: Mapping[int, _Step],
    budget: _Budget,
) -> _SegmentOutcome:
    """All the ends (state, unknown operations still unplaced) of one segment, from `starts`.

    An unknown operation is placed only right before a step it interacts with (`_interacts`):
    any linearization can be rearranged that way, each unknown moved later past the steps it
    commutes with, so nothing is lost, and the search does not branch on every moment an
    unknown operation could have taken effect."""
    carried_ids = sorted({op_id for _, pending in starts for op_id in pending})
    local: list[_Step] = [unknown_by_id[op_id] for op_id in carried_ids] + list(segment)
    carried_count = len(carried_ids)
    index_of = {step.op.op_id: position for position, step in enumerate(local)}
    must = 0
    for position, step in enumerate(local):
        if step.complete is not None:
            must |= 1 << position
    by_complete = sorted(
        (position for position in range(len(local)) if must >> position & 1), key=lambda p: local[p].complete or 0
    )
    all_carried = (1 << carried_count) - 1
    # Stack entries: mask of placed steps, state, and two scan starts that only move forward
    # along a path (the first segment step not placed, in invoke order; the first completed
    # step not placed, in completion order).
    stack: list[tuple[int, State, int, int]] = []
    for state, pending in starts:
        mask = all_carried
        for op_id in pending:
            mask &= ~(1 << index_of[op_id])  # still to place (or never)
        stack.append((mask, state, carried_count, 0))
    # From one start, without unknown operations, and with the writes of each key in an order
    # fixed by real time, every complete placement ends in the same state (writes of different
    # keys commute): the first end found is the only one, so the search may stop there.
    first_end_suffices = (
        len(starts) == 1 and all(step.complete is not None for step in local) and not _same_key_writes_overlap(local)
    )
    visited: set[tuple[int, State]] = set()
    ends: set[Carried] = set()
    deepest = -1
    stuck: list[str] = []
    total = len(local)
    while stack:
        mask, state, first_open, first_due = stack.pop()
        if (mask, state) in visited:
            continue
        visited.add((mask, state))
        budget.used += 1
        if budget.used > budget.left:
            return _SegmentOutcome(ends, True, stuck)
        while first_due < len(by_complete) and mask >> by_complete[first_due] & 1:
            first_due += 1
        if first_due == len(by_complete):
            pending = frozenset(local[position].op.op_id for position in range(total) if not mask >> position & 1)
            ends.add((state, pending))
            if first_end_suffices:
                break
            continue
        while first_open < total and mask >> first_open & 1:
            first_open += 1
        horizon = local[by_complete[first_due]].complete or 0
        eligible = [position for position in range(carried_count) if not mask >> position & 1]
        for position in range(first_open, total):
            if local[position].invoke > horizon:
                break  # in invoke order: nothing later may come first either
            if not mask >> position & 1:
                eligible.append(position)
        list_first: dict[int, int] = {}  # a list step -> the first unknown it needs, in a fixed order
        for position in eligible:
            step = local[position]
            if step.complete is None and not _placeable(position, eligible, local, state, list_first):
                continue
            for successor in _successors(model, state, step):
                stack.append((mask | 1 << position, successor, first_open, first_due))
        placed_here = (mask & must).bit_count()
        if placed_here > deepest:
            deepest = placed_here
            stuck = _describe_stuck(local, mask, must, eligible, state)
    return _SegmentOutcome(ends, False, stuck)


def _placeable(
    position: int, eligible: Sequence[int], local: Sequence[_Step], state: State, list_first: dict[int, int]
) -> bool:
    """May the unknown step at `position` be placed now (some eligible step may need it)?

    When only lists need it, the unknowns a list needs are placed one at a time in a fixed
    order (releases first, then claims): they commute, so one order finds every state, where
    trying every order would visit every subset of them."""
    unknown = local[position]
    needed_by_list = False
    for other in eligible:
        if other == position or not _may_need(local[other], unknown, state):
            continue
        if local[other].kind is not Kind.LIST:
            return True
        if _list_needs(local[other], unknown, state):
            if other not in list_first:
                needed = [
                    candidate
                    for candidate in eligible
                    if local[candidate].complete is None and _list_needs(local[other], local[candidate], state)
                ]
                needed.sort(key=lambda candidate: (local[candidate].kind is Kind.CLAIM, candidate))
                list_first[other] = needed[0]
            needed_by_list |= list_first[other] == position
    return needed_by_list


def _same_key_writes_overlap(steps: Sequence[_Step]) -> bool:
    """Do two claims or releases of one key overlap in time (so their order is open)?"""
    last_complete: dict[str, int] = {}
    for step in sorted(steps, key=lambda item: item.invoke):
        if step.kind not in (Kind.CLAIM, Kind.RELEASE) or step.claim is None:
            continue
        if step.complete is None:
            return True
        previous = last_complete.get(step.claim)
        if previous is not None and step.invoke <= previous:
            return True
        last_complete[step.claim] = max(step.complete, previous or 0)
    return False


def _describe_stuck(local: Sequence[_Step], mask: int, must: int, candidates: Sequence[int], state: State) -> list[str]:
    held = ", ".join(sorted(f"{claim}={cidr or '?'}" for claim, cidr, _ in state)) or "nothing"
    lines = [f"after placing {(mask & must).bit_count()} operations the pool held: {held[:300]}"]
    lines.append("none of these fits next:")
    for position in candidates[:evidence_ops_max]:
        if local[position].complete is not None:
            lines.append("  " + local[position].op.describe())
    return lines


def _undominated(model: PoolModel, ends: set[Carried], unknown_by_id: Mapping[int, _Step]) -> set[Carried]:
    """Drop every end that another end reaches by placing one or two pending unknown operations.

    If (S, P) holds unknown operation u pending and placing u in S gives S', then (S', P - {u})
    is redundant: whatever follows it also follows (S, P) once u is placed first, which is
    always allowed (u was invoked before anything still to come). Two steps catch an unknown
    claim and an unknown release of one key that cancel out. Without this, k unknown operations
    carried across cuts would multiply the states by up to 2^k."""
    dominated: set[Carried] = set()
    for state, pending in ends:
        for op_id in pending:
            rest = pending - {op_id}
            for successor in _successors(model, state, unknown_by_id[op_id]):
                dominated.add((successor, rest))
                for second_id in rest:
                    for second in _successors(model, successor, unknown_by_id[second_id]):
                        dominated.add((second, rest - {second_id}))
    return ends - dominated if dominated else ends


@dataclass(frozen=True)
class _Writes:
    """When each key is claimed and released (by steps that may have taken effect)."""

    claims: dict[str, list[int]]  # key -> invoke times
    releases: dict[str, list[int]]

    @classmethod
    def of(cls, steps: Sequence[_Step]) -> _Writes:
        claims: dict[str, list[int]] = {}
        releases: dict[str, list[int]] = {}
        for step in steps:
            if step.claim is None or step.outcome is Outcome.FAIL:
                continue
            if step.kind is Kind.CLAIM:
                claims.setdefault(step.claim, []).append(step.invoke)
            elif step.kind is Kind.RELEASE:
                releases.setdefault(step.claim, []).append(step.invoke)
        return cls(claims, releases)

    def after(self, table: Mapping[str, list[int]], claim: str, moment: int) -> bool:
        return any(invoke > moment for invoke in table.get(claim, ()))


def _without_inert(
    ends: set[Carried],
    unknown_by_id: Mapping[int, _Step],
    writes: _Writes,
    moment: int,
    final_claims: Mapping[str, str] | None,
) -> set[Carried]:
    """Forget pending unknown operations that can never take effect any more.

    After `moment` (the last invoke of the segment just searched): a release of a key not held,
    that nothing pending or later can claim again; a claim of a key held, that nothing pending
    or later can release; a claim of a key missing from the final state, that nothing pending
    or later can release (it would still be held at the end)."""
    kept: set[Carried] = set()
    for state, pending in ends:
        pending_claims = {unknown_by_id[op_id].claim for op_id in pending if unknown_by_id[op_id].kind is Kind.CLAIM}
        pending_releases = {
            unknown_by_id[op_id].claim for op_id in pending if unknown_by_id[op_id].kind is Kind.RELEASE
        }
        live: set[int] = set()
        for op_id in pending:
            step = unknown_by_id[op_id]
            claim = step.claim or ""
            held = _held(state, claim) is not None
            if step.kind is Kind.RELEASE:
                if held or claim in pending_claims or writes.after(writes.claims, claim, moment):
                    live.add(op_id)
                continue
            releasable = claim in pending_releases or writes.after(writes.releases, claim, moment)
            if held and not releasable:
                continue
            if final_claims is not None and claim not in final_claims and not releasable:
                continue
            live.add(op_id)
        kept.add((state, frozenset(live)))
    return kept


def check_pool(
    model: PoolModel,
    ops: Sequence[Op],
    final_claims: Mapping[str, str] | None = None,
    *,
    step_budget: int = step_budget_default,
    carried_max: int = carried_states_max,
) -> PoolResult:
    """Search for a linearization of one pool's operations (and its final state, if given)."""
    steps = _prepare([op for op in ops if op.pool == model.pool], final_claims)
    segments = _segments(steps)
    if final_claims is not None:
        end = max((step.complete or step.invoke for step in steps), default=0) + 1
        final_op = Op(
            op_id=-1,
            process="final-state",
            kind=Kind.LIST,
            pool=model.pool,
            claim=None,
            args={},
            key=None,
            invoke_ns=end,
            complete_ns=end + 1,
            outcome=Outcome.OK,
            result={"claims": dict(final_claims)},
        )
        segments.append(
            [_Step(final_op, end, end + 1, Kind.LIST, Outcome.OK, None, None, None, None, None, _listed(final_op))]
        )
    unknown_by_id = {step.op.op_id: step for step in steps if step.complete is None}
    writes = _Writes.of(steps)
    budget = _Budget(step_budget)
    frontier: set[Carried] = {(frozenset(), frozenset())}
    result = PoolResult(model.pool, Verdict.LINEARIZABLE, len(steps), len(segments), 0)
    for segment in segments:
        outcome = _search_segment(model, segment, frontier, unknown_by_id, budget)
        result.steps = budget.used
        first = segment[0].invoke
        last = max(step.complete or step.invoke for step in segment)
        where = f"the {len(segment)} operation(s) between {first / 1e9:.3f}s and {last / 1e9:.3f}s"
        if outcome.exhausted:
            result.verdict = Verdict.INCONCLUSIVE
            result.evidence.append(f"pool {model.pool}: step budget of {step_budget} spent in {where}")
            return result
        if not outcome.ends:
            result.verdict = Verdict.NOT_LINEARIZABLE
            result.evidence.append(f"pool {model.pool}: no linearization of {where}")
            result.evidence.extend(outcome.stuck)
            return result
        moment = max(step.invoke for step in segment)
        outcome.ends = _without_inert(outcome.ends, unknown_by_id, writes, moment, final_claims)
        outcome.ends = _undominated(model, outcome.ends, unknown_by_id)
        if len(outcome.ends) > carried_max:
            result.verdict = Verdict.INCONCLUSIVE
            result.evidence.append(
                f"pool {model.pool}: {len(outcome.ends)} possible states after {where} (limit {carried_max})"
            )
            return result
        frontier = outcome.ends
    return result
