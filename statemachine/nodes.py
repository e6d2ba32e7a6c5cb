"""Nodes: the worker machines pods are scheduled onto. Platform objects; only admins write them.

A node registers with its capacity (CPU millicores, memory bytes, max pods), labels, taints and
zone, and names a platform-owned IPPool (`spec.podPool`, visibility `platform` or `internal`;
an `internal` pool is the one to use, since tenants can neither see nor exhaust it, and only the
platform admin, acting for no tenant, can name it): registering carves the node's pod CIDR from
that pool with the same buddy allocator claims use, in the same apply. Pods take their
addresses from the pod CIDR in rotation, the next free one after the last handed out, as
Kubernetes' host-local IPAM does, so a freed address is the last to be handed out again; they
are kept as a bit set in the node's scheduling record (`NodeState.pod_addresses`,
`take_pod_address`; a node registered by a build before 2026-12-07 keeps the buddy allocator of
its own, keyed by its uid, that it was given then, and hands out its lowest free address). The CIDR's
first address is reserved for the node itself (its bridge or gateway), so `capacity.pods` may
be at most the CIDR's size minus one, and a node with room for a pod always has a free pod
address.

Per node, the scheduler keeps one compact record (`NodeState`, key `nst/<name>`): readiness,
schedulability, capacity, what bound pods use, the labels and taints the filters read, and the
nomination (a pending pod that reserved this node's capacity; see scheduler.py). Binding a pod
rewrites only that record, never the Node object, so nodes produce watch events when they
change (register, condition, cordon, drain, delete), not on every bind; `status.allocated` is
computed on read.

The zone is also a label (`topology.kubernetes.io/zone`) and the name is `kubernetes.io/hostname`,
stored with the node's own labels and set only by registration (BUILTIN_LABELS), so selectors,
affinity and list and watch selectors can use them, as in Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from statemachine import buddy, keys, pools
from statemachine.addresses import FAMILY_BITS, IPV4, Block
from statemachine.buddy import FIRST_FIT, PoolState
from statemachine.codec import Principal, dump_record, loads
from statemachine.context import Context, format_uid, parse_uid
from statemachine.errors import FORBIDDEN, InvariantViolation, Rejected, invalid
from statemachine.fields import (
    check_label_key,
    check_label_value,
    check_labels,
    check_map,
    check_node_name,
    check_resource_version,
    labels_max,
    list_items_max,
    opt_bool,
    opt_choice,
    opt_int,
    opt_str,
)
from statemachine.policy import check_length_allowed
from statemachine.quotas import cpu_millis_max, memory_bytes_max
from statemachine.view import ReadView, prefix_end

KIND: Final = "Node"
NO_SCHEDULE: Final = "NoSchedule"
NO_EXECUTE: Final = "NoExecute"
TAINT_EFFECTS: Final = (NO_SCHEDULE, NO_EXECUTE)
# The taint Kubernetes puts on a node whose kubelet stopped reporting; pods that do not tolerate
# it (effect NoExecute) are evicted after the leader's pod eviction timeout (node.evict_unready).
UNREACHABLE_TAINT: Final = "node.kubernetes.io/unreachable"
ZONE_LABEL: Final = "topology.kubernetes.io/zone"
HOSTNAME_LABEL: Final = "kubernetes.io/hostname"
# Set at registration, from the node's name and spec.zone, as a kubelet sets them (and resets
# them when it restarts): a patch may not change them (`builtin_labels`), and registration
# refuses a zone label that disagrees with spec.zone (earlier builds took one).
BUILTIN_LABELS: Final = (HOSTNAME_LABEL, ZONE_LABEL)

node_pods_max = 1024  # capacity.pods ceiling: bounds the work of draining one node
nodes_max = 10_000  # nodes per cluster: bounds a full scheduling search
taints_max = list_items_max
default_pod_cidr_length = {IPV4: 24, "IPv6": 64}
reason_chars_max = 256
_fields_before_nominee_priority = 14  # scheduling records of earlier builds end at nominee_memory
_fields_with_taint_eviction = 17  # records written since 318fcb3 (2026-12-07)
UNTIMED: Final = -1  # NodeState.taint_eviction_ms of a record of an earlier build: its pods are not timed
# pods.priority_max (pods imports this module): the priority a nomination recorded by an earlier
# build is given, so that it keeps holding against every pod.
EARLIER_NOMINEE_PRIORITY: Final = (1 << 31) - 1

_body_fields: Final = ("name", "labels", "spec")
_spec_fields: Final = ("capacity", "taints", "zone", "podPool", "podCIDRPrefixLength", "unschedulable")
_capacity_fields: Final = ("cpuMillis", "memoryBytes", "pods")
_taint_fields: Final = ("key", "value", "effect")


@dataclass(init=False)
class NodeState:
    """What the scheduler reads and writes per node (key `nst/<name>`), as one flat record."""

    # A hand-written __init__, which mypyc compiles (see addresses.Block).
    uid: bytes
    ready: bool
    schedulable: bool
    cpu_capacity: int
    memory_capacity: int
    pods_capacity: int
    cpu_used: int
    memory_used: int
    pods_used: int
    labels: dict[str, str]  # with the zone and hostname labels
    taints: list[list[str]]  # [key, value, effect]
    nominee: bytes | None  # key of the pending pod that reserved this node's capacity
    nominee_cpu: int
    nominee_memory: int
    nominee_priority: int  # pods of higher priority do not count the reservation
    # The pod CIDR's addresses, [family, first address, prefix length, used, last]: bit i of
    # `used` is set while the address first + i is taken (bit 0, the CIDR's first address,
    # always); `last` is the offset of the address handed out last (0: none yet; records written
    # by builds before 1e93455 (2026-12-07) have no `last` and rotate from the start, `pod_address_cursor`). None
    # for a node registered by a build before 2026-12-07, whose addresses are in a buddy
    # allocator of their own (`cidr_state`). See `take_pod_address`.
    pod_addresses: list[Any] | None
    # No later than the earliest time (ms of the replicated clock) at which a bound pod must
    # leave for the node's NoExecute taints, which it tolerates for a time (`tolerationSeconds`);
    # each such pod's own time is the value of its pods-by-node index entry (`index_due_ms`).
    # None: no pod is timed. The leader proposes node.evict_tainted when it passes
    # (node/scheduling.py); an unbind leaves it as it is (earlier than the truth, at worst one
    # proposal that evicts nothing), node.update and node.evict_tainted set it exactly.
    # UNTIMED in records written by builds before 318fcb3 (2026-12-07), whose pods were never
    # timed: such a node times none of its pods until its first node.update times them all.
    taint_eviction_ms: int | None

    def __init__(
        self,
        uid: bytes,
        ready: bool,
        schedulable: bool,
        cpu_capacity: int,
        memory_capacity: int,
        pods_capacity: int,
        cpu_used: int = 0,
        memory_used: int = 0,
        pods_used: int = 0,
        labels: dict[str, str] | None = None,
        taints: list[list[str]] | None = None,
        nominee: bytes | None = None,
        nominee_cpu: int = 0,
        nominee_memory: int = 0,
        nominee_priority: int = 0,
        pod_addresses: list[Any] | None = None,
        taint_eviction_ms: int | None = None,
    ) -> None:
        self.uid = uid
        self.ready = ready
        self.schedulable = schedulable
        self.cpu_capacity = cpu_capacity
        self.memory_capacity = memory_capacity
        self.pods_capacity = pods_capacity
        self.cpu_used = cpu_used
        self.memory_used = memory_used
        self.pods_used = pods_used
        self.labels = {} if labels is None else labels
        self.taints = [] if taints is None else taints
        self.nominee = nominee
        self.nominee_cpu = nominee_cpu
        self.nominee_memory = nominee_memory
        self.nominee_priority = nominee_priority
        self.pod_addresses = pod_addresses
        self.taint_eviction_ms = taint_eviction_ms

    def to_plain(self) -> list[Any]:
        return [
            self.uid,
            self.ready,
            self.schedulable,
            self.cpu_capacity,
            self.memory_capacity,
            self.pods_capacity,
            self.cpu_used,
            self.memory_used,
            self.pods_used,
            self.labels,
            self.taints,
            self.nominee,
            self.nominee_cpu,
            self.nominee_memory,
            self.nominee_priority,
            self.pod_addresses,
            self.taint_eviction_ms,
        ]

    @classmethod
    def from_plain(cls, plain: list[Any]) -> NodeState:
        state = cls(*plain)
        # Records before 318fcb3 have no times. 318fcb3-958e254 kept a list of times there
        # (statemachine/DESIGN.md, "Changing a node"): untimed too, as a wrong type must not
        # reach the comparisons of bind and the leader's timers.
        if len(plain) < _fields_with_taint_eviction or isinstance(state.taint_eviction_ms, list):
            state.taint_eviction_ms = UNTIMED  # saved so until node.update times its pods
        if len(plain) == _fields_before_nominee_priority and state.nominee is not None:
            # A record of an earlier build, whose reservations held against every pod: keep
            # that meaning by giving its nominee the highest priority.
            state.nominee_priority = EARLIER_NOMINEE_PRIORITY
        return state


def load_state(view: ReadView, name: str) -> NodeState | None:
    raw = view.get(keys.node_state_key(name))
    return None if raw is None else NodeState.from_plain(loads(raw))


def save_state(ctx: Context, name: str, state: NodeState) -> None:
    ctx.ov.put(keys.node_state_key(name), dump_record(state.to_plain()))


def load(view: ReadView, name: str) -> dict[str, Any] | None:
    raw = view.get(keys.node_key(name))
    return None if raw is None else dict(loads(raw))


def cidr_state(view: ReadView, state: NodeState) -> PoolState:
    raw = view.get(buddy.state_key(state.uid))
    if raw is None:
        raise InvariantViolation(f"node {state.uid.hex()} has no pod CIDR allocator")
    return PoolState.from_plain(loads(raw))


def allocated(state: NodeState) -> dict[str, Any]:
    return {"cpuMillis": state.cpu_used, "memoryBytes": state.memory_used, "pods": state.pods_used}


def render(view: ReadView, node: dict[str, Any], reader: Principal | None = None) -> dict[str, Any]:
    """The node with what its pods use now, and its nomination, from the scheduling record.

    Every tenant reads nodes, but the nominated pod is named only to the platform (no reader,
    or an admin acting for no tenant) and to the pod's own project: its org, project, namespace
    and name are another tenant's business."""
    state = load_state(view, node["metadata"]["name"])
    if state is None:
        raise InvariantViolation(f"node {node['metadata']['name']} has no scheduling record")
    live: dict[str, Any] = {"allocated": allocated(state)}
    if state.nominee is not None:
        org, project, namespace, name = keys.split_path(state.nominee, keys.POD)
        if reader is None or not reader.has_tenant or (reader.org, reader.project) == (org, project):
            live["nominatedPod"] = f"{org}/{project}/{namespace}/{name}"
    return {**node, "status": {**node["status"], **live}}


