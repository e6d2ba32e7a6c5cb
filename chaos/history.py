"""What a chaos run saw: client operations, member statuses, faults, and the final state.

A `History` is plain data, saved as JSON lines (`dump` / `load`) so that a failing run can be
kept and checked again by the pure functions in `chaos/checks.py`. One line per record, each
with a `type`: `meta` (seed and settings), `op`, `status`, `fault`, `final` (one member's state
after the run).

Operations (`Op`): a worker (`process`) invokes an operation of a `kind` on a `pool` and later
sees its outcome:

* `ok`: the server answered with success; `result` holds what it said (`cidr`, `uid` of a
  claim; the claims a list saw).
* `fail`: a definite refusal that changed nothing (`code`: `pool_exhausted`, `not_found`, ...).
  Only an answer that rules out every earlier attempt of the same idempotency key having
  applied is definite: with the key, a retry answers the first attempt's result, so a refusal
  to a retry is definite; a 503 after an earlier 504 is not (record that as unknown).
* `unknown`: the worker cannot tell (timeout, 504 outcome unknown, connection lost). The
  operation may take effect at any time after it was invoked, or never.

Times are `time.monotonic_ns()` of the recording process: `invoke_ns` just before the first
byte is sent, `complete_ns` just after the outcome is known (for unknown: when the worker gave
up). The `HistoryRecorder` is thread-safe and bounded: beyond `ops_max` operations `invoke`
raises `HistoryFull` rather than dropping operations (a dropped acknowledged write would look
lost to the checks). Status samples are kept only when something changed, also bounded.

Claims are identified by a claim key, `org/project/namespace/name` (`claim_key`), the same key
the final state uses, so operations and final state can be joined.

Pods are recorded the same way (`pod_create`, `pod_delete`): `pool` is the tenant as
`pods:org/project` (`pods_pool`; the prefix keeps it apart from every IP pool id, so the
per-pool IPAM checks never see pod operations), `claim` is the pod key `org/project/namespace/name`
(`pod_key`), and an acknowledged `pod_create` records `{"phase", "node", "podIP"}` (node and podIP
None while the pod is Pending; `uid` too if the runner has it). A member's final state holds its
nodes, pods and quotas as the scheduler API lists them (`NodeState`, `PodState`, `QuotaState`);
`scheduler_observed` says whether they were read at all (histories saved before pods were
recorded load with it False and empty tuples).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

ops_max_default = 200_000
status_samples_max_default = 100_000
faults_max = 10_000
history_format = 1


class HistoryFull(Exception):
    """The recorder holds `ops_max` operations: the workload must stop (or record fewer)."""


class Kind(StrEnum):
    CLAIM = "claim"  # create a claim; result: cidr, uid
    RELEASE = "release"  # delete a claim by key
    READ = "read"  # get one claim by key (linearizable); result: cidr
    LIST = "list"  # every claim of one pool, one page, linearizable; result: claims {key: cidr}
    POD_CREATE = "pod_create"  # create a pod (pool: pods:org/project, claim: pod key); result: phase, node, podIP
    POD_DELETE = "pod_delete"  # delete a pod by key


class Outcome(StrEnum):
    PENDING = "pending"  # invoked, not completed yet (only inside a running recorder)
    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


WRITE_KINDS = frozenset({Kind.CLAIM, Kind.RELEASE, Kind.POD_CREATE, Kind.POD_DELETE})
IPAM_KINDS = frozenset({Kind.CLAIM, Kind.RELEASE, Kind.READ, Kind.LIST})  # keyed by IP pool
POD_KINDS = frozenset({Kind.POD_CREATE, Kind.POD_DELETE})  # keyed by tenant (pods_pool)
PODS_POOL_PREFIX = "pods:"


def claim_key(org: str, project: str, namespace: str, name: str) -> str:
    return f"{org}/{project}/{namespace}/{name}"


def claim_key_of(obj: Mapping[str, Any]) -> str:
    """The claim key of an IPClaim or IPAllocation object as the HTTP API returns it."""
    metadata = obj["metadata"]
    return claim_key(metadata["org"], metadata["project"], metadata.get("namespace", "default"), metadata["name"])


def pod_key(org: str, project: str, namespace: str, name: str) -> str:
    return f"{org}/{project}/{namespace}/{name}"


def pod_key_of(obj: Mapping[str, Any]) -> str:
    """The pod key of a Pod object as the HTTP API returns it."""
    metadata = obj["metadata"]
    return pod_key(metadata["org"], metadata["project"], metadata.get("namespace", "default"), metadata["name"])


def pods_pool(org: str, project: str) -> str:
    """`Op.pool` of a pod operation: its tenant, prefixed so it never equals an IP pool id."""
    return f"{PODS_POOL_PREFIX}{org}/{project}"


@dataclass(frozen=True)
class Op:
    op_id: int  # invocation order within the recorder
    process: str  # the worker that ran it
    kind: Kind
    pool: str
    claim: str | None  # claim key (claim, release, read) or pod key (pod_create, pod_delete); None for a list
    args: dict[str, Any]  # what was asked: prefixLength, cidr, ...
    key: str | None  # Idempotency-Key
    invoke_ns: int
    complete_ns: int | None = None
    outcome: Outcome = Outcome.PENDING
    result: dict[str, Any] = field(default_factory=dict)
    code: str | None = None  # fail: the error code; unknown: why (timeout, outcome_unknown, ...)
    deadline_ns: int | None = None  # the client's deadline for the whole call, if it had one

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    @property
    def is_pod(self) -> bool:
        return self.kind in POD_KINDS

    @property
    def cidr(self) -> str | None:
        value = self.result.get("cidr")
        return str(value) if value is not None else None

    def describe(self) -> str:
        """One short line for evidence."""
        target = self.claim if self.claim is not None else self.pool
        answer = {
            Outcome.OK: self._ok_answer(),
            Outcome.FAIL: f"fail {self.code}",
            Outcome.UNKNOWN: f"unknown ({self.code})",
            Outcome.PENDING: "pending",
        }[self.outcome]
        span = f"{self.invoke_ns / 1e9:.3f}-{self.complete_ns / 1e9:.3f}s" if self.complete_ns else "open"
        return f"#{self.op_id} {self.process} {self.kind.value} {target} -> {answer} [{span}]"

    def _ok_answer(self) -> str:
        if self.kind is Kind.POD_CREATE:
            node, pod_ip = self.result.get("node"), self.result.get("podIP")
            placed = f" on {node} {pod_ip}" if node is not None else ""
            return f"ok {self.result.get('phase', '?')}{placed}"
        return f"ok {self.cidr}" if self.cidr else "ok"

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["kind"] = self.kind.value
        record["outcome"] = self.outcome.value
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Op:
        values = dict(record)
        values["kind"] = Kind(values["kind"])
        values["outcome"] = Outcome(values["outcome"])
        return cls(**values)


@dataclass(frozen=True)
class StatusSample:
    """One member's /v1/status as seen at `at_ns`."""

    at_ns: int
    member: str
    role: str
    term: int
    leader: str | None
    applied_index: int
    commit_index: int
    digest_index: int | None
    digest: str | None
    build: str | None = None  # the state machine the member runs (compiled or python); None in older histories

    @classmethod
    def from_status(cls, member: str, at_ns: int, status: Mapping[str, Any]) -> StatusSample:
        digest_index = status.get("digestIndex")
        return cls(
            at_ns=at_ns,
            member=member,
            role=str(status.get("role", "unknown")),
            term=int(status.get("term", 0)),
            leader=status.get("leader"),
            applied_index=int(status.get("appliedIndex", 0)),
            commit_index=int(status.get("commitIndex", 0)),
            digest_index=int(digest_index) if digest_index is not None and digest_index >= 0 else None,
            digest=status.get("digest") or None,
            build=status.get("stateMachineBuild"),
        )

    def same_observation(self, other: StatusSample) -> bool:
        """Equal in everything but time (and applied index, which moves with every write)."""
        return (self.member, self.role, self.term, self.leader, self.digest_index, self.digest, self.build) == (
            other.member,
            other.role,
            other.term,
            other.leader,
            other.digest_index,
            other.digest,
            other.build,
        )


