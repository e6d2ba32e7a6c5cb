"""`allot chaos` / `python -m chaos`: a fresh local cluster, a workload, faults, checks, a report.

    allot chaos --duration 60 --seed 7                      # every kind of fault
    allot chaos --duration 1800 --faults all --seed 11      # a long run
    allot chaos --duration 50 --seed 1 --faults kill-leader,pause-leader

One run:
1. starts three members on 127.0.0.1 (free ports, a temporary directory, Raft links through the
   cuttable proxies of chaos/proxy.py so partitions are possible);
2. creates the pools the workload uses (one of 16 addresses, so exhaustion is hit), three worker
   nodes, a pod pool and a pod quota;
3. runs workers through the client library (`client.Client`): claims of several prefix lengths,
   releases, linearizable reads and one-page lists on each pool, pod creates and deletes, a
   heartbeat for every node, and an operator's label and NoSchedule-taint patches of one node
   after another; every worker call is recorded with its outcome (chaos/history.py);
4. injects the faults `plan_schedule(seed, duration, faults)` draws, one at a time, healing each
   and waiting for the members to agree on a leader, until the next one would not end within
   `duration` seconds of the start (the schedule's times leave out those recoveries, so usually
   a prefix of it is reached);
5. after the last heal, keeps the workload going until a write is acknowledged again, stops it,
   waits until every member has applied the leader's commit index, reads every member's state
   and inspects every member's stored state with `check_invariants`;
6. runs every check of chaos/checks.py, prints the report and saves the history (re-check it
   with `python -m chaos.checks FILE`).

Exit code 0 only when every check passed; 1 when a check failed or was inconclusive; 2 for bad
arguments; 3 when the harness itself could not run (a member would not start, ...); 130 on
Ctrl-C or SIGTERM (the members are stopped and reaped either way). The seed reproduces the
fault schedule and each worker's choice of operations; the timing of a run (and so its exact
history) depends on the machine.

How outcomes are recorded (docs/chaos.md, "Recording outcomes"): the client retries a write
with one idempotency key across members, and tells which way it gave up: `OutcomeUnknown` when
an attempt may have been applied, `Unavailable` when none was. A refusal (4xx) is definite:
the server answers a retried key with the first result.
"""

from __future__ import annotations

import abc
import argparse
import bisect
import functools
import random
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from chaos.checks import CheckResult, deadline_slack_s_default, run_checks
from chaos.cluster import Cluster, Unreachable
from chaos.history import (
    FaultRecord,
    History,
    HistoryFull,
    HistoryRecorder,
    Kind,
    Outcome,
    claim_key,
    pod_key,
    pods_pool,
    pool_id_of,
)
from chaos.linearizability import PoolModel, pool_model_from_object, step_budget_default
from chaos.nemesis import ALL_KINDS, FaultKind, Nemesis, PlannedFault, parse_kinds, plan_schedule
from chaos.observe import StatusPoller, collect_final_state
from client import AllotError, Client, OutcomeUnknown, RequestRefused, RetryPolicy, Taint, Unavailable

EXIT_PASSED = 0
EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_HARNESS = 3
EXIT_INTERRUPTED = 130

duration_s_max = 24 * 3600.0
workers_max = 64
rate_max = 2000.0
snapshot_entries_min = 50  # below this a member dumps more than it does anything else
op_deadline_s_default = 10.0  # one client call, all attempts included
attempt_timeout_s_default = 2.0
recovery_bound_s_default = 30.0  # last heal -> a write acknowledged again
heartbeat_interval_s = 1.0  # node agents' beat; the members' grace is 40 s
node_patch_interval_s = 1.5  # an operator's label and taint changes, one node at a time
NODE_PATCH_LABEL = "chaos.allot/round"
NODE_PATCH_TAINT = "chaos.allot/busy"
join_slack_s = 5.0
history_dir_default = Path(".allot-chaos")

# The tenants `Cluster` creates tokens for (node.tokens.generate_token_file).
TENANTS = ("acme/web", "globex/prod")


