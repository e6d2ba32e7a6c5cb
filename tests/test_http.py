"""The HTTP API (node/http.py) and token files (node/tokens.py), over real HTTP on 127.0.0.1.

No pytest plugin: each test runs its own event loop with `asyncio.run` and aiohttp's framework-
agnostic `TestServer`/`TestClient` (aiohttp.test_utils), so the suite needs nothing beyond
pytest itself and works with pytest 9. The member is `LocalMember` (or a subclass that fails
on purpose). Nothing sleeps a fixed time: waits are on conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from node import http
from node.http import ERROR_STATUS, Limits, build_app, from_rejected
from node.member import LocalMember, NoLeaderError, OutcomeUnknownError, OverloadedError
from node.tokens import TokenFileError, TokenStore, generate_token_file, parse_token_file
from statemachine import REJECTION_CODES, Outcome, Rejected, keys

ADMIN = "admin-token-0123456789abcdefghijklmnopqrstuvwxyz"
ACME = "acme-web-token-0123456789abcdefghijklmnopqrstuvwxyz"
GLOBEX = "globex-prod-token-0123456789abcdefghijklmnopqrstuvwxyz"
NEW = "new-token-0123456789abcdefghijklmnopqrstuvwxyz"

TOKENS = [
    {"token": ADMIN, "name": "root", "role": "admin"},
    {"token": ACME, "name": "alice", "org": "acme", "project": "web", "role": "member"},
    {"token": GLOBEX, "name": "gus", "org": "globex", "project": "prod", "role": "member"},
]

WAIT_S = 5.0  # deadline for anything the tests wait on


def write_tokens(path: Path, tokens: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"tokens": tokens}))
    path.chmod(0o600)


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]

    @property
    def code(self) -> str:
        return str(self.body["error"]["code"])


class Api:
    def __init__(self, client: TestClient[web.Request, web.Application], member: LocalMember, tokens: TokenStore):
        self.client = client
        self.member = member
        self.tokens = tokens

    async def call(
        self,
        method: str,
        path: str,
        token: str | None = ADMIN,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.client.request(method, path, data=data, headers=sent, params=params) as response:
            text = await response.text()
            parsed = json.loads(text) if response.content_type == "application/json" else text
            return Reply(response.status, parsed, dict(response.headers))

    async def ok(self, method: str, path: str, token: str | None = ADMIN, body: Any = None, **kw: Any) -> Any:
        reply = await self.call(method, path, token, body, **kw)
        assert reply.status in (200, 201), (method, path, reply)
        return reply.body

    async def error(
        self, status: int, code: str, method: str, path: str, token: str | None = ADMIN, **kw: Any
    ) -> Reply:
        reply = await self.call(method, path, token, kw.pop("body", None), **kw)
        assert reply.status == status, (method, path, reply)
        assert reply.body["error"]["code"] == code, reply.body
        assert set(reply.body["error"]) == {"code", "message", "details"}, reply.body
        assert ERROR_STATUS[code] == status
        return reply

    def digest(self) -> str:
        return str(self.member.status()["digest"])

    def objects_digest(self) -> str:
        """The state without the request-id bookkeeping (dedup records and the meta record that
        counts them): what a refused request must leave unchanged. Refusals are remembered under
        their request id (statemachine/machine.py), which every write has."""
        hasher = hashlib.sha256()
        with self.member.reader() as view:
            for key, value in view.scan(b"", b"\xff" * 64):
                if not key.startswith((keys.DEDUP, keys.DEDUP_EXPIRY, keys.META)):
                    hasher.update(len(key).to_bytes(4, "big") + key + len(value).to_bytes(4, "big") + value)
        return hasher.hexdigest()


@asynccontextmanager
async def serve(tmp_path: Path, member: LocalMember | None = None, limits: Limits | None = None) -> AsyncIterator[Api]:
    token_file = tmp_path / "tokens.json"
    if not token_file.exists():
        write_tokens(token_file, TOKENS)
    tokens = TokenStore(token_file, reload_interval_s=0)
    member = member or LocalMember()
    app = build_app(member, tokens, limits=limits)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Api(client, member, tokens)


def run(tmp_path: Path, test: Callable[[Api], Awaitable[None]], **kw: Any) -> None:
    async def main() -> None:
        async with serve(tmp_path, **kw) as api:
            await test(api)

    asyncio.run(main())


ROOT_POOL = {"name": "edge", "spec": {"cidr": "10.0.0.0/24", "reserved": {"leading": 1, "trailing": 1}}}


def claim(name: str, **spec: Any) -> dict[str, Any]:
    return {"name": name, "spec": {"poolRef": "edge", **spec}}


# ---- health, readiness, status ---------------------------------------------------------------


class NotReadyMember(LocalMember):
    def ready(self) -> bool:
        return False


def test_health_ready_and_status(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        assert await api.ok("GET", "/healthz", None) == {"memberId": "local", "status": "ok"}
        assert (await api.ok("GET", "/readyz", None))["status"] == "ready"
        await api.error(401, "unauthorized", "GET", "/v1/status", None)
        status = await api.ok("GET", "/v1/status", GLOBEX)
        assert {"memberId", "role", "leader", "term", "commitIndex", "appliedIndex", "revision", "digest"} <= set(
            status
        )

    run(tmp_path, check)

    async def not_ready(api: Api) -> None:
        reply = await api.error(503, "not_ready", "GET", "/readyz", None)
        assert reply.headers["Retry-After"] == "1"
        assert (await api.call("GET", "/healthz", None)).status == 200

    run(tmp_path, not_ready, member=NotReadyMember())


# ---- CRUD for every kind ---------------------------------------------------------------------


def test_pool_crud_and_names(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        created = await api.call("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        assert created.status == 201
        assert created.body["status"]["capacity"]["available"] == 254
        assert created.headers["X-Allot-Revision"] == "1"
        assert (await api.call("POST", "/v1/ippools", ADMIN, ROOT_POOL)).status == 200  # same spec: found
        await api.error(
            409, "already_exists", "POST", "/v1/ippools", body={"name": "edge", "spec": {"cidr": "10.0.0.0/25"}}
        )
        # A tenant's child pool, named in all the documented ways.
        child = {"name": "web", "spec": {"parentPool": "edge", "prefixLength": 28, "visibility": "consumer"}}
        assert (await api.call("POST", "/v1/ippools", ACME, child)).status == 201
        for path in (
            "/v1/ippools/web",
            "/v1/ippools/web/web",
            "/v1/ippools/acme/web/web",
            "/v1/ippools/acme%2Fweb%2Fweb",
        ):
            got = await api.ok("GET", path, ACME)
            assert got["metadata"]["org"] == "acme" and got["spec"]["parentPool"] == "edge", path
        assert (await api.ok("GET", "/v1/ippools/acme/web/web", ADMIN))["metadata"]["name"] == "web"
        await api.error(404, "not_found", "GET", "/v1/ippools/acme/web/web", GLOBEX)  # consumer: acme's own
        await api.error(404, "not_found", "GET", "/v1/ippools/a/b/c/d", ADMIN)  # too many segments: no route
        listed = await api.ok("GET", "/v1/ippools", GLOBEX)
        assert [pool["metadata"]["name"] for pool in listed["items"]] == ["edge"]
        assert listed["kind"] == "IPPoolList" and listed["metadata"]["resourceVersion"] == 2
        await api.error(409, "conflict", "DELETE", "/v1/ippools/edge")  # still has a child pool
        await api.error(404, "not_found", "DELETE", "/v1/ippools/acme/web/web", GLOBEX)
        assert (await api.ok("DELETE", "/v1/ippools/web/web", ACME))["metadata"]["name"] == "web"
        assert (await api.ok("DELETE", "/v1/ippools/edge"))["metadata"]["name"] == "edge"
        await api.error(404, "not_found", "GET", "/v1/ippools/edge")

    run(tmp_path, check)


def test_claim_and_allocation_crud(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        created = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"))
        assert created.status == 201
        assert created.body["status"]["allocatedCIDR"] == "10.0.0.1/32"
        assert created.body["metadata"]["org"] == "acme" and created.body["metadata"]["namespace"] == "default"
        got = await api.ok("GET", "/v1/ipclaims/web-1", ACME)
        assert got == created.body
        allocation = await api.ok("GET", "/v1/ipallocations/web-1", ACME)
        assert allocation["kind"] == "IPAllocation" and allocation["spec"]["cidr"] == "10.0.0.1/32"
        assert [a["metadata"]["name"] for a in (await api.ok("GET", "/v1/ipallocations", ACME))["items"]] == ["web-1"]
        in_team = {**claim("web-1", prefixLength=30), "namespace": "team"}
        assert (await api.ok("POST", "/v1/ipclaims", ACME, in_team))["metadata"]["namespace"] == "team"
        assert (await api.ok("GET", "/v1/ipclaims/web-1", ACME, params={"namespace": "team"}))["spec"][
            "prefixLength"
        ] == 30
        listed = await api.ok("GET", "/v1/ipclaims", ACME, params={"namespace": "team"})
        assert [c["metadata"]["namespace"] for c in listed["items"]] == ["team"]
        await api.error(400, "invalid", "GET", "/v1/ippools", params={"namespace": "team"})  # pools: not namespaced

        refused = await api.error(405, "method_not_allowed", "DELETE", "/v1/ipallocations/web-1", ACME)
        assert "IPClaim" in refused.body["error"]["message"] and refused.headers["Allow"] == "GET, HEAD"
        await api.error(405, "method_not_allowed", "POST", "/v1/ipallocations", ACME, body={"name": "x"})

        deleted = await api.ok("DELETE", "/v1/ipclaims/web-1", ACME)
        assert deleted["status"]["allocatedCIDR"] == "10.0.0.1/32"
        await api.error(404, "not_found", "GET", "/v1/ipclaims/web-1", ACME)
        await api.error(404, "not_found", "GET", "/v1/ipallocations/web-1", ACME)
        await api.error(404, "not_found", "DELETE", "/v1/ipclaims/web-1", ACME)
        await api.ok("DELETE", "/v1/ipclaims/web-1", ACME, params={"namespace": "team"})
        await api.error(400, "invalid", "GET", "/v1/ipclaims/Not_A_Name", ACME)

    run(tmp_path, check)


def test_class_crud_admin_only(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        body = {"name": "v4", "spec": {"ipFamily": "IPv4", "isDefault": True}}
        await api.error(403, "forbidden", "POST", "/v1/ipclasses", ACME, body=body)
        assert (await api.call("POST", "/v1/ipclasses", ADMIN, body)).status == 201
        assert (await api.ok("GET", "/v1/ipclasses/v4", ACME))["spec"]["ipFamily"] == "IPv4"
        assert [c["metadata"]["name"] for c in (await api.ok("GET", "/v1/ipclasses", GLOBEX))["items"]] == ["v4"]
        await api.error(409, "conflict", "POST", "/v1/ipclasses", body={"name": "v4b", "spec": body["spec"]})
        # A claim through the default class.
        pool = {"name": "edge", "spec": {"cidr": "10.1.0.0/24", "classNames": ["v4"]}}
        await api.ok("POST", "/v1/ippools", ADMIN, pool)
        bound = await api.ok("POST", "/v1/ipclaims", GLOBEX, {"name": "db", "spec": {"prefixLength": 29}})
        assert bound["status"]["className"] == "v4" and bound["status"]["allocatedCIDR"] == "10.1.0.0/29"
        await api.error(403, "forbidden", "DELETE", "/v1/ipclasses/v4", ACME)
        await api.error(409, "conflict", "DELETE", "/v1/ipclasses/v4")  # still backed by edge
        await api.ok("DELETE", "/v1/ipclaims/db", GLOBEX)
        await api.ok("DELETE", "/v1/ippools/edge")
        await api.ok("DELETE", "/v1/ipclasses/v4")
        await api.error(404, "not_found", "GET", "/v1/ipclasses/v4")

    run(tmp_path, check)


# ---- idempotency -----------------------------------------------------------------------------


def test_idempotency_key(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        key = {"Idempotency-Key": "create-web-1"}
        first = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"), headers=key)
        assert first.status == 201 and first.headers["X-Allot-Request-Id"] == "create-web-1"
        again = await api.call("POST", "/v1/ipclaims", ACME, claim("web-1"), headers=key)
        assert (again.status, again.body) == (first.status, first.body)
        assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
        revision = api.member.status()["revision"]
        other = await api.error(409, "conflict", "POST", "/v1/ipclaims", ACME, body=claim("web-2"), headers=key)
        assert other.body["error"]["details"] == {"requestId": "create-web-1"}
        assert api.member.status()["revision"] == revision
        # The key is per tenant: globex may use the same one.
        assert (await api.call("POST", "/v1/ipclaims", GLOBEX, claim("web-2"), headers=key)).status == 201
        for bad in ("has space", "x" * 129, "tab\tkey"):
            await api.error(
                400, "invalid", "POST", "/v1/ipclaims", ACME, body=claim("w3"), headers={"Idempotency-Key": bad}
            )
        generated = await api.call("POST", "/v1/ipclaims", ACME, claim("web-3"))
        request_id = generated.headers["X-Allot-Request-Id"]
        assert len(request_id) == 32 and int(request_id, 16) >= 0
        # A retry of a delete with its key gets the first answer, not not_found.
        delete_key = {"Idempotency-Key": "delete-web-3"}
        deleted = await api.call("DELETE", "/v1/ipclaims/web-3", ACME, headers=delete_key)
        assert (await api.call("DELETE", "/v1/ipclaims/web-3", ACME, headers=delete_key)).body == deleted.body
        # A refusal is remembered too, and its replay says so: the same key keeps getting it
        # (for the dedup window) even after what caused it is gone.
        missing_key = {"Idempotency-Key": "delete-web-9"}
        missing = await api.error(404, "not_found", "DELETE", "/v1/ipclaims/web-9", ACME, headers=missing_key)
        assert "Idempotent-Replayed" not in missing.headers
        await api.ok("POST", "/v1/ipclaims", ACME, claim("web-9"))
        replayed = await api.error(404, "not_found", "DELETE", "/v1/ipclaims/web-9", ACME, headers=missing_key)
        assert replayed.headers["Idempotent-Replayed"] == "true" and replayed.body == missing.body
        # The default namespace named or left out is one request: a retry spelled the other
        # way is replayed, not refused as another request under the key.
        spelled = {"Idempotency-Key": "create-web-10"}
        made = await api.call(
            "POST", "/v1/ipclaims", ACME, {**claim("web-10"), "namespace": "default"}, headers=spelled
        )
        again = await api.call("POST", "/v1/ipclaims", ACME, claim("web-10"), headers=spelled)
        assert made.status == 201 and again.headers["Idempotent-Replayed"] == "true", (made, again)
        gone_key = {"Idempotency-Key": "delete-web-10"}
        await api.ok("DELETE", "/v1/ipclaims/web-10", ACME, headers=gone_key, params={"namespace": "default"})
        again = await api.call("DELETE", "/v1/ipclaims/web-10", ACME, headers=gone_key)
        assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true", again

    run(tmp_path, check)


# ---- lists -----------------------------------------------------------------------------------


def test_list_paging_selectors_and_consistency(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        for number in range(7):
            tier = "web" if number % 2 else "db"
            await api.ok("POST", "/v1/ipclaims", ACME, {**claim(f"c{number}"), "labels": {"tier": tier}})
        await api.ok("POST", "/v1/ipclaims", GLOBEX, claim("other"))
        names: list[str] = []
        params = {"limit": "3"}
        pages = 0
        while True:
            page = await api.ok("GET", "/v1/ipclaims", ACME, params=params)
            pages += 1
            assert len(page["items"]) <= 3
            names += [item["metadata"]["name"] for item in page["items"]]
            if page["metadata"]["continue"] is None:
                break
            params = {"limit": "3", "continue": page["metadata"]["continue"]}
        assert names == [f"c{number}" for number in range(7)] and pages == 3
        web_tier = await api.ok("GET", "/v1/ipclaims", ACME, params={"labelSelector": "tier=web"})
        assert [item["metadata"]["name"] for item in web_tier["items"]] == ["c1", "c3", "c5"]
        not_in = await api.ok("GET", "/v1/ipclaims", ACME, params={"labelSelector": "tier notin (web)"})
        assert [item["metadata"]["name"] for item in not_in["items"]] == ["c0", "c2", "c4", "c6"]
        everyone = await api.ok("GET", "/v1/ipclaims", ADMIN)
        assert len(everyone["items"]) == 8  # the platform admin lists every tenant's
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params={"labelSelector": "tier in (web"})
        for limit in ("0", "1001", "abc", "-1", "99999999999999999999999"):
            await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params={"limit": limit})
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params={"continue": "!!"})
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params={"limitt": "3"})
        await api.error(400, "invalid", "GET", "/v1/ipclaims?limit=1&limit=2", ACME)

        linear = await api.call("GET", "/v1/ipclaims", ACME)
        assert linear.headers["X-Allot-Consistency"] == "linearizable"
        assert linear.body["metadata"]["consistency"] == "linearizable"
        stale = await api.call("GET", "/v1/ipclaims", ACME, params={"consistency": "stale"})
        assert stale.headers["X-Allot-Consistency"] == "stale" and stale.body["metadata"]["consistency"] == "stale"
        item = await api.call("GET", "/v1/ipclaims/c1", ACME, params={"consistency": "stale"})
        assert item.status == 200 and item.headers["X-Allot-Consistency"] == "stale"
        # A refused read says how it was read too: a stale 404 may be news this member lacks.
        missing = await api.error(404, "not_found", "GET", "/v1/ipclaims/nope", ACME, params={"consistency": "stale"})
        assert missing.headers["X-Allot-Consistency"] == "stale"
        missing = await api.error(404, "not_found", "GET", "/v1/ipclaims/nope", ACME)
        assert missing.headers["X-Allot-Consistency"] == "linearizable"
        selector = {"consistency": "stale", "labelSelector": "a in (b"}
        assert (await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params=selector)).headers[
            "X-Allot-Consistency"
        ] == "stale"
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ACME, params={"consistency": "eventual"})

    run(tmp_path, check)


# ---- tenancy ---------------------------------------------------------------------------------


def test_tenancy(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        await api.ok("POST", "/v1/ipclaims", ACME, claim("web-1"))
        missing = await api.error(401, "unauthorized", "GET", "/v1/ipclaims", None)
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        await api.error(401, "unauthorized", "GET", "/v1/ipclaims", "not-a-known-token-0123456789abcdefghij")
        await api.error(401, "unauthorized", "GET", "/v1/ipclaims", None, headers={"Authorization": f"Basic {ACME}"})
        await api.error(401, "unauthorized", "GET", "/v1/ipclaims", None, headers={"Authorization": "Bearer "})
        await api.error(401, "unauthorized", "POST", "/v1/ipclaims", None, body=claim("x"))
        await api.error(401, "unauthorized", "GET", "/v1/ipclaims", None, params={"bogus": "1"})  # token first

        # Another tenant's claim does not exist, for reads and deletes alike.
        await api.error(404, "not_found", "GET", "/v1/ipclaims/web-1", GLOBEX)
        await api.error(404, "not_found", "GET", "/v1/ipallocations/web-1", GLOBEX)
        await api.error(404, "not_found", "DELETE", "/v1/ipclaims/web-1", GLOBEX)
        assert (await api.ok("GET", "/v1/ipclaims", GLOBEX))["items"] == []
        assert (await api.ok("GET", "/v1/ipclaims/web-1", ACME))["status"]["phase"] == "Bound"

        # A member may name only its own tenant.
        own = {"org": "acme", "project": "web"}
        assert (await api.ok("GET", "/v1/ipclaims/web-1", ACME, params=own))["metadata"]["org"] == "acme"
        foreign = {"org": "globex", "project": "prod"}
        await api.error(403, "forbidden", "GET", "/v1/ipclaims", ACME, params=foreign)
        await api.error(403, "forbidden", "POST", "/v1/ipclaims", ACME, body=claim("x"), params=foreign)
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ADMIN, params={"org": "acme"})
        await api.error(400, "invalid", "GET", "/v1/ipclaims", ADMIN, params={"org": "Acme", "project": "web"})

        # An admin acts for a tenant when it names one.
        await api.error(404, "not_found", "GET", "/v1/ipclaims/web-1", ADMIN)  # the platform has no claims
        assert (await api.ok("GET", "/v1/ipclaims/web-1", ADMIN, params=own))["metadata"]["project"] == "web"
        made = await api.ok("POST", "/v1/ipclaims", ADMIN, claim("by-admin"), params=own)
        assert (made["metadata"]["org"], made["metadata"]["project"]) == ("acme", "web")
        assert len((await api.ok("GET", "/v1/ipclaims", ACME))["items"]) == 2
        await api.ok("DELETE", "/v1/ipclaims/by-admin", ADMIN, params=own)
        # The body cannot choose the tenant: an org field is refused as unknown.
        await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, body={**claim("y"), "org": "globex"})

    run(tmp_path, check)


# ---- refused requests change nothing and the server keeps serving ----------------------------


def test_bad_requests(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        before = api.objects_digest()
        bad_bodies = [  # (body, a word the message must hold)
            (b"{", "malformed JSON"),
            (b"", "empty"),
            (b"[1, 2]", "JSON object, not an array"),
            (b'"claim"', "JSON object, not a string"),
            (b"null", "JSON object, not null"),
            (b"true", "JSON object, not a boolean"),
            (b"7", "JSON object, not a number"),
            (
                b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": 32.0}}',
                "spec.prefixLength must be an integer",
            ),
            (b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": 1e2}}', "not 1e2"),
            (b"1.5", "not a number"),
            (b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": NaN}}', "NaN"),
            (b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": -Infinity}}', "Infinity"),
            (b'{"name": "a", "name": "b", "spec": {"poolRef": "edge"}}', "duplicate key"),
            (b'{"name": "a", "spec": {"poolRef": "edge"}, "colour": "red"}', "colour"),
            (b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": 32, "extra": 1}}', "extra"),
            (b'{"name": "\\ud800", "spec": {"poolRef": "edge"}}', "surrogates"),
            (b'{"name": "a", "labels": {"k": "\xff"}}', "UTF-8"),
            (b'{"a": ' * 30 + b"1" + b"}" * 30, "nests too deeply"),
            (b'{"name": "a", "spec": {"poolRef": "edge", "prefixLength": ' + b"9" * 5000 + b"}}", "no field takes one"),
        ]
        for raw, word in bad_bodies:
            reply = await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, raw=raw)
            assert word in reply.body["error"]["message"], (raw[:80], reply.body)
            # Unknown fields are the state machine's refusals, with the request id and revision it
            # answered at; the rest are refused before becoming a command, so carry neither (DESIGN.md).
            by_state_machine = word in ("colour", "extra")
            assert ("X-Allot-Request-Id" in reply.headers) is by_state_machine, (raw[:80], reply.headers)
            assert ("X-Allot-Revision" in reply.headers) is by_state_machine, (raw[:80], reply.headers)
        fraction = b'{"name": "a", "labels": {"k": "v"}, "spec": {"poolRef": "edge", "exclude": [1, {"x": 0.5}]}}'
        where = await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, raw=fraction)
        assert where.body["error"]["details"] == {"field": "spec.exclude[1].x"}, where.body
        unknown = await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, raw=b'{"name": "a", "bogus": 1}')
        assert "bogus" in unknown.body["error"]["message"]
        assert unknown.headers["X-Allot-Request-Id"] and unknown.headers["X-Allot-Revision"]  # the state machine's
        await api.error(
            415,
            "unsupported_media_type",
            "POST",
            "/v1/ipclaims",
            ACME,
            raw=b"name=a",
            headers={"Content-Type": "text/plain"},
        )
        await api.error(
            415, "unsupported_media_type", "POST", "/v1/ipclaims", ACME, raw=b"{}", headers={"Content-Type": ""}
        )
        latin = {"Content-Type": "application/json; charset=latin-1"}
        await api.error(415, "unsupported_media_type", "POST", "/v1/ipclaims", ACME, raw=b"{}", headers=latin)
        huge = json.dumps({**claim("a"), "labels": {"k": "v" * (70 * 1024)}}).encode()
        too_large = await api.error(413, "too_large", "POST", "/v1/ipclaims", ACME, raw=huge)
        assert too_large.body["error"]["details"]["limitBytes"] == http.body_bytes_max

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
            for _ in range(80):
                yield b" " * 1024

        async with api.client.post(
            "/v1/ipclaims",
            data=chunks(),
            headers={"Authorization": f"Bearer {ACME}", "Content-Type": "application/json"},
        ) as response:
            assert response.status == 413
            assert (await response.json())["error"]["code"] == "too_large"
        assert api.objects_digest() == before
        assert (await api.call("POST", "/v1/ipclaims", ACME, claim("fine"))).status == 201

    run(tmp_path, check)


def test_a_body_that_does_not_decode_as_its_content_encoding_is_invalid(tmp_path: Path) -> None:
    """Content-Encoding: gzip on a body that is not gzip: 400, not a 500 and a logged traceback."""

    async def check(api: Api) -> None:
        before = api.objects_digest()
        # A coding the server does not decode is refused, not read as if plain.
        for coding in ("foo", "x-gzip", "gzip, gzip"):
            headers = {"Content-Type": "application/json", "Content-Encoding": coding}
            body = b'{"name": "x"}'
            await api.error(415, "unsupported_media_type", "POST", "/v1/ipclaims", ACME, raw=body, headers=headers)
        # (last: the server closes a connection whose body it could not decode)
        headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
        reply = await api.error(400, "invalid", "POST", "/v1/ipclaims", ACME, raw=b'{"name": "x"}', headers=headers)
        assert "could not be read" in reply.body["error"]["message"], reply.body
        assert api.objects_digest() == before

    run(tmp_path, check)


def test_unknown_routes_and_methods(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        for path in ("/v1/nope", "/", "/v1/ipclaims/a/b", "/v2/ipclaims"):
            reply = await api.error(404, "not_found", "GET", path)
            assert reply.headers["Content-Type"].startswith("application/json")
        wrong = await api.error(405, "method_not_allowed", "PUT", "/v1/ipclaims/web-1", body={"name": "web-1"})
        assert set(wrong.body["error"]["details"]["allowed"]) == {"DELETE", "GET", "HEAD", "PATCH"}
        assert "DELETE" in wrong.headers["Allow"]
        await api.error(405, "method_not_allowed", "DELETE", "/v1/ipclaims")
        await api.error(405, "method_not_allowed", "POST", "/healthz", None, body={})

    run(tmp_path, check)


def test_pool_exhausted(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, {"name": "edge", "spec": {"cidr": "10.9.0.0/30"}})
        await api.ok("POST", "/v1/ipclaims", ACME, claim("half", prefixLength=31))
        reply = await api.error(409, "pool_exhausted", "POST", "/v1/ipclaims", ACME, body=claim("big", prefixLength=30))
        details = reply.body["error"]["details"]
        assert details["largestFreePrefix"] == 31 and details["pool"] == "edge" and details["prefixLength"] == 30
        assert "/31" in reply.body["error"]["message"]
        await api.ok("POST", "/v1/ipclaims", ACME, claim("rest", prefixLength=31))
        full = await api.error(409, "pool_exhausted", "POST", "/v1/ipclaims", ACME, body=claim("one"))
        assert full.body["error"]["details"]["largestFreePrefix"] is None

    run(tmp_path, check)


# ---- watches ---------------------------------------------------------------------------------


async def read_events(response: ClientResponse, count: int, skip_bookmarks: bool = True) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(WAIT_S):
        while len(lines) < count:
            raw = await response.content.readline()
            assert raw, f"stream ended after {lines}"
            line = json.loads(raw)
            if skip_bookmarks and line["type"] == "BOOKMARK":
                continue
            lines.append(line)
    return lines


def watch_url(kinds: str, revision: int | None = None, **extra: str) -> str:
    query = f"/v1/watch?kinds={kinds}"
    if revision is not None:
        query += f"&resourceVersion={revision}"
    return query + "".join(f"&{key}={value}" for key, value in extra.items())


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_watch_streams_and_resumes_exactly_once(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)  # revision 1
        await api.ok("POST", "/v1/ipclaims", ACME, claim("a"))  # revision 2
        await api.ok("POST", "/v1/ipclaims", GLOBEX, claim("hidden"))  # revision 3: not acme's
        seen: list[tuple[str, str, int]] = []
        async with api.client.get(watch_url("ipclaims,ipallocations", 0), headers=auth(ACME)) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/x-ndjson"
            first = await read_events(response, 2)
            assert [(e["type"], e["object"]["kind"]) for e in first] == [
                ("ADDED", "IPAllocation"),
                ("ADDED", "IPClaim"),
            ]
            seen += [
                (e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"]) for e in first
            ]
            await api.ok("POST", "/v1/ipclaims", ACME, claim("b"))  # revision 4, while watching
            second = await read_events(response, 2)
            seen += [
                (e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"]) for e in second
            ]
        last = seen[-1][2]
        await api.ok("DELETE", "/v1/ipclaims/a", ACME)  # revision 5, while disconnected
        async with api.client.get(watch_url("ipclaims", last), headers=auth(ACME)) as response:
            resumed = await read_events(response, 1)
            seen += [
                (e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"])
                for e in resumed
            ]
        assert seen == [
            ("ADDED", "a", 2),
            ("ADDED", "a", 2),
            ("ADDED", "b", 4),
            ("ADDED", "b", 4),
            ("DELETED", "a", 5),
        ]
        # Without a resourceVersion the stream starts now, with a bookmark saying where.
        async with api.client.get(watch_url("ippools"), headers=auth(GLOBEX)) as response:
            (bookmark,) = await read_events(response, 1, skip_bookmarks=False)
            assert bookmark == {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": {"resourceVersion": 5}}}
        # The platform admin's watch sees every tenant's claims.
        async with api.client.get(watch_url("ipclaims", 0), headers=auth(ADMIN)) as response:
            names = [e["object"]["metadata"]["name"] for e in await read_events(response, 4)]
            assert names == ["a", "hidden", "b", "a"]

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2))


def test_watch_with_a_label_selector(tmp_path: Path) -> None:
    """`labelSelector` narrows a watch of any kinds to objects with matching labels, from a
    resourceVersion and live; a selector that does not parse is a 400 before the stream starts."""

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        await api.ok("POST", "/v1/ipclaims", ACME, {**claim("web-1"), "labels": {"app": "web"}})
        await api.ok("POST", "/v1/ipclaims", ACME, {**claim("db-1"), "labels": {"app": "db"}})
        url = watch_url("ipclaims,ipallocations", 0, labelSelector="app%3Dweb")
        async with api.client.get(url, headers=auth(ACME)) as response:
            assert response.status == 200
            first = await read_events(response, 2)
            await api.ok("POST", "/v1/ipclaims", ACME, {**claim("db-2"), "labels": {"app": "db"}})
            await api.ok("DELETE", "/v1/ipclaims/web-1", ACME)
            second = await read_events(response, 2)
        assert [(e["type"], e["object"]["kind"], e["object"]["metadata"]["name"]) for e in first + second] == [
            ("ADDED", "IPAllocation", "web-1"),
            ("ADDED", "IPClaim", "web-1"),
            ("DELETED", "IPAllocation", "web-1"),
            ("DELETED", "IPClaim", "web-1"),
        ]
        refused = await api.error(
            400, "invalid", "GET", watch_url("ipclaims", 0, labelSelector="app%20in%20(web"), ACME
        )
        assert refused.body["error"]["details"] == {"field": "labelSelector"}, refused.body

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2))


def test_watch_heartbeat_timeout_and_limits(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        async with api.client.get(watch_url("ippools", 0, timeoutSeconds="1"), headers=auth(ACME)) as response:
            async with asyncio.timeout(WAIT_S):
                lines = [json.loads(raw) async for raw in response.content]  # until the server ends it
        assert lines[0]["type"] == "ADDED" and lines[0]["object"]["metadata"]["name"] == "edge"
        bookmarks = [line for line in lines[1:] if line["type"] == "BOOKMARK"]
        assert len(bookmarks) == len(lines) - 1 >= 2  # heartbeats, then the closing bookmark
        assert bookmarks[-1]["object"]["metadata"]["resourceVersion"] == 1

        for bad in (
            watch_url("bogus", 0),
            watch_url("ippools", -1),
            watch_url("ippools", 0, timeoutSeconds="0"),
            watch_url("ippools", 0, timeoutSeconds="3601"),
            watch_url("ippools", 0, since="1"),
        ):
            await api.error(400, "invalid", "GET", bad, ACME)
        await api.error(401, "unauthorized", "GET", watch_url("ippools", 0), None)

        async with api.client.get(watch_url("ippools", 1), headers=auth(ACME)) as response:
            assert response.status == 200
            await read_events(response, 1, skip_bookmarks=False)  # open: a heartbeat arrived
            busy = await api.error(503, "overloaded", "GET", watch_url("ippools", 1), ACME)
            assert busy.headers["Retry-After"] == "1"

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2, watches_max=1))


def test_one_project_cannot_take_every_watch(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        async with contextlib.AsyncExitStack() as streams:
            for _ in range(2):
                response = await streams.enter_async_context(
                    api.client.get(watch_url("ippools", 1), headers=auth(ACME))
                )
                assert response.status == 200
                await read_events(response, 1, skip_bookmarks=False)  # open: a heartbeat arrived
            busy = await api.error(503, "overloaded", "GET", watch_url("ippools", 1), ACME)
            assert "acme/web already has 2 watches open" in busy.body["error"]["message"]
            for other in (GLOBEX, ADMIN):  # another project, and the platform, still get theirs
                async with api.client.get(watch_url("ippools", 1), headers=auth(other)) as response:
                    assert response.status == 200
        # Closed streams give their slots back, once the member notices (at its next heartbeat).
        async with asyncio.timeout(WAIT_S):
            while (await api.call("GET", watch_url("ippools", 1, timeoutSeconds="1"), ACME)).status != 200:
                await asyncio.sleep(0.05)

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2, watches_max=8, watches_per_project_max=2))


def test_watch_gone_after_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("statemachine.machine.events_max", 2)

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        for number in range(4):
            await api.ok("POST", "/v1/ipclaims", ACME, claim(f"c{number}"))
        gone = await api.error(410, "gone", "GET", watch_url("ipclaims", 0), ACME)
        assert gone.body["error"]["details"]["compactedRevision"] == 3
        async with api.client.get(watch_url("ipclaims", 3), headers=auth(ACME)) as response:
            names = [e["object"]["metadata"]["name"] for e in await read_events(response, 2)]
            assert names == ["c2", "c3"]

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2))


class BarrierCountingMember(LocalMember):
    def __init__(self) -> None:
        super().__init__()
        self.barriers = 0

    async def read_barrier(self, timeout_s: float) -> None:
        self.barriers += 1


def test_watch_from_a_revision_the_cluster_never_reached_is_gone(tmp_path: Path) -> None:
    member = BarrierCountingMember()

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        await api.ok("POST", "/v1/ipclaims", ACME, claim("c0"))  # revision 2
        # Revision 2 is reached: served without asking the leader, and later events arrive.
        async with api.client.get(watch_url("ipclaims", 2), headers=auth(ACME)) as response:
            assert response.status == 200
            await api.ok("POST", "/v1/ipclaims", ACME, claim("c1"))
            assert [e["object"]["metadata"]["name"] for e in await read_events(response, 1)] == ["c1"]
        assert member.barriers == 0
        # Revision 9 is ahead even after catching up with the leader: the watch would skip
        # revisions 4-9 as they come, so it is refused the way a compacted one is.
        # (A one-second watch: served instead of refused, it ends as a 200 rather than hanging.)
        gone = await api.error(410, "gone", "GET", watch_url("ipclaims", 9, timeoutSeconds="1"), ACME)
        assert gone.body["error"]["details"] == {"resourceVersion": 9, "revision": 3}
        assert "list again" in gone.body["error"]["message"]
        assert member.barriers == 1

    run(tmp_path, check, member=member, limits=Limits(watch_heartbeat_s=0.2))


class BrokenWaitMember(LocalMember):
    async def wait_for_change(self, revision: int, timeout_s: float) -> None:
        raise RuntimeError("wait broke")


def test_watch_failure_after_start_ends_with_an_error_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        async with api.client.get(watch_url("ippools", 0), headers=auth(ACME)) as response:
            async with asyncio.timeout(WAIT_S):
                lines = [json.loads(raw) async for raw in response.content]
        assert [line["type"] for line in lines] == ["ADDED", "ERROR"]
        assert lines[1]["object"]["error"]["code"] == "internal"
        assert (await api.call("GET", "/healthz", None)).status == 200
        assert api.client.app is not None and api.client.app[http.API_KEY].watches_open == 0

    run(tmp_path, check, member=BrokenWaitMember())
    assert "wait broke" in caplog.text


# ---- metrics ---------------------------------------------------------------------------------


def test_metrics(tmp_path: Path) -> None:
    async def check(api: Api) -> None:
        await api.ok("GET", "/healthz", None)
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        await api.error(404, "not_found", "GET", "/nowhere")
        reply = await api.call("GET", "/metrics", None)
        assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
        text = reply.body
        assert 'allot_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
        assert 'allot_http_requests_total{method="POST",route="/v1/ippools",status="201"} 1.0' in text
        assert 'allot_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
        assert 'allot_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/v1/ippools"} 1.0' in text
        assert 'allot_member_role{role="leader"} 1.0' in text
        assert 'allot_member_role{role="follower"} 0.0' in text
        assert "allot_member_revision 1.0" in text
        assert "allot_member_applied_index 1.0" in text
        assert "allot_member_ready 1.0" in text
        assert "allot_http_watches 0.0" in text

    run(tmp_path, check)
    run(tmp_path, check)  # a second app in the same process has its own registry


class CountingDigestMember(LocalMember):
    """Counts the status calls that ask for the full-state digest."""

    def __init__(self) -> None:
        super().__init__()
        self.digest_requests = 0

    def status(self, include_digest: bool = True) -> dict[str, Any]:
        self.digest_requests += int(include_digest)
        return super().status(include_digest)


def test_metrics_scrape_never_hashes_the_state(tmp_path: Path) -> None:
    member = CountingDigestMember()

    async def check(api: Api) -> None:
        for _ in range(3):
            reply = await api.call("GET", "/metrics", None)
            assert reply.status == 200 and "allot_member_revision" in reply.body
        assert member.digest_requests == 0
        status = await api.ok("GET", "/v1/status", ADMIN)
        assert status["digest"] and member.digest_requests == 1

    run(tmp_path, check, member=member)


# ---- member errors ---------------------------------------------------------------------------


class FailingMember(LocalMember):
    def __init__(self, submit_error: Exception | None = None, barrier_error: Exception | None = None) -> None:
        super().__init__()
        self.submit_error = submit_error
        self.barrier_error = barrier_error
        self.hang = False

    async def submit(self, envelope: bytes, timeout_s: float) -> Outcome:
        if self.hang:
            await asyncio.Event().wait()
        if self.submit_error is not None:
            raise self.submit_error
        return await super().submit(envelope, timeout_s)

    async def read_barrier(self, timeout_s: float) -> None:
        if self.barrier_error is not None:
            raise self.barrier_error


def test_member_errors(tmp_path: Path) -> None:
    async def no_leader(api: Api) -> None:
        reply = await api.error(503, "no_leader", "POST", "/v1/ippools", body=ROOT_POOL)
        assert reply.headers["Retry-After"] == "2"  # 1.5 s rounded up
        assert reply.body["error"]["details"]["retryAfterSeconds"] == 2
        assert reply.body["error"]["details"]["retryAfterMillis"] == 1500
        read = await api.error(503, "no_leader", "GET", "/v1/ippools")
        assert "Retry-After" in read.headers
        assert (await api.call("GET", "/v1/ippools", params={"consistency": "stale"})).status == 200

    run(tmp_path, no_leader, member=FailingMember(NoLeaderError("no leader", 1.5), NoLeaderError("no leader", 1.5)))

    async def overloaded(api: Api) -> None:
        reply = await api.error(503, "overloaded", "POST", "/v1/ippools", body=ROOT_POOL)
        assert reply.headers["Retry-After"] == "1"

    run(tmp_path, overloaded, member=FailingMember(OverloadedError("queue full")))

    async def unknown(api: Api) -> None:
        key = {"Idempotency-Key": "pool-edge"}
        reply = await api.error(504, "outcome_unknown", "POST", "/v1/ippools", body=ROOT_POOL, headers=key)
        assert "same Idempotency-Key" in reply.body["error"]["message"]
        assert reply.body["error"]["details"]["requestId"] == "pool-edge"
        assert reply.headers["X-Allot-Request-Id"] == "pool-edge"
        read = await api.error(504, "timeout", "GET", "/v1/ippools")
        assert "nothing changed" in read.body["error"]["message"]

    run(tmp_path, unknown, member=FailingMember(OutcomeUnknownError("deadline"), OutcomeUnknownError("deadline")))

    async def hangs(api: Api) -> None:  # a member that ignores its deadline: we stop waiting
        assert isinstance(api.member, FailingMember)
        api.member.hang = True
        reply = await api.error(504, "outcome_unknown", "POST", "/v1/ippools", body=ROOT_POOL)
        assert reply.headers["X-Allot-Request-Id"]

    run(tmp_path, hangs, member=FailingMember(), limits=Limits(request_timeout_s=0.05, member_grace_s=0.05))


class BrokenReaderMember(LocalMember):
    def reader(self) -> Any:
        raise RuntimeError("disk on fire")


def test_internal_errors_are_json_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def check(api: Api) -> None:
        reply = await api.error(500, "internal", "GET", "/v1/ippools")
        assert "disk on fire" not in reply.body["error"]["message"]  # details stay in the log
        assert (await api.call("GET", "/healthz", None)).status == 200

    run(tmp_path, check, member=BrokenReaderMember())
    assert "disk on fire" in caplog.text


def test_error_table_covers_every_refusal_code() -> None:
    assert set(REJECTION_CODES) <= set(ERROR_STATUS)
    assert ERROR_STATUS["pool_exhausted"] == 409 and ERROR_STATUS["outcome_unknown"] == 504


def test_an_overloaded_refusal_says_when_to_retry() -> None:
    """The state machine refuses a new request id while its table is full of young ones
    (statemachine/machine.py): 503 with the wait it computed, as Retry-After too."""
    error = from_rejected(Rejected("overloaded", "the request-id table is full", {"retryAfterMillis": 1500}))
    assert ERROR_STATUS[error.code] == 503
    assert error.headers["Retry-After"] == "2" and error.details["retryAfterMillis"] == 1500


# ---- tokens ----------------------------------------------------------------------------------


def test_token_file_reload(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    write_tokens(token_file, TOKENS)

    async def check(api: Api) -> None:
        await api.error(401, "unauthorized", "GET", "/v1/ippools", NEW)
        write_tokens(token_file, [*TOKENS[1:], {"token": NEW, "name": "new", "role": "admin"}])
        await api.ok("GET", "/v1/ippools", NEW)  # no restart
        await api.error(401, "unauthorized", "GET", "/v1/ippools", ADMIN)  # revoked
        token_file.write_text('{"tokens": [')  # broken: the loaded tokens stay
        await api.ok("GET", "/v1/ippools", NEW)
        assert api.tokens.last_error is not None and "not valid JSON" in api.tokens.last_error
        write_tokens(token_file, [{"token": "short", "name": "x", "role": "admin"}])
        await api.ok("GET", "/v1/ippools", ACME)
        assert "characters" in (api.tokens.last_error or "")
        token_file.unlink()
        await api.ok("GET", "/v1/ippools", ACME)
        write_tokens(token_file, TOKENS)
        await api.ok("GET", "/v1/ippools", ADMIN)
        assert api.tokens.last_error is None

    run(tmp_path, check)


def test_a_revoked_token_s_open_watch_ends(tmp_path: Path) -> None:
    """Revoking a token ends its open watches too: they send an ERROR line and no more events."""
    token_file = tmp_path / "tokens.json"
    write_tokens(token_file, TOKENS)

    async def check(api: Api) -> None:
        await api.ok("POST", "/v1/ippools", ADMIN, ROOT_POOL)
        async with api.client.get(watch_url("ippools", 0), headers=auth(ACME)) as response:
            assert [event["type"] for event in await read_events(response, 1)] == ["ADDED"]
            write_tokens(token_file, [entry for entry in TOKENS if entry["token"] != ACME])
            await api.error(401, "unauthorized", "GET", "/v1/ippools", ACME)  # the file was reloaded
            await api.ok("POST", "/v1/ippools", ADMIN, {"name": "later", "spec": {"cidr": "10.9.0.0/16"}})
            async with asyncio.timeout(WAIT_S):
                rest = [json.loads(line) async for line in response.content]  # until the server ends it
        assert [line["type"] for line in rest if line["type"] != "BOOKMARK"] == ["ERROR"], rest
        assert rest[-1]["object"]["error"]["code"] == "unauthorized"

    run(tmp_path, check, limits=Limits(watch_heartbeat_s=0.2))


def test_token_reload_interval(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.json"
    write_tokens(token_file, TOKENS)
    now = [0.0]
    store = TokenStore(token_file, reload_interval_s=1.0, clock=lambda: now[0])
    write_tokens(token_file, [*TOKENS, {"token": NEW, "name": "new", "role": "admin"}])
    now[0] = 0.5
    assert store.lookup(NEW) is None  # checked at most once a second
    now[0] = 1.0
    entry = store.lookup(NEW)
    assert entry is not None and entry.principal().is_admin
    acme = store.lookup(ACME)
    assert acme is not None and (acme.org, acme.project, acme.role) == ("acme", "web", "member")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"tokens": {}}', "exactly one field"),
        (b'{"tokens": [], "other": 1}', "exactly one field"),
        (b'{"tokens": ["x"]}', r"tokens\[0\] must be an object"),
        (json.dumps({"tokens": [{**TOKENS[0], "token": "x" * 31}]}).encode(), "31 characters"),
        (json.dumps({"tokens": [{**TOKENS[0], "token": "x" * 31 + " "}]}).encode(), "printable ASCII"),
        (json.dumps({"tokens": [{**TOKENS[1], "org": "Acme"}]}).encode(), "DNS label"),
        (json.dumps({"tokens": [{**TOKENS[1], "project": "-web"}]}).encode(), "DNS label"),
        (json.dumps({"tokens": [{k: v for k, v in TOKENS[1].items() if k != "project"}]}).encode(), "needs both"),
        (json.dumps({"tokens": [{**TOKENS[0], "org": "acme", "project": "web"}]}).encode(), "names no tenant"),
        (json.dumps({"tokens": [{**TOKENS[0], "role": "root"}]}).encode(), "role"),
        (json.dumps({"tokens": [{**TOKENS[0], "name": ""}]}).encode(), "name"),
        (json.dumps({"tokens": [{**TOKENS[0], "expires": 1}]}).encode(), "unknown field"),
        (json.dumps({"tokens": [TOKENS[0], {**TOKENS[1], "token": ADMIN}]}).encode(), "repeats the token of root"),
    ],
)
def test_token_file_validation(document: bytes, message: str) -> None:
    with pytest.raises(TokenFileError, match=message):
        parse_token_file(document)


def test_token_store_refuses_a_broken_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read token file"):
        TokenStore(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{}")
    with pytest.raises(TokenFileError, match=r"broken\.json"):
        TokenStore(broken)


def test_generate_token_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster" / "tokens.json"
    document = generate_token_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.loads(path.read_text()) == document
    roles = sorted((t["role"], t.get("org", ""), t.get("project", "")) for t in document["tokens"])
    assert roles == [("admin", "", ""), ("member", "acme", "web"), ("member", "globex", "prod")]
    assert all(len(t["token"]) >= 32 for t in document["tokens"])
    store = TokenStore(path)
    assert len(store) == 3
    with pytest.raises(TokenFileError, match="already exists"):
        generate_token_file(path)
    again = generate_token_file(path, overwrite=True)
    assert {t["token"] for t in again["tokens"]}.isdisjoint({t["token"] for t in document["tokens"]})
    assert [p.name for p in path.parent.iterdir()] == ["tokens.json"]  # no temporary files left
