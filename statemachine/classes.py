"""IPClass: platform-owned allocation policy, the StorageClass analog.

A class fixes the IP family and, for claims made through it, the allowed and default prefix
lengths, the strategy and the reclaim policy. Pools list the classes they back. At most one
class is the default, used by claims that name neither a pool nor a class. Only admins write
classes; every tenant may read them. A class with `visibility: restricted` serves only the orgs
in `allowedOrgs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from statemachine import keys, relabel
from statemachine.addresses import FAMILY_BITS
from statemachine.codec import Principal, loads
from statemachine.context import ADDED, Context
from statemachine.errors import CONFLICT, FORBIDDEN, NOT_FOUND, Rejected, already_exists, invalid
from statemachine.fields import check_labels, check_map, check_name, opt_bool, opt_choice, opt_str_list
from statemachine.policy import RECLAIM_DELETE, RECLAIM_POLICIES, check_allocation
from statemachine.view import ReadView, prefix_end

KIND: Final = "IPClass"
VISIBILITY_PLATFORM: Final = "platform"
VISIBILITY_RESTRICTED: Final = "restricted"

_body_fields: Final = ("name", "labels", "spec")
_spec_fields: Final = ("ipFamily", "allocation", "reclaimPolicy", "visibility", "allowedOrgs", "isDefault")


def require_admin(principal: Principal, action: str) -> None:
    if not principal.is_admin:
        raise Rejected(FORBIDDEN, f"only an admin may {action}")


def require_platform_admin(principal: Principal, action: str) -> None:
    """An admin acting for no tenant: classes, quotas, nodes and the scheduler are the platform's.
    An admin acting for a tenant sees only that tenant's quotas and the classes it may use, so
    its writes to the others went to objects it could not read, and the tenant it named was
    silently ignored."""
    require_admin(principal, action)
    if principal.has_tenant:
        raise invalid(
            f"to {action} act for the platform, not for {principal.org}/{principal.project}: "
            "leave out ?org= and ?project= (the CLI's --as)",
            "principal",
        )


def check_spec(value: Any) -> dict[str, Any]:
    spec = check_map(value, "spec", _spec_fields)
    family = opt_choice(spec, "ipFamily", "spec.ipFamily", tuple(FAMILY_BITS))
    if family is None:
        raise invalid("spec.ipFamily is required (IPv4 or IPv6)", "spec.ipFamily")
    bits = FAMILY_BITS[family]
    visibility = opt_choice(spec, "visibility", "spec.visibility", (VISIBILITY_PLATFORM, VISIBILITY_RESTRICTED))
    visibility = visibility or VISIBILITY_PLATFORM
    allowed_orgs = opt_str_list(spec, "allowedOrgs", "spec.allowedOrgs")
    for position, org in enumerate(allowed_orgs):
        check_name(org, f"spec.allowedOrgs[{position}]")
    if visibility == VISIBILITY_RESTRICTED and not allowed_orgs:
        raise invalid("a restricted class needs spec.allowedOrgs", "spec.allowedOrgs")
    if visibility == VISIBILITY_PLATFORM and allowed_orgs:
        raise invalid("spec.allowedOrgs applies only to visibility: restricted", "spec.allowedOrgs")
    return {
        "ipFamily": family,
        "allocation": check_allocation(spec.get("allocation"), "spec.allocation", 0, bits),
        "reclaimPolicy": opt_choice(spec, "reclaimPolicy", "spec.reclaimPolicy", RECLAIM_POLICIES) or RECLAIM_DELETE,
        "visibility": visibility,
        "allowedOrgs": allowed_orgs,
        "isDefault": bool(opt_bool(spec, "isDefault", "spec.isDefault")),
    }


def load(view: ReadView, name: str) -> dict[str, Any] | None:
    raw = view.get(keys.class_key(name))
    return None if raw is None else dict(loads(raw))


def visible(ip_class: dict[str, Any], principal: Principal) -> bool:
    """The platform admin sees every class; anyone acting for a tenant, an admin included (its
    view is the tenant's, as for internal pools), sees platform classes and those restricted to
    the tenant's org."""
    spec = ip_class["spec"]
    if principal.acts_for_platform:
        return True
    return spec["visibility"] == VISIBILITY_PLATFORM or principal.org in spec["allowedOrgs"]


def default_class_name(view: ReadView) -> str | None:
    raw = view.get(keys.DEFAULT_CLASS)
    return None if raw is None else raw.decode()


@dataclass(frozen=True)
class Unchangeable:
    """A platform-owned kind whose objects cannot change once made, at most one of which is
    the default (an IPClass, a PriorityClass): what `create_unchangeable` needs to know."""

    kind: str
    key_of: Callable[[str], bytes]
    check_spec: Callable[[Any], dict[str, Any]]
    change_hint: str  # what to do instead of changing one
    default_field: str  # the spec's boolean that makes an object the default
    default_key: bytes  # the record naming the default
    default_said: str  # how a refusal names the default: "the default", "the global default"
    reserved_name_prefix: str | None = None  # names only the system may give


def create_unchangeable(ctx: Context, body: dict[str, Any], what: Unchangeable) -> tuple[dict[str, Any], bool]:
    """Create one: the same name, spec and labels again answer with the existing object."""
    kind = what.kind
    require_platform_admin(ctx.principal, f"create {'an' if kind[0] in 'AEIOU' else 'a'} {kind}")
    check_map(body, "", _body_fields)
    name = check_name(body.get("name"), "name")
    if what.reserved_name_prefix is not None and name.startswith(what.reserved_name_prefix):
        raise invalid(f"{kind} names starting with {what.reserved_name_prefix} are reserved; choose another", "name")
    labels = check_labels(body.get("labels"), "labels")
    spec = what.check_spec(body.get("spec"))
    key = what.key_of(name)
    raw = ctx.ov.get(key)
    if raw is not None:
        existing = dict(loads(raw))
        same_spec, same_labels = existing["spec"] == spec, existing["metadata"]["labels"] == labels
        if same_spec and same_labels:
            return existing, False
        raise already_exists(
            f"{kind} {name} already exists", same_spec, same_labels, what.change_hint, labels_patchable=True, name=name
        )
    if spec[what.default_field]:
        current = ctx.ov.get(what.default_key)
        if current is not None:
            raise Rejected(
                CONFLICT,
                f"{kind} {current.decode()} is already {what.default_said}; delete it or create this class "
                f"without {what.default_field}",
                {"defaultClass": current.decode()},
            )
        ctx.ov.put(what.default_key, name.encode())
    obj = {"kind": kind, "metadata": ctx.metadata(name, ctx.new_uid(), labels), "spec": spec, "status": {}}
    ctx.write_object(key, kind, obj, ADDED)
    return obj, True


def update_unchangeable(ctx: Context, body: dict[str, Any], what: Unchangeable) -> dict[str, Any]:
    """Change the labels of one (relabel.py); its spec stays as created."""
    kind = what.kind
    require_platform_admin(ctx.principal, f"change {'an' if kind[0] in 'AEIOU' else 'a'} {kind}")
    patch = relabel.check_patch(body, kind, namespaced=False)
    name = check_name(patch.name, "name")
    key = what.key_of(name)
    raw = ctx.ov.get(key)
    if raw is None:
        raise Rejected(NOT_FOUND, f"{kind} {name} not found", {"kind": kind, "name": name})
    obj = dict(loads(raw))
    relabel.apply_patch(ctx, key, obj, patch, f"{kind} {name}")
    return obj


_IP_CLASSES = Unchangeable(
    KIND,
    keys.class_key,
    check_spec,
    "an IPClass's spec cannot be changed: delete it first (no pool may list it)",
    "isDefault",
    keys.DEFAULT_CLASS,
    "the default",
)


def create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    return create_unchangeable(ctx, body, _IP_CLASSES)


def update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    return update_unchangeable(ctx, body, _IP_CLASSES)


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    require_platform_admin(ctx.principal, "delete an IPClass")
    check_map(body, "", ("name",))
    name = check_name(body.get("name"), "name")
    existing = load(ctx.ov, name)
    if existing is None:
        raise Rejected(NOT_FOUND, f"IPClass {name} not found", {"name": name})
    prefix = keys.class_index_prefix(name)
    backing = ctx.ov.first(prefix, prefix_end(prefix))
    if backing is not None:
        # The index key ends with the pool's key path (org/project/name, both empty for a
        # platform pool); the answer names the pool as every other answer does.
        org, project, pool_name = keys.split_path(backing[0], prefix)
        pool_ref = keys.pool_id(org, project, pool_name)
        raise Rejected(
            CONFLICT,
            f"IPClass {name} is still backed by pool {pool_ref}; remove the pools that list it first",
            {"pool": pool_ref},
        )
    if existing["spec"]["isDefault"]:
        ctx.ov.delete(keys.DEFAULT_CLASS)
    ctx.delete_object(keys.class_key(name), KIND, existing)
    return existing
