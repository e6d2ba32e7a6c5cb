"""IPPool: a block of address space, root (a CIDR an admin brings) or child (carved from a parent).

Scope and visibility:
* `platform` pools belong to the platform (empty org and project), are created by admins and
  are usable by every tenant.
* `consumer` pools belong to one project and only it sees them.
* `shared` pools belong to one project and are visible to the projects of its org named in
  `sharedWith` (all of the org's projects when the list is empty).
* `internal` pools belong to the platform like `platform` ones (empty org and project, created
  by admins only) but serve the platform alone: pod CIDRs of nodes, platform ranges. Only an
  admin acting for the platform (no org/project) sees them; every principal with a tenant,
  including an admin acting for one (`?org=&project=`), sees them as absent. So no tenant-owned
  object (claim, service, child pool) can ever hold an internal pool's addresses, and no tenant
  can exhaust them. Consequences, all from `visible`:
  - get, list, watch, `poolRef` of claims and services, `parentPool` of child pools, deletion:
    `not_found` for anyone with a tenant, exactly as for a pool it cannot see;
  - IPClasses: class resolution skips pools the tenant cannot see (claims.class_candidates),
    so a tenant's claim or service through a class backed by an internal pool never lands in
    it (`not_found` when nothing else backs the class); the platform admin's own class claims
    may use it;
  - child pools: only the platform admin can name an internal parent, and it may give the
    child `platform` or `internal` visibility (the child's own visibility governs it; its
    `parentPool` names the parent, which stays `not_found` for tenants);
  - nodes: `spec.podPool` may name a `platform` or an `internal` pool (nodes.carve_pod_cidr).
  Creating one requires an admin (`forbidden` otherwise) acting for the platform (`invalid`,
  `spec.visibility`, when acting for a tenant, who could not see it). Visibility is fixed at
  creation: stored `platform` pools stay visible to every tenant (no migration); to take a
  range away from tenants, create an `internal` pool (or an internal child of a platform pool).
A tenant that cannot see a pool gets `not_found` for it, exactly as if it did not exist.

A child of a tenant's pool belongs to that tenant. A `platform` or `internal` child of a pool
with an org is `invalid` (`spec.visibility`, `details.parentPool`; `forbidden` first for a
member asking for either): a platform child would hand the tenant's range to every tenant, an
internal one would hide part of it from the tenant, and either would keep the tenant from
deleting its own pool (it would still have a child pool the tenant cannot delete). That covers
the platform admin's default too: acting for no tenant, a pool without `visibility` is
`platform`, so the admin acts for the tenant (`?org=&project=`) to carve a child of its pool,
which then belongs to that project (`consumer` by default, or `shared`), as a member's would.
Checked after the "same spec again" answer (like `_check_ipv4_mapped`), so a platform child of
a tenant pool stored by an earlier build still answers an identical re-create.

Pools are referred to by name ("name": the caller's own project first, then the platform),
by "project/name" within the caller's org, or by "org/project/name". A pool's id, shown in
references, is "name" for platform pools and "org/project/name" for tenant pools.

Root pools may not overlap within an address space (`addressSpace`, VRF-like). Child pools
take their block from the parent's buddy allocator, like claims do, and so never overlap. Who
may carve (`_check_carving`): a child of a tenant's pool belongs to that pool's project, carved
by it (or an admin acting for it) at any length inside it, since carving a subnet for a team is
an act of pool design; a project the pool is shared with, or an admin acting for one, not at
all (`forbidden`: it may claim from it). A platform pool is carved by admins at any length and
by tenants only at a length its `allocation` policy allows a claim.
A pool with allocations (bound or retained) or child pools cannot be deleted.

IPv4-mapped IPv6 addresses (::ffff:0:0/96) stand for IPv4 nodes and are never handed out: an
IPv6 pool inside that range is refused, and one that contains it must list it in spec.excluded
(or cover it with spec.reserved), so the allocator holds it as reserved (`_check_ipv4_mapped`).
"""

from __future__ import annotations

from typing import Any, Final

from statemachine import buddy, classes, keys, relabel
from statemachine.addresses import FAMILY_BITS, IPV4_MAPPED, IPV6, Block, overlap_size, parse_cidr, range_to_blocks
from statemachine.buddy import PoolState
from statemachine.codec import Principal, dump_record, loads
from statemachine.context import ADDED, Context, parse_uid
from statemachine.errors import (
    CONFLICT,
    FORBIDDEN,
    NOT_FOUND,
    POOL_EXHAUSTED,
    InvariantViolation,
    Rejected,
    already_exists,
    invalid,
)
from statemachine.fields import check_labels, check_map, check_name, opt_choice, opt_int, opt_str_list
from statemachine.policy import check_allocation, check_length_allowed
from statemachine.view import ReadView, prefix_end