@dataclass(frozen=True)
class FaultRecord:
    """One fault a nemesis injected, and its heal."""

    number: int
    kind: str
    members: tuple[str, ...]
    injected_ns: int
    healed_ns: int | None = None
    recovered_ns: int | None = None  # a leader agreed on by every member again, after the heal
    leader_before: str | None = None
    leader_after: str | None = None
    detail: str = ""
    error: str | None = None  # the fault could not be injected or healed as planned

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["members"] = list(self.members)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> FaultRecord:
        values = dict(record)
        values["members"] = tuple(values["members"])
        return cls(**values)


@dataclass(frozen=True)
class ClaimState:
    key: str
    pool: str
    cidr: str
    uid: str


@dataclass(frozen=True)
class AllocationState:
    key: str  # the allocation's own key (same shape as a claim key)
    pool: str
    cidr: str
    claim: str | None  # key of the claim it is bound to (None once released and retained)
    phase: str


@dataclass(frozen=True)
class NodeState:
    """A worker node (`/v1/nodes`) as a member lists it: capacity, what its record says bound
    pods use (`status.allocated`), condition, cordon, and its pod CIDR."""

    name: str
    capacity_cpu_millis: int
    capacity_memory_bytes: int
    capacity_pods: int
    allocated_cpu_millis: int
    allocated_memory_bytes: int
    allocated_pods: int
    ready: bool
    condition: str  # status.conditionReason: Registered, Ready, NotReady, ...
    cordoned: bool  # spec.unschedulable
    pod_cidr: str


