"""In-process benchmark of the scheduler's apply cost, on the in-memory store.

    python -m bench.sched_apply                    # 1,000 and 5,000 nodes
    python -m bench.sched_apply --nodes 200 --pods 50

For each cluster size it registers the nodes, then measures, per pod.create applied the way
the server applies it (decode, apply, write the outcome; a request id on every command):
* verified placement: the command carries the proposer's plan (`plan_pod` on the state just
  before), so apply checks one node and binds; measured right after a plan and a fallback
  search (cold caches), and again back to back as a log entry's batch is applied, with the
  part of it spent in `scheduler.place` (quota check, fit, bind) beside the whole command
  (decode, pod validation, dedup record, pod object, event, meta, store writes), the state
  machine alone (without the in-memory store's writes), and the whole command as a member
  applies it: `LmdbStore.apply_entry`, `entry_pods` envelopes to a log entry, in one LMDB
  write transaction (the member's store settings: no sync per commit);
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
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from node.accelerate import build_state
from node.memstore import MemoryStore
from node.store import LmdbStore
from statemachine import Envelope, Ok, Principal, apply, encode_envelope, scheduler
from statemachine.scheduler import plan_pod

ADMIN = Principal("bench", "", "", "admin")
TENANT = Principal("bench", "acme", "web", "member")
BASE_TS_MS = 1_767_225_600_000
POD_SPEC = {"requests": {"cpuMillis": 100, "memoryBytes": 128 << 20}}
NODE_CAPACITY = {"cpuMillis": 64_000, "memoryBytes": 256 << 30, "pods": 110}


class Driver:
    def __init__(self) -> None:
        self.store = MemoryStore()
        self.index = 0

        self.apply_alone: list[tuple[float, float]] = []  # of every run: decode + apply, no writes

    def run(
        self, principal: Principal, command_type: str, body: dict[str, Any], rid: str | None = None
    ) -> tuple[float, float]:
        """Apply one command; return the (wall, CPU) seconds spent in decode + apply + store writes."""
        self.index += 1
        data = encode_envelope(Envelope(command_type, body, principal, rid, BASE_TS_MS + self.index))
        start, start_cpu = time.perf_counter(), time.process_time()
        outcome = apply(self.store, data, self.index)
        applied, applied_cpu = time.perf_counter(), time.process_time()
        self.store.apply_writes(outcome.writes)
        end, end_cpu = time.perf_counter(), time.process_time()
        if not isinstance(outcome.result, Ok):
            raise SystemExit(f"{command_type} refused: {outcome.result}")
        self.apply_alone.append((applied - start, applied_cpu - start_cpu))
        return end - start, end_cpu - start_cpu


def _node_body(number: int) -> dict[str, Any]:
    return {
        "name": f"node-{number:05d}",
        "labels": {"zone": f"z{number % 3}"},
        "spec": {"capacity": NODE_CAPACITY, "podPool": "pods"},
    }


def _planned_pod_body(number: int, node_count: int) -> dict[str, Any]:
    """A pod planned onto the next node in turn, as many proposers' plans spread pods."""
    return {"name": f"b{number}", "spec": POD_SPEC, "plan": {"nodeName": f"node-{number % node_count:05d}"}}


def build(node_count: int) -> Driver:
    driver = Driver()
    driver.run(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}})
    for number in range(node_count):
        driver.run(ADMIN, "node.register", _node_body(number))
    return driver


def measure_lmdb(node_count: int, pods: int, entry_pods: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds per pod of verified placements applied back to back by
    `LmdbStore.apply_entry`, `entry_pods` to an entry (the entry's time divided by its pods:
    the write transaction, its commit and `applied_index` included), in a temporary store."""
    timestamps = iter(range(BASE_TS_MS + 1, BASE_TS_MS + 1 + 1 + node_count + pods))

    def envelope(principal: Principal, command_type: str, body: dict[str, Any], rid: str | None = None) -> bytes:
        return encode_envelope(Envelope(command_type, body, principal, rid, next(timestamps)))

    with tempfile.TemporaryDirectory(prefix="allot-sched-bench-") as directory:
        store = LmdbStore(directory, sync=False)  # as a member opens it
        try:
            index = 1
            store.apply_entry(index, [envelope(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}})])
            registrations = [envelope(ADMIN, "node.register", _node_body(number)) for number in range(node_count)]
            for first in range(0, node_count, 100):
                index += 1
                store.apply_entry(index, registrations[first : first + 100])
            creations = [
                envelope(TENANT, "pod.create", _planned_pod_body(number, node_count), rid=f"b{number}")
                for number in range(pods)
            ]
            per_pod: list[tuple[float, float]] = []
            for first in range(0, pods, entry_pods):
                entry = creations[first : first + entry_pods]
                index += 1
                start, start_cpu = time.perf_counter(), time.process_time()
                outcomes = store.apply_entry(index, entry)
                elapsed, elapsed_cpu = time.perf_counter() - start, time.process_time() - start_cpu
                refused = [outcome.result for outcome in outcomes or () if not isinstance(outcome.result, Ok)]
                if outcomes is None or refused:
                    raise SystemExit(f"pod.create refused in the LMDB store: {refused or 'entry not applied'}")
                per_pod.append((elapsed / len(entry), elapsed_cpu / len(entry)))
        finally:
            store.close()
    return _medians(per_pod)


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


def measure(node_count: int, pods: int, entry_pods: int) -> dict[str, tuple[float, float] | None]:
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
    # Back to back: every pod a verified placement, applied one after the other.
    back_to_back: list[tuple[float, float]] = []
    placing: list[tuple[float, float]] = []
    driver.apply_alone.clear()
    with timing_place(placing):
        for number in range(pods):
            body = _planned_pod_body(number, node_count)
            back_to_back.append(driver.run(TENANT, "pod.create", body, rid=f"b{number}"))
    results = {
        "verified placement (plan in the command)": _medians(verified),
        "verified placement, back to back": _medians(back_to_back),
        "  of which apply alone (no store writes)": _medians(driver.apply_alone),
        "  of which scheduler.place (fit and bind)": _medians(placing) if placing else None,
        f"  the same in LMDB, {entry_pods} pods an entry": measure_lmdb(node_count, pods, entry_pods),
        "fallback search (no plan)": _medians(fallback),
        "plan_pod at the proposer": _medians(planning),
    }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--pods", type=int, default=200, help="pods measured per cluster size")
    parser.add_argument(
        "--entry-pods", type=int, default=16, help="pod.create envelopes per log entry in the LMDB measurement"
    )
    args = parser.parse_args(argv)
    python = f"{platform.python_implementation()} {platform.python_version()}"
    print(f"# {python} on {platform.machine()}, {os.cpu_count()} cores; state machine: {build_state().reason}")
    for node_count in args.nodes:
        for what, medians in measure(node_count, args.pods, args.entry_pods).items():
            if medians is None:
                print(f"{node_count:>6} nodes  {what:<42} not measured: compiled build (ALLOT_PURE_PYTHON=1 to split)")
                continue
            wall, cpu = medians
            print(f"{node_count:>6} nodes  {what:<42} {wall * 1e6:>10.1f} us wall {cpu * 1e6:>10.1f} us CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
