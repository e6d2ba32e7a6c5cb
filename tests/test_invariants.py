"""check_invariants passes on busy states and catches corruption planted directly in the store.

Each fault is planted with the rest of the state kept consistent where that is possible (the
allocator's counters recounted, for instance), and the test checks that the specific check
for that fault fired, so every check is shown to be able to fail. Also: apply refuses to apply
an entry at or before the last applied log position, and raises on broken state.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest

from node.memstore import MemoryStore
from statemachine import (
    Envelope,
    InvariantViolation,
    Ok,
    apply,
    buddy,
    claims,
    codec,
    encode_envelope,
    fields,
    keys,
    nodes,
    pods,
    pools,
    quotas,
    scheduler,
)
from statemachine.addresses import FAMILY_BITS, Block, parse_address, parse_cidr
from statemachine.buddy import OWNER_RESERVED, PoolState
from statemachine.claims import PHASE_BOUND
from statemachine.context import Meta
from statemachine.invariants import check_invariants, digest
from statemachine.quotas import Ledger
from statemachine.view import Overlay, prefix_end
from tests.harness import ADMIN, BASE_TS_MS, Machine, admin_for, member
from tests.test_determinism import build_scenario

ACME = member("acme", "web")


def _small_machine() -> Machine:
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "class.create", {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True}})
    machine.ok(ADMIN, "class.create", {"name": "alt", "spec": {"ipFamily": "IPv4", "reclaimPolicy": "Retain"}})
    machine.ok(ADMIN, "class.create", {"name": "spare", "spec": {"ipFamily": "IPv6"}})
    machine.ok(ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "classNames": ["std", "alt"]}})
    machine.ok(ADMIN, "pool.create", {"name": "p6", "spec": {"cidr": "2001:db8::/64"}})
    machine.ok(ADMIN, "pool.create", {"name": "lab", "spec": {"cidr": "10.0.0.128/25", "addressSpace": "lab"}})
    machine.ok(
        admin_for("acme", "web"), "pool.create", {"name": "kid", "spec": {"parentPool": "p1", "prefixLength": 28}}
    )
    machine.ok(ACME, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "prefixLength": 30}}, request_id="r1")
    machine.ok(ACME, "claim.create", {"name": "c2", "spec": {}})
    machine.ok(ACME, "claim.create", {"name": "c3", "spec": {"className": "alt"}})
    machine.ok(ACME, "claim.delete", {"name": "c3"})  # retained: a Released allocation
    machine.ok(ACME, "claim.create", {"name": "k1", "spec": {"poolRef": "kid"}})
    machine.ok(ACME, "claim.create", {"name": "v1", "spec": {"poolRef": "p6", "prefixLength": 120}})
    return machine


@pytest.fixture(scope="module")
def busy_store() -> MemoryStore:
    return build_scenario(steps=300).store


def _copy(store: MemoryStore) -> MemoryStore:
    copied = MemoryStore()
    copied.apply_writes(list(store.items()))
    return copied


# ---- reading and rewriting records -----------------------------------------------------------


def _scan(store: MemoryStore, prefix: bytes) -> list[tuple[bytes, bytes]]:
    return list(store.scan(prefix, prefix_end(prefix)))


def _load(store: MemoryStore, key: bytes) -> Any:
    raw = store.get(key)
    assert raw is not None, key
    return codec.loads(raw)


def _put(store: MemoryStore, key: bytes, value: Any) -> None:
    store.apply_writes([(key, codec.dump_record(value))])


def _load_object(store: MemoryStore, key: bytes) -> dict[str, Any]:
    """A claim or allocation: stored compactly, rebuilt by claims.decode_record. (The faults
    write them back as maps with `_put`, which decode_record reads as they are.)"""
    raw = store.get(key)
    assert raw is not None, key
    return claims.decode_record(key, raw)


def _bound_allocations(store: MemoryStore) -> list[tuple[bytes, dict[str, Any]]]:
    found = [(key, claims.decode_record(key, raw)) for key, raw in _scan(store, keys.ALLOC)]
    return [(key, allocation) for key, allocation in found if allocation["status"]["phase"] == PHASE_BOUND]


def _two_allocations_in_one_pool(
    store: MemoryStore,
) -> tuple[tuple[bytes, dict[str, Any]], tuple[bytes, dict[str, Any]]]:
    by_pool: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}
    for key, allocation in _bound_allocations(store):
        by_pool.setdefault(allocation["spec"]["pool"], []).append((key, allocation))
    for found in by_pool.values():
        if len(found) >= 2:
            return found[0], found[1]
    raise AssertionError("the base state has no pool with two allocations")


def _pool_state(store: MemoryStore, uid: bytes) -> PoolState:
    return PoolState.from_plain(_load(store, buddy.state_key(uid)))


def _save_state(store: MemoryStore, state: PoolState) -> None:
    _put(store, buddy.state_key(state.uid), state.to_plain())


def _recount_free(store: MemoryStore, uid: bytes) -> None:
    """Make a pool's free counters and lowest-free cache agree with its free records again."""
    state = _pool_state(store, uid)
    state.free_counts = [0] * len(state.free_counts)
    state.lowest_free = {}
    for key, _ in _scan(store, b"F" + uid):
        length, address = buddy.decode_free_key(key)
        state.free_counts[length - state.length] += 1
        state.lowest_free[length] = min(address, state.lowest_free.get(length, address))
    _save_state(store, state)


def _used_by_allocation(store: MemoryStore) -> tuple[bytes, bytes, int, int]:
    """(pool uid, used key, address, length) of a block held by an allocation."""
    for key, owner in _scan(store, b"U"):
        if owner.startswith(keys.ALLOC):
            address, length = buddy.decode_used_key(key)
            return key[1 : 1 + buddy.UID_BYTES], key, address, length
    raise AssertionError("no used block held by an allocation")


def _splittable_free(store: MemoryStore) -> tuple[bytes, int, int, int]:
    """(pool uid, length, address, bits) of a free block that can be split in two."""
    for key, _ in _scan(store, b"F"):
        uid = key[1 : 1 + buddy.UID_BYTES]
        length, address = buddy.decode_free_key(key)
        state = _pool_state(store, uid)
        if length < state.bits:
            return uid, length, address, state.bits
    raise AssertionError("no splittable free block")


