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
from dataclasses import dataclass, field
from typing import Any

from statemachine import buddy, keys, nodes, pods, pools, priorities, quotas, scheduler, services
from statemachine.addresses import FAMILY_BITS, Block, format_address, parse_address, parse_cidr
from statemachine.buddy import OWNER_RESERVED, UID_BYTES, PoolState
from statemachine.claims import PHASE_BOUND, PHASE_RELEASED, decode_record
from statemachine.codec import loads
from statemachine.context import Meta, parse_uid
from statemachine.errors import InvariantViolation
from statemachine.quotas import Ledger
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


@dataclass
class _Objects:
    """Every object the checks cross-reference, loaded once."""

    pools: dict[bytes, dict[str, Any]]
    allocations: dict[bytes, dict[str, Any]]
    nodes: dict[bytes, dict[str, Any]]
    pods: dict[bytes, dict[str, Any]]
    services: dict[bytes, dict[str, Any]]
    # Nodes and services found holding a block that points back at them (_check_tiling): each
    # must be there, or its pod CIDR or address could be handed out again.
    holders: set[bytes] = field(default_factory=set)


def check_invariants(view: ReadView) -> None:
    problems: list[str] = []
    pool_objects = _objects(view, keys.POOL)
    # Claims and allocations are stored compactly; claims.decode_record rebuilds the objects.
    claim_objects = {key: decode_record(key, raw) for key, raw in _scan(view, keys.CLAIM)}
    alloc_objects = {key: decode_record(key, raw) for key, raw in _scan(view, keys.ALLOC)}
    objects = _Objects(
        pool_objects, alloc_objects, _objects(view, keys.NODE), _objects(view, keys.POD), _objects(view, keys.SERVICE)
    )
    _check_pools(view, objects, problems)
    _check_held(objects, problems)
    _check_roots(view, pool_objects, problems)
    _check_claims(pool_objects, claim_objects, alloc_objects, problems)
    _check_no_double_allocation(pool_objects, alloc_objects, problems)
    _check_classes(view, pool_objects, problems)
    _check_priority_classes(view, problems)
    _check_meta(view, problems)
    check_scheduler(view, objects, problems)
    if problems:
        shown = problems[:_problems_shown_max]
        more = len(problems) - len(shown)
        raise InvariantViolation("; ".join(shown) + (f"; and {more} more" if more else ""))


def _check_pools(view: ReadView, objects: _Objects, problems: list[str]) -> None:
    uids = set()
    for key, pool in objects.pools.items():
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
        _check_tiling(view, name, state, objects, problems)
    for node_key, node in objects.nodes.items():  # a node of an earlier build has a CIDR allocator
        uid = parse_uid(node["metadata"]["uid"])
        name = f"node {node_key[len(keys.NODE) :].decode()} pod CIDR"
        node_state = nodes.load_state(view, node_key[len(keys.NODE) :].decode())
        if node_state is not None and node_state.pod_addresses is not None:
            continue  # its addresses are in its scheduling record (checked with the pods)
        uids.add(uid)
        raw_state = view.get(buddy.state_key(uid))
        if raw_state is None:
            problems.append(f"{name}: no allocator state")
            continue
        state = PoolState.from_plain(loads(raw_state))
        if str(state.block) != node["status"]["podCIDR"]:
            problems.append(f"{name}: allocator block {state.block} != podCIDR {node['status']['podCIDR']}")
            continue
        _check_tiling(view, name, state, objects, problems)
    for state_key, _ in _scan(view, b"ps/"):
        if state_key[3:] not in uids:
            problems.append(f"allocator state {state_key[3:].hex()} has no pool")
    for prefix in (b"F", b"U"):
        for record_key, _ in _scan(view, prefix):
            if record_key[1 : 1 + UID_BYTES] not in uids:
                problems.append(f"block record {record_key.hex()} belongs to no pool")
                break


def _check_tiling(view: ReadView, name: str, state: PoolState, objects: _Objects, problems: list[str]) -> None:
    pool_objects, alloc_objects = objects.pools, objects.allocations
    if state.next_address is not None and not state.address <= state.next_address < state.address + state.block.size:
        problems.append(f"pool {name}: next-fit cursor {state.next_address} is outside {state.block}")
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
        elif owner.startswith((keys.NODE, keys.SERVICE, keys.POD)):
            allocations += 1
            allocated += block.size
            if not _points_back(owner, block, name, objects):
                problems.append(f"pool {name}: {block} is held by {owner!r}, which does not point back at it")
            elif owner in objects.holders:
                problems.append(f"pool {name}: {owner!r} holds a second block, {block}")
            elif not owner.startswith(keys.POD):
                objects.holders.add(owner)
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


