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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from typing import Any

import aiohttp

from bench.http_claims import local_cluster, percentile
from bench.ipam_apply import machine_line
from node import cluster

POD_REQUESTS = {"cpuMillis": 100, "memoryBytes": 128 << 20}
NODE_CAPACITY = {"cpuMillis": 64_000, "memoryBytes": 256 << 30, "pods": 110}
register_clients = 32


async def post(session: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any], key: str) -> Any:
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": key}
    for _ in range(50):  # 503 (no leader yet, overloaded): retry with the same key
        async with session.post(url, json=body, headers=headers) as response:
            if response.status in (503, 504):
                await asyncio.sleep(0.1)
                continue
            if response.status not in (200, 201):
                raise SystemExit(f"POST {url} answered {response.status}: {await response.text()}")
            return await response.json()
    raise SystemExit(f"POST {url} kept answering 503/504")


async def register_nodes(session: aiohttp.ClientSession, urls: list[str], admin: str, first: int, last: int) -> None:
    numbers = iter(range(first, last))

    async def worker(client: int) -> None:
        for number in numbers:
            body = {
                "name": f"node-{number:05d}",
                "labels": {"zone": f"z{number % 3}"},
                "spec": {"capacity": NODE_CAPACITY, "podPool": "pods"},
            }
            await post(session, f"{urls[client % 3]}/v1/nodes", admin, body, f"node-{number}")

    await asyncio.gather(*(worker(client) for client in range(register_clients)))


async def create_pods(
    session: aiohttp.ClientSession, urls: list[str], tenant: str, clients: int, seconds: float, tag: str
) -> None:
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []
    pending = 0

    async def worker(client: int) -> None:
        nonlocal pending
        sequence = 0
        while time.perf_counter() < deadline:
            sequence += 1
            name = f"{tag}-{client}-{sequence}"
            started = time.perf_counter()
            pod = await post(
                session, f"{urls[client % 3]}/v1/pods", tenant, {"name": name, "spec": {"requests": POD_REQUESTS}}, name
            )
            if pod["spec"]["nodeName"] is None or pod["status"]["podIP"] is None:
                pending += 1
                continue
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(client) for client in range(clients)))
    elapsed = time.perf_counter() - started
    print(
        f"  {clients} clients over 3 members, {elapsed:.1f} s: {len(latencies) / elapsed:,.0f} pods/s created and "
        f"bound; p50 {percentile(latencies, 0.5) * 1e3:.1f} ms, p95 {percentile(latencies, 0.95) * 1e3:.1f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1e3:.1f} ms; {pending} answered Pending",
        flush=True,
    )


async def run(args: argparse.Namespace, urls: list[str], admin: str, tenant: str) -> None:
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        await post(session, f"{urls[0]}/v1/ippools", admin, {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}}, "pool")
        registered = 0
        for count in args.nodes:
            started = time.perf_counter()
            await register_nodes(session, urls, admin, registered, count)
            print(f"{count:,} nodes (registered {count - registered:,} in {time.perf_counter() - started:.1f} s)")
            registered = count
            await create_pods(session, urls, tenant, args.clients, args.seconds, f"n{count}")


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
    # Nodes get no heartbeats here: a grace period longer than the run keeps them Ready.
    environment = {**os.environ, "ALLOT_NODE_GRACE_SECONDS": "3600", "PYTHONUNBUFFERED": "1"}
    with local_cluster(environment) as bench_cluster:
        asyncio.run(run(args, bench_cluster.urls, bench_cluster.admin, bench_cluster.tenant))
        after = [cluster.fetch_status(member.http_address, bench_cluster.admin) for member in bench_cluster.members]
        terms = sorted({(status or {}).get("term") for status in after}, key=str)
        print(f"leadership  terms after the run: {terms}")
        print(f"member m1 after the run: {json.dumps(after[0], sort_keys=True)}")


if __name__ == "__main__":
    main()