KIND: Final = "IPPool"
VISIBILITY_PLATFORM: Final = "platform"
VISIBILITY_CONSUMER: Final = "consumer"
VISIBILITY_SHARED: Final = "shared"
VISIBILITY_INTERNAL: Final = "internal"
VISIBILITIES: Final = (VISIBILITY_PLATFORM, VISIBILITY_CONSUMER, VISIBILITY_SHARED, VISIBILITY_INTERNAL)
PLATFORM_VISIBILITIES: Final = (VISIBILITY_PLATFORM, VISIBILITY_INTERNAL)  # owned by the platform: no org/project
DEFAULT_ADDRESS_SPACE: Final = "default"
PHASE_READY: Final = "Ready"
PHASE_EXHAUSTED: Final = "Exhausted"

_body_fields: Final = ("name", "labels", "spec")
_spec_fields: Final = (
    "cidr",
    "parentPool",
    "prefixLength",
    "ipFamily",
    "visibility",
    "sharedWith",
    "classNames",
    "allocation",
    "reserved",
    "excluded",
    "addressSpace",
)


# ---- identity and visibility -------------------------------------------------------------


def pool_id(org: str, project: str, name: str) -> str:
    return keys.pool_id(org, project, name)


def pool_id_of_key(key: bytes) -> str:
    org, project, name = keys.split_path(key, keys.POOL)
    return pool_id(org, project, name)


def key_of_pool_id(qualified: str) -> bytes:
    parts = qualified.split("/")
    if len(parts) == 1:
        return keys.pool_key("", "", parts[0])
    org, project, name = parts
    return keys.pool_key(org, project, name)


def visible(pool: dict[str, Any], principal: Principal) -> bool:
    metadata, spec = pool["metadata"], pool["spec"]
    if spec["visibility"] == VISIBILITY_INTERNAL:
        # Only the platform admin: an admin acting for a tenant sees what the tenant sees.
        return principal.acts_for_platform
    if spec["visibility"] == VISIBILITY_PLATFORM:
        allowed = pool["status"].get("allowedOrgs")
        # A platform pool reserved for some orgs (`allowed_orgs`): anyone acting for a tenant,
        # an admin too, sees it only from those orgs, as with restricted classes.
        return allowed is None or principal.acts_for_platform or principal.org in allowed
    if principal.acts_for_platform:
        return True
    # A tenant's pool, seen by a tenant or by an admin acting for one, who sees what the tenant
    # sees: acting for another project, an admin could otherwise claim from a `consumer` pool
    # and leave the owner an allocation it can neither list nor delete (exploratory testing,
    # 2026-12-07).
    if metadata["org"] != principal.org:
        return False
    if metadata["project"] == principal.project:
        return True
    return spec["visibility"] == VISIBILITY_SHARED and (
        not spec["sharedWith"] or principal.project in spec["sharedWith"]
    )


def allowed_orgs(
    listed_classes: list[dict[str, Any]], parent: dict[str, Any] | None, visibility: str
) -> list[str] | None:
    """The orgs a platform or internal pool is reserved for (`status.allowedOrgs`), or None.

    A platform pool whose classes are all restricted serves only their orgs: otherwise a tenant
    of another org could take its addresses by naming the pool, and read the restricted
    classes' names in its spec. One class open to all opens the pool, which that class already
    hands to everyone. A platform or internal child of a reserved pool is reserved to the same
    orgs or fewer, since its addresses are the parent's: an internal pool (which classes never
    route to, so its own classes do not count) carries the reservation on to the platform pools
    carved from it. Fixed at creation: neither classes nor pools change."""
    own: set[str] | None = None
    restricted = [c for c in listed_classes if c["spec"]["visibility"] == classes.VISIBILITY_RESTRICTED]
    if visibility == VISIBILITY_PLATFORM and listed_classes and len(restricted) == len(listed_classes):
        own = {org for c in restricted for org in c["spec"]["allowedOrgs"]}
    inherited = parent["status"].get("allowedOrgs") if parent is not None else None
    if inherited is not None:
        own = set(inherited) if own is None else own & set(inherited)
    return None if own is None else sorted(own)


def owns(pool: dict[str, Any], principal: Principal) -> bool:
    """The pool's owner: its project (a tenant, or an admin acting for it), or an admin acting
    for the platform (for platform and internal pools, the only one). An admin acting for a
    tenant has the tenant's rights: a name resolves to the tenant's own pool first and to a
    platform pool after, so `allot pool delete edge --as acme/web` deleted the platform pool
    `edge` whenever acme/web had none of that name."""
    metadata = pool["metadata"]
    if principal.acts_for_platform:
        return True
    return bool(metadata["org"] == principal.org and metadata["project"] == principal.project)


