"""Reads: get and list for every resource, paging, label selectors, tenant visibility, and the
watch event log (`events_after`) with resume and compaction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from statemachine import Envelope, Principal, Rejected, context, keys, machine, pools
from statemachine.context import Meta
from statemachine.invariants import check_invariants
from statemachine.queries import (
    encode_continue,
    events_after,
    get,
    list_limit_max,
    list_objects,
)
from statemachine.view import Overlay
from tests.harness import ADMIN, Machine, admin_for, member

WEB = member("acme", "web")
DB = member("acme", "db")
OPS = member("acme", "ops")
API = member("globex", "api")
ALL_KINDS = ("ippools", "ipclaims", "ipallocations", "ipclasses")

# Labels of acme/web's claims w0..w9 in the default namespace.
WEB_LABELS: dict[str, dict[str, str]] = {
    "w0": {"app": "web", "tier": "front"},
    "w1": {"app": "web", "tier": "back"},
    "w2": {"app": "api", "tier": "front"},
    "w3": {"app": "api"},
    "w4": {"app": "db", "tier": "back"},
    "w5": {},
    "w6": {"tier": "front"},
    "w7": {"app": "web"},
    "w8": {"app": "cache", "tier": "back", "example.com/owner": "ops"},
    "w9": {"app": "web", "tier": "front"},
}


def _build() -> Machine:
    m = Machine()
    m.ok(ADMIN, "class.create", {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True}})
    m.ok(
        ADMIN, "class.create", {"name": "six", "spec": {"ipFamily": "IPv6", "allocation": {"defaultPrefixLength": 64}}}
    )
    m.ok(
        ADMIN,
        "class.create",
        {"name": "gold", "spec": {"ipFamily": "IPv4", "visibility": "restricted", "allowedOrgs": ["globex"]}},
    )
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "net", "labels": {"tier": "core"}, "spec": {"cidr": "10.0.0.0/16", "classNames": ["std", "gold"]}},
    )
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "v6", "labels": {"tier": "edge"}, "spec": {"cidr": "2001:db8::/48", "classNames": ["six"]}},
    )
    web_admin = admin_for("acme", "web")
    m.ok(web_admin, "pool.create", {"name": "web-own", "spec": {"parentPool": "net", "prefixLength": 24}})
    m.ok(
        web_admin,
        "pool.create",
        {
            "name": "web-shared",
            "spec": {"parentPool": "net", "prefixLength": 24, "visibility": "shared", "sharedWith": ["db"]},
        },
    )
    m.ok(
        web_admin,
        "pool.create",
        {"name": "org-wide", "spec": {"parentPool": "net", "prefixLength": 24, "visibility": "shared"}},
    )
    m.ok(
        admin_for("globex", "api"), "pool.create", {"name": "g-own", "spec": {"parentPool": "net", "prefixLength": 24}}
    )
    for name, labels in WEB_LABELS.items():
        m.ok(WEB, "claim.create", {"name": name, "labels": labels, "spec": {}})
    m.ok(WEB, "claim.create", {"name": "p1", "namespace": "prod", "spec": {"className": "six"}})
    for number in range(3):
        m.ok(DB, "claim.create", {"name": f"d{number}", "spec": {"poolRef": "acme/web/web-shared"}})
        m.ok(API, "claim.create", {"name": f"g{number}", "spec": {"poolRef": "g-own"}})
    return m


@pytest.fixture
def built() -> Machine:
    return _build()


def _names(listing: dict[str, Any]) -> list[str]:
    return [item["metadata"]["name"] for item in listing["items"]]


def _qualified(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [tuple(item["metadata"].get(part, "") for part in ("org", "project", "namespace", "name")) for item in items]


def _all_pages(
    m: Machine, principal: Principal, plural: str, limit: int, **kwargs: Any
) -> tuple[list[dict[str, Any]], int]:
    items: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        page = list_objects(m.store, principal, plural, limit=limit, continue_token=token, **kwargs)
        pages += 1
        assert len(page["items"]) <= limit
        items += page["items"]
        token = page["metadata"]["continue"]
        if token is None:
            return items, pages
        assert pages < 1000, "paging does not end"


def _refused(code: str, call: Callable[[], Any]) -> Rejected:
    with pytest.raises(Rejected) as raised:
        call()
    assert raised.value.code == code, raised.value
    return raised.value


# ---- get -----------------------------------------------------------------------------------


def test_get_pool_renders_live_status(built: Machine) -> None:
    pool = get(built.store, ADMIN, "ippools", "net")
    assert pool["kind"] == "IPPool"
    assert pool["status"]["allocatedCIDR"] == "10.0.0.0/16"
    capacity = pool["status"]["capacity"]
    assert capacity["total"] == 1 << 16
    # Four child /24s and the claims made straight from the pool (through the default class).
    assert capacity["allocated"] == 4 * 256 + len(WEB_LABELS)
    assert capacity["available"] == capacity["total"] - capacity["allocated"]
    assert get(built.store, WEB, "ippools", "web-own")["status"]["parentPool"] == "net"
    assert get(built.store, DB, "ippools", "acme/web/web-shared")["metadata"]["name"] == "web-shared"
    assert get(built.store, OPS, "ippools", "web/org-wide")["spec"]["visibility"] == "shared"


def test_an_admin_getting_a_tenant_object_without_naming_the_tenant_is_told_how(built: Machine) -> None:
    assert get(built.store, admin_for("acme", "web"), "ipclaims", "w0")["metadata"]["name"] == "w0"
    refused = _refused("not_found", lambda: get(built.store, ADMIN, "ipclaims", "w0"))
    assert "?org=...&project=..." in refused.message and refused.details == {"kind": "IPClaim", "name": "w0"}
    tenant_refusal = _refused("not_found", lambda: get(built.store, WEB, "ipclaims", "nothing"))
    assert tenant_refusal.message == "IPClaim nothing not found"  # a tenant is not told about tenants


def test_get_claim_allocation_and_class(built: Machine) -> None:
    claim = get(built.store, WEB, "ipclaims", "w0")
    allocation = get(built.store, WEB, "ipallocations", "w0")
    assert claim["kind"] == "IPClaim" and allocation["kind"] == "IPAllocation"
    assert claim["status"]["allocatedCIDR"] == allocation["spec"]["cidr"]
    assert claim["metadata"]["labels"] == WEB_LABELS["w0"]
    prod = get(built.store, WEB, "ipclaims", "p1", namespace="prod")
    assert ":" in prod["status"]["allocatedCIDR"]
    assert get(built.store, admin_for("acme", "web"), "ipclaims", "w1")["metadata"]["name"] == "w1"
    assert get(built.store, API, "ipclasses", "gold")["spec"]["visibility"] == "restricted"
    assert get(built.store, WEB, "ipclasses", "std")["spec"]["isDefault"] is True


@pytest.mark.parametrize(
    ("principal", "plural", "name", "namespace"),
    [
        (DB, "ipclaims", "w0", None),  # another project's claim
        (API, "ipallocations", "w0", None),
        (WEB, "ipclaims", "p1", None),  # wrong namespace
        (WEB, "ipclaims", "w0", "prod"),
        (WEB, "ipclaims", "nope", None),
        (WEB, "ipclasses", "gold", None),  # restricted to globex
        (OPS, "ippools", "acme/web/web-shared", None),  # shared with db only
        (OPS, "ippools", "acme/web/web-own", None),
        (API, "ippools", "acme/web/org-wide", None),  # another org
        (DB, "ippools", "web-own", None),
        (ADMIN, "ippools", "missing", None),
        (WEB, "nodes", "n1", None),  # unknown resource
    ],
)
def test_get_not_found(built: Machine, principal: Principal, plural: str, name: str, namespace: str | None) -> None:
    _refused("not_found", lambda: get(built.store, principal, plural, name, namespace=namespace))


@pytest.mark.parametrize("name", ["", "Upper", "a/b/c/d", "-x", "x" * 64])
def test_get_invalid_name(built: Machine, name: str) -> None:
    _refused("invalid", lambda: get(built.store, WEB, "ipclaims", name))


# ---- list and visibility ---------------------------------------------------------------------


def test_admin_lists_everything(built: Machine) -> None:
    claims = list_objects(built.store, ADMIN, "ipclaims")
    expected_claims = 1 + len(WEB_LABELS) + 3 + 3
    assert len(claims["items"]) == expected_claims
    assert claims["kind"] == "IPClaimList"
    assert claims["metadata"]["continue"] is None
    assert claims["metadata"]["resourceVersion"] == Meta.load(built.store).revision
    assert len(list_objects(built.store, ADMIN, "ipallocations")["items"]) == expected_claims
    assert sorted(_names(list_objects(built.store, ADMIN, "ippools"))) == sorted(
        ["net", "v6", "web-own", "web-shared", "org-wide", "g-own"]
    )
    assert sorted(_names(list_objects(built.store, ADMIN, "ipclasses"))) == ["gold", "six", "std"]
    # An admin acting for acme sees acme's classes, not gold (restricted to globex), and cannot
    # claim through it: its view is the tenant's.
    acting = admin_for("acme", "web")
    assert sorted(_names(list_objects(built.store, acting, "ipclasses"))) == ["six", "std"]
    _refused("not_found", lambda: get(built.store, acting, "ipclasses", "gold"))
    assert (
        built.refused(acting, "claim.create", {"name": "via-gold", "spec": {"className": "gold"}}).code == "not_found"
    )
    assert built.refused(acting, "class.delete", {"name": "gold"}).code == "invalid"  # classes are the platform's
    pools = list_objects(built.store, ADMIN, "ippools")["items"]
    assert all("capacity" in pool["status"] for pool in pools), "listed pools carry their live status"


@pytest.mark.parametrize(
    ("principal", "plural", "expected"),
    [
        (WEB, "ipclaims", {*WEB_LABELS, "p1"}),
        (WEB, "ipallocations", {*WEB_LABELS, "p1"}),
        (admin_for("acme", "web"), "ipclaims", {*WEB_LABELS, "p1"}),
        (DB, "ipclaims", {"d0", "d1", "d2"}),
        (API, "ipallocations", {"g0", "g1", "g2"}),
        (OPS, "ipclaims", set()),
        (WEB, "ippools", {"net", "v6", "web-own", "web-shared", "org-wide"}),
        (DB, "ippools", {"net", "v6", "web-shared", "org-wide"}),
        (OPS, "ippools", {"net", "v6", "org-wide"}),
        (API, "ippools", {"net", "v6", "g-own"}),
        (admin_for("globex", "api"), "ippools", {"net", "v6", "g-own"}),  # the tenant's view
        (WEB, "ipclasses", {"std", "six"}),
        (API, "ipclasses", {"std", "six", "gold"}),
    ],
)
def test_lists_show_only_what_the_principal_may_see(
    built: Machine, principal: Principal, plural: str, expected: set[str]
) -> None:
    listing = list_objects(built.store, principal, plural)
    assert sorted(_names(listing)) == sorted(expected)
    for item in listing["items"]:  # and each listed object can also be fetched by that principal
        metadata = item["metadata"]
        if plural == "ippools":
            ref = f"{metadata['org']}/{metadata['project']}/{metadata['name']}" if metadata["org"] else metadata["name"]
            assert get(built.store, principal, plural, ref)["metadata"]["uid"] == metadata["uid"]
        elif plural == "ipclasses":
            assert get(built.store, principal, plural, metadata["name"])["metadata"]["uid"] == metadata["uid"]
        elif principal.has_tenant:
            got = get(built.store, principal, plural, metadata["name"], namespace=metadata["namespace"])
            assert got["metadata"]["uid"] == metadata["uid"]


def test_list_by_namespace(built: Machine) -> None:
    assert _names(list_objects(built.store, WEB, "ipclaims", namespace="prod")) == ["p1"]
    assert sorted(_names(list_objects(built.store, WEB, "ipclaims", namespace="default"))) == sorted(WEB_LABELS)
    assert _names(list_objects(built.store, WEB, "ipclaims", namespace="staging")) == []
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", namespace="Bad_NS"))


def test_list_unknown_resource(built: Machine) -> None:
    _refused("not_found", lambda: list_objects(built.store, WEB, "widgets"))


# ---- paging ----------------------------------------------------------------------------------

PAGING_CASES = [
    (ADMIN, "ipclaims"),
    (ADMIN, "ipallocations"),
    (ADMIN, "ippools"),
    (ADMIN, "ipclasses"),
    (WEB, "ipclaims"),
    (WEB, "ippools"),  # two key ranges: platform pools and the org's pools
    (DB, "ippools"),
    (API, "ippools"),
    (API, "ipclasses"),
]


@pytest.mark.parametrize("limit", [1, 2, 3, 5, 7, list_limit_max])
@pytest.mark.parametrize(("principal", "plural"), PAGING_CASES)
def test_paging_collects_every_item_once(built: Machine, principal: Principal, plural: str, limit: int) -> None:
    whole = list_objects(built.store, principal, plural, limit=list_limit_max)["items"]
    paged, pages = _all_pages(built, principal, plural, limit)
    assert _qualified(paged) == _qualified(whole)
    assert len(set(_qualified(paged))) == len(paged)
    assert pages >= -(-len(whole) // limit)


def test_paging_with_a_selector(built: Machine) -> None:
    whole = list_objects(built.store, WEB, "ipclaims", label_selector="app=web")["items"]
    paged, _ = _all_pages(built, WEB, "ipclaims", 1, label_selector="app=web")
    assert _qualified(paged) == _qualified(whole)
    assert sorted(_names({"items": paged})) == ["w0", "w1", "w7", "w9"]


def test_paging_while_objects_are_added_and_removed(built: Machine) -> None:
    """Every object present throughout is seen exactly once; nothing is seen twice; an object
    added after the cursor has passed its place is not seen, one added ahead of it is."""
    original = set(_names(list_objects(built.store, WEB, "ipclaims", namespace="default")))
    seen: list[str] = []
    added_ahead: set[str] = set()
    removed: set[str] = set()
    token: str | None = None
    round_number = 0
    while True:
        page = list_objects(built.store, WEB, "ipclaims", limit=3, continue_token=token, namespace="default")
        seen += _names(page)
        token = page["metadata"]["continue"]
        if token is None:
            break
        cursor = max(seen)
        # One claim sorting before everything (behind the cursor) and one after everything.
        built.ok(WEB, "claim.create", {"name": f"a{round_number}", "spec": {}})
        built.ok(WEB, "claim.create", {"name": f"z{round_number}", "spec": {}})
        added_ahead.add(f"z{round_number}")
        # Remove one claim the cursor has not reached yet, if any.
        ahead = sorted(name for name in original - removed if name > cursor)
        if ahead:
            built.ok(WEB, "claim.delete", {"name": ahead[-1]})
            removed.add(ahead[-1])
        round_number += 1
    assert len(seen) == len(set(seen)), f"seen twice: {sorted(seen)}"
    assert set(seen) >= (original - removed)
    assert not set(seen) & removed
    assert set(seen) >= added_ahead
    assert not any(name.startswith("a") for name in seen)
    assert removed, "the test removed nothing"


@pytest.mark.parametrize("limit", [0, -1, list_limit_max + 1])
def test_invalid_limit(built: Machine, limit: int) -> None:
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", limit=limit))


@pytest.mark.parametrize(
    "token",
    [
        "!!!!",
        "a",
        "%%%",
        "AAAA",  # decodes, but to a key outside the list
        encode_continue(keys.pool_key("", "", "net"), 1),  # another resource's key
        encode_continue(b"claim", 1),
    ],
)
def test_garbage_continue_token(built: Machine, token: str) -> None:
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", continue_token=token))


def test_every_page_reports_the_first_pages_revision_so_a_watch_from_it_misses_nothing(built: Machine) -> None:
    """Pages are not one snapshot: a claim created behind the cursor is on no page. Every page
    reports the first page's revision, so the watch from the list's revision delivers it."""
    first = list_objects(built.store, WEB, "ipclaims", limit=2, namespace="default")
    listed_at = first["metadata"]["resourceVersion"]
    built.ok(WEB, "claim.create", {"name": "a-behind", "spec": {}})  # sorts before every page
    names = _names(first)
    page = first
    while page["metadata"]["continue"] is not None:
        page = list_objects(
            built.store, WEB, "ipclaims", limit=2, namespace="default", continue_token=page["metadata"]["continue"]
        )
        assert page["metadata"]["resourceVersion"] == listed_at
        names += _names(page)
    assert "a-behind" not in names
    events, _ = events_after(built.store, WEB, listed_at, ("ipclaims",))
    assert [event["object"]["metadata"]["name"] for event in events] == ["a-behind"]


@pytest.mark.parametrize("selector", ["spec.nodeName=N1", "spec.nodeName=n_1"])
def test_a_node_name_no_node_can_have_is_refused_in_a_field_selector(built: Machine, selector: str) -> None:
    _refused("invalid", lambda: list_objects(built.store, WEB, "pods", field_selector=selector))
    _refused("invalid", lambda: events_after(built.store, WEB, 0, ("pods",), field_selector=selector))
    assert list_objects(built.store, WEB, "pods", field_selector="spec.nodeName=")["items"] == []  # unbound


def test_a_continue_token_of_another_namespace_is_refused(built: Machine) -> None:
    token = list_objects(built.store, WEB, "ipclaims", limit=1, namespace="default")["metadata"]["continue"]
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", namespace="other", continue_token=token))


def test_a_continue_token_of_another_tenant_is_refused(built: Machine) -> None:
    """A token made from another tenant's key is refused (it could only ever resume within the
    caller's own range: a first page, which hid the mistake)."""
    token = encode_continue(keys.claim_key("acme", "db", "default", "d0"), 1)
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", continue_token=token))
    own = list_objects(built.store, WEB, "ipclaims", limit=1)["metadata"]["continue"]
    assert own is not None and list_objects(built.store, WEB, "ipclaims", continue_token=own)["items"]
    assert list_objects(built.store, ADMIN, "ipclaims", continue_token=token) is not None, "the platform lists all"


