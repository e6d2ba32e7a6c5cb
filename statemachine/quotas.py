"""Quotas and tenant ledgers: what a tenant may use, and what it uses, kept exactly.

A Quota limits one org (id `acme`) or one project (id `acme/web`): CPU millicores, memory
bytes, bound pods, services, and addresses per IPClass or per pool (services' addresses). A
limit left out is unlimited. `maxPriority` caps the priority a tenant's new pods may ask for
(checked when a pod is created, as Kubernetes' quota on priority classes is: pods already
there keep theirs), so one tenant cannot give its pods the priority that takes other tenants'
nominations and queue places. A project quota may also carry `defaultRequests`, filled into
pods that give no requests. Only admins write quotas; a member reads its org's and its project's.

Usage lives in a ledger per project and per org (`qu/<org>/<project>`, `qu/<org>/`), charged
and released in the same apply as the object that uses it: a pod when it binds (pending pods
are counted apart, in `pending`, and charge nothing), a service when it gets its address. The
ledger also caches the quota's limits, so checking and charging a pod is one read and one write
per level. An org's ledger is the sum of its projects' ledgers (an invariant).

Lowering a limit below what is already used is refused (`conflict`): usage never exceeds a
quota, which `check_invariants` can then assert. Raising or removing a limit retries the
tenant's pending pods (see scheduler.retry_after_quota).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from statemachine import classes, keys, pools
from statemachine.codec import Principal, dump_record, loads
from statemachine.context import ADDED, MODIFIED, Context
from statemachine.errors import CONFLICT, NOT_FOUND, QUOTA_EXCEEDED, Rejected, invalid
from statemachine.fields import check_labels, check_map, check_name, list_items_max, opt_int, shown
from statemachine.view import ReadView

KIND: Final = "Quota"

cpu_millis_max = 1 << 40  # about a billion cores: an upper bound on any one number, not a policy
memory_bytes_max = 1 << 60
count_max = 1 << 40

# A pod's priority range; pods.priority_min/max are these (pods imports this module).
priority_min = -(1 << 31)
priority_max = (1 << 31) - 1

SCALAR_LIMITS: Final = ("cpuMillis", "memoryBytes", "pods", "services")
_limit_max = {"cpuMillis": cpu_millis_max, "memoryBytes": memory_bytes_max, "pods": count_max, "services": count_max}
_body_fields: Final = ("name", "labels", "spec")
_spec_fields: Final = (*SCALAR_LIMITS, "maxPriority", "addressesByClass", "addressesByPool", "defaultRequests")
REQUEST_FIELDS: Final = ("cpuMillis", "memoryBytes")


@dataclass(init=False)
class Charge:
    """What one object uses: a bound pod (cpu, memory, one pod) or a service (one service, addresses)."""

    # A hand-written __init__, which mypyc compiles (see addresses.Block).
    cpu_millis: int
    memory_bytes: int
    pods: int
    services: int
    addresses: int
    class_name: str | None  # the class and pool the addresses came from
    pool: str | None

    def __init__(
        self,
        cpu_millis: int = 0,
        memory_bytes: int = 0,
        pods: int = 0,
        services: int = 0,
        addresses: int = 0,
        class_name: str | None = None,
        pool: str | None = None,
    ) -> None:
        self.cpu_millis = cpu_millis
        self.memory_bytes = memory_bytes
        self.pods = pods
        self.services = services
        self.addresses = addresses
        self.class_name = class_name
        self.pool = pool


@dataclass(init=False)
class Ledger:
    """Usage of one project or org, and the limits of its quota (None: no quota)."""

    # A hand-written __init__, which mypyc compiles (see addresses.Block).
    cpu_millis: int
    memory_bytes: int
    pods: int
    services: int
    pending: int  # pods waiting in the queue: counted to bound them, charged nothing
    addresses_by_class: dict[str, int]
    addresses_by_pool: dict[str, int]
    limits: dict[str, Any] | None
    default_requests: list[int] | None  # [cpuMillis, memoryBytes] for pods that give none

    def __init__(
        self,
        cpu_millis: int = 0,
        memory_bytes: int = 0,
        pods: int = 0,
        services: int = 0,
        pending: int = 0,
        addresses_by_class: dict[str, int] | None = None,
        addresses_by_pool: dict[str, int] | None = None,
        limits: dict[str, Any] | None = None,
        default_requests: list[int] | None = None,
    ) -> None:
        self.cpu_millis = cpu_millis
        self.memory_bytes = memory_bytes
        self.pods = pods
        self.services = services
        self.pending = pending
        self.addresses_by_class = {} if addresses_by_class is None else addresses_by_class
        self.addresses_by_pool = {} if addresses_by_pool is None else addresses_by_pool
        self.limits = limits
        self.default_requests = default_requests

    def to_plain(self) -> list[Any]:
        return [
            self.cpu_millis,
            self.memory_bytes,
            self.pods,
            self.services,
            self.pending,
            _sorted_table(self.addresses_by_class),
            _sorted_table(self.addresses_by_pool),
            self.limits,
            self.default_requests,
        ]

    @classmethod
    def from_plain(cls, plain: list[Any]) -> Ledger:
        return cls(*plain)

    @property
    def empty(self) -> bool:
        return not (
            self.limits is not None
            or self.cpu_millis
            or self.memory_bytes
            or self.pods
            or self.services
            or self.pending
            or self.addresses_by_class
            or self.addresses_by_pool
        )

    def used(self) -> dict[str, Any]:
        return {
            "cpuMillis": self.cpu_millis,
            "memoryBytes": self.memory_bytes,
            "pods": self.pods,
            "services": self.services,
            "pendingPods": self.pending,
            "addressesByClass": dict(sorted(self.addresses_by_class.items())),
            "addressesByPool": dict(sorted(self.addresses_by_pool.items())),
        }

    def add(self, charge: Charge, sign: int) -> None:
        self.cpu_millis += sign * charge.cpu_millis
        self.memory_bytes += sign * charge.memory_bytes
        self.pods += sign * charge.pods
        self.services += sign * charge.services
        if charge.addresses:
            for table, name in ((self.addresses_by_class, charge.class_name), (self.addresses_by_pool, charge.pool)):
                if name is None:
                    continue
                table[name] = table.get(name, 0) + sign * charge.addresses
                if not table[name]:
                    del table[name]

    def shortfall(self, charge: Charge, scope: str, alone: str = "") -> Rejected | None:
        """The first limit the charge would pass, as a refusal; None when it fits.

        With `alone` (what is charged, such as "the pod"), the first limit the charge passes by
        itself, with nothing else in use: it could never fit. The refusal still reports the
        real usage, so its details and message stay true."""
        if self.limits is None:
            return None
        wanted = [
            ("cpuMillis", self.cpu_millis, charge.cpu_millis),
            ("memoryBytes", self.memory_bytes, charge.memory_bytes),
            ("pods", self.pods, charge.pods),
            ("services", self.services, charge.services),
        ]
        if charge.addresses:
            if charge.class_name is not None:
                used = self.addresses_by_class.get(charge.class_name, 0)
                wanted.append((f"addressesByClass.{charge.class_name}", used, charge.addresses))
            if charge.pool is not None:
                used = self.addresses_by_pool.get(charge.pool, 0)
                wanted.append((f"addressesByPool.{charge.pool}", used, charge.addresses))
        for resource, current, requested in wanted:
            if not requested:
                continue
            limit = _limit_of(self.limits, resource)
            if limit is None:
                continue
            if alone:
                if requested <= limit:
                    continue
                said = f"{alone} alone requests {requested}, more than the limit {limit} ({current} is used now)"
            elif current + requested > limit:
                said = f"{current} is used and {requested} more was requested"
            else:
                continue
            return Rejected(
                QUOTA_EXCEEDED,
                f"quota {scope} allows {resource} {limit}; {said}",
                {"quota": scope, "resource": resource, "limit": limit, "used": current, "requested": requested},
            )
        return None


def _sorted_table(table: dict[str, int]) -> dict[str, int]:
    # Names are added in charge order; the record keeps them sorted. Pods charge no addresses,
    # so the tables are usually empty and need no sorting.
    return dict(sorted(table.items())) if table else {}


def _limit_of(limits: dict[str, Any], resource: str) -> int | None:
    table, dot, name = resource.partition(".")
    value = limits.get(table, {}).get(name) if dot else limits.get(resource)
    return None if value is None else int(value)


def quota_id(org: str, project: str) -> str:
    return f"{org}/{project}" if project else org


def load_ledger(view: ReadView, org: str, project: str) -> Ledger:
    raw = view.get(keys.ledger_key(org, project))
    return Ledger() if raw is None else Ledger.from_plain(loads(raw))


def save_ledger(ctx: Context, org: str, project: str, ledger: Ledger) -> None:
    key = keys.ledger_key(org, project)
    if ledger.empty:
        ctx.ov.delete(key)  # no quota and nothing used: no record, so invariants need not special-case it
    else:
        ctx.ov.put(key, dump_record(ledger.to_plain()))


class Tenant:
    """The project's and the org's ledgers, loaded once for one placement or release."""

    def __init__(self, view: ReadView, org: str, project: str) -> None:
        self.org = org
        self.project = project
        self.project_ledger = load_ledger(view, org, project)
        self.org_ledger = load_ledger(view, org, "")

    @property
    def limited(self) -> bool:
        """Whether a quota limits the project or the org (if not, nothing is ever short)."""
        return self.project_ledger.limits is not None or self.org_ledger.limits is not None

    def shortfall(self, charge: Charge, alone: str = "") -> Rejected | None:
        """The first limit of the project's or the org's quota the charge would pass (with
        `alone`, by itself: see Ledger.shortfall); None when it fits."""
        if not self.limited:
            return None  # the usual case: no quota, nothing to format
        return self.project_ledger.shortfall(
            charge, quota_id(self.org, self.project), alone
        ) or self.org_ledger.shortfall(charge, self.org, alone)

    def unrequested_refusal(self, unrequested: list[str]) -> Rejected | None:
        """A refusal when the project's or the org's quota limits a resource (`cpuMillis`,
        `memoryBytes`) that a new pod gives no request for and no default fills in; None when
        neither does. As Kubernetes' ResourceQuota admission: otherwise a pod without requests
        is charged nothing and runs past the limit (exploratory testing, 2026-12-07)."""
        for ledger, scope in ((self.project_ledger, quota_id(self.org, self.project)), (self.org_ledger, self.org)):
            for resource in unrequested:
                limit = None if ledger.limits is None else ledger.limits.get(resource)
                if limit is not None:
                    return Rejected(
                        QUOTA_EXCEEDED,
                        f"quota {scope} limits {resource}, so a pod must request it: give spec.requests.{resource}, "
                        "or have an admin set defaultRequests in the project's quota",
                        {"quota": scope, "resource": resource, "limit": limit},
                    )
        return None

    def priority_refusal(self, priority: int, source: str = "spec.priority") -> Rejected | None:
        """A refusal when the project's or the org's quota caps the priority of new pods below
        `priority` (given by `source`, for the message); None when neither does."""
        for ledger, scope in ((self.project_ledger, quota_id(self.org, self.project)), (self.org_ledger, self.org)):
            cap = None if ledger.limits is None else ledger.limits.get("maxPriority")
            if cap is not None and priority > cap:
                return Rejected(
                    QUOTA_EXCEEDED,
                    f"quota {scope} allows pods a priority of at most {cap}; this pod asks for {priority} "
                    f"({source}): ask for less, or have an admin raise the quota's maxPriority",
                    {"quota": scope, "resource": "maxPriority", "limit": cap, "requested": priority},
                )
        return None

    def add(self, charge: Charge, sign: int) -> None:
        self.project_ledger.add(charge, sign)
        self.org_ledger.add(charge, sign)

    def add_pending(self, delta: int) -> None:
        self.project_ledger.pending += delta
        self.org_ledger.pending += delta

    def save(self, ctx: Context) -> None:
        save_ledger(ctx, self.org, self.project, self.project_ledger)
        save_ledger(ctx, self.org, "", self.org_ledger)


# ---- objects -----------------------------------------------------------------------------------


def parse_id(value: Any, field_path: str) -> tuple[str, str]:
    """`org` or `org/project` -> (org, project); project is empty for an org quota."""
    if not isinstance(value, str):
        raise invalid(f"{field_path} must be a string: an org (acme) or a project (acme/web)", field_path)
    parts = value.split("/")
    if len(parts) > 2 or not all(parts):
        missing = "" if all(parts) else ": its org or project part is empty"
        raise invalid(f"{field_path} {shown(value)} must be an org (acme) or a project (acme/web){missing}", field_path)
    org = check_name(parts[0], field_path)
    project = check_name(parts[1], field_path) if len(parts) == 2 else ""
    return org, project


def visible(quota: dict[str, Any], principal: Principal) -> bool:
    metadata = quota["metadata"]
    if principal.is_admin and not principal.has_tenant:
        return True
    return bool(metadata["org"] == principal.org and metadata["project"] in ("", principal.project))


def render(view: ReadView, quota: dict[str, Any], reader: Principal | None = None) -> dict[str, Any]:
    """The quota with its usage. An org quota counts every project's addresses by pool; a
    reader acting for one of its projects is shown those of platform pools, of its own
    project's pools and of the pools the quota's spec limits, not the names of sibling
    projects' pools it cannot see."""
    metadata = quota["metadata"]
    ledger = load_ledger(view, metadata["org"], metadata["project"])
    used = ledger.used()
    if reader is not None and reader.has_tenant and not metadata["project"]:
        limited = quota["spec"].get("addressesByPool", {})
        own = f"{reader.org}/{reader.project}/"
        used["addressesByPool"] = {
            pool: count
            for pool, count in used["addressesByPool"].items()
            if "/" not in pool or pool.startswith(own) or pool in limited
        }
    return {**quota, "status": {"used": used}}


