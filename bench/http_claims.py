"""HTTP benchmark: single-address claims against a fresh local three-member cluster.

    python -m bench.http_claims                      # both scenarios
    python -m bench.http_claims --clients 64 --seconds 10

It starts its own cluster (like `allot up`, in a temporary directory, on free ports), so the
three members, the load generator and the journal syncs all share this machine. Scenarios:
* sequential: one client, one claim at a time: latency p50 / p99;
* concurrent: N clients spread over all members for a fixed time: acknowledged claims/s and
  latency p50 / p95 / p99.
Every claim carries an Idempotency-Key, as the client library will send. Prints numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.ipam_apply import machine_line
from node import cluster
from node.tokens import generate_token_file


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports (checked by binding each)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count >= 65000:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                candidate = socket.socket()
                sockets.append(candidate)
                candidate.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for candidate in sockets:
                candidate.close()
    raise SystemExit("no block of free ports found")


@dataclass(frozen=True)
class LocalCluster:
    """A benchmark's own three-member cluster: its members and the tokens to use."""

    members: list[cluster.PlannedMember]
    admin: str
    tenant: str  # acme/web

    @property
    def urls(self) -> list[str]:
        return [f"http://{member.http_address}" for member in self.members]


@contextlib.contextmanager
def local_cluster(environment: Mapping[str, str] | None = None) -> Iterator[LocalCluster]:
    """Start three members as `allot up` would (temporary directory, free ports), wait for a
    leader, yield; stop them all on the way out. `environment` replaces the members' environment."""
    with tempfile.TemporaryDirectory(prefix="allot-bench-") as tmp:
        base = Path(tmp)
        http_port, raft_port = free_port_block(3), free_port_block(3)
        members = cluster.plan(base, http_port, raft_port)
        secret = base / "cluster.secret"
        cluster.ensure_secret(secret)
        tokens_path = base / "tokens.json"
        document: dict[str, Any] = generate_token_file(tokens_path)
        admin = next(entry["token"] for entry in document["tokens"] if entry["role"] == "admin")
        tenant = next(entry["token"] for entry in document["tokens"] if entry.get("org") == "acme")
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for member in members:
                member.data_dir.mkdir(parents=True)
                with open(member.data_dir / "member.log", "wb") as log:
                    processes.append(
                        subprocess.Popen(
                            cluster.member_command(member, members, secret, tokens_path),
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            env=None if environment is None else dict(environment),
                        )
                    )
            if cluster.wait_for_leader(members, processes, admin, lambda: False) is None:
                raise SystemExit("the cluster did not elect a leader")
            yield LocalCluster(members, admin, tenant)
        finally:
            cluster.stop_all(processes)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def claim(session: aiohttp.ClientSession, url: str, token: str, name: str) -> float:
    body = {"name": name, "spec": {"poolRef": "bench"}}
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": f"key-{name}"}
    started = time.perf_counter()
    async with session.post(f"{url}/v1/ipclaims", json=body, headers=headers) as response:
        await response.read()
        if response.status != 201:
            raise SystemExit(f"claim {name} answered {response.status}: {await response.text()}")
    return time.perf_counter() - started


def _latency_line(latencies: list[float]) -> str:
    return f"p50 {percentile(latencies, 0.5) * 1e3:.2f} ms, p99 {percentile(latencies, 0.99) * 1e3:.2f} ms"


async def run(args: argparse.Namespace, urls: list[str], admin: str, tenant: str, leader_url: str | None) -> None:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        pool = {"name": "bench", "spec": {"cidr": "10.0.0.0/8"}}
        async with session.post(
            f"{urls[0]}/v1/ippools", json=pool, headers={"Authorization": f"Bearer {admin}"}
        ) as response:
            if response.status not in (200, 201):
                raise SystemExit(f"creating the pool answered {response.status}: {await response.text()}")
        targets = [urls[index % 3] for index in range(args.sequential)]
        latencies = [await claim(session, url, tenant, f"seq-{index}") for index, url in enumerate(targets)]
        print(f"sequential  1 client, {args.sequential} claims: {_latency_line(latencies)}")
        # A claim sent to a follower takes two more hops (forwarded to the leader, and the
        # commit back), so the two kinds are told apart as well.
        to_leader = [latency for latency, url in zip(latencies, targets, strict=True) if url == leader_url]
        to_followers = [latency for latency, url in zip(latencies, targets, strict=True) if url != leader_url]
        if leader_url is not None and to_leader and to_followers:
            print(
                f"              of which sent to the leader ({len(to_leader)}): {_latency_line(to_leader)}; "
                f"to followers ({len(to_followers)}): {_latency_line(to_followers)}"
            )
        deadline = time.perf_counter() + args.seconds
        done: list[float] = []

        async def worker(number: int) -> None:
            sequence = 0
            while time.perf_counter() < deadline:
                sequence += 1
                done.append(await claim(session, urls[number % 3], tenant, f"c{number}-{sequence}"))

        started = time.perf_counter()
        await asyncio.gather(*(worker(number) for number in range(args.clients)))
        elapsed = time.perf_counter() - started
        print(
            f"concurrent  {args.clients} clients over 3 members, {elapsed:.1f} s: {len(done) / elapsed:,.0f} claims/s, "
            f"p50 {percentile(done, 0.5) * 1e3:.1f} ms, p95 {percentile(done, 0.95) * 1e3:.1f} ms, "
            f"p99 {percentile(done, 0.99) * 1e3:.1f} ms (mean {statistics.fmean(done) * 1e3:.1f} ms)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sequential", type=int, default=500)
    args = parser.parse_args(argv)
    print(f"# {machine_line()}; python -m bench.http_claims --clients {args.clients} --seconds {args.seconds:g}")
    with local_cluster() as bench_cluster:
        members, admin = bench_cluster.members, bench_cluster.admin
        before = [cluster.fetch_status(member.http_address, admin) for member in members]
        leader_id = (before[0] or {}).get("leader")
        member_ids = [(status or {}).get("memberId") for status in before]
        urls = bench_cluster.urls
        leader_url = next((url for url, mid in zip(urls, member_ids, strict=True) if mid == leader_id), None)
        asyncio.run(run(args, urls, admin, bench_cluster.tenant, leader_url))
        after = [cluster.fetch_status(member.http_address, admin) for member in members]
        terms = sorted({(status or {}).get("term") for status in before + after}, key=str)
        leaders = sorted({(status or {}).get("leader") for status in before + after}, key=str)
        print(f"leadership  terms seen before and after the run: {terms}; leaders: {leaders}")
        print(f"member m1 after the run: {json.dumps(after[0], sort_keys=True)}")


if __name__ == "__main__":
    main()