@dataclass(frozen=True)
class PoolPlan:
    """One pool of the workload. One tenant works on each pool, so a list of the pool by that
    tenant shows every claim in it (the linearizability model expects that)."""

    name: str
    cidr: str
    prefix_lengths: tuple[int, ...]
    tenant: str


POOLS: tuple[PoolPlan, ...] = (
    PoolPlan("small", "10.77.0.0/28", (32,), "acme/web"),  # 16 addresses: exhausted often
    PoolPlan("mid", "10.77.1.0/26", (32, 30), "globex/prod"),  # blocks of two sizes
    PoolPlan("six", "fd00:77::/120", (128, 126, 124), "acme/web"),  # IPv6 blocks of three sizes
)
POD_POOL = PoolPlan("chaos-pods", "10.96.0.0/16", (), "")
POD_TENANT = "acme/web"
POD_QUOTA = 10  # pods the tenant may have; the nodes hold 12 by CPU, so both limits are hit
NODE_NAMES = ("w1", "w2", "w3")
NODE_CAPACITY = {"cpuMillis": 1000, "memoryBytes": 4 << 30, "pods": 6}
POD_REQUESTS = {"cpuMillis": 250, "memoryBytes": 64 << 20}


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 60.0
    seed: int = 0
    faults: tuple[FaultKind, ...] = ALL_KINDS
    claim_workers: int = 6  # spread over the pools in turn
    pod_workers: int = 1
    rate: float = 100.0  # operations per second over all workers, at most
    op_deadline_s: float = op_deadline_s_default
    attempt_timeout_s: float = attempt_timeout_s_default
    recovery_bound_s: float = recovery_bound_s_default
    step_budget: int = step_budget_default
    history_path: Path | None = None  # default: .allot-chaos/history-seed-N.jsonl
    keep_dir: bool = False
    # Log entries between the members' dumps (None: the server's default, 5,000). A few hundred
    # makes a member that was cut off, paused or killed catch up from the leader's snapshot
    # rather than its log, exercising the snapshot paths under faults.
    snapshot_entries: int | None = None

    def __post_init__(self) -> None:
        if not 1.0 <= self.duration_s <= duration_s_max:
            raise ValueError(f"--duration must be between 1 and {duration_s_max:.0f} seconds")
        if not 1 <= self.claim_workers <= workers_max or not 0 <= self.pod_workers <= workers_max:
            raise ValueError(f"--workers must be between 1 and {workers_max} (pod workers between 0 and {workers_max})")
        if not 1.0 <= self.rate <= rate_max:
            raise ValueError(f"--rate must be between 1 and {rate_max:.0f} operations per second")
        if not 0 < self.attempt_timeout_s <= self.op_deadline_s:
            raise ValueError("the attempt timeout must be positive and at most the operation deadline")
        if not self.faults:
            raise ValueError("name at least one fault kind")
        if self.snapshot_entries is not None and self.snapshot_entries < snapshot_entries_min:
            raise ValueError(f"--snapshot-entries must be at least {snapshot_entries_min}")

    @property
    def history_file(self) -> Path:
        return self.history_path or history_dir_default / f"history-seed-{self.seed}.jsonl"


@dataclass
class ChaosReport:
    options: ChaosOptions
    schedule: list[PlannedFault]
    faults: list[FaultRecord]
    history: History
    results: list[CheckResult]
    elapsed_s: float
    history_file: Path
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(result.passed for result in self.results)


# ---- the workload ------------------------------------------------------------------------------


class Pacer:
    """Spaces one worker's operations so all workers together stay under the run's rate."""

    def __init__(self, interval_s: float, stop: threading.Event) -> None:
        self.interval_s = interval_s
        self.stop = stop
        self._next_s = time.monotonic()

    def wait_turn(self) -> bool:
        """Wait for this worker's next slot; False once the run is stopping."""
        self._next_s = max(self._next_s + self.interval_s, time.monotonic())
        return not self.stop.wait(max(0.0, self._next_s - time.monotonic()))


