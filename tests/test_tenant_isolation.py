"""One tenant neither sees nor holds what is another's (code review, 2026-12-08).

Watch events show another tenant no more than reads do, and a tenant's node reservations stay
within its quota.

Every tenant may watch nodes and its org's quotas. Reads render a node's nominated pod only to
the platform and to the pod's own project, and an org quota's usage by pool only with the
reader's own pools; DELETED events were stored rendered for the platform, so a tenant's watch
named another tenant's pod (a node deleted while it held a nomination) and sibling projects'
pools (an org quota deleted).
"""

from __future__ import annotations

from statemachine.context import Meta
from statemachine.queries import events_after, get
from tests.harness import ADMIN, Machine, member

ACME_WEB = member("acme", "web")
ACME_DB = member("acme", "db")
GLOBEX = member("globex", "api")


def _node(machine: Machine, name: str) -> None:
    capacity = {"cpuMillis": 1000, "memoryBytes": 1 << 30, "pods": 10}
    machine.ok(ADMIN, "node.register", {"name": name, "spec": {"capacity": capacity, "podPool": "pods"}})


def test_a_deleted_nodes_event_does_not_name_another_tenants_nominated_pod() -> None:
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/16", "visibility": "internal"}})
    _node(machine, "n0")
    _node(machine, "n1")
    for name in ("b0", "b1"):
        machine.ok(GLOBEX, "pod.create", {"name": name, "spec": {"requests": {"cpuMillis": 600}}})
    machine.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 600}})
    pod = machine.ok(ACME_WEB, "pod.create", {"name": "secret-pod-name", "spec": {"requests": {"cpuMillis": 600}}})
    assert pod["status"]["nominatedNodeName"] == "n0"
    machine.ok(ACME_WEB, "pod.create", {"name": "q", "spec": {"requests": {"cpuMillis": 300}}})  # uses acme's quota
    machine.ok(GLOBEX, "pod.delete", {"name": "b0"})  # n0 is free; the nominee is held back by its quota
    assert "nominatedPod" not in get(machine.store, GLOBEX, "nodes", "n0")["status"], "reads hide it"
    assert "nominatedPod" in get(machine.store, ADMIN, "nodes", "n0")["status"], "from the platform too otherwise"
    start = Meta.load(machine.store).revision
    machine.ok(ADMIN, "node.delete", {"name": "n0"})
    for reader in (GLOBEX, ACME_WEB, ADMIN):
        events, _ = events_after(machine.store, reader, start, ("nodes",))
        assert [event["type"] for event in events] == ["DELETED"]
        assert "nominatedPod" not in events[0]["object"]["status"], (reader, events[0]["object"]["status"])


def test_a_deleted_org_quotas_event_does_not_name_its_projects_pools() -> None:
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pub", "spec": {"cidr": "10.7.0.0/24"}})
    machine.ok(ACME_DB, "pool.create", {"name": "db-private", "spec": {"parentPool": "pub", "prefixLength": 28}})
    machine.ok(ADMIN, "quota.set", {"name": "acme", "spec": {"services": 10}})
    machine.ok(ACME_DB, "service.create", {"name": "s", "spec": {"poolRef": "db-private"}})
    read = get(machine.store, ACME_WEB, "quotas", "acme")
    assert "acme/db/db-private" not in read["status"]["used"]["addressesByPool"], "reads hide it"
    start = Meta.load(machine.store).revision
    answer = machine.ok(ADMIN, "quota.delete", {"name": "acme"})
    assert answer["status"]["used"]["services"] == 1, "the platform's answer shows the usage"
    events, _ = events_after(machine.store, ACME_WEB, start, ("quotas",))
    assert [event["type"] for event in events] == ["DELETED"]
    assert "acme/db/db-private" not in str(events[0]["object"]), events[0]["object"]