# ---- checking the body ---------------------------------------------------------------------------


def _check_taints(value: Any, taints_path: str = "spec.taints") -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"{taints_path} must be a list", taints_path)
    if len(value) > taints_max:
        raise invalid(f"{taints_path} has {len(value)} taints; at most {taints_max} are allowed", taints_path)
    taints: list[dict[str, str]] = []
    seen: list[tuple[str, str]] = []
    for position, item in enumerate(value):
        field_path = f"{taints_path}[{position}]"
        given = check_map(item, field_path, _taint_fields)
        key = opt_str(given, "key", f"{field_path}.key")
        if key is None:
            raise invalid(f"{field_path}.key is required", f"{field_path}.key")
        check_label_key(key, f"{field_path}.key")
        taint_value = opt_str(given, "value", f"{field_path}.value") or ""
        check_label_value(taint_value, f"{field_path}.value")
        effect = opt_choice(given, "effect", f"{field_path}.effect", TAINT_EFFECTS)
        if effect is None:
            raise invalid(f"{field_path}.effect is required (NoSchedule or NoExecute)", f"{field_path}.effect")
        if (key, effect) in seen:
            raise invalid(f"{field_path} repeats taint {key}:{effect}", field_path)
        seen.append((key, effect))
        taints.append({"key": key, "value": taint_value, "effect": effect})
    return taints


