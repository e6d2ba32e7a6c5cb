"""IPClaim and IPAllocation: a workload asks for addresses and gets them in the same command.

A claim names a pool (`poolRef`) or a class (`className`; neither means the default class) and
asks for a prefix length, a specific `address` (a host block) or a specific `cidr`, or nothing
(the class's or pool's default length). Creating it carves the block and writes both the claim
and its IPAllocation record; the answer carries `status.allocatedCIDR`.

Claims are idempotent by name: the same name, spec and labels again returns the existing claim;
another spec or other labels under the same name is `already_exists` (`errors.already_exists`).
A spec asking for what the claim holds in other words is the same spec
(`_asks_for_what_it_holds`).

Deleting a claim with `reclaimPolicy: Delete` frees the block at once. With `Retain` the
allocation stays, phase `Released`, reserved to the same tenant: creating a claim with the same
namespace and name and a compatible spec binds it again (a workload gets its address back).

Class resolution is deterministic: pools backing the class that the tenant can see, the
tenant's own project's pools first, then its org's shared pools, then platform pools, each
group in key order; the first one with room wins. `internal` pools (pools.py) are never seen
by a tenant nor by an admin acting for one, so a tenant's claim (or service) through a class
never lands in one; only the platform admin's own claims may.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

from statemachine import buddy, classes, keys, pools, relabel
from statemachine.addresses import FAMILY_BITS, Block, check_not_ipv4_mapped, parse_address, parse_cidr
from statemachine.codec import ROLE_MEMBER, Principal, dump_record, dump_records_of_items, loads
from statemachine.context import ADDED, MODIFIED, Context, Encoder, format_uid, parse_uid, rfc3339
from statemachine.errors import (
    CONFLICT,
    NOT_FOUND,
    POOL_EXHAUSTED,
    InvariantViolation,
    Rejected,
    already_exists,
    invalid,
    tenant_object_not_found,
)
from statemachine.fields import check_labels, check_map, check_name, opt_choice, opt_int, opt_str
from statemachine.policy import RECLAIM_DELETE, RECLAIM_POLICIES, RECLAIM_RETAIN, check_length_allowed
from statemachine.view import ReadView, prefix_end

KIND: Final = "IPClaim"
ALLOCATION_KIND: Final = "IPAllocation"
DEFAULT_NAMESPACE: Final = "default"
PHASE_BOUND: Final = "Bound"
PHASE_RELEASED: Final = "Released"

class_pools_tried_max = 64  # pools of one class considered per claim: bounds the work of a claim

_body_fields: Final = ("name", "namespace", "labels", "spec")
_spec_fields: Final = ("poolRef", "className", "prefixLength", "address", "cidr", "reclaimPolicy")


def check_spec(value: Any) -> tuple[dict[str, Any], Block | None]:
    """The claim's spec as stored (only what was asked, normalised) and its specific block, if any."""
    spec_in = check_map(value, "spec", _spec_fields)
    spec: dict[str, Any] = {}
    pool_ref = opt_str(spec_in, "poolRef", "spec.poolRef")
    class_name = opt_str(spec_in, "className", "spec.className")
    if pool_ref is not None and class_name is not None:
        raise invalid("give spec.poolRef or spec.className, not both", "spec.className")
    if pool_ref is not None:
        spec["poolRef"] = pool_ref
    if class_name is not None:
        spec["className"] = check_name(class_name, "spec.className")
    sizes = [field for field in ("prefixLength", "address", "cidr") if spec_in.get(field) is not None]
    if len(sizes) > 1:
        # The field named is the second one given: removing it leaves a valid choice.
        raise invalid(
            f"give at most one of spec.prefixLength, spec.address, spec.cidr (got {', '.join(sizes)})",
            f"spec.{sizes[1]}",
        )
    specific: Block | None = None
    if spec_in.get("address") is not None:
        specific = parse_address(spec_in["address"], "spec.address")
        check_not_ipv4_mapped(specific, "spec.address")
        spec["address"] = str(specific).split("/")[0]
    elif spec_in.get("cidr") is not None:
        specific = parse_cidr(spec_in["cidr"], "spec.cidr")
        check_not_ipv4_mapped(specific, "spec.cidr")
        spec["cidr"] = str(specific)
    elif spec_in.get("prefixLength") is not None:
        spec["prefixLength"] = opt_int(spec_in, "prefixLength", "spec.prefixLength", 0, 128)
    reclaim = opt_choice(spec_in, "reclaimPolicy", "spec.reclaimPolicy", RECLAIM_POLICIES)
    if reclaim is not None:
        spec["reclaimPolicy"] = reclaim
    return spec, specific