def _check_held(objects: _Objects, problems: list[str]) -> None:
    """The other direction of `_points_back`: every node's pod CIDR and every service's address
    is a block its pool holds for it. One that is not could be handed out again to another."""
    for node_key, node in objects.nodes.items():
        if node_key not in objects.holders:
            status = node["status"]
            problems.append(
                f"node {node_key[len(keys.NODE) :].decode()}: its pod CIDR {status['podCIDR']} is not held for it in "
                f"pool {status['podPool']}"
            )
    for service_key, service in objects.services.items():
        if service_key not in objects.holders:
            status = service["status"]
            problems.append(
                f"service {service_key.decode()}: its address {status['address']} is not held for it in pool "
                f"{status['pool']}"
            )


def _points_back(owner: bytes, block: Block, holder: str, objects: _Objects) -> bool:
    """Whether a node, service or pod that holds a block says it holds that block from there."""
    if owner.startswith(keys.NODE):
        node = objects.nodes.get(owner)
        return node is not None and node["status"]["podCIDR"] == str(block) and node["status"]["podPool"] == holder
    host = block.length == block.bits
    address = format_address(block.family, block.address)
    if owner.startswith(keys.SERVICE):
        service = objects.services.get(owner)
        return (
            host
            and service is not None
            and service["status"]["address"] == address
            and (service["status"]["pool"] == holder)
        )
    pod = objects.pods.get(owner)
    return (
        host
        and pod is not None
        and pod["status"]["podIP"] == address
        and holder == f"node {pod['spec']['nodeName']} pod CIDR"
    )


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
        elif allocation["metadata"]["labels"] != claim["metadata"]["labels"]:
            # An allocation carries its claim's labels: set together at creation and binding,
            # and changed together by claim.update.
            problems.append(f"claim {claim_key!r} and its allocation have different labels")
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


def _check_priority_classes(view: ReadView, problems: list[str]) -> None:
    defaults = [
        obj["metadata"]["name"] for obj in _objects(view, keys.PRIORITY_CLASS).values() if obj["spec"]["globalDefault"]
    ]
    pointer = priorities.default_name(view)
    if len(defaults) > 1 or pointer != (defaults[0] if defaults else None):
        problems.append(f"global default PriorityClasses {defaults} disagree with the default pointer {pointer!r}")


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
        listed = [class_objects.get(keys.class_key(name)) for name in pool["spec"]["classNames"]]
        for name, ip_class in zip(pool["spec"]["classNames"], listed, strict=True):
            if ip_class is None:
                problems.append(f"pool {pools.pool_id_of_key(pool_key)} lists missing class {name}")
        if None in listed:
            continue
        visibility = pool["spec"]["visibility"]
        if visibility not in pools.PLATFORM_VISIBILITIES:
            if "allowedOrgs" in pool["status"]:
                problems.append(f"pool {pools.pool_id_of_key(pool_key)} is a tenant's pool but has allowedOrgs")
            continue
        parent_id = pool["status"].get("parentPool")
        parent = None if parent_id is None else pool_objects.get(pools.key_of_pool_id(parent_id))
        expected_orgs = pools.allowed_orgs([c for c in listed if c is not None], parent, visibility)
        reserved_for = pool["status"].get("allowedOrgs")
        # None is also how pools stored by builds before reservations read: they stay open. A
        # child of a reserved pool, though, was made by a build that reserves.
        inherited = parent is not None and parent["status"].get("allowedOrgs") is not None
        if (reserved_for is not None or inherited) and reserved_for != expected_orgs:
            problems.append(
                f"pool {pools.pool_id_of_key(pool_key)} is reserved for {reserved_for}, "
                f"but its classes and parent reserve it for {expected_orgs}"
            )


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


# ---- the scheduler ---------------------------------------------------------------------------


