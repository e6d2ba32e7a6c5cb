"""Typed results: frozen dataclasses parsed from the API's JSON, each keeping the raw dict.

Field names are the API's camelCase names in snake_case (`resourceVersion` ->
`resource_version`). Parsing is tolerant of what a newer server may add (unknown fields are
ignored, and stay in `.raw`) and of fields an older one leaves out (they read as None), but
refuses an answer without the shape every object has (`metadata.name`): that raises
`ProtocolError`, because the caller could not use it anyway.

Watch events carry objects as they were stored at that revision: a pool's `status` there
lacks the live fields (`capacity`, `utilization`, ...) that `get` and `list` compute, so those
read as None in events (as do a node's `status.allocated` and a quota's `used`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from client.errors import ProtocolError

T = TypeVar("T")


# ---- tolerant field readers ------------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(source: Mapping[str, Any], key: str) -> str | None:
    value = source.get(key)
    return value if isinstance(value, str) else None


def _int(source: Mapping[str, Any], key: str) -> int | None:
    value = source.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(source: Mapping[str, Any], key: str) -> bool | None:
    value = source.get(key)
    return value if isinstance(value, bool) else None


def _strs(source: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = source.get(key)
    if not isinstance(value, list):
        return ()
    return tuple(item for item in value if isinstance(item, str))


def _object_map(raw: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"expected a JSON object for {what}, got {type(raw).__name__}")
    return raw


# ---- common parts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    uid: str | None
    resource_version: int | None
    namespace: str | None = None  # claims, allocations, pods, services; None for cluster-wide kinds
    org: str | None = None  # "" for platform objects
    project: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    creation_timestamp: str | None = None

    @classmethod
    def parse(cls, raw: Any) -> ObjectMeta:
        metadata = _object_map(raw, "metadata")
        name = _str(metadata, "name")
        if name is None:
            raise ProtocolError("an object without metadata.name")
        labels = {str(key): str(value) for key, value in _map(metadata.get("labels")).items()}
        return cls(
            name=name,
            uid=_str(metadata, "uid"),
            resource_version=_int(metadata, "resourceVersion"),
            namespace=_str(metadata, "namespace"),
            org=_str(metadata, "org"),
            project=_str(metadata, "project"),
            labels=labels,
            creation_timestamp=_str(metadata, "creationTimestamp"),
        )

    @property
    def tenant(self) -> str:
        """`org/project`, or "" for platform and cluster-wide objects."""
        return f"{self.org}/{self.project}" if self.org and self.project else ""


@dataclass(frozen=True)
class AllocationPolicy:
    min_prefix_length: int | None
    max_prefix_length: int | None
    default_prefix_length: int | None
    strategy: str | None  # first-fit, best-fit or next-fit

    @classmethod
    def parse(cls, raw: Any) -> AllocationPolicy:
        source = _map(raw)
        return cls(
            min_prefix_length=_int(source, "minPrefixLength"),
            max_prefix_length=_int(source, "maxPrefixLength"),
            default_prefix_length=_int(source, "defaultPrefixLength"),
            strategy=_str(source, "strategy"),
        )


# ---- IPPool ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPPoolSpec:
    cidr: str | None  # a root pool's block (or a child's specific block)
    parent_pool: str | None  # a child pool's parent
    prefix_length: int | None  # a child pool's size
    ip_family: str | None
    visibility: str | None  # platform, consumer, shared or internal
    class_names: tuple[str, ...]
    allocation: AllocationPolicy
    reserved_leading: int
    reserved_trailing: int
    excluded: tuple[str, ...]
    address_space: str | None
    shared_with: tuple[str, ...]

    @classmethod
    def parse(cls, raw: Any) -> IPPoolSpec:
        spec = _map(raw)
        reserved = _map(spec.get("reserved"))
        return cls(
            cidr=_str(spec, "cidr"),
            parent_pool=_str(spec, "parentPool"),
            prefix_length=_int(spec, "prefixLength"),
            ip_family=_str(spec, "ipFamily"),
            visibility=_str(spec, "visibility"),
            class_names=_strs(spec, "classNames"),
            allocation=AllocationPolicy.parse(spec.get("allocation")),
            reserved_leading=_int(reserved, "leading") or 0,
            reserved_trailing=_int(reserved, "trailing") or 0,
            excluded=_strs(spec, "excluded"),
            address_space=_str(spec, "addressSpace"),
            shared_with=_strs(spec, "sharedWith"),
        )


@dataclass(frozen=True)
class Capacity:
    """Address counts, exact integers (IPv6 pools too)."""

    total: int
    allocated: int
    available: int
    reserved: int

    @classmethod
    def parse(cls, raw: Any) -> Capacity | None:
        source = _map(raw)
        total, allocated, available = _int(source, "total"), _int(source, "allocated"), _int(source, "available")
        if total is None or allocated is None or available is None:
            return None
        return cls(total, allocated, available, _int(source, "reserved") or 0)

    @property
    def used_fraction(self) -> float:
        return self.allocated / self.total if self.total else 0.0


@dataclass(frozen=True)
class IPPoolStatus:
    allocated_cidr: str | None
    phase: str | None  # Ready or Exhausted
    capacity: Capacity | None
    utilization: str | None  # "6.25%", as the server rounds it
    largest_free_prefix: int | None
    allocations: int | None
    child_pools: int | None
    # A platform pool whose classes are all restricted serves only their orgs; empty: open to all.
    allowed_orgs: tuple[str, ...] = ()
    address_space: str | None = None  # the root's, which children share (VRF-like)

    @classmethod
    def parse(cls, raw: Any) -> IPPoolStatus:
        status = _map(raw)
        return cls(
            allocated_cidr=_str(status, "allocatedCIDR"),
            phase=_str(status, "phase"),
            capacity=Capacity.parse(status.get("capacity")),
            utilization=_str(status, "utilization"),
            largest_free_prefix=_int(status, "largestFreePrefix"),
            allocations=_int(status, "allocations"),
            child_pools=_int(status, "childPools"),
            allowed_orgs=_strs(status, "allowedOrgs"),
            address_space=_str(status, "addressSpace"),
        )


@dataclass(frozen=True)
class IPPool:
    metadata: ObjectMeta
    spec: IPPoolSpec
    status: IPPoolStatus
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "IPPool"

    @classmethod
    def parse(cls, raw: Any) -> IPPool:
        source = _object_map(raw, "an IPPool")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            IPPoolSpec.parse(source.get("spec")),
            IPPoolStatus.parse(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- IPClaim ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPClaimSpec:
    pool_ref: str | None
    class_name: str | None
    prefix_length: int | None
    address: str | None
    cidr: str | None
    reclaim_policy: str | None  # Delete or Retain

    @classmethod
    def parse(cls, raw: Any) -> IPClaimSpec:
        spec = _map(raw)
        return cls(
            pool_ref=_str(spec, "poolRef"),
            class_name=_str(spec, "className"),
            prefix_length=_int(spec, "prefixLength"),
            address=_str(spec, "address"),
            cidr=_str(spec, "cidr"),
            reclaim_policy=_str(spec, "reclaimPolicy"),
        )


@dataclass(frozen=True)
class IPClaimStatus:
    allocated_cidr: str | None
    allocation_ref: str | None
    phase: str | None  # Bound
    pool: str | None
    class_name: str | None
    reclaim_policy: str | None

    @classmethod
    def parse(cls, raw: Any) -> IPClaimStatus:
        status = _map(raw)
        return cls(
            allocated_cidr=_str(status, "allocatedCIDR"),
            allocation_ref=_str(status, "allocationRef"),
            phase=_str(status, "phase"),
            pool=_str(status, "pool"),
            class_name=_str(status, "className"),
            reclaim_policy=_str(status, "reclaimPolicy"),
        )


@dataclass(frozen=True)
class IPClaim:
    metadata: ObjectMeta
    spec: IPClaimSpec
    status: IPClaimStatus
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "IPClaim"

    @classmethod
    def parse(cls, raw: Any) -> IPClaim:
        source = _object_map(raw, "an IPClaim")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            IPClaimSpec.parse(source.get("spec")),
            IPClaimStatus.parse(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- IPAllocation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IPAllocationSpec:
    cidr: str | None
    claim_ref: str | None
    pool: str | None
    class_name: str | None
    reclaim_policy: str | None

    @classmethod
    def parse(cls, raw: Any) -> IPAllocationSpec:
        spec = _map(raw)
        return cls(
            cidr=_str(spec, "cidr"),
            claim_ref=_str(spec, "claimRef"),
            pool=_str(spec, "pool"),
            class_name=_str(spec, "className"),
            reclaim_policy=_str(spec, "reclaimPolicy"),
        )


@dataclass(frozen=True)
class IPAllocation:
    metadata: ObjectMeta
    spec: IPAllocationSpec
    phase: str | None  # status.phase: Bound or Released
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "IPAllocation"

    @classmethod
    def parse(cls, raw: Any) -> IPAllocation:
        source = _object_map(raw, "an IPAllocation")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            IPAllocationSpec.parse(source.get("spec")),
            _str(_map(source.get("status")), "phase"),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- PriorityClass ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorityClassSpec:
    value: int | None  # the priority pods naming the class get
    global_default: bool  # given to pods that name neither a class nor a priority
    description: str

    @classmethod
    def parse(cls, raw: Any) -> PriorityClassSpec:
        spec = _map(raw)
        return cls(
            value=_int(spec, "value"),
            global_default=bool(_bool(spec, "globalDefault")),
            description=_str(spec, "description") or "",
        )


@dataclass(frozen=True)
class PriorityClass:
    metadata: ObjectMeta
    spec: PriorityClassSpec
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "PriorityClass"

    @classmethod
    def parse(cls, raw: Any) -> PriorityClass:
        source = _object_map(raw, "a PriorityClass")
        return cls(ObjectMeta.parse(source.get("metadata")), PriorityClassSpec.parse(source.get("spec")), source)

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- IPClass ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class IPClassSpec:
    ip_family: str | None
    allocation: AllocationPolicy
    reclaim_policy: str | None
    visibility: str | None  # platform or restricted
    allowed_orgs: tuple[str, ...]
    is_default: bool

    @classmethod
    def parse(cls, raw: Any) -> IPClassSpec:
        spec = _map(raw)
        return cls(
            ip_family=_str(spec, "ipFamily"),
            allocation=AllocationPolicy.parse(spec.get("allocation")),
            reclaim_policy=_str(spec, "reclaimPolicy"),
            visibility=_str(spec, "visibility"),
            allowed_orgs=_strs(spec, "allowedOrgs"),
            is_default=bool(_bool(spec, "isDefault")),
        )


@dataclass(frozen=True)
class IPClass:
    metadata: ObjectMeta
    spec: IPClassSpec
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "IPClass"

    @classmethod
    def parse(cls, raw: Any) -> IPClass:
        source = _object_map(raw, "an IPClass")
        return cls(ObjectMeta.parse(source.get("metadata")), IPClassSpec.parse(source.get("spec")), source)

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- scheduling: Node ------------------------------------------------------------------------


def _counts(source: Mapping[str, Any], key: str) -> Mapping[str, int]:
    """A map of names to integers (quota limits and usage per class or pool)."""
    return {
        str(name): value
        for name, value in _map(source.get(key)).items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


@dataclass(frozen=True)
class NodeResources:
    """CPU millicores, memory bytes and a pod count: a node's capacity, or what its pods use."""

    cpu_millis: int
    memory_bytes: int
    pods: int

    @classmethod
    def parse(cls, raw: Any) -> NodeResources | None:
        source = _map(raw)
        cpu, memory, pods = _int(source, "cpuMillis"), _int(source, "memoryBytes"), _int(source, "pods")
        if cpu is None or memory is None or pods is None:
            return None
        return cls(cpu, memory, pods)

    def minus(self, other: NodeResources) -> NodeResources:
        return NodeResources(
            self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes, self.pods - other.pods
        )


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule or NoExecute

    @classmethod
    def parse_all(cls, raw: Any) -> tuple[Taint, ...]:
        items = raw if isinstance(raw, list) else []
        return tuple(
            cls(_str(item, "key") or "", _str(item, "value") or "", _str(item, "effect") or "")
            for item in items
            if isinstance(item, dict)
        )

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class NodeSpec:
    capacity: NodeResources | None
    taints: tuple[Taint, ...]
    zone: str | None
    pod_pool: str | None  # the platform IPPool the pod CIDR was carved from, as given
    pod_cidr_prefix_length: int | None
    unschedulable: bool  # cordoned (or drained): no new pods are placed on it

    @classmethod
    def parse(cls, raw: Any) -> NodeSpec:
        spec = _map(raw)
        return cls(
            capacity=NodeResources.parse(spec.get("capacity")),
            taints=Taint.parse_all(spec.get("taints")),
            zone=_str(spec, "zone"),
            pod_pool=_str(spec, "podPool"),
            pod_cidr_prefix_length=_int(spec, "podCIDRPrefixLength"),
            unschedulable=bool(_bool(spec, "unschedulable")),
        )


