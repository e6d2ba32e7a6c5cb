"""Typed results: frozen dataclasses parsed from the API's JSON, each keeping the raw dict.

Field names are the API's camelCase names in snake_case (`resourceVersion` ->
`resource_version`). Parsing is tolerant of what a newer server may add (unknown fields are
ignored, and stay in `.raw`) and of fields an older one leaves out (they read as None), but
refuses an answer without the shape every object has (`metadata.name`): that raises
`ProtocolError`, because the caller could not use it anyway.

Watch events carry objects as they were stored at that revision: a pool's `status` there
lacks the live fields (`capacity`, `utilization`, ...) that `get` and `list` compute, so those
read as None in events.
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
    namespace: str | None = None  # claims and allocations; None for cluster-wide kinds
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
    strategy: str | None  # first-fit or best-fit

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
    visibility: str | None  # platform, consumer or shared
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


ApiObject = IPPool | IPClaim | IPAllocation | IPClass | GenericObject

OBJECT_PARSERS: dict[str, Callable[[Any], ApiObject]] = {
    "IPPool": IPPool.parse,
    "IPClaim": IPClaim.parse,
    "IPAllocation": IPAllocation.parse,
    "IPClass": IPClass.parse,
}


def parse_object(raw: Any) -> ApiObject:
    """Any API object, typed by its `kind`."""
    source = _object_map(raw, "an object")
    parser = OBJECT_PARSERS.get(_str(source, "kind") or "", GenericObject.parse)
    return parser(source)


# ---- lists, watch events, member status ------------------------------------------------------


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
    raw: Mapping[str, Any] = field(repr=False, compare=False)

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
            raw=source,
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