@dataclass
class Worker(abc.ABC):
    """One client, one thread; records every call it makes. Subclasses choose the operations."""

    name: str
    client: Client
    recorder: HistoryRecorder
    rng: random.Random
    pacer: Pacer
    deadline_s: float
    counter: int = 0
    calls_by_exception: Counter[str] = field(default_factory=Counter)

    def run(self) -> None:
        try:
            while self.pacer.wait_turn():
                self.step()
        except HistoryFull:
            self.pacer.stop.set()  # the history is as long as it may get: the run winds down

    @abc.abstractmethod
    def step(self) -> None:
        """One operation."""

    def next_number(self) -> int:
        self.counter += 1
        return self.counter

    def perform(self, op_id: int, write: bool, call: Callable[[], Mapping[str, Any]]) -> bool:
        """Run one client call and record its outcome. True when it succeeded."""
        try:
            result = call()
        except OutcomeUnknown as error:
            self.recorder.unknown(op_id, error.code)
        except RequestRefused as error:
            self.recorder.fail(op_id, error.code)  # an answer: nothing (more) was done
        except Unavailable as error:
            # The client gives up with Unavailable only when no attempt may have been applied.
            self.recorder.fail(op_id, error.code)
        except AllotError as error:  # a 500 or an answer that is not the API's: anything may have happened
            self.calls_by_exception[type(error).__name__] += 1
            self._unknown_or_fail(op_id, write, error.code)
        except (OSError, ValueError) as error:
            self.calls_by_exception[type(error).__name__] += 1
            self._unknown_or_fail(op_id, write, type(error).__name__)
        else:
            self.recorder.ok(op_id, result)
            return True
        return False

    def _unknown_or_fail(self, op_id: int, write: bool, code: str) -> None:
        # A read that went wrong constrains nothing either way; a write may have happened.
        if write:
            self.recorder.unknown(op_id, code)
        else:
            self.recorder.fail(op_id, code)

    def outcome(self, op_id: int) -> Outcome:
        return self.recorder.history_op(op_id).outcome


@dataclass
class ClaimWorker(Worker):
    """Claims, releases, reads and lists on one pool, as one tenant."""

    pool: PoolPlan = POOLS[0]
    pool_size: int = 16
    # Claims that are or may be held (acknowledged, or of unknown outcome): candidates for
    # release and read. A claim whose release is refused with not_found leaves it.
    held: list[str] = field(default_factory=list)

    @property
    def org_project(self) -> tuple[str, str]:
        org, project = self.pool.tenant.split("/")
        return org, project

    def key_of(self, name: str) -> str:
        return claim_key(*self.org_project, "default", name)

    def step(self) -> None:
        draw = self.rng.random()
        if self.held and draw < 0.35:
            self.release(self.held.pop(self.rng.randrange(len(self.held))))
        elif self.held and draw < 0.45:
            self.read(self.held[self.rng.randrange(len(self.held))])
        elif draw < 0.52:
            self.list_pool()
        else:
            self.claim(self.rng.choice(self.pool.prefix_lengths))

    def claim(self, prefix_length: int) -> None:
        number = self.next_number()
        name = f"{self.pool.name}-{self.name}-{number}"
        key = f"{self.name}-{number}-claim"
        op_id = self.recorder.invoke(
            self.name,
            Kind.CLAIM,
            self.pool.name,
            claim=self.key_of(name),
            args={"prefixLength": prefix_length},
            key=key,
            deadline_s=self.deadline_s,
        )

        def call() -> Mapping[str, Any]:
            claim = self.client.ipclaims.create(
                name,
                {"poolRef": self.pool.name, "prefixLength": prefix_length},
                labels={"chaos-pool": self.pool.name},
                idempotency_key=key,
            )
            return {"cidr": claim.status.allocated_cidr, "uid": claim.metadata.uid}

        if self.perform(op_id, True, call) or self.outcome(op_id) is Outcome.UNKNOWN:
            self.held.append(name)  # an unknown claim may hold a block too: release it later

    def release(self, name: str) -> None:
        number = self.next_number()
        key = f"{self.name}-{number}-release"
        op_id = self.recorder.invoke(
            self.name, Kind.RELEASE, self.pool.name, claim=self.key_of(name), key=key, deadline_s=self.deadline_s
        )

        def call() -> Mapping[str, Any]:
            self.client.ipclaims.delete(name, idempotency_key=key)
            return {}

        if not self.perform(op_id, True, call) and self.recorder.history_op(op_id).code != "not_found":
            self.held.append(name)  # it may still be held: release it again later

    def read(self, name: str) -> None:
        op_id = self.recorder.invoke(
            self.name, Kind.READ, self.pool.name, claim=self.key_of(name), deadline_s=self.deadline_s
        )

        def call() -> Mapping[str, Any]:
            return {"cidr": self.client.ipclaims.get(name).status.allocated_cidr}

        self.perform(op_id, False, call)

    def list_pool(self) -> None:
        op_id = self.recorder.invoke(self.name, Kind.LIST, self.pool.name, deadline_s=self.deadline_s)

        def call() -> Mapping[str, Any]:
            page = self.client.ipclaims.list_page(
                limit=self.pool_size + 1, label_selector=f"chaos-pool={self.pool.name}"
            )
            if page.continue_token is not None:
                # Only a single page is one linearizable observation of the whole pool.
                raise RequestRefused("the pool did not fit one page", code="more_than_one_page")
            claims: dict[str, str] = {}
            for claim in page.items:
                meta = claim.metadata
                if claim.status.allocated_cidr is not None:
                    key = claim_key(meta.org or "", meta.project or "", meta.namespace or "default", meta.name)
                    claims[key] = claim.status.allocated_cidr
            return {"claims": claims}

        self.perform(op_id, False, call)


