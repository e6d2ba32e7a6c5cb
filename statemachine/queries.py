"""Reads: get, paged list with label selectors, and the watch event log, as a principal sees them.

Pure functions over a read view, so every member answers a read from its own applied state
with the same rules the commands use (a tenant never sees another tenant's objects).

Lists are paged by key: the continue token is the last key examined, so a page's work is
bounded (`list_scan_max` records examined) even when a selector matches little, and paging
stays stable while objects are added or removed.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from statemachine import claims, classes, keys, nodes, pods, pools, priorities, quotas, services
from statemachine.codec import Principal, loads
from statemachine.context import ADDED, DELETED, Meta
from statemachine.errors import GONE, NOT_FOUND, Rejected, invalid, tenant_object_not_found
from statemachine.fields import check_name, check_node_name, node_name_chars_max, shown
from statemachine.labels import Requirement, matches, parse_selector
from statemachine.view import ReadView, prefix_end

list_limit_default = 500
list_limit_max = 1000
list_scan_max = 10_000  # records examined for one page before it is returned short
watch_events_max = 1000  # events returned by one call to events_after


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    prefix: bytes
    tenant_scoped: bool  # claims, allocations, pods, services: keyed by the caller's org and project


IPAM_RESOURCES: Final = {
    "ippools": Resource("ippools", pools.KIND, keys.POOL, False),
    "ipclasses": Resource("ipclasses", classes.KIND, keys.CLASS, False),
    "ipclaims": Resource("ipclaims", claims.KIND, keys.CLAIM, True),
    "ipallocations": Resource("ipallocations", claims.ALLOCATION_KIND, keys.ALLOC, True),
}
# The scheduler's kinds, written by the commands in cluster.py.
SCHEDULER_RESOURCES: Final = {
    "nodes": Resource("nodes", nodes.KIND, keys.NODE, False),
    "pods": Resource("pods", pods.KIND, keys.POD, True),
    "services": Resource("services", services.KIND, keys.SERVICE, True),
    "quotas": Resource("quotas", quotas.KIND, keys.QUOTA, False),
    "priorityclasses": Resource("priorityclasses", priorities.KIND, keys.PRIORITY_CLASS, False),
}
# The kinds served over HTTP. node/http.py checks that its routes cover exactly these.
RESOURCES: Final = {**IPAM_RESOURCES, **SCHEDULER_RESOURCES}
ALL_RESOURCES: Final = RESOURCES
_by_kind = {resource.kind: resource for resource in ALL_RESOURCES.values()}

# Field selectors (`spec.nodeName=n1`, `status.phase=Pending`), per kind: so a node agent can
# list and watch the pods bound to its node. An empty value matches an unset field.
FIELD_SELECTORS: Final = {
    pods.KIND: ("spec.nodeName", "status.phase"),
    # And claims and allocations by pool or class: what holds a pool that will not delete
    # ("still has N allocations"), or what a class handed out (exploratory testing, 2026-12-07).
    claims.KIND: ("status.pool", "status.className"),
    claims.ALLOCATION_KIND: ("spec.pool", "spec.className", "status.phase"),
}
# Fields whose values form a closed set: any other value could never match, so it is refused
# (a typo such as `status.phase=Running` would otherwise list and watch nothing, silently).
FIELD_SELECTOR_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    (pods.KIND, "status.phase"): pods.PHASES,
    (claims.ALLOCATION_KIND, "status.phase"): (claims.PHASE_BOUND, claims.PHASE_RELEASED),
}
field_selector_chars_max = 1024


def resource(plural: str) -> Resource:
    found = ALL_RESOURCES.get(plural)
    if found is None:
        raise Rejected(NOT_FOUND, f"unknown resource {plural!r}; known: {', '.join(ALL_RESOURCES)}")
    return found


def visible(kind: str, obj: dict[str, Any], principal: Principal) -> bool:
    if kind == pools.KIND:
        return pools.visible(obj, principal)
    if kind == classes.KIND:
        return classes.visible(obj, principal)
    if kind in (nodes.KIND, priorities.KIND):
        return True  # platform objects every tenant may read
    if kind == quotas.KIND:
        return quotas.visible(obj, principal)
    if principal.acts_for_platform:
        return True
    metadata = obj["metadata"]
    return bool(metadata["org"] == principal.org and metadata["project"] == principal.project)


def _present(view: ReadView, kind: str, obj: dict[str, Any], principal: Principal) -> dict[str, Any]:
    if kind == pools.KIND:
        return pools.render(view, obj)
    if kind == nodes.KIND:
        return nodes.render(view, obj, principal)
    if kind == quotas.KIND:
        return quotas.render(view, obj, principal)
    return obj


# (field path, value, negated): `path=value` or `path!=value`; "" stands for an unset field.
FieldRequirement = tuple[str, str, bool]


_field_requirement = re.compile(r"([^=!]+)(==|=|!=)([^=!]*)")


def _check_selector_value(name: str, value: str) -> None:
    """Refuse a value that names no node, pool or class (it could only ever match nothing)."""
    try:
        if name == "spec.nodeName":
            check_node_name(value, "fieldSelector")
        elif name.endswith(".pool"):
            parts = value.split("/")
            if len(parts) not in (1, 3):
                raise invalid("a pool id is name or org/project/name", "fieldSelector")
            for part in parts:
                check_name(part, "fieldSelector")
        elif name.endswith(".className"):
            check_name(value, "fieldSelector")
    except Rejected:
        what = {"spec.nodeName": "a node name"}.get(
            name, "a class name" if name.endswith(".className") else "a pool id"
        )
        raise invalid(
            f"fieldSelector {name} value {shown(value)} is not {what} (node names: 1-{node_name_chars_max} "
            "lowercase letters, digits, '-' and '.'; pool ids: name or org/project/name; names: DNS labels)",
            "fieldSelector",
        ) from None


def parse_field_selector(text: str, kind: str) -> tuple[FieldRequirement, ...]:
    field_path = "fieldSelector"
    if len(text) > field_selector_chars_max:
        raise invalid(f"fieldSelector is longer than {field_selector_chars_max} characters", field_path)
    supported = FIELD_SELECTORS.get(kind, ())
    requirements = []
    for part in text.split(","):
        requirement = _field_requirement.fullmatch(part.strip())
        if requirement is None:
            raise invalid(
                f"fieldSelector {part!r} is not a requirement: use field=value, field==value or field!=value",
                field_path,
            )
        name, operator, value = requirement.group(1).strip(), requirement.group(2), requirement.group(3).strip()
        negated = operator == "!="
        if name not in supported:
            known = ", ".join(supported) or "none"
            raise invalid(
                f"fieldSelector {part!r} names a field that is not supported for {kind}; supported fields: {known}",
                field_path,
            )
        if value:  # a value no object can hold would match nothing (or everything), silently
            _check_selector_value(name, value)
        allowed = FIELD_SELECTOR_VALUES.get((kind, name))
        if allowed is not None and value not in allowed:
            raise invalid(
                f"fieldSelector {name} must be one of {', '.join(allowed)}, not {value!r}",
                field_path,
                allowed=list(allowed),
            )
        requirements.append((name, value, negated))
    return tuple(requirements)


def field_matches(requirements: tuple[FieldRequirement, ...], obj: dict[str, Any]) -> bool:
    for path, wanted, negated in requirements:
        section, _, name = path.partition(".")
        actual = obj.get(section, {}).get(name)
        if ((actual or "") == wanted) == negated:
            return False
    return True


def _watch_field_matches(requirements: tuple[FieldRequirement, ...], obj: dict[str, Any]) -> bool:
    """As field_matches; and a pod drained off a node still reaches that node's watcher,
    through `status.evictedFrom`, so the node agent learns the pod left it."""
    if field_matches(requirements, obj):
        return True
    evicted = obj.get("status", {}).get("evictedFrom")
    if evicted is None or all(path != "spec.nodeName" for path, _, _ in requirements):
        return False
    as_before = {**obj, "spec": {**obj.get("spec", {}), "nodeName": evicted}}
    return field_matches(requirements, as_before)


def _selected_event_type(
    requirements: tuple[FieldRequirement, ...], event_type: str, obj: dict[str, Any], before: list[Any]
) -> str | None:
    """How a pod's event reads to a watch with a field selector, or None when it does not see it.

    Events since the pod's fields before the command were recorded (context.Context) say
    whether the pod matched before: one entering the selection is ADDED, one leaving it
    DELETED (with the pod as it is now), one changing inside it MODIFIED, as Kubernetes
    answers; a deleted pod reaches the watches it matched before or when deleted. Older
    events, without them, match on the pod as it is, and a pod drained off a node still
    reaches that node's watcher through `status.evictedFrom`."""
    if not before:
        return event_type if _watch_field_matches(requirements, obj) else None
    node_name, phase = before[0]
    matched = field_matches(
        requirements,
        {**obj, "spec": {**obj["spec"], "nodeName": node_name}, "status": {**obj["status"], "phase": phase}},
    )
    return _seen_as(event_type, matched, field_matches(requirements, obj))