def check_scheduler(view: ReadView, objects: _Objects, problems: list[str]) -> None:
    """Nodes, pods, the queue, nominations, services and ledgers agree with each other:
    * node capacity is never exceeded, each node's record equals the sum of its bound pods and
      carries its capacity;
    * each bound pod has exactly one address, inside its node's pod CIDR, held by it; pod
      addresses are unique; the node index lists exactly the bound pods;
    * the pending queue holds exactly the pending pods, under their priority-and-age key;
    * nominations are mutual (node <-> pending pod) and carry the pod's requests;
    * every tenant ledger equals the sum of its live pods and services, an org's the sum of its
      projects', the cached limits and default requests equal the quota's, and no usage
      exceeds a limit.
    (That every node's pod CIDR and every service's address is held for it in its pool is
    `_check_held`.)"""
    cluster = scheduler.Cluster.load(view)
    if cluster.nodes != len(objects.nodes):
        problems.append(f"the scheduler counts {cluster.nodes} nodes; there are {len(objects.nodes)}")
    states: dict[str, nodes.NodeState] = {}
    for state_key, raw in _scan(view, keys.NODE_STATE):
        states[state_key[len(keys.NODE_STATE) :].decode()] = nodes.NodeState.from_plain(loads(raw))
    usage: dict[str, list[int]] = {}
    for node_key, node in objects.nodes.items():
        name = node_key[len(keys.NODE) :].decode()
        state = states.get(name)
        if state is None or not nodes.same_uid(node, state):
            problems.append(f"node {name}: no scheduling record with its uid")
            continue
        if state.schedulable == node["spec"]["unschedulable"] or state.ready != node["status"]["ready"]:
            problems.append(f"node {name}: record and object disagree on ready or schedulable")
        if state.labels != nodes.matching_labels(name, node["metadata"]["labels"], node["spec"]["zone"]) or (
            state.taints != nodes.taint_rows(node["spec"]["taints"])
        ):
            problems.append(f"node {name}: record and object disagree on labels or taints")
        capacity = node["spec"]["capacity"]
        if (state.cpu_capacity, state.memory_capacity, state.pods_capacity) != (
            capacity["cpuMillis"],
            capacity["memoryBytes"],
            capacity["pods"],
        ):
            problems.append(f"node {name}: record and object disagree on capacity")
        _check_taint_eviction(name, state, problems)
        usage[name] = [0, 0, 0]
    for name in states:
        if keys.node_key(name) not in objects.nodes:
            problems.append(f"scheduling record for missing node {name}")
    _check_pods(view, objects, states, usage, cluster, problems)
    for name, (cpu, memory, pod_count) in usage.items():
        state = states[name]
        _check_pod_addresses(name, objects.nodes[keys.node_key(name)], state, pod_count, problems)
        if (state.cpu_used, state.memory_used, state.pods_used) != (cpu, memory, pod_count):
            problems.append(
                f"node {name}: record says ({state.cpu_used}, {state.memory_used}, {state.pods_used}) used, "
                f"its bound pods add up to ({cpu}, {memory}, {pod_count})"
            )
        if cpu > state.cpu_capacity or memory > state.memory_capacity or pod_count > state.pods_capacity:
            problems.append(f"node {name}: capacity exceeded ({cpu}, {memory}, {pod_count})")
    _check_ledgers(view, objects, problems)


def _check_taint_eviction(name: str, state: nodes.NodeState, problems: list[str]) -> None:
    """`NodeState.taint_eviction_ms` is a time, None or UNTIMED (each timed pod's own time is
    checked with the pods: never before it)."""
    due_ms = state.taint_eviction_ms
    if due_ms is not None and due_ms != nodes.UNTIMED and due_ms < 0:
        problems.append(f"node {name}: its earliest taint eviction time {due_ms} is not a time")


def _check_pod_time(
    view: ReadView, pod_key: bytes, node_name: str, state: nodes.NodeState, stay_ms: int | None, problems: list[str]
) -> None:
    """A bound pod has a time to leave (its pods-by-node index value) exactly when it tolerates
    its node's NoExecute taints for a time, and the node's earliest time is not after it. A
    node of an earlier build (UNTIMED) times none of its pods."""
    raw = view.get(keys.pod_on_node_key(node_name, pod_key))
    due_ms = nodes.index_due_ms(raw) if raw is not None else None  # a missing entry is reported with the index
    timed = state.taint_eviction_ms != nodes.UNTIMED and stay_ms is not None
    if (due_ms is not None) != timed:
        problems.append(
            f"pod {pod_key!r} tolerates node {node_name}'s NoExecute taints for {stay_ms} ms "
            f"(node {'untimed' if state.taint_eviction_ms == nodes.UNTIMED else 'timed'}), "
            f"and its time to leave there is {due_ms}"
        )
    elif due_ms is not None and (state.taint_eviction_ms is None or state.taint_eviction_ms > due_ms):
        problems.append(
            f"node {node_name}: its earliest taint eviction time {state.taint_eviction_ms} is after "
            f"pod {pod_key!r}'s {due_ms}"
        )


