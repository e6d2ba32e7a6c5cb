"""Benchmark: a three-member cluster holding a large number of live allocations.

    python -m bench.big_state                        # 1,000,000 allocations (takes minutes)
    python -m bench.big_state --allocations 50000    # a quick run

It starts its own cluster (temporary directory, free ports on 127.0.0.1), fills one /8 pool
with single-address claims over HTTP (64 concurrent clients, Idempotency-Key on each), then
measures, in this order:

* memory: each member's resident set size (VmRSS, split into anonymous memory and mapped file
  pages: LMDB's map counts in RSS as the kernel's page cache, reclaimable) and its data files;
* restart: a follower stopped with SIGTERM and started again, until its /readyz answers 200;
* crash: a follower SIGKILLed and started again, until /readyz answers 200;
* full restart: every member SIGKILLed, all started again, until every /readyz answers 200
  and a new claim is acknowledged;
* rebuild: a follower SIGKILLed, its data directory deleted, started again, until /readyz
  answers 200 and its state digest equals the leader's at the same applied index.

Every wait has a deadline (--timeout). Prints numbers only; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.ipam_apply import machine_line
from chaos.cluster import Cluster, Unreachable, http_request

pool_name = "big"
pool_cidr = "10.0.0.0/8"
fill_concurrency = 64
progress_every = 100_000


def resident_mib(pid: int | None) -> dict[str, float]:
    """VmRSS and its parts: RssAnon (heap) and RssFile (mapped file pages: LMDB, journal)."""
    found = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}
    if pid is None:
        return found
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in found:
            found[name] = int(value.split()[0]) / 1024
    return found


def file_mib(path: Path) -> float:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) / (1 << 20)
    return path.stat().st_size / (1 << 20) if path.exists() else 0.0


async def fill(urls: list[str], token: str, count: int, deadline: float) -> float:
    """Claims `count` single addresses; returns the seconds it took."""
    next_number = 0
    done = 0
    started = time.perf_counter()
    headers_base = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=30)

    async def worker(session: aiohttp.ClientSession, slot: int) -> None:
        nonlocal next_number, done
        while next_number < count:
            if time.monotonic() > deadline:
                raise SystemExit(f"filling did not finish before the deadline ({done} of {count} done)")
            number, next_number = next_number, next_number + 1
            name = f"b{number}"
            body = {"name": name, "spec": {"poolRef": pool_name}}
            headers = {**headers_base, "Idempotency-Key": f"fill-{name}"}
            for attempt in range(10):  # retries carry the same key: applied at most once
                try:
                    async with session.post(f"{urls[slot % 3]}/v1/ipclaims", json=body, headers=headers) as reply:
                        await reply.read()
                        if reply.status == 201:
                            break
                        if reply.status not in (503, 504):
                            raise SystemExit(f"claim {name} answered {reply.status}: {await reply.text()}")
                except (TimeoutError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.05 * (attempt + 1))
            else:
                raise SystemExit(f"claim {name} failed 10 times")
            done += 1
            if done % progress_every == 0:
                elapsed = time.perf_counter() - started
                print(f"  filled {done:,} in {elapsed:.0f} s ({done / elapsed:,.0f} claims/s)", flush=True)

    connector = aiohttp.TCPConnector(limit=fill_concurrency * 2)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        await asyncio.gather(*(worker(session, slot) for slot in range(fill_concurrency)))
    return time.perf_counter() - started


def wait_for(what: str, probe: Callable[[], bool], timeout_s: float, poll_s: float = 0.02) -> float:
    """Seconds until probe() is true; SystemExit with `what` when the deadline passes."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout_s:
            raise SystemExit(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(poll_s)
    return time.monotonic() - started


def ready(cluster: Cluster, member_id: str) -> bool:
    try:
        return http_request(cluster.address(member_id), "GET", "/readyz", timeout_s=1.0).status == 200
    except Unreachable:
        return False


def claim_acknowledged(cluster: Cluster, member_id: str, name: str) -> bool:
    try:
        reply = cluster.request(
            member_id,
            "POST",
            "/v1/ipclaims",
            token=cluster.tenant_tokens["acme/web"],
            body={"name": name, "spec": {"poolRef": pool_name}},
            headers={"Idempotency-Key": f"probe-{name}"},
            timeout_s=2.0,
        )
    except Unreachable:
        return False
    return reply.status in (200, 201)


def digests_match(cluster: Cluster, member_id: str, leader: str) -> bool:
    """True when `member_id` and the leader report the same digest at the same applied index."""
    mine, theirs = cluster.status(member_id, timeout_s=30.0), cluster.status(leader, timeout_s=30.0)
    if mine is None or theirs is None:
        return False
    same_index = mine.get("digestIndex") == theirs.get("digestIndex") == theirs.get("appliedIndex")
    return bool(same_index and mine.get("digest") == theirs.get("digest"))


def load_now() -> str:
    """The machine's load average: other runs sharing the cores explain slow numbers."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def term_now(cluster: Cluster) -> str:
    """The highest term any running member reports: elections show up as jumps."""
    terms = [int(status["term"]) for status in cluster.statuses().values() if status is not None]
    return f"term {max(terms)}" if terms else "term unknown"


def report_memory(cluster: Cluster, label: str) -> None:
    for member_id in cluster.member_ids:
        member = cluster.members[member_id]
        data = member.data_dir
        rss = resident_mib(member.pid)
        print(
            f"memory {label:<14} {member_id}: RSS {rss['VmRSS']:7.1f} MiB (anon {rss['RssAnon']:6.1f}, "
            f"file {rss['RssFile']:7.1f}); "
            f"LMDB {file_mib(data / 'state' / 'state.mdb'):7.1f} MiB, journal "
            f"{file_mib(data / 'raft' / 'journal'):6.1f} MiB, dump {file_mib(data / 'raft' / 'dump'):7.1f} MiB",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--allocations", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline of each measured wait (seconds)")
    parser.add_argument("--fill-timeout", type=float, default=3600.0, help="deadline of the fill (seconds)")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=None,
        help="log entries between full dumps (the members' default when not given); a wiped "
        "follower replays up to this many entries after installing the leader's dump",
    )
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.big_state", *(sys.argv[1:] if argv is None else argv)])
    print(f"# {machine_line()}; {load_now()}; {command}", flush=True)
    with Cluster(snapshot_entries=args.snapshot_entries) as cluster:  # started on entering
        leader = cluster.wait_for_leader()
        urls = [f"http://{cluster.address(member_id)}" for member_id in cluster.member_ids]
        reply = cluster.request(leader, "POST", "/v1/ippools", body={"name": pool_name, "spec": {"cidr": pool_cidr}})
        if reply.status not in (200, 201):
            raise SystemExit(f"creating the pool answered {reply.status}: {reply.body!r}")
        tenant = cluster.tenant_tokens["acme/web"]
        seconds = asyncio.run(fill(urls, tenant, args.allocations, time.monotonic() + args.fill_timeout))
        print(
            f"fill        {args.allocations:,} claims in {seconds:.0f} s ({args.allocations / seconds:,.0f}/s); "
            f"{term_now(cluster)}; {load_now()}"
        )
        leader = cluster.wait_for_leader()
        cluster.wait_converged(member_ids=cluster.member_ids)
        report_memory(cluster, "after fill")
        status: dict[str, Any] = cluster.status(leader, timeout_s=30.0) or {}
        print(
            f"state       revision {status.get('revision')}, applied index {status.get('appliedIndex')}, "
            f"snapshot index {status.get('snapshotIndex')}"
        )

        follower = next(member_id for member_id in cluster.member_ids if member_id != leader)
        cluster.terminate(follower)
        cluster.start_member(follower, wait=False)
        took = wait_for("restarted follower ready", lambda: ready(cluster, follower), args.timeout)
        print(
            f"restart     follower {follower} (SIGTERM, start) to /readyz 200: {took:.2f} s; {term_now(cluster)}",
            flush=True,
        )

        cluster.kill(follower)
        cluster.start_member(follower, wait=False)
        took = wait_for("crashed follower ready", lambda: ready(cluster, follower), args.timeout)
        print(
            f"crash       follower {follower} (SIGKILL, start) to /readyz 200: {took:.2f} s; {term_now(cluster)}",
            flush=True,
        )

        cluster.kill_all()
        started = time.monotonic()
        for member_id in cluster.member_ids:
            cluster.start_member(member_id, wait=False)
        for member_id in cluster.member_ids:
            wait_for(f"{member_id} ready", lambda m=member_id: ready(cluster, m), args.timeout)  # type: ignore[misc]
        all_ready = time.monotonic() - started
        leader = cluster.wait_for_leader()
        wait_for(
            "a claim after the full restart", lambda: claim_acknowledged(cluster, leader, "after-restart"), args.timeout
        )
        first_write = time.monotonic() - started
        print(
            f"full        all SIGKILLed and started: every /readyz 200 after {all_ready:.2f} s, "
            f"first claim acknowledged after {first_write:.2f} s; {term_now(cluster)}",
            flush=True,
        )
        report_memory(cluster, "after restart")

        follower = next(member_id for member_id in cluster.member_ids if member_id != leader)
        cluster.kill(follower)
        cluster.wipe(follower)
        cluster.start_member(follower, wait=False)
        took_ready = wait_for("wiped follower ready", lambda: ready(cluster, follower), args.timeout)
        took_digest = wait_for(
            "wiped follower's digest", lambda: digests_match(cluster, follower, leader), args.timeout, poll_s=0.5
        )
        print(
            f"rebuild     follower {follower} wiped and started: /readyz 200 after {took_ready:.2f} s, "
            f"digest equal to the leader's {took_digest:.2f} s later; {term_now(cluster)}",
            flush=True,
        )
        report_memory(cluster, "after rebuild")
        status = cluster.status(leader, timeout_s=30.0) or {}
        print(f"leadership  term {status.get('term')}, leader {status.get('leader')}; {load_now()}")


if __name__ == "__main__":
    main()
