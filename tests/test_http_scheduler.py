"""The scheduler's HTTP routes (node/http.py) and the member's scheduling work (node/scheduling.py),
in process: `LocalMember` behind aiohttp's TestServer on 127.0.0.1, as in tests/test_http.py.

Nodes (CRUD, cordon/uncordon/drain, heartbeats), pods (bound in the create answer, planned by
the member), services, quotas, the scheduler's own routes, field selectors on lists and
watches, the error codes of the one table, refused input leaving the state unchanged, the
planner against `plan_pod`, the leader's timers on an injected clock, and the metrics.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from node import scheduling
from node.http import ERROR_STATUS, Limits
from node.member import LocalMember
from node.memstore import MemoryStore
from node.scheduling import HeartbeatTable, NodeMonitor, Planner
from statemachine import Envelope, Ok, Principal, apply, encode_envelope, keys, scheduler
from statemachine.invariants import check_invariants
from statemachine.queries import get
from statemachine.scheduler import plan_pod
from tests.test_http import ACME, ADMIN, GLOBEX, Api, auth, read_events, run, watch_url

GIB = 1 << 30
POD_POOL = {"name": "pods", "spec": {"cidr": "10.64.0.0/16"}}
SERVICE_POOL = {"name": "svc", "spec": {"cidr": "10.96.0.0/24"}}


def node(name: str, cpu: int = 4000, memory: int = 8 * GIB, pods: int = 10, **spec: Any) -> dict[str, Any]:
    capacity = {"cpuMillis": cpu, "memoryBytes": memory, "pods": pods}
    return {"name": name, "labels": {"rack": name[-1]}, "spec": {"capacity": capacity, "podPool": "pods", **spec}}


def pod(name: str, cpu: int = 100, memory: int = 64 << 20, **spec: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"requests": {"cpuMillis": cpu, "memoryBytes": memory}, **spec}}


async def cluster(api: Api, *names: str, **spec: Any) -> None:
    await api.ok("POST", "/v1/ippools", ADMIN, POD_POOL)
    for name in names:
        assert (await api.call("POST", "/v1/nodes", ADMIN, node(name, **spec))).status == 201


async def names_of(api: Api, path: str, token: str = ADMIN, **params: str) -> list[str]:
    body = await api.ok("GET", path, token, params=params or None)
    return [item["metadata"]["name"] for item in body["items"]]


# ---- nodes -----------------------------------------------------------------------------------


def test_node_crud_and_tenancy(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, POD_POOL)
        created = await api.call("POST", "/v1/nodes", ADMIN, node("n1"))
        assert created.status == 201 and created.body["kind"] == "Node"
        assert created.body["status"]["podCIDR"].startswith("10.64.")
        assert created.headers["X-Allot-Request-Id"] and int(created.headers["X-Allot-Revision"]) > 0
        again = await api.call("POST", "/v1/nodes", ADMIN, node("n1"))  # same spec: the existing node
        assert again.status == 200 and again.body["metadata"]["uid"] == created.body["metadata"]["uid"]
        await api.error(409, "already_exists", "POST", "/v1/nodes", body=node("n1", cpu=8000))
        await api.error(403, "forbidden", "POST", "/v1/nodes", ACME, body=node("n2"))
        # Every tenant reads nodes; nobody else changes them.
        assert (await api.ok("GET", "/v1/nodes/n1", ACME))["metadata"]["name"] == "n1"
        assert await names_of(api, "/v1/nodes", GLOBEX) == ["n1"]
        assert await names_of(api, "/v1/nodes", ADMIN, labelSelector="rack=1") == ["n1"]
        assert await names_of(api, "/v1/nodes", ADMIN, labelSelector="rack=2") == []
        await api.error(403, "forbidden", "DELETE", "/v1/nodes/n1", ACME)
        await api.error(400, "invalid", "GET", "/v1/nodes", params={"namespace": "default"})
        deleted = await api.ok("DELETE", "/v1/nodes/n1")
        assert deleted["metadata"]["name"] == "n1"
        await api.error(404, "not_found", "GET", "/v1/nodes/n1")
        await api.error(404, "not_found", "DELETE", "/v1/nodes/n1")

    run(tmp_path, check)


def test_node_register_refuses_bad_input_and_changes_nothing(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, POD_POOL)
        before = api.objects_digest()
        bad_bodies = [
            ({**node("n1"), "colour": "red"}, "colour"),
            ({"name": "n1", "spec": {"podPool": "pods"}}, "spec.capacity"),
            (node("n1", cpu="4000"), "spec.capacity.cpuMillis"),  # type: ignore[arg-type]
            ({**node("n1"), "name": "Not_A_Name"}, "name"),
            (node("n1", pods=10_000), None),  # more pods than a /24 has addresses
            ({**node("n1"), "spec": {**node("n1")["spec"], "podPool": 7}}, "spec.podPool"),
        ]
        for body, field_name in bad_bodies:
            reply = await api.error(400, "invalid", "POST", "/v1/nodes", body=body)
            if field_name is not None:
                assert reply.body["error"]["details"].get("field") == field_name, reply.body
        await api.error(404, "not_found", "POST", "/v1/nodes", body=node("n1", podPool="missing"))
        await api.error(400, "invalid", "POST", "/v1/nodes", raw=b'{"name": "n1", "name": "n2"}')
        assert api.objects_digest() == before

    run(tmp_path, check)


def test_node_actions_cordon_uncordon_drain(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        cordoned = await api.ok("POST", "/v1/nodes/n1/cordon")
        assert cordoned["spec"]["unschedulable"] is True
        assert (await api.ok("POST", "/v1/nodes/n1/cordon"))["spec"]["unschedulable"] is True  # no change
        for number in range(3):  # a cordoned node takes no pods
            assert (await api.ok("POST", "/v1/pods", ACME, pod(f"p{number}")))["spec"]["nodeName"] == "n2"
        assert (await api.ok("POST", "/v1/nodes/n1/uncordon"))["spec"]["unschedulable"] is False
        assert (await api.ok("POST", "/v1/pods", ACME, pod("after")))["spec"]["nodeName"] == "n1"
        drained = await api.ok("POST", "/v1/nodes/n2/drain")
        assert drained["status"]["evictedPods"] == 3 and drained["spec"]["unschedulable"] is True
        moved = await api.ok("GET", "/v1/pods", ACME)
        assert {item["spec"]["nodeName"] for item in moved["items"]} == {"n1"}  # evicted pods found room
        assert (await api.ok("GET", "/v1/pods/p0", ACME))["status"]["phase"] == "Bound"
        await api.error(409, "conflict", "DELETE", "/v1/nodes/n1")  # pods still bound: drain first
        await api.ok("DELETE", "/v1/nodes/n2")
        # Actions: admin only, a known node, no body fields, no query parameters, POST only.
        before = api.objects_digest()
        await api.error(403, "forbidden", "POST", "/v1/nodes/n1/drain", ACME)
        await api.error(404, "not_found", "POST", "/v1/nodes/ghost/cordon")
        await api.error(400, "invalid", "POST", "/v1/nodes/n1/drain", body={"force": True})
        await api.error(400, "invalid", "POST", "/v1/nodes/n1/drain", params={"grace": "1"})
        await api.error(405, "method_not_allowed", "GET", "/v1/nodes/n1/cordon")
        await api.error(404, "not_found", "POST", "/v1/nodes/n1/reboot")
        assert api.objects_digest() == before
        assert (await api.call("POST", "/v1/nodes/n1/cordon", body={})).status == 200  # an empty object is fine

    run(tmp_path, check)


def test_node_patch_changes_labels_taints_and_cordon(tmp_path: Path) -> None:
    """PATCH /v1/nodes/NAME is a JSON merge patch (application/json or
    application/merge-patch+json): labels merge, a null removes one, taints are replaced."""

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        waiting = await api.ok("POST", "/v1/pods", ACME, pod("gpu", nodeSelector={"accel": "gpu"}))
        assert waiting["status"]["phase"] == "Pending"
        patched = await api.ok(
            "PATCH",
            "/v1/nodes/n2",
            body={"metadata": {"labels": {"accel": "gpu", "rack": None}}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched["metadata"]["labels"] == {"accel": "gpu", "kubernetes.io/hostname": "n2"}
        bound = await api.ok("GET", "/v1/pods/gpu", ACME)
        assert (bound["status"]["phase"], bound["spec"]["nodeName"]) == ("Bound", "n2")
        tainted = await api.ok(
            "PATCH", "/v1/nodes/n2", body={"spec": {"taints": [{"key": "drain-me", "effect": "NoExecute"}]}}
        )
        assert tainted["status"]["evictedPods"] == 1
        assert tainted["spec"]["taints"] == [{"key": "drain-me", "value": "", "effect": "NoExecute"}]
        evicted = await api.ok("GET", "/v1/pods/gpu", ACME)
        assert (evicted["status"]["phase"], evicted["status"]["evictedFrom"]) == ("Pending", "n2")
        cordoned = await api.ok("PATCH", "/v1/nodes/n1", body={"spec": {"unschedulable": True}})
        assert cordoned["spec"]["unschedulable"] is True
        # Refused: admin only, the name is the path's, no query parameters, JSON only, and the
        # patch names only labels, taints and unschedulable. Nothing changes.
        before = api.objects_digest()
        await api.error(403, "forbidden", "PATCH", "/v1/nodes/n1", ACME, body={"spec": {"unschedulable": False}})
        await api.error(404, "not_found", "PATCH", "/v1/nodes/ghost", body={"spec": {"unschedulable": False}})
        await api.error(400, "invalid", "PATCH", "/v1/nodes/n1", body={"name": "n2"})
        await api.error(400, "invalid", "PATCH", "/v1/nodes/n1", body={"spec": {"capacity": {}}})
        await api.error(400, "invalid", "PATCH", "/v1/nodes/n1", body={"spec": {}}, params={"org": "acme"})
        await api.error(
            415,
            "unsupported_media_type",
            "PATCH",
            "/v1/nodes/n1",
            raw=b"{}",
            headers={"Content-Type": "application/strategic-merge-patch+json"},
        )
        await api.error(405, "method_not_allowed", "PATCH", "/v1/ipallocations/gpu", ACME, body={})
        assert api.objects_digest() == before

    run(tmp_path, check)


def test_label_patch_of_every_kind(tmp_path: Path) -> None:
    """PATCH /v1/{kind}/{name} with {"metadata": {"labels": ...}} relabels a pool, claim, class,
    pod, service or priority class in place (a claim keeps its address, a pod its node), with
    `?namespace=` for namespaced kinds and a resourceVersion precondition; anything else in the
    patch is refused and changes nothing."""

    async def check(api: Api) -> None:
        await cluster(api, "n1")
        await api.ok("POST", "/v1/ipclasses", body={"name": "svc", "spec": {"ipFamily": "IPv4", "isDefault": True}})
        await api.ok(
            "POST", "/v1/ippools", body={"name": "vips", "spec": {"cidr": "10.96.0.0/24", "classNames": ["svc"]}}
        )
        await api.ok("POST", "/v1/priorityclasses", body={"name": "high", "spec": {"value": 10}})
        claim = await api.ok("POST", "/v1/ipclaims", ACME, {"name": "c1", "namespace": "team"})
        bound = await api.ok("POST", "/v1/pods", ACME, pod("web", priorityClassName="high"))
        service = await api.ok("POST", "/v1/services", ACME, {"name": "api", "labels": {"app": "api"}})
        patch = {"metadata": {"labels": {"team": "blue"}}}
        merge = {"Content-Type": "application/merge-patch+json"}
        for path, token in (
            ("/v1/ippools/vips", ADMIN),
            ("/v1/ipclasses/svc", ADMIN),
            ("/v1/priorityclasses/high", ADMIN),
            ("/v1/pods/web", ACME),
            ("/v1/services/api", ACME),
        ):
            patched = await api.ok("PATCH", path, token, patch, headers=merge)
            assert patched["metadata"]["labels"].get("team") == "blue", (path, patched)
            assert (await api.ok("GET", path, token))["metadata"]["labels"] == patched["metadata"]["labels"]
        assert (await api.ok("GET", "/v1/services/api", ACME))["metadata"]["labels"] == {"app": "api", "team": "blue"}
        assert (await api.ok("GET", "/v1/pods/web", ACME))["status"]["podIP"] == bound["status"]["podIP"]
        # A claim in another namespace: named by ?namespace=; its allocation's labels follow.
        relabelled = await api.ok("PATCH", "/v1/ipclaims/c1", ACME, patch, params={"namespace": "team"})
        assert relabelled["status"]["allocatedCIDR"] == claim["status"]["allocatedCIDR"]
        allocation = await api.ok("GET", "/v1/ipallocations/c1", ACME, params={"namespace": "team"})
        assert allocation["metadata"]["labels"] == {"team": "blue"}
        selected = await api.ok("GET", "/v1/ipclaims", ACME, params={"labelSelector": "team=blue"})
        assert [item["metadata"]["name"] for item in selected["items"]] == ["c1"]
        # Conditional on the version read; a stale one is 409 with the current one.
        version = service["metadata"]["resourceVersion"]
        stale = await api.error(
            409, "conflict", "PATCH", "/v1/services/api", ACME, body={"metadata": {"resourceVersion": version}}
        )
        current = stale.body["error"]["details"]["resourceVersion"]
        removed = await api.ok(
            "PATCH", "/v1/services/api", ACME, {"metadata": {"labels": {"team": None}, "resourceVersion": str(current)}}
        )
        assert removed["metadata"]["labels"] == {"app": "api"}
        # One request however it says "no precondition" and "the default namespace".
        keyed = {"Idempotency-Key": "label-web-1"}
        first = await api.call("PATCH", "/v1/pods/web", ACME, patch, headers=keyed)
        spelled = {"metadata": {**patch["metadata"], "resourceVersion": None}}
        again = await api.call("PATCH", "/v1/pods/web", ACME, spelled, headers=keyed, params={"namespace": "default"})
        assert first.status == again.status == 200 and again.headers["Idempotent-Replayed"] == "true", again
        # Refused, changing nothing: spec, a name in the body, another tenant, a platform
        # object by a tenant, a namespace that does not hold it.
        before = api.objects_digest()
        await api.error(400, "invalid", "PATCH", "/v1/pods/web", ACME, body={"spec": {"priority": 1}})
        await api.error(400, "invalid", "PATCH", "/v1/pods/web", ACME, body={"name": "other", **patch})
        await api.error(400, "invalid", "PATCH", "/v1/ipclaims/c1", ACME, body={"namespace": "team", **patch})
        await api.error(404, "not_found", "PATCH", "/v1/pods/web", GLOBEX, body=patch)
        await api.error(403, "forbidden", "PATCH", "/v1/ippools/vips", ACME, body=patch)
        await api.error(403, "forbidden", "PATCH", "/v1/ipclasses/svc", ACME, body=patch)
        await api.error(404, "not_found", "PATCH", "/v1/ipclaims/c1", ACME, body=patch)
        await api.error(405, "method_not_allowed", "PATCH", "/v1/quotas/acme", body=patch)
        refused = await api.error(405, "method_not_allowed", "PATCH", "/v1/ipallocations/c1", ACME, body=patch)
        assert refused.body["error"]["details"]["allowed"] == ["GET", "HEAD"], refused.body
        unknown = await api.error(400, "invalid", "PATCH", "/v1/ippools/vips", body={"namespace": "x", **patch})
        assert "unknown field 'namespace'" in unknown.body["error"]["message"], unknown.body
        unknown = await api.error(400, "invalid", "PATCH", "/v1/pods/web", ACME, body={"kind": "Pod", **patch})
        assert unknown.body["error"]["message"].endswith("a patch of a Pod gives metadata"), unknown.body
        # A node is the platform's: a tenant to act for is refused before anything is logged.
        await api.error(400, "invalid", "PATCH", "/v1/nodes/n1", body=patch, params={"org": "acme", "project": "web"})
        assert api.objects_digest() == before

    run(tmp_path, check)


# ---- pods ------------------------------------------------------------------------------------


def test_platform_writes_refuse_an_admin_acting_for_a_tenant(tmp_path: Path) -> None:
    """Nodes, classes, quotas and the scheduler are the platform's: the tenant an admin names is
    refused (details.field principal), on every such route, instead of being ignored."""

    async def check(api: Api) -> None:
        await cluster(api, "n1")
        before = api.objects_digest()
        acting = "?org=acme&project=web"
        writes: list[tuple[str, str, dict[str, Any] | None]] = [
            ("POST", f"/v1/nodes{acting}", node("n2")),
            ("DELETE", f"/v1/nodes/n1{acting}", None),
            ("POST", f"/v1/nodes/n1/cordon{acting}", None),
            ("POST", f"/v1/nodes/n1/drain{acting}", None),
            ("PUT", f"/v1/scheduler{acting}", {"policy": "binpack"}),
            ("POST", f"/v1/scheduler/retry{acting}", {}),
            ("POST", f"/v1/ipclasses{acting}", {"name": "gold", "spec": {"ipFamily": "IPv4"}}),
            ("POST", f"/v1/quotas{acting}", {"name": "globex/prod", "spec": {"pods": 1}}),
            ("DELETE", f"/v1/quotas/acme{acting}", None),
        ]
        for method, path, body in writes:
            refused = await api.error(400, "invalid", method, path, body=body)
            assert refused.body["error"]["details"] == {"field": "principal"}, (path, refused.body)
            assert "act for the platform" in refused.body["error"]["message"], refused.body
        assert api.objects_digest() == before

    run(tmp_path, check)


def test_pod_is_answered_bound_and_spread_by_the_members_plan(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2", "n3")
        placed = []
        for number in range(6):
            reply = await api.call("POST", "/v1/pods", ACME, pod(f"p{number}"))
            assert reply.status == 201, reply
            assert reply.body["status"]["phase"] == "Bound" and reply.body["status"]["podIP"].startswith("10.64.")
            assert "plan" not in reply.body
            placed.append(reply.body["spec"]["nodeName"])
        assert placed == ["n1", "n2", "n3", "n1", "n2", "n3"]  # spread: least allocated, ties by name
        assert api.member.planner.plans == 6 and api.member.planner.in_flight == 0
        ips = [item["status"]["podIP"] for item in (await api.ok("GET", "/v1/pods", ACME))["items"]]
        assert len(set(ips)) == 6
        got = await api.ok("GET", "/v1/pods/p0", ACME)
        assert got["spec"]["nodeName"] == "n1" and got["metadata"]["namespace"] == "default"
        await api.error(404, "not_found", "GET", "/v1/pods/p0", GLOBEX)  # another tenant's
        await api.error(404, "not_found", "DELETE", "/v1/pods/p0", GLOBEX)
        # Namespaces, as for claims.
        assert (await api.call("POST", "/v1/pods", ACME, {**pod("p0"), "namespace": "batch"})).status == 201
        assert await names_of(api, "/v1/pods", ACME, namespace="batch") == ["p0"]
        await api.ok("DELETE", "/v1/pods/p0", ACME, params={"namespace": "batch"})
        deleted = await api.ok("DELETE", "/v1/pods/p0", ACME)
        assert deleted["status"]["podIP"] == ips[0]
        n1 = await api.ok("GET", "/v1/nodes/n1")
        assert n1["status"]["allocated"]["pods"] == 1
        # The admin acting for acme sees and deletes acme's pods.
        assert "p1" in await names_of(api, "/v1/pods", ADMIN, org="acme", project="web")
        await api.ok("DELETE", "/v1/pods/p1", ADMIN, params={"org": "acme", "project": "web"})
        with api.member.reader() as view:
            check_invariants(view)

    run(tmp_path, check)


def test_pod_refusals_change_nothing(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1")
        before = api.objects_digest()
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, body={**pod("p"), "plan": {"nodeName": "n1"}})
        extra = await api.error(400, "invalid", "POST", "/v1/pods", ACME, body={**pod("p"), "extra": 1})
        assert extra.body["error"]["message"].endswith("allowed: name, namespace, labels, spec"), extra.body
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, body=pod("p", cpu="100"))  # type: ignore[arg-type]
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, body=pod("p", cpu=-1))
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, body={"name": "p", "spec": {"nodeName": "n1"}})
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, body={"name": "p", "spec": []})
        await api.error(400, "invalid", "POST", "/v1/pods", ACME, raw=b'{"name": "p", "spec": {"priority": 1.5}}')
        await api.error(400, "invalid", "POST", "/v1/pods", ADMIN, body=pod("p"))  # the platform has no project
        await api.error(400, "invalid", "GET", "/v1/pods", ACME, params={"fieldselector": "x"})
        assert api.objects_digest() == before
        assert api.member.planner.in_flight == 0
        # The same create twice is one pod; another spec under the name is refused.
        first = await api.call("POST", "/v1/pods", ACME, pod("p"))
        second = await api.call("POST", "/v1/pods", ACME, pod("p"))
        assert (first.status, second.status) == (201, 200)
        assert first.body["metadata"]["uid"] == second.body["metadata"]["uid"]
        await api.error(409, "already_exists", "POST", "/v1/pods", ACME, body=pod("p", cpu=200))
        assert api.member.planner.in_flight == 0

    run(tmp_path, check)


def test_an_org_of_many_projects_cannot_fill_the_queue_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Code review, 2026-12-08: with only a cluster-wide and a per-project bound, one org's
    projects together filled the queue and every other tenant's pod that did not fit at once
    was refused. An org has a bound of its own."""
    monkeypatch.setattr(scheduler, "pending_pods_per_project_max", 2)
    monkeypatch.setattr(scheduler, "pending_pods_per_org_max", 3)
    monkeypatch.setattr(scheduler, "pending_pods_max", 4)

    async def check(api: Api) -> None:
        await cluster(api, "n1", cpu=1000)
        for project, name in (("web", "a1"), ("web", "a2"), ("db", "a3")):
            query = f"?org=acme&project={project}"
            assert (await api.call("POST", f"/v1/pods{query}", ADMIN, pod(name, cpu=2000))).status == 201
        ops = "/v1/pods?org=acme&project=ops"
        full = await api.error(409, "unschedulable", "POST", ops, ADMIN, body=pod("a4", cpu=2000))
        assert full.body["error"]["details"]["scope"] == "org", full.body
        assert "org acme is at its limit of 3 pending pods" in full.body["error"]["message"]
        assert (await api.call("POST", "/v1/pods", GLOBEX, pod("g1", cpu=2000))).status == 201, "room for others"

    run(tmp_path, check)


