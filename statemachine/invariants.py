"""Whole-state checks and the state digest, for tests, chaos checks and the debug endpoint.

`check_invariants(view)` reads everything and raises `InvariantViolation` listing what is wrong:
* no address is held by two allocations within an address space, and root pools do not overlap;
* every pool's block is tiled exactly by its free and used blocks, no two free buddies are left
  unmerged, and the pool's counters equal what its records add up to;
* every used block belongs to an allocation or child pool that points back at it, and every
  claim has a bound allocation that matches it (and vice versa);
* at most one default class; the class index and the pools' classNames agree;
* the meta record's counters match the event log and the dedup table.

`digest(view)` is a SHA-256 over every key and value in order: replicas that applied the same
commands have the same digest.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Any

from statemachine import buddy, keys, pools
from statemachine.addresses import Block, parse_cidr
from statemachine.buddy import OWNER_RESERVED, UID_BYTES, PoolState
from statemachine.claims import PHASE_BOUND, PHASE_RELEASED
from statemachine.codec import loads
from statemachine.context import Meta, parse_uid
from statemachine.errors import InvariantViolation
from statemachine.view import ReadView, prefix_end

_problems_shown_max = 20


def digest(view: ReadView) -> str:
    hasher = hashlib.sha256()
    for key, value in view.scan(b"", b"\xff" * 64):
        hasher.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
    return hasher.hexdigest()


def _scan(view: ReadView, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return list(view.scan(prefix, prefix_end(prefix)))


def _objects(view: ReadView, prefix: bytes) -> dict[bytes, dict[str, Any]]:
    return {key: loads(raw) for key, raw in _scan(view, prefix)}


def check_invariants(view: ReadView) -> None:
    problems: list[str] = []
    pool_objects = _objects(view, keys.POOL)
    claim_objects = _objects(view, keys.CLAIM)
    alloc_objects = _objects(view, keys.ALLOC)
    _check_pools(view, pool_objects, alloc_objects, problems)
    _check_roots(view, pool_objects, problems)
    _check_claims(pool_objects, claim_objects, alloc_objects, problems)
    _check_no_double_allocation(pool_objects, alloc_objects, problems)
    _check_classes(view, pool_objects, problems)
    _check_meta(view, problems)
    if problems:
        shown = problems[:_problems_shown_max]
        more = len(problems) - len(shown)
        raise InvariantViolation("; ".join(shown) + (f"; and {more} more" if more else ""))


def _check_pools(
    view: ReadView,
    pool_objects: dict[bytes, dict[str, Any]],
    alloc_objects: dict[bytes, dict[str, Any]],
    problems: list[str],
) -> None:
    uids = set()
    for key, pool in pool_objects.items():
        name = pools.pool_id_of_key(key)
        metadata = pool["metadata"]
        if keys.pool_key(metadata["org"], metadata["project"], metadata["name"]) != key:
            problems.append(f"pool {name}: stored under a key that does not match its metadata")
        uid = parse_uid(metadata["uid"])
        uids.add(uid)
        raw_state = view.get(buddy.state_key(uid))
        if raw_state is None:
            problems.append(f"pool {name}: no allocator state")
            continue
        state = PoolState.from_plain(loads(raw_state))
        block = pools.block_of(pool)
        if state.block != block:
            problems.append(f"pool {name}: allocator block {state.block} != allocatedCIDR {block}")
            continue
        _check_tiling(view, name, state, pool_objects, alloc_objects, problems)
    for state_key, _ in _scan(view, b"ps/"):
        if state_key[3:] not in uids:
            problems.append(f"allocator state {state_key[3:].hex()} has no pool")
    for prefix in (b"F", b"U"):
        for record_key, _ in _scan(view, prefix):
            if record_key[1 : 1 + UID_BYTES] not in uids:
                problems.append(f"block record {record_key.hex()} belongs to no pool")
                break


def _check_tiling(
    view: ReadView,
    name: str,
    state: PoolState,
    pool_objects: dict[bytes, dict[str, Any]],
    alloc_objects: dict[bytes, dict[str, Any]],
    problems: list[str],
) -> None:
    pieces: list[tuple[int, int, str]] = []  # (address, length, "free" or "used")
    free_counts = [0] * len(state.free_counts)
    free_set = set()
    for free_key, _ in _scan(view, b"F" + state.uid):
        length, address = buddy.decode_free_key(free_key)
        pieces.append((address, length, "free"))
        free_counts[length - state.length] += 1
        free_set.add((address, length))
    allocated = reserved = allocations = children = 0
    for used, owner in _scan(view, buddy.used_prefix(state.uid)):
        address, length = buddy.decode_used_key(used)
        block = Block(state.family, address, length)
        pieces.append((address, length, "used"))
        if owner == OWNER_RESERVED:
            reserved += block.size
        elif owner.startswith(keys.ALLOC):
            allocations += 1
            allocated += block.size
            allocation = alloc_objects.get(owner)
            if allocation is None or allocation["spec"]["cidr"] != str(block) or allocation["spec"]["pool"] != name:
                problems.append(f"pool {name}: {block} is held by {owner!r}, which does not point back at it")
        elif owner.startswith(keys.POOL):
            children += 1
            allocated += block.size
            child = pool_objects.get(owner)
            if (
                child is None
                or child["status"]["allocatedCIDR"] != str(block)
                or child["status"].get("parentPool") != name
            ):
                problems.append(f"pool {name}: {block} is held by child {owner!r}, which does not point back at it")
        else:
            problems.append(f"pool {name}: {block} has unknown owner {owner!r}")
    pieces.sort()
    expected = state.address
    for address, length, _what in pieces:
        if address != expected:
            word = "overlap" if address < expected else "gap"
            problems.append(f"pool {name}: {word} at {Block(state.family, min(address, expected), state.bits)}")
            break
        expected = address + (1 << (state.bits - length))
    else:
        if expected != state.address + state.block.size:
            problems.append(f"pool {name}: blocks end before the end of {state.block}")
    actual_lowest: dict[int, int] = {}
    for address, length in free_set:
        if address < actual_lowest.get(length, address + 1):
            actual_lowest[length] = address
    if actual_lowest != state.lowest_free:
        problems.append(f"pool {name}: cached lowest free blocks {state.lowest_free} != records {actual_lowest}")
    for address, length in free_set:
        if length > state.length and (address ^ (1 << (state.bits - length)), length) in free_set:
            problems.append(f"pool {name}: free buddies at /{length} were not merged")
            break
    counted = (state.free_counts, state.allocated, state.reserved, state.allocations, state.child_pools)
    actual = (free_counts, allocated, reserved, allocations, children)
    if counted != actual:
        problems.append(f"pool {name}: counters {counted} != records {actual}")


def _check_roots(view: ReadView, pool_objects: dict[bytes, dict[str, Any]], problems: list[str]) -> None:
    roots = {key: pool for key, pool in pool_objects.items() if "parentPool" not in pool["status"]}
    indexed = _scan(view, keys.ROOT)
    if len(indexed) != len(roots):
        problems.append(f"{len(indexed)} root index records for {len(roots)} root pools")
    last_by_space: dict[bytes, int] = {}
    for index_key, pool_key in indexed:  # ordered by (space, family, address)
        pool = roots.get(pool_key)
        if pool is None:
            problems.append(f"root index names {pool_key!r}, which is not a root pool")
            continue
        block = pools.block_of(pool)
        if keys.root_key(pool["status"]["addressSpace"], block) != index_key:
            problems.append(f"root index for {pool_key!r} does not match its block")
        space = keys.root_prefix(pool["status"]["addressSpace"], block.family)
        if space in last_by_space and block.address <= last_by_space[space]:
            problems.append(f"root pool {pools.pool_id_of_key(pool_key)} overlaps another root")
        last_by_space[space] = block.last


def _check_claims(
    pool_objects: dict[bytes, dict[str, Any]],
    claim_objects: dict[bytes, dict[str, Any]],
    alloc_objects: dict[bytes, dict[str, Any]],
    problems: list[str],
) -> None:
    for claim_key, claim in claim_objects.items():
        allocation = alloc_objects.get(keys.ALLOC + claim_key[len(keys.CLAIM) :])
        if allocation is None or allocation["status"]["phase"] != PHASE_BOUND:
            problems.append(f"claim {claim_key!r} has no bound allocation")
        elif allocation["spec"]["cidr"] != claim["status"]["allocatedCIDR"]:
            problems.append(
                f"claim {claim_key!r} says {claim['status']['allocatedCIDR']}, its allocation says otherwise"
            )
    for alloc_key, allocation in alloc_objects.items():
        claimed = keys.CLAIM + alloc_key[len(keys.ALLOC) :] in claim_objects
        phase = allocation["status"]["phase"]
        if (phase == PHASE_BOUND) != claimed or phase not in (PHASE_BOUND, PHASE_RELEASED):
            problems.append(f"allocation {alloc_key!r} is {phase} but its claim {'exists' if claimed else 'does not'}")
        if pools.key_of_pool_id(allocation["spec"]["pool"]) not in pool_objects:
            problems.append(f"allocation {alloc_key!r} names missing pool {allocation['spec']['pool']}")


def _check_no_double_allocation(
    pool_objects: dict[bytes, dict[str, Any]], alloc_objects: dict[bytes, dict[str, Any]], problems: list[str]
) -> None:
    """The promise itself, checked directly: within an address space, allocations are disjoint."""
    by_space: dict[tuple[str, str], list[tuple[int, int, bytes]]] = defaultdict(list)
    for alloc_key, allocation in alloc_objects.items():
        pool = pool_objects.get(pools.key_of_pool_id(allocation["spec"]["pool"]))
        if pool is None:
            continue
        block = parse_cidr(allocation["spec"]["cidr"], "cidr")
        by_space[(pool["status"]["addressSpace"], block.family)].append((block.address, block.last, alloc_key))
    for space, blocks in by_space.items():
        blocks.sort()
        for (_, last, first_key), (address, _, second_key) in itertools.pairwise(blocks):
            if address <= last:
                problems.append(f"{first_key!r} and {second_key!r} overlap in address space {space[0]}")


def _check_classes(view: ReadView, pool_objects: dict[bytes, dict[str, Any]], problems: list[str]) -> None:
    class_objects = _objects(view, keys.CLASS)
    defaults = [obj["metadata"]["name"] for obj in class_objects.values() if obj["spec"]["isDefault"]]
    pointer = view.get(keys.DEFAULT_CLASS)
    if len(defaults) > 1 or (pointer.decode() if pointer else None) != (defaults[0] if defaults else None):
        problems.append(f"default classes {defaults} disagree with the default pointer {pointer!r}")
    expected = sorted(
        keys.class_index_key(name, pool_key)
        for pool_key, pool in pool_objects.items()
        for name in pool["spec"]["classNames"]
    )
    indexed = [key for key, _ in _scan(view, keys.CLASS_INDEX)]
    if expected != indexed:
        problems.append("the class index disagrees with the pools' classNames")
    for pool_key, pool in pool_objects.items():
        for name in pool["spec"]["classNames"]:
            if keys.class_key(name) not in class_objects:
                problems.append(f"pool {pools.pool_id_of_key(pool_key)} lists missing class {name}")


def _check_meta(view: ReadView, problems: list[str]) -> None:
    meta = Meta.load(view)
    events = _scan(view, keys.EVENT)
    if len(events) != meta.events:
        problems.append(f"meta counts {meta.events} event records, the log holds {len(events)}")
    if (
        events
        and not meta.compacted_revision
        <= keys.event_revision(events[0][0])
        <= keys.event_revision(events[-1][0])
        <= meta.revision
    ):
        problems.append("event log revisions fall outside (compacted, current]")
    dedup = _scan(view, keys.DEDUP)
    expiry = _scan(view, keys.DEDUP_EXPIRY)
    if expiry and int.from_bytes(expiry[0][0][len(keys.DEDUP_EXPIRY) :][:8], "big") < meta.dedup_oldest_ms:
        problems.append("a dedup record is older than meta's dedup_oldest_ms: expiry would skip it")
    if not len(dedup) == len(expiry) == meta.dedup_records:
        problems.append(
            f"meta counts {meta.dedup_records} dedup records; table {len(dedup)}, expiry index {len(expiry)}"
        )