@dataclass(frozen=True)
class PodState:
    """A pod (`/v1/pods`, every tenant's) as a member lists it."""

    key: str  # pod_key: org/project/namespace/name
    uid: str
    phase: str  # Bound or Pending
    node: str | None  # spec.nodeName
    pod_ip: str | None  # status.podIP
    cpu_millis: int  # spec.requests
    memory_bytes: int


@dataclass(frozen=True)
class QuotaState:
    """A quota (`/v1/quotas`): its scope, its limits and the usage the member reports for it."""

    scope: str  # "org" or "org/project"
    org: str
    project: str  # "" for an org quota
    limits: dict[str, Any]  # spec without defaultRequests: cpuMillis, memoryBytes, pods, services, addressesBy*
    used: dict[str, Any]  # status.used: cpuMillis, memoryBytes, pods, services, pendingPods, addressesBy*


@dataclass(frozen=True)
class MemberState:
    """One member's state after the run: its status and what it holds (read with consistency=stale)."""

    member: str
    applied_index: int
    digest_index: int | None
    digest: str | None
    claims: tuple[ClaimState, ...]
    allocations: tuple[AllocationState, ...]
    address_spaces: dict[str, str]  # pool id -> address space
    invariant_problems: tuple[str, ...] | None = None  # None: not inspected
    unexpected_exits: tuple[int, ...] = ()  # exit codes of its processes that ended by themselves
    nodes: tuple[NodeState, ...] = ()
    pods: tuple[PodState, ...] = ()
    quotas: tuple[QuotaState, ...] = ()
    scheduler_observed: bool = False  # nodes, pods and quotas were read (empty may then mean empty)

    def claims_of_pool(self, pool: str) -> dict[str, str]:
        return {claim.key: claim.cidr for claim in self.claims if claim.pool == pool}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> MemberState:
        problems = record.get("invariant_problems")
        return cls(
            member=record["member"],
            applied_index=record["applied_index"],
            digest_index=record["digest_index"],
            digest=record["digest"],
            claims=tuple(ClaimState(**claim) for claim in record["claims"]),
            allocations=tuple(AllocationState(**allocation) for allocation in record["allocations"]),
            address_spaces=dict(record["address_spaces"]),
            invariant_problems=tuple(problems) if problems is not None else None,
            unexpected_exits=tuple(record.get("unexpected_exits", ())),
            nodes=tuple(NodeState(**node) for node in record.get("nodes", ())),
            pods=tuple(PodState(**pod) for pod in record.get("pods", ())),
            quotas=tuple(QuotaState(**quota) for quota in record.get("quotas", ())),
            scheduler_observed=bool(record.get("scheduler_observed", False)),
        )