def test_pending_pod_and_unschedulable_when_the_queue_is_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "pending_pods_per_project_max", 1)

    async def check(api: Api) -> None:
        await cluster(api, "n1", cpu=1000)
        pending = await api.call("POST", "/v1/pods", ACME, pod("big", cpu=2000))
        assert pending.status == 201 and pending.body["spec"]["nodeName"] is None
        assert pending.body["status"]["phase"] == "Pending"
        assert pending.body["status"]["message"] == "0/1 nodes available: Insufficient cpu on 1 node"
        before = api.objects_digest()
        full = await api.error(409, "unschedulable", "POST", "/v1/pods", ACME, body=pod("bigger", cpu=3000))
        assert "pending" in full.body["error"]["message"]
        details = full.body["error"]["details"]
        assert details == {"scope": "project", "limit": 1, "pending": 1, "reason": "Unschedulable"}, details
        assert api.objects_digest() == before
        # A pod that fits is still bound at once, and the other tenant has its own share.
        assert (await api.ok("POST", "/v1/pods", ACME, pod("small")))["spec"]["nodeName"] == "n1"
        assert (await api.call("POST", "/v1/pods", GLOBEX, pod("big", cpu=2000))).status == 201
        status = await api.ok("GET", "/v1/scheduler")
        assert status["pendingPods"] == 2 and status["nodes"] == 1
        # A tenant counts its own pending pods, not the other tenant's.
        assert (await api.ok("GET", "/v1/scheduler", ACME))["pendingPods"] == 1
        assert (await api.ok("GET", "/v1/scheduler", GLOBEX))["pendingPods"] == 1

    run(tmp_path, check)