# ---- the faults ------------------------------------------------------------------------------


def give_block_to_two_allocations(store: MemoryStore) -> None:
    """The second allocation (and its claim) now say they hold the first one's block."""
    (_, first), (second_key, second) = _two_allocations_in_one_pool(store)
    second["spec"]["cidr"] = first["spec"]["cidr"]
    _put(store, second_key, second)
    claim_key = keys.CLAIM + second_key[len(keys.ALLOC) :]
    claim = _load_object(store, claim_key)
    claim["status"]["allocatedCIDR"] = first["spec"]["cidr"]
    _put(store, claim_key, claim)


def repoint_used_block(store: MemoryStore) -> None:
    """A used block's owner is changed to another allocation, which holds a different block."""
    (first_key, first), (second_key, _) = _two_allocations_in_one_pool(store)
    for key, owner in _scan(store, b"U"):
        if owner == first_key:
            store.apply_writes([(key, second_key)])
            return
    raise AssertionError(f"no used block for {first['spec']['cidr']}")


def remove_free_block(store: MemoryStore) -> None:
    """A free block disappears (its counters recounted): part of the pool belongs to nobody."""
    key, _ = _scan(store, b"F")[0]
    store.apply_writes([(key, None)])
    _recount_free(store, key[1 : 1 + buddy.UID_BYTES])


def free_block_over_used(store: MemoryStore) -> None:
    """An allocation's block is also listed as free (counters recounted)."""
    uid, _, address, length = _used_by_allocation(store)
    store.apply_writes([(buddy.free_key(uid, length, address), b"")])
    _recount_free(store, uid)


def unmerged_free_buddies(store: MemoryStore) -> None:
    """A free block split into two free halves that were never merged back (counters recounted)."""
    uid, length, address, bits = _splittable_free(store)
    half = 1 << (bits - length - 1)
    store.apply_writes(
        [
            (buddy.free_key(uid, length, address), None),
            (buddy.free_key(uid, length + 1, address), b""),
            (buddy.free_key(uid, length + 1, address + half), b""),
        ]
    )
    _recount_free(store, uid)


def pool_counter_off_by_one(store: MemoryStore) -> None:
    uid, *_ = _used_by_allocation(store)
    state = _pool_state(store, uid)
    state.allocated += 1
    _save_state(store, state)


def pool_allocation_count_off_by_one(store: MemoryStore) -> None:
    uid, *_ = _used_by_allocation(store)
    state = _pool_state(store, uid)
    state.allocations -= 1
    _save_state(store, state)


def free_count_off_by_one(store: MemoryStore) -> None:
    key, _ = _scan(store, b"F")[0]
    state = _pool_state(store, key[1 : 1 + buddy.UID_BYTES])
    state.free_counts[-1] += 1
    _save_state(store, state)


def wrong_lowest_free_address(store: MemoryStore) -> None:
    """The allocator's cached lowest free address points at a block that is not free."""
    uid, length, address, _ = _splittable_free(store)
    state = _pool_state(store, uid)
    _, _, used_address, _ = _used_by_allocation(store)
    state.lowest_free[length] = used_address if used_address != address else address + 1
    _save_state(store, state)


def delete_claim_behind_allocation(store: MemoryStore) -> None:
    alloc_key, _ = _bound_allocations(store)[0]
    store.apply_writes([(keys.CLAIM + alloc_key[len(keys.ALLOC) :], None)])


def delete_allocation_behind_claim(store: MemoryStore) -> None:
    alloc_key, _ = _bound_allocations(store)[0]
    store.apply_writes([(alloc_key, None)])


def claim_disagrees_with_allocation(store: MemoryStore) -> None:
    (alloc_key, _), (_, other) = _two_allocations_in_one_pool(store)
    claim_key = keys.CLAIM + alloc_key[len(keys.ALLOC) :]
    claim = _load_object(store, claim_key)
    claim["status"]["allocatedCIDR"] = other["spec"]["cidr"]
    _put(store, claim_key, claim)


def two_default_classes(store: MemoryStore) -> None:
    for key, raw in _scan(store, keys.CLASS):
        ip_class = codec.loads(raw)
        if not ip_class["spec"]["isDefault"]:
            ip_class["spec"]["isDefault"] = True
            _put(store, key, ip_class)
            return
    raise AssertionError("no non-default class")


def default_pointer_to_missing_class(store: MemoryStore) -> None:
    store.apply_writes([(keys.DEFAULT_CLASS, b"ghost")])


def default_priority_class_pointer_to_nothing(store: MemoryStore) -> None:
    store.apply_writes([(keys.DEFAULT_PRIORITY_CLASS, b"ghost")])


def dangling_class_index(store: MemoryStore) -> None:
    store.apply_writes([(keys.class_index_key("std", keys.pool_key("", "", "nowhere")), b"")])


def platform_pool_reserved_for_another_org(store: MemoryStore) -> None:
    """A platform pool whose reservation (status.allowedOrgs) disagrees with its classes."""
    for pool_key, raw in _scan(store, keys.POOL):
        pool = dict(codec.loads(raw))
        if pool["spec"]["visibility"] == pools.VISIBILITY_PLATFORM:
            pool["status"] = {**pool["status"], "allowedOrgs": ["nobody"]}
            _put(store, pool_key, pool)
            return
    raise AssertionError("the base state has no platform pool")


def class_index_entry_removed(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.CLASS_INDEX)[0]
    store.apply_writes([(key, None)])


def event_counter_mismatch(store: MemoryStore) -> None:
    meta = Meta.load(store)
    meta.events += 1
    _put(store, keys.META, meta.to_plain())


def event_record_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.EVENT)[0]
    store.apply_writes([(key, None)])


def event_from_the_future(store: MemoryStore) -> None:
    meta = Meta.load(store)
    _, last = _scan(store, keys.EVENT)[-1]
    meta.events += 1
    store.apply_writes([(keys.event_key(meta.revision + 5), last)])
    _put(store, keys.META, meta.to_plain())


def dedup_counter_mismatch(store: MemoryStore) -> None:
    meta = Meta.load(store)
    meta.dedup_records += 1
    _put(store, keys.META, meta.to_plain())


def dedup_expiry_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.DEDUP_EXPIRY)[0]
    store.apply_writes([(key, None)])


def allocator_state_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, b"ps/")[0]
    store.apply_writes([(key, None)])


