"""Services: tenant objects whose address comes from IPAM, with the same code claims use.

`spec`:
* `type`: `ClusterIP` (default) or `LoadBalancer`; both get one address on creation.
* `poolRef` or `className` (neither: the default class), resolved exactly as for a claim: the
  tenant's own pools first, then its org's shared pools, then platform pools. A service always
  belongs to a tenant, so `internal` pools are never seen (`poolRef`: `not_found`; a class
  never picks one), also when an admin acts for the tenant.
* `address`: a specific address, honoured if it is free (otherwise `conflict`, saying whether it
  is allocated or reserved).
* `ports`: `{name, port, protocol: TCP|UDP|SCTP}` (recorded, not interpreted), none or more; as
  in Kubernetes, no port/protocol twice, and with more than one, each named, names unique.

The address is a host block held in the pool's allocator by the service's key; deleting the
service releases it in the same apply. Each service charges the tenant one `services` and one
address against `addressesByClass` (when it came through a class) and `addressesByPool`;
over quota is refused with `quota_exceeded`, and nothing is written. Through a class, a backing
pool where the tenant has reached its `addressesByPool` limit is passed over for the next one
with room under the quota.
"""

from __future__ import annotations

from typing import Any, Final

from statemachine import buddy, claims, classes, keys, pools, quotas, relabel
from statemachine.addresses import FAMILY_BITS, Block, check_not_ipv4_mapped, format_address, parse_address
from statemachine.codec import loads
from statemachine.context import ADDED, Context
from statemachine.errors import (
    POOL_EXHAUSTED,
    InvariantViolation,
    Rejected,
    already_exists,
    invalid,
    tenant_object_not_found,
)
from statemachine.fields import check_labels, check_map, check_name, list_items_max, opt_choice, opt_int, opt_str
from statemachine.policy import check_length_allowed
from statemachine.view import ReadView

KIND: Final = "Service"
DEFAULT_NAMESPACE: Final = "default"
CLUSTER_IP: Final = "ClusterIP"
LOAD_BALANCER: Final = "LoadBalancer"
SERVICE_TYPES: Final = (CLUSTER_IP, LOAD_BALANCER)
PROTOCOLS: Final = ("TCP", "UDP", "SCTP")

_body_fields: Final = ("name", "namespace", "labels", "spec")
_spec_fields: Final = ("type", "poolRef", "className", "address", "ports")
_port_fields: Final = ("name", "port", "protocol")