# ---- quotas and services ---------------------------------------------------------------------


def test_quotas_set_read_enforce_and_delete(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        quota = {"name": "acme/web", "spec": {"pods": 2, "cpuMillis": 1000}}
        await api.error(403, "forbidden", "POST", "/v1/quotas", ACME, body=quota)
        assert (await api.call("POST", "/v1/quotas", ADMIN, quota)).status == 201
        assert (await api.call("POST", "/v1/quotas", ADMIN, {"name": "acme", "spec": {"pods": 5}})).status == 201
        # quota.set replaces: 200 when it exists
        assert (await api.call("POST", "/v1/quotas", ADMIN, quota)).status == 200
        for path in ("/v1/quotas/acme/web", "/v1/quotas/acme%2Fweb"):
            got = await api.ok("GET", path, ACME)
            assert got["spec"]["pods"] == 2 and got["status"]["used"]["pods"] == 0
        assert sorted(await names_of(api, "/v1/quotas", ACME)) == ["acme", "acme/web"]
        assert await names_of(api, "/v1/quotas", GLOBEX) == []
        await api.error(404, "not_found", "GET", "/v1/quotas/acme/web", GLOBEX)
        await api.error(404, "not_found", "GET", "/v1/quotas/a/b/c")
        # Over the quota even with nothing running: refused, 403 as Kubernetes answers.
        before = api.objects_digest()
        refused = await api.error(403, "quota_exceeded", "POST", "/v1/pods", ACME, body=pod("huge", cpu=1500))
        assert refused.body["error"]["details"]["resource"] == "cpuMillis"
        assert api.objects_digest() == before
        await api.ok("POST", "/v1/pods", ACME, pod("a"))
        await api.ok("POST", "/v1/pods", ACME, pod("b"))
        waiting = await api.ok("POST", "/v1/pods", ACME, pod("c"))  # would fit once another goes
        assert waiting["status"]["phase"] == "Pending" and waiting["status"]["reason"] == "QuotaExceeded"
        assert (await api.ok("GET", "/v1/quotas/acme/web"))["status"]["used"]["pods"] == 2
        await api.error(409, "conflict", "POST", "/v1/quotas", body={"name": "acme/web", "spec": {"pods": 1}})
        await api.ok("DELETE", "/v1/quotas/acme/web")  # removing the limit retries acme's pods
        assert (await api.ok("GET", "/v1/pods/c", ACME))["status"]["phase"] == "Bound"
        await api.error(404, "not_found", "DELETE", "/v1/quotas/acme/web")
        await api.error(400, "invalid", "POST", "/v1/quotas", body={"name": "acme", "spec": {"pods": "2"}})
        await api.error(400, "invalid", "POST", "/v1/quotas", body={"name": "acme", "spec": {"gpus": 1}})

    run(tmp_path, check)


def test_address_quotas_name_real_pools_and_org_quotas_hide_sibling_pools(tmp_path: Path) -> None:
    """An address limit under a name no charge carries would limit nothing: refused, with the
    id to use. An org quota counts every project's addresses by pool; a project reading it
    does not learn the names of a sibling project's pools."""

    async def check(api: Api) -> None:
        await api.ok(
            "POST", "/v1/ippools?org=acme&project=web", ADMIN, {"name": "lb", "spec": {"cidr": "10.97.0.0/24"}}
        )
        await api.ok(
            "POST", "/v1/ippools?org=acme&project=web", ADMIN, {"name": "secret", "spec": {"cidr": "10.98.0.0/24"}}
        )
        before = api.objects_digest()
        short = await api.error(
            400, "invalid", "POST", "/v1/quotas", body={"name": "acme/web", "spec": {"addressesByPool": {"lb": 1}}}
        )
        assert "acme/web's own pool lb has the id acme/web/lb" in short.body["error"]["message"]
        for spec in ({"addressesByPool": {"no-such-pool": 1}}, {"addressesByClass": {"no-such-class": 1}}):
            await api.error(400, "invalid", "POST", "/v1/quotas", body={"name": "acme/web", "spec": spec})
        assert api.objects_digest() == before
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"addressesByPool": {"acme/web/lb": 1}}})
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme", "spec": {"pods": 100}})
        for pool in ("lb", "secret"):
            await api.ok("POST", "/v1/services", ACME, {"name": pool, "spec": {"type": "ClusterIP", "poolRef": pool}})
        refused = await api.error(
            403, "quota_exceeded", "POST", "/v1/services", ACME, body={"name": "x", "spec": {"poolRef": "lb"}}
        )
        assert refused.body["error"]["details"]["resource"] == "addressesByPool.acme/web/lb"
        everything = {"acme/web/lb": 1, "acme/web/secret": 1}
        assert (await api.ok("GET", "/v1/quotas/acme"))["status"]["used"]["addressesByPool"] == everything
        assert (await api.ok("GET", "/v1/quotas/acme", ACME))["status"]["used"]["addressesByPool"] == everything
        for read in (
            api.ok("GET", "/v1/quotas/acme?org=acme&project=dev"),
            api.ok("GET", "/v1/quotas?org=acme&project=dev"),
        ):
            got = await read
            quota = (
                got
                if got["kind"] == "Quota"
                else next(item for item in got["items"] if item["metadata"]["name"] == "acme")
            )
            assert quota["status"]["used"]["addressesByPool"] == {}, quota["status"]

    run(tmp_path, check)