def _load(view: ReadView, key: bytes) -> dict[str, Any] | None:
    raw = view.get(key)
    return None if raw is None else decode_record(key, raw)


def class_candidates(ctx: Context, spec: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[bytes, dict[str, Any]]]]:
    class_name = spec.get("className") or classes.default_class_name(ctx.ov)
    if class_name is None:
        raise invalid(
            "there is no default IPClass: name spec.poolRef or spec.className",
            "spec.className",
        )
    ip_class = classes.load(ctx.ov, class_name)
    if ip_class is None or not classes.visible(ip_class, ctx.principal):
        if not spec.get("className"):  # the default class is restricted to other orgs: do not name it
            raise invalid(
                "there is no default IPClass for your org: name spec.poolRef or spec.className", "spec.className"
            )
        raise Rejected(NOT_FOUND, f"IPClass {class_name} not found", {"kind": classes.KIND, "name": class_name})
    # The choice among backing pools is made as the tenant sees them, even when an admin acts
    # for the tenant: an admin's claim must not land in another project's private pool, nor
    # (pools.visible) in an internal pool.
    chooser = ctx.principal
    if chooser.is_admin and chooser.has_tenant:
        chooser = Principal(chooser.name, chooser.org, chooser.project, ROLE_MEMBER)
    ranked: list[tuple[int, bytes, dict[str, Any]]] = []
    prefix = keys.class_index_prefix(class_name)
    for index_key, _ in ctx.ov.scan(prefix, prefix_end(prefix)):
        pool_key = keys.POOL + index_key[len(prefix) :]
        pool = pools.load(ctx.ov, pool_key)
        if pool is None:
            raise InvariantViolation(f"class index names missing pool {pool_key!r}")
        if not pools.visible(pool, chooser):
            continue
        metadata = pool["metadata"]
        if metadata["org"] == ctx.principal.org and metadata["project"] == ctx.principal.project:
            rank = 0
        elif metadata["org"] and metadata["org"] == ctx.principal.org:
            rank = 1
        else:
            rank = 2
        ranked.append((rank, pool_key, pool))
    ranked.sort(key=lambda item: (item[0], item[1]))
    candidates = [(pool_key, pool) for _, pool_key, pool in ranked[:class_pools_tried_max]]
    if not candidates:
        raise Rejected(
            NOT_FOUND,
            f"no IPPool that this tenant can use backs IPClass {class_name}",
            {"kind": classes.KIND, "name": class_name},
        )
    return ip_class, candidates


def _size_field(spec: dict[str, Any]) -> str:
    """The field that sets the claim's size, to name in a refusal about it: the specific
    `address` or `cidr`, else `prefixLength` (also when the default length was taken, since
    giving one is the fix)."""
    if "address" in spec:
        return "spec.address"
    if "cidr" in spec:
        return "spec.cidr"
    return "spec.prefixLength"


def _wanted_length(spec: dict[str, Any], specific: Block | None, policy_source: dict[str, Any]) -> int:
    if specific is not None:
        return specific.length
    if "prefixLength" in spec:
        return int(spec["prefixLength"])
    return int(policy_source["spec"]["allocation"]["defaultPrefixLength"])


def _check_fits_family(length: int, specific: Block | None, family: str, what: str, field_path: str) -> None:
    if specific is not None and specific.family != family:
        raise invalid(f"{specific} is {specific.family} but {what} is {family}", field_path)
    if length > FAMILY_BITS[family]:
        raise invalid(f"prefix length /{length} is too long for {what} ({family})", "spec.prefixLength")


def _take(
    ctx: Context, pool: dict[str, Any], length: int, specific: Block | None, strategy: str, owner: bytes
) -> tuple[Block | None, buddy.PoolState]:
    state = pools.load_state(ctx.ov, pool)
    if specific is not None:
        if not state.block.contains(specific) or not buddy.claim_block(ctx.ov, state, specific, owner):
            return None, state
        return specific, state
    return buddy.allocate(ctx.ov, state, length, strategy, owner), state