def root_index_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.ROOT)[0]
    store.apply_writes([(key, None)])


def overlapping_root_pools(store: MemoryStore) -> None:
    """A root pool of another address space is moved into the default space, over other roots."""
    others = [
        (index_key, pool_key)
        for index_key, pool_key in _scan(store, keys.ROOT)
        if _load(store, pool_key)["status"]["addressSpace"] != "default"
    ]
    assert others, "no root pool outside the default address space"
    index_key, pool_key = others[0]
    pool = _load(store, pool_key)
    block = pools.block_of(pool)
    pool["status"]["addressSpace"] = pool["spec"]["addressSpace"] = "default"
    _put(store, pool_key, pool)
    store.apply_writes([(index_key, None), (keys.root_key("default", block), pool_key)])


def allocation_labels_differ(store: MemoryStore) -> None:
    key, allocation = _bound_allocations(store)[0]
    allocation["metadata"]["labels"] = {"only": "here"}
    _put(store, key, allocation)


def next_fit_cursor_outside(store: MemoryStore) -> None:
    key, _ = _scan(store, b"ps/")[0]
    state = PoolState.from_plain(_load(store, key))
    state.next_address = state.address + state.block.size
    _put(store, key, state.to_plain())


FAULTS: dict[str, tuple[Callable[[MemoryStore], None], str]] = {
    "next-fit-cursor-outside": (next_fit_cursor_outside, r"next-fit cursor \d+ is outside"),
    "allocation-labels-differ": (allocation_labels_differ, r"and its allocation have different labels"),
    "block-given-to-two-allocations": (give_block_to_two_allocations, r"overlap"),
    "used-block-repointed": (repoint_used_block, r"does not point back"),
    "free-block-removed": (remove_free_block, r"\bgap\b|end before the end"),
    "free-block-over-used-block": (free_block_over_used, r"\boverlap\b"),
    "free-buddies-unmerged": (unmerged_free_buddies, r"not merged"),
    "pool-allocated-off-by-one": (pool_counter_off_by_one, r"counters"),
    "pool-allocations-off-by-one": (pool_allocation_count_off_by_one, r"counters"),
    "pool-free-count-off-by-one": (free_count_off_by_one, r"counters"),
    "pool-lowest-free-wrong": (wrong_lowest_free_address, r"lowest|counters|free"),
    "claim-deleted-behind-allocation": (delete_claim_behind_allocation, r"allocation .* claim does not"),
    "allocation-deleted-behind-claim": (delete_allocation_behind_claim, r"no bound allocation"),
    "claim-disagrees-with-allocation": (claim_disagrees_with_allocation, r"its allocation says otherwise"),
    "two-default-classes": (two_default_classes, r"default classes"),
    "default-pointer-to-missing-class": (default_pointer_to_missing_class, r"default pointer"),
    "default-priority-class-pointer-to-nothing": (default_priority_class_pointer_to_nothing, r"PriorityClasses"),
    "dangling-class-index": (dangling_class_index, r"class index"),
    "class-index-entry-removed": (class_index_entry_removed, r"class index"),
    "platform-pool-reserved-for-another-org": (platform_pool_reserved_for_another_org, r"reserved for"),
    "event-counter-mismatch": (event_counter_mismatch, r"meta counts .* the log holds"),
    "event-record-lost": (event_record_lost, r"meta counts .* the log holds"),
    "event-from-the-future": (event_from_the_future, r"revisions fall outside"),
    "dedup-counter-mismatch": (dedup_counter_mismatch, r"dedup records"),
    "dedup-expiry-lost": (dedup_expiry_lost, r"dedup records"),
    "allocator-state-lost": (allocator_state_lost, r"no allocator state"),
    "root-index-lost": (root_index_lost, r"root index"),
    "overlapping-root-pools": (overlapping_root_pools, r"overlaps another root"),
}


def test_small_state_is_sound() -> None:
    machine = _small_machine()  # checks after every step
    check_invariants(machine.store)


def test_busy_state_is_sound(busy_store: MemoryStore) -> None:
    check_invariants(busy_store)
    assert len(_bound_allocations(busy_store)) >= 20


def test_every_step_of_a_busy_log_is_sound() -> None:
    build_scenario(seed=7, steps=120, check_every_step=True)


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_planted_fault_is_detected_in_small_state(fault: tuple[Callable[[MemoryStore], None], str]) -> None:
    plant, expected = fault
    store = _small_machine().store
    check_invariants(store)
    before = digest(store)
    plant(store)
    assert digest(store) != before, "the fault changed nothing"
    with pytest.raises(InvariantViolation, match=expected):
        check_invariants(store)


@pytest.mark.parametrize("fault", list(FAULTS.values()), ids=list(FAULTS))
def test_planted_fault_is_detected_in_busy_state(
    fault: tuple[Callable[[MemoryStore], None], str], busy_store: MemoryStore
) -> None:
    plant, expected = fault
    store = _copy(busy_store)
    plant(store)
    with pytest.raises(InvariantViolation, match=expected):
        check_invariants(store)


def test_many_problems_are_summarised() -> None:
    store = _small_machine().store
    for key, _ in _scan(store, keys.CLAIM):
        store.apply_writes([(key, None)])
    for key, _ in _scan(store, keys.EVENT):
        store.apply_writes([(key, None)])
    with pytest.raises(InvariantViolation) as raised:
        check_invariants(store)
    message = str(raised.value)
    assert message.count("claim does not") >= 3
    assert "meta counts" in message


# ---- apply's own guards ----------------------------------------------------------------------


def _class_create(name: str, ts_ms: int) -> bytes:
    return encode_envelope(Envelope("class.create", {"name": name, "spec": {"ipFamily": "IPv4"}}, ADMIN, None, ts_ms))


def test_apply_refuses_an_entry_at_or_before_the_last_applied() -> None:
    store = MemoryStore()
    outcome = apply(store, _class_create("a", BASE_TS_MS), 5, 1)
    assert outcome.ok
    store.apply_writes(outcome.writes)
    for index, position in [(5, 1), (5, 0), (4, 9), (1, 0)]:
        with pytest.raises(InvariantViolation, match="applied after"):
            apply(store, _class_create(f"x{index}{position}", BASE_TS_MS + 1), index, position)
    # Later positions in the same entry, and later entries, are fine.
    later = apply(store, _class_create("b", BASE_TS_MS + 1), 5, 2)
    assert later.ok
    store.apply_writes(later.writes)
    assert apply(store, _class_create("c", BASE_TS_MS + 2), 6, 0).ok