# ---- label selectors -------------------------------------------------------------------------

Predicate = Callable[[dict[str, str]], bool]
SELECTORS: dict[str, Predicate] = {
    "app=web": lambda labels: labels.get("app") == "web",
    "app==web": lambda labels: labels.get("app") == "web",
    " app = web ": lambda labels: labels.get("app") == "web",
    "app!=web": lambda labels: labels.get("app") != "web",
    "app in (web,api)": lambda labels: labels.get("app") in ("web", "api"),
    "app in ( web , api )": lambda labels: labels.get("app") in ("web", "api"),
    "app notin (web,api)": lambda labels: labels.get("app") not in ("web", "api"),
    "tier": lambda labels: "tier" in labels,
    "!tier": lambda labels: "tier" not in labels,
    "app=web,tier=front": lambda labels: labels.get("app") == "web" and labels.get("tier") == "front",
    "app in (web,api),!tier": lambda labels: labels.get("app") in ("web", "api") and "tier" not in labels,
    "tier notin (back),app": lambda labels: labels.get("tier") != "back" and "app" in labels,
    "app,tier,app!=db": lambda labels: "app" in labels and "tier" in labels and labels["app"] != "db",
    "example.com/owner=ops": lambda labels: labels.get("example.com/owner") == "ops",
    "app=nothing": lambda labels: False,
    "": lambda labels: True,
}