def _asks_for_what_it_holds(
    ctx: Context, existing: dict[str, Any], spec: dict[str, Any], specific: Block | None
) -> bool:
    """Whether a create under an existing claim's name asks for what that claim holds, so it
    answers the claim rather than `already_exists`: the same spec, or one that differs only in
    how it says it. A default written out (`reclaimPolicy`, the pool's or class's default
    `prefixLength`, the default class's name), an address given as a /32 (/128) `cidr` or the
    other way round, and another name of the same pool all ask for the same thing, as pools'
    own "same spec again" compares them with their defaults filled in (exploratory testing,
    2026-12-07: a controller writing defaults out got `already_exists`). Judged on the state
    now: a name that resolves elsewhere now (a pool of the tenant's own shadowing a platform
    pool) is another request."""
    held = existing["spec"]
    if held == spec:
        return True
    status = existing["status"]
    if ("poolRef" in spec) != ("poolRef" in held):
        return False
    source: dict[str, Any] | None
    if "poolRef" in spec:
        try:
            pool_key, source = pools.resolve(ctx.ov, ctx.principal, spec["poolRef"], "spec.poolRef")
        except Rejected:
            return False
        if pools.pool_id_of_key(pool_key) != status["pool"]:
            return False
        default_reclaim = RECLAIM_DELETE
    else:
        class_name = spec.get("className") or classes.default_class_name(ctx.ov)
        source = None if class_name is None else classes.load(ctx.ov, class_name)
        if source is None or class_name != status["className"]:
            return False
        default_reclaim = source["spec"]["reclaimPolicy"]
    if spec.get("reclaimPolicy", default_reclaim) != status["reclaimPolicy"]:
        return False
    held_specific = "address" in held or "cidr" in held
    if (specific is not None) != held_specific:
        return False  # a specific block and a size are different requests, even when they met
    allocated = parse_cidr(status["allocatedCIDR"], "status.allocatedCIDR")
    if specific is not None:
        return specific == allocated
    length = spec.get("prefixLength", source["spec"]["allocation"]["defaultPrefixLength"])
    return bool(length == allocated.length)


def _resolve_for_claim(ctx: Context, pool_ref: str, alloc_key: bytes) -> tuple[bytes, dict[str, Any]]:
    """The pool a claim's `poolRef` names, as the principal sees it; and also, when an allocation
    retained under the claim's name is in that very pool (named by its full id), that pool
    though the principal cannot see it. Before 2026-12-07 an admin acting for one project could
    claim from another project's `consumer` pool (pools.visible); a retained allocation made so
    is freed only by binding it again, which must not be refused for the visibility that
    stopped new claims there."""
    try:
        return pools.resolve(ctx.ov, ctx.principal, pool_ref, "spec.poolRef")
    except Rejected as refusal:
        retained = _load(ctx.ov, alloc_key)
        if retained is None or retained["spec"]["pool"] != pool_ref:
            raise
        not_visible = refusal
    pool_key = pools.key_of_pool_id(pool_ref)
    pool = pools.load(ctx.ov, pool_key)
    if pool is None:  # a pool holding an allocation cannot be deleted
        raise InvariantViolation(f"a retained allocation names missing pool {pool_ref} ({not_visible.message})")
    return pool_key, pool