def builtin_labels(zone: str | None) -> tuple[str, ...]:
    """The labels of a node with this spec.zone that only registration sets: the hostname, and
    the zone when spec.zone gives it (without one, a zone label is one of the node's own)."""
    return BUILTIN_LABELS if zone is not None else (HOSTNAME_LABEL,)


def check_body(body: dict[str, Any]) -> tuple[str, dict[str, str], dict[str, Any]]:
    """(name, the node's own labels, spec) of a node.register body. Built-in labels given with
    the values registration derives (a node's labels as read back) are left out: they are not
    the node's own, do not count against the limit, and a long name's hostname value may
    exceed a label value's 63 characters."""
    check_map(body, "", _body_fields)
    name = check_node_name(body.get("name"), "name")
    given = check_map(body.get("spec"), "spec", _spec_fields)
    given_zone = given.get("zone")
    derived = {HOSTNAME_LABEL: name, ZONE_LABEL: given_zone}
    given_labels = body.get("labels")
    if isinstance(given_labels, dict):
        given_labels = {key: value for key, value in given_labels.items() if derived.get(key) != value}
    labels = check_labels(given_labels, "labels")
    capacity_in = check_map(given.get("capacity"), "spec.capacity", _capacity_fields)
    cpu = opt_int(capacity_in, "cpuMillis", "spec.capacity.cpuMillis", 1, cpu_millis_max)
    memory = opt_int(capacity_in, "memoryBytes", "spec.capacity.memoryBytes", 1, memory_bytes_max)
    pods = opt_int(capacity_in, "pods", "spec.capacity.pods", 1, node_pods_max)
    if cpu is None or memory is None or pods is None:
        raise invalid("spec.capacity needs cpuMillis, memoryBytes and pods", "spec.capacity")
    zone = opt_str(given, "zone", "spec.zone")
    if zone is not None:
        if not zone:  # a zone named "" groups nothing, and would read as a node without one
            raise invalid("spec.zone must not be empty; leave it out for a node without a zone", "spec.zone")
        check_label_value(zone, "spec.zone")
    pod_pool = opt_str(given, "podPool", "spec.podPool")
    if pod_pool is None:
        raise invalid(
            "spec.podPool is required: the platform or internal IPPool the node's pod CIDR comes from", "spec.podPool"
        )
    spec = {
        "capacity": {"cpuMillis": cpu, "memoryBytes": memory, "pods": pods},
        "taints": _check_taints(given.get("taints")),
        "zone": zone,
        "podPool": pod_pool,
        "podCIDRPrefixLength": opt_int(given, "podCIDRPrefixLength", "spec.podCIDRPrefixLength", 0, 128),
        # Registered cordoned, as Kubernetes' Node spec.unschedulable: a node listed from an
        # inventory before its agent runs takes no pods until `uncordon` (a node is Ready from
        # registration, so pending pods would otherwise bind to it at once).
        "unschedulable": bool(opt_bool(given, "unschedulable", "spec.unschedulable")),
    }
    return name, labels, spec