@dataclass(frozen=True)
class NodeStatus:
    pod_cidr: str | None
    pod_pool: str | None  # the pool's id
    ready: bool | None  # the Ready condition (the leader's verdict from heartbeats)
    condition_reason: str | None  # why it is (not) Ready: Registered, NodeStatusUnknown, ...
    last_transition_timestamp: str | None
    allocated: NodeResources | None  # what bound pods use; only in get and list answers
    nominated_pod: str | None  # org/project/namespace/name of the pending pod holding room here
    evicted_pods: int | None  # only in the answer of a drain, or of an update that leaves NoExecute taints

    @classmethod
    def parse(cls, raw: Any) -> NodeStatus:
        status = _map(raw)
        return cls(
            pod_cidr=_str(status, "podCIDR"),
            pod_pool=_str(status, "podPool"),
            ready=_bool(status, "ready"),
            condition_reason=_str(status, "conditionReason"),
            last_transition_timestamp=_str(status, "lastTransitionTimestamp"),
            allocated=NodeResources.parse(status.get("allocated")),
            nominated_pod=_str(status, "nominatedPod"),
            evicted_pods=_int(status, "evictedPods"),
        )


@dataclass(frozen=True)
class Node:
    metadata: ObjectMeta
    spec: NodeSpec
    status: NodeStatus
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Node"

    @classmethod
    def parse(cls, raw: Any) -> Node:
        source = _object_map(raw, "a Node")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            NodeSpec.parse(source.get("spec")),
            NodeStatus.parse(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def ready(self) -> bool:
        return bool(self.status.ready)

    @property
    def unschedulable(self) -> bool:
        """Cordoned or drained."""
        return self.spec.unschedulable

    @property
    def capacity(self) -> NodeResources | None:
        return self.spec.capacity

    @property
    def pod_cidr(self) -> str | None:
        return self.status.pod_cidr

    @property
    def available(self) -> NodeResources | None:
        """Capacity minus what bound pods use (None where the answer lacks either: a watch event)."""
        if self.spec.capacity is None or self.status.allocated is None:
            return None
        return self.spec.capacity.minus(self.status.allocated)


@dataclass(frozen=True)
class NodeHeartbeat:
    """The answer to a node agent's heartbeat."""

    name: str
    ready: bool | None  # the node's Ready condition as the answering member has it
    member_id: str | None  # the member that took the heartbeat
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: Any) -> NodeHeartbeat:
        source = _object_map(raw, "a node heartbeat")
        name = _str(source, "name")
        if name is None:
            raise ProtocolError("a node heartbeat answer without name")
        return cls(name, _bool(source, "ready"), _str(source, "memberId"), source)