def _check_pod_addresses(
    name: str, node: dict[str, Any], state: nodes.NodeState, pod_count: int, problems: list[str]
) -> None:
    """A node's pod address bit set (`NodeState.pod_addresses`): its CIDR is the node's, its
    first address is held back, and it marks as many addresses as the node has bound pods (each
    bound pod's own is checked with the pod)."""
    if state.pod_addresses is None:
        return  # a node of an earlier build: its CIDR allocator is checked with the pools
    family, first, length, used = state.pod_addresses[:4]
    size = 1 << (FAMILY_BITS[family] - length)
    if str(Block(family, first, length)) != node["status"]["podCIDR"]:
        problems.append(
            f"node {name}: its address set is of {Block(family, first, length)}, not {node['status']['podCIDR']}"
        )
    elif not used & 1 or used.bit_length() > size:
        problems.append(f"node {name}: its address set does not hold back the first address, or overflows the CIDR")
    elif len(state.pod_addresses) > 5 or not 0 <= nodes.pod_address_cursor(state.pod_addresses) < size:
        problems.append(f"node {name}: its address set's cursor {state.pod_addresses[4:]} is not an offset in the CIDR")
    elif used.bit_count() != pod_count + 1:
        problems.append(
            f"node {name}: {used.bit_count() - 1} pod addresses are marked taken for {pod_count} bound pods"
        )


def _check_pods(
    view: ReadView,
    objects: _Objects,
    states: dict[str, nodes.NodeState],
    usage: dict[str, list[int]],
    cluster: scheduler.Cluster,
    problems: list[str],
) -> None:
    addresses: dict[str, bytes] = {}
    expected_index: list[bytes] = []
    expected_queue: dict[bytes, bytes] = {}
    for pod_key, pod in objects.pods.items():
        spec, status = pod["spec"], pod["status"]
        metadata = pod["metadata"]
        if keys.pod_key(metadata["org"], metadata["project"], metadata["namespace"], metadata["name"]) != pod_key:
            problems.append(f"pod {pod_key!r}: stored under a key that does not match its metadata")
        node_name = spec["nodeName"]
        if status["phase"] == pods.PHASE_BOUND:
            if node_name not in usage:
                problems.append(f"pod {pod_key!r} is bound to missing node {node_name}")
                continue
            requests = spec["requests"]
            counted = usage[node_name]
            counted[0] += requests["cpuMillis"]
            counted[1] += requests["memoryBytes"]
            counted[2] += 1
            expected_index.append(keys.pod_on_node_key(node_name, pod_key))
            if status["nominatedNodeName"] is not None:
                problems.append(f"pod {pod_key!r} is bound but still nominates {status['nominatedNodeName']}")
            address = status["podIP"]
            if address in addresses:
                problems.append(f"pods {addresses[address]!r} and {pod_key!r} share address {address}")
            addresses[address] = pod_key
            node = objects.nodes[keys.node_key(node_name)]
            host = parse_address(address, "podIP")
            state = states[node_name]
            rows = nodes.no_execute_rows(state)
            stay_ms = pods.no_execute_ms(spec, rows) if rows else None
            if stay_ms == pods.NOT_TOLERATED:
                problems.append(
                    f"pod {pod_key!r} is bound to node {node_name}, whose NoExecute taint it does not tolerate"
                )
            else:
                _check_pod_time(view, pod_key, node_name, state, stay_ms, problems)
            if not parse_cidr(node["status"]["podCIDR"], "podCIDR").contains(host):
                problems.append(
                    f"pod {pod_key!r} has {address}, outside node {node_name}'s {node['status']['podCIDR']}"
                )
            elif state.pod_addresses is not None:
                offset = host.address - state.pod_addresses[1]
                if offset <= 0 or not state.pod_addresses[3] >> offset & 1:
                    problems.append(f"pod {pod_key!r}: its address {address} is not marked taken on node {node_name}")
            elif view.get(buddy.used_key(state.uid, host.address, host.length)) != pod_key:
                problems.append(f"pod {pod_key!r}: its address {address} is not held by it in node {node_name}'s CIDR")
        elif status["phase"] == pods.PHASE_PENDING:
            if node_name is not None or status["podIP"] is not None:
                problems.append(f"pod {pod_key!r} is pending but has a node or an address")
            expected_queue[scheduler.queue_key_of(pod)] = pod_key
            nominated = status["nominatedNodeName"]
            if nominated is not None:
                nominated_state = states.get(nominated)
                if nominated_state is None or nominated_state.nominee != pod_key:
                    problems.append(f"pod {pod_key!r} nominates node {nominated}, which does not name it")
        else:
            problems.append(f"pod {pod_key!r} has unknown phase {status['phase']!r}")
    for name, state in states.items():
        if state.nominee is None:
            if state.nominee_cpu or state.nominee_memory or state.nominee_priority:
                problems.append(f"node {name}: a reservation without a nominee")
            continue
        nominee = objects.pods.get(state.nominee)
        if nominee is None or nominee["status"]["nominatedNodeName"] != name:
            problems.append(f"node {name}: nominee {state.nominee!r} does not nominate it")
        elif [state.nominee_cpu, state.nominee_memory] != list(nominee["spec"]["requests"].values()):
            problems.append(f"node {name}: the reservation differs from nominee {state.nominee!r}'s requests")
        elif state.nominee_priority not in (nominee["spec"]["priority"], nodes.EARLIER_NOMINEE_PRIORITY):
            # A nomination recorded before reservations had a priority decodes (and is saved again)
            # with the highest one, keeping its old meaning: valid until the nomination ends.
            problems.append(f"node {name}: the reservation's priority differs from nominee {state.nominee!r}'s")
    index = [index_key for index_key, _ in _scan(view, keys.POD_BY_NODE)]
    if index != sorted(expected_index):
        problems.append(f"the pods-by-node index lists {len(index)} entries for {len(expected_index)} bound pods")
    queue = dict(_scan(view, keys.QUEUE))
    if queue != expected_queue:
        problems.append(f"the pending queue holds {len(queue)} entries for {len(expected_queue)} pending pods")
    if cluster.pending != len(expected_queue):
        problems.append(f"the scheduler counts {cluster.pending} pending pods; there are {len(expected_queue)}")