def _check_address_keys(
    view: ReadView, spec: dict[str, Any], org: str, project: str, existing: dict[str, Any] | None
) -> None:
    """Address limits must name pools and classes that exist: a limit under a name that no
    charge can carry would limit nothing while looking like a limit.

    Only new names are checked. A limit the quota already had stays valid after its pool or
    class is deleted (deleting them does not look at quotas, and another tenant may delete its
    own pool that this quota names); refusing it would block every later change to the quota
    until someone noticed the stale name, and a pool or class made again under the name is
    limited by it again, as in Kubernetes' per-storage-class quotas."""
    had = existing["spec"] if existing is not None else {}
    for name in spec.get("addressesByClass", {}):
        if name in had.get("addressesByClass", {}):
            continue
        if classes.load(view, name) is None:
            raise invalid(f"spec.addressesByClass.{name}: there is no IPClass {name}", f"spec.addressesByClass.{name}")
    for name in spec.get("addressesByPool", {}):
        if name in had.get("addressesByPool", {}):
            continue
        pool = pools.load(view, pools.key_of_pool_id(name))
        if pool is not None:
            reserved_for = pool["status"].get("allowedOrgs")
            if reserved_for is not None and org not in reserved_for:
                # Its tenants could never use it, and reading their quota would show them its name.
                raise invalid(
                    f"spec.addressesByPool.{name}: IPPool {name} is reserved for other orgs than {org}",
                    f"spec.addressesByPool.{name}",
                )
            continue
        hint = "keys are pool ids: name for a platform pool, org/project/name for a tenant's pool"
        if "/" not in name and project and pools.load(view, keys.pool_key(org, project, name)) is not None:
            hint = f"{org}/{project}'s own pool {name} has the id {pools.pool_id(org, project, name)}"
        raise invalid(
            f"spec.addressesByPool.{name}: there is no IPPool {name} ({hint})", f"spec.addressesByPool.{name}"
        )