def _check_carving(
    parent: dict[str, Any], principal: Principal, org: str, project: str, length: int, by_length: bool
) -> None:
    """Who may carve a child (of scope org/project) out of `parent`.

    A child of a tenant's pool belongs to the pool's own project, whoever asks: a project the
    pool is shared with may claim from it but not carve it (`forbidden`), and neither may an
    admin acting for such a project. Its child would be a pool the owner can neither see nor
    delete, and would keep the owner from deleting its own pool. A tenant carving a platform
    pool takes a block of it as a claim would, so the pool's allocation policy bounds the
    child's length (`invalid`); otherwise a child would get round the policy, e.g. a tenant
    taking a whole platform /24 whose admin allowed /30../32 claims. Admins design pools and
    are not bound by it."""
    metadata = parent["metadata"]
    parent_id = pool_id(metadata["org"], metadata["project"], metadata["name"])
    if metadata["org"]:
        if (org, project) == (metadata["org"], metadata["project"]):
            return
        owner = f"{metadata['org']}/{metadata['project']}"
        raise Rejected(
            FORBIDDEN,
            f"IPPool {parent_id} belongs to {owner} and is only shared with {org}/{project} for claims: "
            f"a child of it belongs to {owner}; carve it as {owner} (an admin: ?org={metadata['org']}"
            f"&project={metadata['project']}), or claim from the pool",
            {"parentPool": parent_id},
        )
    if not principal.is_admin:
        field_path = "spec.prefixLength" if by_length else "spec.cidr"
        check_length_allowed(
            length, parent["spec"]["allocation"], f"IPPool {parent_id}'s allocation policy", field_path
        )


def load(view: ReadView, key: bytes) -> dict[str, Any] | None:
    raw = view.get(key)
    return None if raw is None else dict(loads(raw))


def resolve(view: ReadView, principal: Principal, ref: Any, field_path: str) -> tuple[bytes, dict[str, Any]]:
    """Find the pool a reference names, as the principal sees it."""
    if not isinstance(ref, str) or not ref:
        raise invalid(f"{field_path} must be a pool name, project/name or org/project/name", field_path)
    parts = ref.split("/")
    for part in parts:
        check_name(part, field_path)
    candidates: list[bytes]
    if len(parts) == 1:
        candidates = [keys.pool_key(principal.org, principal.project, ref)] if principal.has_tenant else []
        candidates.append(keys.pool_key("", "", ref))
    elif len(parts) == 2:
        candidates = [keys.pool_key(principal.org, parts[0], parts[1])] if principal.org else []
    elif len(parts) == 3:
        candidates = [keys.pool_key(parts[0], parts[1], parts[2])]
    else:
        raise invalid(f"{field_path} {ref!r} has too many '/' parts", field_path)
    for key in candidates:
        pool = load(view, key)
        if pool is not None and visible(pool, principal):
            return key, pool
    raise Rejected(NOT_FOUND, f"IPPool {ref} not found", {"kind": KIND, "name": ref})


def load_state(view: ReadView, pool: dict[str, Any]) -> PoolState:
    raw = view.get(buddy.state_key(parse_uid(pool["metadata"]["uid"])))
    if raw is None:
        raise InvariantViolation(f"IPPool {pool['metadata']['name']} has no allocator state")
    return PoolState.from_plain(loads(raw))


def save_state(ctx: Context, state: PoolState) -> None:
    ctx.ov.put(buddy.state_key(state.uid), dump_record(state.to_plain()))


def block_of(pool: dict[str, Any]) -> Block:
    return parse_cidr(pool["status"]["allocatedCIDR"], "status.allocatedCIDR")


# ---- status ------------------------------------------------------------------------------


def percent(part: int, whole: int) -> str:
    """part/whole as a percentage with two decimals, rounded down, integers only."""
    hundredths = part * 10000 // whole if whole else 0
    return f"{hundredths // 100}.{hundredths % 100:02d}%"


def live_status(view: ReadView, pool: dict[str, Any]) -> dict[str, Any]:
    """The status fields that change with every claim, computed from the allocator state."""
    state = load_state(view, pool)
    largest = buddy.largest_free_prefix(state)
    longest_claim = pool["spec"]["allocation"]["maxPrefixLength"]
    exhausted = largest is None or largest > longest_claim
    return {
        "capacity": {
            "total": state.usable,
            "allocated": state.allocated,
            "available": state.usable - state.allocated,
            "reserved": state.reserved,
        },
        "utilization": percent(state.allocated, state.usable),
        "largestFreePrefix": largest,
        "phase": PHASE_EXHAUSTED if exhausted else PHASE_READY,
        "allocations": state.allocations,
        "childPools": state.child_pools,
    }