_update_fields: Final = ("name", "metadata", "spec")
_update_metadata_fields: Final = ("labels", "resourceVersion")
_update_spec_fields: Final = ("taints", "unschedulable")


@dataclass(frozen=True)
class NodeUpdate:
    """A checked node.update body: a JSON merge patch (RFC 7386) of the node's labels, taints
    and cordon, as `kubectl label`, `kubectl taint` and `kubectl cordon` send. None: unchanged."""

    labels: dict[str, str] | None  # the labels after the patch
    taints: list[dict[str, str]] | None
    unschedulable: bool | None
    # A precondition, as in a Kubernetes patch: the node's resourceVersion as the caller read
    # it; the update is refused (conflict) when the node changed since.
    resource_version: int | None


def check_new_zone_label(labels: dict[str, str], zone: str | None) -> None:
    """A new node's zone label, if it gives one, must be its spec.zone (nodes registered by
    earlier builds may have another, and keep it)."""
    if zone is not None and labels.get(ZONE_LABEL, zone) != zone:
        raise invalid(
            f"labels.{ZONE_LABEL} is {labels[ZONE_LABEL]!r} but spec.zone is {zone!r}: give the zone once "
            f"(spec.zone sets the label)",
            f"labels.{ZONE_LABEL}",
        )


def check_update(body: dict[str, Any], labels_now: dict[str, str], zone: str | None) -> NodeUpdate:
    """Labels merge (a null value removes the key), taints are replaced as a whole list (a
    merge patch replaces lists), `unschedulable` is the cordon. A field given as null is
    removed, as RFC 7386 says: no labels, no taints, not cordoned; the built-in labels stay
    (`builtin_labels(zone)`). `labels_now`: the node's labels with its built-in ones
    (`matching_labels`)."""
    check_map(body, "", _update_fields)
    for part in ("metadata", "spec"):
        if part in body and body[part] is None:  # a merge patch's null would remove the whole part
            raise invalid(f"{part} cannot be removed; give the fields of it to change (null removes one)", part)
    metadata = check_map(body.get("metadata"), "metadata", _update_metadata_fields)
    spec = check_map(body.get("spec"), "spec", _update_spec_fields)
    labels: dict[str, str] | None = None
    protected = builtin_labels(zone)
    builtin = {key: labels_now[key] for key in protected if key in labels_now}
    patch = metadata.get("labels")
    if "labels" in metadata and patch is None:
        labels = builtin
    elif patch is not None:
        if not isinstance(patch, dict):
            raise invalid("metadata.labels must be a map of strings (null removes a label)", "metadata.labels")
        merged = dict(labels_now)
        for key, value in patch.items():
            if key in protected and value != builtin.get(key):
                raise invalid(
                    f"label {key} is set at registration, from the node's "
                    f"{'name' if key == HOSTNAME_LABEL else 'spec.zone'}; to change it, register the node again "
                    "(delete it first)",
                    f"metadata.labels.{key}",
                )
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        own = {key: value for key, value in merged.items() if key not in protected}
        if len(own) > labels_max:
            raise invalid(
                f"metadata.labels: the node would have {len(own)} labels after this patch (not counting "
                f"{' and '.join(protected)}); at most {labels_max} are allowed",
                "metadata.labels",
            )
        # Checked with registration's rules and messages.
        check_labels(own, "metadata.labels")
        labels = dict(sorted(merged.items()))
    taints = _check_taints(spec["taints"], "spec.taints") if "taints" in spec else None
    unschedulable = opt_bool(spec, "unschedulable", "spec.unschedulable")
    if "unschedulable" in spec and unschedulable is None:
        unschedulable = False
    resource_version = check_resource_version(metadata.get("resourceVersion"), "metadata.resourceVersion", "the node")
    return NodeUpdate(labels, taints, unschedulable, resource_version)