@pytest.mark.parametrize("selector", list(SELECTORS))
def test_label_selector(built: Machine, selector: str) -> None:
    listing = list_objects(built.store, WEB, "ipclaims", namespace="default", label_selector=selector)
    expected = sorted(name for name, labels in WEB_LABELS.items() if SELECTORS[selector](labels))
    assert sorted(_names(listing)) == expected


def test_selectors_distinguish_the_claims() -> None:
    """The model selects different subsets, so a selector that is ignored would be noticed."""
    subsets = {
        frozenset(name for name, labels in WEB_LABELS.items() if predicate(labels)) for predicate in SELECTORS.values()
    }
    assert len(subsets) >= 10


def test_selector_on_pools_and_allocations(built: Machine) -> None:
    assert _names(list_objects(built.store, WEB, "ippools", label_selector="tier=edge")) == ["v6"]
    assert sorted(_names(list_objects(built.store, WEB, "ipallocations", label_selector="app in (api)"))) == [
        "w2",
        "w3",
    ]


@pytest.mark.parametrize(
    "selector",
    [
        "app in (web",
        "=web",
        "app=web=x",
        "app,,tier",
        ",",
        "app,",
        "Bad Key=x",
        "app in",
        "app=we b",
        "!",
        "app notin web",
        "app=(web)",
        "!app=web",
        "app >= 3",
        "x" * 5000,
    ],
)
def test_malformed_selector_is_invalid(built: Machine, selector: str) -> None:
    _refused("invalid", lambda: list_objects(built.store, WEB, "ipclaims", label_selector=selector))