def render(view: ReadView, pool: dict[str, Any]) -> dict[str, Any]:
    return {**pool, "status": {**pool["status"], **live_status(view, pool)}}


def exhausted(pool_ref: str, length: int, state: PoolState) -> Rejected:
    largest = buddy.largest_free_prefix(state)
    said = f"/{largest}" if largest is not None else "none (the pool is full)"
    return Rejected(
        POOL_EXHAUSTED,
        f"IPPool {pool_ref} has no free /{length}; its largest free prefix is {said}",
        {"pool": pool_ref, "prefixLength": length, "largestFreePrefix": largest},
    )


# ---- create ------------------------------------------------------------------------------


def _scope(principal: Principal, visibility: str) -> tuple[str, str]:
    """The (org, project) a new pool belongs to, from who asks; checked before the parent pool
    is looked up. Whether a platform-owned pool may be created there is checked once the parent
    is known (`_check_internal_acting`, `_tenant_parent`)."""
    if visibility == VISIBILITY_PLATFORM:
        classes.require_admin(principal, "create a platform pool")
        return "", ""
    if visibility == VISIBILITY_INTERNAL:
        classes.require_admin(principal, "create an internal pool")
        return "", ""
    if not principal.has_tenant:
        raise invalid(
            f"a {visibility} pool belongs to a project: act for a tenant, or use visibility: platform",
            "spec.visibility",
        )
    return principal.org, principal.project


def _check_internal_acting(principal: Principal, visibility: str, parent: dict[str, Any] | None, given: bool) -> None:
    """An internal pool only from an admin acting for the platform. Checked once the parent is
    known, so that an admin acting for a tenant who asks for an internal child of a tenant's pool
    is told that the child belongs to the tenant, not to act for the platform (refused too)."""
    if visibility != VISIBILITY_INTERNAL or not principal.has_tenant:
        return
    if parent is not None and parent["metadata"]["org"]:
        raise _tenant_parent(parent, visibility, given)
    raise invalid(
        f"an internal pool is hidden from tenants, and acting for {principal.org}/{principal.project} "
        "you could not see it: act for the platform (no org/project), or use visibility: platform",
        "spec.visibility",
    )


def _tenant_parent(parent: dict[str, Any], visibility: str, given: bool) -> Rejected:
    """A platform-owned (`platform` or `internal`) child of a tenant's pool, refused.

    A child of a tenant's pool belongs to that tenant: a platform child would hand the tenant's
    range to every tenant, an internal one would hide it from the tenant, and either would keep
    the tenant from deleting its own pool (it would still have a child pool the tenant can
    neither see nor delete). `given` is false when the visibility is the platform admin's
    default, `platform`."""
    metadata = parent["metadata"]
    org, project = metadata["org"], metadata["project"]
    parent_id = pool_id(org, project, metadata["name"])
    said = f"visibility: {visibility}" if given else "visibility: platform (the default when acting for no tenant)"
    return invalid(
        f"IPPool {parent_id} belongs to tenant {org}/{project}, and a child of a tenant's pool belongs to that "
        f"tenant; {said} would make it a platform pool: act for {org}/{project} and use visibility consumer "
        "or shared",
        "spec.visibility",
        parentPool=parent_id,
    )


def _check_overlap_free(view: ReadView, space: str, block: Block) -> None:
    """Refuse a root block that contains, or is contained in, another root of the space."""
    prefix = keys.root_prefix(space, block.family)
    for length in range(0, block.length + 1):
        outer = Block(block.family, block.address & ~((1 << (block.bits - length)) - 1), length)
        holder = view.get(keys.root_key(space, outer))
        if holder is not None:
            raise _overlap(space, block, holder)
    start = prefix + block.address.to_bytes(16, "big")
    after_last = block.last + 1
    end = prefix + after_last.to_bytes(16, "big") if after_last < 1 << 128 else prefix_end(prefix)
    inner = next(view.scan(start, end), None)
    if inner is not None:
        raise _overlap(space, block, inner[1])


def _overlap(space: str, block: Block, holder_key: bytes) -> Rejected:
    holder = pool_id_of_key(holder_key)
    return Rejected(
        CONFLICT,
        f"{block} overlaps root pool {holder} in address space {space}; pick a free range or another addressSpace",
        {"pool": holder, "addressSpace": space},
    )