# ---- scheduling: Pod -------------------------------------------------------------------------


@dataclass(frozen=True)
class PodRequests:
    cpu_millis: int
    memory_bytes: int

    @classmethod
    def parse(cls, raw: Any) -> PodRequests | None:
        source = _map(raw)
        cpu, memory = _int(source, "cpuMillis"), _int(source, "memoryBytes")
        if cpu is None or memory is None:
            return None
        return cls(cpu, memory)


@dataclass(frozen=True)
class NodeSelectorRequirement:
    """One required node affinity expression."""

    key: str
    operator: str  # In, NotIn, Exists, DoesNotExist
    values: tuple[str, ...]

    @classmethod
    def parse_all(cls, raw: Any) -> tuple[NodeSelectorRequirement, ...]:
        items = raw if isinstance(raw, list) else []
        return tuple(
            cls(_str(item, "key") or "", _str(item, "operator") or "", _strs(item, "values"))
            for item in items
            if isinstance(item, dict)
        )


@dataclass(frozen=True)
class Toleration:
    key: str  # "" with operator Exists: every taint
    operator: str  # Equal or Exists
    value: str
    effect: str  # "" tolerates both effects
    seconds: int | None = None  # tolerationSeconds (NoExecute): how long it stays on an unreachable node

    @classmethod
    def parse_all(cls, raw: Any) -> tuple[Toleration, ...]:
        items = raw if isinstance(raw, list) else []
        return tuple(
            cls(
                _str(item, "key") or "",
                _str(item, "operator") or "",
                _str(item, "value") or "",
                _str(item, "effect") or "",
                _int(item, "tolerationSeconds"),
            )
            for item in items
            if isinstance(item, dict)
        )