# ---- watch: events_after ---------------------------------------------------------------------


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    return [
        (
            event["type"],
            event["object"]["kind"],
            event["object"]["metadata"]["name"],
            event["object"]["metadata"]["resourceVersion"],
        )
        for event in events
    ]


def test_events_from_the_start(built: Machine) -> None:
    events, resume = events_after(built.store, ADMIN, 0, ALL_KINDS)
    meta = Meta.load(built.store)
    assert resume == meta.revision
    versions = [event["object"]["metadata"]["resourceVersion"] for event in events]
    assert versions == sorted(versions), "events out of order"
    assert set(versions) == set(range(1, meta.revision + 1)), "every revision has its events"
    assert versions[-1] == meta.revision
    assert {event["type"] for event in events} == {"ADDED"}
    # A claim is two events of one revision: its allocation, then the claim.
    claim_events = [summary for summary in _summary(events) if summary[2] == "w0"]
    assert [kind for _, kind, _, _ in claim_events] == ["IPAllocation", "IPClaim"]
    assert claim_events[0][3] == claim_events[1][3]


def test_event_types_follow_the_lifecycle(built: Machine) -> None:
    start = Meta.load(built.store).revision
    built.ok(ADMIN, "class.create", {"name": "keep", "spec": {"ipFamily": "IPv4", "reclaimPolicy": "Retain"}})
    built.ok(ADMIN, "pool.create", {"name": "kp", "spec": {"cidr": "192.168.0.0/24", "classNames": ["keep"]}})
    built.ok(WEB, "claim.create", {"name": "k1", "spec": {"className": "keep"}})
    built.ok(WEB, "claim.delete", {"name": "k1"})  # retained
    built.ok(WEB, "claim.create", {"name": "k1", "spec": {"className": "keep"}})  # bound again
    built.ok(WEB, "claim.delete", {"name": "w5"})  # released for good
    built.ok(WEB, "claim.create", {"name": "w5", "spec": {}})
    events, _ = events_after(built.store, ADMIN, start, ALL_KINDS)
    got = [(event_type, kind, name) for event_type, kind, name, _ in _summary(events)]
    assert got == [
        ("ADDED", "IPClass", "keep"),
        ("ADDED", "IPPool", "kp"),
        ("ADDED", "IPAllocation", "k1"),
        ("ADDED", "IPClaim", "k1"),
        ("MODIFIED", "IPAllocation", "k1"),
        ("DELETED", "IPClaim", "k1"),
        ("MODIFIED", "IPAllocation", "k1"),
        ("ADDED", "IPClaim", "k1"),
        ("DELETED", "IPAllocation", "w5"),
        ("DELETED", "IPClaim", "w5"),
        ("ADDED", "IPAllocation", "w5"),
        ("ADDED", "IPClaim", "w5"),
    ]
    versions = [version for *_, version in _summary(events)]
    assert versions == sorted(versions)
    assert len(set(versions)) == 7  # one revision per command
    assert versions[0] == start + 1
    released = events[4]["object"]
    assert released["status"]["phase"] == "Released"


