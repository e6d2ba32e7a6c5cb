"""Queue order when a node-triggered retry stops at its bound of queue heads.

The quota-triggered case is in tests/scripts/sched_queue_order.txt; this one needs more queue
entries than `scheduler.retry_heads_max` (32), so it lowers that bound instead of creating
33 pods.
"""

from __future__ import annotations

import pytest

from node.memstore import MemoryStore
from statemachine import keys, scheduler
from statemachine.codec import dump_record
from statemachine.queries import list_objects
from statemachine.scheduler import Cluster, plan_pod
from tests.harness import ADMIN, Machine, member

ACME = member("acme", "web")


def _register(machine: Machine, name: str, cpu: int) -> None:
    capacity = {"cpuMillis": cpu, "memoryBytes": 8 << 30, "pods": 16}
    machine.ok(ADMIN, "node.register", {"name": name, "spec": {"capacity": capacity, "podPool": "pods"}})


def _phases(machine: Machine) -> dict[str, str]:
    listed = list_objects(machine.store, ACME, "pods")
    return {pod["metadata"]["name"]: pod["status"]["phase"] for pod in listed["items"]}


def test_capacity_the_head_retry_leaves_goes_to_the_next_oldest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "retry_heads_max", 3)
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    _register(machine, "n1", 1000)
    for number in range(1, 7):  # p1 binds; p2..p6 wait, oldest first
        machine.ok(ACME, "pod.create", {"name": f"p{number}", "spec": {"requests": {"cpuMillis": 1000}}})
    swept = machine.ok(ADMIN, "scheduler.retry", {"pods": 4})  # the cursor now stands after p5
    assert swept["examined"] == 4, swept

    # A node with room for four joins: the apply offers it to the first three queue entries
    # (the lowered bound), which bind; the fourth place must go to p5, the next oldest, not to
    # p6, the next after the sweep cursor.
    _register(machine, "n2", 4000)
    assert [name for name, phase in _phases(machine).items() if phase == "Bound"] == ["p1", "p2", "p3", "p4"]
    machine.ok(ADMIN, "scheduler.retry", {"pods": 1})
    assert _phases(machine) == {
        "p1": "Bound",
        "p2": "Bound",
        "p3": "Bound",
        "p4": "Bound",
        "p5": "Bound",
        "p6": "Pending",
    }


def test_a_drain_does_not_move_the_sweep_cursor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A drain frees no capacity elsewhere: moving the cursor back would only cut short a pass
    walking the queue and spend the walk's one rewind (a code review found it did)."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    _register(machine, "n1", 1000)
    for number in range(1, 12):  # p1 binds; p2..p11 wait
        machine.ok(ACME, "pod.create", {"name": f"p{number}", "spec": {"requests": {"cpuMillis": 1000}}})
    machine.ok(ADMIN, "scheduler.retry", {"pods": 8})
    before = Cluster.load(machine.store)
    machine.ok(ADMIN, "node.drain", {"name": "n1"})  # p1 back to the queue; four full searches from the head
    after = Cluster.load(machine.store)
    assert (after.sweep_cursor, after.sweep_rewind_allowed) == (before.sweep_cursor, before.sweep_rewind_allowed)


def test_a_scheduler_record_from_before_rewinds_decodes() -> None:
    store = MemoryStore()
    store.apply_writes([(keys.SCHEDULER, dump_record([3, 2, "binpack", b"pq/x"]))])
    loaded = Cluster.load(store)
    assert (loaded.nodes, loaded.pending, loaded.policy, loaded.sweep_cursor) == (3, 2, "binpack", b"pq/x")
    assert loaded.sweep_rewind_allowed, "an earlier build's record may be rewound"


def test_the_proposer_ranks_a_pod_at_its_classs_priority() -> None:
    """plan_pod resolves spec.priorityClassName as apply does: a nominee of priority 0 keeps its
    node from a plain pod but not from a pod whose class gives it priority 5."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    _register(machine, "n1", 2000)
    machine.ok(ACME, "pod.create", {"name": "fill", "spec": {"requests": {"cpuMillis": 1000}}})
    waiting = machine.ok(ACME, "pod.create", {"name": "wide", "spec": {"requests": {"cpuMillis": 2000}}})
    assert waiting["status"]["nominatedNodeName"] == "n1"
    machine.ok(ADMIN, "priorityclass.create", {"name": "urgent", "spec": {"value": 5}})
    small = {"requests": {"cpuMillis": 500}}
    assert plan_pod(machine.store, small, ACME) is None
    assert plan_pod(machine.store, {**small, "priorityClassName": "urgent"}, ACME) == "n1"
    assert plan_pod(machine.store, {**small, "priorityClassName": "missing"}, ACME) is None