def test_replaying_a_whole_log_over_its_own_state_is_refused() -> None:
    machine = _small_machine()
    with pytest.raises(InvariantViolation):
        apply(machine.store, machine.log[-1], machine.index)


def test_apply_raises_on_broken_state_instead_of_refusing() -> None:
    """A claim without its allocation is broken state, not bad input: the member must stop."""
    store = _small_machine().store
    alloc_key, _ = _bound_allocations(store)[0]
    store.apply_writes([(alloc_key, None)])
    org, project, namespace, name = keys.split_path(alloc_key, keys.ALLOC)
    data = encode_envelope(
        Envelope("claim.delete", {"name": name, "namespace": namespace}, member(org, project), None, BASE_TS_MS + 10**8)
    )
    with pytest.raises(InvariantViolation):
        apply(store, data, 10**6)


def test_invariant_messages_name_the_pool() -> None:
    store = _small_machine().store
    pool_counter_off_by_one(store)
    with pytest.raises(InvariantViolation) as raised:
        check_invariants(store)
    assert re.search(r"pool \S+: counters", str(raised.value))


# ---- the scheduler's invariants ------------------------------------------------------------------


def _sched_machine() -> Machine:
    """Nodes, bound and pending pods (one nominating a node), a service, quotas at both levels."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    machine.ok(ADMIN, "pool.create", {"name": "vips", "spec": {"cidr": "10.96.0.0/24"}})
    for name, cpu in (("n1", 2000), ("n2", 4000)):
        capacity = {"cpuMillis": cpu, "memoryBytes": 8 << 30, "pods": 8}
        machine.ok(ADMIN, "node.register", {"name": name, "spec": {"capacity": capacity, "podPool": "pods"}})
    machine.ok(ADMIN, "quota.set", {"name": "acme", "spec": {"cpuMillis": 20000, "pods": 20}})
    machine.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 10000, "services": 4}})
    for name, cpu in (("a", 1000), ("b", 1500), ("c", 1000)):
        machine.ok(ACME, "pod.create", {"name": name, "spec": {"requests": {"cpuMillis": cpu}}})
    waiting = machine.ok(ACME, "pod.create", {"name": "wide", "spec": {"requests": {"cpuMillis": 3000}}})
    assert waiting["status"]["nominatedNodeName"] == "n2", waiting["status"]
    machine.ok(member("acme", "db"), "pod.create", {"name": "x", "spec": {"requests": {"cpuMillis": 100}}})
    machine.ok(ACME, "service.create", {"name": "s1", "spec": {"poolRef": "vips"}})
    return machine


def _pods(store: MemoryStore) -> list[tuple[bytes, dict[str, Any]]]:
    return [(key, codec.loads(raw)) for key, raw in _scan(store, keys.POD)]


def _bound_pod(store: MemoryStore, which: int = 0) -> tuple[bytes, dict[str, Any]]:
    return [(key, pod) for key, pod in _pods(store) if pod["status"]["phase"] == "Bound"][which]


def _node_state(store: MemoryStore, name: str) -> nodes.NodeState:
    return nodes.NodeState.from_plain(_load(store, keys.node_state_key(name)))


def _save_node_state(store: MemoryStore, name: str, state: nodes.NodeState) -> None:
    _put(store, keys.node_state_key(name), state.to_plain())


def node_capacity_exceeded(store: MemoryStore) -> None:
    """A bound pod's requests grow past its node's capacity; the node's record follows (so only
    the capacity check can object)."""
    key, pod = _bound_pod(store)
    state = _node_state(store, pod["spec"]["nodeName"])
    extra = state.cpu_capacity
    pod["spec"]["requests"]["cpuMillis"] += extra
    _put(store, key, pod)
    state.cpu_used += extra
    _save_node_state(store, pod["spec"]["nodeName"], state)
    for scope in (("acme", "web"), ("acme", "")):  # and the ledgers, so they still add up
        ledger = quotas.Ledger.from_plain(_load(store, keys.ledger_key(*scope)))
        ledger.cpu_millis += extra
        ledger.limits = None
        _put(store, keys.ledger_key(*scope), ledger.to_plain())
        store.apply_writes([(keys.quota_key(*scope), None)])


def node_usage_off(store: MemoryStore) -> None:
    state = _node_state(store, "n1")
    state.memory_used += 1
    _save_node_state(store, "n1", state)


def ledger_usage_off(store: MemoryStore) -> None:
    ledger = quotas.Ledger.from_plain(_load(store, keys.ledger_key("acme", "web")))
    ledger.pods += 1
    _put(store, keys.ledger_key("acme", "web"), ledger.to_plain())


def usage_over_quota(store: MemoryStore) -> None:
    """The quota (object and cached limits alike) is lowered below what is used."""
    quota = _load(store, keys.quota_key("acme", "web"))
    quota["spec"]["cpuMillis"] = 100
    _put(store, keys.quota_key("acme", "web"), quota)
    ledger = quotas.Ledger.from_plain(_load(store, keys.ledger_key("acme", "web")))
    assert ledger.limits is not None
    ledger.limits["cpuMillis"] = 100
    _put(store, keys.ledger_key("acme", "web"), ledger.to_plain())


def cached_limits_stale(store: MemoryStore) -> None:
    quota = _load(store, keys.quota_key("acme", "web"))
    quota["spec"]["cpuMillis"] = 99_999
    _put(store, keys.quota_key("acme", "web"), quota)


def pod_address_outside_node(store: MemoryStore) -> None:
    key, pod = _bound_pod(store)
    pod["status"]["podIP"] = "10.96.0.200"
    _put(store, key, pod)


def pod_addresses_shared(store: MemoryStore) -> None:
    _, first = _bound_pod(store, 0)
    second_key, second = next(
        (key, pod) for key, pod in _pods(store)[1:] if pod["spec"]["nodeName"] == first["spec"]["nodeName"]
    )
    second["status"]["podIP"] = first["status"]["podIP"]
    _put(store, second_key, second)


def pod_address_not_held(store: MemoryStore) -> None:
    """The node's address set no longer marks the pod's address, and marks another instead (so
    only the per-pod check can object)."""
    _, pod = _bound_pod(store)
    name = pod["spec"]["nodeName"]
    state = _node_state(store, name)
    assert state.pod_addresses is not None
    family, first, length, used, cursor = state.pod_addresses
    offset = int.from_bytes(bytes(map(int, pod["status"]["podIP"].split("."))), "big") - first
    state.pod_addresses = [family, first, length, (used & ~(1 << offset)) | 1 << 200, cursor]
    _save_node_state(store, name, state)


def pod_addresses_miscounted(store: MemoryStore) -> None:
    """The node's address set marks an address no bound pod holds."""
    state = _node_state(store, "n1")
    assert state.pod_addresses is not None
    state.pod_addresses = [*state.pod_addresses[:3], state.pod_addresses[3] | 1 << 100, *state.pod_addresses[4:]]
    _save_node_state(store, "n1", state)


