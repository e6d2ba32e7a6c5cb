"""The benchmark suite: Allot side by side with etcd and PostgreSQL allocators on the same workload.

    python -m bench                                   # every scenario, every store found
    python -m bench --quick                           # one short run of each (a few minutes)
    python -m bench --scenario contended --runs 5
    python -m bench --scenario failover --kills 20 --stores allot,etcd,postgres
    python -m bench --scenario scheduler --nodes 1000,5000
    python -m bench --scenario fill --runs 1           # a /16 filled to 100 % by 8 clients
    python -m bench --scenario big --big-allocations 1000000

Scenarios (issue #7):

* contended: single-address claims from ONE pool (a /16) at each concurrency (1, 8, 64, 256):
  claims/s and p50/p95/p99; then the same with churn (each claim released at once).
* spread: the same over 100 pools (/22 each) of 100 different tenants, each claim picking a pool
  at random (Allot: the admin token acting for each tenant with ?org=&project=).
* failover: writers claim all the time while the leader is SIGKILLed again and again (20 by
  default), and a prober sends a new claim every 20 ms whatever became of the earlier ones:
  time from the kill to the first acknowledged claim sent after it, and what the clients saw
  (retries by reason, claims that failed). PostgreSQL, one node with no replica, is measured
  as a crash-restart instead: SIGKILL the postmaster and its backends, start it again at once
  on the same data directory (crash recovery replays the WAL), same load, same timing. After
  the kills, what PostgreSQL holds is read back and checked against the acknowledged claims
  (none lost, none given twice). A store not measured in a run (not installed, or not among
  --stores) keeps its earlier failover row, stamped with its own date.
* reads (Allot only): get and list latency at linearizable and stale consistency.
* scheduler (Allot only: etcd and PostgreSQL have no scheduler): pods created and bound through
  the HTTP API at 1,000 and 5,000 registered nodes (`--nodes`), at each concurrency: pods/s,
  create latency p50/p95/p99, pods bound vs answered Pending. Nodes are registered before the
  timed phases (bench/http_pods.py does the registering and the creating, for both).
* fill: one /16 pool (`--fill-prefix`) filled from empty to full by 8 clients, each claim's
  latency filed under the utilisation band (of ten) the pool was in when it was sent, until the
  store refuses a claim as exhausted; then 200 claims of the full pool, each refused, timed (the
  exhaustion refusal latency). Every allocator answers "full" the same way: `PoolExhausted`.
* big: /64 claims from 2001:db8::/32: claim and release latency (one client, `--big-sample`
  claims then their releases) on the empty pool, then again with `--big-allocations` live /64s
  (100,000 by default; the issue asks for 1,000,000), and the ratio. The fill is not timed
  (its time is recorded): Allot fills through its allocator (64 concurrent claims over HTTP, no
  bulk API); etcd and PostgreSQL use a bulk load of the same allocations (etcd: 128
  compare-and-creates per transaction; PostgreSQL: one COPY under the pool row's lock).
  etcd-bitmap cannot hold the pool (a bitmap of 2^32 /64s is 512 MiB) and is skipped.

Stores: allot (a fresh three-member cluster), etcd (three members, one key per address,
compare-and-create), etcd-bitmap (one bitmap key per pool, compare-and-swap; for reference) and
postgres (one node, row lock + lowest free address + exclusion constraint). bench/peers/ says
how each is configured. A peer that is not installed is skipped, and the report says so; this
harness installs nothing (Debian: `apt-get install etcd-server postgresql`; Python:
`pip install 'allot[bench]'` for asyncpg and matplotlib).

Every store runs alone: for each run, each store in turn is started fresh, measured at every
level and stopped (the order rotates between runs), so noise from the machine spreads over all
stores alike. Every figure is the median of `--runs` runs with min..max beside it; ratios are
taken within a run and then the median. Results go to docs/bench/suite.json (merged by
scenario), tables between the markers in docs/benchmarks.md, charts in docs/bench/ and the
headline table in README's "Benchmarks" section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import functools
import ipaddress
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bench import http_pods, report
from bench.ipam_apply import machine_line
from bench.loadgen import (
    Allocator,
    AllocatorError,
    BulkLoader,
    CidrCarver,
    PhaseResult,
    Pool,
    Readback,
    run_calls,
    run_fill,
    run_phase,
    timed_claims,
    warm_up,
)
from bench.peers import Replicated, Store, Unavailable
from bench.peers.allot import AllotAllocator, AllotStore
from bench.peers.etcd import EtcdStore
from bench.peers.postgres import PostgresStore

REPO_ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("contended", "spread", "failover", "reads", "scheduler", "fill", "big")
STORES = ("allot", "etcd", "etcd-bitmap", "postgres")
FAILOVER_STORES = ("allot", "etcd", "postgres")  # allot, etcd: leader failover; postgres: crash-restart
CRASH_RESTART = "crash-restart (single node, no replica)"
LEADER_FAILOVER = "leader failover (three members)"
levels_default = (1, 8, 64, 256)
spread_pools = 100
spread_prefix = 22
contended_prefix = 16
failover_writers = 6
probe_interval_s = 0.02
probes_outstanding_max = 200
crash_settle_s = 1.0  # crash-restart: steady load for this long after a recovery before the next kill
failover_request_timeout_s = 2.0  # per request, then retried (as bench/failover.py), the same for every store
reads_prefill = 1000
reads_list_limit = 100
reads_levels = (1, 32)
store_start_timeout_s = 60.0
scheduler_nodes_default = (1000, 5000)
kube_scheduler_reference = {
    "pods_per_s": 270,
    "nodes": 5000,
    "what": "kube-scheduler's scheduler_perf CI job (ci-benchmark-scheduler-perf) fails when "
    "SchedulingBasic/5000Nodes_10000Pods schedules fewer than 270 pods/s on average "
    "(kubernetes/kubernetes, test/integration/scheduler_perf)",
}
fill_prefix_default = 16
fill_clients = 8
fill_bands = 10
fill_refusals = 200
fill_deadline_s = 1800.0  # one fill, from empty to full, and its refusals
big_space = "2001:db8::/32"
big_claim_prefix = 64
big_allocations_default = 100_000
big_sample_default = 200
big_clients = 1  # the timed claims and releases: latency, one at a time
big_fill_clients = 64  # the untimed fill through the allocator (Allot)
big_fill_chunk = 10_000
big_fill_deadline_s = 7200.0
BIG_UNSUPPORTED = {
    "etcd-bitmap": "a bitmap of the 2^32 /64s of a /32 is 512 MiB, far over etcd's request size limit (1.5 MiB)"
}
Result = TypeVar("Result")


@dataclass
class Settings:
    scenarios: list[str]
    stores: list[str]
    runs: int
    seconds: float
    levels: list[int]
    nodes: list[int]
    kills: int
    timeout_s: float
    pg_connections: int
    out_json: Path
    report_md: Path | None
    readme: Path | None
    charts_dir: Path | None
    command: str
    render_only: bool = False
    fill_prefix: int = fill_prefix_default
    big_allocations: int = big_allocations_default
    big_sample: int = big_sample_default


def fdatasync_ms(samples: int = 50) -> float:
    """Median time of a 4 KiB append + fdatasync in the temporary directory every store uses."""
    times: list[float] = []
    with tempfile.NamedTemporaryFile(prefix="allot-bench-fsync-") as handle:
        block = os.urandom(4096)
        for _ in range(samples):
            began = time.perf_counter()
            handle.write(block)
            handle.flush()
            os.fdatasync(handle.fileno())
            times.append(time.perf_counter() - began)
    return round(statistics.median(times) * 1e3, 3)


def load_average() -> list[float]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [round(value, 2) for value in load]


def stamp(settings: Settings) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_line(),
        "load_average": load_average(),
        "fdatasync_ms": fdatasync_ms(),
        "command": settings.command,
    }


# ---- progress ------------------------------------------------------------------------------------


class Display:
    """A rich progress display on stderr (phases done, the current phase's clock and claims)."""

    def __init__(self, total_phases: int, quiet: bool = False) -> None:
        self.console = Console(stderr=True, quiet=quiet)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.overall: TaskID = self.progress.add_task("suite", total=max(1, total_phases), detail="")
        self.phase: TaskID = self.progress.add_task("phase", total=1, detail="", visible=False)
        self.count = 0

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def log(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def begin(self, what: str, seconds: float) -> None:
        self.count = 0
        self.progress.update(self.phase, description=what, total=max(seconds, 0.001), completed=0, visible=True)

    def tick(self, elapsed: float) -> None:
        self.progress.update(self.phase, completed=elapsed, detail=f"{self.count:,} done")

    def claimed(self) -> None:
        self.count += 1

    def end(self, summary: str) -> None:
        self.progress.update(self.phase, visible=False)
        self.progress.advance(self.overall)
        self.progress.update(self.overall, detail=summary)


async def ticking(display: Display, seconds: float, what: str, work: Awaitable[Result]) -> Result:
    """Run one phase while the display's clock moves."""
    display.begin(what, seconds)
    began = time.perf_counter()

    async def clock() -> None:
        while True:
            display.tick(min(seconds, time.perf_counter() - began))
            await asyncio.sleep(0.2)

    ticker = asyncio.create_task(clock())
    try:
        return await work
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


# ---- stores ----------------------------------------------------------------------------------------


def make_store(name: str, settings: Settings) -> Store:
    """The store called `name`; Unavailable when its programs are not installed here."""
    if name == "allot":
        return AllotStore()
    if name in ("etcd", "etcd-bitmap"):
        return EtcdStore(bitmap=name == "etcd-bitmap")
    if name == "postgres":
        return PostgresStore(settings.pg_connections)
    raise ValueError(f"unknown store {name!r}")


def available_stores(names: Sequence[str], settings: Settings, display: Display) -> tuple[list[Store], dict[str, str]]:
    stores: list[Store] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            stores.append(make_store(name, settings))
        except Unavailable as exc:
            skipped[name] = str(exc)
            display.log(f"skipping {name}: {exc}")
    return stores, skipped


@contextlib.contextmanager
def running(store: Store) -> Iterator[Store]:
    """Start the store; always stop it (and reap its processes), on errors and Ctrl-C too."""
    try:
        store.start()
        yield store
    finally:
        store.close()


def rotated(items: Sequence[Store], run: int) -> list[Store]:
    shift = run % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


async def create_pools(allocator: Allocator, pools: Sequence[Pool]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(pool: Pool) -> None:
        async with gate:
            await allocator.create_pool(pool)

    await asyncio.gather(*(one(pool) for pool in pools))


# ---- claims scenarios (contended, spread) -------------------------------------------------------------


def claim_pools(scenario: str, carver: CidrCarver, tag: str) -> list[Pool]:
    if scenario == "contended":
        return [Pool(f"c-{tag}", carver.take(contended_prefix))]
    return [
        Pool(f"s-{tag}-{index}", carver.take(spread_prefix), (f"t{index}", "bench")) for index in range(spread_pools)
    ]


async def measure_store(
    scenario: str, store: Store, settings: Settings, display: Display, run: int
) -> list[tuple[str, int, dict[str, Any]]]:
    """Every level and mode on one freshly started store: [(mode, concurrency, summary)]."""
    allocator = store.allocator()
    await allocator.open()
    carver = CidrCarver()
    rows: list[tuple[str, int, dict[str, Any]]] = []
    try:
        for concurrency in settings.levels:
            for mode in ("claim", "churn"):
                tag = f"{concurrency}-{mode}"
                pools = claim_pools(scenario, carver, tag)
                await create_pools(allocator, pools)
                await warm_up(allocator, pools[0], min(concurrency, 16), f"w-{tag}")
                capacity = sum(pool.size for pool in pools)
                limit = int(capacity * (0.9 if len(pools) == 1 else 0.5))
                what = f"{scenario} run {run + 1}/{settings.runs}: {store.label} x{concurrency} {mode}"
                result = await ticking(
                    display,
                    settings.seconds,
                    what,
                    run_phase(
                        allocator,
                        pools,
                        concurrency=concurrency,
                        seconds=settings.seconds,
                        churn=mode == "churn",
                        max_claims=limit,
                        name_prefix=f"b-{tag}",
                        seed=run * 1000 + concurrency,
                        on_claim=display.claimed,
                    ),
                )
                summary = result.summary()
                rows.append((mode, concurrency, summary))
                display.end(f"{store.label} x{concurrency} {mode}: {summary['claims_per_s']:,.0f}/s")
                display.log(phase_line(what, result))
    finally:
        await allocator.close()
    return rows


def phase_line(what: str, result: PhaseResult) -> str:
    summary = result.summary()
    claim = summary["claim"]
    text = (
        f"{what}: {summary['claims_per_s']:,.0f} claims/s, p50 {claim['p50_ms']:.1f} ms, "
        f"p95 {claim['p95_ms']:.1f} ms, p99 {claim['p99_ms']:.1f} ms"
    )
    if result.errors:
        text += f"; errors {dict(result.errors)}"
    if result.retries:
        text += f"; retries {dict(result.retries)}"
    return text


def scenario_claims(scenario: str, settings: Settings, display: Display) -> dict[str, Any]:
    stores, skipped = available_stores(settings.stores, settings, display)
    table: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    descriptions: dict[str, str] = {}
    for run in range(settings.runs):
        for store in rotated(stores, run):
            with running(store):
                descriptions[store.label] = store.describe()
                rows = asyncio.run(measure_store(scenario, store, settings, display, run))
            for mode, concurrency, summary in rows:
                table.setdefault((store.label, mode, concurrency), []).append(summary)
    return {
        "stamp": stamp(settings),
        "config": {
            "runs": settings.runs,
            "seconds": settings.seconds,
            "levels": settings.levels,
            "pools": 1 if scenario == "contended" else spread_pools,
            "pool_prefix": contended_prefix if scenario == "contended" else spread_prefix,
        },
        "stores": descriptions,
        "skipped": skipped,
        "rows": [
            {"store": store, "mode": mode, "concurrency": concurrency, "runs": runs}
            for (store, mode, concurrency), runs in table.items()
        ],
    }


# ---- failover --------------------------------------------------------------------------------------


@dataclass
class Writers:
    """Writers claiming all the time, through the store's allocator; acknowledgements kept."""

    allocator: Allocator
    pool: Pool
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    acknowledged: list[tuple[float, float]] = field(default_factory=list)  # (sent, acknowledged)
    claims: list[tuple[str, str]] = field(default_factory=list)  # (name, cidr) of each acknowledged claim
    failed: Counter[str] = field(default_factory=Counter)

    async def run(self, slot: int) -> None:
        number = 0
        while not self.stop.is_set():
            number += 1
            sent = time.monotonic()
            name = f"f{slot}-{number}"
            try:
                cidr = await self.allocator.claim(self.pool, name)
            except AllocatorError as exc:
                self.failed[exc.reason] += 1
                await asyncio.sleep(0.05)
                continue
            self.acknowledged.append((sent, time.monotonic()))
            self.claims.append((name, cidr))

    async def probe(self) -> None:
        """Open loop: a new claim every `probe_interval_s` whatever became of the earlier ones, so a
        writer stuck in a request to a dead member does not hide that the store recovered."""
        outstanding: set[asyncio.Task[None]] = set()
        number = 0
        while not self.stop.is_set():
            if len(outstanding) < probes_outstanding_max:
                number += 1
                task = asyncio.create_task(self.one_probe(number))
                outstanding.add(task)
                task.add_done_callback(outstanding.discard)
            await asyncio.sleep(probe_interval_s)
        if outstanding:
            await asyncio.wait(outstanding, timeout=failover_request_timeout_s * 2)
        for task in list(outstanding):
            task.cancel()

    async def one_probe(self, number: int) -> None:
        sent = time.monotonic()
        name = f"probe-{number}"
        try:
            cidr = await self.allocator.claim(self.pool, name)
        except AllocatorError as exc:
            self.failed[exc.reason] += 1
            return
        self.acknowledged.append((sent, time.monotonic()))
        self.claims.append((name, cidr))

    def first_acknowledged_after(self, moment: float) -> float | None:
        times = [acked for sent, acked in self.acknowledged if sent >= moment]
        return min(times) if times else None


async def wait_async(what: str, probe: Callable[[], float | None], timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        await asyncio.sleep(0.005)


def check_claims(
    acknowledged: Sequence[tuple[str, str]], released: int, held: Sequence[tuple[str, str]]
) -> dict[str, Any]:
    """What the store holds after the kills against what the clients were told: every acknowledged
    claim (name, cidr) still held under its name at the same address (else lost), no address held
    or acknowledged twice (duplicated), and rows = acknowledged - released + the rows committed
    whose answer never reached a client (in doubt: a claim that failed, or was cut off at the end)."""
    holding: dict[str, str] = {}
    names_twice = 0
    for name, cidr in held:
        names_twice += name in holding
        holding[name] = cidr
    told: dict[str, str] = {}
    for name, cidr in acknowledged:
        told.setdefault(name, cidr)
    lost = sorted(name for name, cidr in told.items() if holding.get(name) != cidr)
    held_twice = sum(count - 1 for count in Counter(cidr for _, cidr in held).values() if count > 1)
    told_twice = sum(count - 1 for count in Counter(told.values()).values() if count > 1)
    return {
        "acknowledged": len(told),
        "released": released,
        "rows": len(held),
        "expected_rows": len(told) - released,
        "lost": len(lost),
        "lost_examples": lost[:5],
        "duplicated": held_twice + told_twice + names_twice,
        "in_doubt": len(set(holding) - set(told)),
        "ok": not lost and not (held_twice or told_twice or names_twice),
    }


async def restart_timed(store: PostgresStore, timeout_s: float) -> tuple[float, float | None]:
    """Start the crashed server again; (the moment it accepts connections, its WAL replay time)."""
    redo = await asyncio.to_thread(store.restart, timeout_s)
    return time.monotonic(), redo


async def failover_run(store: Replicated | PostgresStore, settings: Settings, display: Display) -> dict[str, Any]:
    """Leader failover (a Replicated store) or crash-restart (PostgreSQL), `settings.kills` times,
    under the same writers and prober; then read back and check the claims where the store can."""
    crash_restart = isinstance(store, PostgresStore)
    allocator = store.allocator(failover_request_timeout_s)
    await allocator.open()
    pool = Pool("failover", CidrCarver().take(12))
    await allocator.create_pool(pool)
    writers = Writers(allocator, pool)
    tasks = [asyncio.create_task(writers.run(slot)) for slot in range(failover_writers)]
    tasks.append(asyncio.create_task(writers.probe()))
    began = time.monotonic()
    kills: list[dict[str, Any]] = []
    retries_before = Counter(allocator.retries)
    check: dict[str, Any] | None = None
    try:
        for kill in range(1, settings.kills + 1):
            display.begin(f"failover: {store.label} kill {kill}/{settings.kills}", 1.0)
            warm = time.monotonic()
            entry: dict[str, Any]
            if isinstance(store, PostgresStore):
                # Nothing to restart between kills (the restart is what is timed), so the load runs
                # undisturbed for a while before the next kill, as it does while a member restarts.
                victim = "postmaster"
                warm += crash_settle_s
            else:
                await asyncio.to_thread(store.wait_whole, settings.timeout_s)
                victim = await asyncio.to_thread(store.leader, settings.timeout_s)
                warm = time.monotonic()
            await wait_async(
                "a write before the kill",
                functools.partial(writers.first_acknowledged_after, warm),
                30.0 + crash_settle_s,
            )
            killed_at = time.monotonic()
            if isinstance(store, PostgresStore):
                # On the event loop, not in a thread: no claim is sent between the clock and the
                # SIGKILL (the server answers one in a few ms, so it would count as "after the kill").
                store.crash()
                killed_at = time.monotonic()
                restarting = asyncio.create_task(restart_timed(store, settings.timeout_s))
                try:
                    first = await wait_async(
                        "the first acknowledged write after the kill",
                        functools.partial(writers.first_acknowledged_after, killed_at),
                        settings.timeout_s,
                    )
                finally:
                    accepting_at, redo = await restarting
                entry = {"accepting_s": accepting_at - killed_at, "redo_s": redo}
            else:
                await asyncio.to_thread(store.kill, victim)
                first = await wait_async(
                    "the first acknowledged write after the kill",
                    functools.partial(writers.first_acknowledged_after, killed_at),
                    settings.timeout_s,
                )
                entry = {}
            entry = {"leader": victim, "at_s": killed_at - began, "failover_s": first - killed_at, **entry}
            kills.append(entry)
            display.end(f"{store.label} kill {kill}: {first - killed_at:.3f} s")
            if isinstance(store, PostgresStore):
                display.log(
                    f"crash-restart: postgres kill {kill:2d}: accepting after {entry['accepting_s']:.3f} s "
                    f"(WAL replay {entry['redo_s']} s); first write after {first - killed_at:.3f} s"
                )
            else:
                display.log(
                    f"failover: {store.label} kill {kill:2d}: leader {victim}; first write after "
                    f"{first - killed_at:.3f} s"
                )
                await asyncio.to_thread(store.restart, victim, settings.timeout_s)
        await asyncio.sleep(0.5)
    finally:
        writers.stop.set()
        await asyncio.wait(tasks, timeout=40.0)
        for task in tasks:
            task.cancel()
        try:
            if isinstance(allocator, Readback) and len(kills) == settings.kills:
                held = await allocator.holdings(pool)
                check = check_claims(writers.claims, 0, held)  # the writers release nothing
        finally:
            await allocator.close()
    ended = time.monotonic()
    retries = Counter(allocator.retries)
    retries.subtract(retries_before)
    bin_s = 0.1
    bins = [0] * (int((ended - began) / bin_s) + 1)
    for _, acked in writers.acknowledged:
        bins[min(len(bins) - 1, int((acked - began) / bin_s))] += 1
    times = [entry["failover_s"] for entry in kills]
    result: dict[str, Any] = {
        "kind": CRASH_RESTART if crash_restart else LEADER_FAILOVER,
        "kills": kills,
        "median_s": statistics.median(times),
        "worst_s": max(times),
        "best_s": min(times),
        "acknowledged": len(writers.acknowledged),
        "failed": dict(writers.failed),
        "retries": dict(+retries),
        "timeline": {"bin_s": bin_s, "acks": bins},
    }
    if crash_restart:
        accepting = [entry["accepting_s"] for entry in kills]
        replays = [entry["redo_s"] for entry in kills if entry["redo_s"] is not None]
        result["accepting_median_s"] = statistics.median(accepting)
        result["accepting_worst_s"] = max(accepting)
        result["redo_median_s"] = statistics.median(replays) if replays else None
        result["redo_worst_s"] = max(replays) if replays else None
    if check is not None:
        result["check"] = check
    return result


def merge_failover(previous: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """The new failover section, keeping each store's earlier row that this run did not measure
    (not installed here, or not among --stores), with its own stamp, configuration and description.
    Rows written before rows had stamps of their own take their section's."""
    merged = {
        **current,
        "results": dict(current.get("results", {})),
        "stores": dict(current.get("stores", {})),
        "measured": sorted(current.get("results", {})),  # the rows of this run; the others are kept
    }
    for name, entry in previous.get("results", {}).items():
        if name in merged["results"]:
            continue
        kept = dict(entry)
        kept.setdefault("stamp", previous.get("stamp", {}))
        kept.setdefault("config", previous.get("config", {}))
        kept.setdefault("kind", LEADER_FAILOVER)
        merged["results"][name] = kept
        if name in previous.get("stores", {}):
            merged["stores"][name] = previous["stores"][name]
    return merged


def scenario_failover(settings: Settings, display: Display, previous: dict[str, Any]) -> dict[str, Any]:
    wanted = [name for name in settings.stores if name in FAILOVER_STORES]
    stores, skipped = available_stores(wanted, settings, display)
    for name in settings.stores:
        if name not in FAILOVER_STORES:
            skipped[name] = "same etcd cluster as 'etcd'"
    config = {
        "kills": settings.kills,
        "writers": failover_writers,
        "probe_interval_ms": probe_interval_s * 1000,
        "request_timeout_s": failover_request_timeout_s,
        "crash_settle_s": crash_settle_s,
    }
    results: dict[str, Any] = {}
    descriptions: dict[str, str] = {}
    for store in stores:
        if not isinstance(store, AllotStore | EtcdStore | PostgresStore):
            continue
        started = stamp(settings)
        with running(store):
            descriptions[store.label] = store.describe()
            results[store.label] = asyncio.run(failover_run(store, settings, display))
        entry = results[store.label]
        entry["stamp"] = {**started, "load_average_end": load_average()}
        entry["config"] = config
        display.log(
            f"failover: {store.label} ({entry['kind']}): {len(entry['kills'])} kills, "
            f"median {entry['median_s']:.3f} s, "
            f"worst {entry['worst_s']:.3f} s; writers: {entry['acknowledged']} acknowledged, "
            f"failed {entry['failed']}, retries {entry['retries']}"
        )
        if "check" in entry:
            display.log(f"failover: {store.label}: read back after the kills: {entry['check']}")
    current = {"config": config, "stores": descriptions, "skipped": skipped, "results": results}
    merged = merge_failover(previous, current)
    for name in sorted(set(merged["results"]) - set(results)):
        display.log(
            f"failover: {name}: not measured in this run; its row measured "
            f"{merged['results'][name]['stamp'].get('date', '?')} is kept"
        )
    return merged


# ---- reads (Allot only) -------------------------------------------------------------------------------


async def reads_run(store: AllotStore, settings: Settings, display: Display, run: int) -> list[dict[str, Any]]:
    allocator: AllotAllocator = store.allocator()
    await allocator.open()
    rows: list[dict[str, Any]] = []
    try:
        pool = Pool("reads", CidrCarver().take(16))
        await allocator.create_pool(pool)
        display.begin(f"reads run {run + 1}: {reads_prefill} claims to read", 1.0)
        gate = asyncio.Semaphore(64)

        async def prefill(number: int) -> None:
            async with gate:
                await allocator.claim(pool, f"r-{number}")

        await asyncio.gather(*(prefill(number) for number in range(reads_prefill)))
        display.end("prefilled")
        for op in ("get", "list"):
            for consistency in ("linearizable", "stale"):
                for concurrency in reads_levels:

                    async def call(slot: int, op: str = op, consistency: str = consistency) -> None:
                        if op == "get":
                            number = (slot * 7919 + int(time.perf_counter_ns() // 1000)) % reads_prefill
                            await allocator.get_claim(pool, f"r-{number}", consistency)
                        else:
                            await allocator.list_claims(pool, consistency, reads_list_limit)

                    what = f"reads run {run + 1}/{settings.runs}: {op} {consistency} x{concurrency}"
                    result = await ticking(
                        display,
                        settings.seconds,
                        what,
                        run_calls(call, concurrency=concurrency, seconds=settings.seconds, label="allot", mode=op),
                    )
                    summary = result.summary()
                    display.end(f"{op} {consistency} x{concurrency}: {summary['claims_per_s']:,.0f}/s")
                    display.log(phase_line(what, result).replace("claims/s", "reads/s"))
                    rows.append({"op": op, "consistency": consistency, "concurrency": concurrency, "summary": summary})
    finally:
        await allocator.close()
    return rows


def scenario_reads(settings: Settings, display: Display) -> dict[str, Any]:
    table: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    store = AllotStore()
    for run in range(settings.runs):
        with running(store):
            description = store.describe()
            rows = asyncio.run(reads_run(store, settings, display, run))
        for row in rows:
            table.setdefault((row["op"], row["consistency"], row["concurrency"]), []).append(row["summary"])
    return {
        "stamp": stamp(settings),
        "config": {
            "runs": settings.runs,
            "seconds": settings.seconds,
            "claims": reads_prefill,
            "list_limit": reads_list_limit,
            "levels": list(reads_levels),
        },
        "stores": {"allot": description},
        "skipped": {},
        "rows": [
            {"op": op, "consistency": consistency, "concurrency": concurrency, "runs": runs}
            for (op, consistency, concurrency), runs in table.items()
        ],
    }


# ---- scheduler (Allot only) ---------------------------------------------------------------------------


async def scheduler_run(
    store: AllotStore, settings: Settings, display: Display, run: int
) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """On one fresh cluster: for each node count (ascending, nodes added between), register the
    nodes (untimed), then create pods at each concurrency. Returns the rows and registration times."""
    urls = store.urls()
    admin, tenant = store.tokens()
    rows: list[dict[str, Any]] = []
    registering: dict[int, float] = {}
    async with http_pods.open_session() as session:
        await http_pods.create_pod_pool(session, urls[0], admin)
        registered = 0
        for nodes in settings.nodes:
            display.begin(f"scheduler run {run + 1}/{settings.runs}: registering {nodes - registered:,} nodes", 1.0)
            began = time.perf_counter()
            await http_pods.register_nodes(session, urls, admin, registered, nodes)
            registering[nodes] = time.perf_counter() - began
            display.end(f"{nodes:,} nodes")
            display.log(
                f"scheduler run {run + 1}/{settings.runs}: {nodes:,} nodes registered "
                f"({nodes - registered:,} in {registering[nodes]:.1f} s, untimed)"
            )
            registered = nodes
            await http_pods.warm_up_pods(session, urls, tenant, f"r{run}-n{nodes}")
            for concurrency in settings.levels:
                what = f"scheduler run {run + 1}/{settings.runs}: {nodes:,} nodes x{concurrency}"
                result = await ticking(
                    display,
                    settings.seconds,
                    what,
                    http_pods.create_pods(
                        session,
                        urls,
                        tenant,
                        nodes=nodes,
                        clients=concurrency,
                        seconds=settings.seconds,
                        tag=f"r{run}-n{nodes}-c{concurrency}",
                        on_pod=display.claimed,
                    ),
                )
                display.end(f"{nodes:,} nodes x{concurrency}: {result.pods_per_s:,.0f} pods/s")
                display.log(f"{what}: {result.line()}")
                rows.append({"nodes": nodes, "concurrency": concurrency, "summary": result.summary()})
    return rows, registering


def scenario_scheduler(settings: Settings, display: Display) -> dict[str, Any]:
    table: dict[tuple[int, int], list[dict[str, Any]]] = {}
    registering: dict[int, list[float]] = {}
    store = AllotStore(environment=http_pods.GRACE_ENVIRONMENT)
    description = store.describe()
    for run in range(settings.runs):
        with running(store):
            rows, times = asyncio.run(scheduler_run(store, settings, display, run))
        for row in rows:
            table.setdefault((row["nodes"], row["concurrency"]), []).append(row["summary"])
        for nodes, seconds in times.items():
            registering.setdefault(nodes, []).append(round(seconds, 3))
    peers = {
        name: "no scheduler: it stores keys (etcd) or rows (PostgreSQL) and places no pods, so there is "
        "nothing of its own to measure here"
        for name in settings.stores
        if name != "allot"
    }
    return {
        "stamp": stamp(settings),
        "config": {
            "runs": settings.runs,
            "seconds": settings.seconds,
            "levels": settings.levels,
            "nodes": settings.nodes,
            "node_capacity": http_pods.NODE_CAPACITY,
            "pod_requests": http_pods.POD_REQUESTS,
            "environment": http_pods.GRACE_ENVIRONMENT,
        },
        "stores": {"allot": description},
        "skipped": peers,
        "reference": kube_scheduler_reference,
        "registration": [{"nodes": nodes, "seconds": seconds} for nodes, seconds in registering.items()],
        "rows": [
            {"nodes": nodes, "concurrency": concurrency, "runs": runs} for (nodes, concurrency), runs in table.items()
        ],
    }


# ---- fill curve -----------------------------------------------------------------------------------------


async def fill_run(store: Store, settings: Settings, display: Display, run: int) -> dict[str, Any]:
    """One pool filled from empty to full, then refusals, on one freshly started store."""
    allocator = store.allocator()
    await allocator.open()
    try:
        pool = Pool(f"fill-{run}", CidrCarver().take(settings.fill_prefix))
        await allocator.create_pool(pool)
        await warm_up(allocator, pool, fill_clients, f"w-fill-{run}")
        what = f"fill run {run + 1}/{settings.runs}: {store.label} /{settings.fill_prefix} to full x{fill_clients}"
        result = await ticking(
            display,
            pool.size / 1000,  # the clock's scale only: about 1,000 claims/s
            what,
            run_fill(
                allocator,
                pool,
                concurrency=fill_clients,
                bands=fill_bands,
                refusals=fill_refusals,
                name_prefix=f"fill-{run}",
                deadline_s=fill_deadline_s,
                on_claim=display.claimed,
            ),
        )
    finally:
        await allocator.close()
    summary = result.summary()
    refused = summary["refused"]
    display.end(f"{store.label}: {summary['claims']:,} claims in {summary['elapsed_s']:.0f} s")
    text = (
        f"{what}: {summary['claims']:,} claims in {summary['elapsed_s']:.1f} s "
        f"({summary['claims_per_s']:,.0f}/s); p50 "
        + ", ".join(f"{band['p50_ms']:.1f}" for band in summary["bands"])
        + f" ms by band; refused {refused['count']} p50 {refused['p50_ms']:.1f} ms p99 {refused['p99_ms']:.1f} ms"
    )
    if result.errors:
        text += f"; errors {dict(result.errors)}"
    display.log(text)
    return summary


def per_store_runs(
    stores: list[Store],
    settings: Settings,
    measure: Callable[[Store, int], Coroutine[Any, Any, dict[str, Any]]],
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Each run, every store in turn (rotated), started fresh: one result per store and run,
    and each store's description."""
    table: dict[str, list[dict[str, Any]]] = {}
    descriptions: dict[str, str] = {}
    for run in range(settings.runs):
        for store in rotated(stores, run):
            with running(store):
                descriptions[store.label] = store.describe()
                result = asyncio.run(measure(store, run))
            table.setdefault(store.label, []).append(result)
    return table, descriptions


def scenario_fill(settings: Settings, display: Display) -> dict[str, Any]:
    stores, skipped = available_stores(settings.stores, settings, display)
    table, descriptions = per_store_runs(stores, settings, lambda store, run: fill_run(store, settings, display, run))
    return {
        "stamp": stamp(settings),
        "config": {
            "runs": settings.runs,
            "pool_prefix": settings.fill_prefix,
            "clients": fill_clients,
            "bands": fill_bands,
            "refusals": fill_refusals,
        },
        "stores": descriptions,
        "skipped": skipped,
        "rows": [{"store": name, "runs": runs} for name, runs in table.items()],
    }


# ---- big pools -------------------------------------------------------------------------------------------


async def fill_big(allocator: Allocator, pool: Pool, count: int, display: Display, what: str) -> str:
    """`count` live /64s in the pool, untimed: the allocator's bulk load where it has one, else
    `big_fill_clients` concurrent claims. Returns how it was filled."""
    display.begin(what, float(count))
    done = 0
    deadline = time.monotonic() + big_fill_deadline_s
    for start in range(0, count, big_fill_chunk):
        if time.monotonic() > deadline:
            raise TimeoutError(f"filling the big pool took over {big_fill_deadline_s:.0f} s")
        names = [f"live-{number}" for number in range(start, min(count, start + big_fill_chunk))]
        if isinstance(allocator, BulkLoader):
            await allocator.bulk_claim(pool, names)
        else:

            async def claimer(queue: list[str]) -> None:
                while queue and time.monotonic() < deadline:
                    name = queue.pop()
                    try:
                        await allocator.claim(pool, name)
                    except AllocatorError:
                        queue.append(name)  # claimed again with the same name (idempotent), later
                        await asyncio.sleep(0.05)

            queue = list(reversed(names))
            await asyncio.gather(*(claimer(queue) for _ in range(big_fill_clients)))
        done += len(names)
        display.tick(float(done))
    display.end(f"{count:,} live")
    if isinstance(allocator, BulkLoader):
        return "bulk load (store-specific, outside the allocator's claim path)"
    return f"claims through the allocator, {big_fill_clients} concurrent"


async def big_run(store: Store, settings: Settings, display: Display, run: int) -> dict[str, Any]:
    """Claim and release latency on the empty /32, then with `big_allocations` live /64s."""
    allocator = store.allocator()
    await allocator.open()
    label = f"big run {run + 1}/{settings.runs}: {store.label}"
    try:
        pool = Pool("big", ipaddress.IPv6Network(big_space), claim_length=big_claim_prefix)
        await allocator.create_pool(pool)
        await warm_up(allocator, pool, 4, f"w-big-{run}")
        sample = settings.big_sample
        display.begin(f"{label}: empty pool", 1.0)
        _, empty = await timed_claims(allocator, pool, [f"empty-{n}" for n in range(sample)], big_clients)
        display.end(f"{store.label} empty")
        began = time.perf_counter()
        how = await fill_big(allocator, pool, settings.big_allocations, display, f"{label}: filling (untimed)")
        fill_s = time.perf_counter() - began
        display.begin(f"{label}: {settings.big_allocations:,} live", 1.0)
        _, full = await timed_claims(allocator, pool, [f"full-{n}" for n in range(sample)], big_clients)
        display.end(f"{store.label} full")
    finally:
        await allocator.close()
    result: dict[str, Any] = {
        "live": settings.big_allocations,
        "fill_s": round(fill_s, 1),
        "fill_how": how,
        "empty": empty.summary(),
        "full": full.summary(),
    }
    for part in ("claim", "release"):
        low, high = result["empty"][part]["p50_ms"], result["full"][part]["p50_ms"]
        result[f"{part}_ratio"] = high / low if low > 0 else 0.0
    display.log(
        f"{label}: filled {settings.big_allocations:,} in {fill_s:.0f} s ({how}); claim p50 "
        f"{result['empty']['claim']['p50_ms']:.2f} -> {result['full']['claim']['p50_ms']:.2f} ms "
        f"(x{result['claim_ratio']:.2f}); release p50 {result['empty']['release']['p50_ms']:.2f} -> "
        f"{result['full']['release']['p50_ms']:.2f} ms (x{result['release_ratio']:.2f})"
        + (f"; errors {dict(empty.errors + full.errors)}" if empty.errors or full.errors else "")
    )
    return result


def scenario_big(settings: Settings, display: Display) -> dict[str, Any]:
    wanted = [name for name in settings.stores if name not in BIG_UNSUPPORTED]
    stores, skipped = available_stores(wanted, settings, display)
    for name in settings.stores:
        if name in BIG_UNSUPPORTED:
            skipped[name] = BIG_UNSUPPORTED[name]
    table, descriptions = per_store_runs(stores, settings, lambda store, run: big_run(store, settings, display, run))
    return {
        "stamp": stamp(settings),
        "config": {
            "runs": settings.runs,
            "pool": big_space,
            "claim_prefix": big_claim_prefix,
            "live": settings.big_allocations,
            "sample": settings.big_sample,
            "clients": big_clients,
        },
        "stores": descriptions,
        "skipped": skipped,
        "rows": [{"store": name, "runs": runs} for name, runs in table.items()],
    }


# ---- command line ----------------------------------------------------------------------------------


def phase_count(settings: Settings) -> int:
    count = 0
    for scenario in settings.scenarios:
        if scenario in ("contended", "spread"):
            count += settings.runs * len(settings.stores) * len(settings.levels) * 2
        elif scenario == "failover":
            count += settings.kills * len([name for name in settings.stores if name in FAILOVER_STORES])
        elif scenario == "reads":
            count += settings.runs * (1 + 2 * 2 * len(reads_levels))
        elif scenario == "scheduler":
            count += settings.runs * len(settings.nodes) * (1 + len(settings.levels))
        elif scenario == "fill":
            count += settings.runs * len(settings.stores)
        elif scenario == "big":
            count += settings.runs * len([name for name in settings.stores if name not in BIG_UNSUPPORTED]) * 3
    return count


def parse(argv: list[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", action="append", choices=(*SCENARIOS, "all"), help="repeatable; default all")
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, from {', '.join(STORES)}")
    parser.add_argument("--runs", type=int, help="runs per figure (median and min..max); default 3, --quick 1")
    parser.add_argument("--seconds", type=float, help="length of each timed phase; default 5, --quick 2")
    parser.add_argument("--levels", help="concurrency levels, comma-separated; default 1,8,64,256")
    parser.add_argument(
        "--nodes",
        help="scheduler: registered node counts, comma-separated, ascending (nodes are added between); "
        "default 1000,5000",
    )
    parser.add_argument("--kills", type=int, help="leader kills per store in failover; default 20, --quick 3")
    parser.add_argument(
        "--fill-prefix", type=int, default=fill_prefix_default, help="fill: the pool's prefix length; default 16"
    )
    parser.add_argument(
        "--big-allocations",
        type=int,
        default=big_allocations_default,
        help="big: live /64s in the pool; default 100,000 (the issue's 1,000,000 takes ~10 minutes for Allot)",
    )
    parser.add_argument(
        "--big-sample", type=int, default=big_sample_default, help="big: claims (then releases) timed; default 200"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a look, not a measurement")
    parser.add_argument("--timeout", type=float, default=60.0, help="deadline of each wait in failover (seconds)")
    parser.add_argument("--pg-connections", type=int, default=16, help="PostgreSQL client pool size")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "suite.json")
    parser.add_argument("--report", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--readme", type=Path, default=REPO_ROOT / "README.md")
    parser.add_argument("--charts", type=Path, default=REPO_ROOT / "docs" / "bench")
    parser.add_argument("--no-docs", action="store_true", help="write only --out (no report, README or charts)")
    parser.add_argument("--render-only", action="store_true", help="measure nothing: rewrite the docs from --out")
    args = parser.parse_args(argv)
    scenarios = args.scenario or ["all"]
    chosen = list(SCENARIOS) if "all" in scenarios else list(dict.fromkeys(scenarios))
    stores = [name.strip() for name in args.stores.split(",") if name.strip()]
    unknown = [name for name in stores if name not in STORES]
    if unknown or not stores:
        parser.error(f"unknown stores {unknown}; choose from {', '.join(STORES)}")
    levels = [int(level) for level in args.levels.split(",")] if args.levels else list(levels_default)
    if any(level < 1 for level in levels):
        parser.error("concurrency levels must be positive")
    nodes = [int(count) for count in args.nodes.split(",")] if args.nodes else list(scheduler_nodes_default)
    if any(count < 1 for count in nodes) or nodes != sorted(set(nodes)):
        parser.error("--nodes must be positive and ascending (nodes are added between the counts)")
    if not 8 <= args.fill_prefix <= 30:
        parser.error("--fill-prefix must be between 8 and 30")
    if args.big_allocations < 1 or args.big_sample < 1:
        parser.error("--big-allocations and --big-sample must be positive")
    raw = sys.argv[1:] if argv is None else argv
    return Settings(
        scenarios=chosen,
        stores=stores,
        runs=args.runs or (1 if args.quick else 3),
        seconds=args.seconds or (2.0 if args.quick else 5.0),
        levels=levels,
        nodes=nodes,
        kills=args.kills or (3 if args.quick else 20),
        timeout_s=args.timeout,
        pg_connections=args.pg_connections,
        out_json=args.out,
        report_md=None if args.no_docs else args.report,
        readme=None if args.no_docs else args.readme,
        charts_dir=None if args.no_docs else args.charts,
        command=" ".join(["python -m bench", *raw]),
        render_only=args.render_only,
        fill_prefix=args.fill_prefix,
        big_allocations=args.big_allocations,
        big_sample=args.big_sample,
    )


def load_results(path: Path) -> dict[str, Any]:
    try:
        loaded: dict[str, Any] = json.loads(path.read_text())
        return loaded
    except (OSError, ValueError):
        return {}


def main(argv: list[str] | None = None, *, quiet: bool = False) -> dict[str, Any]:
    """Run the chosen scenarios, merge them into the results file, write the docs. Returns the results."""
    settings = parse(argv)
    results = load_results(settings.out_json)
    if settings.render_only:
        for line in report.write_all(
            results, report_md=settings.report_md, readme=settings.readme, charts_dir=settings.charts_dir
        ):
            print(line)
        return results
    with Display(phase_count(settings), quiet=quiet) as display:
        display.log(f"# {machine_line()}; {settings.command}")
        for scenario in settings.scenarios:
            begun = stamp(settings)  # date, load and sync time as the scenario starts
            if scenario in ("contended", "spread"):
                results[scenario] = scenario_claims(scenario, settings, display)
            elif scenario == "failover":
                results[scenario] = scenario_failover(settings, display, results.get(scenario, {}))
            elif scenario == "reads":
                if "allot" not in settings.stores:
                    display.log("skipping reads: it measures Allot only, and allot is not among --stores")
                    continue
                results[scenario] = scenario_reads(settings, display)
            elif scenario == "scheduler":
                if "allot" not in settings.stores:
                    display.log("skipping scheduler: it measures Allot only, and allot is not among --stores")
                    continue
                results[scenario] = scenario_scheduler(settings, display)
            elif scenario == "fill":
                results[scenario] = scenario_fill(settings, display)
            elif scenario == "big":
                results[scenario] = scenario_big(settings, display)
            results[scenario]["stamp"] = {**begun, "load_average_end": load_average()}
            settings.out_json.parent.mkdir(parents=True, exist_ok=True)
            settings.out_json.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        written = report.write_all(
            results, report_md=settings.report_md, readme=settings.readme, charts_dir=settings.charts_dir
        )
        for line in written:
            display.log(line)
    print(report.render_tables(results))
    return results