def test_a_quota_stays_editable_after_a_pool_or_class_it_limits_is_deleted(tmp_path: Path) -> None:
    """Deleting a pool or class does not look at quotas (the pool may be another tenant's), so
    a limit the quota already has may name one that is gone. Changing the quota's other limits
    keeps working; a new limit must still name something that exists."""

    async def check(api: Api) -> None:
        await api.ok(
            "POST", "/v1/ipclasses", ADMIN, {"name": "gone", "spec": {"ipFamily": "IPv4", "visibility": "platform"}}
        )
        await api.ok(
            "POST", "/v1/ippools?org=acme&project=web", ADMIN, {"name": "tmp", "spec": {"cidr": "10.97.0.0/24"}}
        )
        limits = {"addressesByPool": {"acme/web/tmp": 2}, "addressesByClass": {"gone": 3}}
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "globex/prod", "spec": limits})
        await api.ok("DELETE", "/v1/ippools/tmp", ACME)
        await api.ok("DELETE", "/v1/ipclasses/gone", ADMIN)
        raised = await api.ok("POST", "/v1/quotas", ADMIN, {"name": "globex/prod", "spec": {**limits, "services": 9}})
        assert raised["spec"] == {**limits, "services": 9}
        before = api.objects_digest()
        stale_and_new = {**limits, "addressesByPool": {"acme/web/tmp": 2, "acme/web/other": 1}}
        refused = await api.error(
            400, "invalid", "POST", "/v1/quotas", body={"name": "globex/prod", "spec": stale_and_new}
        )
        assert refused.body["error"]["details"]["field"] == "spec.addressesByPool.acme/web/other"
        assert api.objects_digest() == before

    run(tmp_path, check)


def test_a_service_through_a_class_skips_a_pool_its_quota_has_no_room_in(tmp_path: Path) -> None:
    """A per-pool address limit reached in one backing pool of a class sends the next service
    to another backing pool; only when every backing pool is at its limit is it refused."""

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ipclasses", ADMIN, {"name": "multi", "spec": {"ipFamily": "IPv4"}})
        for name, cidr in (("ma", "10.110.0.0/30"), ("mb", "10.111.0.0/30")):
            await api.ok("POST", "/v1/ippools", ADMIN, {"name": name, "spec": {"cidr": cidr, "classNames": ["multi"]}})
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"addressesByPool": {"ma": 1}}})
        through_class = {"className": "multi"}
        first = await api.ok("POST", "/v1/services", ACME, {"name": "m1", "spec": through_class})
        second = await api.ok("POST", "/v1/services", ACME, {"name": "m2", "spec": through_class})
        assert (first["status"]["pool"], second["status"]["pool"]) == ("ma", "mb")
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"addressesByPool": {"ma": 1, "mb": 1}}})
        before = api.objects_digest()
        refused = await api.error(
            403, "quota_exceeded", "POST", "/v1/services", ACME, body={"name": "m3", "spec": through_class}
        )
        assert refused.body["error"]["details"]["resource"] == "addressesByPool.ma"
        assert api.objects_digest() == before
        used = (await api.ok("GET", "/v1/quotas/acme/web"))["status"]["used"]
        assert used["addressesByPool"] == {"ma": 1, "mb": 1} and used["addressesByClass"] == {"multi": 2}

    run(tmp_path, check)


def test_services_get_addresses_and_release_them(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, SERVICE_POOL)
        body = {"name": "web", "spec": {"type": "ClusterIP", "poolRef": "svc", "ports": [{"port": 80}]}}
        created = await api.call("POST", "/v1/services", ACME, body)
        assert created.status == 201, created
        address = created.body["status"]["address"]
        assert address.startswith("10.96.0.")
        assert await names_of(api, "/v1/services", ACME) == ["web"]
        assert await names_of(api, "/v1/services", GLOBEX) == []
        await api.error(404, "not_found", "GET", "/v1/services/web", GLOBEX)
        wanted = {"name": "lb", "spec": {"type": "LoadBalancer", "poolRef": "svc", "address": address}}
        await api.error(409, "conflict", "POST", "/v1/services", GLOBEX, body=wanted)  # taken
        await api.error(400, "invalid", "POST", "/v1/services", ACME, body={"name": "x", "spec": {"type": "NodePort"}})
        await api.ok("DELETE", "/v1/services/web", ACME)
        again = await api.call("POST", "/v1/services", GLOBEX, wanted)  # released: free to take
        assert again.status == 201 and again.body["status"]["address"] == address

    run(tmp_path, check)


# ---- the scheduler's routes --------------------------------------------------------------------


def test_scheduler_policy_and_retry_routes(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        status = await api.ok("GET", "/v1/scheduler", ACME)
        assert status["kind"] == "SchedulerStatus" and status["policy"] == "spread" and status["nodes"] == 2
        await api.error(403, "forbidden", "PUT", "/v1/scheduler", ACME, body={"policy": "binpack"})
        await api.error(400, "invalid", "PUT", "/v1/scheduler", body={"policy": "random"})
        await api.error(400, "invalid", "PUT", "/v1/scheduler", body={"policy": "binpack", "extra": 1})
        assert (await api.ok("PUT", "/v1/scheduler", ADMIN, {"policy": "binpack"}))["policy"] == "binpack"
        placed = [(await api.ok("POST", "/v1/pods", ACME, pod(f"p{n}")))["spec"]["nodeName"] for n in range(3)]
        assert placed == ["n1", "n1", "n1"]  # binpack: most allocated first
        assert (await api.ok("PUT", "/v1/scheduler", ADMIN, {"policy": "spread"}))["policy"] == "spread"
        assert (await api.ok("POST", "/v1/pods", ACME, pod("s")))["spec"]["nodeName"] == "n2"
        swept = await api.ok("POST", "/v1/scheduler/retry", ADMIN, {"pods": 4})
        assert swept["examined"] == 0 and swept["bound"] == 0
        assert (await api.call("POST", "/v1/scheduler/retry", ADMIN)).status == 200  # no body: the default
        await api.error(400, "invalid", "POST", "/v1/scheduler/retry", body={"pods": 17})
        await api.error(403, "forbidden", "POST", "/v1/scheduler/retry", ACME, body={})
        await api.error(405, "method_not_allowed", "DELETE", "/v1/scheduler")

    run(tmp_path, check)


# ---- field selectors -------------------------------------------------------------------------


def test_field_selectors_on_lists(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2", cpu=1000)
        for number in range(4):
            await api.ok("POST", "/v1/pods", ACME if number % 2 else GLOBEX, pod(f"p{number}"))
        await api.ok("POST", "/v1/pods", ACME, pod("waiting", cpu=5000))
        # The platform admin (a node agent) lists one node's pods, every tenant's.
        assert await names_of(api, "/v1/pods", ADMIN, fieldSelector="spec.nodeName=n1") == ["p0", "p2"]
        assert await names_of(api, "/v1/pods", ADMIN, fieldSelector="spec.nodeName=n2") == ["p1", "p3"]
        assert await names_of(api, "/v1/pods", ACME, fieldSelector="spec.nodeName=n2") == ["p1", "p3"]
        assert await names_of(api, "/v1/pods", ACME, fieldSelector="spec.nodeName=n1") == []
        assert await names_of(api, "/v1/pods", ADMIN, fieldSelector="status.phase=Pending") == ["waiting"]
        assert await names_of(api, "/v1/pods", ADMIN, fieldSelector="spec.nodeName=") == ["waiting"]
        both = {"fieldSelector": "spec.nodeName=n1,status.phase=Bound", "limit": "1"}
        page = await api.ok("GET", "/v1/pods", ADMIN, params=both)
        assert [item["metadata"]["name"] for item in page["items"]] == ["p0"]
        rest = await api.ok("GET", "/v1/pods", ADMIN, params={**both, "continue": page["metadata"]["continue"]})
        assert [item["metadata"]["name"] for item in rest["items"]] == ["p2"]
        await api.error(400, "invalid", "GET", "/v1/pods", params={"fieldSelector": "metadata.name=p0"})
        await api.error(400, "invalid", "GET", "/v1/pods", params={"fieldSelector": "spec.nodeName"})
        await api.error(400, "invalid", "GET", "/v1/ipclaims", params={"fieldSelector": "spec.nodeName=n1"})
        await api.error(400, "invalid", "GET", "/v1/pods", params={"fieldSelector": "x=" + "y" * 2000})

    run(tmp_path, check)


def test_watch_with_a_field_selector_sees_exactly_its_nodes_pods(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        start = (await api.ok("GET", "/v1/scheduler"))["resourceVersion"]
        url = watch_url("pods", start, fieldSelector="spec.nodeName=n1")
        async with api.client.get(url, headers=auth(ADMIN)) as response:
            assert response.status == 200
            for number in range(4):  # spread: p0, p2 on n1; p1, p3 on n2
                await api.ok("POST", "/v1/pods", ACME if number < 2 else GLOBEX, pod(f"p{number}"))
            await api.ok("DELETE", "/v1/pods/p0", ACME)
            await api.ok("DELETE", "/v1/pods/p1", ACME)  # on n2: not this watch's
            await api.ok("POST", "/v1/nodes/n1/drain")
            events = await read_events(response, 4)
        seen = [(event["type"], event["object"]["metadata"]["name"]) for event in events]
        assert seen == [("ADDED", "p0"), ("ADDED", "p2"), ("DELETED", "p0"), ("DELETED", "p2")]
        # Drained off n1, and bound to n2 in the same revision: one event, the pod as that
        # revision left it, DELETED for n1's agent since it left the selection (as Kubernetes).
        moved = events[-1]["object"]
        assert moved["spec"]["nodeName"] == "n2" and moved["status"]["phase"] == "Bound", moved
        # A selector is checked before the stream starts, with or without a resourceVersion.
        for bad in (watch_url("pods", fieldSelector="spec.zone=a"), watch_url("pods,nodes", 0, fieldSelector="x=")):
            async with api.client.get(bad, headers=auth(ADMIN)) as response:
                assert response.status == 400
                assert (await response.json())["error"]["code"] == "invalid"
        # A tenant's watch with a selector sees only its own pods on the node; p2, moved onto
        # n2 by the drain, enters this selection: ADDED.
        url = watch_url("pods", start, fieldSelector="spec.nodeName=n2")
        async with api.client.get(url, headers=auth(GLOBEX)) as response:
            events = await read_events(response, 2)
        assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [
            ("ADDED", "p3"),
            ("ADDED", "p2"),
        ]

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2))


def test_a_node_registered_unschedulable_takes_pods_only_once_uncordoned(tmp_path: Path) -> None:
    """A node is Ready from its registration; `spec.unschedulable: true` (Kubernetes' Node field)
    registers it cordoned, so a node listed before its agent runs takes no pending pods."""

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, POD_POOL)
        assert (await api.call("POST", "/v1/pods", ACME, pod("waiting"))).body["status"]["phase"] == "Pending"
        body = node("later")
        body["spec"]["unschedulable"] = True
        registered = await api.ok("POST", "/v1/nodes", ADMIN, body)
        assert registered["spec"]["unschedulable"] is True
        assert (await api.ok("GET", "/v1/pods/waiting", ACME))["status"]["phase"] == "Pending"
        assert (await api.ok("POST", "/v1/nodes", ADMIN, body))["metadata"]["name"] == "later"  # same again
        await api.ok("POST", "/v1/nodes/later/uncordon")
        bound = await api.ok("GET", "/v1/pods/waiting", ACME)
        assert bound["status"]["phase"] == "Bound" and bound["spec"]["nodeName"] == "later"
        body["spec"]["unschedulable"] = "yes"
        await api.error(400, "invalid", "POST", "/v1/nodes", body={**body, "name": "bad"})

    run(tmp_path, check)