def no_execute_rows(state: NodeState) -> list[list[str]]:
    """The node's NoExecute taints, as the scheduling record keeps them."""
    return [row for row in state.taints if row[2] == NO_EXECUTE]


def index_value(due_ms: int | None) -> bytes:
    """The pods-by-node index entry's value: the time the pod must leave the node for its
    NoExecute taints, or empty when it need not."""
    return b"" if due_ms is None else due_ms.to_bytes(8, "big")


def index_due_ms(value: bytes) -> int | None:
    return int.from_bytes(value, "big") if value else None


def earlier(due_ms: int | None, other_ms: int | None) -> int | None:
    if due_ms is None:
        return other_ms
    return due_ms if other_ms is None else min(due_ms, other_ms)


def taint_rows(taints: list[dict[str, str]]) -> list[list[str]]:
    """Taints as the scheduling record keeps them (`NodeState.taints`)."""
    return [[taint["key"], taint["value"], taint["effect"]] for taint in taints]


def matching_labels(name: str, labels: dict[str, str], zone: str | None) -> dict[str, str]:
    """The labels filters see: the node's own, plus hostname and zone unless it sets them itself."""
    extra = {HOSTNAME_LABEL: name}
    if zone is not None:
        extra[ZONE_LABEL] = zone
    return dict(sorted({**extra, **labels}.items()))


