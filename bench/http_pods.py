"""HTTP benchmark: pods created and bound through the API, at 1,000 and 5,000 registered nodes.

    python -m bench.http_pods                               # 1,000 then 5,000 nodes
    python -m bench.http_pods --nodes 200 --seconds 3       # a quick look

It starts its own three-member cluster (like `allot up`, in a temporary directory, on free
ports), so the members, the load generator and the journal syncs all share this machine. It
registers the nodes (64 GiB, 64 cores, 110 pods each, pod CIDRs from one /8), then, per node
count, N clients spread over all members create pods (100 millicores, 128 MiB, an
Idempotency-Key each) for a fixed time. A pod counts when its POST answers 201 with the pod
already bound (node and pod IP in the answer): pods/s, latency p50 / p95 / p99, and how many
creates answered Pending. The node grace period is set to an hour
(ALLOT_NODE_GRACE_SECONDS): the benchmark sends no heartbeats, it measures placement.
Prints numbers only.

The scheduler scenario of the suite (`python -m bench --scenario scheduler`) runs the same
functions (`register_nodes`, `create_pods`) several times per concurrency and reports medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.http_claims import local_cluster
from bench.ipam_apply import machine_line
from bench.loadgen import AllocatorError, latency_summary
from node import cluster

POD_REQUESTS = {"cpuMillis": 100, "memoryBytes": 128 << 20}
NODE_CAPACITY = {"cpuMillis": 64_000, "memoryBytes": 256 << 30, "pods": 110}
POD_POOL = {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}}
GRACE_ENVIRONMENT = {"ALLOT_NODE_GRACE_SECONDS": "3600"}  # no heartbeats are sent: keep the nodes Ready
register_clients = 32
warm_up_pods_count = 16
retry_statuses = frozenset({429, 502, 503, 504})
call_deadline_s = 30.0  # one POST, retries included
request_timeout_s = 30.0


def open_session() -> aiohttp.ClientSession:
    """The HTTP session of a run: no connection limit (every client keeps its own connection)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=request_timeout_s), connector=aiohttp.TCPConnector(limit=0)
    )


async def post(
    session: aiohttp.ClientSession,
    url: str,
    token: str,
    body: dict[str, Any],
    key: str,
    retries: Counter[str] | None = None,
) -> Any:
    """POST with an Idempotency-Key; a lost connection, a timeout, 429 or 5xx-busy (no leader yet,
    overloaded) is sent again with the same key, counted in `retries`. Raises AllocatorError on
    any other answer, or when the retries run past the deadline."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    deadline = time.monotonic() + call_deadline_s
    attempt = 0
    while True:
        reason: str
        try:
            async with session.post(url, json=body, headers=headers) as response:
                if response.status in (200, 201):
                    return await response.json()
                if response.status not in retry_statuses:
                    raise AllocatorError(f"http {response.status}", f"POST {url}: {await response.text()}")
                reason = f"http {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = type(exc).__name__
        if retries is not None:
            retries[reason] += 1
        attempt += 1
        if time.monotonic() > deadline:
            raise AllocatorError("deadline", f"POST {url}: last {reason} after {attempt} attempts")
        await asyncio.sleep(min(0.1, 0.01 * attempt))


async def create_pod_pool(session: aiohttp.ClientSession, url: str, admin: str) -> None:
    """The pool the nodes' pod CIDRs come from."""
    await post(session, f"{url}/v1/ippools", admin, POD_POOL, "pool")


async def register_nodes(session: aiohttp.ClientSession, urls: list[str], admin: str, first: int, last: int) -> None:
    """Register node-{first}..node-{last - 1} with `register_clients` clients over all members."""
    numbers = iter(range(first, last))

    async def worker(client: int) -> None:
        for number in numbers:
            body = {
                "name": f"node-{number:05d}",
                "labels": {"zone": f"z{number % 3}"},
                "spec": {"capacity": NODE_CAPACITY, "podPool": "pods"},
            }
            await post(session, f"{urls[client % len(urls)]}/v1/nodes", admin, body, f"node-{number}")

    await asyncio.gather(*(worker(client) for client in range(register_clients)))


async def warm_up_pods(session: aiohttp.ClientSession, urls: list[str], tenant: str, tag: str) -> None:
    """A few untimed pod creates, so connections are open before the timing starts."""

    async def one(number: int) -> None:
        name = f"{tag}-warm-{number}"
        body = {"name": name, "spec": {"requests": POD_REQUESTS}}
        await post(session, f"{urls[number % len(urls)]}/v1/pods", tenant, body, name)

    await asyncio.gather(*(one(number) for number in range(warm_up_pods_count)))