def test_a_node_may_have_a_dotted_name(tmp_path: Path) -> None:
    """Node names are DNS subdomains, as Kubernetes' are: clouds name nodes
    `ip-10-0-0-1.ec2.internal` (exploratory testing, 2026-12-07: refused as not a DNS label)."""
    fqdn = "ip-10-0-0-1.ec2.internal"

    async def check(api: Api) -> None:
        await cluster(api, fqdn)
        assert (await api.ok("GET", f"/v1/nodes/{fqdn}", ACME))["metadata"]["name"] == fqdn
        assert (await api.ok("POST", f"/v1/nodes/{fqdn}/heartbeat"))["name"] == fqdn
        placed = await api.ok("POST", "/v1/pods", ACME, pod("p1"))
        assert placed["spec"]["nodeName"] == fqdn
        assert await names_of(api, "/v1/pods", ADMIN, fieldSelector=f"spec.nodeName={fqdn}") == ["p1"]
        assert (await api.ok("POST", f"/v1/nodes/{fqdn}/cordon"))["spec"]["unschedulable"] is True
        for bad in ("a..b", ".a", "a.", "A.b", "a_b.c", "a." + "b" * 240):
            await api.error(400, "invalid", "POST", "/v1/nodes", body=node(bad))
        await api.error(400, "invalid", "GET", "/v1/pods", params={"fieldSelector": "spec.nodeName=a..b"})

    run(tmp_path, check)


# ---- heartbeats and the leader's timers ---------------------------------------------------------


class LaggingMember(LocalMember):
    """A member that has not applied `behind` yet; a read barrier catches it up, as a
    follower's does (it waits until it has applied everything the leader had committed)."""

    def __init__(self) -> None:
        super().__init__()
        self.behind: list[bytes] = []
        self.barriers = 0

    async def read_barrier(self, timeout_s: float) -> None:
        self.barriers += 1
        while self.behind:
            await self.submit(self.behind.pop(0), timeout_s)


def test_a_heartbeat_for_a_node_registered_elsewhere_a_moment_ago_is_answered(tmp_path: Path) -> None:
    member = LaggingMember()
    register = Envelope("node.register", node("fresh"), Principal("root", "", "", "admin"), None, 1_767_225_600_000)

    async def check(api: Api) -> None:
        await cluster(api, "n1")
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        assert member.barriers == 0  # a node this member knows needs no barrier
        member.behind.append(encode_envelope(register))  # committed, not applied here yet
        beat = await api.ok("POST", "/v1/nodes/fresh/heartbeat")
        assert beat["name"] == "fresh" and member.barriers == 1
        await api.error(404, "not_found", "POST", "/v1/nodes/ghost/heartbeat")  # still unknown after one
        assert member.barriers == 2

    run(tmp_path, check, member=member)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_heartbeat_route(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1")
        before = api.digest()
        beat = await api.ok("POST", "/v1/nodes/n1/heartbeat")
        assert beat == {"kind": "NodeHeartbeat", "name": "n1", "ready": True, "memberId": "local"}
        assert api.member.heartbeats.last_seen("n1") is not None
        assert api.digest() == before  # heartbeats never enter the state
        await api.error(403, "forbidden", "POST", "/v1/nodes/n1/heartbeat", ACME)
        await api.error(400, "invalid", "POST", "/v1/nodes/n1/heartbeat", params={"org": "acme", "project": "web"})
        await api.error(404, "not_found", "POST", "/v1/nodes/ghost/heartbeat")
        await api.error(400, "invalid", "POST", "/v1/nodes/n1/heartbeat", body={"load": 3})
        await api.error(400, "invalid", "POST", "/v1/nodes/Bad_Name/heartbeat")
        await api.error(401, "unauthorized", "POST", "/v1/nodes/n1/heartbeat", None)
        assert api.member.heartbeats.last_seen("ghost") is None

    run(tmp_path, check)


def test_leader_timers_mark_nodes_not_ready_and_ready_again(tmp_path: Path) -> None:
    clock = Clock()
    member = LocalMember(clock=clock)
    grace = member.timers.monitor.grace_s

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        member.run_timers(clock.now)  # elected now: nobody is judged before a full grace
        clock.now += grace / 2
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        await api.ok("POST", "/v1/nodes/n2/heartbeat")
        clock.now += grace * 0.9  # n1 goes on beating, n2 falls silent
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert member.timers.conditions_proposed == 0
        clock.now += grace * 0.2  # n2 silent for 1.1 grace periods
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        n2 = await api.ok("GET", "/v1/nodes/n2")
        assert n2["status"]["ready"] is False and n2["status"]["conditionReason"].startswith("NodeStatusUnknown")
        assert (await api.ok("GET", "/v1/nodes/n1"))["status"]["ready"] is True
        assert member.timers.conditions_proposed == 1
        member.run_timers(clock.now + 1)  # once per transition: no second proposal
        await member.timers.settle()
        assert member.timers.conditions_proposed == 1
        for number in range(3):  # no new pod binds on the NotReady node
            assert (await api.ok("POST", "/v1/pods", ACME, pod(f"p{number}")))["spec"]["nodeName"] == "n1"
        beat = await api.ok("POST", "/v1/nodes/n2/heartbeat")
        assert beat["ready"] is False
        member.run_timers(clock.now)
        await member.timers.settle()
        n2 = await api.ok("GET", "/v1/nodes/n2")
        assert n2["status"]["ready"] is True and n2["status"]["conditionReason"] == "NodeHeartbeatResumed"
        assert member.timers.conditions_proposed == 2
        assert (await api.ok("POST", "/v1/pods", ACME, pod("p3")))["spec"]["nodeName"] == "n2"

    run(tmp_path, check, member=member)


def test_capacity_growth_sweeps_the_whole_queue_not_only_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Uncordoning a node offers it, in the same apply, to the first 32 queue entries only; a
    pod further back that only that node can hold is bound by the pass of sweeps the leader
    starts when it sees capacity grow, not after (pending / 16) timer sweeps."""
    monkeypatch.setattr("node.scheduling.pass_pause_min_s", 0.001)
    clock = Clock()
    member = LocalMember(clock=clock)

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2", cpu=1000)
        await api.ok("POST", "/v1/nodes/n2/cordon", ADMIN)
        member.run_timers(clock.now)  # leads from here; nothing pending yet
        await member.timers.settle()
        for number in range(40):  # ahead in the queue (priority), and no node can ever hold them
            await api.ok("POST", "/v1/pods", ACME, pod(f"huge-{number}", cpu=64_000, priority=100))
        late = await api.ok("POST", "/v1/pods", ACME, pod("late", nodeSelector={"rack": "2"}))
        assert late["status"]["phase"] == "Pending"
        await api.ok("POST", "/v1/nodes/n2/uncordon", ADMIN)
        assert (await api.ok("GET", "/v1/pods/late", ACME))["status"]["phase"] == "Pending"  # not in the 32
        sweeps_before = member.timers.sweeps_proposed
        member.run_timers(clock.now)  # the timer's own sweep is not due: only the pass runs
        await member.timers.settle()
        bound = await api.ok("GET", "/v1/pods/late", ACME)
        assert bound["status"]["phase"] == "Bound" and bound["spec"]["nodeName"] == "n2", bound["status"]
        assert member.timers.passes_started == 1
        assert member.timers.sweeps_proposed - sweeps_before == 3  # 41 pending, 16 a sweep

    run(tmp_path, check, member=member)


def test_a_raised_quota_sweeps_the_whole_queue_not_only_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota raised is capacity growth too: a pod waiting on its project's quota behind 40
    pods that no node can hold is bound by the leader's pass. The member hands its planner the
    writes `Planner.observed` picks, as a replicated member does (a member that dropped quota
    writes there left such a pod to the timer's sweeps)."""
    monkeypatch.setattr("node.scheduling.pass_pause_min_s", 0.001)
    clock = Clock()
    member = LocalMember(clock=clock)

    async def check(api: Api) -> None:
        await cluster(api, "n1", cpu=1000)
        member.run_timers(clock.now)  # leads from here; nothing pending yet
        await member.timers.settle()
        assert (await api.call("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"pods": 1}})).status == 201
        await api.ok("POST", "/v1/pods", ACME, pod("first"))
        for number in range(40):  # ahead in the queue (priority), and no node can ever hold them
            await api.ok("POST", "/v1/pods", GLOBEX, pod(f"huge-{number}", cpu=64_000, priority=100))
        late = await api.ok("POST", "/v1/pods", ACME, pod("late"))
        assert late["status"]["reason"] == "QuotaExceeded", late["status"]
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"pods": 2}})
        assert (await api.ok("GET", "/v1/pods/late", ACME))["status"]["phase"] == "Pending"  # not in the 32
        member.run_timers(clock.now)  # the timer's own sweep is not due: only the pass runs
        await member.timers.settle()
        bound = await api.ok("GET", "/v1/pods/late", ACME)
        assert bound["status"]["phase"] == "Bound", bound["status"]
        assert member.timers.passes_started == 1

    run(tmp_path, check, member=member)