def test_a_label_selector_follows_objects_into_and_out_of_it(built: Machine) -> None:
    """A watch with a label selector sees the events of objects whose labels match. Labels are
    fixed at creation except where a command changes them (a quota set again, a retained
    allocation bound again to a claim with other labels): then an object entering the selection
    is ADDED and one leaving it DELETED, as Kubernetes answers, and the others see nothing."""
    start = Meta.load(built.store).revision
    built.ok(ADMIN, "class.create", {"name": "keep", "spec": {"ipFamily": "IPv4", "reclaimPolicy": "Retain"}})
    built.ok(ADMIN, "pool.create", {"name": "kp", "spec": {"cidr": "192.168.0.0/24", "classNames": ["keep"]}})
    built.ok(WEB, "claim.create", {"name": "k1", "labels": {"tier": "a"}, "spec": {"className": "keep"}})
    built.ok(WEB, "claim.create", {"name": "k2", "labels": {"tier": "b"}, "spec": {"className": "keep"}})
    built.ok(WEB, "claim.delete", {"name": "k1"})  # retained, labels unchanged
    built.ok(WEB, "claim.create", {"name": "k1", "labels": {"tier": "b"}, "spec": {"className": "keep"}})
    built.ok(ADMIN, "quota.set", {"name": "acme/web", "labels": {"tier": "a"}, "spec": {"pods": 5}})
    built.ok(ADMIN, "quota.set", {"name": "acme/web", "labels": {"tier": "a"}, "spec": {"pods": 6}})
    built.ok(ADMIN, "quota.set", {"name": "acme/web", "labels": {"tier": "b"}, "spec": {"pods": 6}})
    kinds = ("ipclaims", "ipallocations", "quotas")

    def seen(selector: str) -> list[tuple[str, str, str, dict[str, str]]]:
        events, _ = events_after(built.store, ADMIN, start, kinds, label_selector=selector)
        return [
            (
                event["type"],
                event["object"]["kind"],
                event["object"]["metadata"]["name"],
                event["object"]["metadata"]["labels"],
            )
            for event in events
        ]

    a, b = {"tier": "a"}, {"tier": "b"}
    assert seen("tier=a") == [
        ("ADDED", "IPAllocation", "k1", a),
        ("ADDED", "IPClaim", "k1", a),
        ("MODIFIED", "IPAllocation", "k1", a),  # released, still tier=a
        ("DELETED", "IPClaim", "k1", a),
        ("DELETED", "IPAllocation", "k1", b),  # bound again as tier=b: it leaves the selection
        ("ADDED", "Quota", "acme/web", a),
        ("MODIFIED", "Quota", "acme/web", a),
        ("DELETED", "Quota", "acme/web", b),
    ]
    assert seen("tier=b") == [
        ("ADDED", "IPAllocation", "k2", b),
        ("ADDED", "IPClaim", "k2", b),
        ("ADDED", "IPAllocation", "k1", b),  # enters the selection
        ("ADDED", "IPClaim", "k1", b),
        ("ADDED", "Quota", "acme/web", b),
    ]
    assert seen("tier notin (a,b)") == []
    assert len(seen("tier")) == len(events_after(built.store, ADMIN, start, kinds)[0])
    _refused("invalid", lambda: events_after(built.store, ADMIN, start, kinds, label_selector="tier in (a"))