def pod_addresses_first_free(store: MemoryStore) -> None:
    """The node's address set frees the CIDR's first address, which no pod may take."""
    state = _node_state(store, "n1")
    assert state.pod_addresses is not None
    state.pod_addresses = [*state.pod_addresses[:3], state.pod_addresses[3] & ~1, *state.pod_addresses[4:]]
    _save_node_state(store, "n1", state)


def pod_addresses_of_another_cidr(store: MemoryStore) -> None:
    state = _node_state(store, "n1")
    assert state.pod_addresses is not None
    state.pod_addresses = [state.pod_addresses[0], state.pod_addresses[1] + 256, *state.pod_addresses[2:]]
    _save_node_state(store, "n1", state)


def pod_address_cursor_outside(store: MemoryStore) -> None:
    """The rotation cursor names an offset past the node's /24."""
    state = _node_state(store, "n1")
    assert state.pod_addresses is not None
    state.pod_addresses = [*state.pod_addresses[:4], 256]
    _save_node_state(store, "n1", state)


def stray_node_allocator(store: MemoryStore) -> None:
    """An allocator state record for a node whose addresses are in its scheduling record."""
    state = _node_state(store, "n1")
    store.apply_writes([(buddy.state_key(state.uid), codec.dump_record(["stray"]))])


def queue_entry_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.QUEUE)[0]
    store.apply_writes([(key, None)])


def pending_count_off(store: MemoryStore) -> None:
    cluster = scheduler.Cluster.load(store)
    cluster.pending += 1
    _put(store, keys.SCHEDULER, cluster.to_plain())


def nomination_one_sided(store: MemoryStore) -> None:
    state = _node_state(store, "n2")
    scheduler.clear_reservation(state)
    _save_node_state(store, "n2", state)


def nomination_priority_differs(store: MemoryStore) -> None:
    state = _node_state(store, "n2")
    state.nominee_priority += 1
    _save_node_state(store, "n2", state)


def node_index_entry_lost(store: MemoryStore) -> None:
    key, _ = _scan(store, keys.POD_BY_NODE)[0]
    store.apply_writes([(key, None)])


def node_count_off(store: MemoryStore) -> None:
    cluster = scheduler.Cluster.load(store)
    cluster.nodes -= 1
    _put(store, keys.SCHEDULER, cluster.to_plain())


def service_address_repointed(store: MemoryStore) -> None:
    key, raw = _scan(store, keys.SERVICE)[0]
    service = codec.loads(raw)
    service["status"]["address"] = "10.96.0.99"
    _put(store, key, service)


def _release_held(store: MemoryStore, pool_name: str, owner: bytes, block: Block) -> None:
    """Give `block` back to pool `pool_name` as a delete would, but keep its holder."""
    pool = _load_object(store, keys.pool_key("", "", pool_name))
    overlay = Overlay(store)
    state = pools.load_state(overlay, pool)
    buddy.release(overlay, state, block, owner)
    state.allocated -= block.size
    state.allocations -= 1
    overlay.put(buddy.state_key(state.uid), codec.dump_record(state.to_plain()))
    store.apply_writes(overlay.writes())


def service_address_released(store: MemoryStore) -> None:
    """The service stays, its address is free: another service could be given it."""
    key, raw = _scan(store, keys.SERVICE)[0]
    service = codec.loads(raw)
    _release_held(store, "vips", key, parse_address(service["status"]["address"], "address"))


def node_pod_cidr_released(store: MemoryStore) -> None:
    """The node stays, its pod CIDR is free: a new node could be given it."""
    node = _load_object(store, keys.node_key("n1"))
    _release_held(store, "pods", keys.node_key("n1"), parse_cidr(node["status"]["podCIDR"], "podCIDR"))


def node_capacity_differs(store: MemoryStore) -> None:
    state = _node_state(store, "n1")
    state.cpu_capacity *= 100
    _save_node_state(store, "n1", state)


def default_requests_stale(store: MemoryStore) -> None:
    ledger = Ledger.from_plain(_load(store, keys.ledger_key("acme", "web")))
    ledger.default_requests = [1, 2]
    _put(store, keys.ledger_key("acme", "web"), ledger.to_plain())


SCHED_FAULTS: dict[str, tuple[Callable[[MemoryStore], None], str]] = {
    "service-address-released": (service_address_released, r"service .*s1: its address 10\.96\.0\.0 is not held"),
    "node-pod-cidr-released": (node_pod_cidr_released, r"node n1: its pod CIDR 10\.244\.0\.0/24 is not held"),
    "node-capacity-differs": (node_capacity_differs, r"node n1: record and object disagree on capacity"),
    "default-requests-stale": (default_requests_stale, r"ledger acme/web: cached default requests \[1, 2\]"),
    "node-capacity-exceeded": (node_capacity_exceeded, r"capacity exceeded"),
    "node-usage-off": (node_usage_off, r"node n1: record says"),
    "ledger-usage-off": (ledger_usage_off, r"ledger acme/web: says"),
    "usage-over-quota": (usage_over_quota, r"cpuMillis \d+ exceeds the quota's 100"),
    "cached-limits-stale": (cached_limits_stale, r"cached limits"),
    "pod-address-outside-node": (pod_address_outside_node, r"outside node"),
    "pod-addresses-shared": (pod_addresses_shared, r"share address"),
    "pod-address-not-held": (pod_address_not_held, r"is not marked taken on node"),
    "pod-addresses-miscounted": (pod_addresses_miscounted, r"pod addresses are marked taken for \d+ bound pods"),
    "pod-addresses-first-free": (pod_addresses_first_free, r"does not hold back the first address"),
    "pod-addresses-of-another-cidr": (pod_addresses_of_another_cidr, r"its address set is of"),
    "pod-address-cursor-outside": (pod_address_cursor_outside, r"cursor \[256\] is not an offset in the CIDR"),
    "stray-node-allocator": (stray_node_allocator, r"allocator state [0-9a-f]+ has no pool"),
    "queue-entry-lost": (queue_entry_lost, r"pending queue holds"),
    "pending-count-off": (pending_count_off, r"counts \d+ pending pods"),
    "nomination-one-sided": (nomination_one_sided, r"nominates node n2, which does not name it"),
    "nomination-priority-differs": (nomination_priority_differs, r"reservation's priority differs"),
    "node-index-entry-lost": (node_index_entry_lost, r"pods-by-node index"),
    "node-count-off": (node_count_off, r"counts \d+ nodes"),
    "service-address-repointed": (service_address_repointed, r"does not point back"),
}