def _count_map(value: Any, field_path: str, names_are_pool_ids: bool) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{field_path} must be a map of names to counts", field_path)
    if len(value) > list_items_max:
        raise invalid(f"{field_path} has {len(value)} entries; at most {list_items_max} are allowed", field_path)
    checked: dict[str, int] = {}
    for name in value:
        if not isinstance(name, str):
            raise invalid(f"{field_path} keys must be strings", field_path)
        if names_are_pool_ids:
            for part in name.split("/"):
                check_name(part, f"{field_path}.{name}")
            if name.count("/") not in (0, 2):
                raise invalid(f"{field_path}.{name} must be a pool id: name or org/project/name", field_path)
        else:
            check_name(name, f"{field_path}.{name}")
        count = opt_int(value, name, f"{field_path}.{name}", 0, count_max)
        if count is None:
            raise invalid(f"{field_path}.{name} must be an integer", f"{field_path}.{name}")
        checked[name] = count
    return dict(sorted(checked.items()))


def check_requests(value: Any, field_path: str) -> dict[str, int]:
    """A `{cpuMillis, memoryBytes}` map, both filled in (0 when left out)."""
    given = check_map(value, field_path, REQUEST_FIELDS)
    return {
        "cpuMillis": opt_int(given, "cpuMillis", f"{field_path}.cpuMillis", 0, cpu_millis_max) or 0,
        "memoryBytes": opt_int(given, "memoryBytes", f"{field_path}.memoryBytes", 0, memory_bytes_max) or 0,
    }