def test_events_filtered_by_kind(built: Machine) -> None:
    claims_only, resume = events_after(built.store, ADMIN, 0, ("ipclaims",))
    assert {event["object"]["kind"] for event in claims_only} == {"IPClaim"}
    assert len(claims_only) == len(list_objects(built.store, ADMIN, "ipclaims")["items"])
    assert resume == Meta.load(built.store).revision
    two, _ = events_after(built.store, ADMIN, 0, ("ippools", "ipclasses"))
    assert {event["object"]["kind"] for event in two} == {"IPPool", "IPClass"}
    assert events_after(built.store, ADMIN, 0, ())[0] == []
    _refused("not_found", lambda: events_after(built.store, ADMIN, 0, ("widgets",)))


def test_events_filtered_by_tenant(built: Machine) -> None:
    events, _ = events_after(built.store, DB, 0, ALL_KINDS)
    by_kind: dict[str, set[str]] = {}
    for event in events:
        by_kind.setdefault(event["object"]["kind"], set()).add(event["object"]["metadata"]["name"])
    assert by_kind["IPClaim"] == {"d0", "d1", "d2"}
    assert by_kind["IPAllocation"] == {"d0", "d1", "d2"}
    assert by_kind["IPPool"] == {"net", "v6", "web-shared", "org-wide"}
    assert by_kind["IPClass"] == {"std", "six"}
    api_events, _ = events_after(built.store, API, 0, ("ipclasses",))
    assert {event["object"]["metadata"]["name"] for event in api_events} == {"std", "six", "gold"}


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_resuming_sees_every_event_once(built: Machine, limit: int) -> None:
    """Watch in small batches while commands keep coming: the batches add up to the full log."""
    seen: list[tuple[str, str, str, int]] = []
    revision = 0
    calls = 0
    extra = 0
    while True:
        events, resume = events_after(built.store, WEB, revision, ALL_KINDS, limit=limit)
        calls += 1
        assert resume >= revision
        seen += _summary(events)
        if events:
            assert (
                resume == events[-1]["object"]["metadata"]["resourceVersion"]
                or resume == Meta.load(built.store).revision
            )
        if calls % 3 == 0 and extra < 6:
            built.ok(WEB, "claim.create", {"name": f"n{extra}", "spec": {}})
            built.ok(DB, "claim.create", {"name": f"n{extra}", "spec": {"poolRef": "acme/web/org-wide"}})
            extra += 1
        if not events and resume == Meta.load(built.store).revision and extra >= 6:
            break
        revision = resume
        assert calls < 1000
    everything, _ = events_after(built.store, WEB, 0, ALL_KINDS)
    assert seen == _summary(everything)
    assert len(seen) == len(set(seen))