def test_planner_is_handed_node_scheduler_and_quota_writes_only() -> None:
    writes = [
        (keys.NODE_STATE + b"n1", b"x"),
        (keys.SCHEDULER, b"y"),
        (keys.QUOTA + b"acme/web", None),
        (keys.LEDGER + b"acme/web", b"z"),
        (keys.POD + b"acme/web/default/p", b"w"),
        (keys.META, b"m"),
    ]
    assert [key for key, _ in Planner.observed(writes)] == [
        keys.NODE_STATE + b"n1",
        keys.SCHEDULER,
        keys.QUOTA + b"acme/web",
    ]


def test_leader_timers_sweep_only_while_pods_are_pending(tmp_path: Path) -> None:
    clock = Clock()
    member = LocalMember(clock=clock)
    retry_s = member.timers.pending_retry_s

    async def check(api: Api) -> None:
        await cluster(api, "n1", cpu=1000)
        member.run_timers(clock.now)
        clock.now += retry_s * 3
        for _ in range(2):
            await api.ok("POST", "/v1/nodes/n1/heartbeat")
            member.run_timers(clock.now)
            await member.timers.settle()
        assert member.timers.sweeps_proposed == 0  # nothing pending: no writes
        await api.ok("POST", "/v1/pods", ACME, pod("waiting", cpu=2000))
        member.run_timers(clock.now)
        await member.timers.settle()
        assert member.timers.sweeps_proposed == 1
        member.run_timers(clock.now + retry_s / 2)  # not yet due
        await member.timers.settle()
        assert member.timers.sweeps_proposed == 1
        clock.now += retry_s
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert member.timers.sweeps_proposed == 2
        status = await api.ok("GET", "/v1/scheduler")
        assert status["pendingPods"] == 1
        # Sweeps that bind nothing back off (the log would grow by an entry every retry_s for
        # as long as the pod waits): after the second, retry_s, then 2, 4, ... times it, up to
        # a minute.
        gaps = []
        for _ in range(8):
            before, started = member.timers.sweeps_proposed, clock.now
            while member.timers.sweeps_proposed == before:
                clock.now += retry_s / 4
                await api.ok("POST", "/v1/nodes/n1/heartbeat")
                member.run_timers(clock.now)
                await member.timers.settle()
            gaps.append(round((clock.now - started) / retry_s))
        backoff_max = scheduling.sweep_backoff_max_s / retry_s
        assert gaps == [min(backoff_max, 2**power) for power in range(8)], gaps
        # An empty queue ends the backoff: the next pod that waits is swept every retry_s.
        assert member.timers.idle_sweeps > 0 and member.timers.sweep_interval_s() == scheduling.sweep_backoff_max_s
        await api.ok("DELETE", "/v1/pods/waiting", ACME)
        member.run_timers(clock.now)
        assert member.timers.idle_sweeps == 0 and member.timers.sweep_interval_s() == retry_s
        await api.ok("POST", "/v1/pods", ACME, pod("waiting", cpu=2000))
        # Capacity growth ends the backoff: a pass at once, and timer sweeps every retry_s again.
        await api.ok("POST", "/v1/nodes", ADMIN, node("n2", cpu=4000))
        member.run_timers(clock.now)
        await member.timers.settle()
        assert (await api.ok("GET", "/v1/pods/waiting", ACME))["spec"]["nodeName"] == "n2"
        assert member.timers.idle_sweeps == 0

    run(tmp_path, check, member=member)


def test_timer_sweeps_back_off_only_after_a_whole_lap_of_the_queue(tmp_path: Path) -> None:
    """With 40 pods pending (a lap: 3 sweeps of 16), the timer sweeps keep pending_retry_s
    until a lap has bound nothing, then back off; a new leadership starts a lap again."""
    clock = Clock()
    member = LocalMember(clock=clock)
    retry_s = member.timers.pending_retry_s

    async def gaps(count: int, leader_term: int) -> list[int]:
        found = []
        for _ in range(count):
            before, started = member.timers.sweeps_proposed, clock.now
            while member.timers.sweeps_proposed == before:
                clock.now += retry_s / 4
                await api_ref[0].ok("POST", "/v1/nodes/n1/heartbeat")
                with member.reader() as view:
                    member.timers.run_once(view, leader_term, clock.now)
                await member.timers.settle()
            found.append(round((clock.now - started) / retry_s))
        return found

    api_ref: list[Api] = []

    async def check(api: Api) -> None:
        api_ref.append(api)
        await cluster(api, "n1", cpu=1000)
        for number in range(40):
            await api.ok("POST", "/v1/pods", ACME, pod(f"huge-{number}", cpu=64_000))
        assert await gaps(1, 1) == [1]  # the first sweep, a retry_s after the election
        assert await gaps(6, 1) == [1, 1, 1, 1, 2, 4]  # a lap of 3 idle sweeps, then backing off
        with member.reader() as view:
            member.timers.run_once(view, None, clock.now)  # loses the lead, and wins it again
        assert member.timers.idle_sweeps == 0
        assert await gaps(6, 2) == [1, 1, 1, 1, 1, 2]  # from the election: a retry_s, then a lap

    run(tmp_path, check, member=member)


def test_node_monitor_rules() -> None:
    clock = Clock()
    table = HeartbeatTable(clock, names_max=3)
    monitor = NodeMonitor(table, grace_s=10, pod_eviction_s=300)
    assert monitor.verdicts({"a": True}, clock.now) == []  # not the leader
    monitor.became_leader(clock.now)
    table.record("a", forward=True)
    assert monitor.verdicts({"a": True, "b": True, "c": False}, clock.now) == []  # first seen now
    assert monitor.verdicts({"a": True, "b": True, "c": False}, clock.now + 10) == []
    judged = monitor.verdicts({"a": True, "b": True, "c": False}, clock.now + 10.5)
    assert [(v.name, v.ready) for v in judged] == [("a", False), ("b", False)]
    # a was heard (at the election); b never was, so its silence is only known since the election.
    assert [v.reason for v in judged] == [
        "NodeStatusUnknown: no heartbeat for 10.5 s",
        "NodeStatusUnknown: no heartbeat heard by this leader in 10.5 s",
    ]
    monitor.in_flight.add("a")
    assert [v.name for v in monitor.verdicts({"a": True, "b": True}, clock.now + 11)] == ["b"]
    # A node first seen by this leader later gets its own full grace.
    assert monitor.verdicts({"late": True}, clock.now + 20) == []
    assert [v.name for v in monitor.verdicts({"late": True}, clock.now + 30.5)] == ["late"]
    # Heard again within the grace: Ready.
    clock.now += 40
    table.record("c", forward=False)
    assert [(v.name, v.ready) for v in monitor.verdicts({"c": False}, clock.now + 5)] == [("c", True)]
    assert monitor.verdicts({"c": False}, clock.now + 10.5) == []
    # The table is bounded, the outbox forwards what was heard here, and pruning forgets.
    assert table.record("d", forward=True) is True
    assert table.record("e", forward=True) is False  # a, c, d: the table is full
    assert table.take_outbox() == ["a", "d"]
    assert table.take_outbox() == []
    table.prune({"c": True})
    assert len(table) == 1 and table.last_seen("a") is None


