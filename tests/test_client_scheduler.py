"""The client's scheduler half (nodes, pods, services, quotas, the scheduler) against a real
three-member cluster (chaos.cluster), with the sync `Client`, the `AsyncClient` for a few calls,
and the `allot node|pod|service|quota|scheduler` commands.

One cluster for the module, started with a node grace period far longer than the module runs,
so nodes stay Ready without a heartbeat thread. Nodes are cluster-wide, so every test registers
its own nodes with its own `suite` label and its pods select that label; each test acts for its
own tenant (the admin token with `as_tenant`), so its pod lists hold only its pods. Waits poll
with deadlines; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.cluster import Cluster, wait_until
from client import (
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    Node,
    NodeHeartbeat,
    NodeResources,
    NotFound,
    Pod,
    PriorityClass,
    Quota,
    QuotaExceeded,
    RequestRefused,
    SchedulerStatus,
    Service,
    ServicePort,
    Taint,
    WatchEvent,
)
from client import cli as client_cli
from client.core import IPCLAIMS, IPCLASSES, MEDIA_TYPE_MERGE_PATCH, PODS, QUOTAS, RequestFactory
from node.cli import main as node_cli_main
from tests.test_client_cli import allot as allot_process
from tests.test_client_cli import ok as process_ok

node_grace_s = 3600  # no node turns NotReady while the module runs: no heartbeat thread needed
change_wait_s = 15.0  # a pod bound by a retry, a watch event
GIB = 1 << 30
MIB = 1 << 20
POD_POOL = "pods"
POD_POOL_CIDR = "10.64.0.0/16"
SERVICE_POOL = "svc"
SERVICE_POOL_CIDR = "10.96.0.0/24"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALLOT_NODE_GRACE_SECONDS", str(node_grace_s))  # the members inherit it
        with Cluster() as running:
            yield running


def endpoints_of(cluster: Cluster) -> list[str]:
    return [f"http://{cluster.address(member_id)}" for member_id in cluster.member_ids]


@pytest.fixture(scope="module")
def admin(cluster: Cluster) -> Iterator[Client]:
    """The admin client, with the platform pools pods and services take addresses from."""
    with Client(endpoints_of(cluster), cluster.admin_token) as client:
        client.ippools.create(POD_POOL, {"cidr": POD_POOL_CIDR})
        client.ippools.create(SERVICE_POOL, {"cidr": SERVICE_POOL_CIDR})
        yield client


def register(admin: Client, name: str, suite: str, *, cpu_millis: int = 4000, pods: int = 10) -> Node:
    spec = {"capacity": {"cpuMillis": cpu_millis, "memoryBytes": 8 * GIB, "pods": pods}, "podPool": POD_POOL}
    return admin.nodes.create(name, spec, labels={"suite": suite})


def pod_spec(suite: str, cpu_millis: int = 500, **extra: Any) -> dict[str, Any]:
    return {"requests": {"cpuMillis": cpu_millis, "memoryBytes": 256 * MIB}, "nodeSelector": {"suite": suite}, **extra}


def names(items: Any) -> list[str]:
    return sorted(item.name for item in items)


def in_network(address: str | None, cidr: str | None) -> bool:
    assert address is not None and cidr is not None
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)


# ---- the library -------------------------------------------------------------------------------


def test_nodes_register_and_pods_come_back_bound_with_an_ip(admin: Client, cluster: Cluster) -> None:
    first, second = register(admin, "bind-1", "bind"), register(admin, "bind-2", "bind")
    for node in (first, second):
        assert isinstance(node, Node) and node.ready and not node.unschedulable
        assert node.capacity == NodeResources(4000, 8 * GIB, 10)
        assert node.status.allocated == NodeResources(0, 0, 0) and node.available == node.capacity
        assert node.pod_cidr is not None and node.status.pod_pool == POD_POOL
        assert ipaddress.IPv4Network(node.pod_cidr).subnet_of(ipaddress.IPv4Network(POD_POOL_CIDR))
    assert first.pod_cidr != second.pod_cidr
    assert {"bind-1", "bind-2"} <= {node.name for node in admin.nodes.list(label_selector="suite=bind")}
    assert register(admin, "bind-1", "bind").metadata.uid == first.metadata.uid, "the same spec again is the node"

    tenant = admin.as_tenant("sched", "bind")
    pod = tenant.pods.create("web-1", pod_spec("bind"), labels={"app": "web"})
    assert isinstance(pod, Pod) and pod.bound and pod.phase == "Bound" and pod.pending_reason is None
    assert pod.node_name == "bind-1", "spread on equal nodes: the lowest name"
    assert in_network(pod.pod_ip, first.pod_cidr)
    assert pod.metadata.tenant == "sched/bind" and pod.metadata.namespace == "default"
    assert tenant.pods.get("web-1") == pod
    used = admin.nodes.get("bind-1")
    assert used.status.allocated == NodeResources(500, 256 * MIB, 1)
    assert used.available == NodeResources(3500, 8 * GIB - 256 * MIB, 9)

    other = tenant.pods.create("web-2", pod_spec("bind"), labels={"app": "web"})
    assert other.node_name == "bind-2" and in_network(other.pod_ip, second.pod_cidr), "spread: the emptier node"
    assert names(tenant.pods.list(field_selector="spec.nodeName=bind-1")) == ["web-1"]
    assert names(tenant.pods.list(field_selector="status.phase=Bound", label_selector="app=web")) == [
        "web-1",
        "web-2",
    ]
    assert names(tenant.pods.list(field_selector="spec.nodeName=bind-2,status.phase=Bound", page_size=1)) == ["web-2"]

    elsewhere = tenant.pods.create("web-1", pod_spec("bind"), namespace="blue")
    assert elsewhere.metadata.namespace == "blue" and elsewhere.metadata.uid != pod.metadata.uid
    assert tenant.pods.get("web-1", namespace="blue").pod_ip == elsewhere.pod_ip != pod.pod_ip

    repeated = [tenant.pods.create("web-3", pod_spec("bind"), idempotency_key="bind-web-3") for _ in range(2)]
    assert repeated[0] == repeated[1], "a write repeated with its key answers with the first result"

    beat = admin.nodes.heartbeat("bind-1")
    assert isinstance(beat, NodeHeartbeat) and beat.name == "bind-1" and beat.ready is True
    assert beat.member_id in cluster.member_ids
    with pytest.raises(NotFound):
        admin.nodes.heartbeat("no-such-node")

    deleted = tenant.pods.delete("web-1")
    assert deleted.name == "web-1" and deleted.pod_ip == pod.pod_ip
    with pytest.raises(NotFound):
        tenant.pods.get("web-1")
    left = [admin.nodes.get(name).status.allocated for name in ("bind-1", "bind-2")]
    assert sum(used.pods for used in left if used is not None) == 3, "web-2, blue/web-1 and web-3 stay bound"


def test_a_pod_that_fits_nowhere_is_pending_and_says_why(admin: Client) -> None:
    register(admin, "pending-1", "pending")
    tenant = admin.as_tenant("sched", "pending")
    pod = tenant.pods.create("stuck", pod_spec("nowhere"))
    assert pod.phase == "Pending" and not pod.bound and pod.node_name is None and pod.pod_ip is None
    assert pod.pending_reason == "Unschedulable"
    assert pod.status.message is not None and "node selector mismatch" in pod.status.message
    assert names(tenant.pods.list(field_selector="status.phase=Pending")) == ["stuck"]
    assert names(tenant.pods.list(field_selector="status.phase=Bound")) == []
    assert names(tenant.pods.list(field_selector="spec.nodeName=")) == ["stuck"], "an empty value: not bound"
    admin.as_tenant("sched", "pending-elsewhere").pods.create("stuck", pod_spec("nowhere"))
    pending = admin.scheduler.get().pending_pods
    assert pending is not None and pending >= 2
    # Acting for a tenant, the admin sees that project's view, as its own token would (QA,
    # 2026-12-08: the whole queue was shown).
    assert tenant.scheduler.get().pending_pods == 1

    with pytest.raises(Invalid) as bad:
        tenant.pods.list_page(field_selector="spec.schedulerName=default")
    assert bad.value.field == "fieldSelector"
    with pytest.raises(Invalid):
        admin.nodes.list_page(field_selector="spec.nodeName=pending-1")  # only pods have fields to select

    assert tenant.pods.delete("stuck").phase == "Pending"
    assert names(tenant.pods.list()) == []


def test_quota_exceeded_is_a_typed_error_and_a_pending_reason(admin: Client) -> None:
    quota = admin.quotas.set("quota/web", {"cpuMillis": 1000, "pods": 5, "services": 1}, labels={"team": "web"})
    assert isinstance(quota, Quota) and quota.name == "quota/web" and quota.metadata.labels == {"team": "web"}
    assert (quota.spec.cpu_millis, quota.spec.pods, quota.spec.services, quota.spec.memory_bytes) == (1000, 5, 1, None)
    assert quota.used is not None and (quota.used.cpu_millis, quota.used.pods) == (0, 0)
    register(admin, "quota-1", "quota", cpu_millis=8000)
    tenant = admin.as_tenant("quota", "web")

    with pytest.raises(QuotaExceeded) as raised:
        tenant.pods.create("too-big", pod_spec("quota", cpu_millis=2000))
    refusal = raised.value
    assert isinstance(refusal, RequestRefused) and (refusal.code, refusal.status) == ("quota_exceeded", 403)
    assert (refusal.quota, refusal.resource, refusal.limit, refusal.requested) == ("quota/web", "cpuMillis", 1000, 2000)
    assert client_cli.exit_code_for(refusal) == client_cli.EXIT_NO_ROOM

    fits = tenant.pods.create("fits", pod_spec("quota", cpu_millis=800))
    assert fits.bound and fits.node_name == "quota-1"
    waits = tenant.pods.create("waits", pod_spec("quota", cpu_millis=800))
    assert waits.phase == "Pending" and waits.pending_reason == "QuotaExceeded", "it would fit once others go"
    used = admin.quotas.get("quota/web").used
    assert used is not None and (used.cpu_millis, used.pods, used.pending_pods) == (800, 1, 1)
    assert "quota/web" in names(tenant.quotas.list()), "a tenant reads its own quotas"

    service = tenant.services.create("one", {"poolRef": SERVICE_POOL})
    assert in_network(service.address, SERVICE_POOL_CIDR)
    with pytest.raises(QuotaExceeded) as services_full:
        tenant.services.create("two", {"poolRef": SERVICE_POOL})
    assert services_full.value.resource == "services" and services_full.value.used == 1
    with pytest.raises(Conflict):
        admin.quotas.set("quota/web", {"cpuMillis": 500})  # below what is used

    admin.quotas.set("quota/web", {"cpuMillis": 2000, "pods": 5, "services": 1})  # raising it retries the queue
    bound = wait_until("the waiting pod to bind", lambda: tenant.pods.get("waits").bound or None, change_wait_s)
    assert bound

    capped = admin.quotas.set("quota/web", {"cpuMillis": 2000, "pods": 5, "services": 1, "maxPriority": 0})
    assert capped.spec.max_priority == 0 and quota.spec.max_priority is None
    with pytest.raises(QuotaExceeded) as too_urgent:
        tenant.pods.create("urgent", pod_spec("quota", cpu_millis=100, priority=1))
    assert (too_urgent.value.resource, too_urgent.value.limit, too_urgent.value.requested) == ("maxPriority", 0, 1)
    assert admin.quotas.delete("quota/web").name == "quota/web"
    with pytest.raises(NotFound):
        admin.quotas.get("quota/web")


def test_priority_classes_name_the_priorities_pods_get(admin: Client, cluster: Cluster) -> None:
    urgent = admin.priorityclasses.create("urgent", {"value": 1000, "description": "pages someone"})
    assert isinstance(urgent, PriorityClass) and (urgent.spec.value, urgent.spec.global_default) == (1000, False)
    register(admin, "prio-1", "prio", cpu_millis=1000)
    tenant = admin.as_tenant("prio", "web")
    try:
        with Client(endpoints_of(cluster), cluster.tenant_tokens["acme/web"]) as outsider:
            assert "urgent" in names(outsider.priorityclasses.list()), "every tenant reads them"
            with pytest.raises(Forbidden):
                outsider.priorityclasses.create("mine", {"value": 1})
        pod = tenant.pods.create("paged", pod_spec("prio", cpu_millis=100, priorityClassName="urgent"))
        assert (pod.spec.priority, pod.spec.priority_class_name) == (1000, "urgent")
        with pytest.raises(Invalid) as unknown:
            tenant.pods.create("lost", pod_spec("prio", priorityClassName="gold"))
        assert unknown.value.field == "spec.priorityClassName", unknown.value

        admin.priorityclasses.create("everyday", {"value": 7, "globalDefault": True})
        plain = tenant.pods.create("plain", pod_spec("prio", cpu_millis=100))
        assert (plain.spec.priority, plain.spec.priority_class_name) == (7, "everyday")
        with pytest.raises(Conflict):
            admin.priorityclasses.create("another", {"value": 8, "globalDefault": True})
    finally:
        # The module's cluster is shared: its other pods must not get a default class.
        for name in ("everyday", "urgent"):
            with contextlib.suppress(NotFound):
                admin.priorityclasses.delete(name)
    assert tenant.pods.get("paged").spec.priority == 1000, "a deleted class leaves its pods' priority"


def test_cordon_uncordon_drain_and_delete_a_node(admin: Client) -> None:
    register(admin, "cordon-1", "cordon")
    tenant = admin.as_tenant("sched", "cordon")
    before = tenant.pods.create("before", pod_spec("cordon"))
    assert before.node_name == "cordon-1"

    cordoned = admin.nodes.cordon("cordon-1")
    assert isinstance(cordoned, Node) and cordoned.unschedulable and admin.nodes.get("cordon-1").unschedulable
    assert admin.nodes.cordon("cordon-1").unschedulable, "cordoning twice changes nothing"
    during = tenant.pods.create("during", pod_spec("cordon"))
    assert during.pending_reason == "Unschedulable"
    assert during.status.message is not None and "node cordoned" in during.status.message
    assert tenant.pods.get("before").bound, "a cordon keeps the bound pods"

    assert not admin.nodes.uncordon("cordon-1").unschedulable
    wait_until("the pending pod to bind after uncordon", lambda: tenant.pods.get("during").bound or None, change_wait_s)
    with pytest.raises(Conflict):
        admin.nodes.delete("cordon-1")  # pods are bound to it: drain first

    drained = admin.nodes.drain("cordon-1")
    assert drained.unschedulable and drained.status.evicted_pods == 2
    evicted = tenant.pods.get("before")
    assert evicted.phase == "Pending" and evicted.status.evicted_from == "cordon-1"
    assert evicted.node_name is None and evicted.pod_ip is None
    assert names(tenant.pods.list(field_selector="spec.nodeName=cordon-1")) == []
    assert admin.nodes.get("cordon-1").status.allocated == NodeResources(0, 0, 0)

    assert admin.nodes.delete("cordon-1").name == "cordon-1"
    with pytest.raises(NotFound):
        admin.nodes.get("cordon-1")


MAINTENANCE = Taint("maintenance", "now", "NoExecute")
TOLERATES_MAINTENANCE = [{"key": "maintenance", "operator": "Exists", "effect": "NoExecute"}]


def test_node_update_is_a_merge_patch_sent_as_a_write() -> None:
    factory = RequestFactory("t0ken").for_tenant("acme", "web")
    request = factory.node_update(
        "n1", labels={"disk": "ssd", "old": None}, taints=[MAINTENANCE], unschedulable=True, idempotency_key="k-1"
    )
    assert (request.method, request.path, request.query) == ("PATCH", "/v1/nodes/n1", ()), "a platform write: no tenant"
    assert request.write and request.idempotency_key == "k-1" and request.header("Idempotency-Key") == "k-1"
    assert request.header("Content-Type") == MEDIA_TYPE_MERGE_PATCH == "application/merge-patch+json"
    assert request.body is not None and json.loads(request.body) == {
        "metadata": {"labels": {"disk": "ssd", "old": None}},
        "spec": {"taints": [{"key": "maintenance", "value": "now", "effect": "NoExecute"}], "unschedulable": True},
    }
    only_taints = factory.node_update("n1", taints=[])
    assert only_taints.body is not None and json.loads(only_taints.body) == {"spec": {"taints": []}}
    assert only_taints.idempotency_key is not None, "a key is made for every write"
    assert json.loads(factory.node_update("n1", unschedulable=False).body or b"") == {"spec": {"unschedulable": False}}
    conditional = factory.node_update("n1", labels={"disk": "ssd"}, resource_version=42)
    assert json.loads(conditional.body or b"") == {"metadata": {"resourceVersion": 42, "labels": {"disk": "ssd"}}}
    with pytest.raises(ValueError, match="resourceVersion as read"):
        factory.node_update("n1", labels={"disk": "ssd"}, resource_version=0)
    with pytest.raises(ValueError, match="give at least one"):
        factory.node_update("n1")
    with pytest.raises(ValueError, match="whole new list"):
        factory.node_update("n1", taints=MAINTENANCE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="or to None to remove the label"):
        factory.node_update("n1", labels={"pods": 3})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"True \(cordon\) or False"):
        factory.node_update("n1", unschedulable="yes")  # type: ignore[arg-type]


def test_label_is_a_merge_patch_of_metadata_for_the_kinds_that_take_one() -> None:
    factory = RequestFactory("t0ken").for_tenant("acme", "web")
    request = factory.label(IPCLAIMS, "c1", {"app": "web", "old": None}, namespace="team", resource_version=7)
    assert (request.method, request.path) == ("PATCH", "/v1/ipclaims/c1")
    assert dict(request.query) == {"namespace": "team", "org": "acme", "project": "web"}, "a tenant write"
    assert request.write and request.header("Content-Type") == MEDIA_TYPE_MERGE_PATCH
    assert json.loads(request.body or b"") == {
        "metadata": {"resourceVersion": 7, "labels": {"app": "web", "old": None}}
    }
    platform = factory.label(IPCLASSES, "gold", {"tier": "1"})
    assert platform.query == () and json.loads(platform.body or b"") == {"metadata": {"labels": {"tier": "1"}}}
    with pytest.raises(ValueError, match="cannot be patched"):
        factory.label(QUOTAS, "acme", {"a": "b"})
    with pytest.raises(ValueError, match="a mapping"):
        factory.label(PODS, "p", "app=web")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="the IPClaim's resourceVersion as read"):
        factory.label(IPCLAIMS, "c1", {}, resource_version=-1)


# The nodes' labels: their own, and the built-in kubernetes.io/hostname (statemachine/nodes.py).
UPD_1 = {"suite": "upd", "kubernetes.io/hostname": "upd-1"}
UPD_ASYNC_1 = {"suite": "upd-async", "kubernetes.io/hostname": "upd-async-1"}


def test_node_update_labels_taints_and_cordon(admin: Client, cluster: Cluster) -> None:
    register(admin, "upd-1", "upd")
    tenant = admin.as_tenant("sched", "upd")
    wants_gpu = pod_spec("upd", nodeSelector={"suite": "upd", "gpu": "yes"})
    assert tenant.pods.create("wants-gpu", wants_gpu).pending_reason == "Unschedulable"
    assert tenant.pods.create("tolerant", pod_spec("upd", tolerations=TOLERATES_MAINTENANCE)).node_name == "upd-1"

    labelled = admin.nodes.label("upd-1", {"gpu": "yes", "rack": "r1"})
    assert isinstance(labelled, Node) and labelled.metadata.labels == {**UPD_1, "gpu": "yes", "rack": "r1"}
    assert labelled.status.evicted_pods is None, "only a node with a NoExecute taint says how many pods went"
    bound = wait_until(
        "the pod selecting the new label to bind", lambda: tenant.pods.get("wants-gpu").bound or None, change_wait_s
    )
    assert bound and tenant.pods.get("wants-gpu").node_name == "upd-1"
    unlabelled = admin.nodes.update("upd-1", labels={"rack": None})
    assert unlabelled.metadata.labels == {**UPD_1, "gpu": "yes"}
    assert tenant.pods.get("wants-gpu").bound, "a bound pod stays when a label goes (IgnoredDuringExecution)"

    tainted = admin.nodes.update("upd-1", taints=[MAINTENANCE])
    assert tainted.spec.taints == (MAINTENANCE,) and admin.nodes.get("upd-1").spec.taints == (MAINTENANCE,)
    assert tainted.status.evicted_pods == 1, "the pod that does not tolerate the NoExecute taint went"
    evicted = tenant.pods.get("wants-gpu")
    assert evicted.phase == "Pending" and evicted.node_name is None and evicted.status.evicted_from == "upd-1"
    assert tenant.pods.get("tolerant").node_name == "upd-1", "a pod that tolerates the taint stays"

    cordoned = admin.nodes.update("upd-1", taints=[], unschedulable=True)
    assert cordoned.unschedulable and cordoned.spec.taints == () and cordoned.status.evicted_pods is None
    assert tenant.pods.get("wants-gpu").phase == "Pending", "a cordoned node takes no pods"
    uncordon = [admin.nodes.update("upd-1", unschedulable=False, idempotency_key="upd-1-uncordon") for _ in range(2)]
    assert uncordon[0] == uncordon[1] and not uncordon[0].unschedulable, "repeated with its key: the first answer"
    rebound = wait_until(
        "the evicted pod to bind again once the node is uncordoned",
        lambda: tenant.pods.get("wants-gpu").bound or None,
        change_wait_s,
    )
    assert rebound and tenant.pods.get("wants-gpu").node_name == "upd-1"

    read = admin.nodes.get("upd-1")
    version = read.metadata.resource_version
    assert version is not None
    admin.nodes.label("upd-1", {"rack": "r2"})  # another writer, between our read and our write
    with pytest.raises(Conflict) as stale:
        admin.nodes.update("upd-1", taints=[*read.spec.taints, MAINTENANCE], resource_version=version)
    assert stale.value.details["resourceVersion"] > version, stale.value
    assert admin.nodes.get("upd-1").spec.taints == (), "refused: nothing changed"
    fresh = admin.nodes.get("upd-1")
    unlabelled = admin.nodes.update("upd-1", labels={"rack": None}, resource_version=fresh.metadata.resource_version)
    assert unlabelled.metadata.labels == {**UPD_1, "gpu": "yes"}

    with pytest.raises(ValueError, match="give at least one"):
        admin.nodes.update("upd-1")
    with pytest.raises(Invalid) as bad_effect:
        admin.nodes.update("upd-1", taints=[Taint("maintenance", "", "Later")])
    assert bad_effect.value.field == "spec.taints[0].effect", bad_effect.value
    with pytest.raises(NotFound):
        admin.nodes.label("no-such-node", {"gpu": "yes"})
    with Client(endpoints_of(cluster), cluster.tenant_tokens["acme/web"]) as member, pytest.raises(Forbidden):
        member.nodes.label("upd-1", {"gpu": "no"})
    assert admin.nodes.get("upd-1").metadata.labels == {**UPD_1, "gpu": "yes"}, "refusals change nothing"


def test_async_node_update(admin: Client, cluster: Cluster) -> None:
    register(admin, "upd-async-1", "upd-async")

    async def scenario() -> tuple[Pod, Node, Node, Pod, Node, Node]:
        async with AsyncClient(endpoints_of(cluster), cluster.admin_token) as client:
            tenant = client.as_tenant("sched", "upd-async")
            ssd = pod_spec("upd-async", nodeSelector={"suite": "upd-async", "disk": "ssd"})
            waiting = await tenant.pods.create("a-ssd", ssd)
            labelled = await client.nodes.label("upd-async-1", {"disk": "ssd"})
            deadline = time.monotonic() + change_wait_s
            while not (await tenant.pods.get("a-ssd")).bound:  # the label lets it bind (in the same write)
                assert time.monotonic() < deadline, f"a-ssd did not bind within {change_wait_s} s of the label"
                await asyncio.sleep(0.05)
            tainted = await client.nodes.update("upd-async-1", taints=[MAINTENANCE], unschedulable=True)
            evicted = await tenant.pods.get("a-ssd")
            cleared = await client.nodes.update("upd-async-1", labels={"disk": None}, taints=[], unschedulable=False)
            relabelled = await client.nodes.label("upd-async-1", {"disk": "ssd"})
            return waiting, labelled, tainted, evicted, cleared, relabelled

    waiting, labelled, tainted, evicted, cleared, relabelled = asyncio.run(scenario())
    assert waiting.pending_reason == "Unschedulable"
    assert labelled.metadata.labels == {**UPD_ASYNC_1, "disk": "ssd"}
    assert tainted.unschedulable and tainted.spec.taints == (MAINTENANCE,) and tainted.status.evicted_pods == 1
    assert evicted.phase == "Pending" and evicted.status.evicted_from == "upd-async-1"
    assert cleared.metadata.labels == UPD_ASYNC_1 and cleared.spec.taints == ()
    assert not cleared.unschedulable and cleared.status.evicted_pods is None
    assert relabelled.metadata.labels == {**UPD_ASYNC_1, "disk": "ssd"}
    tenant = admin.as_tenant("sched", "upd-async")
    wait_until("the pod to bind once its label is back", lambda: tenant.pods.get("a-ssd").bound or None, change_wait_s)


def test_a_service_gets_an_address(admin: Client) -> None:
    tenant = admin.as_tenant("sched", "svc")
    ports = [{"name": "http", "port": 80}, {"name": "dns", "port": 53, "protocol": "UDP"}]
    service = tenant.services.create("web", {"poolRef": SERVICE_POOL, "type": "LoadBalancer", "ports": ports})
    assert isinstance(service, Service) and in_network(service.address, SERVICE_POOL_CIDR)
    assert service.spec.type == "LoadBalancer" and service.status.pool == SERVICE_POOL
    assert service.spec.ports == (ServicePort("http", 80, "TCP"), ServicePort("dns", 53, "UDP"))
    assert tenant.services.create("bare", {"poolRef": SERVICE_POOL, "ports": [{"port": 8080}]}).spec.ports == (
        ServicePort(None, 8080, "TCP"),
    )
    tenant.services.delete("bare")
    assert tenant.services.get("web") == service
    taken = tenant.services.create("pinned", {"poolRef": SERVICE_POOL, "address": "10.96.0.200"})
    assert taken.address == "10.96.0.200"
    with pytest.raises(Conflict):
        tenant.services.create("clash", {"poolRef": SERVICE_POOL, "address": "10.96.0.200"})
    assert names(tenant.services.list()) == ["pinned", "web"]
    assert tenant.services.delete("web").address == service.address
    with pytest.raises(NotFound):
        tenant.services.get("web")


def test_scheduler_policy_and_retry(admin: Client, cluster: Cluster) -> None:
    status = admin.scheduler.get()
    assert isinstance(status, SchedulerStatus) and status.policy == "spread"
    assert status.nodes is not None and status.nodes >= 1 and status.resource_version is not None
    register(admin, "pack-1", "pack")
    register(admin, "pack-2", "pack")
    tenant = admin.as_tenant("sched", "pack")
    try:
        assert admin.scheduler.set_policy("binpack").policy == "binpack"
        assert admin.scheduler.get().policy == "binpack"
        placed = [tenant.pods.create(f"p{number}", pod_spec("pack")).node_name for number in range(3)]
        assert placed == ["pack-1"] * 3, "binpack: the fullest node that fits"
    finally:
        admin.scheduler.set_policy("spread")
    assert tenant.pods.create("p3", pod_spec("pack")).node_name == "pack-2", "spread again: the emptier node"

    swept = admin.scheduler.retry(4)
    assert swept.policy == "spread" and swept.examined is not None and swept.bound is not None
    with pytest.raises(ValueError, match="spread"):
        admin.scheduler.set_policy("diagonal")
    with Client(endpoints_of(cluster), cluster.tenant_tokens["acme/web"]) as member:
        assert member.scheduler.get().policy == "spread", "any token reads the scheduler"
        with pytest.raises(Forbidden):
            member.scheduler.set_policy("binpack")
        with pytest.raises(Forbidden):
            member.nodes.cordon("pack-1")


def test_watch_the_pods_of_one_node(admin: Client) -> None:
    register(admin, "watch-1", "watch")
    register(admin, "watch-2", "watch", cpu_millis=1000)
    tenant = admin.as_tenant("sched", "watch")
    start = tenant.pods.list_page().resource_version
    with admin.watch("pods", start, field_selector="spec.nodeName=watch-1") as stream:
        tenant.pods.create("w1", pod_spec("watch"))  # spread: watch-1 (the lowest name of two empty nodes)
        tenant.pods.create("w2", pod_spec("watch", nodeSelector={"kubernetes.io/hostname": "watch-2"}))
        tenant.pods.delete("w1")
        events: list[WatchEvent] = []
        while len(events) < 2:
            event = stream.next_event(change_wait_s)
            assert event is not None, f"no watch event in {change_wait_s} s; got {events}"
            events.append(event)
    assert [(event.type, event.object.name) for event in events] == [("ADDED", "w1"), ("DELETED", "w1")]
    assert isinstance(events[0].object, Pod) and events[0].object.node_name == "watch-1"


def test_async_client_does_the_same(admin: Client, cluster: Cluster) -> None:
    register(admin, "async-1", "async")

    async def scenario() -> tuple[Pod, list[Pod], NodeHeartbeat, Node, SchedulerStatus, QuotaExceeded]:
        async with AsyncClient(endpoints_of(cluster), cluster.admin_token) as client:
            tenant = client.as_tenant("sched", "async")
            pod = await tenant.pods.create("a1", pod_spec("async"))
            listed = [item async for item in tenant.pods.list(field_selector="spec.nodeName=async-1")]
            beat = await client.nodes.heartbeat("async-1")
            cordoned = await client.nodes.cordon("async-1")
            await client.nodes.uncordon("async-1")
            status = await client.scheduler.get()
            await client.quotas.set("sched/async-small", {"cpuMillis": 100})
            try:
                await client.as_tenant("sched", "async-small").pods.create("a2", pod_spec("async"))
            except QuotaExceeded as error:
                refusal = error
            else:
                raise AssertionError("a pod of 500m passed a quota of 100m")
            finally:
                await client.quotas.delete("sched/async-small")
            return pod, listed, beat, cordoned, status, refusal

    pod, listed, beat, cordoned, status, refusal = asyncio.run(scenario())
    assert pod.bound and pod.node_name == "async-1"
    assert admin.as_tenant("sched", "async").pods.get("a1") == pod, "the same typed result as the sync client's"
    assert listed == [pod]
    assert beat.name == "async-1" and beat.ready is True
    assert cordoned.unschedulable and not admin.nodes.get("async-1").unschedulable
    assert status.policy == "spread"
    assert (refusal.status, refusal.resource, refusal.limit) == (403, "cpuMillis", 100)


# ---- the command line ----------------------------------------------------------------------------


class Allot:
    """`allot ...` run in this process, as `node.cli` dispatches it, with its output captured."""

    def __init__(self, cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
        self.cluster = cluster
        self.capsys = capsys
        self.endpoints = ",".join(endpoints_of(cluster))

    def __call__(self, *args: str, token: str | None = None) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = node_cli_main(["--endpoints", self.endpoints, f"--token={token or self.cluster.admin_token}", *args])
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *args: str, token: str | None = None) -> str:
        code, out, err = self(*args, token=token)
        assert code == 0, f"allot {' '.join(args)}: exit {code}\nstdout: {out}\nstderr: {err}"
        return out

    def failed(self, code: int, *args: str, token: str | None = None) -> str:
        """The one error line of a command that exited with `code`."""
        exit_code, out, err = self(*args, token=token)
        assert exit_code == code, f"allot {' '.join(args)}: exit {exit_code}, wanted {code}\n{out}\n{err}"
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("allot: "), err
        return lines[0]


@pytest.fixture
def allot(
    cluster: Cluster, admin: Client, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Allot:
    monkeypatch.setenv("COLUMNS", "220")  # table rows stay on one line
    return Allot(cluster, capsys)


def row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if f" {name} " in line)


def test_cli_nodes_pods_and_services(allot: Allot) -> None:
    registered = allot.ok(
        "node", "register", "cli-n1", "--cpu", "4", "--memory", "8Gi", "--pods", "10", "--pod-pool", POD_POOL,
        "--label", "suite=cli", "--taint", "dedicated=cli:NoExecute",
    )  # fmt: skip
    cidr = re.fullmatch(r"node/cli-n1 registered (10\.64\.\d+\.0/24)\n", registered)
    assert cidr, registered
    listed = row(allot.ok("node", "list", "-l", "suite=cli"), "cli-n1")
    assert "Ready" in listed and cidr[1] in listed and "0/4" in listed and "0/8Gi" in listed and "0/10" in listed
    assert "dedicated=cli:NoExecute" in listed

    tenant = ("--as", "cli/web")
    untolerated = allot.ok("pod", "create", "cli-p0", "--node-selector", "suite=cli", *tenant)
    assert (
        untolerated.startswith("pod/cli-p0 created: Pending, Unschedulable: 0/") and "untolerated taint" in untolerated
    )
    created = allot.ok(
        "pod", "create", "cli-p1", "--cpu", "250m", "--memory", "256Mi", "--node-selector", "suite=cli",
        "--toleration", "dedicated=cli:NoExecute", "--toleration", "node.kubernetes.io/unreachable:NoExecute@45",
        "--priority", "5", "--label", "app=cli", *tenant,
    )  # fmt: skip
    bound = re.fullmatch(r"pod/cli-p1 created: Bound to cli-n1, IP (\S+)\n", created)
    assert bound and in_network(bound[1], cidr[1]), created
    on_node = json.loads(allot.ok("pod", "list", "--node", "cli-n1", "-o", "json", *tenant))
    assert [item["metadata"]["name"] for item in on_node["items"]] == ["cli-p1"]
    waiting = row(allot.ok("pod", "list", "--phase", "Pending", *tenant), "cli-p0")
    assert "Pending" in waiting and "Unschedulable" in waiting
    described = allot.ok("pod", "get", "cli-p1", *tenant)
    assert re.search(r"node\s+cli-n1", described) and re.search(r"cpu\s+250m", described), described
    assert re.search(r"priority\s+5", described) and "dedicated=cli:NoExecute" in described
    assert "node.kubernetes.io/unreachable:NoExecute 45s" in described, described
    usage = allot.ok("node", "get", "cli-n1")
    assert re.search(r"cpu used\s+250m/4", usage) and re.search(r"pods\s+1/10", usage), usage

    assert allot.ok("node", "cordon", "cli-n1") == "node/cli-n1 cordoned\n"
    assert "Ready,SchedulingDisabled" in row(allot.ok("node", "list"), "cli-n1")
    beat = json.loads(allot.ok("node", "heartbeat", "cli-n1", "-o", "json"))
    assert beat["kind"] == "NodeHeartbeat" and beat["name"] == "cli-n1" and beat["ready"] is True
    assert allot.ok("node", "drain", "cli-n1") == "node/cli-n1 drained (1 pod evicted)\n"
    assert "Pending" in row(allot.ok("pod", "list", *tenant), "cli-p1")
    assert "not_found" in allot.failed(client_cli.EXIT_NOT_FOUND, "node", "cordon", "cli-none")

    service = allot.ok("service", "create", "cli-s1", "--pool", SERVICE_POOL, "--port", "http=80", *tenant)
    address = re.fullmatch(r"service/cli-s1 created (\S+)\n", service)
    assert address and in_network(address[1], SERVICE_POOL_CIDR), service
    assert "http=80/TCP" in row(allot.ok("service", "list", *tenant), "cli-s1")
    assert allot.ok("service", "delete", "cli-s1", *tenant).startswith("service/cli-s1 deleted")
    assert allot.ok("pod", "delete", "cli-p1", *tenant).startswith("pod/cli-p1 deleted")


def test_cli_node_label_binds_a_pod_and_a_noexecute_taint_evicts_it(allot: Allot, admin: Client) -> None:
    register(admin, "cli-upd-1", "cli-upd")
    tenant = admin.as_tenant("cli", "upd")
    created = allot.ok(
        "pod", "create", "cli-gpu", "--node-selector", "suite=cli-upd", "--node-selector", "gpu=yes", "--as", "cli/upd"
    )
    assert created.startswith("pod/cli-gpu created: Pending, Unschedulable"), created
    assert allot.ok("node", "label", "cli-upd-1", "gpu=yes") == "node/cli-upd-1 labeled gpu=yes\n"
    wait_until("the pod to bind after the label", lambda: tenant.pods.get("cli-gpu").bound or None, change_wait_s)

    tainted = allot.ok("node", "taint", "cli-upd-1", "maintenance=now:NoExecute")
    assert tainted == "node/cli-upd-1 tainted maintenance=now:NoExecute (1 pod evicted)\n", tainted
    assert tenant.pods.get("cli-gpu").status.evicted_from == "cli-upd-1"
    noted = allot.ok("node", "label", "cli-upd-1", "rack=r1")
    assert noted == "node/cli-upd-1 labeled rack=r1\n", "no eviction count when nothing was evicted by a label"
    untainted = allot.ok("node", "taint", "cli-upd-1", "maintenance-")
    assert untainted == "node/cli-upd-1 untainted maintenance=now:NoExecute-\n", untainted
    wait_until(
        "the pod to bind again once the taint is gone", lambda: tenant.pods.get("cli-gpu").bound or None, change_wait_s
    )
    as_json = json.loads(allot.ok("node", "label", "cli-upd-1", "gpu-", "rack-", "-o", "json"))
    assert (
        as_json["metadata"]["labels"] == {"suite": "cli-upd", "kubernetes.io/hostname": "cli-upd-1"}
        and as_json["spec"]["taints"] == []
    )
    assert tenant.pods.get("cli-gpu").node_name == "cli-upd-1", "a label removed leaves the bound pod"


def test_cli_quotas_and_the_scheduler(allot: Allot, cluster: Cluster) -> None:
    assert allot.ok("quota", "set", "cli/quota", "--cpu", "1", "--pods", "3") == "quota/cli/quota set\n"
    too_big = allot.failed(client_cli.EXIT_NO_ROOM, "pod", "create", "cli-big", "--cpu", "2", "--as", "cli/quota")
    assert too_big.startswith("allot: quota_exceeded: quota cli/quota allows cpuMillis 1000"), too_big
    quota_row = row(allot.ok("quota", "list"), "cli/quota")
    assert "0/1" in quota_row and "0/3" in quota_row and "0/∞" in quota_row, quota_row
    assert json.loads(allot.ok("quota", "get", "cli/quota", "-o", "json"))["spec"] == {"cpuMillis": 1000, "pods": 3}
    assert allot.ok("quota", "set", "cli/quota", "--cpu", "1", "--max-priority", "10") == "quota/cli/quota set\n"
    urgent = ("pod", "create", "cli-urgent", "--priority", "11", "--as", "cli/quota", "--idempotency-key", "cli-u1")
    too_urgent = allot.failed(client_cli.EXIT_NO_ROOM, *urgent)
    assert "allows pods a priority of at most 10" in too_urgent and "replayed" not in too_urgent, too_urgent
    assert "(replayed: the answer the server gave this idempotency key" in allot.failed(
        client_cli.EXIT_NO_ROOM, *urgent
    )
    assert re.search(r"\b10\b", row(allot.ok("quota", "list"), "cli/quota"))
    assert json.loads(allot.ok("quota", "get", "cli/quota", "-o", "json"))["spec"]["maxPriority"] == 10
    created = allot.ok("priorityclass", "create", "cli-batch", "--value", "-5", "--description", "can wait")
    assert created == "priorityclass/cli-batch created\n", created
    assert re.search(r"cli-batch\W+-5\W+can wait", row(allot.ok("priorityclass", "list"), "cli-batch"))
    pod = allot.ok("pod", "create", "cli-later", "--cpu", "100m", "--priority-class", "cli-batch", "--as", "cli/quota")
    assert pod.startswith("pod/cli-later created"), pod
    described = allot.ok("pod", "get", "cli-later", "--as", "cli/quota")
    assert re.search(r"priority\s+-5", described) and re.search(r"priority class\s+cli-batch", described), described
    assert allot.ok("pod", "delete", "cli-later", "--as", "cli/quota").startswith("pod/cli-later deleted")
    again = allot.ok("pod", "create", "cli-later", "--cpu", "100m", "--as", "cli/quota", "--idempotency-key", "cli-l1")
    assert "replayed" not in again, again
    allot.ok("pod", "delete", "cli-later", "--as", "cli/quota")
    replay = allot.ok("pod", "create", "cli-later", "--cpu", "100m", "--as", "cli/quota", "--idempotency-key", "cli-l1")
    assert replay.startswith("pod/cli-later created") and replay.rstrip().endswith("the first time)"), replay
    assert allot.ok("priorityclass", "delete", "cli-batch").startswith("priorityclass/cli-batch deleted")
    assert allot.ok("quota", "delete", "cli/quota").startswith("quota/cli/quota deleted")

    assert json.loads(allot.ok("scheduler", "get", "-o", "json"))["policy"] == "spread"
    try:
        assert allot.ok("scheduler", "set", "binpack") == "scheduler policy binpack\n"
        assert re.search(r"policy\s+binpack", allot.ok("scheduler", "get"))
    finally:
        assert allot.ok("scheduler", "set", "spread") == "scheduler policy spread\n"
    assert allot.ok("scheduler", "retry", "--pods", "2").startswith("scheduler retry: ")
    refused = allot.failed(
        client_cli.EXIT_UNAUTHORIZED, "scheduler", "set", "binpack", token=cluster.tenant_tokens["acme/web"]
    )
    assert "forbidden" in refused
    with pytest.raises(SystemExit) as usage:
        allot("scheduler", "set", "diagonal")
    assert usage.value.code == client_cli.EXIT_USAGE


def test_cli_as_a_user_runs_it(cluster: Cluster, admin: Client, tmp_path: Path) -> None:
    """`python -m node.cli node ...` in a subprocess: the new commands reach client.cli."""
    register(admin, "proc-1", "proc")
    listed = process_ok(allot_process(cluster, tmp_path, "node", "list", "-l", "suite=proc", "-o", "json"))
    assert [item["metadata"]["name"] for item in json.loads(listed)["items"]] == ["proc-1"]