def _reservations(spec: dict[str, Any], block: Block) -> tuple[dict[str, int], list[Block]]:
    reserved_spec = check_map(spec.get("reserved"), "spec.reserved", ("leading", "trailing"))
    leading = opt_int(reserved_spec, "leading", "spec.reserved.leading", 0, block.size) or 0
    trailing = opt_int(reserved_spec, "trailing", "spec.reserved.trailing", 0, block.size) or 0
    if leading + trailing >= block.size:
        raise invalid(f"reserving {leading} + {trailing} addresses leaves nothing of {block}", "spec.reserved")
    blocks: list[Block] = []
    if leading:
        blocks += range_to_blocks(block.family, block.address, block.address + leading - 1)
    if trailing:
        blocks += range_to_blocks(block.family, block.last - trailing + 1, block.last)
    return {"leading": leading, "trailing": trailing}, blocks


def _exclusions(spec: dict[str, Any], block: Block) -> list[Block]:
    blocks = []
    for position, text in enumerate(opt_str_list(spec, "excluded", "spec.excluded")):
        field_path = f"spec.excluded[{position}]"
        excluded = parse_cidr(text, field_path)
        if not block.contains(excluded):
            raise invalid(f"excluded {excluded} lies outside the pool's {block}", field_path)
        blocks.append(excluded)
    return blocks


def _held_back(spec: dict[str, Any], block: Block) -> list[Block]:
    """The union of the reserved and excluded ranges, as disjoint blocks in address order.

    Ranges may overlap or nest (an exclusion inside another, reserved addresses inside an
    exclusion), as IPAMs let them: what is held back is their union. CIDR blocks either nest
    or are disjoint, so the union is the blocks that lie inside no other."""
    _, reserved = _reservations(spec, block)
    ordered = sorted([*reserved, *_exclusions(spec, block)], key=lambda held: (held.address, -held.size))
    union: list[Block] = []
    for held in ordered:
        if not union or not union[-1].contains(held):
            union.append(held)
    return union


def _check_ipv4_mapped(block: Block, spec_in: dict[str, Any], carved_from: str | None) -> None:
    """Refuse an IPv6 pool that could hand out IPv4-mapped addresses (addresses.IPV4_MAPPED).

    A pool inside the mapped range is refused; a pool containing it must cover it with
    spec.excluded (or spec.reserved). Refusing, rather than excluding the range on the admin's
    behalf, keeps the stored spec exactly what was asked, keeps one mechanism (an excluded range
    is carved as a reserved block, so no claim, child pool, service or pod CIDR can get it) and
    leaves pools stored by earlier builds as they are: a re-created identical pool still answers
    the stored one, since this runs after that check. `carved_from` names the parent when the
    block was chosen by the parent's allocator (a child pool given only a prefixLength); that
    happens only under a parent stored before this check, which does not exclude the range."""
    if block.family != IPV6 or not overlap_size(block, IPV4_MAPPED):
        return
    given = f"IPPool {carved_from} would give this pool {block}, which" if carved_from else f"spec.cidr {block}"
    why = "IPv4-mapped addresses stand for IPv4 nodes and are never handed out as IPv6 addresses (RFC 4291 2.5.5.2)"
    if IPV4_MAPPED.contains(block):
        fix = "give spec.cidr outside it" if carved_from else "create an IPv4 pool for these addresses"
        raise invalid(f"{given} lies inside {IPV4_MAPPED}; {why}: {fix}", "spec.cidr")
    covered = sum(overlap_size(held, IPV4_MAPPED) for held in _held_back(spec_in, block))  # disjoint: no double count
    if covered < IPV4_MAPPED.size:
        if carved_from:
            raise invalid(
                f"{given} contains {IPV4_MAPPED}; {why}: give spec.cidr with '{IPV4_MAPPED}' in spec.excluded",
                "spec.cidr",
            )
        raise invalid(
            f"{given} contains {IPV4_MAPPED}; {why}: add '{IPV4_MAPPED}' to spec.excluded",
            "spec.excluded",
            missing=str(IPV4_MAPPED),
        )


def _check_class_names(ctx: Context, spec: dict[str, Any], family: str) -> tuple[list[str], list[dict[str, Any]]]:
    """The class names the pool lists, and those classes."""
    names = opt_str_list(spec, "classNames", "spec.classNames")
    listed: list[dict[str, Any]] = []
    for position, name in enumerate(names):
        field_path = f"spec.classNames[{position}]"
        check_name(name, field_path)
        ip_class = classes.load(ctx.ov, name)
        if ip_class is None or not classes.visible(ip_class, ctx.principal):
            raise invalid(f"IPClass {name} does not exist; create it first", field_path)
        if ip_class["spec"]["ipFamily"] != family:
            raise invalid(f"IPClass {name} is {ip_class['spec']['ipFamily']} but this pool is {family}", field_path)
        listed.append(ip_class)
    return names, listed