def pool_id_of(obj: Mapping[str, Any]) -> str:
    """The id an IPPool object is referred to by (claims' and allocations' `pool`)."""
    metadata = obj["metadata"]
    org = metadata.get("org") or ""
    return f"{org}/{metadata['project']}/{metadata['name']}" if org else str(metadata["name"])


def member_state_from_objects(
    member: str,
    status: Mapping[str, Any],
    pools: Iterable[Mapping[str, Any]],
    claims: Iterable[Mapping[str, Any]],
    allocations: Iterable[Mapping[str, Any]],
    invariant_problems: Iterable[str] | None = None,
    unexpected_exits: Iterable[int] = (),
    *,
    nodes: Iterable[Mapping[str, Any]] | None = None,
    pods: Iterable[Mapping[str, Any]] | None = None,
    quotas: Iterable[Mapping[str, Any]] | None = None,
) -> MemberState:
    """Build a MemberState from /v1/status and the ippools, ipclaims, ipallocations lists, and
    (all three or none) the nodes, pods and quotas lists, which set `scheduler_observed`."""
    given = [item is not None for item in (nodes, pods, quotas)]
    if any(given) and not all(given):
        raise ValueError("give nodes, pods and quotas together (an empty list for none), or none of them")
    claim_states = tuple(
        ClaimState(
            key=claim_key_of(obj),
            pool=str(obj["status"].get("pool", "")),
            cidr=str(obj["status"]["allocatedCIDR"]),
            uid=str(obj["metadata"].get("uid", "")),
        )
        for obj in claims
    )
    allocation_states = tuple(
        AllocationState(
            key=claim_key_of(obj),
            pool=str(obj["spec"]["pool"]),
            cidr=str(obj["spec"]["cidr"]),
            claim=_bound_claim(obj),
            phase=str(obj.get("status", {}).get("phase", "")),
        )
        for obj in allocations
    )
    spaces = {pool_id_of(obj): str(obj["status"].get("addressSpace", "default")) for obj in pools}
    sample = StatusSample.from_status(member, 0, status)
    return MemberState(
        member=member,
        applied_index=sample.applied_index,
        digest_index=sample.digest_index,
        digest=sample.digest,
        claims=claim_states,
        allocations=allocation_states,
        address_spaces=spaces,
        invariant_problems=tuple(invariant_problems) if invariant_problems is not None else None,
        unexpected_exits=tuple(unexpected_exits),
        nodes=tuple(node_state_of(obj) for obj in nodes or ()),
        pods=tuple(pod_state_of(obj) for obj in pods or ()),
        quotas=tuple(quota_state_of(obj) for obj in quotas or ()),
        scheduler_observed=all(given),
    )


def node_state_of(obj: Mapping[str, Any]) -> NodeState:
    """A NodeState from a Node object as /v1/nodes returns it."""
    spec, status = obj["spec"], obj["status"]
    capacity, allocated = spec["capacity"], status.get("allocated", {})
    return NodeState(
        name=str(obj["metadata"]["name"]),
        capacity_cpu_millis=int(capacity["cpuMillis"]),
        capacity_memory_bytes=int(capacity["memoryBytes"]),
        capacity_pods=int(capacity["pods"]),
        allocated_cpu_millis=int(allocated.get("cpuMillis", 0)),
        allocated_memory_bytes=int(allocated.get("memoryBytes", 0)),
        allocated_pods=int(allocated.get("pods", 0)),
        ready=bool(status.get("ready", False)),
        condition=str(status.get("conditionReason", "")),
        cordoned=bool(spec.get("unschedulable", False)),
        pod_cidr=str(status["podCIDR"]),
    )