def check_spec(value: Any, project: str) -> dict[str, Any]:
    given = check_map(value, "spec", _spec_fields)
    spec: dict[str, Any] = {}
    for name in SCALAR_LIMITS:
        limit = opt_int(given, name, f"spec.{name}", 0, _limit_max[name])
        if limit is not None:
            spec[name] = limit
    max_priority = opt_int(given, "maxPriority", "spec.maxPriority", priority_min, priority_max)
    if max_priority is not None:
        spec["maxPriority"] = max_priority
    by_class = _count_map(given.get("addressesByClass"), "spec.addressesByClass", False)
    by_pool = _count_map(given.get("addressesByPool"), "spec.addressesByPool", True)
    if by_class:
        spec["addressesByClass"] = by_class
    if by_pool:
        spec["addressesByPool"] = by_pool
    if given.get("defaultRequests") is not None:
        if not project:
            raise invalid("spec.defaultRequests applies to project quotas (acme/web), not orgs", "spec.defaultRequests")
        defaults = check_requests(given["defaultRequests"], "spec.defaultRequests")
        for name, default in defaults.items():
            limit = spec.get(name)
            if limit is not None and default > limit:
                # Every pod that leaves this request out would be refused as over quota.
                raise invalid(
                    f"spec.defaultRequests.{name} {default} is more than the quota's own spec.{name} {limit}: "
                    "every pod that gives no such request would be refused; lower the default or raise the limit",
                    f"spec.defaultRequests.{name}",
                )
        spec["defaultRequests"] = defaults
    return spec