def test_a_tenants_reservations_stay_within_its_quota() -> None:
    """Code review, 2026-12-08: each pending pod that fit its quota alone reserved a node
    (a nomination), so four pods of a project whose quota allowed one reserved four nodes, and
    another tenant's small pod found no room on any of them. A project's reservations with its
    usage now stay within its quota."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/16", "visibility": "internal"}})
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 10}
    for number in range(4):
        machine.ok(ADMIN, "node.register", {"name": f"n{number}", "spec": {"capacity": capacity, "podPool": "pods"}})
        placed = machine.ok(GLOBEX, "pod.create", {"name": f"b{number}", "spec": {"requests": {"cpuMillis": 3000}}})
        assert placed["spec"]["nodeName"] == f"n{number}"
    machine.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 2000}})
    nominated = [
        machine.ok(ACME_WEB, "pod.create", {"name": f"a{number}", "spec": {"requests": {"cpuMillis": 2000}}})["status"][
            "nominatedNodeName"
        ]
        for number in range(4)
    ]
    assert nominated == ["n0", None, None, None], "one pod's worth of reservations: what the quota allows"
    small = machine.ok(GLOBEX, "pod.create", {"name": "small", "spec": {"requests": {"cpuMillis": 500}}})
    assert small["spec"]["nodeName"] == "n1", small["status"]
    # Without a quota a tenant's pending pods reserve as before (as Kubernetes nominates).
    machine.ok(ADMIN, "quota.delete", {"name": "acme/web"})
    machine.ok(ADMIN, "scheduler.retry", {"pods": 16})
    held = [get(machine.store, ACME_WEB, "pods", f"a{number}")["status"]["nominatedNodeName"] for number in range(4)]
    assert held.count(None) < 3, held


def test_a_higher_priority_pod_takes_over_its_projects_reservation_under_a_quota() -> None:
    """The reservations a pod may hold count its project's other nominees, but not the one it
    displaces: counted, a higher-priority pod of a project at its quota never took a
    lower-priority sibling's reservation over, and the sibling bound first (second review)."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/16", "visibility": "internal"}})
    capacity = {"cpuMillis": 4000, "memoryBytes": 1 << 30, "pods": 10}
    machine.ok(ADMIN, "node.register", {"name": "n0", "spec": {"capacity": capacity, "podPool": "pods"}})
    machine.ok(GLOBEX, "pod.create", {"name": "big", "spec": {"requests": {"cpuMillis": 3000}}})
    machine.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 2000}})
    low = machine.ok(ACME_WEB, "pod.create", {"name": "low", "spec": {"priority": 1, "requests": {"cpuMillis": 2000}}})
    assert low["status"]["nominatedNodeName"] == "n0"
    high = machine.ok(
        ACME_WEB, "pod.create", {"name": "high", "spec": {"priority": 100, "requests": {"cpuMillis": 2000}}}
    )
    assert high["status"]["nominatedNodeName"] == "n0", "the higher-priority pod takes the reservation over"
    assert get(machine.store, ACME_WEB, "pods", "low")["status"]["nominatedNodeName"] is None
    machine.ok(GLOBEX, "pod.delete", {"name": "big"})  # room for one of them: the nominee binds
    bound = {name: get(machine.store, ACME_WEB, "pods", name)["spec"]["nodeName"] for name in ("low", "high")}
    assert bound == {"low": None, "high": "n0"}, bound


def test_a_higher_priority_pod_at_its_quota_takes_a_siblings_reservation_while_a_free_node_exists() -> None:
    """QA, 2026-12-08: with a node nobody reserved, the free node was the only one tried; the
    quota refused it (the siblings' reservations fill the quota) and taking a lower-priority
    sibling's reservation over was never tried, so that sibling bound first."""
    machine = Machine(check_every_step=True)
    machine.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/16", "visibility": "internal"}})
    capacity = {"cpuMillis": 1000, "memoryBytes": 1 << 30, "pods": 10}
    for number in range(3):
        machine.ok(ADMIN, "node.register", {"name": f"n{number}", "spec": {"capacity": capacity, "podPool": "pods"}})
        for size in (500, 400):
            machine.ok(GLOBEX, "pod.create", {"name": f"g{number}-{size}", "spec": {"requests": {"cpuMillis": size}}})
    machine.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 1000}})
    low = {"priority": 0, "requests": {"cpuMillis": 500}}
    held = [machine.ok(ACME_WEB, "pod.create", {"name": name, "spec": low}) for name in ("a0", "a1", "a2")]
    assert [pod["status"]["nominatedNodeName"] for pod in held] == ["n0", "n1", None], "the quota's worth"
    high = machine.ok(ACME_WEB, "pod.create", {"name": "hi", "spec": {"priority": 50, "requests": {"cpuMillis": 500}}})
    assert high["status"]["nominatedNodeName"] == "n0", "a0's reservation, not the free n2 the quota refuses"
    machine.ok(GLOBEX, "pod.delete", {"name": "g0-500"})
    bound = {name: get(machine.store, ACME_WEB, "pods", name)["spec"]["nodeName"] for name in ("a0", "hi")}
    assert bound == {"a0": None, "hi": "n0"}, bound