# ---- the pod CIDR ----------------------------------------------------------------------------


def _check_pod_address_space(ctx: Context, pool: dict[str, Any], pool_ref: str) -> None:
    """One cluster, one pod network: every node's pod pool in the same address space. Pods on
    nodes whose pod pools sat in two address spaces (overlapping ranges, VRF-like) could get the
    same address, which routing between them cannot tell apart. The first node (by name) stands
    for them all, as each was held to this when it registered."""
    first = ctx.ov.first(keys.NODE, prefix_end(keys.NODE))
    if first is None:
        return
    other = loads(first[1])
    other_pool = pools.load(ctx.ov, pools.key_of_pool_id(other["status"]["podPool"]))
    if other_pool is None:
        raise InvariantViolation(
            f"node {other['metadata']['name']} names missing pod pool {other['status']['podPool']}"
        )
    space, other_space = pool["status"]["addressSpace"], other_pool["status"]["addressSpace"]
    if space != other_space:
        raise invalid(
            f"spec.podPool {pool_ref} is in address space {space!r}, but the cluster's pods have addresses in "
            f"{other_space!r} (node {other['metadata']['name']}'s pod pool {other['status']['podPool']}): pod "
            "addresses must be unique across the cluster, so choose a pod pool in that address space",
            "spec.podPool",
        )