def _check_ports(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("spec.ports must be a list", "spec.ports")
    if len(value) > list_items_max:
        raise invalid(f"spec.ports has more than {list_items_max} ports", "spec.ports")
    ports: list[dict[str, Any]] = []
    seen: list[tuple[int, str]] = []
    for position, item in enumerate(value):
        field_path = f"spec.ports[{position}]"
        given = check_map(item, field_path, _port_fields)
        port = opt_int(given, "port", f"{field_path}.port", 1, 65535)
        if port is None:
            raise invalid(f"{field_path}.port is required", f"{field_path}.port")
        protocol = opt_choice(given, "protocol", f"{field_path}.protocol", PROTOCOLS) or "TCP"
        if (port, protocol) in seen:
            raise invalid(f"{field_path} repeats {port}/{protocol}", field_path)
        seen.append((port, protocol))
        name = opt_str(given, "name", f"{field_path}.name")
        if name is not None:
            check_name(name, f"{field_path}.name")
            if any(earlier["name"] == name for earlier in ports):
                raise invalid(f"{field_path}.name {name!r} is already the name of another port", f"{field_path}.name")
        elif len(value) > 1:
            # As Kubernetes: with several ports, a name is how a client tells them apart.
            raise invalid(f"{field_path}.name is required when a service has more than one port", f"{field_path}.name")
        ports.append({"name": name, "port": port, "protocol": protocol})
    return ports


def check_spec(value: Any) -> tuple[dict[str, Any], Block | None]:
    given = check_map(value, "spec", _spec_fields)
    spec: dict[str, Any] = {"type": opt_choice(given, "type", "spec.type", SERVICE_TYPES) or CLUSTER_IP}
    pool_ref = opt_str(given, "poolRef", "spec.poolRef")
    class_name = opt_str(given, "className", "spec.className")
    if pool_ref is not None and class_name is not None:
        raise invalid("give spec.poolRef or spec.className, not both", "spec.className")
    if pool_ref is not None:
        spec["poolRef"] = pool_ref
    if class_name is not None:
        spec["className"] = check_name(class_name, "spec.className")
    specific: Block | None = None
    if given.get("address") is not None:
        specific = parse_address(given["address"], "spec.address")
        check_not_ipv4_mapped(specific, "spec.address")
        spec["address"] = format_address(specific.family, specific.address)
    spec["ports"] = _check_ports(given.get("ports"))
    return spec, specific


def _asks_for_what_it_holds(ctx: Context, existing: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether a create under an existing service's name asks for what that service holds, so
    it answers the service rather than `already_exists`: the same spec, or one that says it in
    other words, as for claims (claims._asks_for_what_it_holds): the default class's name
    written out, or another name of the same pool. Judged on the state now: a name that
    resolves elsewhere now is another request. (Type and ports are compared as check_spec
    leaves them, with their defaults filled in.)"""
    held = existing["spec"]
    if held == spec:
        return True
    if any(held.get(field) != spec.get(field) for field in ("type", "ports", "address")):
        return False
    if ("poolRef" in spec) != ("poolRef" in held):
        return False
    status = existing["status"]
    if "poolRef" in spec:
        try:
            pool_key, _ = pools.resolve(ctx.ov, ctx.principal, spec["poolRef"], "spec.poolRef")
        except Rejected:
            return False
        return bool(pools.pool_id_of_key(pool_key) == status["pool"])
    class_name = spec.get("className") or classes.default_class_name(ctx.ov)
    return bool(class_name is not None and class_name == status["className"])


def load(view: ReadView, key: bytes) -> dict[str, Any] | None:
    raw = view.get(key)
    return None if raw is None else dict(loads(raw))


def charge_of(service: dict[str, Any]) -> quotas.Charge:
    status = service["status"]
    return quotas.Charge(services=1, addresses=1, class_name=status["className"], pool=status["pool"])


def _carve_address(
    ctx: Context, spec: dict[str, Any], specific: Block | None, owner: bytes, tenant: quotas.Tenant
) -> tuple[str, Block, str | None]:
    """(pool id, host block, class name) for the service, carved like a claim's. Through a
    class, a backing pool whose `addressesByPool` limit the tenant has reached is passed over
    for the next with room under its quota; when no backing pool is under its limit, or those
    that are are full, the refusal is `quota_exceeded` naming the first pool at its limit."""
    if "poolRef" in spec:
        pool_key, pool = pools.resolve(ctx.ov, ctx.principal, spec["poolRef"], "spec.poolRef")
        pool_ref = pools.pool_id_of_key(pool_key)
        family = pool["status"]["ipFamily"]
        length = FAMILY_BITS[family]
        # A service holds one address, so a pool that allows no host block is the wrong pool.
        check_length_allowed(length, pool["spec"]["allocation"], f"IPPool {pool_ref}", "spec.poolRef")
        _check_family(specific, family)
        if specific is not None and not pools.block_of(pool).contains(specific):
            raise invalid(
                f"{specific} is outside IPPool {pool_ref} ({pool['status']['allocatedCIDR']})", "spec.address"
            )
        strategy = pool["spec"]["allocation"]["strategy"]
        class_name: str | None = None
        usable = [(pool_key, pool)]
    else:
        ip_class, candidates = claims.class_candidates(ctx, spec)
        class_name = ip_class["metadata"]["name"]
        family = ip_class["spec"]["ipFamily"]
        length = FAMILY_BITS[family]
        check_length_allowed(length, ip_class["spec"]["allocation"], f"IPClass {class_name}", "spec.className")
        _check_family(specific, family)
        strategy = ip_class["spec"]["allocation"]["strategy"]
        usable = [
            (key, pool)
            for key, pool in candidates
            if claims.pool_allows(pool, length) and (specific is None or pools.block_of(pool).contains(specific))
        ]
        if not usable:
            where = f" at {specific}" if specific is not None else ""
            raise invalid(
                f"no pool backing IPClass {class_name} can hold a service address{where}",
                "spec.address" if specific is not None else "spec.className",
            )
        if tenant.limited:
            refusals = [
                tenant.shortfall(quotas.Charge(addresses=1, pool=pools.pool_id_of_key(key))) for key, _ in usable
            ]
            within_quota = [candidate for candidate, refusal in zip(usable, refusals, strict=True) if refusal is None]
            over_quota = [
                (refusal, pool) for (_, pool), refusal in zip(usable, refusals, strict=True) if refusal is not None
            ]
            if within_quota:
                try:
                    pool_ref, block = claims.carve(ctx, within_quota, length, specific, strategy, owner, class_name)
                except Rejected as refusal:
                    withheld = _withheld(ctx, over_quota, specific, length) if refusal.code == POOL_EXHAUSTED else None
                    if withheld is None:
                        raise
                    raise withheld from None
                return pool_ref, block, class_name
            withheld = _withheld(ctx, over_quota, specific, length)
            if withheld is not None:
                raise withheld  # every backing pool is at the tenant's limit: the first with room says which
            # All at the limit and all full: the carve below says the pools are full.
    pool_ref, block = claims.carve(ctx, usable, length, specific, strategy, owner, class_name)
    return pool_ref, block, class_name


def _withheld(
    ctx: Context, over_quota: list[tuple[Rejected, dict[str, Any]]], specific: Block | None, length: int
) -> Rejected | None:
    """The quota refusal of the first pool the tenant's quota withholds that could serve (for a
    specific address, any: the quota stands in the way first), or None. Read only once the pools
    under the quota could not serve: then it is the quota, not "all are full", that the tenant
    must be told."""
    for refusal, pool in over_quota:
        if specific is not None:
            return refusal
        largest = buddy.largest_free_prefix(pools.load_state(ctx.ov, pool))
        if largest is not None and largest <= length:
            return refusal
    return None


def _check_family(specific: Block | None, family: str) -> None:
    # Checked before the address is looked for in the pools, so that an address of the other
    # family is refused for what it is, not as "outside the pool".
    if specific is not None and specific.family != family:
        raise invalid(f"spec.address {specific} is {specific.family}, the addresses here are {family}", "spec.address")


def create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    check_map(body, "", _body_fields)
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    labels = check_labels(body.get("labels"), "labels")
    spec, specific = check_spec(body.get("spec"))
    principal = ctx.principal
    if not principal.has_tenant:
        raise invalid(
            "a Service belongs to a project: act for a tenant (?org=...&project=..., the CLI's --as ORG/PROJECT)",
            "principal",
        )
    key = keys.service_key(principal.org, principal.project, namespace, name)
    existing = load(ctx.ov, key)
    if existing is not None:
        same_spec, same_labels = _asks_for_what_it_holds(ctx, existing, spec), existing["metadata"]["labels"] == labels
        if same_spec and same_labels:
            return existing, False
        held = existing["status"]["address"]
        raise already_exists(
            f"Service {namespace}/{name} already exists",
            same_spec,
            same_labels,
            "a Service's spec cannot be changed: delete it first",
            f" (it holds {held})",
            labels_patchable=True,
            name=name,
            namespace=namespace,
            address=held,
        )
    tenant = quotas.Tenant(ctx.ov, principal.org, principal.project)
    pool_ref, block, class_name = _carve_address(ctx, spec, specific, key, tenant)
    service = {
        "kind": KIND,
        "metadata": ctx.metadata(
            name, ctx.new_uid(), labels, namespace=namespace, org=principal.org, project=principal.project
        ),
        "spec": spec,
        "status": {"address": format_address(block.family, block.address), "pool": pool_ref, "className": class_name},
    }
    charge = charge_of(service)
    shortfall = tenant.shortfall(charge)
    if shortfall is not None:
        raise shortfall  # nothing is written: the carved address goes with the refused overlay
    tenant.add(charge, 1)
    tenant.save(ctx)
    ctx.write_object(key, KIND, service, ADDED)
    return service, True


def update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    """Change the service's labels (relabel.py); its address and spec stay."""
    patch = relabel.check_patch(body, KIND, namespaced=True, default_namespace=DEFAULT_NAMESPACE)
    name = check_name(patch.name, "name")
    namespace = patch.namespace
    principal = ctx.principal
    key = keys.service_key(principal.org, principal.project, namespace, name)
    service = load(ctx.ov, key)
    if service is None:
        raise tenant_object_not_found(KIND, namespace, name, principal.acts_for_platform, False)
    relabel.apply_patch(ctx, key, service, patch, f"Service {namespace}/{name}")
    return service


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    check_map(body, "", ("name", "namespace"))
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    principal = ctx.principal
    key = keys.service_key(principal.org, principal.project, namespace, name)
    service = load(ctx.ov, key)
    if service is None:
        raise tenant_object_not_found(KIND, namespace, name, principal.acts_for_platform, False)
    status = service["status"]
    pool = pools.load(ctx.ov, pools.key_of_pool_id(status["pool"]))
    if pool is None:
        raise InvariantViolation(f"Service {namespace}/{name} names missing pool {status['pool']}")
    state = pools.load_state(ctx.ov, pool)
    buddy.release(ctx.ov, state, parse_address(status["address"], "status.address"), key)
    state.allocated -= 1
    state.allocations -= 1
    pools.save_state(ctx, state)
    tenant = quotas.Tenant(ctx.ov, principal.org, principal.project)
    tenant.add(charge_of(service), -1)
    tenant.save(ctx)
    ctx.delete_object(key, KIND, service)
    return service