def test_scheduler_state_is_sound() -> None:
    check_invariants(_sched_machine().store)


@pytest.mark.parametrize("fault", list(SCHED_FAULTS.values()), ids=list(SCHED_FAULTS))
def test_planted_scheduler_fault_is_detected(fault: tuple[Callable[[MemoryStore], None], str]) -> None:
    plant, expected = fault
    store = _sched_machine().store
    before = digest(store)
    plant(store)
    assert digest(store) != before, "the fault changed nothing"
    with pytest.raises(InvariantViolation, match=expected):
        check_invariants(store)


def test_a_scheduling_record_of_an_earlier_build_keeps_its_reservation_against_every_pod() -> None:
    """Records written before nominations had a priority end at nominee_memory; their
    reservations held against every pod, so they decode with the highest priority."""
    earlier = [b"uid", True, True, 2000, 1 << 30, 4, 1000, 0, 1, {}, [], b"pod/acme/web/default/w", 1000, 0]
    state = nodes.NodeState.from_plain(earlier)
    assert state.nominee_priority == nodes.EARLIER_NOMINEE_PRIORITY
    needs_of_a_top_priority_pod = pods.Needs(500, 0, (), (), (), None, (1 << 31) - 1)
    assert scheduler.fit(state, needs_of_a_top_priority_pod, None) == scheduler.INSUFFICIENT_CPU
    without_nominee = nodes.NodeState.from_plain([*earlier[:11], None, 0, 0])
    assert without_nominee.nominee_priority == 0
    assert scheduler.fit(without_nominee, needs_of_a_top_priority_pod, None) is None
    assert nodes.NodeState.from_plain(state.to_plain()).to_plain() == state.to_plain()


def _without_reservation(machine: Machine, name: str) -> None:
    key = keys.pool_key("", "", name)
    pool = dict(codec.loads(machine.store.get(key) or b""))
    pool["status"] = {field: value for field, value in pool["status"].items() if field != "allowedOrgs"}
    _put(machine.store, key, pool)


def test_a_reserved_pool_stored_by_an_earlier_build_passes_but_a_child_that_lost_it_does_not() -> None:
    """Pools stored before reservations have no status.allowedOrgs and stay open; a platform
    child of a pool that has one was made by a build that reserves, so it must have one too."""
    machine = Machine(check_every_step=True)
    restricted = {"ipFamily": "IPv4", "visibility": "restricted", "allowedOrgs": ["acme"]}
    machine.ok(ADMIN, "class.create", {"name": "acme-only", "spec": restricted})
    machine.ok(ADMIN, "pool.create", {"name": "old", "spec": {"cidr": "10.1.0.0/16", "classNames": ["acme-only"]}})
    machine.ok(ADMIN, "pool.create", {"name": "new", "spec": {"cidr": "10.2.0.0/16", "classNames": ["acme-only"]}})
    machine.ok(ADMIN, "pool.create", {"name": "kid", "spec": {"parentPool": "new", "prefixLength": 24}})
    _without_reservation(machine, "old")
    check_invariants(machine.store)
    _without_reservation(machine, "kid")
    with pytest.raises(InvariantViolation, match=r"pool kid is reserved for None, but .* reserve it for \['acme'\]"):
        check_invariants(machine.store)


def _with_cidr_allocator(store: MemoryStore, name: str) -> None:
    """Rewrite node `name` as builds before 2026-12-07 kept it: its pod CIDR in a buddy
    allocator of its own (a state record, free-block records, a used-block record per bound
    pod), and its scheduling record without the address set (15 fields)."""
    state = _node_state(store, name)
    assert state.pod_addresses is not None
    family, first, length = state.pod_addresses[:3]
    overlay = Overlay(store)
    own = PoolState.new(state.uid, Block(family, first, length))
    buddy.init_free(overlay, own)
    assert buddy.claim_block(overlay, own, Block(family, first, FAMILY_BITS[family]), OWNER_RESERVED)
    own.reserved += 1
    for pod_key, pod in _pods(store):
        if pod["spec"]["nodeName"] == name and pod["status"]["phase"] == "Bound":
            assert buddy.claim_block(overlay, own, parse_address(pod["status"]["podIP"], "podIP"), pod_key)
            own.allocated += 1
            own.allocations += 1
    overlay.put(buddy.state_key(state.uid), codec.dump_record(own.to_plain()))
    store.apply_writes(overlay.writes())
    _put(store, keys.node_state_key(name), state.to_plain()[:15])