def _seen_as(event_type: str, matched: bool, matches_now: bool) -> str | None:
    """An event to a watch with a selector, from whether the object matched it before the
    command and matches it now: one entering the selection is ADDED, one leaving it DELETED,
    one changing inside it keeps its type; a deleted object reaches the watches it matched
    before or when deleted; None when the watch does not see it."""
    if event_type == DELETED:
        return DELETED if matched or matches_now else None
    if matched and matches_now:
        return event_type
    if matches_now:
        return ADDED
    return DELETED if matched else None


def _label_selected_event_type(
    requirements: tuple[Requirement, ...], event_type: str, obj: dict[str, Any], before: list[Any]
) -> str | None:
    """How an event reads to a watch with a label selector, or None when it does not see it.
    An event of a command that changed the object's labels (a label patch, a quota set again, a
    retained allocation bound again) carries the labels before (context.Context; a pod's event
    carries its selectable fields first): an object whose new labels enter the selection is
    ADDED, one whose labels leave it DELETED (with the object as it is now), as Kubernetes
    answers."""
    labels_now = obj["metadata"]["labels"]
    labels_before = next((item for item in before if isinstance(item, dict)), labels_now)
    return _seen_as(event_type, matches(requirements, labels_before), matches(requirements, labels_now))


def _not_found(res: Resource, name: str) -> Rejected:
    return Rejected(NOT_FOUND, f"{res.kind} {name} not found", {"kind": res.kind, "name": name})


def get(view: ReadView, principal: Principal, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    res = resource(plural)
    if res.kind == pools.KIND:
        _, pool = pools.resolve(view, principal, name, "name")
        return pools.render(view, pool)
    if res.kind == quotas.KIND:
        org, project = quotas.parse_id(name, "name")
        raw_quota = view.get(keys.quota_key(org, project))
        quota = None if raw_quota is None else dict(loads(raw_quota))
        if quota is None or not quotas.visible(quota, principal):
            raise _not_found(res, name)
        return quotas.render(view, quota, principal)
    if res.kind == nodes.KIND:
        check_node_name(name, "name")
    else:
        check_name(name, "name")
    if res.kind == classes.KIND:
        found = classes.load(view, name)
        if found is None or not classes.visible(found, principal):
            raise _not_found(res, name)
        return found
    if res.kind == nodes.KIND:
        node = nodes.load(view, name)
        if node is None:
            raise _not_found(res, name)
        return nodes.render(view, node, principal)
    if res.kind == priorities.KIND:
        priority_class = priorities.load(view, name)
        if priority_class is None:
            raise _not_found(res, name)
        return priority_class
    # Only absence means the default namespace: an empty `namespace=` is refused, as by list and delete.
    namespace = check_name(claims.DEFAULT_NAMESPACE if namespace is None else namespace, "namespace")
    key = res.prefix + f"{principal.org}/{principal.project}/{namespace}/{name}".encode()
    raw = view.get(key)
    if raw is None:
        # Claims (and their allocations) may be the platform's own; pods and services never are.
        raise tenant_object_not_found(
            res.kind, namespace, name, principal.acts_for_platform, res.kind in _PLATFORM_MAY_OWN, qualified=False
        )
    return _decode(res, key, raw)


_PLATFORM_MAY_OWN = (claims.KIND, claims.ALLOCATION_KIND)


def _decode(res: Resource, key: bytes, raw: bytes) -> dict[str, Any]:
    """The object stored under key; claims and allocations are stored compactly (claims.py)."""
    if res.prefix in (keys.CLAIM, keys.ALLOC):
        return claims.decode_record(key, raw)
    return dict(loads(raw))


def _segments(res: Resource, principal: Principal, namespace: str | None) -> list[tuple[bytes, bytes]]:
    """Key ranges holding what the principal may list, in ascending order."""
    if res.tenant_scoped:
        if principal.acts_for_platform:
            prefix = res.prefix  # every tenant's: list_objects filters the namespace
        else:
            prefix = keys.tenant_prefix(res.prefix, principal.org, principal.project)
            if namespace is not None:
                prefix += namespace.encode() + b"/"
        return [(prefix, prefix_end(prefix))]
    if res.kind == pools.KIND and not principal.is_admin:
        platform = keys.pool_scope_prefix("", "")
        own_org = keys.pool_org_prefix(principal.org)
        return [(platform, prefix_end(platform)), (own_org, prefix_end(own_org))]
    if res.kind == quotas.KIND and not principal.acts_for_platform:
        own = keys.QUOTA + principal.org.encode() + b"/"
        return [(own, prefix_end(own))]
    return [(res.prefix, prefix_end(res.prefix))]


_CONTINUE_WITH_REVISION = b"\x01"  # no key starts with it: tokens of earlier builds are bare keys


def encode_continue(key: bytes, revision: int) -> str:
    """A token to resume a list after `key`, carrying the revision of the list's first page."""
    raw = _CONTINUE_WITH_REVISION + revision.to_bytes(8, "big") + key
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str, res: Resource) -> tuple[bytes, int | None]:
    """(the key to resume after, the first page's revision; None in a token of an earlier build)."""
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise invalid("continue token is not one this server issued", "continue") from None
    revision: int | None = None
    key = raw
    if raw.startswith(_CONTINUE_WITH_REVISION) and len(raw) > 9:
        revision, key = int.from_bytes(raw[1:9], "big"), raw[9:]
    if not key.startswith(res.prefix):
        raise invalid(f"continue token does not belong to a list of {res.plural}", "continue")
    return key, revision


def list_objects(
    view: ReadView,
    principal: Principal,
    plural: str,
    limit: int | None = None,
    continue_token: str | None = None,
    label_selector: str | None = None,
    namespace: str | None = None,
    field_selector: str | None = None,
) -> dict[str, Any]:
    res = resource(plural)
    if limit is None:
        limit = list_limit_default
    if not 1 <= limit <= list_limit_max:
        raise invalid(f"limit must be between 1 and {list_limit_max}, not {limit}", "limit")
    requirements: tuple[Requirement, ...] = parse_selector(label_selector) if label_selector else ()
    if namespace is not None:
        if not res.tenant_scoped:
            raise invalid(f"{res.plural} are not namespaced; drop the namespace", "namespace")
        check_name(namespace, "namespace")
    fields: tuple[FieldRequirement, ...] = parse_field_selector(field_selector, res.kind) if field_selector else ()
    after: bytes | None = None
    # Pages are read at the revision current when each is read, not at one snapshot. Every
    # page reports the first page's revision, so a watch from it misses nothing created or
    # changed while the list was paged; it may repeat what later pages already showed.
    list_revision = Meta.load(view).revision
    if continue_token:
        after, first_revision = decode_continue(continue_token, res)
        key_parts = after[len(res.prefix) :].split(b"/", 3)
        if namespace is not None and key_parts[2:3] != [namespace.encode()]:
            raise invalid(f"continue token belongs to a list of another namespace than {namespace}", "continue")
        if (
            res.tenant_scoped
            and principal.has_tenant
            and key_parts[:2]
            != [
                principal.org.encode(),
                principal.project.encode(),
            ]
        ):
            # Harmless (the list is the caller's own either way), but a token passed between
            # tenants is a mistake to point out, not to answer with a first page (QA, 2026-12-07).
            raise invalid("continue token belongs to another tenant's list", "continue")
        if first_revision is not None:
            # Never a revision this state has not reached: the token is not signed, and a stale
            # read on a member behind the one that served the first page is behind it too. A
            # watch from the lower revision misses nothing.
            list_revision = min(first_revision, list_revision)
    items: list[dict[str, Any]] = []
    last_key: bytes | None = None
    more = False
    for examined, (key, raw) in enumerate(_candidates(view, res, principal, namespace, fields, after)):
        if len(items) == limit or examined == list_scan_max:
            more = True
            break
        last_key = key
        obj = _decode(res, key, raw)
        metadata = obj["metadata"]
        in_namespace = namespace is None or metadata.get("namespace") == namespace
        if (
            in_namespace
            and visible(res.kind, obj, principal)
            and matches(requirements, metadata["labels"])
            and field_matches(fields, obj)
        ):
            items.append(_present(view, res.kind, obj, principal))
    return {
        "kind": f"{res.kind}List",
        "items": items,
        "metadata": {
            "continue": encode_continue(last_key, list_revision) if more and last_key is not None else None,
            "resourceVersion": list_revision,
        },
    }


def _candidates(
    view: ReadView,
    res: Resource,
    principal: Principal,
    namespace: str | None,
    fields: tuple[FieldRequirement, ...],
    after: bytes | None,
) -> Iterator[tuple[bytes, bytes]]:
    """(object key, record) pairs that may belong in the list, in key order, after `after`.

    The platform admin's pods on one node come from the node's index (a node agent's list
    reads only its own pods); everything else is a scan of the principal's key ranges."""
    node_name = None
    if res.kind == pods.KIND:
        node_name = next((value for path, value, negated in fields if path == "spec.nodeName" and not negated), None)
    if node_name and principal.acts_for_platform:
        prefix = keys.pods_on_node_prefix(node_name)
        start = prefix if after is None else max(prefix, keys.pod_on_node_key(node_name, after) + b"\x00")
        for index_key, _ in view.scan(start, prefix_end(prefix)):
            pod_key = keys.pod_of_node_index(index_key, node_name)
            raw = view.get(pod_key)
            if raw is not None:
                yield pod_key, raw
        return
    for start, end in _segments(res, principal, namespace):
        if after is not None and after >= end:
            continue
        first = start if after is None else max(start, after + b"\x00")
        yield from view.scan(first, end)


def events_after(
    view: ReadView,
    principal: Principal,
    revision: int,
    kinds: tuple[str, ...],
    limit: int = watch_events_max,
    field_selector: str | None = None,
    label_selector: str | None = None,
    scan_max: int = list_scan_max,
) -> tuple[list[dict[str, Any]], int]:
    """Events with a revision above `revision`, of the given kinds (plural names), as the
    principal may see them; and the revision to resume from. `gone` when compacted away.
    At most `limit` events, from at most `scan_max` event records.
    A field selector (pods only) keeps the events of matching pods, a label selector those of
    objects with matching labels (`_label_selected_event_type`)."""
    meta = Meta.load(view)
    if revision < meta.compacted_revision:
        raise Rejected(
            GONE,
            f"resourceVersion {revision} is older than the oldest retained event ({meta.compacted_revision}); "
            "list again and watch from the list's resourceVersion",
            {"compactedRevision": meta.compacted_revision},
        )
    wanted = {resource(plural).kind for plural in kinds}
    fields: tuple[FieldRequirement, ...] = ()
    if field_selector:
        if wanted != {pods.KIND}:
            raise invalid("a fieldSelector applies to a watch of pods alone", "fieldSelector")
        fields = parse_field_selector(field_selector, pods.KIND)
    labels: tuple[Requirement, ...] = parse_selector(label_selector) if label_selector else ()
    events: list[dict[str, Any]] = []
    resume = revision
    for examined, (key, raw) in enumerate(view.scan(keys.event_key(revision + 1), keys.EVENT_END)):
        if len(events) >= limit or examined >= scan_max:
            return events, resume  # whole revisions only, so a resumed watch never splits one
        resume = keys.event_revision(key)
        for event_type, kind, raw_object, *before in loads(raw):
            if kind not in wanted:
                continue
            obj = claims.decode_event_object(raw_object) if kind in _compact_kinds else loads(raw_object)
            if not visible(kind, obj, principal):
                continue
            seen_as: str | None = event_type
            if fields:
                seen_as = _selected_event_type(fields, event_type, obj, before)
            if labels and seen_as is not None:
                seen_as = _label_selected_event_type(labels, seen_as, obj, before)
            if seen_as is not None:
                events.append({"type": seen_as, "object": obj})
    return events, max(resume, meta.revision)


_compact_kinds = (claims.KIND, claims.ALLOCATION_KIND)  # stored and logged compactly (claims.py)


def kind_of(plural: str) -> str:
    return resource(plural).kind


def plural_of(kind: str) -> str:
    return _by_kind[kind].plural