def pod_state_of(obj: Mapping[str, Any]) -> PodState:
    """A PodState from a Pod object as /v1/pods returns it."""
    spec, status = obj["spec"], obj.get("status", {})
    requests = spec.get("requests", {})
    node, pod_ip = spec.get("nodeName"), status.get("podIP")
    return PodState(
        key=pod_key_of(obj),
        uid=str(obj["metadata"].get("uid", "")),
        phase=str(status.get("phase", "")),
        node=str(node) if node is not None else None,
        pod_ip=str(pod_ip) if pod_ip is not None else None,
        cpu_millis=int(requests.get("cpuMillis", 0)),
        memory_bytes=int(requests.get("memoryBytes", 0)),
    )


def quota_state_of(obj: Mapping[str, Any]) -> QuotaState:
    """A QuotaState from a Quota object as /v1/quotas returns it."""
    metadata = obj["metadata"]
    org, project = str(metadata["org"]), str(metadata.get("project") or "")
    return QuotaState(
        scope=f"{org}/{project}" if project else org,
        org=org,
        project=project,
        limits={name: value for name, value in obj.get("spec", {}).items() if name != "defaultRequests"},
        used=dict(obj.get("status", {}).get("used", {})),
    )


def _bound_claim(allocation: Mapping[str, Any]) -> str | None:
    claim_ref = allocation["spec"].get("claimRef")
    if not claim_ref or allocation.get("status", {}).get("phase") != "Bound":
        return None
    metadata = allocation["metadata"]
    return claim_key(metadata["org"], metadata["project"], metadata.get("namespace", "default"), str(claim_ref))