def test_a_node_of_an_earlier_build_keeps_its_own_cidr_allocator() -> None:
    """Nodes registered before 2026-12-07 keep their pod CIDR's buddy allocator: binding,
    unbinding, draining and deleting such a node use it, and the invariants hold throughout."""
    machine = _sched_machine()
    _with_cidr_allocator(machine.store, "n1")
    check_invariants(machine.store)
    assert _node_state(machine.store, "n1").pod_addresses is None
    on_n1 = [pod for _, pod in _pods(machine.store) if pod["spec"]["nodeName"] == "n1"]
    held = {pod["status"]["podIP"] for pod in on_n1}
    spec = {"requests": {"cpuMillis": 10}}
    placed = machine.ok(ACME, "pod.create", {"name": "on-n1", "spec": spec, "plan": {"nodeName": "n1"}})
    assert placed["spec"]["nodeName"] == "n1" and placed["status"]["podIP"] not in held
    freed = min(held, key=lambda address: tuple(map(int, address.split("."))))
    gone = next(pod for pod in on_n1 if pod["status"]["podIP"] == freed)["metadata"]
    machine.ok(member(gone["org"], gone["project"]), "pod.delete", {"name": gone["name"]})
    again = machine.ok(ACME, "pod.create", {"name": "again", "spec": spec, "plan": {"nodeName": "n1"}})
    assert again["status"]["podIP"] == freed  # the lowest free address, from the earlier build's allocator
    assert _node_state(machine.store, "n1").pod_addresses is None
    uid = _node_state(machine.store, "n1").uid
    assert machine.store.get(buddy.state_key(uid)) is not None
    machine.ok(ADMIN, "node.drain", {"name": "n1"})
    machine.ok(ADMIN, "node.delete", {"name": "n1"})
    assert machine.store.get(buddy.state_key(uid)) is None  # the allocator went with the node


def test_a_nomination_recorded_by_an_earlier_build_passes_the_invariants() -> None:
    """Written before nominations had a priority: decoded with the highest one, and saved again
    so when the node is rewritten; both are valid states."""
    machine = _sched_machine()
    _with_cidr_allocator(machine.store, "n2")
    state = _node_state(machine.store, "n2")
    assert state.nominee is not None
    _put(machine.store, keys.node_state_key("n2"), state.to_plain()[:14])
    check_invariants(machine.store)
    assert _node_state(machine.store, "n2").nominee_priority == nodes.EARLIER_NOMINEE_PRIORITY
    _save_node_state(machine.store, "n2", _node_state(machine.store, "n2"))  # rewritten: 16 fields
    check_invariants(machine.store)


def test_an_address_set_of_an_earlier_build_rotates_from_the_start() -> None:
    """Address sets written by builds before 1e93455 (2026-12-07) have no rotation cursor: binding on such a node
    goes on from the CIDR's start (its lowest free address) and writes the cursor, and both
    records pass the invariants."""
    machine = _sched_machine()
    state = _node_state(machine.store, "n1")
    assert state.pod_addresses is not None
    held = state.pod_addresses[3]
    state.pod_addresses = state.pod_addresses[:4]
    _save_node_state(machine.store, "n1", state)
    check_invariants(machine.store)
    lowest_free = (~held & (held + 1)).bit_length() - 1
    pod = machine.ok(
        ACME, "pod.create", {"name": "late", "spec": {"requests": {"cpuMillis": 10}}, "plan": {"nodeName": "n1"}}
    )
    assert pod["spec"]["nodeName"] == "n1"
    assert pod["status"]["podIP"] == f"10.244.0.{lowest_free}"
    assert _node_state(machine.store, "n1").pod_addresses == [
        *state.pod_addresses[:3],
        held | 1 << lowest_free,
        lowest_free,
    ]


def test_a_large_pod_cidr_rotates_within_four_times_the_node_capacity() -> None:
    """An IPv6 /64 has 2^64 addresses; the rotation walks max(256, 4 x capacity.pods) of them,
    so the bit set stays small, and wraps to the start after that."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods6", "spec": {"cidr": "fd00:10::/56"}})
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 2}
    machine.ok(ADMIN, "node.register", {"name": "v6", "spec": {"capacity": capacity, "podPool": "pods6"}})
    state = _node_state(machine.store, "v6")
    assert state.pod_addresses is not None
    state.pod_addresses = [*state.pod_addresses[:4], nodes.pod_address_span_min - 2]  # as after 254 binds
    _save_node_state(machine.store, "v6", state)
    addresses = [
        machine.ok(ACME, "pod.create", {"name": f"p{index}", "spec": {"requests": {"cpuMillis": 10}}})["status"][
            "podIP"
        ]
        for index in range(2)
    ]
    assert addresses == ["fd00:10::ff", "fd00:10::1"]


def test_a_node_record_of_an_earlier_build_times_its_pods_from_its_first_update() -> None:
    """Builds before 318fcb3 (2026-12-07) kept no taint eviction times (a 16-field node record,
    empty pods-by-node index values): such a node's pods are not timed, and the invariants
    accept that, until node.update times them all; then the leader's node.evict_tainted sends
    the pod away when its tolerationSeconds run out."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    taint = {"key": "batch", "value": "", "effect": "NoExecute"}
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 4}
    for name, taints in (("n1", [taint]), ("n2", [])):
        machine.ok(
            ADMIN, "node.register", {"name": name, "spec": {"capacity": capacity, "podPool": "pods", "taints": taints}}
        )
    machine.ok(ADMIN, "node.cordon", {"name": "n2"})
    toleration = {"key": "batch", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}
    spec = {"requests": {"cpuMillis": 10}, "tolerations": [toleration]}
    assert machine.ok(ACME, "pod.create", {"name": "job", "spec": spec})["spec"]["nodeName"] == "n1"
    job = keys.pod_key("acme", "web", "default", "job")
    index_key = keys.pod_on_node_key("n1", job)
    state = _node_state(machine.store, "n1")
    assert state.taint_eviction_ms is not None and machine.store.get(index_key) == nodes.index_value(
        state.taint_eviction_ms
    )
    _put(machine.store, keys.node_state_key("n1"), [*state.to_plain()[:16], [[1_000, job]]])  # 318fcb3's list
    assert _node_state(machine.store, "n1").taint_eviction_ms == nodes.UNTIMED
    _put(machine.store, keys.node_state_key("n1"), state.to_plain()[:16])
    machine.store.apply_writes([(index_key, b"")])
    assert _node_state(machine.store, "n1").taint_eviction_ms == nodes.UNTIMED
    check_invariants(machine.store)
    machine.ok(ADMIN, "node.uncordon", {"name": "n2"})
    machine.ok(
        ADMIN, "node.update", {"name": "n1", "metadata": {"labels": {"pool": "batch"}}, "spec": {"unschedulable": True}}
    )
    timed_ms = _node_state(machine.store, "n1").taint_eviction_ms
    assert timed_ms is not None and timed_ms > 0 and machine.store.get(index_key) == nodes.index_value(timed_ms)
    outcome = machine.run(ADMIN, "node.evict_tainted", {"name": "n1"}, advance_ms=61_000)
    assert isinstance(outcome.result, Ok) and outcome.result.value["status"]["evictedPods"] == 1
    assert outcome.result.value["status"]["nextTaintEvictionMillis"] is None
    assert _load(machine.store, job)["spec"]["nodeName"] == "n2"