@dataclass
class PodWorker(Worker):
    """Creates and deletes small pods as one tenant; quota and node capacity are both hit."""

    live: list[str] = field(default_factory=list)  # pods created or possibly created

    def key_of(self, name: str) -> str:
        org, project = POD_TENANT.split("/")
        return pod_key(org, project, "default", name)

    def step(self) -> None:
        if self.live and self.rng.random() < 0.45:
            self.delete(self.live.pop(self.rng.randrange(len(self.live))))
        else:
            self.create()

    def create(self) -> None:
        number = self.next_number()
        name = f"pod-{self.name}-{number}"
        key = f"{self.name}-{number}-create"
        op_id = self.recorder.invoke(
            self.name,
            Kind.POD_CREATE,
            pods_pool(*POD_TENANT.split("/")),
            claim=self.key_of(name),
            key=key,
            deadline_s=self.deadline_s,
        )

        def call() -> Mapping[str, Any]:
            pod = self.client.pods.create(name, {"requests": POD_REQUESTS}, idempotency_key=key)
            return {"phase": pod.phase, "node": pod.node_name, "podIP": pod.pod_ip}

        if self.perform(op_id, True, call) or self.outcome(op_id) is Outcome.UNKNOWN:
            self.live.append(name)

    def delete(self, name: str) -> None:
        number = self.next_number()
        key = f"{self.name}-{number}-delete"
        op_id = self.recorder.invoke(
            self.name,
            Kind.POD_DELETE,
            pods_pool(*POD_TENANT.split("/")),
            claim=self.key_of(name),
            key=key,
            deadline_s=self.deadline_s,
        )

        def call() -> Mapping[str, Any]:
            self.client.pods.delete(name, idempotency_key=key)
            return {}

        if not self.perform(op_id, True, call) and self.recorder.history_op(op_id).code != "not_found":
            self.live.append(name)