def create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    check_map(body, "", _body_fields)
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    labels = check_labels(body.get("labels"), "labels")
    spec, specific = check_spec(body.get("spec"))
    principal = ctx.principal
    claim_key = keys.claim_key(principal.org, principal.project, namespace, name)
    alloc_key = keys.alloc_key(principal.org, principal.project, namespace, name)

    existing = _load(ctx.ov, claim_key)
    if existing is not None:
        same_spec = _asks_for_what_it_holds(ctx, existing, spec, specific)
        same_labels = existing["metadata"]["labels"] == labels
        if same_spec and same_labels:
            return existing, False
        held = existing["status"]["allocatedCIDR"]
        raise already_exists(
            f"IPClaim {namespace}/{name} already exists",
            same_spec,
            same_labels,
            "an IPClaim's spec cannot be changed: delete it first",
            f" (it holds {held})",
            labels_patchable=True,
            name=name,
            namespace=namespace,
            allocatedCIDR=held,
        )

    # Where may the block come from, and under which policy?
    ip_class: dict[str, Any] | None = None
    sized_by = _size_field(spec)  # the field a refusal about the size or place names
    if "poolRef" in spec:
        candidates = [_resolve_for_claim(ctx, spec["poolRef"], alloc_key)]
    else:
        ip_class, candidates = class_candidates(ctx, spec)
    if ip_class is not None:
        class_name: str | None = ip_class["metadata"]["name"]
        length = _wanted_length(spec, specific, ip_class)
        _check_fits_family(length, specific, ip_class["spec"]["ipFamily"], f"IPClass {class_name}", sized_by)
        check_length_allowed(length, ip_class["spec"]["allocation"], f"IPClass {class_name}", sized_by)
        strategy = ip_class["spec"]["allocation"]["strategy"]
        reclaim = spec.get("reclaimPolicy", ip_class["spec"]["reclaimPolicy"])
        usable = [
            (key, pool)
            for key, pool in candidates
            if pool_allows(pool, length) and (specific is None or pools.block_of(pool).contains(specific))
        ]
        if not usable:
            raise invalid(
                f"no pool backing IPClass {class_name} can hold a /{length}"
                + (f" at {specific}" if specific is not None else ""),
                sized_by,
            )
    else:
        class_name = None
        pool_key, pool = candidates[0]
        pool_ref = pools.pool_id_of_key(pool_key)
        length = _wanted_length(spec, specific, pool)
        _check_fits_family(length, specific, pool["status"]["ipFamily"], f"IPPool {pool_ref}", sized_by)
        check_length_allowed(length, pool["spec"]["allocation"], f"IPPool {pool_ref}", sized_by)
        if specific is not None and not pools.block_of(pool).contains(specific):
            raise invalid(f"{specific} is outside IPPool {pool_ref} ({pool['status']['allocatedCIDR']})", sized_by)
        strategy = pool["spec"]["allocation"]["strategy"]
        reclaim = spec.get("reclaimPolicy", RECLAIM_DELETE)
        usable = candidates

    retained = _load(ctx.ov, alloc_key)
    if retained is not None:
        return _rebind(ctx, name, namespace, labels, spec, retained, usable, length, specific, reclaim, class_name)

    pool_ref, block = carve(ctx, usable, length, specific, strategy, alloc_key, class_name)
    org, project = principal.org, principal.project
    allocation = {
        "kind": ALLOCATION_KIND,
        "metadata": ctx.metadata(name, ctx.new_uid(), labels, namespace=namespace, org=org, project=project),
        "spec": {
            "pool": pool_ref,
            "cidr": str(block),
            "claimRef": name,
            "className": class_name,
            "reclaimPolicy": reclaim,
        },
        "status": {"phase": PHASE_BOUND},
    }
    _write(ctx, alloc_key, allocation, ADDED)
    claim = {
        "kind": KIND,
        "metadata": ctx.metadata(name, ctx.new_uid(), labels, namespace=namespace, org=org, project=project),
        "spec": spec,
        "status": _claim_status(allocation),
    }
    _write(ctx, claim_key, claim, ADDED)
    return claim, True


def carve(
    ctx: Context,
    usable: list[tuple[bytes, dict[str, Any]]],
    length: int,
    specific: Block | None,
    strategy: str,
    owner: bytes,
    class_name: str | None,
) -> tuple[str, Block]:
    """Take the block from the first usable pool with room: (pool id, block), or refuse."""
    largest_free: list[int] = []
    for pool_key, pool in usable:
        block, state = _take(ctx, pool, length, specific, strategy, owner)
        if block is not None:
            state.allocated += block.size
            state.allocations += 1
            pools.save_state(ctx, state)
            return pools.pool_id_of_key(pool_key), block
        if specific is not None and buddy.holder(ctx.ov, state, specific) == buddy.OWNER_RESERVED:
            pool_ref = pools.pool_id_of_key(pool_key)
            raise Rejected(
                CONFLICT,
                f"{specific} is reserved in IPPool {pool_ref} (spec.reserved or spec.excluded); claim another address",
                {"cidr": str(specific), "pool": pool_ref, "reason": "reserved"},
            )
        largest = buddy.largest_free_prefix(state)
        if largest is not None:
            largest_free.append(largest)
    if specific is not None:
        # A block may be taken only in part (one address of a /64): "not free" says no more than is known.
        said = (
            "is already allocated"
            if specific.length == specific.bits
            else "is not free: all or part of it is allocated"
        )
        raise Rejected(CONFLICT, f"{specific} {said}", {"cidr": str(specific), "reason": "allocated"})
    if class_name is None:
        raise pools.exhausted(pools.pool_id_of_key(usable[0][0]), length, state)
    best = min(largest_free) if largest_free else None
    said = f"/{best}" if best is not None else "none (all are full)"
    raise Rejected(
        POOL_EXHAUSTED,
        f"no pool backing IPClass {class_name} has a free /{length}; the largest free prefix among them is {said}",
        {"className": class_name, "prefixLength": length, "largestFreePrefix": best},
    )