@dataclass
class PodsResult:
    """One timed phase of pod creates: pods bound in the answer, pods left Pending, latencies."""

    nodes: int
    clients: int
    elapsed_s: float = 0.0
    bound_latencies: list[float] = field(default_factory=list)  # creates answered with the pod bound
    pending: int = 0  # creates answered 201 with the pod Pending
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    @property
    def bound(self) -> int:
        return len(self.bound_latencies)

    @property
    def pods_per_s(self) -> float:
        return self.bound / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "bound": self.bound,
            "pending": self.pending,
            "elapsed_s": round(self.elapsed_s, 3),
            "pods_per_s": self.pods_per_s,
            "create": latency_summary(self.bound_latencies),
            "errors": dict(self.errors),
            "retries": dict(+self.retries),
        }

    def line(self) -> str:
        create = latency_summary(self.bound_latencies)
        text = (
            f"{self.clients} clients over the members, {self.elapsed_s:.1f} s: {self.pods_per_s:,.0f} pods/s created "
            f"and bound; p50 {create['p50_ms']:.1f} ms, p95 {create['p95_ms']:.1f} ms, p99 {create['p99_ms']:.1f} ms; "
            f"{self.bound:,} bound, {self.pending:,} answered Pending"
        )
        if self.errors:
            text += f"; errors {dict(self.errors)}"
        if self.retries:
            text += f"; retries {dict(+self.retries)}"
        return text


async def create_pods(
    session: aiohttp.ClientSession,
    urls: list[str],
    tenant: str,
    *,
    nodes: int,
    clients: int,
    seconds: float,
    tag: str,
    on_pod: Callable[[], None] | None = None,
) -> PodsResult:
    """`clients` workers (client i talks to member i mod 3) create pods one after another for
    `seconds`. A pod counts when the answer has it bound (node and pod IP); the latency is the
    create's, from sending the POST to its answer, retries included."""
    result = PodsResult(nodes, clients)
    deadline = time.perf_counter() + seconds

    async def worker(client: int) -> None:
        sequence = 0
        url = f"{urls[client % len(urls)]}/v1/pods"
        while time.perf_counter() < deadline:
            sequence += 1
            name = f"{tag}-{client}-{sequence}"
            started = time.perf_counter()
            try:
                pod = await post(
                    session, url, tenant, {"name": name, "spec": {"requests": POD_REQUESTS}}, name, result.retries
                )
            except AllocatorError as exc:
                result.errors[exc.reason] += 1
                await asyncio.sleep(0.01)
                continue
            if pod["spec"]["nodeName"] is None or pod["status"]["podIP"] is None:
                result.pending += 1
                continue
            result.bound_latencies.append(time.perf_counter() - started)
            if on_pod is not None:
                on_pod()

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in range(clients)))
    result.elapsed_s = time.perf_counter() - started
    return result


async def run(args: argparse.Namespace, urls: list[str], admin: str, tenant: str) -> None:
    async with open_session() as session:
        await create_pod_pool(session, urls[0], admin)
        registered = 0
        for count in args.nodes:
            started = time.perf_counter()
            await register_nodes(session, urls, admin, registered, count)
            print(f"{count:,} nodes (registered {count - registered:,} in {time.perf_counter() - started:.1f} s)")
            registered = count
            await warm_up_pods(session, urls, tenant, f"n{count}")
            result = await create_pods(
                session, urls, tenant, nodes=count, clients=args.clients, seconds=args.seconds, tag=f"n{count}"
            )
            print(f"  {result.line()}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000], help="node counts, ascending")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.nodes != sorted(args.nodes):
        raise SystemExit("--nodes must be ascending (nodes are added between runs)")
    print(
        f"# {machine_line()}; python -m bench.http_pods --nodes {' '.join(map(str, args.nodes))} "
        f"--clients {args.clients} --seconds {args.seconds:g}"
    )
    environment = {**os.environ, **GRACE_ENVIRONMENT, "PYTHONUNBUFFERED": "1"}
    with local_cluster(environment) as bench_cluster:
        asyncio.run(run(args, bench_cluster.urls, bench_cluster.admin, bench_cluster.tenant))
        after = [cluster.fetch_status(member.http_address, bench_cluster.admin) for member in bench_cluster.members]
        terms = sorted({(status or {}).get("term") for status in after}, key=str)
        print(f"leadership  terms after the run: {terms}")
        print(f"member m1 after the run: {json.dumps(after[0], sort_keys=True)}")


if __name__ == "__main__":
    main()