def test_a_node_shows_its_builtin_labels_and_one_of_an_earlier_build_gains_them_when_labelled() -> None:
    """The Node object carries kubernetes.io/hostname and topology.kubernetes.io/zone, which do
    not count against the label limit; builds before 2026-12-07 stored the object without them
    (the filters saw them all along), and such a node gains them at its first label change."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    own = {f"l{index:02}": "x" for index in range(fields.labels_max)}
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 4}
    body = {"name": "n1", "labels": own, "spec": {"capacity": capacity, "podPool": "pods", "zone": "a"}}
    builtin = {nodes.HOSTNAME_LABEL: "n1", nodes.ZONE_LABEL: "a"}
    assert machine.ok(ADMIN, "node.register", body)["metadata"]["labels"] == {**own, **builtin}
    full = machine.refused(ADMIN, "node.update", {"name": "n1", "metadata": {"labels": {"extra": "y"}}})
    assert f"the node would have {fields.labels_max + 1} labels after this patch" in full.message, full
    swapped = machine.ok(ADMIN, "node.update", {"name": "n1", "metadata": {"labels": {"l00": None, "extra": "y"}}})
    assert swapped["metadata"]["labels"] == {
        key: value for key, value in {**own, **builtin, "extra": "y"}.items() if key != "l00"
    }

    node_key = keys.node_key("n1")
    stored = _load(machine.store, node_key)
    stored["metadata"]["labels"] = {
        key: value for key, value in stored["metadata"]["labels"].items() if key not in builtin
    }
    _put(machine.store, node_key, stored)  # as an earlier build stored it
    check_invariants(machine.store)
    before = machine.store.get(node_key)
    machine.ok(ADMIN, "node.register", {**body, "labels": stored["metadata"]["labels"]})
    assert machine.store.get(node_key) == before, "the same registration again changes nothing"
    relabelled = machine.ok(ADMIN, "node.update", {"name": "n1", "metadata": {"labels": {"l01": None}}})
    assert relabelled["metadata"]["labels"] == {
        key: value for key, value in {**own, **builtin, "extra": "y"}.items() if key not in ("l00", "l01")
    }
    # Registering again with the labels as read (64 own + 2 built-in) is the same registration.
    before = machine.store.get(node_key)
    machine.ok(ADMIN, "node.register", {**body, "labels": relabelled["metadata"]["labels"]})
    assert machine.store.get(node_key) == before

    # A long name: its hostname label is longer than a label value may be; given back as read,
    # it is the derived value, so the registration stands.
    long_name = "a" * 100 + ".example.internal"
    long_body = {"name": long_name, "spec": {"capacity": capacity, "podPool": "pods"}}
    long_node = machine.ok(ADMIN, "node.register", long_body)
    assert long_node["metadata"]["labels"] == {nodes.HOSTNAME_LABEL: long_name}
    machine.ok(ADMIN, "node.register", {**long_body, "labels": long_node["metadata"]["labels"]})
    # Without spec.zone, a zone label is the node's own: a patch may set it.
    zoned = machine.ok(ADMIN, "node.update", {"name": long_name, "metadata": {"labels": {nodes.ZONE_LABEL: "b"}}})
    assert zoned["metadata"]["labels"] == {nodes.HOSTNAME_LABEL: long_name, nodes.ZONE_LABEL: "b"}

    # An earlier build took a zone label other than spec.zone; that node registers again as it is.
    _put(
        machine.store,
        keys.node_key("n1"),
        {**stored, "metadata": {**stored["metadata"], "labels": {nodes.ZONE_LABEL: "c"}}},
    )
    node_state = _node_state(machine.store, "n1")
    node_state.labels = nodes.matching_labels("n1", {nodes.ZONE_LABEL: "c"}, "a")
    _save_node_state(machine.store, "n1", node_state)
    check_invariants(machine.store)
    machine.ok(ADMIN, "node.register", {**body, "labels": {nodes.ZONE_LABEL: "c"}})
    refused = machine.refused(ADMIN, "node.register", {**body, "name": "n2", "labels": {nodes.ZONE_LABEL: "c"}})
    assert "but spec.zone is 'a'" in refused.message, refused


def test_a_timed_pod_that_leaves_early_costs_one_proposal_that_evicts_nothing() -> None:
    """Deleting the pod with the earliest time leaves the node's earliest time early (an
    unbind does not recompute it); node.evict_tainted then evicts nothing and sets it right."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 4}
    taints = [{"key": "batch", "value": "", "effect": "NoExecute"}]
    machine.ok(
        ADMIN, "node.register", {"name": "n1", "spec": {"capacity": capacity, "podPool": "pods", "taints": taints}}
    )
    for name, seconds in (("short", 30), ("long", 90)):
        toleration = {"key": "batch", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
        machine.ok(
            ACME, "pod.create", {"name": name, "spec": {"requests": {"cpuMillis": 10}, "tolerations": [toleration]}}
        )
    short_ms = _node_state(machine.store, "n1").taint_eviction_ms
    machine.ok(ACME, "pod.delete", {"name": "short"})
    assert _node_state(machine.store, "n1").taint_eviction_ms == short_ms  # early now
    outcome = machine.run(ADMIN, "node.evict_tainted", {"name": "n1"}, advance_ms=40_000)
    assert isinstance(outcome.result, Ok) and outcome.result.value["status"]["evictedPods"] == 0
    long_ms = outcome.result.value["status"]["nextTaintEvictionMillis"]
    assert long_ms is not None and short_ms is not None and long_ms == short_ms - 30_000 + 1000 + 90_000
    assert _node_state(machine.store, "n1").taint_eviction_ms == long_ms
    again = machine.run(ADMIN, "node.evict_tainted", {"name": "n1"})
    assert isinstance(again.result, Ok) and again.result.value["status"]["evictedPods"] == 0
    assert not [key for key, _ in again.writes if key.startswith(keys.NODE_STATE)]  # right already: not rewritten
