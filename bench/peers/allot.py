"""Allot as a benchmark store: a fresh three-member cluster (chaos.cluster.Cluster), driven over HTTP.

The allocator speaks the public HTTP API with aiohttp, like bench.http_claims: a claim is
`POST /v1/ipclaims` with an Idempotency-Key, a release `DELETE /v1/ipclaims/{name}`; requests
go round-robin over all three members (a follower forwards writes to the leader). A claim that
meets a lost connection, a timeout, 503 or 504 is sent again with the same key, so it is
applied at most once; a claim answered 409 `pool_exhausted` raises `PoolExhausted`. Pools owned
by a tenant are created and used by the admin token acting for that tenant (`?org=&project=`);
pools without a tenant are created by the admin and claimed from by the demo tenant acme/web.
A pool with `claim_length` (/64 claims from an IPv6 /32) is created with that length as its
default and longest, and each claim asks for it (`spec.prefixLength`).

`AllotStore(environment=...)` adds variables to the members' environment (the scheduler
scenario sets a long node grace period: it registers nodes but sends no heartbeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp

from bench.loadgen import AllocatorError, Pool, PoolExhausted
from chaos.cluster import Cluster

retry_statuses = frozenset({429, 502, 503, 504})
call_deadline_s = 30.0  # one claim or release, retries included
request_timeout_s = 10.0


class AllotAllocator:
    label = "allot"

    def __init__(
        self, urls: list[str], admin_token: str, tenant_token: str, timeout_s: float = request_timeout_s
    ) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self.admin_token = admin_token
        self.tenant_token = tenant_token
        self.retries: Counter[str] = Counter()
        self._next = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), connector=aiohttp.TCPConnector(limit=0)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _auth(self, pool: Pool, *, admin: bool = False) -> tuple[dict[str, str], dict[str, str]]:
        """Headers and query: the admin acting for the pool's tenant, or the demo tenant's token."""
        if pool.tenant is not None:
            org, project = pool.tenant
            return {"Authorization": f"Bearer {self.admin_token}"}, {"org": org, "project": project}
        token = self.admin_token if admin else self.tenant_token
        return {"Authorization": f"Bearer {token}"}, {}

    async def _send(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        params: dict[str, str],
        body: dict[str, Any] | None,
        ok: frozenset[int],
    ) -> tuple[int, Any]:
        """One call, retried on what a careful client retries, until it answers or the deadline."""
        if self._session is None:
            raise RuntimeError("open() the allocator first")
        deadline = time.monotonic() + call_deadline_s
        attempt = 0
        while True:
            url = self.urls[next(self._next) % len(self.urls)]
            reason: str
            try:
                async with self._session.request(
                    method, f"{url}{path}", headers=headers, params=params, json=body
                ) as reply:
                    data = await reply.read()
                    payload = json.loads(data) if data else None
                    if reply.status in ok:
                        return reply.status, payload
                    if reply.status == 409 and exhausted_answer(payload):
                        raise PoolExhausted(f"{method} {path}: {payload}")
                    if reply.status not in retry_statuses:
                        raise AllocatorError(f"http {reply.status}", f"{method} {path}: {payload}")
                    reason = f"http {reply.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            self.retries[reason] += 1
            attempt += 1
            if time.monotonic() > deadline:
                raise AllocatorError("deadline", f"{method} {path}: last {reason} after {attempt} attempts")
            await asyncio.sleep(min(0.2, 0.01 * attempt))

    async def create_pool(self, pool: Pool) -> None:
        headers, params = self._auth(pool, admin=True)
        spec: dict[str, Any] = {"cidr": str(pool.cidr)}
        if pool.claim_length is not None:  # e.g. /64 claims from an IPv6 /32
            length = pool.claim_length
            spec["allocation"] = {"defaultPrefixLength": length, "maxPrefixLength": length}
        body = {"name": pool.name, "spec": spec}
        headers = {**headers, "Idempotency-Key": f"pool-{pool.name}"}
        await self._send("POST", "/v1/ippools", headers, params, body, frozenset({200, 201}))

    async def claim(self, pool: Pool, name: str) -> str:
        headers, params = self._auth(pool)
        headers = {**headers, "Idempotency-Key": f"claim-{name}"}
        spec: dict[str, Any] = {"poolRef": pool.name}
        if pool.claim_length is not None:
            spec["prefixLength"] = pool.claim_length
        body = {"name": name, "spec": spec}
        _, answer = await self._send("POST", "/v1/ipclaims", headers, params, body, frozenset({200, 201}))
        return str(answer["status"]["allocatedCIDR"])

    async def release(self, pool: Pool, name: str, cidr: str) -> None:
        headers, params = self._auth(pool)
        headers = {**headers, "Idempotency-Key": f"release-{name}"}
        # 404: a retry of a release that was applied although its answer was lost.
        await self._send("DELETE", f"/v1/ipclaims/{name}", headers, params, None, frozenset({200, 204, 404}))

    async def get_claim(self, pool: Pool, name: str, consistency: str) -> None:
        headers, params = self._auth(pool)
        params = {**params, "consistency": consistency}
        await self._send("GET", f"/v1/ipclaims/{name}", headers, params, None, frozenset({200}))

    async def list_claims(self, pool: Pool, consistency: str, limit: int) -> int:
        """One page of the tenant's claims; returns how many items it held."""
        headers, params = self._auth(pool)
        params = {**params, "consistency": consistency, "limit": str(limit)}
        _, answer = await self._send("GET", "/v1/ipclaims", headers, params, None, frozenset({200}))
        return len(answer["items"])