def test_node_monitor_eviction_rules() -> None:
    """When the leader proposes node.evict_unready: for a NotReady node with pods, at once (the
    answer says when the next pod goes), then at that NotReady time; not while it is heard within
    the grace; one node at a time; none while more than 55 % of the nodes are NotReady."""
    clock = Clock()
    table = HeartbeatTable(clock)
    monitor = NodeMonitor(table, grace_s=10, pod_eviction_s=60)
    bound = {"a": 2, "b": 0, "c": 1, "d": 1, "e": 1}
    down = {"a": False, "b": False, "c": True, "d": True, "e": True}  # 2 of 5 NotReady

    def due(readiness: dict[str, bool], at: float) -> list[str]:
        return monitor.evictions_due(readiness, bound.__getitem__, clock.now + at)

    assert due(down, 1000) == []  # not the leader
    monitor.became_leader(clock.now)
    assert due(down, 0) == ["a"]  # at once: b has no pods, c is Ready
    assert monitor.not_ready_ms("a", clock.now + 1.5) == 1500  # NotReady from its first sight
    monitor.evicting.add("a")
    assert due(down, 1) == []  # in flight
    monitor.evicting.discard("a")  # that proposal failed: proposed again
    assert due(down, 2) == ["a"]
    monitor.evicted("a", 60_000)  # the answer: the next pod goes at 60 s of NotReady
    assert due(down, 59) == []
    assert due(down, 60) == ["a"]
    monitor.evicted("a", None)  # what is left tolerates the taint for ever
    assert due(down, 600) == []
    # Ready again, then NotReady: a new spell, from the start.
    assert due({**down, "a": True}, 601) == []
    assert due(down, 602) == ["a"] and monitor.not_ready_ms("a", clock.now + 603) == 1000
    monitor.evicted("a", 60_000)
    # Heard within the grace (a Ready verdict is due) or with a condition in flight: not evicted.
    clock.now += 660
    table.record("a", forward=False)
    assert due(down, 5) == []
    monitor.in_flight.add("a")
    assert due(down, 20) == []
    # A new leader counts from its election: late after a leader change, never early.
    monitor.lost_leadership()
    monitor.became_leader(clock.now + 30)
    assert due(down, 30) == ["a"] and monitor.not_ready_ms("a", clock.now + 30) == 0
    monitor.evicted("a", 60_000)
    assert due(down, 89) == []
    assert due(down, 90) == ["a"]
    monitor.evicted("a", None)
    # A node an earlier leader declared NotReady counts from when this member applied that
    # transition, when it saw it: a leader change does not restart the clock.
    monitor.lost_leadership()
    monitor.became_leader(clock.now + 40)
    assert due(down, 40) == ["a"]  # nothing known of when it went NotReady: from now, as above
    monitor.lost_leadership()
    monitor.became_leader(clock.now + 41)
    assert monitor.evictions_due(down, bound.__getitem__, clock.now + 41, lambda name: 45.0) == ["a"]
    assert monitor.not_ready_ms("a", clock.now + 41) == 45_000
    monitor.evicted("a", 60_000)
    assert monitor.evictions_due(down, bound.__getitem__, clock.now + 55.9, lambda name: 0.0) == []
    assert monitor.evictions_due(down, bound.__getitem__, clock.now + 56, lambda name: 0.0) == ["a"]
    monitor.evicted("a", None)
    # A node this leader itself declared NotReady counts from that verdict.
    monitor.marked_not_ready("b", clock.now + 100)
    bound["b"] = 1
    assert monitor.not_ready_ms("b", clock.now + 101) == 1000
    assert due(down, 101) == ["b"]
    monitor.evicted("b", None)
    # More than 55 % NotReady looks like the leader losing heartbeats: nothing is evicted, however long.
    more_down = {**down, "c": False}  # 3 of 5 NotReady: 60 %
    assert due(more_down, 161) == []
    assert monitor.evictions_held
    assert due(more_down, 10_000) == []
    # One node at a time: while one eviction is in flight, the next waits.
    monitor.lost_leadership()
    monitor.became_leader(clock.now + 20_000)
    two_down = {"a": True, "b": True, "c": False, "d": False, "e": True}
    assert due(two_down, 20_000) == ["c"]
    assert not monitor.evictions_held
    monitor.evicting.add("c")
    assert due(two_down, 20_001) == []  # d waits for c
    monitor.evicting.discard("c")
    monitor.evicted("c", None)
    assert due(two_down, 20_002) == ["d"]