class CountedCalls(abc.ABC):
    """A background thread that makes calls every `interval_s` until `stop`; failures are
    counted, not recorded in the history (the final checks judge what the calls changed)."""

    def __init__(self, client: Client, stop: threading.Event, interval_s: float, thread_name: str) -> None:
        self.client = client
        self.stop = stop
        self.interval_s = interval_s
        self.sent = 0
        self.failed = 0
        self.thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.tick()

    @abc.abstractmethod
    def tick(self) -> None: ...

    def count(self, call: Callable[[], object]) -> None:
        try:
            call()
            self.sent += 1
        except AllotError:
            self.failed += 1


class Heartbeats(CountedCalls):
    """Beats for every worker node, as node agents would (a heartbeat changes no replicated
    state)."""

    def __init__(self, client: Client, stop: threading.Event) -> None:
        super().__init__(client, stop, heartbeat_interval_s, "chaos-heartbeats")

    def tick(self) -> None:
        for name in NODE_NAMES:
            self.count(functools.partial(self.client.nodes.heartbeat, name, deadline=heartbeat_interval_s))


class NodePatches(CountedCalls):
    """Changes a worker node every `node_patch_interval_s`, in turn, as an operator would with
    `kubectl label` and `kubectl taint` (PATCH /v1/nodes/NAME): a label naming the round, and a
    NoSchedule taint on every other round, so placement under faults meets labels and taints
    that change (a NoSchedule taint evicts nothing, so the pod checks' "bound pods stay where
    they were acknowledged" still holds)."""

    def __init__(self, client: Client, stop: threading.Event) -> None:
        super().__init__(client, stop, node_patch_interval_s, "chaos-node-patches")
        self.round_number = 0

    def tick(self) -> None:
        self.round_number += 1
        name = NODE_NAMES[self.round_number % len(NODE_NAMES)]
        taints = [Taint(NODE_PATCH_TAINT, "", "NoSchedule")] if self.round_number % 2 else []
        key = f"node-patch-{self.round_number}"
        labels = {NODE_PATCH_LABEL: str(self.round_number)}
        self.count(
            lambda: self.client.nodes.update(
                name, labels=labels, taints=taints, idempotency_key=key, deadline=node_patch_interval_s * 4
            )
        )


# ---- one run -----------------------------------------------------------------------------------


def _endpoints(cluster: Cluster) -> list[str]:
    return [f"http://{member.http_address}" for member in cluster.members.values()]


def _client(cluster: Cluster, token: str, options: ChaosOptions, seed: int) -> Client:
    policy = RetryPolicy(deadline_s=options.op_deadline_s, attempt_timeout_s=options.attempt_timeout_s)
    return Client(_endpoints(cluster), token, retry=policy, random_source=random.Random(seed))


def set_up(admin: Client) -> dict[str, PoolModel]:
    """The pools, nodes and quota the workload needs; returns the pools' models for check 4."""
    models: dict[str, PoolModel] = {}
    for plan in POOLS:
        pool = admin.request("POST", "/v1/ippools", body={"name": plan.name, "spec": {"cidr": plan.cidr}})
        models[pool_id_of(pool)] = pool_model_from_object(pool, pool_id_of(pool))
    admin.request("POST", "/v1/ippools", body={"name": POD_POOL.name, "spec": {"cidr": POD_POOL.cidr}})
    for name in NODE_NAMES:
        admin.nodes.create(
            name, {"capacity": NODE_CAPACITY, "podPool": POD_POOL.name}, idempotency_key=f"register-{name}"
        )
    admin.quotas.set(POD_TENANT, {"pods": POD_QUOTA}, idempotency_key="quota")
    return models


def _pool_size(plan: PoolPlan) -> int:
    length = int(plan.cidr.split("/")[1])
    return 1 << ((128 if ":" in plan.cidr else 32) - length)