def create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    check_map(body, "", _body_fields)
    name = check_name(body.get("name"), "name")
    labels = check_labels(body.get("labels"), "labels")
    spec_in = check_map(body.get("spec"), "spec", _spec_fields)
    visibility = opt_choice(spec_in, "visibility", "spec.visibility", VISIBILITIES)
    given = visibility is not None
    if visibility is None:
        visibility = VISIBILITY_CONSUMER if ctx.principal.has_tenant else VISIBILITY_PLATFORM
    org, project = _scope(ctx.principal, visibility)
    key = keys.pool_key(org, project, name)

    parent: tuple[bytes, dict[str, Any]] | None = None
    if spec_in.get("parentPool") is not None:
        parent = resolve(ctx.ov, ctx.principal, spec_in["parentPool"], "spec.parentPool")
    _check_internal_acting(ctx.principal, visibility, None if parent is None else parent[1], given)
    if parent is not None:
        parent_block = block_of(parent[1])
        family, space = parent_block.family, parent[1]["status"]["addressSpace"]
        if spec_in.get("addressSpace") is not None:
            raise invalid(
                "a child pool inherits its parent's addressSpace; remove spec.addressSpace", "spec.addressSpace"
            )
        wanted: Block | None = None
        if spec_in.get("cidr") is not None:
            wanted = parse_cidr(spec_in["cidr"], "spec.cidr")
            if not parent_block.contains(wanted):
                raise invalid(f"spec.cidr {wanted} is not inside the parent pool's {parent_block}", "spec.cidr")
        length = opt_int(spec_in, "prefixLength", "spec.prefixLength", parent_block.length, parent_block.bits)
        if wanted is not None and length is not None and length != wanted.length:
            raise invalid(f"spec.prefixLength {length} disagrees with spec.cidr {wanted}", "spec.prefixLength")
        if wanted is None and length is None:
            raise invalid("a child pool needs spec.prefixLength (or a specific spec.cidr)", "spec.prefixLength")
    else:
        classes.require_admin(ctx.principal, "create a root pool (one with spec.cidr and no parentPool)")
        if spec_in.get("cidr") is None:
            raise invalid("a pool needs spec.cidr (root pool) or spec.parentPool (child pool)", "spec.cidr")
        if spec_in.get("prefixLength") is not None:
            raise invalid("spec.prefixLength applies to child pools (with spec.parentPool)", "spec.prefixLength")
        wanted = parse_cidr(spec_in["cidr"], "spec.cidr")
        family = wanted.family
        space = check_name(spec_in.get("addressSpace", DEFAULT_ADDRESS_SPACE), "spec.addressSpace")
    declared_family = opt_choice(spec_in, "ipFamily", "spec.ipFamily", tuple(FAMILY_BITS))
    if declared_family is not None and declared_family != family:
        raise invalid(f"spec.ipFamily is {declared_family} but the pool's block is {family}", "spec.ipFamily")

    shared_with = opt_str_list(spec_in, "sharedWith", "spec.sharedWith")
    for position, shared_project in enumerate(shared_with):
        check_name(shared_project, f"spec.sharedWith[{position}]")
    if shared_with and visibility != VISIBILITY_SHARED:
        raise invalid("spec.sharedWith applies only to visibility: shared", "spec.sharedWith")
    class_names, listed_classes = _check_class_names(ctx, spec_in, family)
    reserved_for: list[str] | None = None
    if visibility in PLATFORM_VISIBILITIES:
        reserved_for = allowed_orgs(listed_classes, None if parent is None else parent[1], visibility)
        if reserved_for == [] and parent is not None:  # only a reserved parent can leave no org
            raise invalid(
                f"IPPool {pool_id_of_key(parent[0])} is reserved for {', '.join(parent[1]['status']['allowedOrgs'])}, "
                "and the classes in spec.classNames serve none of those orgs, so no tenant could use this "
                "pool: list a class that serves one of them, or none",
                "spec.classNames",
            )

    # The block's length is known before allocation, so the policy can be checked first.
    block_length = wanted.length if wanted is not None else int(spec_in["prefixLength"])
    bits = FAMILY_BITS[family]
    spec: dict[str, Any] = {
        "ipFamily": family,
        "visibility": visibility,
        "sharedWith": shared_with,
        "classNames": class_names,
        "allocation": check_allocation(spec_in.get("allocation"), "spec.allocation", block_length, bits),
    }
    if parent is None:
        spec["cidr"] = str(wanted)
        spec["addressSpace"] = space
    else:
        spec["parentPool"] = spec_in["parentPool"]
        if spec_in.get("cidr") is not None:
            spec["cidr"] = str(wanted)
        else:
            spec["prefixLength"] = block_length
    # Reservations are checked against a block of the right size before it is carved.
    trial = wanted if wanted is not None else Block(family, 0, block_length)
    spec["reserved"], _ = _reservations(spec_in, trial)
    spec["excluded"] = [str(b) for b in _exclusions(spec_in, trial)] if wanted is not None else []
    if wanted is None and spec_in.get("excluded"):
        raise invalid("spec.excluded needs a known block: give the child pool a specific spec.cidr", "spec.excluded")

    existing = load(ctx.ov, key)
    if existing is not None:
        same_spec, same_labels = existing["spec"] == spec, existing["metadata"]["labels"] == labels
        if same_spec and same_labels:
            return render(ctx.ov, existing), False
        raise already_exists(
            f"IPPool {pool_id(org, project, name)} already exists",
            same_spec,
            same_labels,
            "an IPPool's spec cannot be changed: delete it first (it must hold no allocations or child pools)",
            labels_patchable=True,
            name=pool_id(org, project, name),
        )
    if parent is not None and visibility in PLATFORM_VISIBILITIES and parent[1]["metadata"]["org"]:
        raise _tenant_parent(parent[1], visibility, given)  # after "same again", as _check_ipv4_mapped
    if parent is not None:
        _check_carving(parent[1], ctx.principal, org, project, block_length, wanted is None)
    if wanted is not None:
        _check_ipv4_mapped(wanted, spec_in, None)

    # Take the block.
    if parent is None:
        if wanted is None:
            raise InvariantViolation("root pool without a block")
        _check_overlap_free(ctx.ov, space, wanted)
        block = wanted
        ctx.ov.put(keys.root_key(space, block), key)
        parent_id = None
    else:
        parent_key, parent_pool = parent
        parent_id = pool_id_of_key(parent_key)
        parent_state = load_state(ctx.ov, parent_pool)
        if wanted is not None:
            if not buddy.claim_block(ctx.ov, parent_state, wanted, key):
                raise Rejected(
                    CONFLICT,
                    f"{wanted} is not free in IPPool {parent_id}",
                    {"pool": parent_id, "cidr": str(wanted)},
                )
            block = wanted
        else:
            strategy = parent_pool["spec"]["allocation"]["strategy"]
            carved = buddy.allocate(ctx.ov, parent_state, block_length, strategy, key)
            if carved is None:
                raise exhausted(parent_id, block_length, parent_state)
            _check_ipv4_mapped(carved, spec_in, parent_id)
            block = carved
        parent_state.allocated += block.size
        parent_state.child_pools += 1
        save_state(ctx, parent_state)

    uid = ctx.new_uid()
    state = PoolState.new(uid, block)
    buddy.init_free(ctx.ov, state)
    for carve in _held_back(spec_in, block):
        if not buddy.claim_block(ctx.ov, state, carve, buddy.OWNER_RESERVED):
            raise InvariantViolation(f"held-back block {carve} of a new pool {block} could not be carved")
        state.reserved += carve.size
    if state.usable <= 0:
        raise invalid("reserved and excluded ranges leave no usable address", "spec.excluded")
    save_state(ctx, state)
    for class_name in class_names:
        ctx.ov.put(keys.class_index_key(class_name, key), b"")

    status: dict[str, Any] = {"allocatedCIDR": str(block), "ipFamily": family, "addressSpace": space}
    if parent_id is not None:
        status["parentPool"] = parent_id
    if reserved_for is not None:
        status["allowedOrgs"] = reserved_for
    pool = {
        "kind": KIND,
        "metadata": ctx.metadata(name, uid, labels, org=org, project=project),
        "spec": spec,
        "status": status,
    }
    ctx.write_object(key, KIND, pool, ADDED)
    return render(ctx.ov, pool), True


