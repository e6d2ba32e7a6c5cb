"""The one load generator of the benchmark suite, and the allocator interface every store answers.

Every store (Allot, etcd, PostgreSQL) is driven through an `Allocator`: `create_pool`, then
`claim(pool, name) -> cidr` and `release(pool, name, cidr)`. The generator runs `concurrency`
asyncio workers in this one process for a fixed time; each worker claims (and, for churn,
releases at once) one address after another, and records each call's latency. So the only
thing that differs between stores is the store and its allocator.

Allocators retry what a careful client retries (a lost connection, a busy or leaderless
member, a compare that lost a race) and count each retry in `Allocator.retries` by reason; a
call that still fails raises `AllocatorError` and the generator counts it as an error. A claim
refused because the pool has no free block left raises `PoolExhausted` (an `AllocatorError`
whose reason is "exhausted"): a definite answer of the store, not a failure, which the fill
curve (`run_fill`) times as the refusal latency.

A pool hands out blocks of `Pool.claim_prefix` (single addresses by default; /64s from an IPv6
/32 in the big-pool scenario); `BulkLoader` is the optional fast path some peers offer for
filling a pool outside the timed part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

IPv4Network = ipaddress.IPv4Network
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Pool:
    """One pool of addresses: its name, its CIDR, the tenant that owns it (None: the default) and
    the prefix length of each claim (None: single addresses, /32 or /128)."""

    name: str
    cidr: IPNetwork
    tenant: tuple[str, str] | None = None  # (org, project)
    claim_length: int | None = None

    @property
    def claim_prefix(self) -> int:
        return self.cidr.max_prefixlen if self.claim_length is None else self.claim_length

    @property
    def step(self) -> int:
        """Addresses per claim (1 for single addresses, 2**64 for an IPv6 /64)."""
        return 1 << (self.cidr.max_prefixlen - self.claim_prefix)

    @property
    def first(self) -> int:
        return int(self.cidr.network_address)

    @property
    def size(self) -> int:
        """How many claims the pool holds when full."""
        return int(self.cidr.num_addresses) // self.step

    def block(self, index: int) -> int:
        """The first address (as an integer) of the pool's `index`-th claim-sized block."""
        return self.first + index * self.step

    def address(self, value: int) -> str:
        """An integer address of this pool's family as text ("10.0.0.7", "2001:db8:0:1::")."""
        if self.cidr.version == 4:
            return str(ipaddress.IPv4Address(value))
        return str(ipaddress.IPv6Address(value))

    def cidr_of(self, value: int) -> str:
        """The claim starting at integer address `value`, as the CIDR a claim answers."""
        return f"{self.address(value)}/{self.claim_prefix}"


class AllocatorError(Exception):
    """A claim or release that failed after the allocator's own retries."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class PoolExhausted(AllocatorError):
    """The store's definite answer that the pool has no free block for the claim: nothing changed."""

    def __init__(self, message: str) -> None:
        super().__init__("exhausted", message)


class Allocator(Protocol):
    """What the load generator needs from a store's client."""

    label: str
    retries: Counter[str]

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_pool(self, pool: Pool) -> None: ...

    async def claim(self, pool: Pool, name: str) -> str:
        """Allocate one block of `pool.claim_prefix` from the pool for `name`; returns it as a CIDR
        ("10.0.0.7/32"). Raises `PoolExhausted` when the pool has no free block."""
        ...

    async def release(self, pool: Pool, name: str, cidr: str) -> None: ...


@runtime_checkable
class BulkLoader(Protocol):
    """An allocator with a store-specific fast way to fill a pool (the big-pool scenario's untimed
    fill): the same allocations the allocator would make, written many per request."""

    async def bulk_claim(self, pool: Pool, names: Sequence[str]) -> None:
        """Claim one block for each name, lowest free blocks first, as claim() would place them."""
        ...


@runtime_checkable
class Readback(Protocol):
    """An allocator that can read back what its store holds in a pool (the failover scenario's
    check that no acknowledged claim was lost or given twice)."""

    async def holdings(self, pool: Pool) -> list[tuple[str, str]]:
        """Every allocation held in `pool`: (claim name, CIDR)."""
        ...


class CidrCarver:
    """Hands out distinct, aligned IPv4 blocks from 10.0.0.0/8, one after another."""

    def __init__(self, space: str = "10.0.0.0/8") -> None:
        self.space = ipaddress.IPv4Network(space)
        self.offset = 0

    def take(self, prefix: int) -> IPv4Network:
        size = 1 << (32 - prefix)
        self.offset = (self.offset + size - 1) // size * size
        if self.offset + size > self.space.num_addresses:
            raise RuntimeError(f"{self.space} has no room left for another /{prefix}")
        block = ipaddress.IPv4Network((int(self.space.network_address) + self.offset, prefix))
        self.offset += size
        return block