def make_workers(
    cluster: Cluster, recorder: HistoryRecorder, options: ChaosOptions, stop: threading.Event
) -> list[Worker]:
    total = options.claim_workers + options.pod_workers
    interval_s = total / options.rate
    workers: list[Worker] = []
    for index in range(options.claim_workers):
        plan = POOLS[index % len(POOLS)]
        seed = options.seed * 1000 + index
        workers.append(
            ClaimWorker(
                name=f"c{index + 1}",
                client=_client(cluster, cluster.tenant_tokens[plan.tenant], options, seed),
                recorder=recorder,
                rng=random.Random(seed),
                pacer=Pacer(interval_s, stop),
                deadline_s=options.op_deadline_s,
                pool=plan,
                pool_size=_pool_size(plan),
            )
        )
    for index in range(options.pod_workers):
        seed = options.seed * 1000 + 500 + index
        workers.append(
            PodWorker(
                name=f"p{index + 1}",
                client=_client(cluster, cluster.tenant_tokens[POD_TENANT], options, seed),
                recorder=recorder,
                rng=random.Random(seed),
                pacer=Pacer(interval_s, stop),
                deadline_s=options.op_deadline_s,
            )
        )
    return workers


def _write_acknowledged_since(recorder: HistoryRecorder, first_op: int) -> bool:
    ops = recorder.history().ops[first_op:]
    return any(op.outcome is Outcome.OK and op.is_write for op in ops)