def _limits(spec: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in spec.items() if name != "defaultRequests"}


def _over(ledger: Ledger, limits: dict[str, Any]) -> tuple[str, int, int] | None:
    """A limit that current usage already passes: (resource, limit, used)."""
    used = ledger.used()
    for name in SCALAR_LIMITS:
        if name in limits and used[name] > limits[name]:
            return name, limits[name], used[name]
    for table in ("addressesByClass", "addressesByPool"):
        for name, used_count in used[table].items():
            limit = limits.get(table, {}).get(name)
            if limit is not None and used_count > limit:
                return f"{table}.{name}", limit, used_count
    return None


def loosens(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Whether some charge refused under old limits could fit under new ones."""
    if old is None:
        return False
    if new is None:
        return True
    for name in SCALAR_LIMITS:
        if name in old and (name not in new or new[name] > old[name]):
            return True
    for table in ("addressesByClass", "addressesByPool"):
        for name, limit in old.get(table, {}).items():
            if new.get(table, {}).get(name, limit + 1) > limit:
                return True
    return False


def set_quota(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool, bool]:
    """Create or replace a quota. Returns (quota, created, loosened)."""
    classes.require_platform_admin(ctx.principal, "set a Quota")
    check_map(body, "", _body_fields)
    org, project = parse_id(body.get("name"), "name")
    labels = check_labels(body.get("labels"), "labels")
    spec = check_spec(body.get("spec"), project)
    key = keys.quota_key(org, project)
    raw = ctx.ov.get(key)
    existing = None if raw is None else dict(loads(raw))
    if existing is not None and existing["spec"] == spec and existing["metadata"]["labels"] == labels:
        return render(ctx.ov, existing), False, False
    _check_address_keys(ctx.ov, spec, org, project, existing)
    ledger = load_ledger(ctx.ov, org, project)
    limits = _limits(spec)
    over = _over(ledger, limits)
    if over is not None:
        resource, limit, used = over
        raise Rejected(
            CONFLICT,
            f"quota {quota_id(org, project)} would allow {resource} {limit} but {used} is already used; "
            "free some first, or set a higher limit",
            {"quota": quota_id(org, project), "resource": resource, "limit": limit, "used": used},
        )
    loosened = loosens(ledger.limits, limits)
    ledger.limits = limits
    requests = spec.get("defaultRequests")
    ledger.default_requests = None if requests is None else [requests["cpuMillis"], requests["memoryBytes"]]
    save_ledger(ctx, org, project, ledger)
    quota: dict[str, Any]
    if existing is None:
        quota = {
            "kind": KIND,
            "metadata": ctx.metadata(quota_id(org, project), ctx.new_uid(), labels, org=org, project=project),
            "spec": spec,
            "status": {},
        }
        ctx.write_object(key, KIND, quota, ADDED)
    else:
        quota = existing
        labels_before = quota["metadata"]["labels"]
        quota["metadata"]["labels"] = labels
        quota["spec"] = spec
        ctx.write_object(key, KIND, quota, MODIFIED, labels_before if labels_before != labels else None)
    return render(ctx.ov, quota), existing is None, loosened


def delete_quota(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """Remove a quota (its tenant becomes unlimited; usage stays counted). Returns (quota, org, project)."""
    classes.require_platform_admin(ctx.principal, "delete a Quota")
    check_map(body, "", ("name",))
    org, project = parse_id(body.get("name"), "name")
    key = keys.quota_key(org, project)
    raw = ctx.ov.get(key)
    if raw is None:
        quota_name = quota_id(org, project)
        raise Rejected(NOT_FOUND, f"Quota {quota_name} not found", {"kind": KIND, "name": quota_name})
    quota = dict(loads(raw))
    ledger = load_ledger(ctx.ov, org, project)
    ledger.limits = None
    ledger.default_requests = None
    save_ledger(ctx, org, project, ledger)
    # The event carries the quota as stored, as its ADDED and MODIFIED events do: its usage is
    # rendered for each reader, and an org's would name its projects' pools to each of them
    # (code review, 2026-12-08). The answer, to the platform admin, shows it.
    ctx.delete_object(key, KIND, quota)
    return render(ctx.ov, quota), org, project