@dataclass(frozen=True)
class PodSpec:
    requests: PodRequests | None
    node_selector: Mapping[str, str]
    node_affinity: tuple[NodeSelectorRequirement, ...]
    tolerations: tuple[Toleration, ...]
    priority: int | None
    scheduling_policy: str | None  # spread or binpack; None: the cluster's
    node_name: str | None  # set when the pod is bound
    priority_class_name: str | None = None  # the PriorityClass its priority came from
    defaulted_requests: tuple[str, ...] = ()  # the requests the project's defaults filled in

    @classmethod
    def parse(cls, raw: Any) -> PodSpec:
        spec = _map(raw)
        return cls(
            requests=PodRequests.parse(spec.get("requests")),
            node_selector={str(key): str(value) for key, value in _map(spec.get("nodeSelector")).items()},
            node_affinity=NodeSelectorRequirement.parse_all(spec.get("nodeAffinity")),
            tolerations=Toleration.parse_all(spec.get("tolerations")),
            priority=_int(spec, "priority"),
            scheduling_policy=_str(spec, "schedulingPolicy"),
            node_name=_str(spec, "nodeName"),
            priority_class_name=_str(spec, "priorityClassName"),
            defaulted_requests=tuple(str(field) for field in spec.get("defaultedRequests") or ()),
        )