def _check_ledgers(view: ReadView, objects: _Objects, problems: list[str]) -> None:
    expected: dict[tuple[str, str], Ledger] = defaultdict(Ledger)
    for pod in objects.pods.values():
        metadata = pod["metadata"]
        bound = pod["status"]["phase"] == pods.PHASE_BOUND
        for scope in ((metadata["org"], metadata["project"]), (metadata["org"], "")):
            if bound:
                expected[scope].add(scheduler.charge_of(pod["spec"]), 1)
            else:
                expected[scope].pending += 1
    for service in objects.services.values():
        metadata = service["metadata"]
        for scope in ((metadata["org"], metadata["project"]), (metadata["org"], "")):
            expected[scope].add(services.charge_of(service), 1)
    quota_objects = _objects(view, keys.QUOTA)
    stored: dict[tuple[str, str], Ledger] = {}
    for ledger_key, raw in _scan(view, keys.LEDGER):
        org, project = keys.split_path(ledger_key, keys.LEDGER)
        stored[(org, project)] = Ledger.from_plain(loads(raw))
    for scope in sorted(set(expected) | set(stored)):
        ledger = stored.get(scope, Ledger())
        name = quotas.quota_id(*scope)
        if ledger.used() != expected[scope].used():
            problems.append(f"ledger {name}: says {ledger.used()}, its live objects add up to {expected[scope].used()}")
        if scope in stored and ledger.empty:
            problems.append(f"ledger {name}: an empty ledger is stored")
    for scope, ledger in stored.items():
        quota = quota_objects.get(keys.quota_key(*scope))
        name = quotas.quota_id(*scope)
        spec = None if quota is None else quota["spec"]
        limits = None if spec is None else {key: value for key, value in spec.items() if key != "defaultRequests"}
        defaults = None if spec is None else spec.get("defaultRequests")
        default_requests = None if defaults is None else [defaults["cpuMillis"], defaults["memoryBytes"]]
        if ledger.default_requests != default_requests:
            problems.append(
                f"ledger {name}: cached default requests {ledger.default_requests} differ from its quota's "
                f"{default_requests}"
            )
        if ledger.limits != limits:
            problems.append(f"ledger {name}: cached limits {ledger.limits} differ from its quota's {limits}")
        elif ledger.limits is not None:
            used = ledger.used()
            for resource in quotas.SCALAR_LIMITS:
                if resource in ledger.limits and used[resource] > ledger.limits[resource]:
                    problems.append(
                        f"ledger {name}: {resource} {used[resource]} exceeds the quota's {ledger.limits[resource]}"
                    )
            for table in ("addressesByClass", "addressesByPool"):
                for item, limit in ledger.limits.get(table, {}).items():
                    if used[table].get(item, 0) > limit:
                        problems.append(f"ledger {name}: {table}.{item} exceeds the quota's {limit}")
    for quota_key in quota_objects:
        org, project = keys.split_path(quota_key, keys.QUOTA)
        if (org, project) not in stored:
            problems.append(f"quota {quotas.quota_id(org, project)} has no ledger")