# ---- delete ------------------------------------------------------------------------------


def _require_owner(pool: dict[str, Any], principal: Principal, action: str) -> str:
    """The pool's id, after refusing (`forbidden`) a principal that does not own it (`owns`)."""
    metadata = pool["metadata"]
    qualified = pool_id(metadata["org"], metadata["project"], metadata["name"])
    if not owns(pool, principal):
        if not metadata["org"]:
            raise Rejected(
                FORBIDDEN,
                f"IPPool {qualified} is a platform pool: only an admin acting for the platform "
                f"(without org and project) may {action} it",
            )
        raise Rejected(
            FORBIDDEN, f"IPPool {qualified} belongs to another project; only its owner or an admin may {action} it"
        )
    return qualified


_holders_named_max = 3  # of each kind, in a refused delete's message
_holders_scanned_max = 1024  # used blocks read to find them: a refusal must stay cheap


def _holders(view: ReadView, state: PoolState, principal: Principal) -> dict[str, list[str]]:
    """Some of what holds blocks in a pool, by kind, for a refused delete to name: IPAllocations
    and Services as org/project/namespace/name (namespace/name for the platform's own claims),
    Nodes (a node's pod CIDR) by name, child IPPools by id. Services and nodes hold addresses
    that no IPAllocation lists, so without this the refusal would send an admin to a list that
    shows nothing. A tenant is shown only its own project's (a pool it shares holds other
    projects' claims, whose names are theirs)."""
    everything = principal.acts_for_platform
    named: dict[str, list[str]] = {"IPAllocations": [], "Services": [], "Nodes": [], "child IPPools": []}
    prefix = buddy.used_prefix(state.uid)
    for examined, (_, owner) in enumerate(view.scan(prefix, prefix_end(prefix))):
        if examined >= _holders_scanned_max:
            break
        for kind, kind_prefix in (
            ("IPAllocations", keys.ALLOC),
            ("Services", keys.SERVICE),
            ("Nodes", keys.NODE),
            ("child IPPools", keys.POOL),
        ):
            if owner.startswith(kind_prefix) and len(named[kind]) < _holders_named_max:
                parts = keys.split_path(owner, kind_prefix)
                if everything or (kind_prefix != keys.NODE and parts[:2] == [principal.org, principal.project]):
                    if kind_prefix == keys.POOL:
                        named[kind].append(pool_id(*parts))
                    elif kind_prefix != keys.NODE and not parts[0]:  # the platform's own claim
                        named[kind].append(f"{'/'.join(parts[2:])} (the platform's)")
                    else:
                        named[kind].append("/".join(parts))
    return named