def test_a_batch_never_splits_a_revision(built: Machine) -> None:
    """With limit 1, the two events of a claim's revision still come together."""
    start = Meta.load(built.store).revision
    built.ok(WEB, "claim.create", {"name": "pair", "spec": {}})
    events, resume = events_after(built.store, WEB, start, ("ipclaims", "ipallocations"), limit=1)
    assert [event["object"]["kind"] for event in events] == ["IPAllocation", "IPClaim"]
    assert resume == start + 1


def test_watch_from_a_list_sees_later_changes(built: Machine) -> None:
    listing = list_objects(built.store, WEB, "ipclaims")
    built.ok(WEB, "claim.delete", {"name": "w1"})
    built.ok(DB, "claim.delete", {"name": "d1"})
    events, _ = events_after(built.store, WEB, listing["metadata"]["resourceVersion"], ("ipclaims",))
    assert [(event["type"], event["object"]["metadata"]["name"]) for event in events] == [("DELETED", "w1")]


def test_watch_from_the_future_is_empty(built: Machine) -> None:
    revision = Meta.load(built.store).revision
    assert events_after(built.store, WEB, revision + 10, ALL_KINDS) == ([], revision + 10)


def test_compaction_answers_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old events are dropped past `events_max` (read by machine.py, which imports it by
    value from context.py: patch both); a watch from before the oldest kept is `gone`."""
    retained_max = 5
    monkeypatch.setattr(machine, "events_max", retained_max)
    monkeypatch.setattr(context, "events_max", retained_max)
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/24"}})
    for number in range(12):
        m.ok(WEB, "claim.create", {"name": f"c{number}", "spec": {"poolRef": "p"}})
    meta = Meta.load(m.store)
    assert meta.revision == 13
    assert meta.compacted_revision == meta.revision - retained_max
    retained = list(m.store.scan(keys.EVENT, keys.EVENT_END))
    assert len(retained) == meta.events == retained_max
    gone = _refused("gone", lambda: events_after(m.store, WEB, meta.compacted_revision - 1, ALL_KINDS))
    assert gone.details["compactedRevision"] == meta.compacted_revision
    _refused("gone", lambda: events_after(m.store, WEB, 0, ALL_KINDS))
    events, resume = events_after(m.store, WEB, meta.compacted_revision, ALL_KINDS)
    assert resume == meta.revision
    versions = [event["object"]["metadata"]["resourceVersion"] for event in events]
    assert sorted(set(versions)) == list(range(meta.compacted_revision + 1, meta.revision + 1))
    assert [event["object"]["metadata"]["name"] for event in events if event["object"]["kind"] == "IPClaim"] == [
        f"c{number}" for number in range(7, 12)
    ]
    check_invariants(m.store)


def test_a_watcher_that_keeps_up_survives_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(machine, "events_max", 3)
    monkeypatch.setattr(context, "events_max", 3)
    m = Machine()
    m.ok(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/24"}})
    revision = 0
    seen: list[str] = []
    for number in range(10):
        m.ok(WEB, "claim.create", {"name": f"c{number}", "spec": {"poolRef": "p"}})
        events, revision = events_after(m.store, WEB, revision, ("ipclaims",))
        seen += [event["object"]["metadata"]["name"] for event in events]
    assert seen == [f"c{number}" for number in range(10)]


# ---- pod watches with a field selector ---------------------------------------------------------


def _pod_events(m: Machine, revision: int, selector: str | None = None) -> list[tuple[str, str, str]]:
    events, _ = events_after(m.store, WEB, revision, ("pods",), field_selector=selector)
    return [(e["type"], e["object"]["metadata"]["name"], e["object"]["status"]["phase"]) for e in events]


def test_a_pod_entering_or_leaving_a_field_selection_is_added_or_deleted_for_that_watch() -> None:
    """As Kubernetes answers a watch with a field selector: a pending pod that binds leaves a
    `status.phase=Pending` watch (DELETED) and enters its node's (ADDED); drained, it goes back.
    A revision carries one event per object, the object as the revision left it."""
    m = Machine()
    m.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    capacity = {"cpuMillis": 1000, "memoryBytes": 1 << 30, "pods": 10}
    m.ok(ADMIN, "node.register", {"name": "n1", "spec": {"capacity": capacity, "podPool": "pods"}})
    m.ok(ADMIN, "node.cordon", {"name": "n1"})
    m.ok(WEB, "pod.create", {"name": "p", "spec": {"requests": {"cpuMillis": 100}}})
    pending_since = Meta.load(m.store).revision
    m.ok(ADMIN, "node.uncordon", {"name": "n1"})  # binds p in the same revision
    assert _pod_events(m, pending_since) == [("MODIFIED", "p", "Bound")]
    assert _pod_events(m, pending_since, "status.phase=Pending") == [("DELETED", "p", "Bound")]
    assert _pod_events(m, pending_since, "spec.nodeName=n1") == [("ADDED", "p", "Bound")]
    assert _pod_events(m, pending_since, "spec.nodeName=n2") == []

    bound_since = Meta.load(m.store).revision
    m.ok(ADMIN, "node.drain", {"name": "n1"})  # evicted, then found unschedulable: one event
    assert _pod_events(m, bound_since) == [("MODIFIED", "p", "Pending")]
    assert _pod_events(m, bound_since, "status.phase=Pending") == [("ADDED", "p", "Pending")]
    assert _pod_events(m, bound_since, "spec.nodeName=n1") == [("DELETED", "p", "Pending")]

    drained_since = Meta.load(m.store).revision
    m.ok(WEB, "pod.delete", {"name": "p"})
    assert _pod_events(m, drained_since, "status.phase=Pending") == [("DELETED", "p", "Pending")]
    assert _pod_events(m, drained_since, "spec.nodeName=n1") == []


def test_claims_and_allocations_are_listed_by_pool_class_and_phase() -> None:
    """Field selectors on claims (`status.pool`, `status.className`) and allocations
    (`spec.pool`, `spec.className`, `status.phase`): what holds a pool that will not delete,
    a retained (Released) allocation included, found without paging through every one."""
    m = Machine(check_every_step=True)
    web = member("acme", "web")
    m.ok(ADMIN, "class.create", {"name": "std", "spec": {"ipFamily": "IPv4"}})
    m.ok(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.90.0.0/24", "classNames": ["std"]}})
    m.ok(ADMIN, "pool.create", {"name": "q", "spec": {"cidr": "10.91.0.0/24"}})
    m.ok(web, "claim.create", {"name": "in-p", "spec": {"poolRef": "p"}})
    m.ok(web, "claim.create", {"name": "by-class", "spec": {"className": "std"}})
    m.ok(web, "claim.create", {"name": "in-q", "spec": {"poolRef": "q"}})
    m.ok(web, "claim.create", {"name": "kept", "spec": {"poolRef": "p", "reclaimPolicy": "Retain"}})
    m.ok(web, "claim.delete", {"name": "kept"})
    assert _names(list_objects(m.store, web, "ipclaims", field_selector="status.pool=p")) == ["by-class", "in-p"]
    assert _names(list_objects(m.store, web, "ipclaims", field_selector="status.className=std")) == ["by-class"]
    assert _names(list_objects(m.store, web, "ipclaims", field_selector="status.pool!=p")) == ["in-q"]
    in_p = list_objects(m.store, ADMIN, "ipallocations", field_selector="spec.pool=p")
    assert _names(in_p) == ["by-class", "in-p", "kept"]
    released = list_objects(m.store, web, "ipallocations", field_selector="spec.pool=p,status.phase=Released")
    assert _names(released) == ["kept"]
    _refused("invalid", lambda: list_objects(m.store, web, "ipallocations", field_selector="status.phase=Gone"))
    _refused("invalid", lambda: list_objects(m.store, web, "ipclaims", field_selector="spec.poolRef=p"))
    _refused("invalid", lambda: list_objects(m.store, web, "ippools", field_selector="spec.cidr=10.90.0.0/24"))
    # A value no pool, class or node can have would list nothing (or, negated, everything), silently.
    for selector in ("status.pool=!p", "status.pool=acme/p", "status.className=Std", "status.pool!==p"):
        with pytest.raises(Rejected) as refused:
            list_objects(m.store, web, "ipclaims", field_selector=selector)
        assert refused.value.code == "invalid", selector
    refusal = _refused("invalid", lambda: list_objects(m.store, web, "pods", field_selector="spec.nodeName!=BAD"))
    assert "is not a node name" in refusal.message, refusal
    assert _names(list_objects(m.store, web, "ipclaims", field_selector="status.pool==p")) == ["by-class", "in-p"]


def test_an_event_merged_from_two_writes_keeps_the_labels_before_the_command() -> None:
    """One command that writes an object and then relabels it logs one MODIFIED event; it must
    still carry the labels from before the command, or a label-selector watch would see a
    MODIFIED where the object left its selection (DELETED). No command does this today
    (each writes an object once); the event log must not depend on that."""
    store = Machine()
    store.ok(ADMIN, "pool.create", {"name": "edge", "labels": {"tier": "a"}, "spec": {"cidr": "10.0.0.0/16"}})
    overlay = Overlay(store.store)
    meta = Meta.load(store.store)
    ctx = context.Context(overlay, Envelope("pool.update", {}, ADMIN, None, store.ts_ms + 1), store.index + 1, 0, meta)
    key = keys.pool_key("", "", "edge")
    pool = pools.load(overlay, key)
    assert pool is not None
    ctx.write_object(key, pools.KIND, pool, context.MODIFIED)  # a first write that leaves the labels
    pool["metadata"]["labels"] = {"tier": "b"}
    ctx.write_object(key, pools.KIND, pool, context.MODIFIED, {"tier": "a"})  # then a relabel
    (event,) = ctx.events
    assert event is not None and event[0] == context.MODIFIED and event[3:] == [{"tier": "a"}], event
