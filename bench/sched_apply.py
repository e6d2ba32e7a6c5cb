"""In-process benchmark of the scheduler's apply cost, on the in-memory store.

    python -m bench.sched_apply                    # 1,000 and 5,000 nodes
    python -m bench.sched_apply --nodes 200 --pods 50

For each cluster size it registers the nodes, then measures, per pod.create applied the way
the server applies it (decode, apply, write the outcome; a request id on every command):
* verified placement: the command carries the proposer's plan (`plan_pod` on the state just
  before), so apply checks one node and binds; measured right after a plan and a fallback
  search (cold caches), and again back to back as a log entry's batch is applied, with the
  part of it spent in `scheduler.place` (quota check, fit, bind) beside the whole command
  (decode, pod validation, dedup record, pod object, event, meta, store writes);
* fallback search: no plan, so apply scores every node;
* plan_pod alone: what the proposer spends choosing the node.
Medians over the pods, microseconds, of wall time and of this process's CPU time (the CPU
column is steadier when other work shares the cores). Prints the machine and the state
machine's build (compiled by `allot compile`, or the sources); asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator
from typing import Any

from node.accelerate import build_state
from node.memstore import MemoryStore
from statemachine import Envelope, Ok, Principal, apply, encode_envelope, scheduler
from statemachine.scheduler import plan_pod

ADMIN = Principal("bench", "", "", "admin")
TENANT = Principal("bench", "acme", "web", "member")
BASE_TS_MS = 1_767_225_600_000
POD_SPEC = {"requests": {"cpuMillis": 100, "memoryBytes": 128 << 20}}


class Driver:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.index = 0

    def run(
        self, principal: Principal, command_type: str, body: dict[str, Any], rid: str | None = None
    ) -> tuple[float, float]:
        """Apply one command; return the (wall, CPU) seconds spent in decode + apply + store writes."""
        self.index += 1
        data = encode_envelope(Envelope(command_type, body, principal, rid, BASE_TS_MS + self.index))
        start, start_cpu = time.perf_counter(), time.process_time()
        outcome = apply(self.store, data, self.index)
        self.store.apply_writes(outcome.writes)
        elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if not isinstance(outcome.result, Ok):
            raise SystemExit(f"{command_type} refused: {outcome.result}")
        return elapsed, elapsed_cpu


def build(node_count: int) -> Driver:
    driver = Driver()
    driver.run(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}})
    for number in range(node_count):
        capacity = {"cpuMillis": 64_000, "memoryBytes": 256 << 30, "pods": 110}
        body = {
            "name": f"node-{number:05d}",
            "labels": {"zone": f"z{number % 3}"},
            "spec": {"capacity": capacity, "podPool": "pods"},
        }
        driver.run(ADMIN, "node.register", body)
    return driver


def _medians(samples: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(wall for wall, _ in samples), statistics.median(cpu for _, cpu in samples)


@contextlib.contextmanager
def timing_place(samples: list[tuple[float, float]]) -> Iterator[None]:
    """While inside, every `scheduler.place` call appends its (wall, CPU) seconds to samples.
    pod.create calls it through the module attribute, so wrapping that attribute sees every
    placement."""
    original = scheduler.place

    def timed(*args: Any) -> bool:
        start, start_cpu = time.perf_counter(), time.process_time()
        try:
            return original(*args)
        finally:
            samples.append((time.perf_counter() - start, time.process_time() - start_cpu))

    scheduler.place = timed  # type: ignore[assignment]
    try:
        yield
    finally:
        scheduler.place = original


def measure(node_count: int, pods: int) -> dict[str, tuple[float, float] | None]:
    """Per scenario, the median (wall, CPU) seconds per pod; None for the split of
    `scheduler.place` under the compiled build, whose modules call each other directly, past
    any wrapper on the module attribute."""
    driver = build(node_count)
    verified: list[tuple[float, float]] = []
    planning: list[tuple[float, float]] = []
    fallback: list[tuple[float, float]] = []
    for number in range(pods):
        start, start_cpu = time.perf_counter(), time.process_time()
        chosen = plan_pod(driver.store, POD_SPEC, TENANT)
        planning.append((time.perf_counter() - start, time.process_time() - start_cpu))
        body = {"name": f"v{number}", "spec": POD_SPEC, "plan": {"nodeName": chosen}}
        verified.append(driver.run(TENANT, "pod.create", body, rid=f"v{number}"))
        fallback.append(driver.run(TENANT, "pod.create", {"name": f"f{number}", "spec": POD_SPEC}, rid=f"f{number}"))
    # Back to back: each pod planned onto the next node in turn (as many proposers' plans
    # spread pods), every one a verified placement, applied one after the other.
    back_to_back: list[tuple[float, float]] = []
    placing: list[tuple[float, float]] = []
    with timing_place(placing):
        for number in range(pods):
            planned = f"node-{number % node_count:05d}"
            body = {"name": f"b{number}", "spec": POD_SPEC, "plan": {"nodeName": planned}}
            back_to_back.append(driver.run(TENANT, "pod.create", body, rid=f"b{number}"))
    results = {
        "verified placement (plan in the command)": _medians(verified),
        "verified placement, back to back": _medians(back_to_back),
        "  of which scheduler.place (fit and bind)": _medians(placing) if placing else None,
        "fallback search (no plan)": _medians(fallback),
        "plan_pod at the proposer": _medians(planning),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--pods", type=int, default=200, help="pods measured per cluster size")
    args = parser.parse_args(argv)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# {python} on {platform.machine()}, {os.cpu_count()} cores; state machine: {build_state().reason}")
    for node_count in args.nodes:
        for what, medians in measure(node_count, args.pods).items():
            if medians is None:
                print(f"{node_count:>6} nodes  {what:<42} not measured: compiled build (ALLOT_PURE_PYTHON=1 to split)")
                continue
            wall, cpu = medians
            print(f"{node_count:>6} nodes  {what:<42} {wall * 1e6:>10.1f} us wall {cpu * 1e6:>10.1f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