def test_the_leader_evicts_the_pods_of_a_node_not_ready_too_long(tmp_path: Path) -> None:
    """n2 falls silent: NotReady after the grace, and after the pod eviction timeout the leader
    proposes node.evict_unready once; the pods that do not tolerate node.kubernetes.io/unreachable
    are bound again on n1, the one that does stays on n2. Heard again, n2 is Ready and takes pods."""
    clock = Clock()
    member = LocalMember(clock=clock)
    grace = member.timers.monitor.grace_s
    eviction = member.timers.monitor.pod_eviction_s
    stays = {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"}

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        member.run_timers(clock.now)  # leads from here
        await api.ok("POST", "/v1/nodes/n1/cordon", ADMIN)  # both pods land on n2
        assert (await api.ok("POST", "/v1/pods", ACME, pod("web")))["spec"]["nodeName"] == "n2"
        assert (await api.ok("POST", "/v1/pods", ACME, pod("agent", tolerations=[stays])))["spec"]["nodeName"] == "n2"
        await api.ok("POST", "/v1/nodes/n1/uncordon", ADMIN)
        clock.now += grace / 2
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        clock.now += grace  # n2 silent for 1.5 grace periods: NotReady, its pods still bound
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert (await api.ok("GET", "/v1/nodes/n2"))["status"]["ready"] is False
        assert (await api.ok("GET", "/v1/pods/web", ACME))["spec"]["nodeName"] == "n2"
        clock.now += eviction * 0.9  # the leader counts from when it saw n2 NotReady
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert member.timers.evictions_proposed == 1  # at once: nothing went, its answer says when
        assert member.scheduling_stats()["podsEvicted"] == 0
        assert (await api.ok("GET", "/v1/pods/web", ACME))["spec"]["nodeName"] == "n2"
        clock.now += eviction * 0.2
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert member.timers.evictions_proposed == 2 and member.scheduling_stats()["podsEvicted"] == 1
        web = await api.ok("GET", "/v1/pods/web", ACME)
        assert web["status"]["phase"] == "Bound" and web["spec"]["nodeName"] == "n1", web["status"]
        assert (await api.ok("GET", "/v1/pods/agent", ACME))["spec"]["nodeName"] == "n2"
        member.run_timers(clock.now + 1)  # the agent stays for ever: not proposed again
        await member.timers.settle()
        assert member.timers.evictions_proposed == 2
        await api.ok("POST", "/v1/nodes/n2/heartbeat")
        member.run_timers(clock.now + 1)
        await member.timers.settle()
        assert (await api.ok("GET", "/v1/nodes/n2"))["status"]["ready"] is True
        on_n2 = pod("late", nodeSelector={"kubernetes.io/hostname": "n2"})
        assert (await api.ok("POST", "/v1/pods", ACME, on_n2))["spec"]["nodeName"] == "n2"

    run(tmp_path, check, member=member)


def test_a_new_leader_counts_the_eviction_timeout_from_when_it_applied_the_not_ready_transition(
    tmp_path: Path,
) -> None:
    """n2 goes NotReady; the member then loses and regains the lead (a leader change, as far as
    its timers know): it evicts n2's pods when n2 has been NotReady for the timeout since the
    member applied the transition, not a whole timeout after its own election. A planner that
    did not see the transition (reloaded, as after a snapshot) knows nothing of it."""
    clock = Clock()
    member = LocalMember(clock=clock)
    grace, eviction = member.timers.monitor.grace_s, member.timers.monitor.pod_eviction_s

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        member.run_timers(clock.now)  # leads from here
        await api.ok("POST", "/v1/nodes/n1/cordon", ADMIN)
        assert (await api.ok("POST", "/v1/pods", ACME, pod("web")))["spec"]["nodeName"] == "n2"
        await api.ok("POST", "/v1/nodes/n1/uncordon", ADMIN)
        clock.now += grace * 1.5  # n2 silent: NotReady
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        member.run_timers(clock.now)
        await member.timers.settle()
        assert (await api.ok("GET", "/v1/nodes/n2"))["status"]["ready"] is False
        with member.reader() as view:
            member.timers.run_once(view, None, clock.now)  # no longer leads
        clock.now += eviction * 0.6
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        with member.reader() as view:
            member.timers.run_once(view, 2, clock.now)  # leads again, in a new term
        await member.timers.settle()
        assert member.timers.monitor.not_ready_ms("n2", clock.now) == eviction * 600
        assert member.scheduling_stats()["podsEvicted"] == 0, "not yet: NotReady for 0.6 of the timeout"
        clock.now += eviction * 0.45  # 1.05 timeouts since n2 went NotReady, 0.45 since the election
        await api.ok("POST", "/v1/nodes/n1/heartbeat")
        with member.reader() as view:
            member.timers.run_once(view, 2, clock.now)
        await member.timers.settle()
        assert member.scheduling_stats()["podsEvicted"] == 1
        assert (await api.ok("GET", "/v1/pods/web", ACME))["spec"]["nodeName"] == "n1"
        assert member.planner.not_ready_for_s("n2", clock.now) == pytest.approx(eviction * 1.05)
        member.planner.invalidate()
        assert member.planner.not_ready_for_s("n2", clock.now) is None

    run(tmp_path, check, member=member)


def test_the_leader_evicts_pods_whose_toleration_seconds_ran_out(tmp_path: Path) -> None:
    """A NoExecute taint and a cordon by PATCH: the pod without a toleration leaves at once;
    the one that tolerates it for 60 s stays until the leader's timers, on their wall clock, see
    the time recorded in n2's record pass and propose node.evict_tainted; then it binds on n1
    (n2 is cordoned: a pod that tolerates the taint could bind there again, for its time)."""
    wall = [time.time_ns() // 1_000_000]
    member = LocalMember(wall_ms=lambda: wall[0])
    for_a_minute = {"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}

    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        member.run_timers(0.0)  # leads from here
        await api.ok("POST", "/v1/nodes/n1/cordon", ADMIN)
        assert (await api.ok("POST", "/v1/pods", ACME, pod("plain")))["spec"]["nodeName"] == "n2"
        brief = await api.ok("POST", "/v1/pods", ACME, pod("brief", tolerations=[for_a_minute]))
        assert brief["spec"]["nodeName"] == "n2"
        await api.ok("POST", "/v1/nodes/n1/uncordon", ADMIN)
        tainted = await api.ok(
            "PATCH",
            "/v1/nodes/n2",
            body={"spec": {"taints": [{"key": "maintenance", "effect": "NoExecute"}], "unschedulable": True}},
        )
        assert tainted["status"]["evictedPods"] == 1
        assert (await api.ok("GET", "/v1/pods/plain", ACME))["spec"]["nodeName"] == "n1"
        wall[0] += 50_000
        member.run_timers(1.0)
        await member.timers.settle()
        assert member.timers.evictions_proposed == 0
        assert (await api.ok("GET", "/v1/pods/brief", ACME))["spec"]["nodeName"] == "n2"
        wall[0] += 15_000
        member.run_timers(2.0)
        await member.timers.settle()
        assert member.timers.evictions_proposed == 1
        assert member.scheduling_stats()["podsEvicted"] == 1
        moved = await api.ok("GET", "/v1/pods/brief", ACME)
        assert (moved["status"]["phase"], moved["spec"]["nodeName"]) == ("Bound", "n1"), moved["status"]
        member.run_timers(3.0)  # nothing recorded any more: nothing proposed
        await member.timers.settle()
        assert member.timers.evictions_proposed == 1

    run(tmp_path, check, member=member)


# ---- the planner against plan_pod ----------------------------------------------------------------


def _apply(store: MemoryStore, index: int, principal: Principal, command: str, body: dict[str, Any]) -> Any:
    envelope = encode_envelope(Envelope(command, body, principal, None, 1_767_225_600_000 + index))
    outcome = apply(store, envelope, index)
    store.apply_writes(outcome.writes)
    assert isinstance(outcome.result, Ok), outcome.result
    return outcome


@pytest.mark.parametrize("policy", ["spread", "binpack"])
def test_planner_with_reservations_chooses_what_plan_pod_would_one_by_one(policy: str) -> None:
    admin = Principal("root", "", "", "admin")
    tenant = Principal("alice", "acme", "web", "member")
    store = MemoryStore()
    index = 0

    def run_command(principal: Principal, command: str, body: dict[str, Any]) -> Any:
        nonlocal index
        index += 1
        return _apply(store, index, principal, command, body)

    run_command(admin, "pool.create", POD_POOL)
    run_command(admin, "scheduler.configure", {"policy": policy})
    for number, (cpu, pods) in enumerate([(2000, 4), (4000, 8), (1000, 3), (4000, 2), (3000, 6)]):
        run_command(admin, "node.register", node(f"n{number}", cpu=cpu, pods=pods))
    run_command(admin, "node.cordon", {"name": "n4"})
    planner = Planner()
    specs = [pod(f"p{n}", cpu=100 + 150 * (n % 4))["spec"] for n in range(30)]
    with_reservations = []
    plans = []
    for spec in specs:  # planned together: nothing applied in between
        plan = planner.plan(store, spec, tenant)
        plans.append(plan)
        with_reservations.append(None if plan is None else plan.node_name)
    one_by_one = []
    for number, spec in enumerate(specs):  # the reference: plan_pod, then apply, one at a time
        chosen = plan_pod(store, spec, tenant)
        one_by_one.append(chosen)
        body = {"name": f"p{number}", "spec": spec, **({"plan": {"nodeName": chosen}} if chosen else {})}
        outcome = run_command(tenant, "pod.create", body)
        planner.observe(outcome.writes)
    assert with_reservations == one_by_one
    assert None in one_by_one and "n4" not in one_by_one  # the cluster filled up; cordoned stays empty
    for plan in plans:
        if plan is not None:
            planner.release(plan)
    assert planner.in_flight == 0
    assert planner.plan(store, specs[0], tenant) is None or planner.in_flight == 1
    check_invariants(store)


def test_planner_ranks_a_nominated_node_by_the_pods_priority() -> None:
    """A nomination holds against pods of the nominee's priority or lower only: two pods of one
    shape but other priorities may rank the nodes apart, so the planner keeps them apart."""
    admin = Principal("root", "", "", "admin")
    tenant = Principal("alice", "acme", "web", "member")
    store = MemoryStore()
    steps = [
        (admin, "pool.create", POD_POOL),
        (admin, "node.register", node("na", cpu=1000)),
        (admin, "node.register", node("nb", cpu=1000)),
        (tenant, "pod.create", pod("fa", cpu=200)),
        (tenant, "pod.create", pod("fb", cpu=500)),
        (tenant, "pod.create", pod("big", cpu=900)),  # fits nowhere: nominates na
    ]
    for index, (principal, command, body) in enumerate(steps, start=1):
        _apply(store, index, principal, command, body)
    assert get(store, admin, "nodes", "na")["status"]["nominatedPod"] == "acme/web/default/big"
    planner = Planner()
    low, high = pod("low", cpu=50)["spec"], {**pod("high", cpu=50)["spec"], "priority": 10}
    for spec, expected in ((low, "nb"), (high, "na"), (low, "nb")):
        plan = planner.plan(store, spec, tenant)
        assert plan is not None and plan.node_name == expected == plan_pod(store, spec, tenant), (spec, plan)
        planner.release(plan)


def test_metrics_show_nodes_pods_and_the_queue(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2", cpu=1000)
        await api.ok("POST", "/v1/pods", ACME, pod("a"))
        await api.ok("POST", "/v1/pods", ACME, pod("big", cpu=5000))
        await api.ok("POST", "/v1/nodes/n2/cordon")
        await api.ok("POST", "/v1/nodes", ADMIN, node("n3"))
        now = 1e9
        api.member.run_timers(now)  # elected; then a grace later, nobody was heard
        api.member.run_timers(now + api.member.timers.monitor.grace_s + 1)
        await api.member.timers.settle()
        api.member.run_timers(now + api.member.timers.monitor.grace_s + 2)  # sees them NotReady
        async with api.client.get("/metrics") as response:
            text = await response.text()
        lines = set(text.splitlines())
        for expected in (
            'allot_nodes{condition="Ready"} 0.0',
            'allot_nodes{condition="NotReady"} 3.0',
            "allot_nodes_cordoned 1.0",
            'allot_pods{phase="Bound"} 1.0',
            'allot_pods{phase="Pending"} 1.0',
            "allot_pending_queue_length 1.0",
            "allot_pod_plans_in_flight 0.0",
            "allot_leader_node_condition_changes_total 3.0",
            "allot_leader_node_evictions_total 0.0",
            "allot_leader_pods_evicted_total 0.0",
            "allot_leader_evictions_held 1.0",  # every node is NotReady
        ):
            assert expected in lines, (expected, [line for line in lines if line.startswith("allot_")])

    run(tmp_path, check)


def test_every_scheduler_code_has_its_documented_status() -> None:
    assert ERROR_STATUS["quota_exceeded"] == 403 and ERROR_STATUS["unschedulable"] == 409
    assert json.loads(json.dumps(ERROR_STATUS)) == ERROR_STATUS


def test_heartbeats_are_forwarded_on_keepalives_by_every_member() -> None:
    """The replicated member's keep-alive payload and receipt, without Raft: what one member
    heard over HTTP reaches another's table once, and unchecked names cannot grow it."""
    clock = Clock()
    sender, receiver = HeartbeatTable(clock), HeartbeatTable(clock, names_max=2)
    for name in ("n1", "n2", "n1"):
        sender.record(name, forward=True)
    message = {"type": "allot_keepalive", "sightings": sender.take_outbox()}
    assert message["sightings"] == ["n1", "n2"]
    receiver.record_forwarded([*message["sightings"], 7, "n3"])
    assert receiver.last_seen("n1") == clock.now and receiver.last_seen("n3") is None
    assert receiver.take_outbox() == []  # forwarded sightings are not forwarded again


def test_timers_run_on_the_loop_without_blocking(tmp_path: Path) -> None:
    """run_once only spawns proposals: it returns before they commit."""
    clock = Clock()
    member = LocalMember(clock=clock)

    async def check(api: Api) -> None:
        await cluster(api, "n1")
        member.run_timers(clock.now)
        member.run_timers(clock.now + member.timers.monitor.grace_s + 1)
        assert member.timers.monitor.in_flight == {"n1"}
        await asyncio.wait_for(member.timers.settle(), 5)
        assert member.timers.monitor.in_flight == set()

    run(tmp_path, check, member=member)