@dataclass(frozen=True)
class PodStatus:
    phase: str | None  # Bound or Pending
    pod_ip: str | None
    reason: str | None  # a pending pod's: Unschedulable, QuotaExceeded, Evicted
    message: str | None  # a pending pod's details: which filters failed on how many nodes
    nominated_node_name: str | None  # the node whose room a pending pod holds
    evicted_from: str | None  # the node a drain, or an eviction from a NotReady node, took it off

    @classmethod
    def parse(cls, raw: Any) -> PodStatus:
        status = _map(raw)
        return cls(
            phase=_str(status, "phase"),
            pod_ip=_str(status, "podIP"),
            reason=_str(status, "reason"),
            message=_str(status, "message"),
            nominated_node_name=_str(status, "nominatedNodeName"),
            evicted_from=_str(status, "evictedFrom"),
        )


POD_BOUND = "Bound"
POD_PENDING = "Pending"


@dataclass(frozen=True)
class Pod:
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Pod"

    @classmethod
    def parse(cls, raw: Any) -> Pod:
        source = _object_map(raw, "a Pod")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            PodSpec.parse(source.get("spec")),
            PodStatus.parse(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def phase(self) -> str | None:
        return self.status.phase

    @property
    def bound(self) -> bool:
        return self.status.phase == POD_BOUND

    @property
    def node_name(self) -> str | None:
        return self.spec.node_name

    @property
    def pod_ip(self) -> str | None:
        return self.status.pod_ip

    @property
    def pending_reason(self) -> str | None:
        """Why a pending pod waits (`Unschedulable`, `QuotaExceeded`, `Evicted`); None once bound."""
        return self.status.reason if self.status.phase == POD_PENDING else None


# ---- scheduling: Service ---------------------------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    name: str | None
    port: int
    protocol: str  # TCP, UDP or SCTP

    @classmethod
    def parse_all(cls, raw: Any) -> tuple[ServicePort, ...]:
        items = raw if isinstance(raw, list) else []
        return tuple(
            cls(_str(item, "name"), _int(item, "port") or 0, _str(item, "protocol") or "TCP")
            for item in items
            if isinstance(item, dict)
        )

    def __str__(self) -> str:
        return f"{self.name + '=' if self.name else ''}{self.port}/{self.protocol}"


@dataclass(frozen=True)
class ServiceSpec:
    type: str | None  # ClusterIP or LoadBalancer
    pool_ref: str | None
    class_name: str | None
    address: str | None  # a specific address asked for
    ports: tuple[ServicePort, ...]

    @classmethod
    def parse(cls, raw: Any) -> ServiceSpec:
        spec = _map(raw)
        return cls(
            type=_str(spec, "type"),
            pool_ref=_str(spec, "poolRef"),
            class_name=_str(spec, "className"),
            address=_str(spec, "address"),
            ports=ServicePort.parse_all(spec.get("ports")),
        )


@dataclass(frozen=True)
class ServiceStatus:
    address: str | None  # the address it got
    pool: str | None  # the pool it came from (its id)
    class_name: str | None  # the class, when it came through one

    @classmethod
    def parse(cls, raw: Any) -> ServiceStatus:
        status = _map(raw)
        return cls(_str(status, "address"), _str(status, "pool"), _str(status, "className"))


@dataclass(frozen=True)
class Service:
    metadata: ObjectMeta
    spec: ServiceSpec
    status: ServiceStatus
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Service"

    @classmethod
    def parse(cls, raw: Any) -> Service:
        source = _object_map(raw, "a Service")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            ServiceSpec.parse(source.get("spec")),
            ServiceStatus.parse(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def address(self) -> str | None:
        return self.status.address


# ---- scheduling: Quota -----------------------------------------------------------------------


@dataclass(frozen=True)
class QuotaSpec:
    """Limits; None (or a missing class or pool) is unlimited."""

    cpu_millis: int | None
    memory_bytes: int | None
    pods: int | None
    services: int | None
    addresses_by_class: Mapping[str, int]
    addresses_by_pool: Mapping[str, int]
    default_requests: PodRequests | None  # project quotas: filled into pods that give no requests
    max_priority: int | None = None  # new pods may ask for no higher priority; None: any

    @classmethod
    def parse(cls, raw: Any) -> QuotaSpec:
        spec = _map(raw)
        return cls(
            cpu_millis=_int(spec, "cpuMillis"),
            memory_bytes=_int(spec, "memoryBytes"),
            pods=_int(spec, "pods"),
            services=_int(spec, "services"),
            addresses_by_class=_counts(spec, "addressesByClass"),
            addresses_by_pool=_counts(spec, "addressesByPool"),
            default_requests=PodRequests.parse(spec.get("defaultRequests")),
            max_priority=_int(spec, "maxPriority"),
        )


@dataclass(frozen=True)
class QuotaUsage:
    """What the org or project uses now (bound pods and services; pending pods charge nothing)."""

    cpu_millis: int
    memory_bytes: int
    pods: int
    services: int
    pending_pods: int
    addresses_by_class: Mapping[str, int]
    addresses_by_pool: Mapping[str, int]

    @classmethod
    def parse(cls, raw: Any) -> QuotaUsage | None:
        used = _map(raw)
        if not used:
            return None
        return cls(
            cpu_millis=_int(used, "cpuMillis") or 0,
            memory_bytes=_int(used, "memoryBytes") or 0,
            pods=_int(used, "pods") or 0,
            services=_int(used, "services") or 0,
            pending_pods=_int(used, "pendingPods") or 0,
            addresses_by_class=_counts(used, "addressesByClass"),
            addresses_by_pool=_counts(used, "addressesByPool"),
        )


@dataclass(frozen=True)
class Quota:
    """The limits of one org (name `acme`) or one project (name `acme/web`)."""

    metadata: ObjectMeta
    spec: QuotaSpec
    used: QuotaUsage | None  # status.used; None in watch events
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    kind = "Quota"

    @classmethod
    def parse(cls, raw: Any) -> Quota:
        source = _object_map(raw, "a Quota")
        return cls(
            ObjectMeta.parse(source.get("metadata")),
            QuotaSpec.parse(source.get("spec")),
            QuotaUsage.parse(_map(source.get("status")).get("used")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name


# ---- the scheduler ---------------------------------------------------------------------------

SCHEDULING_POLICIES = ("spread", "binpack")


@dataclass(frozen=True)
class SchedulerStatus:
    """`GET /v1/scheduler`, and the answer to setting the policy or retrying the queue."""

    policy: str | None  # spread or binpack
    nodes: int | None
    pending_pods: int | None
    resource_version: int | None  # only in GET answers
    examined: int | None  # a retry's: pending pods searched again
    bound: int | None  # a retry's: of those, how many bound
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: Any) -> SchedulerStatus:
        source = _object_map(raw, "a scheduler status")
        policy = _str(source, "policy")
        if policy is None:
            raise ProtocolError("a scheduler status without policy")
        return cls(
            policy=policy,
            nodes=_int(source, "nodes"),
            pending_pods=_int(source, "pendingPods"),
            resource_version=_int(source, "resourceVersion"),
            examined=_int(source, "examined"),
            bound=_int(source, "bound"),
            raw=source,
        )


# ---- objects of kinds this client does not model yet -----------------------------------------


@dataclass(frozen=True)
class GenericObject:
    """An object of a kind without its own dataclass here (a newer server's kind)."""

    kind: str
    metadata: ObjectMeta
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: Any) -> GenericObject:
        source = _object_map(raw, "an object")
        return cls(
            _str(source, "kind") or "",
            ObjectMeta.parse(source.get("metadata")),
            _map(source.get("spec")),
            _map(source.get("status")),
            source,
        )

    @property
    def name(self) -> str:
        return self.metadata.name


ApiObject = IPPool | IPClaim | IPAllocation | IPClass | Node | Pod | Service | Quota | PriorityClass | GenericObject

OBJECT_PARSERS: dict[str, Callable[[Any], ApiObject]] = {
    "IPPool": IPPool.parse,
    "IPClaim": IPClaim.parse,
    "IPAllocation": IPAllocation.parse,
    "IPClass": IPClass.parse,
    "Node": Node.parse,
    "Pod": Pod.parse,
    "Service": Service.parse,
    "Quota": Quota.parse,
    "PriorityClass": PriorityClass.parse,
}


def parse_object(raw: Any) -> ApiObject:
    """Any API object, typed by its `kind`."""
    source = _object_map(raw, "an object")
    parser = OBJECT_PARSERS.get(_str(source, "kind") or "", GenericObject.parse)
    return parser(source)


# ---- lists, watch events, member status ------------------------------------------------------


@dataclass(frozen=True)
class WriteAnswer(Generic[T]):
    """A create's or delete's result with what the server said about it."""

    value: T  # the object made or found (create), or as it was (delete)
    created: bool  # this request made the object (HTTP 201), rather than found the identical one
    # Answered from the server's record of an earlier try under the same idempotency key (this
    # call's own lost attempt, or an earlier call's), not by applying the write again.
    replayed: bool


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list; pass `continue_token` to the next `list_page` call (None: last page)."""

    items: tuple[T, ...]
    continue_token: str | None
    resource_version: int | None  # the revision the page was read at
    consistency: str | None  # linearizable or stale
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def parse(cls, raw: Any, parse_item: Callable[[Any], T]) -> Page[T]:
        source = _object_map(raw, "a list")
        items = source.get("items")
        if not isinstance(items, list):
            raise ProtocolError("a list answer without items")
        metadata = _map(source.get("metadata"))
        return cls(
            tuple(parse_item(item) for item in items),
            _str(metadata, "continue") or None,
            _int(metadata, "resourceVersion"),
            _str(metadata, "consistency"),
            source,
        )


@dataclass(frozen=True)
class WatchEvent:
    """A change: `type` is ADDED, MODIFIED or DELETED; `object` is the object at (or, for
    DELETED, just before removal at) `resource_version`."""

    type: str
    kind: str
    object: ApiObject
    resource_version: int
    raw: Mapping[str, Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class MemberStatus:
    """One member's `/v1/status`."""

    member_id: str
    role: str | None  # leader, follower or candidate
    leader: str | None
    term: int | None
    commit_index: int | None
    applied_index: int | None
    revision: int | None
    snapshot_index: int | None
    members: tuple[str, ...]
    has_quorum: bool | None
    digest: str | None
    # The applied index the digest was computed at (in the background, at most a second old):
    # two members' digests are comparable only at the same digest_index.
    digest_index: int | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)
    pid: int | None = None  # the member's process, on its machine
    # Which build the member runs: every member of a cluster must show the same (README, Upgrading).
    build_id: str | None = None
    last_log_index: int | None = None  # above commit_index: entries appended, not committed yet
    quiesced: bool | None = None  # it proposes nothing more (SIGUSR1): it is being stopped
    other_builds: Mapping[str, str] = field(default_factory=dict)  # peers heard lately on another build

    @classmethod
    def parse(cls, raw: Any) -> MemberStatus:
        source = _object_map(raw, "a member status")
        member_id = _str(source, "memberId")
        if member_id is None:
            raise ProtocolError("a member status without memberId")
        return cls(
            member_id=member_id,
            role=_str(source, "role"),
            leader=_str(source, "leader"),
            term=_int(source, "term"),
            commit_index=_int(source, "commitIndex"),
            applied_index=_int(source, "appliedIndex"),
            revision=_int(source, "revision"),
            snapshot_index=_int(source, "snapshotIndex"),
            members=_strs(source, "members"),
            has_quorum=_bool(source, "hasQuorum"),
            digest=_str(source, "digest"),
            digest_index=_int(source, "digestIndex"),
            raw=source,
            pid=_int(source, "pid"),
            build_id=_str(source, "buildId"),
            last_log_index=_int(source, "lastLogIndex"),
            quiesced=_bool(source, "quiesced"),
            other_builds={str(member): str(build) for member, build in _map(source.get("otherBuilds")).items()},
        )


@dataclass(frozen=True)
class MemberReport:
    """What one endpoint said when asked for its status and readiness (`cluster_status`)."""

    endpoint: str
    status: MemberStatus | None  # None: no answer (see `error`)
    ready: bool | None  # /readyz; None when unknown
    error: str | None  # why the member could not be asked; None when it answered

    @property
    def reachable(self) -> bool:
        return self.status is not None