def pool_allows(pool: dict[str, Any], length: int) -> bool:
    allocation = pool["spec"]["allocation"]
    return bool(allocation["minPrefixLength"] <= length <= allocation["maxPrefixLength"])


def _claim_status(allocation: dict[str, Any]) -> dict[str, Any]:
    spec = allocation["spec"]
    return {
        "phase": PHASE_BOUND,
        "allocatedCIDR": spec["cidr"],
        "allocationRef": allocation["metadata"]["name"],
        "pool": spec["pool"],
        "className": spec["className"],
        "reclaimPolicy": spec["reclaimPolicy"],
    }


def _rebind(
    ctx: Context,
    name: str,
    namespace: str,
    labels: dict[str, str],
    spec: dict[str, Any],
    retained: dict[str, Any],
    usable: list[tuple[bytes, dict[str, Any]]],
    length: int,
    specific: Block | None,
    reclaim: str,
    class_name: str | None,
) -> tuple[dict[str, Any], bool]:
    """A claim re-created under the name of a retained allocation gets that allocation back."""
    held = parse_cidr(retained["spec"]["cidr"], "spec.cidr")
    pool_refs = [pools.pool_id_of_key(key) for key, _ in usable]
    compatible = (
        retained["status"]["phase"] == PHASE_RELEASED
        and retained["spec"]["pool"] in pool_refs
        and held.length == length
        and (specific is None or specific == held)
    )
    if not compatible:
        raise Rejected(
            CONFLICT,
            f"IPAllocation {namespace}/{name} is retained for this claim name ({held} in IPPool "
            f"{retained['spec']['pool']}); create the claim with a spec that matches it to bind it again",
            {"allocation": name, "cidr": str(held), "pool": retained["spec"]["pool"]},
        )
    principal = ctx.principal
    labels_before = retained["metadata"]["labels"]
    retained["metadata"]["labels"] = labels
    retained["spec"]["reclaimPolicy"] = reclaim
    retained["spec"]["className"] = class_name
    retained["status"] = {"phase": PHASE_BOUND}
    alloc_key = keys.alloc_key(principal.org, principal.project, namespace, name)
    _write(ctx, alloc_key, retained, MODIFIED, labels_before if labels_before != labels else None)
    claim = {
        "kind": KIND,
        "metadata": ctx.metadata(
            name, ctx.new_uid(), labels, namespace=namespace, org=principal.org, project=principal.project
        ),
        "spec": spec,
        "status": _claim_status(retained),
    }
    _write(ctx, keys.claim_key(principal.org, principal.project, namespace, name), claim, ADDED)
    return claim, True


def _claim_and_allocation(
    ctx: Context, namespace: str, name: str
) -> tuple[bytes, dict[str, Any], bytes, dict[str, Any]]:
    """(claim key, claim, allocation key, allocation) of the principal's claim, or not_found."""
    principal = ctx.principal
    claim_key = keys.claim_key(principal.org, principal.project, namespace, name)
    claim = _load(ctx.ov, claim_key)
    if claim is None:
        raise tenant_object_not_found(KIND, namespace, name, principal.acts_for_platform, True)
    alloc_key = keys.alloc_key(principal.org, principal.project, namespace, name)
    allocation = _load(ctx.ov, alloc_key)
    if allocation is None:
        raise InvariantViolation(f"IPClaim {namespace}/{name} has no allocation")
    return claim_key, claim, alloc_key, allocation