def carve_pod_cidr(ctx: Context, name: str, spec: dict[str, Any]) -> tuple[str, Block]:
    """Take the node's pod CIDR from its pod pool (its addresses are kept in the node's
    scheduling record: `NodeState.pod_addresses`)."""
    pool_key, pool = pools.resolve(ctx.ov, ctx.principal, spec["podPool"], "spec.podPool")
    pool_ref = pools.pool_id_of_key(pool_key)
    # resolve() already hid internal pools from an admin acting for a tenant (not_found).
    if pool["metadata"]["org"] or pool["spec"]["visibility"] not in pools.PLATFORM_VISIBILITIES:
        raise Rejected(
            FORBIDDEN,
            f"spec.podPool {pool_ref} is a tenant's pool; nodes take pod CIDRs from platform or internal pools",
        )
    reserved_for = pool["status"].get("allowedOrgs")
    if reserved_for is not None:  # a node runs every tenant's pods: they would get the orgs' addresses
        raise invalid(
            f"spec.podPool {pool_ref} is reserved for {', '.join(reserved_for)} (by its restricted classes, or its "
            "parent's), and a node runs every tenant's pods: choose a pool that is not reserved",
            "spec.podPool",
        )
    _check_pod_address_space(ctx, pool, pool_ref)
    family = pool["status"]["ipFamily"]
    bits = FAMILY_BITS[family]
    length = spec["podCIDRPrefixLength"]
    if length is None:
        length = default_pod_cidr_length[family]
        spec["podCIDRPrefixLength"] = length
    if length > bits - 1:
        raise invalid(
            f"spec.podCIDRPrefixLength must be at most {bits - 1} for an {family} pod pool, not {length}: "
            f"a /{bits - 1} holds the node's own address and one pod",
            "spec.podCIDRPrefixLength",
        )
    check_length_allowed(length, pool["spec"]["allocation"], f"IPPool {pool_ref}", "spec.podCIDRPrefixLength")
    usable = (1 << (bits - length)) - 1
    if spec["capacity"]["pods"] > usable:
        raise invalid(
            f"spec.capacity.pods {spec['capacity']['pods']} exceeds the {usable} pod addresses of a /{length}",
            "spec.capacity.pods",
        )
    parent = pools.load_state(ctx.ov, pool)
    block = buddy.allocate(ctx.ov, parent, length, pool["spec"]["allocation"]["strategy"], keys.node_key(name))
    if block is None:
        raise pools.exhausted(pool_ref, length, parent)
    parent.allocated += block.size
    parent.allocations += 1
    pools.save_state(ctx, parent)
    return pool_ref, block


def pod_address_span(state: NodeState, size: int) -> int:
    """How many offsets of a CIDR of `size` addresses the rotation walks: all of a small CIDR,
    and of a large one (an IPv6 /64) four times the node's pod capacity, at least 256, so the
    bit set stays a few hundred bytes while a freed address still waits for three times the
    node's capacity of other binds before it is handed out again."""
    return min(size, max(pod_address_span_min, 4 * state.pods_capacity))


pod_address_span_min = 256


def pod_address_cursor(pod_addresses: list[Any]) -> int:
    """The offset of the address handed out last (a record of an earlier build has none: 0)."""
    return int(pod_addresses[4]) if len(pod_addresses) > 4 else 0


def take_pod_address(ctx: Context, name: str, state: NodeState, pod_key: bytes) -> Block:
    """Take the next free address of the node's pod CIDR after the one handed out last,
    wrapping to the start (the caller saves `state`). Rotating, as Kubernetes' host-local IPAM
    does, keeps a freed address out of use longest: a node that was cut off may still run the
    evicted or deleted pod that had it, until its agent sees the pod go. A node hands out at
    most its pod capacity of addresses, so the used ones are a small bit set in the scheduling
    record that bind reads and writes anyway: before 2026-12-07 each node's CIDR had a buddy
    allocator of its own, whose state record and free-list records cost a verified placement
    13 % of its instructions (docs/benchmarks.md). Nodes registered then keep it, lowest first."""
    if state.pod_addresses is None:
        cidr = cidr_state(ctx.ov, state)
        taken = buddy.allocate(ctx.ov, cidr, cidr.bits, FIRST_FIT, pod_key)
        if taken is None:
            raise InvariantViolation(f"node {name} has room for a pod but no free pod address")
        cidr.allocated += 1
        cidr.allocations += 1
        pools.save_state(ctx, cidr)
        return taken
    family, first, length, used = state.pod_addresses[:4]
    span = pod_address_span(state, 1 << (FAMILY_BITS[family] - length))
    # Offsets up to the last one handed out count as taken for the first search: the lowest
    # zero bit above them is the next free offset after the cursor.
    ahead = used | ((2 << pod_address_cursor(state.pod_addresses)) - 1)
    offset = (~ahead & (ahead + 1)).bit_length() - 1
    if offset >= span:  # none after the cursor: wrap to the lowest free one
        offset = (~used & (used + 1)).bit_length() - 1
        if offset >= span:
            raise InvariantViolation(f"node {name} has room for a pod but no free pod address")
    state.pod_addresses = [family, first, length, used | 1 << offset, offset]
    return Block(family, first + offset, FAMILY_BITS[family])