def update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Change the pool's labels (relabel.py): its owner, as for a delete."""
    patch = relabel.check_patch(body, KIND, namespaced=False)
    key, pool = resolve(ctx.ov, ctx.principal, patch.name, "name")
    qualified = _require_owner(pool, ctx.principal, "change")
    relabel.apply_patch(ctx, key, pool, patch, f"IPPool {qualified}")
    return render(ctx.ov, pool)


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_map(body, "", ("name",))
    ref = body.get("name")
    key, pool = resolve(ctx.ov, ctx.principal, ref, "name")
    qualified = _require_owner(pool, ctx.principal, "delete")
    state = load_state(ctx.ov, pool)
    if state.allocations or state.child_pools:
        holders = _holders(ctx.ov, state, ctx.principal)
        listed = "; ".join(f"{kind} {', '.join(names)}" for kind, names in holders.items() if names)
        unnamed = state.allocations + state.child_pools - sum(len(names) for names in holders.values())
        said = (f"{listed}; and {unnamed} more" if unnamed else listed) if listed else "none yours"
        raise Rejected(
            CONFLICT,
            f"IPPool {qualified} still holds {state.allocations} allocation(s) and {state.child_pools} child pool(s) "
            f"({said}); delete those first (IPAllocations: list them with fieldSelector=spec.pool={qualified}; a "
            "Released one is freed by creating its claim again with reclaimPolicy Delete and deleting it; a "
            "Service's address and a Node's pod CIDR go with the service or node)",
            {
                "allocations": state.allocations,
                "childPools": state.child_pools,
                "holders": {kind: names for kind, names in holders.items() if names},
            },
        )
    rendered = render(ctx.ov, pool)
    block = block_of(pool)
    buddy.drop_all(ctx.ov, state)
    ctx.ov.delete(buddy.state_key(state.uid))
    for class_name in pool["spec"]["classNames"]:
        ctx.ov.delete(keys.class_index_key(class_name, key))
    parent_id = pool["status"].get("parentPool")
    if parent_id is None:
        ctx.ov.delete(keys.root_key(pool["status"]["addressSpace"], block))
    else:
        parent_pool = load(ctx.ov, key_of_pool_id(parent_id))
        if parent_pool is None:
            raise InvariantViolation(f"IPPool {qualified} has no parent {parent_id}")
        parent_state = load_state(ctx.ov, parent_pool)
        buddy.release(ctx.ov, parent_state, block, key)
        parent_state.allocated -= block.size
        parent_state.child_pools -= 1
        save_state(ctx, parent_state)
    ctx.delete_object(key, KIND, rendered)
    return rendered