def update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Change the claim's labels (relabel.py), and its allocation's with them: an allocation
    carries the labels of the claim it was made for (see `_rebind`)."""
    patch = relabel.check_patch(body, KIND, namespaced=True, default_namespace=DEFAULT_NAMESPACE)
    name = check_name(patch.name, "name")
    namespace = patch.namespace
    claim_key, claim, alloc_key, allocation = _claim_and_allocation(ctx, namespace, name)
    labels = relabel.patched_labels(claim, patch, f"IPClaim {namespace}/{name}")
    if labels is None:
        return claim
    labels_before = claim["metadata"]["labels"]
    claim["metadata"]["labels"] = labels
    _write(ctx, claim_key, claim, MODIFIED, labels_before)
    allocation_labels_before = allocation["metadata"]["labels"]
    allocation["metadata"]["labels"] = labels
    _write(ctx, alloc_key, allocation, MODIFIED, allocation_labels_before)
    return claim


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_map(body, "", ("name", "namespace"))
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    claim_key, claim, alloc_key, allocation = _claim_and_allocation(ctx, namespace, name)
    if allocation["spec"]["reclaimPolicy"] == RECLAIM_RETAIN:
        allocation["status"] = {"phase": PHASE_RELEASED}
        _write(ctx, alloc_key, allocation, MODIFIED)
    else:
        pool = pools.load(ctx.ov, pools.key_of_pool_id(allocation["spec"]["pool"]))
        if pool is None:
            raise InvariantViolation(f"IPAllocation {namespace}/{name} names missing pool {allocation['spec']['pool']}")
        state = pools.load_state(ctx.ov, pool)
        block = parse_cidr(allocation["spec"]["cidr"], "spec.cidr")
        buddy.release(ctx.ov, state, block, alloc_key)
        state.allocated -= block.size
        state.allocations -= 1
        pools.save_state(ctx, state)
        _delete(ctx, alloc_key, allocation)
    _delete(ctx, claim_key, claim)
    return claim


# ---- the stored form -------------------------------------------------------------------------
#
# A big state holds millions of claims and allocations, so their records are stored compactly
# and the public object is rebuilt on read: a positional array, without what the key already
# says (kind, name, namespace, org, project) nor the references that always equal the name
# (`status.allocationRef`, `spec.claimRef`); the uid as its 10 bytes and the creation time as
# whole seconds. That is about 60-70 bytes instead of 260-290 (bench/footprint.py measures it).
# Their watch events are logged in the same form, prefixed with the object's key (an event has
# no key of its own); queries.events_after rebuilds them. A claim answered to a request id is
# remembered in that form too (`compact_answer`, machine.py's dedup record).
#
# Decoding is exact: the rebuilt dict has the same fields, values and field order as the object
# that was written, so a read answers what the write answered. An object whose shape the array
# could not carry exactly (none that this code builds; perhaps one read from a record an earlier
# build wrote) is stored, logged and remembered as the map it is, and every reader accepts a map.


def _write(
    ctx: Context, key: bytes, obj: dict[str, Any], event_type: str, labels_before: dict[str, str] | None = None
) -> None:
    """`ctx.write_object`, with the record and its watch event in the compact form."""
    ctx.write_encoded(key, obj["kind"], obj, event_type, _compact_encoder(key), labels_before)


def _delete(ctx: Context, key: bytes, obj: dict[str, Any]) -> None:
    """`ctx.delete_object`, with the watch event in the compact form."""
    ctx.delete_encoded(key, obj["kind"], obj, _compact_encoder(key))


# The last claim whose compact event was made, with that encoding: the command's answer is
# usually that very claim, and `compact_answer` reuses the bytes (the same ones it would make)
# instead of building them again. Keyed by identity, like `Context.encoding_of`; it holds one
# small object, and a stale entry only costs the rebuild.
_last_compact: list[tuple[dict[str, Any], bytes]] = []  # at most one entry


def _compact_encoder(key: bytes) -> Encoder:
    """(record, event) of a claim or allocation stored under key: the compact array, and the
    same array after the key (an event has no key of its own); or the map twice when its shape
    does not fit the array. The public encoding is never made: nothing stores it."""

    def encode(obj: dict[str, Any]) -> tuple[bytes, bytes]:
        plain = _plain(key, obj)
        if plain is None:
            raw = dump_record(obj)
            return raw, raw
        record, event = dump_records_of_items(plain, key)  # the event: the record after the key
        if obj["kind"] == KIND:
            _last_compact[:] = [(obj, event)]
        return record, event

    return encode


def _plain(key: bytes, obj: dict[str, Any]) -> list[Any] | None:
    """The compact form of a claim or allocation, or None when its shape does not fit it."""
    try:
        return _claim_plain(key, obj) if obj["kind"] == KIND else _allocation_plain(key, obj)
    except _NotStorable:
        return None


def decode_record(key: bytes, raw: bytes) -> dict[str, Any]:
    """The public IPClaim or IPAllocation object stored under key (`claim/...` or `alloc/...`)."""
    plain = loads(raw)
    if isinstance(plain, dict):
        return dict(plain)
    return _decode(key, plain)


def decode_event_object(raw: bytes) -> dict[str, Any]:
    """The public object of an IPClaim or IPAllocation watch event (see `_compact_last_event`)."""
    return dict(decode_answer(loads(raw)))


def compact_answer(value: dict[str, Any]) -> bytes | None:
    """An IPClaim answer (claim.create's or claim.delete's) in the compact event form, for the
    dedup record; None for any other answer, which is stored as it is."""
    if value.get("kind") != KIND:
        return None
    for known, encoded in _last_compact:
        if known is value:
            return encoded
    metadata = value["metadata"]
    key = keys.claim_key(metadata["org"], metadata["project"], metadata["namespace"], metadata["name"])
    plain = _plain(key, value)
    return None if plain is None else dump_record([key, *plain])


def decode_answer(plain: Any) -> dict[str, Any]:
    """The answer a dedup record holds: a map as it is, or a claim made by `compact_answer`."""
    if isinstance(plain, dict):
        return plain
    return _decode(plain[0], plain[1:])


def _decode(key: bytes, plain: list[Any]) -> dict[str, Any]:
    if key.startswith(keys.CLAIM):
        return _decode_claim(key, plain)
    if key.startswith(keys.ALLOC):
        return _decode_allocation(key, plain)
    raise InvariantViolation(f"{key!r} is not a claim or allocation key")


_metadata_fields: Final = [
    "name",
    "namespace",
    "org",
    "project",
    "uid",
    "resourceVersion",
    "labels",
    "creationTimestamp",
]
_object_fields: Final = ["kind", "metadata", "spec", "status"]
_claim_status_fields: Final = ["phase", "allocatedCIDR", "allocationRef", "pool", "className", "reclaimPolicy"]
_allocation_spec_fields: Final = ["pool", "cidr", "claimRef", "className", "reclaimPolicy"]
_allocation_status_fields: Final = ["phase"]


class _NotStorable(Exception):
    """The object's shape does not fit the compact form; it is stored as a map instead."""