def free_pod_address(ctx: Context, name: str, state: NodeState, address: Block, pod_key: bytes) -> None:
    """Give back a pod's address (the caller saves `state`)."""
    if state.pod_addresses is None:
        cidr = cidr_state(ctx.ov, state)
        buddy.release(ctx.ov, cidr, address, pod_key)
        cidr.allocated -= 1
        cidr.allocations -= 1
        pools.save_state(ctx, cidr)
        return
    family, first, length, used = state.pod_addresses[:4]
    offset = address.address - first
    bit = 1 << offset if address.family == family and 0 < offset < 1 << (FAMILY_BITS[family] - length) else 0
    if not used & bit:
        raise InvariantViolation(f"node {name} frees pod address {address}, which it does not hold")
    state.pod_addresses = [family, first, length, used & ~bit, pod_address_cursor(state.pod_addresses)]


def release_pod_cidr(ctx: Context, node: dict[str, Any], state: NodeState) -> None:
    name = node["metadata"]["name"]
    if state.pod_addresses is None:  # a node of an earlier build: drop its own allocator
        own = cidr_state(ctx.ov, state)
        if own.allocations:
            raise InvariantViolation(f"node {name} releases its pod CIDR with pods on it")
        buddy.drop_all(ctx.ov, own)
        ctx.ov.delete(buddy.state_key(state.uid))
        block = own.block
    else:
        family, first, length, used = state.pod_addresses[:4]
        if used != 1:
            raise InvariantViolation(f"node {name} releases its pod CIDR with pods on it")
        block = Block(family, first, length)
    pool = pools.load(ctx.ov, pools.key_of_pool_id(node["status"]["podPool"]))
    if pool is None:
        raise InvariantViolation(f"node {name} names missing pod pool {node['status']['podPool']}")
    parent = pools.load_state(ctx.ov, pool)
    buddy.release(ctx.ov, parent, block, keys.node_key(node["metadata"]["name"]))
    parent.allocated -= block.size
    parent.allocations -= 1
    pools.save_state(ctx, parent)


def new_object(
    ctx: Context, name: str, labels: dict[str, str], spec: dict[str, Any]
) -> tuple[dict[str, Any], NodeState]:
    """Carve the pod CIDR and build the Node object and its scheduling record (not yet written)."""
    uid = ctx.new_uid()
    pool_ref, block = carve_pod_cidr(ctx, name, spec)
    capacity = spec["capacity"]
    # The object shows the built-in labels the filters see, as a kubelet labels its Node (nodes
    # registered by builds before 2026-12-07 show them from their first labelling node.update).
    stored_labels = matching_labels(name, labels, spec["zone"])
    state = NodeState(
        uid=uid,
        ready=True,
        schedulable=not spec["unschedulable"],
        cpu_capacity=capacity["cpuMillis"],
        memory_capacity=capacity["memoryBytes"],
        pods_capacity=capacity["pods"],
        labels=dict(stored_labels),  # the record's own copy: the object keeps stored_labels
        taints=taint_rows(spec["taints"]),
        pod_addresses=[block.family, block.address, block.length, 1, 0],  # the first address is never a pod's
    )
    node = {
        "kind": KIND,
        "metadata": ctx.metadata(name, uid, stored_labels),
        "spec": spec,
        "status": {
            "podCIDR": str(block),
            "podPool": pool_ref,
            "ready": True,
            "conditionReason": "Registered",
            "lastTransitionTimestamp": ctx.timestamp,
        },
    }
    return node, state


def uid_of(node: dict[str, Any]) -> bytes:
    return parse_uid(node["metadata"]["uid"])


def same_uid(node: dict[str, Any], state: NodeState) -> bool:
    return bool(node["metadata"]["uid"] == format_uid(state.uid))