@dataclass
class History:
    """Everything the checks read. Plain data: build it by hand in tests, or from recorders."""

    ops: list[Op] = field(default_factory=list)
    statuses: list[StatusSample] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    final: list[MemberState] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def ops_of_pool(self, pool: str) -> list[Op]:
        """The IPAM operations (claims, releases, reads, lists) of one IP pool."""
        return [op for op in self.ops if op.pool == pool and op.kind in IPAM_KINDS]

    def pools(self) -> list[str]:
        """The IP pools the IPAM operations touched (pod operations' tenants are not pools)."""
        return sorted({op.pool for op in self.ops if op.kind in IPAM_KINDS})

    def pod_ops(self) -> list[Op]:
        return [op for op in self.ops if op.kind in POD_KINDS]

    def dump(self, path: str | Path) -> None:
        """Write as JSON lines (atomically: a temporary file renamed into place)."""
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        with open(temporary, "w", encoding="utf-8") as out:
            for line in self.lines():
                out.write(line + "\n")
        temporary.replace(target)

    def lines(self) -> Iterator[str]:
        yield json.dumps({"type": "meta", "format": history_format, **self.meta}, sort_keys=True)
        for op in self.ops:
            yield json.dumps({"type": "op", **op.to_json()}, sort_keys=True)
        for sample in self.statuses:
            yield json.dumps({"type": "status", **asdict(sample)}, sort_keys=True)
        for fault in self.faults:
            yield json.dumps({"type": "fault", **fault.to_json()}, sort_keys=True)
        for state in self.final:
            yield json.dumps({"type": "final", **state.to_json()}, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> History:
        with open(path, encoding="utf-8") as source:
            return cls.from_lines(source)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> History:
        history = cls()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            record = json.loads(line)
            kind = record.pop("type", None)
            if kind == "meta":
                found = record.pop("format", None)
                if found != history_format:
                    raise ValueError(f"line {number}: history format {found}, this build reads {history_format}")
                history.meta = record
            elif kind == "op":
                history.ops.append(Op.from_json(record))
            elif kind == "status":
                history.statuses.append(StatusSample(**record))
            elif kind == "fault":
                history.faults.append(FaultRecord.from_json(record))
            elif kind == "final":
                history.final.append(MemberState.from_json(record))
            else:
                raise ValueError(f"line {number}: unknown record type {kind!r}")
        return history


class HistoryRecorder:
    """Records operations from many worker threads (and status samples, and faults)."""

    def __init__(
        self,
        *,
        ops_max: int = ops_max_default,
        status_samples_max: int = status_samples_max_default,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._lock = threading.Lock()
        self._ops: list[Op] = []
        self._statuses: list[StatusSample] = []
        self._last_status: dict[str, StatusSample] = {}
        self._faults: list[FaultRecord] = []
        self.ops_max = ops_max
        self.status_samples_max = status_samples_max
        self.status_samples_dropped = 0
        self.clock_ns = clock_ns

    def invoke(
        self,
        process: str,
        kind: Kind,
        pool: str,
        *,
        claim: str | None = None,
        args: Mapping[str, Any] | None = None,
        key: str | None = None,
        deadline_s: float | None = None,
    ) -> int:
        """Record the start of an operation; returns its id for `ok` / `fail` / `unknown`."""
        with self._lock:
            if len(self._ops) >= self.ops_max:
                raise HistoryFull(f"the history holds {self.ops_max} operations")
            op_id = len(self._ops)
            self._ops.append(
                Op(
                    op_id=op_id,
                    process=process,
                    kind=Kind(kind),
                    pool=pool,
                    claim=claim,
                    args=dict(args or {}),
                    key=key,
                    invoke_ns=self.clock_ns(),
                    deadline_ns=int(deadline_s * 1e9) if deadline_s is not None else None,
                )
            )
            return op_id

    def _complete(self, op_id: int, outcome: Outcome, result: Mapping[str, Any] | None, code: str | None) -> Op:
        now = self.clock_ns()
        with self._lock:
            op = self._ops[op_id]
            if op.outcome is not Outcome.PENDING:
                raise ValueError(f"operation {op_id} is complete already ({op.outcome.value})")
            done = replace(op, complete_ns=now, outcome=outcome, result=dict(result or {}), code=code)
            self._ops[op_id] = done
            return done

    def ok(self, op_id: int, result: Mapping[str, Any] | None = None) -> Op:
        return self._complete(op_id, Outcome.OK, result, None)

    def fail(self, op_id: int, code: str) -> Op:
        return self._complete(op_id, Outcome.FAIL, None, code)

    def unknown(self, op_id: int, reason: str) -> Op:
        return self._complete(op_id, Outcome.UNKNOWN, None, reason)

    def history_op(self, op_id: int) -> Op:
        """One recorded operation as it stands now."""
        with self._lock:
            return self._ops[op_id]

    @property
    def ops_count(self) -> int:
        with self._lock:
            return len(self._ops)

    def record_status(self, member: str, status: Mapping[str, Any]) -> None:
        """Keep a status sample if it differs from this member's previous one (bounded)."""
        sample = StatusSample.from_status(member, self.clock_ns(), status)
        with self._lock:
            previous = self._last_status.get(member)
            if previous is not None and previous.same_observation(sample):
                return
            self._last_status[member] = sample
            if len(self._statuses) >= self.status_samples_max:
                self.status_samples_dropped += 1
                return
            self._statuses.append(sample)

    def record_fault(self, fault: FaultRecord) -> None:
        with self._lock:
            if len(self._faults) < faults_max:
                self._faults.append(fault)

    def history(self, meta: Mapping[str, Any] | None = None, final: Iterable[MemberState] = ()) -> History:
        """A copy of everything so far. Operations still pending are reported as they are."""
        with self._lock:
            return History(
                ops=list(self._ops),
                statuses=list(self._statuses),
                faults=list(self._faults),
                final=list(final),
                meta=dict(meta or {}),
            )