def _not_storable(key: bytes, why: str) -> _NotStorable:
    return _NotStorable(f"cannot store {key!r} compactly: {why}")


def _metadata_in(key: bytes, prefix: bytes, obj: dict[str, Any]) -> list[Any]:
    """uid, resourceVersion, labels, creation time; checking the rest is what the key says."""
    metadata = obj["metadata"]
    if list(obj) != _object_fields or list(metadata) != _metadata_fields:
        raise _not_storable(key, f"fields {list(obj)} / metadata {list(metadata)}")
    org, project, namespace, name = keys.split_path(key, prefix)
    if [metadata["name"], metadata["namespace"], metadata["org"], metadata["project"]] != [
        name,
        namespace,
        org,
        project,
    ]:
        raise _not_storable(key, "its metadata names another object")
    return [
        _uid_in(metadata["uid"]),
        metadata["resourceVersion"],
        metadata["labels"],
        _time_in(metadata["creationTimestamp"]),
    ]


def _metadata_out(key: bytes, prefix: bytes, uid: Any, revision: int, labels: Any, created: Any) -> dict[str, Any]:
    org, project, namespace, name = keys.split_path(key, prefix)
    return {
        "name": name,
        "namespace": namespace,
        "org": org,
        "project": project,
        "uid": format_uid(uid) if isinstance(uid, bytes) else uid,
        "resourceVersion": revision,
        "labels": labels,
        "creationTimestamp": rfc3339(created * 1000) if isinstance(created, int) else created,
    }