@dataclass
class FillResult:
    """A pool filled from empty to full by `concurrency` clients, then claims refused while full."""

    store: str
    concurrency: int
    size: int
    bands: int
    elapsed_s: float = 0.0
    claims: int = 0
    band_latencies: list[list[float]] = field(default_factory=list)
    refusal_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    def band_summary(self, band: int, values: Sequence[float]) -> dict[str, Any]:
        bounds = {"from_pct": 100 * band // self.bands, "to_pct": 100 * (band + 1) // self.bands}
        return {**bounds, "claims": len(values), **latency_summary(values)}

    def summary(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "claims": self.claims,
            "elapsed_s": round(self.elapsed_s, 3),
            "claims_per_s": self.claims / self.elapsed_s if self.elapsed_s > 0 else 0.0,
            "bands": [self.band_summary(band, values) for band, values in enumerate(self.band_latencies)],
            "refused": {"count": len(self.refusal_latencies), **latency_summary(self.refusal_latencies)},
            "errors": dict(self.errors),
            "retries": dict(self.retries),
        }


async def run_fill(
    allocator: Allocator,
    pool: Pool,
    *,
    concurrency: int,
    bands: int,
    refusals: int,
    name_prefix: str,
    deadline_s: float,
    on_claim: Callable[[], None] | None = None,
) -> FillResult:
    """Fill `pool` from empty to full with `concurrency` clients, each claim's latency filed under the
    utilisation band (out of `bands`) the pool was in when it was sent (claims acknowledged before it),
    until the store refuses a claim as exhausted; then `refusals` claims of the full pool, each
    expected to be refused (`PoolExhausted`), timed. Stops at `deadline_s` whatever happened."""
    result = FillResult(allocator.label, concurrency, pool.size, bands, band_latencies=[[] for _ in range(bands)])
    retries_before = Counter(allocator.retries)
    deadline = time.perf_counter() + deadline_s
    full = asyncio.Event()
    sent = 0

    async def filler(slot: int) -> None:
        number = 0
        while not full.is_set() and time.perf_counter() < deadline:
            number += 1
            band = min(bands - 1, result.claims * bands // pool.size)
            began = time.perf_counter()
            try:
                await allocator.claim(pool, f"{name_prefix}-{slot}-{number}")
            except PoolExhausted:
                full.set()
                return
            except AllocatorError as exc:
                result.errors[f"claim {exc.reason}"] += 1
                await asyncio.sleep(0.01)
                continue
            result.band_latencies[band].append(time.perf_counter() - began)
            result.claims += 1
            if on_claim is not None:
                on_claim()

    async def refuser(slot: int) -> None:
        nonlocal sent
        while sent < refusals and time.perf_counter() < deadline:
            sent += 1
            began = time.perf_counter()
            try:
                await allocator.claim(pool, f"{name_prefix}-full-{slot}-{sent}")
            except PoolExhausted:
                result.refusal_latencies.append(time.perf_counter() - began)
                continue
            except AllocatorError as exc:
                result.errors[f"refusal {exc.reason}"] += 1
                continue
            result.errors["claimed from a full pool"] += 1

    began = time.perf_counter()
    await asyncio.gather(*(filler(slot) for slot in range(concurrency)))
    result.elapsed_s = time.perf_counter() - began
    if full.is_set():
        await asyncio.gather(*(refuser(slot) for slot in range(concurrency)))
    else:
        result.errors["deadline before the pool was full"] += 1
    result.retries = Counter(allocator.retries)
    result.retries.subtract(retries_before)
    result.retries = +result.retries
    return result


async def timed_claims(
    allocator: Allocator, pool: Pool, names: Sequence[str], concurrency: int
) -> tuple[list[tuple[str, str]], PhaseResult]:
    """Claim one block for each name (`concurrency` at a time), then release them all, timing each
    call: the (name, cidr) claimed and a PhaseResult with claim and release latencies."""
    result = PhaseResult(allocator.label, "churn", concurrency)
    retries_before = Counter(allocator.retries)
    claimed: list[tuple[str, str]] = []
    queue = list(reversed(names))

    async def claimer() -> None:
        while queue:
            name = queue.pop()
            began = time.perf_counter()
            try:
                cidr = await allocator.claim(pool, name)
            except AllocatorError as exc:
                result.errors[f"claim {exc.reason}"] += 1
                continue
            result.claim_latencies.append(time.perf_counter() - began)
            result.claims += 1
            claimed.append((name, cidr))

    began = time.perf_counter()
    await asyncio.gather(*(claimer() for _ in range(concurrency)))
    releasing = list(claimed)

    async def releaser() -> None:
        while releasing:
            name, cidr = releasing.pop()
            await timed_release(allocator, pool, name, cidr, result)

    await asyncio.gather(*(releaser() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - began
    result.retries = Counter(allocator.retries)
    result.retries.subtract(retries_before)
    result.retries = +result.retries
    return claimed, result


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(fraction * len(ordered) + 0.5) - 1))]


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 / mean in milliseconds."""
    return {
        "p50_ms": percentile(values, 0.50) * 1e3,
        "p95_ms": percentile(values, 0.95) * 1e3,
        "p99_ms": percentile(values, 0.99) * 1e3,
        "mean_ms": statistics.fmean(values) * 1e3 if values else 0.0,
    }


@dataclass
class PhaseResult:
    """One timed phase of one store: what was done, how fast, what went wrong."""

    store: str
    mode: str  # "claim" or "churn"
    concurrency: int
    elapsed_s: float = 0.0
    claims: int = 0
    releases: int = 0
    claim_latencies: list[float] = field(default_factory=list)
    release_latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        rate = self.claims / self.elapsed_s if self.elapsed_s > 0 else 0.0
        result: dict[str, Any] = {
            "claims": self.claims,
            "releases": self.releases,
            "elapsed_s": round(self.elapsed_s, 3),
            "claims_per_s": rate,
            "claim": latency_summary(self.claim_latencies),
            "errors": dict(self.errors),
            "retries": dict(self.retries),
        }
        if self.mode == "churn":
            result["release"] = latency_summary(self.release_latencies)
        return result


async def timed_release(allocator: Allocator, pool: Pool, name: str, cidr: str, result: PhaseResult) -> None:
    """Release one claim, filing its latency, or its failure under `release <reason>`."""
    began = time.perf_counter()
    try:
        await allocator.release(pool, name, cidr)
    except AllocatorError as exc:
        result.errors[f"release {exc.reason}"] += 1
        return
    result.release_latencies.append(time.perf_counter() - began)
    result.releases += 1


async def run_phase(
    allocator: Allocator,
    pools: Sequence[Pool],
    *,
    concurrency: int,
    seconds: float,
    churn: bool,
    max_claims: int,
    name_prefix: str,
    seed: int = 1,
    on_claim: Callable[[], None] | None = None,
) -> PhaseResult:
    """`concurrency` workers claim (and release, with `churn`) until `seconds` pass or
    `max_claims` claims were started. Pools are picked uniformly at random when there are several."""
    result = PhaseResult(allocator.label, "churn" if churn else "claim", concurrency)
    rng = random.Random(seed)
    retries_before = Counter(allocator.retries)
    started_claims = 0
    deadline = time.perf_counter() + seconds

    async def worker(slot: int) -> None:
        nonlocal started_claims
        number = 0
        while time.perf_counter() < deadline and started_claims < max_claims:
            started_claims += 1
            number += 1
            pool = pools[0] if len(pools) == 1 else pools[rng.randrange(len(pools))]
            name = f"{name_prefix}-{slot}-{number}"
            began = time.perf_counter()
            try:
                cidr = await allocator.claim(pool, name)
            except AllocatorError as exc:
                result.errors[f"claim {exc.reason}"] += 1
                await asyncio.sleep(0.01)
                continue
            result.claim_latencies.append(time.perf_counter() - began)
            result.claims += 1
            if on_claim is not None:
                on_claim()
            if churn:
                await timed_release(allocator, pool, name, cidr, result)

    began = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    result.elapsed_s = time.perf_counter() - began
    result.retries = Counter(allocator.retries)
    result.retries.subtract(retries_before)
    result.retries = +result.retries  # drop zero counts
    return result


async def warm_up(allocator: Allocator, pool: Pool, count: int, name_prefix: str) -> None:
    """A few untimed claims and releases, so connections are open before the timing starts."""

    async def one(number: int) -> None:
        name = f"{name_prefix}-{number}"
        cidr = await allocator.claim(pool, name)
        await allocator.release(pool, name, cidr)

    await asyncio.gather(*(one(number) for number in range(count)))


async def run_calls(
    call: Callable[[int], Awaitable[None]], *, concurrency: int, seconds: float, label: str, mode: str
) -> PhaseResult:
    """`concurrency` workers each repeat `call(slot)` until `seconds` pass (reads: get, list)."""
    result = PhaseResult(label, mode, concurrency)
    deadline = time.perf_counter() + seconds

    async def worker(slot: int) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            try:
                await call(slot)
            except AllocatorError as exc:
                result.errors[exc.reason] += 1
                continue
            result.claim_latencies.append(time.perf_counter() - began)
            result.claims += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    result.elapsed_s = time.perf_counter() - began
    return result
