"""Server dry runs (`?dryRun=All` on every write, node/http.py and statemachine.preview), over real
HTTP on 127.0.0.1 with a `LocalMember`, as in tests/test_http.py.

A dry run is answered as the write would be now (status, body, refusal) and changes nothing:
not the objects, not the revision, not the request-id records; its Idempotency-Key is neither
replayed nor taken.
"""

from __future__ import annotations

from pathlib import Path

from tests.test_http import ACME, ADMIN, GLOBEX, ROOT_POOL, Api, claim, run
from tests.test_http_scheduler import cluster, node, pod

DRY = {"dryRun": "All"}


def test_a_dry_run_claim_is_answered_as_the_write_would_be_and_changes_nothing(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        digest = api.digest()
        key = {"Idempotency-Key": "web-1"}
        dry = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"), params=DRY, headers=key)
        assert dry.status == 201 and dry.headers["X-Allot-Dry-Run"] == "All", dry
        assert dry.body["status"]["allocatedCIDR"] == "10.0.0.1/32"
        assert "Idempotent-Replayed" not in dry.headers
        assert api.digest() == digest, "nothing written, not even a request-id record"
        await api.error(404, "not_found", "GET", "/v1/ipclaims/web-1", ACME)

        real = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"), headers=key)
        assert real.status == 201 and "Idempotent-Replayed" not in real.headers, "the key was not taken"
        assert real.body["status"]["allocatedCIDR"] == dry.body["status"]["allocatedCIDR"]
        digest = api.digest()
        # After the real write, a dry run under its key is evaluated afresh, not replayed.
        again = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"), params=DRY, headers=key)
        assert again.status == 200 and "Idempotent-Replayed" not in again.headers, "found, as a create again is"
        other = await api.call("POST", "/v1/ipclaims", ACME, claim("web-2"), params=DRY, headers=key)
        assert other.status == 201 and other.body["status"]["allocatedCIDR"] == "10.0.0.2/32", "no conflict"

        # Refusals are the write's refusals, marked as a dry run's.
        full = await api.error(
            409, "pool_exhausted", "POST", "/v1/ipclaims", ACME, body=claim("big", prefixLength=24), params=DRY
        )
        assert full.headers["X-Allot-Dry-Run"] == "All"
        await api.error(404, "not_found", "DELETE", "/v1/ipclaims/web-1", GLOBEX, params=DRY)
        await api.error(403, "forbidden", "DELETE", "/v1/ippools/edge", ACME, params=DRY)
        deleted = await api.call("DELETE", "/v1/ipclaims/web-1", ACME, params=DRY)
        assert deleted.status == 200 and deleted.body["metadata"]["name"] == "web-1"
        await api.error(409, "conflict", "DELETE", "/v1/ippools/edge", params=DRY)  # web-1 still holds it
        relabel = {"metadata": {"labels": {"team": "blue"}}}
        labelled = await api.ok("PATCH", "/v1/ipclaims/web-1", ACME, relabel, params=DRY)
        assert labelled["metadata"]["labels"] == {"team": "blue"}
        assert api.digest() == digest, "none of those dry runs changed anything"
        assert (await api.ok("GET", "/v1/ipclaims/web-1", ACME))["metadata"]["labels"] == {}

        # Input the write would refuse before the state machine is refused the same way.
        await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, body={"name": "x", "bogus": 1}, params=DRY)
        for value in ("true", "all", ""):
            bad = await api.error(
                400, "invalid", "POST", "/v1/ipclaims", ACME, body=claim("x"), params={"dryRun": value}
            )
            assert bad.body["error"]["details"] == {"field": "dryRun"}
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params=DRY)  # reads take no dryRun
        assert api.digest() == digest

    run(tmp_path, check)


def test_a_dry_run_pod_shows_its_node_and_address_and_a_dry_run_drain_its_evictions(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1", "n2")
        await api.ok("POST", "/v1/pods", ACME, pod("p0"))
        digest = api.digest()
        dry = await api.call("POST", "/v1/pods", ACME, pod("p1"), params=DRY)
        assert dry.status == 201 and dry.headers["X-Allot-Dry-Run"] == "All"
        assert dry.body["status"]["phase"] == "Bound" and dry.body["spec"]["nodeName"] in ("n1", "n2")
        assert dry.body["status"]["podIP"].startswith("10.64.")
        too_big = await api.ok("POST", "/v1/pods", ACME, pod("p2", cpu=64_000), params=DRY)
        assert too_big["status"]["phase"] == "Pending", "a pod that fits nowhere says why, as it would"
        assert "Insufficient cpu" in too_big["status"]["message"], too_big["status"]
        assert api.digest() == digest
        await api.ok("POST", "/v1/quotas", ADMIN, {"name": "acme/web", "spec": {"pods": 2, "cpuMillis": 1000}})
        await api.ok("POST", "/v1/pods", ACME, pod("p1"))
        digest = api.digest()
        waiting = await api.ok("POST", "/v1/pods", ACME, pod("p3"), params=DRY)
        assert waiting["status"]["reason"] == "QuotaExceeded", "it would wait for room in the quota"
        await api.error(403, "quota_exceeded", "POST", "/v1/pods", ACME, body=pod("p4", cpu=1500), params=DRY)
        bound_to = (await api.ok("GET", "/v1/pods/p0", ACME))["spec"]["nodeName"]
        drained = await api.ok("POST", f"/v1/nodes/{bound_to}/drain", ADMIN, params=DRY)
        assert drained["spec"]["unschedulable"] is True
        assert (await api.ok("GET", f"/v1/nodes/{bound_to}"))["spec"]["unschedulable"] is False
        await api.error(403, "forbidden", "POST", f"/v1/nodes/{bound_to}/cordon", ACME, params=DRY)
        await api.ok("PUT", "/v1/scheduler", ADMIN, {"policy": "binpack"}, params=DRY)
        assert (await api.ok("GET", "/v1/scheduler"))["policy"] == "spread"
        await api.ok("DELETE", "/v1/quotas/acme%2Fweb", ADMIN, params=DRY)
        await api.error(409, "conflict", "DELETE", f"/v1/nodes/{bound_to}", params=DRY)  # drain it first
        assert api.digest() == digest
        await api.error(400, "invalid", "POST", f"/v1/nodes/{bound_to}/heartbeat", ADMIN, params=DRY)

    run(tmp_path, check)


def test_a_registered_node_in_a_dry_run_takes_the_pod_cidr_the_real_one_gets(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await cluster(api, "n1")
        dry = await api.call("POST", "/v1/nodes", ADMIN, node("n2"), params=DRY)
        assert dry.status == 201
        await api.error(404, "not_found", "GET", "/v1/nodes/n2")
        real = await api.ok("POST", "/v1/nodes", ADMIN, node("n2"))
        assert real["status"]["podCIDR"] == dry.body["status"]["podCIDR"]

    run(tmp_path, check)