def _uid_in(uid: Any) -> Any:
    """The uid's bytes when they render back to the same text (always, for uids made here)."""
    if not isinstance(uid, str):
        raise _NotStorable(f"uid {uid!r} is not text")
    try:
        raw = parse_uid(uid)
    except ValueError:
        return uid
    return raw if format_uid(raw) == uid else uid


def _time_in(timestamp: Any) -> Any:
    """Whole seconds since the epoch when they render back to the same text (always, for
    timestamps made by `context.rfc3339`); else the text itself."""
    if not isinstance(timestamp, str):
        raise _NotStorable(f"creationTimestamp {timestamp!r} is not text")
    return _seconds_of(timestamp)


@lru_cache(maxsize=64)  # a pure function of its argument; the claims of one second share it
def _seconds_of(timestamp: str) -> int | str:
    try:
        year, month, day = int(timestamp[0:4]), int(timestamp[5:7]), int(timestamp[8:10])
        hour, minute, second = int(timestamp[11:13]), int(timestamp[14:16]), int(timestamp[17:19])
    except ValueError:
        return timestamp
    if not (1 <= month <= 12 and year >= 1970):
        return timestamp
    # Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm), integers only.
    shifted = year - 1 if month <= 2 else year
    era = shifted // 400
    yoe = shifted - era * 400
    doy = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    seconds = days * 86400 + hour * 3600 + minute * 60 + second
    return seconds if seconds >= 0 and rfc3339(seconds * 1000) == timestamp else timestamp


def _ref_in(key: bytes, ref: Any, name: str) -> str | None:
    if not isinstance(ref, str):
        raise _not_storable(key, f"reference {ref!r} is not a name")
    return None if ref == name else ref


def _claim_plain(key: bytes, claim: dict[str, Any]) -> list[Any]:
    head = _metadata_in(key, keys.CLAIM, claim)
    spec, status = claim["spec"], claim["status"]
    if list(status) != _claim_status_fields:
        raise _not_storable(key, f"status fields {list(status)}")
    spec_values = [spec.get(field) for field in _spec_fields]
    if [field for field in _spec_fields if field in spec] != list(spec) or None in spec.values():
        raise _not_storable(key, f"spec fields {list(spec)}")
    name = claim["metadata"]["name"]
    return [
        *head,
        *spec_values,
        status["phase"],
        status["allocatedCIDR"],
        _ref_in(key, status["allocationRef"], name),
        status["pool"],
        status["className"],
        status["reclaimPolicy"],
    ]


def _decode_claim(key: bytes, plain: list[Any]) -> dict[str, Any]:
    metadata = _metadata_out(key, keys.CLAIM, *plain[:4])
    spec_values = plain[4 : 4 + len(_spec_fields)]
    phase, cidr, ref, pool, class_name, reclaim = plain[4 + len(_spec_fields) :]
    return {
        "kind": KIND,
        "metadata": metadata,
        "spec": {field: value for field, value in zip(_spec_fields, spec_values, strict=True) if value is not None},
        "status": {
            "phase": phase,
            "allocatedCIDR": cidr,
            "allocationRef": metadata["name"] if ref is None else ref,
            "pool": pool,
            "className": class_name,
            "reclaimPolicy": reclaim,
        },
    }


def _allocation_plain(key: bytes, allocation: dict[str, Any]) -> list[Any]:
    head = _metadata_in(key, keys.ALLOC, allocation)
    spec, status = allocation["spec"], allocation["status"]
    if list(spec) != _allocation_spec_fields or list(status) != _allocation_status_fields:
        raise _not_storable(key, f"spec fields {list(spec)}, status fields {list(status)}")
    name = allocation["metadata"]["name"]
    return [
        *head,
        spec["pool"],
        spec["cidr"],
        _ref_in(key, spec["claimRef"], name),
        spec["className"],
        spec["reclaimPolicy"],
        status["phase"],
    ]


def _decode_allocation(key: bytes, plain: list[Any]) -> dict[str, Any]:
    metadata = _metadata_out(key, keys.ALLOC, *plain[:4])
    pool, cidr, ref, class_name, reclaim, phase = plain[4:]
    return {
        "kind": ALLOCATION_KIND,
        "metadata": metadata,
        "spec": {
            "pool": pool,
            "cidr": cidr,
            "claimRef": metadata["name"] if ref is None else ref,
            "className": class_name,
            "reclaimPolicy": reclaim,
        },
        "status": {"phase": phase},
    }