def _wait_for(condition: Callable[[], bool], timeout_s: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        if stop.wait(0.1):
            return False
    return condition()


def run_chaos(options: ChaosOptions, out: TextIO = sys.stdout) -> ChaosReport:
    """One whole run; raises only when the harness cannot run (KeyboardInterrupt passes through)."""
    schedule = plan_schedule(options.seed, options.duration_s, options.faults)

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    say(
        f"allot chaos: seed {options.seed}, {options.duration_s:g} s, {len(schedule)} faults planned "
        f"({', '.join(f'{kind} x{count}' for kind, count in sorted(Counter(f.kind.value for f in schedule).items()))})"
    )
    started = time.monotonic()
    recorder = HistoryRecorder()
    stop = threading.Event()
    notes: list[str] = []
    with Cluster(partitionable=True, keep_dir=options.keep_dir, snapshot_entries=options.snapshot_entries) as cluster:
        say(f"cluster up in {cluster.base_dir} (leader {cluster.wait_for_leader()})")
        admin = _client(cluster, cluster.admin_token, options, options.seed)
        models = set_up(admin)
        workers = make_workers(cluster, recorder, options, stop)
        heartbeats = Heartbeats(admin, stop)
        patcher = _client(cluster, cluster.admin_token, options, options.seed + 1)
        node_patches = NodePatches(patcher, stop)
        threads = [threading.Thread(target=worker.run, name=f"chaos-{worker.name}", daemon=True) for worker in workers]
        nemesis = Nemesis(cluster, recorder)
        records: list[FaultRecord] = []
        with StatusPoller(cluster, recorder):
            heartbeats.thread.start()
            node_patches.thread.start()
            for thread in threads:
                thread.start()
            faults_end_s = time.monotonic() + options.duration_s
            try:
                for planned in schedule:
                    # The schedule's times leave out each fault's recovery, so a run would last
                    # longer than asked; it ends instead with the last fault that fits in time.
                    if time.monotonic() + planned.quiet_s + planned.hold_s > faults_end_s:
                        break
                    if stop.wait(planned.quiet_s):
                        break
                    record = nemesis.apply(planned, stop)
                    records.append(record)
                    say(_fault_line(record))
            finally:
                nemesis.heal_everything()
            healed_at_op = recorder.ops_count
            if not _wait_for(lambda: _write_acknowledged_since(recorder, healed_at_op), options.recovery_bound_s, stop):
                notes.append(f"no write was acknowledged within {options.recovery_bound_s:g} s of the last heal")
            stop.set()
            for thread in threads:
                thread.join(options.op_deadline_s + join_slack_s)
            heartbeats.thread.join(heartbeat_interval_s * (len(NODE_NAMES) + 1) + join_slack_s)
            node_patches.thread.join(node_patch_interval_s * 5 + join_slack_s)
            stuck = [thread.name for thread in threads if thread.is_alive()]
            if stuck:
                notes.append(f"workers still running after their deadline: {', '.join(stuck)}")
        admin.close()
        patcher.close()
        for worker in workers:
            worker.client.close()
            for name, count in worker.calls_by_exception.items():
                notes.append(f"{worker.name}: {count} calls ended in {name}")
        notes.append(f"heartbeats: {heartbeats.sent} sent, {heartbeats.failed} failed")
        notes.append(f"node label/taint patches: {node_patches.sent} acknowledged, {node_patches.failed} failed")
        say("workload stopped; waiting for every member to apply the leader's commit, then reading their state")
        final = collect_final_state(cluster, inspect_stores=True)
        meta = {
            "seed": options.seed,
            "duration_s": options.duration_s,
            "faults": [kind.value for kind in options.faults],
            "pools": [model.to_json() for model in models.values()],
            "deadline_s": options.op_deadline_s,
            "recovery_bound_s": options.recovery_bound_s,
            "deadline_slack_s": deadline_slack_s_default,
        }
        history = recorder.history(meta=meta, final=final)
    history_file = options.history_file
    history_file.parent.mkdir(parents=True, exist_ok=True)
    history.dump(history_file)
    say(f"history saved to {history_file}; checking it")
    results = run_checks(
        history,
        models,
        step_budget=options.step_budget,
        recovery_bound_s=options.recovery_bound_s,
        deadline_s=options.op_deadline_s,
    )
    return ChaosReport(options, schedule, records, history, results, time.monotonic() - started, history_file, notes)


def _fault_line(record: FaultRecord) -> str:
    recovery = (
        f"agreed leader after {(record.recovered_ns - record.injected_ns) / 1e9:.2f} s"
        if record.recovered_ns is not None
        else "no agreed leader"
    )
    error = f" ERROR {record.error}" if record.error else ""
    return f"  fault {record.number} {record.kind}: {record.detail}; {recovery}{error}"


# ---- the report --------------------------------------------------------------------------------


def failover_times(history: History) -> list[tuple[FaultRecord, float | None]]:
    """For each fault: seconds from its injection to the next acknowledged write (None: none)."""
    completions = sorted(
        op.complete_ns for op in history.ops if op.is_write and op.outcome is Outcome.OK and op.complete_ns is not None
    )
    times: list[tuple[FaultRecord, float | None]] = []
    for record in history.faults:
        at = bisect.bisect_left(completions, record.injected_ns)
        seconds = (completions[at] - record.injected_ns) / 1e9 if at < len(completions) else None
        times.append((record, seconds))
    return times


def builds_seen(history: History) -> str:
    """Which state machine build each member ran, as its status samples said: a member restarted
    after `statemachine/` changed would run the sources where the others run the compiled build."""
    builds: dict[str, set[str]] = {}
    for sample in history.statuses:
        if sample.build is not None:
            builds.setdefault(sample.member, set()).add(sample.build)
    if not builds:
        return "not reported"
    return ", ".join(f"{member} {' and '.join(sorted(seen))}" for member, seen in sorted(builds.items()))


def render_report(report: ChaosReport) -> str:
    history = report.history
    lines = [
        "",
        f"== allot chaos report: seed {report.options.seed}, {report.elapsed_s:.0f} s, "
        f"faults {', '.join(kind.value for kind in report.options.faults)}",
        "",
        f"state machine build (from /v1/status): {builds_seen(history)}",
        "",
        "operations (ok / failed / unknown):",
    ]
    by_kind: dict[str, Counter[str]] = {}
    for op in history.ops:
        by_kind.setdefault(op.kind.value, Counter())[op.outcome.value] += 1
    for kind, counts in sorted(by_kind.items()):
        lines.append(
            f"  {kind:<11} {counts[Outcome.OK.value]:>6} / {counts[Outcome.FAIL.value]:>6} / "
            f"{counts[Outcome.UNKNOWN.value]:>6}" + (f"  ({counts['pending']} pending)" if counts["pending"] else "")
        )
    refusals = Counter(op.code for op in history.ops if op.outcome is Outcome.FAIL)
    if refusals:
        lines.append("  failed by code: " + ", ".join(f"{code} {count}" for code, count in refusals.most_common(8)))
    lines += ["", f"faults injected: {len(report.faults)} of {len(report.schedule)} planned"]
    failovers = failover_times(history)
    for record, failover_s in failovers:
        to_write = f"{failover_s:.2f} s" if failover_s is not None else "never"
        lines.append(
            f"  {record.number:>3} {record.kind:<17} {record.detail}; first acknowledged write after {to_write}"
        )
        if record.error:
            lines.append(f"      error: {record.error}")
    leader_faults = [
        seconds
        for record, seconds in failovers
        if seconds is not None and record.kind in ("kill-leader", "pause-leader", "partition-leader", "kill-all")
    ]
    if leader_faults:
        ordered = sorted(leader_faults)
        lines.append(
            f"  leader faults to the next acknowledged write: median {ordered[len(ordered) // 2]:.2f} s, "
            f"worst {ordered[-1]:.2f} s over {len(ordered)}"
        )
    if report.notes:
        lines += ["", "notes:"] + [f"  {note}" for note in report.notes]
    lines += ["", "checks:"]
    lines += [result.report() for result in report.results]
    verdict = "PASSED" if report.passed else "FAILED"
    lines += [
        "",
        f"{verdict}: {sum(r.passed for r in report.results)} of {len(report.results)} checks passed. "
        f"History: {report.history_file} (re-check: python -m chaos.checks {report.history_file}); "
        f"reproduce the faults: allot chaos --seed {report.options.seed} --duration {report.options.duration_s:g} "
        f"--faults {','.join(kind.value for kind in report.options.faults)}",
    ]
    return "\n".join(lines)


# ---- the command line --------------------------------------------------------------------------


def build_parser(prog: str = "allot chaos") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Start a fresh local three-member cluster, run a workload through the client library while "
        "injecting faults from a seeded schedule, then check the history and the final state.",
    )
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of faults, recoveries included (default 60)"
    )
    parser.add_argument("--seed", type=int, default=0, help="reproduces the fault schedule (default 0)")
    parser.add_argument(
        "--faults", default="all", help=f"'all' or a comma-separated list of: {', '.join(k.value for k in ALL_KINDS)}"
    )
    parser.add_argument("--workers", type=int, default=6, help="claim workers, spread over the pools (default 6)")
    parser.add_argument("--pod-workers", type=int, default=1, help="pod workers (default 1; 0 for none)")
    parser.add_argument("--rate", type=float, default=100.0, help="operations per second, at most (default 100)")
    parser.add_argument("--history", type=Path, default=None, help="where to save the history (JSON lines)")
    parser.add_argument("--keep-dir", action="store_true", help="keep the cluster's directory (logs, data)")
    parser.add_argument(
        "--snapshot-entries",
        type=int,
        default=None,
        help="log entries between the members' dumps (default: the server's, 5000); a few hundred makes members "
        "that fell behind catch up from snapshots",
    )
    return parser


def options_from(args: argparse.Namespace) -> ChaosOptions:
    return ChaosOptions(
        duration_s=args.duration,
        seed=args.seed,
        faults=parse_kinds(args.faults),
        claim_workers=args.workers,
        pod_workers=args.pod_workers,
        rate=args.rate,
        history_path=args.history,
        keep_dir=args.keep_dir,
        snapshot_entries=args.snapshot_entries,
    )


def main(argv: Sequence[str] | None = None, prog: str = "allot chaos") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        options = options_from(args)
    except ValueError as error:
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    # SIGTERM (a CI job's timeout, kill) unwinds like Ctrl-C, so the members are stopped and
    # reaped on the way out instead of being left running.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_chaos(options)
    except KeyboardInterrupt:
        print("interrupted; the cluster was stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (AssertionError, RuntimeError, OSError, Unreachable, AllotError) as error:
        print(f"{prog}: the harness could not run: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_HARNESS
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(render_report(report))
    return EXIT_PASSED if report.passed else EXIT_CHECK_FAILED


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt
