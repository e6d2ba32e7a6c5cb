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
from dataclasses import dataclass
from typing import Any

from statemachine import claims, classes, keys, pools
from statemachine.codec import Principal, loads
from statemachine.context import Meta
from statemachine.errors import GONE, NOT_FOUND, Rejected, invalid
from statemachine.fields import check_name
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
    tenant_scoped: bool  # claims and allocations: keyed by the caller's org and project


RESOURCES = {
    "ippools": Resource("ippools", pools.KIND, keys.POOL, False),
    "ipclasses": Resource("ipclasses", classes.KIND, keys.CLASS, False),
    "ipclaims": Resource("ipclaims", claims.KIND, keys.CLAIM, True),
    "ipallocations": Resource("ipallocations", claims.ALLOCATION_KIND, keys.ALLOC, True),
}
_by_kind = {resource.kind: resource for resource in RESOURCES.values()}


def resource(plural: str) -> Resource:
    found = RESOURCES.get(plural)
    if found is None:
        raise Rejected(NOT_FOUND, f"unknown resource {plural!r}; known: {', '.join(RESOURCES)}")
    return found


def visible(kind: str, obj: dict[str, Any], principal: Principal) -> bool:
    if kind == pools.KIND:
        return pools.visible(obj, principal)
    if kind == classes.KIND:
        return classes.visible(obj, principal)
    if principal.is_admin and not principal.has_tenant:
        return True
    metadata = obj["metadata"]
    return bool(metadata["org"] == principal.org and metadata["project"] == principal.project)


def _present(view: ReadView, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return pools.render(view, obj) if kind == pools.KIND else obj


def _not_found(res: Resource, name: str) -> Rejected:
    return Rejected(NOT_FOUND, f"{res.kind} {name} not found", {"kind": res.kind, "name": name})


def get(view: ReadView, principal: Principal, plural: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    res = resource(plural)
    if res.kind == pools.KIND:
        _, pool = pools.resolve(view, principal, name, "name")
        return pools.render(view, pool)
    check_name(name, "name")
    if res.kind == classes.KIND:
        found = classes.load(view, name)
        if found is None or not classes.visible(found, principal):
            raise _not_found(res, name)
        return found
    namespace = check_name(namespace or claims.DEFAULT_NAMESPACE, "namespace")
    key = res.prefix + f"{principal.org}/{principal.project}/{namespace}/{name}".encode()
    raw = view.get(key)
    if raw is None:
        raise _not_found(res, name)
    return dict(loads(raw))


def _segments(res: Resource, principal: Principal, namespace: str | None) -> list[tuple[bytes, bytes]]:
    """Key ranges holding what the principal may list, in ascending order."""
    if res.tenant_scoped:
        if principal.is_admin and not principal.has_tenant:
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
    return [(res.prefix, prefix_end(res.prefix))]


def encode_continue(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def decode_continue(token: str, res: Resource) -> bytes:
    try:
        key = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise invalid("continue token is not one this server issued", "continue") from None
    if not key.startswith(res.prefix):
        raise invalid(f"continue token does not belong to a list of {res.plural}", "continue")
    return key


def list_objects(
    view: ReadView,
    principal: Principal,
    plural: str,
    limit: int | None = None,
    continue_token: str | None = None,
    label_selector: str | None = None,
    namespace: str | None = None,
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
    after = decode_continue(continue_token, res) if continue_token else None
    items: list[dict[str, Any]] = []
    examined = 0
    last_key: bytes | None = None
    more = False
    for start, end in _segments(res, principal, namespace):
        if after is not None and after >= end:
            continue
        first = start if after is None else max(start, after + b"\x00")
        for key, raw in view.scan(first, end):
            if len(items) == limit or examined == list_scan_max:
                more = True
                break
            examined += 1
            last_key = key
            obj = loads(raw)
            metadata = obj["metadata"]
            in_namespace = namespace is None or metadata.get("namespace") == namespace
            if in_namespace and visible(res.kind, obj, principal) and matches(requirements, metadata["labels"]):
                items.append(_present(view, res.kind, obj))
        if more:
            break
    return {
        "kind": f"{res.kind}List",
        "items": items,
        "metadata": {
            "continue": encode_continue(last_key) if more and last_key is not None else None,
            "resourceVersion": Meta.load(view).revision,
        },
    }


def events_after(
    view: ReadView, principal: Principal, revision: int, kinds: tuple[str, ...], limit: int = watch_events_max
) -> tuple[list[dict[str, Any]], int]:
    """Events with a revision above `revision`, of the given kinds (plural names), as the
    principal may see them; and the revision to resume from. `gone` when compacted away."""
    meta = Meta.load(view)
    if revision < meta.compacted_revision:
        raise Rejected(
            GONE,
            f"resourceVersion {revision} is older than the oldest retained event ({meta.compacted_revision}); "
            "list again and watch from the list's resourceVersion",
            {"compactedRevision": meta.compacted_revision},
        )
    wanted = {resource(plural).kind for plural in kinds}
    events: list[dict[str, Any]] = []
    resume = revision
    for examined, (key, raw) in enumerate(view.scan(keys.event_key(revision + 1), keys.EVENT_END)):
        if len(events) >= limit or examined >= list_scan_max:
            return events, resume  # whole revisions only, so a resumed watch never splits one
        resume = keys.event_revision(key)
        for event_type, kind, raw_object in loads(raw):
            if kind not in wanted:
                continue
            obj = loads(raw_object)
            if visible(kind, obj, principal):
                events.append({"type": event_type, "object": obj})
    return events, max(resume, meta.revision)


def kind_of(plural: str) -> str:
    return resource(plural).kind


def plural_of(kind: str) -> str:
    return _by_kind[kind].plural
