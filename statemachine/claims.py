"""IPClaim and IPAllocation: a workload asks for addresses and gets them in the same command.

A claim names a pool (`poolRef`) or a class (`className`; neither means the default class) and
asks for a prefix length, a specific `address` (a host block) or a specific `cidr`, or nothing
(the class's or pool's default length). Creating it carves the block and writes both the claim
and its IPAllocation record; the answer carries `status.allocatedCIDR`.

Claims are idempotent by name: the same name and spec again returns the existing claim; another
spec under the same name is `already_exists`.

Deleting a claim with `reclaimPolicy: Delete` frees the block at once. With `Retain` the
allocation stays, phase `Released`, reserved to the same tenant: creating a claim with the same
namespace and name and a compatible spec binds it again (a workload gets its address back).

Class resolution is deterministic: pools backing the class that the tenant can see, the
tenant's own project's pools first, then its org's shared pools, then platform pools, each
group in key order; the first one with room wins.
"""

from __future__ import annotations

from typing import Any

from statemachine import buddy, classes, keys, pools
from statemachine.addresses import FAMILY_BITS, Block, parse_address, parse_cidr
from statemachine.codec import ROLE_MEMBER, Principal, loads
from statemachine.context import ADDED, MODIFIED, Context
from statemachine.errors import (
    ALREADY_EXISTS,
    CONFLICT,
    NOT_FOUND,
    POOL_EXHAUSTED,
    InvariantViolation,
    Rejected,
    invalid,
)
from statemachine.fields import check_labels, check_map, check_name, opt_choice, opt_int, opt_str
from statemachine.policy import RECLAIM_DELETE, RECLAIM_POLICIES, RECLAIM_RETAIN, check_length_allowed
from statemachine.view import ReadView, prefix_end

KIND = "IPClaim"
ALLOCATION_KIND = "IPAllocation"
DEFAULT_NAMESPACE = "default"
PHASE_BOUND = "Bound"
PHASE_RELEASED = "Released"

class_pools_tried_max = 64  # pools of one class considered per claim: bounds the work of a claim

_body_fields = ("name", "namespace", "labels", "spec")
_spec_fields = ("poolRef", "className", "prefixLength", "address", "cidr", "reclaimPolicy")


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
        raise invalid(
            f"give at most one of spec.prefixLength, spec.address, spec.cidr (got {', '.join(sizes)})", "spec"
        )
    specific: Block | None = None
    if spec_in.get("address") is not None:
        specific = parse_address(spec_in["address"], "spec.address")
        spec["address"] = str(specific).split("/")[0]
    elif spec_in.get("cidr") is not None:
        specific = parse_cidr(spec_in["cidr"], "spec.cidr")
        spec["cidr"] = str(specific)
    elif spec_in.get("prefixLength") is not None:
        spec["prefixLength"] = opt_int(spec_in, "prefixLength", "spec.prefixLength", 0, 128)
    reclaim = opt_choice(spec_in, "reclaimPolicy", "spec.reclaimPolicy", RECLAIM_POLICIES)
    if reclaim is not None:
        spec["reclaimPolicy"] = reclaim
    return spec, specific


def _load(view: ReadView, key: bytes) -> dict[str, Any] | None:
    raw = view.get(key)
    return None if raw is None else dict(loads(raw))


def class_candidates(ctx: Context, spec: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[bytes, dict[str, Any]]]]:
    class_name = spec.get("className") or classes.default_class_name(ctx.ov)
    if class_name is None:
        raise invalid(
            "there is no default IPClass: name spec.poolRef or spec.className",
            "spec.className",
        )
    ip_class = classes.load(ctx.ov, class_name)
    if ip_class is None or not classes.visible(ip_class, ctx.principal):
        raise Rejected(NOT_FOUND, f"IPClass {class_name} not found", {"kind": classes.KIND, "name": class_name})
    # The choice among backing pools is made as the tenant sees them, even when an admin acts
    # for the tenant: an admin's claim must not land in another project's private pool.
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


def _wanted_length(spec: dict[str, Any], specific: Block | None, policy_source: dict[str, Any]) -> int:
    if specific is not None:
        return specific.length
    if "prefixLength" in spec:
        return int(spec["prefixLength"])
    return int(policy_source["spec"]["allocation"]["defaultPrefixLength"])