def exhausted_answer(payload: Any) -> bool:
    """A 409 whose error code says the pool has no room (409 is also a conflict or a name taken)."""
    error = payload.get("error") if isinstance(payload, dict) else None
    return isinstance(error, dict) and error.get("code") == "pool_exhausted"


@contextlib.contextmanager
def added_environment(extra: Mapping[str, str]) -> Iterator[None]:
    """os.environ with `extra` added while members are started (chaos.cluster copies this
    process's environment into each member's), restored afterwards."""
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class AllotStore:
    """A fresh three-member Allot cluster per start(); `environment` is added to the members'."""

    label = "allot"

    def __init__(self, environment: Mapping[str, str] | None = None) -> None:
        self.cluster: Cluster | None = None
        self.environment: dict[str, str] = dict(environment or {})

    def start(self) -> None:
        cluster = Cluster()
        self.cluster = cluster
        with added_environment(self.environment):
            cluster.start()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _cluster(self) -> Cluster:
        if self.cluster is None:
            raise RuntimeError("start() the store first")
        return self.cluster

    def urls(self) -> list[str]:
        cluster = self._cluster()
        return [f"http://{cluster.address(member_id)}" for member_id in cluster.member_ids]

    def tokens(self) -> tuple[str, str]:
        """(the admin token, the demo tenant acme/web's token)."""
        cluster = self._cluster()
        return cluster.admin_token, cluster.tenant_tokens["acme/web"]

    def allocator(self, timeout_s: float = request_timeout_s) -> AllotAllocator:
        admin, tenant = self.tokens()
        return AllotAllocator(self.urls(), admin, tenant, timeout_s)

    def describe(self) -> str:
        return (
            "three members (`allot serve`, as `allot up` starts them) on 127.0.0.1; Raft journal "
            "fdatasync'd before every acknowledgement; heartbeat 50 ms, election timeout 0.3-0.6 s; "
            "HTTP/JSON with an Idempotency-Key on every write, requests round-robin over the members"
        )

    # -- failover --

    def member_ids(self) -> list[str]:
        return self._cluster().member_ids

    def leader(self, timeout_s: float) -> str:
        return self._cluster().wait_for_leader(timeout_s)

    def kill(self, member_id: str) -> None:
        self._cluster().kill(member_id)

    def restart(self, member_id: str, timeout_s: float) -> None:
        cluster = self._cluster()
        with added_environment(self.environment):
            cluster.start_member(member_id, wait=False)
        cluster.wait_member_up(member_id, timeout_s)

    def wait_whole(self, timeout_s: float) -> None:
        """Every member up and a leader agreed on. Not convergence: under constant load the
        members' digests are never taken at the same index at the same moment."""
        cluster = self._cluster()
        with added_environment(self.environment):
            for member_id in cluster.member_ids:
                if not cluster.members[member_id].running:
                    cluster.start_member(member_id, wait=False)
        for member_id in cluster.member_ids:
            cluster.wait_member_up(member_id, timeout_s)
        cluster.wait_for_leader(timeout_s)
