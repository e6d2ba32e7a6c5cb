"""In-process benchmarks of the IPAM state machine on the in-memory store.

    python -m bench.ipam_apply                       # all three scenarios
    python -m bench.ipam_apply --scenario throughput # or fill, big
    python -m bench.ipam_apply --big-claims 100000   # a smaller "big pool" run

Scenarios (issue #2's numbers):
* throughput: single-address claims from one /16 pool, applied one envelope at a time the way
  the server applies them (decode, apply, write the outcome to the store), with and without a
  request id (the server always sends one).
* fill: a /16 pool filled with /32 claims; claim cost near 1 % and near 99 % utilisation.
* big: /64 claims from 2001:db8::/32 with N live allocations (1,000,000 by default): cost of a
  claim and of its release, against the same on an empty pool.

Every figure is the median of `--repeats` runs; the spread (min..max) is printed beside it.
It prints the machine it ran on. It asserts nothing: numbers are for people to read.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import time

from node.memstore import MemoryStore
from statemachine import Envelope, Principal, apply, encode_envelope

ADMIN = Principal("bench", "", "", "admin")
TENANT = Principal("bench", "acme", "web", "member")
BASE_TS_MS = 1_767_225_600_000


class Driver:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.index = 0
        self.apply_s = 0.0  # time inside statemachine.apply alone, without the store's writes

    def envelope(self, principal: Principal, command_type: str, body: dict[str, object], rid: str | None) -> bytes:
        return encode_envelope(Envelope(command_type, body, principal, rid, BASE_TS_MS + self.index))

    def apply(self, data: bytes) -> None:
        self.index += 1
        start = time.perf_counter()
        outcome = apply(self.store, data, self.index)
        self.apply_s += time.perf_counter() - start
        if not outcome.ok:
            raise SystemExit(f"benchmark command refused: {outcome.result}")
        self.store.apply_writes(outcome.writes)

    def run(self, principal: Principal, command_type: str, body: dict[str, object], rid: str | None = None) -> None:
        self.apply(self.envelope(principal, command_type, body, rid))


def timed_claims(driver: Driver, pool: str, names: list[str], with_rid: bool, prefix: int | None = None) -> float:
    """Seconds per claim, envelopes encoded beforehand (encoding is the proposer's work)."""
    spec: dict[str, object] = {"poolRef": pool}
    if prefix is not None:
        spec["prefixLength"] = prefix
    envelopes = [
        driver.envelope(TENANT, "claim.create", {"name": name, "spec": spec}, f"rid-{name}" if with_rid else None)
        for name in names
    ]
    start = time.perf_counter()
    for data in envelopes:
        driver.apply(data)
    return (time.perf_counter() - start) / len(names)


def timed_releases(driver: Driver, names: list[str]) -> float:
    envelopes = [driver.envelope(TENANT, "claim.delete", {"name": name}, None) for name in names]
    start = time.perf_counter()
    for data in envelopes:
        driver.apply(data)
    return (time.perf_counter() - start) / len(names)


def median_spread(values: list[float]) -> str:
    return f"median {statistics.median(values):,.0f} (min {min(values):,.0f} .. max {max(values):,.0f})"


def scenario_throughput(repeats: int, claims: int) -> None:
    for with_rid in (False, True):
        with_store: list[float] = []
        apply_alone: list[float] = []
        for _ in range(repeats):
            gc.collect()
            driver = Driver()
            driver.run(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/16"}})
            driver.apply_s = 0.0
            with_store.append(1 / timed_claims(driver, "p", [f"c{i}" for i in range(claims)], with_rid))
            apply_alone.append(claims / driver.apply_s)
        label = "with request id" if with_rid else "no request id"
        report(f"/32 claims from one /16, {label}, apply + store writes", f"{median_spread(with_store)} claims/s")
        report(f"/32 claims from one /16, {label}, apply alone", f"{median_spread(apply_alone)} claims/s")


def report(what: str, value: str) -> None:
    print(f"{what:<62} {value}")


def scenario_fill(repeats: int, window: int) -> None:
    size = 1 << 16

    def one_run() -> tuple[float, float]:
        driver = Driver()
        driver.run(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/16"}})
        low_mark, high_mark = size // 100, size * 99 // 100
        counter = 0

        def names(count: int) -> list[str]:
            nonlocal counter
            counter += count
            return [f"c{i}" for i in range(counter - count, counter)]

        timed_claims(driver, "p", names(low_mark - window // 2), False)
        at_low = timed_claims(driver, "p", names(window), False)
        timed_claims(driver, "p", names(high_mark - counter - window // 2), False)
        at_high = timed_claims(driver, "p", names(window), False)
        return at_low, at_high

    runs = []
    for _ in range(repeats):
        gc.collect()
        runs.append(one_run())
    lows = [low * 1e6 for low, _ in runs]
    highs = [high * 1e6 for _, high in runs]
    ratios = [high / low for low, high in runs]
    report("fill a /16 with /32s: claim cost at 1 %", f"median {statistics.median(lows):.1f} us")
    report("fill a /16 with /32s: claim cost at 99 %", f"median {statistics.median(highs):.1f} us")
    spread = f"(min {min(ratios):.2f} .. max {max(ratios):.2f})"
    report("fill a /16 with /32s: ratio 99 % / 1 %", f"median {statistics.median(ratios):.2f} {spread}")


def scenario_big(live: int, sample: int) -> None:
    driver = Driver()
    spec = {"cidr": "2001:db8::/32", "allocation": {"defaultPrefixLength": 64, "maxPrefixLength": 64}}
    driver.run(ADMIN, "pool.create", {"name": "v6", "spec": spec})

    def claim_and_release(tag: str) -> tuple[float, float]:
        names = [f"{tag}-{i}" for i in range(sample)]
        claim_s = timed_claims(driver, "v6", names, True)
        release_s = timed_releases(driver, names)
        return claim_s * 1e6, release_s * 1e6

    empty = [claim_and_release(f"empty{run}") for run in range(3)]
    start = time.perf_counter()
    chunk = 10_000
    for offset in range(0, live, chunk):
        timed_claims(driver, "v6", [f"live{i}" for i in range(offset, min(live, offset + chunk))], False)
    fill_s = time.perf_counter() - start
    gc.collect()
    full = [claim_and_release(f"full{run}") for run in range(3)]
    empty_claim = statistics.median(c for c, _ in empty)
    empty_release = statistics.median(r for _, r in empty)
    full_claim = statistics.median(c for c, _ in full)
    full_release = statistics.median(r for _, r in full)
    report(f"big pool: filled with {live:,} live /64 claims", f"{fill_s:.0f} s; store {len(driver.store):,} records")
    for what, empty_us, full_us in (("claim", empty_claim, full_claim), ("release", empty_release, full_release)):
        costs = f"empty {empty_us:.1f} us, {live:,} live {full_us:.1f} us"
        report(f"big pool: /64 {what} cost", f"{costs}, ratio {full_us / empty_us:.2f}")


def machine_line() -> str:
    memory = ""
    if os.path.exists("/proc/meminfo"):
        with open("/proc/meminfo") as meminfo:
            memory = f", {int(meminfo.readline().split()[1]) // (1024 * 1024)} GiB"
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {sys.version.split()[0]}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("throughput", "fill", "big", "all"), default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--claims", type=int, default=20_000, help="claims per throughput run")
    parser.add_argument("--window", type=int, default=500, help="claims timed at each fill mark")
    parser.add_argument("--big-claims", type=int, default=1_000_000, help="live allocations in the big pool")
    parser.add_argument("--big-sample", type=int, default=2_000, help="claims+releases timed in the big pool")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.ipam_apply", *(sys.argv[1:] if argv is None else argv)])
    print(f"# {machine_line()}; {command}")
    if args.scenario in ("throughput", "all"):
        scenario_throughput(args.repeats, args.claims)
    if args.scenario in ("fill", "all"):
        scenario_fill(args.repeats, args.window)
    if args.scenario in ("big", "all"):
        scenario_big(args.big_claims, args.big_sample)


if __name__ == "__main__":
    main()