def _check_fits_family(length: int, specific: Block | None, family: str, what: str) -> None:
    if specific is not None and specific.family != family:
        raise invalid(f"{specific} is {specific.family} but {what} is {family}", "spec")
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
        if existing["spec"] == spec:
            return existing, False
        raise Rejected(
            ALREADY_EXISTS,
            f"IPClaim {namespace}/{name} already exists with a different spec "
            f"(it holds {existing['status']['allocatedCIDR']})",
            {"name": name, "namespace": namespace, "allocatedCIDR": existing["status"]["allocatedCIDR"]},
        )

    # Where may the block come from, and under which policy?
    ip_class: dict[str, Any] | None = None
    if "poolRef" in spec:
        candidates = [pools.resolve(ctx.ov, principal, spec["poolRef"], "spec.poolRef")]
    else:
        ip_class, candidates = class_candidates(ctx, spec)
    if ip_class is not None:
        class_name: str | None = ip_class["metadata"]["name"]
        length = _wanted_length(spec, specific, ip_class)
        _check_fits_family(length, specific, ip_class["spec"]["ipFamily"], f"IPClass {class_name}")
        check_length_allowed(length, ip_class["spec"]["allocation"], f"IPClass {class_name}", "spec")
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
                "spec",
            )
    else:
        class_name = None
        pool_key, pool = candidates[0]
        pool_ref = pools.pool_id_of_key(pool_key)
        length = _wanted_length(spec, specific, pool)
        _check_fits_family(length, specific, pool["status"]["ipFamily"], f"IPPool {pool_ref}")
        check_length_allowed(length, pool["spec"]["allocation"], f"IPPool {pool_ref}", "spec")
        if specific is not None and not pools.block_of(pool).contains(specific):
            raise invalid(f"{specific} is outside IPPool {pool_ref} ({pool['status']['allocatedCIDR']})", "spec")
        strategy = pool["spec"]["allocation"]["strategy"]
        reclaim = spec.get("reclaimPolicy", RECLAIM_DELETE)
        usable = candidates

    retained = _load(ctx.ov, alloc_key)
    if retained is not None:
        return _rebind(ctx, name, namespace, labels, spec, retained, usable, length, specific, reclaim, class_name)

    pool_ref, block = carve(ctx, usable, length, specific, strategy, alloc_key, class_name)
    scope = {"namespace": namespace, "org": principal.org, "project": principal.project}
    allocation = {
        "kind": ALLOCATION_KIND,
        "metadata": ctx.metadata(name, ctx.new_uid(), labels, **scope),
        "spec": {
            "pool": pool_ref,
            "cidr": str(block),
            "claimRef": name,
            "className": class_name,
            "reclaimPolicy": reclaim,
        },
        "status": {"phase": PHASE_BOUND},
    }
    ctx.write_object(alloc_key, ALLOCATION_KIND, allocation, ADDED)
    claim = {
        "kind": KIND,
        "metadata": ctx.metadata(name, ctx.new_uid(), labels, **scope),
        "spec": spec,
        "status": _claim_status(allocation),
    }
    ctx.write_object(claim_key, KIND, claim, ADDED)
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
        raise Rejected(CONFLICT, f"{specific} is already allocated", {"cidr": str(specific), "reason": "allocated"})
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
    retained["metadata"]["labels"] = labels
    retained["spec"]["reclaimPolicy"] = reclaim
    retained["spec"]["className"] = class_name
    retained["status"] = {"phase": PHASE_BOUND}
    ctx.write_object(
        keys.alloc_key(principal.org, principal.project, namespace, name), ALLOCATION_KIND, retained, MODIFIED
    )
    claim = {
        "kind": KIND,
        "metadata": ctx.metadata(
            name, ctx.new_uid(), labels, namespace=namespace, org=principal.org, project=principal.project
        ),
        "spec": spec,
        "status": _claim_status(retained),
    }
    ctx.write_object(keys.claim_key(principal.org, principal.project, namespace, name), KIND, claim, ADDED)
    return claim, True


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_map(body, "", ("name", "namespace"))
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    principal = ctx.principal
    claim_key = keys.claim_key(principal.org, principal.project, namespace, name)
    alloc_key = keys.alloc_key(principal.org, principal.project, namespace, name)
    claim = _load(ctx.ov, claim_key)
    if claim is None:
        raise Rejected(NOT_FOUND, f"IPClaim {namespace}/{name} not found", {"kind": KIND, "name": name})
    allocation = _load(ctx.ov, alloc_key)
    if allocation is None:
        raise InvariantViolation(f"IPClaim {namespace}/{name} has no allocation")
    if allocation["spec"]["reclaimPolicy"] == RECLAIM_RETAIN:
        allocation["status"] = {"phase": PHASE_RELEASED}
        ctx.write_object(alloc_key, ALLOCATION_KIND, allocation, MODIFIED)
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
        ctx.delete_object(alloc_key, ALLOCATION_KIND, allocation)
    ctx.delete_object(claim_key, KIND, claim)
    return claim
