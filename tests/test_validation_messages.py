"""Refusals say what is true and name the field to fix: quota refusals report real usage, claim
and service refusals name the precise spec field, a class still in use names its pool by its id,
pod field selectors refuse a phase that does not exist, and IPv6 pools never hand out
IPv4-mapped addresses (RFC 4291 section 2.5.5.2). Every refusal here must change nothing, which
`Machine.refused` checks."""

from __future__ import annotations

from typing import Any

import pytest

from statemachine import Rejected, queries
from statemachine.queries import events_after, get, list_objects
from tests.harness import ADMIN, Machine, admin_for, member

WEB = member("acme", "web")
MAPPED = "::ffff:0.0.0.0/96"  # how the API renders ::ffff:0:0/96


# ---- quota_exceeded reports the real usage ----------------------------------------------------


def _cluster_with_usage(quota: str) -> Machine:
    """acme/web uses 270 millicores on a node with room, under a 1000-millicore `quota`."""
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    capacity = {"cpuMillis": 8000, "memoryBytes": 8 << 30, "pods": 8}
    m.ok(ADMIN, "node.register", {"name": "n1", "spec": {"capacity": capacity, "podPool": "pods"}})
    m.ok(ADMIN, "quota.set", {"name": quota, "spec": {"cpuMillis": 1000}})
    bound = m.ok(WEB, "pod.create", {"name": "small", "spec": {"requests": {"cpuMillis": 270}}})
    assert bound["status"]["phase"] == "Bound", bound["status"]
    return m


@pytest.mark.parametrize("quota", ["acme/web", "acme"])
def test_a_pod_over_the_limit_alone_is_refused_with_the_real_usage(quota: str) -> None:
    m = _cluster_with_usage(quota)
    refused = m.refused(WEB, "pod.create", {"name": "huge", "spec": {"requests": {"cpuMillis": 1500}}})
    assert refused.code == "quota_exceeded"
    assert refused.details == {"quota": quota, "resource": "cpuMillis", "limit": 1000, "used": 270, "requested": 1500}
    assert refused.message == (
        f"quota {quota} allows cpuMillis 1000; the pod alone requests 1500, more than the limit 1000 (270 is used now)"
    )


def test_a_pod_that_fits_the_limit_alone_waits_and_says_why() -> None:
    m = _cluster_with_usage("acme/web")
    waiting = m.ok(WEB, "pod.create", {"name": "later", "spec": {"requests": {"cpuMillis": 800}}})
    assert waiting["status"]["reason"] == "QuotaExceeded"
    assert (
        waiting["status"]["message"] == "quota acme/web allows cpuMillis 1000; 270 is used and 800 more was requested"
    )


# ---- claim and service refusals name the precise field ------------------------------------------


def _ipam() -> Machine:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "class.create", {"name": "v4", "spec": {"ipFamily": "IPv4", "allocation": {"minPrefixLength": 24}}})
    m.ok(ADMIN, "class.create", {"name": "wide", "spec": {"ipFamily": "IPv4", "allocation": {"maxPrefixLength": 26}}})
    small = {"cidr": "10.50.1.0/24", "allocation": {"minPrefixLength": 28}, "classNames": ["v4"]}
    m.ok(ADMIN, "pool.create", {"name": "small", "spec": small})
    m.ok(
        ADMIN, "pool.create", {"name": "nets", "spec": {"cidr": "10.60.0.0/16", "allocation": {"maxPrefixLength": 24}}}
    )
    m.ok(ADMIN, "pool.create", {"name": "blocks", "spec": {"cidr": "10.70.0.0/16", "classNames": ["wide"]}})
    return m


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"poolRef": "small", "address": "10.50.0.9"}, "spec.address", "10.50.0.9/32 is outside IPPool small"),
        ({"poolRef": "small", "address": "fd00::1"}, "spec.address", "fd00::1/128 is IPv6 but IPPool small is IPv4"),
        ({"poolRef": "small", "prefixLength": 23}, "spec.prefixLength", "/23 is outside the /28../32"),
        ({"poolRef": "small", "cidr": "10.50.0.0/28"}, "spec.cidr", "10.50.0.0/28 is outside IPPool small"),
        ({"poolRef": "small", "cidr": "10.50.1.0/26"}, "spec.cidr", "/26 is outside the /28../32"),
        ({"className": "v4", "address": "fd00::1"}, "spec.address", "is IPv6 but IPClass v4 is IPv4"),
        ({"className": "v4", "prefixLength": 20}, "spec.prefixLength", "/20 is outside the /24../32"),
        ({"className": "v4", "prefixLength": 24}, "spec.prefixLength", "no pool backing IPClass v4 can hold a /24"),
        ({"className": "v4", "address": "10.99.0.1"}, "spec.address", "can hold a /32 at 10.99.0.1/32"),
        ({"poolRef": "small", "prefixLength": 30, "cidr": "10.50.1.0/30"}, "spec.cidr", "give at most one of"),
    ],
)
def test_claim_refusals_name_the_field(spec: dict[str, Any], field: str, says: str) -> None:
    refused = _ipam().refused(WEB, "claim.create", {"name": "x", "spec": spec})
    assert refused.code == "invalid" and refused.details["field"] == field, refused
    assert says in refused.message, refused.message


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        (
            {"poolRef": "small", "address": "fd00::1"},
            "spec.address",
            "fd00::1/128 is IPv6, the addresses here are IPv4",
        ),
        ({"poolRef": "small", "address": "10.50.0.9"}, "spec.address", "10.50.0.9/32 is outside IPPool small"),
        ({"className": "v4", "address": "fd00::1"}, "spec.address", "is IPv6, the addresses here are IPv4"),
        ({"className": "v4", "address": "10.99.0.1"}, "spec.address", "can hold a service address at 10.99.0.1"),
        ({"poolRef": "nets"}, "spec.poolRef", "/32 is outside the /16../24 that IPPool nets allows"),
        ({"className": "wide"}, "spec.className", "/32 is outside the /0../26 that IPClass wide allows"),
    ],
)
def test_service_refusals_name_the_field(spec: dict[str, Any], field: str, says: str) -> None:
    refused = _ipam().refused(WEB, "service.create", {"name": "x", "spec": spec})
    assert refused.code == "invalid" and refused.details["field"] == field, refused
    assert says in refused.message, refused.message


# ---- a class in use names its pool as the API does ------------------------------------------------


@pytest.mark.parametrize(("owner", "pool_id"), [(ADMIN, "clspool"), (admin_for("acme", "web"), "acme/web/clspool")])
def test_deleting_a_class_in_use_names_the_pool_by_its_id(owner: Any, pool_id: str) -> None:
    m = Machine()
    m.ok(ADMIN, "class.create", {"name": "cls", "spec": {"ipFamily": "IPv4"}})
    m.ok(ADMIN, "pool.create", {"name": "root", "spec": {"cidr": "10.0.0.0/16"}})
    m.ok(
        owner,
        "pool.create",
        {"name": "clspool", "spec": {"parentPool": "root", "prefixLength": 24, "classNames": ["cls"]}},
    )
    refused = m.refused(ADMIN, "class.delete", {"name": "cls"})
    assert refused.code == "conflict" and refused.details == {"pool": pool_id}
    assert f"still backed by pool {pool_id};" in refused.message


# ---- pod field selectors refuse phases that do not exist -----------------------------------------


@pytest.mark.parametrize("selector", ["status.phase=Running", "status.phase=", "spec.nodeName=n1,status.phase=bound"])
def test_an_unknown_pod_phase_is_refused_naming_the_phases(selector: str) -> None:
    m = _cluster_with_usage("acme/web")
    for read in (
        lambda: list_objects(m.store, WEB, "pods", field_selector=selector),
        lambda: events_after(m.store, WEB, 0, ("pods",), field_selector=selector),
    ):
        with pytest.raises(Rejected) as refused:
            read()
        assert refused.value.code == "invalid" and refused.value.details["field"] == "fieldSelector"
        assert refused.value.details["allowed"] == ["Pending", "Bound"]
        assert "status.phase must be one of Pending, Bound" in refused.value.message


def test_known_pod_phases_still_select() -> None:
    m = _cluster_with_usage("acme/web")
    bound = list_objects(m.store, WEB, "pods", field_selector="status.phase==Bound")
    assert [pod["metadata"]["name"] for pod in bound["items"]] == ["small"]
    assert list_objects(m.store, WEB, "pods", field_selector="status.phase=Pending")["items"] == []


# ---- IPv6 pools never hand out IPv4-mapped addresses ---------------------------------------------


def test_a_pool_inside_the_ipv4_mapped_range_is_refused() -> None:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "v4", "spec": {"cidr": "192.168.77.0/24"}})
    refused = m.refused(ADMIN, "pool.create", {"name": "mapped", "spec": {"cidr": "::ffff:192.168.77.0/120"}})
    assert refused.code == "invalid" and refused.details["field"] == "spec.cidr"
    assert "lies inside ::ffff:0.0.0.0/96" in refused.message and "create an IPv4 pool" in refused.message
    # A child pool of an IPv6 pool that contains the range is refused the same way.
    m.ok(ADMIN, "pool.create", {"name": "low", "spec": {"cidr": "::/64", "excluded": [MAPPED]}})
    child = {"parentPool": "low", "cidr": "::ffff:10.0.0.0/104"}
    refused = m.refused(ADMIN, "pool.create", {"name": "child", "spec": child})
    assert refused.code == "invalid" and refused.details["field"] == "spec.cidr", refused


@pytest.mark.parametrize(
    "spec",
    [
        {"cidr": "::/0"},
        {"cidr": "::/64"},
        {"cidr": "::/64", "excluded": ["::ffff:0:0/97"]},  # half of it
        {"cidr": "::fffe:0:0/95", "reserved": {"trailing": 1 << 31}},
    ],
)
def test_a_pool_containing_the_mapped_range_must_exclude_it(spec: dict[str, Any]) -> None:
    refused = Machine().refused(ADMIN, "pool.create", {"name": "six", "spec": spec})
    assert refused.code == "invalid" and refused.details == {"field": "spec.excluded", "missing": MAPPED}
    assert refused.message.endswith(f"add '{MAPPED}' to spec.excluded"), refused.message


def test_a_pool_that_excludes_the_mapped_range_never_hands_it_out() -> None:
    m = Machine(check_every_step=True)
    # The /95 holds two /96 blocks, the mapped range and the one below it; the trailing
    # reservation covers the mapped range as well as spec.excluded does.
    spec = {"cidr": "::fffe:0:0/95", "allocation": {"maxPrefixLength": 96}}
    for name, extra in (("ex", {"excluded": ["::ffff:0:0/96"]}), ("tr", {"reserved": {"trailing": 1 << 32}})):
        pool = m.ok(ADMIN, "pool.create", {"name": name, "spec": {**spec, **extra, "addressSpace": name}})
        assert pool["status"]["capacity"]["reserved"] == 1 << 32
        claim = m.ok(WEB, "claim.create", {"name": f"{name}-1", "spec": {"poolRef": name, "prefixLength": 96}})
        assert claim["status"]["allocatedCIDR"] == "::fffe:0:0/96"
        refused = m.refused(WEB, "claim.create", {"name": f"{name}-2", "spec": {"poolRef": name, "prefixLength": 96}})
        assert refused.code == "pool_exhausted", refused
    # The whole space, with the range excluded: a /1 can only be the upper half.
    m.ok(ADMIN, "pool.create", {"name": "all", "spec": {"cidr": "::/0", "excluded": [MAPPED], "addressSpace": "lab"}})
    claim = m.ok(WEB, "claim.create", {"name": "half", "spec": {"poolRef": "all", "prefixLength": 1}})
    assert claim["status"]["allocatedCIDR"] == "8000::/1"


@pytest.mark.parametrize(
    ("command", "spec", "field", "says"),
    [
        ("claim.create", {"address": "::ffff:10.0.0.1"}, "spec.address", "ask for 10.0.0.1 from an IPv4 pool"),
        ("claim.create", {"cidr": "::ffff:10.0.0.0/120"}, "spec.cidr", "overlaps the IPv4-mapped IPv6 addresses"),
        ("claim.create", {"cidr": "::/64"}, "spec.cidr", "overlaps the IPv4-mapped IPv6 addresses"),
        ("service.create", {"address": "::ffff:10.0.0.1"}, "spec.address", "ask for 10.0.0.1 from an IPv4 pool"),
    ],
)
def test_a_specific_ipv4_mapped_address_is_refused(command: str, spec: dict[str, Any], field: str, says: str) -> None:
    m = Machine()
    m.ok(ADMIN, "pool.create", {"name": "all", "spec": {"cidr": "::/0", "excluded": [MAPPED]}})
    refused = m.refused(WEB, command, {"name": "x", "spec": {"poolRef": "all", **spec}})
    assert refused.code == "invalid" and refused.details["field"] == field, refused
    assert says in refused.message, refused.message


# ---- labels, selectors and list parameters as Kubernetes checks them ----------------------------


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("/x", "a '/' must follow a prefix"),
        ("a..b/x", "its prefix 'a..b' must be a DNS subdomain"),
        ("a.-b/x", "its prefix 'a.-b' must be a DNS subdomain"),
        ("Example.com/x", "its prefix 'Example.com' must be a DNS subdomain"),
        ("a/b/c", "(one '/' at most)"),
        ("-x", "its name '-x' must be 1-63 letters"),
        ("x" * 300, "... (300 characters)"),
    ],
)
def test_a_bad_label_key_is_refused_saying_which_rule_it_breaks(key: str, says: str) -> None:
    m = _ipam()
    refused = m.refused(ADMIN, "pool.create", {"name": "lb", "labels": {key: "v"}, "spec": {"cidr": "10.9.0.0/24"}})
    assert refused.code == "invalid" and says in refused.message, refused.message
    assert len(refused.message) < 400, "a long key is not echoed whole"


def test_good_label_keys_with_prefixes_are_kept() -> None:
    m = _ipam()
    labels = {"example.com/app": "web", "a.b-c.d/x_y.z": "", "tier": "Front-1"}
    assert m.ok(ADMIN, "pool.create", {"name": "lb", "labels": labels, "spec": {"cidr": "10.9.0.0/24"}})["metadata"][
        "labels"
    ] == dict(sorted(labels.items()))


@pytest.mark.parametrize("values", [{}, 0, "", False])
def test_node_affinity_values_of_the_wrong_type_are_refused_even_when_empty(values: Any) -> None:
    m = _cluster_with_usage("acme/web")
    affinity = [{"key": "disk", "operator": "Exists", "values": values}]
    refused = m.refused(WEB, "pod.create", {"name": "p", "spec": {"nodeAffinity": affinity}})
    assert (refused.code, refused.details["field"]) == ("invalid", "spec.nodeAffinity[0].values"), refused


def test_an_unclosed_set_in_a_label_selector_says_so() -> None:
    m = _ipam()
    with pytest.raises(Rejected) as refused:
        list_objects(m.store, ADMIN, "ippools", label_selector="tier in (a")
    assert "opens a value list with '(' but never closes it" in refused.value.message


def test_a_node_name_no_node_can_have_in_a_field_selector_names_the_field() -> None:
    m = _ipam()
    with pytest.raises(Rejected) as refused:
        list_objects(m.store, ADMIN, "pods", field_selector="spec.nodeName=UPPER")
    assert refused.value.message.startswith("fieldSelector spec.nodeName value 'UPPER' is not a node name")
    assert refused.value.details == {"field": "fieldSelector"}


def test_an_empty_namespace_is_refused_by_get_as_by_list() -> None:
    m = _ipam()
    m.ok(WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "small"}})
    assert get(m.store, WEB, "ipclaims", "c1")["metadata"]["namespace"] == "default"
    with pytest.raises(Rejected) as by_get:
        get(m.store, WEB, "ipclaims", "c1", "")
    with pytest.raises(Rejected) as by_list:
        list_objects(m.store, WEB, "ipclaims", namespace="")
    assert by_get.value.details["field"] == by_list.value.details["field"] == "namespace"


def test_a_continue_token_never_reports_a_revision_this_state_has_not_reached() -> None:
    """Tokens are not signed: one that claims a later revision (forged, or from a member ahead
    of this one) pages on, reporting this state's own revision."""
    m = _ipam()
    for name in ("c1", "c2", "c3"):
        m.ok(WEB, "claim.create", {"name": name, "spec": {"poolRef": "small"}})
    first = list_objects(m.store, WEB, "ipclaims", limit=1)
    revision = first["metadata"]["resourceVersion"]
    after = queries.decode_continue(first["metadata"]["continue"], queries.resource("ipclaims"))[0]
    ahead = queries.encode_continue(after, revision + 1000)
    page = list_objects(m.store, WEB, "ipclaims", limit=1, continue_token=ahead)
    assert page["metadata"]["resourceVersion"] == revision
    assert [claim["metadata"]["name"] for claim in page["items"]] == ["c2"]
    behind = queries.encode_continue(after, revision - 1)
    assert list_objects(m.store, WEB, "ipclaims", limit=1, continue_token=behind)["metadata"]["resourceVersion"] == (
        revision - 1
    )


@pytest.mark.parametrize(
    ("plural", "owners"), [("ipclaims", "the platform or a project"), ("pods", "projects"), ("services", "projects")]
)
def test_the_platform_admin_missing_an_object_is_told_how_to_reach_a_tenants(plural: str, owners: str) -> None:
    m = _ipam()
    with pytest.raises(Rejected) as refused:
        get(m.store, ADMIN, plural, "web-1")
    message = refused.value.message
    assert "not found in the platform's namespace default;" in message, message
    assert f"belong to {owners}" in message and "--as ORG/PROJECT" in message, message


@pytest.mark.parametrize(("command", "body"), [("pod.create", {"name": "p", "spec": {}}), ("service.create", {})])
def test_a_pod_or_service_without_a_tenant_says_how_to_act_for_one(command: str, body: dict[str, Any]) -> None:
    m = _ipam()
    refused = m.refused(ADMIN, command, {"name": "p", "spec": body.get("spec", {"poolRef": "small"})})
    assert refused.details == {"field": "principal"} and "--as ORG/PROJECT" in refused.message, refused


def test_a_pending_pod_that_a_lowered_quota_can_never_hold_says_so() -> None:
    """Created first, then the quota lowered below what the pod alone requests: no other pod's
    going would let it bind, and its pending message says so."""
    m = _cluster_with_usage("acme/web")
    m.ok(ADMIN, "quota.delete", {"name": "acme/web"})
    big = m.ok(WEB, "pod.create", {"name": "big", "spec": {"requests": {"cpuMillis": 9000}}})
    assert big["status"]["reason"] == "Unschedulable"  # more than the node's 8000
    m.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"cpuMillis": 2000}})
    m.ok(ADMIN, "scheduler.retry", {"pods": 16})
    pending = get(m.store, WEB, "pods", "big")["status"]
    assert (pending["phase"], pending["reason"]) == ("Pending", "QuotaExceeded"), pending
    assert "the pod alone requests 9000, more than the limit 2000" in pending["message"], pending["message"]


# ---- reserved pools, quota-held nominations, services over quota --------------------------------


def _reserved_for_acme() -> Machine:
    m = Machine(check_every_step=True)
    restricted = {"ipFamily": "IPv4", "visibility": "restricted", "allowedOrgs": ["acme"]}
    m.ok(ADMIN, "class.create", {"name": "acme-only", "spec": restricted})
    m.ok(ADMIN, "pool.create", {"name": "resv", "spec": {"cidr": "10.10.0.0/16", "classNames": ["acme-only"]}})
    return m


def test_a_reserved_pool_is_no_nodes_pod_pool_not_even_through_an_internal_child() -> None:
    m = _reserved_for_acme()
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "resv-int", "spec": {"parentPool": "resv", "prefixLength": 20, "visibility": "internal"}},
    )
    capacity = {"cpuMillis": 1000, "memoryBytes": 1 << 30, "pods": 8}
    for pool in ("resv", "resv-int"):
        refused = m.refused(ADMIN, "node.register", {"name": "n1", "spec": {"capacity": capacity, "podPool": pool}})
        assert refused.details == {"field": "spec.podPool"} and "is reserved for acme" in refused.message, refused


def test_a_quota_cannot_name_a_pool_reserved_for_other_orgs() -> None:
    m = _reserved_for_acme()
    refused = m.refused(ADMIN, "quota.set", {"name": "globex", "spec": {"addressesByPool": {"resv": 5}}})
    assert refused.details == {"field": "spec.addressesByPool.resv"} and "reserved for other orgs" in refused.message
    m.ok(ADMIN, "quota.set", {"name": "acme", "spec": {"addressesByPool": {"resv": 5}}})


def test_a_pod_its_quota_holds_back_gives_up_its_nomination() -> None:
    """Its reservation would keep other pods, other tenants' too, off the node while no node's
    capacity could let it bind."""
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    capacity = {"cpuMillis": 1000, "memoryBytes": 8 << 30, "pods": 8}
    m.ok(ADMIN, "node.register", {"name": "na", "spec": {"capacity": capacity, "podPool": "pods"}})
    globex = member("globex", "prod")
    m.ok(globex, "pod.create", {"name": "fill", "spec": {"requests": {"cpuMillis": 600}}})
    big = m.ok(globex, "pod.create", {"name": "big", "spec": {"requests": {"cpuMillis": 800}}})
    assert big["status"]["nominatedNodeName"] == "na"
    assert (
        m.ok(WEB, "pod.create", {"name": "small", "spec": {"requests": {"cpuMillis": 300}}})["status"]["phase"]
        == "Pending"
    )
    m.ok(ADMIN, "quota.set", {"name": "globex/prod", "spec": {"cpuMillis": 700}})
    m.ok(ADMIN, "scheduler.retry", {"pods": 16})
    held = get(m.store, globex, "pods", "big")["status"]
    assert (held["reason"], held["nominatedNodeName"]) == ("QuotaExceeded", None), held
    assert get(m.store, WEB, "pods", "small")["status"]["phase"] == "Bound"


def test_a_service_through_a_class_whose_open_pools_are_full_is_told_the_quota_not_all_full() -> None:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "class.create", {"name": "svc", "spec": {"ipFamily": "IPv4"}})
    for name, cidr in (("sa", "10.120.0.0/30"), ("sb", "10.121.0.0/30"), ("sc", "10.122.0.0/31")):
        m.ok(ADMIN, "pool.create", {"name": name, "spec": {"cidr": cidr, "classNames": ["svc"]}})
    m.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"addressesByPool": {"sa": 1, "sb": 1}}})
    pools_taken = [
        m.ok(WEB, "service.create", {"name": f"s{number}", "spec": {"className": "svc"}})["status"]["pool"]
        for number in range(4)
    ]
    assert sorted(pools_taken) == ["sa", "sb", "sc", "sc"]
    refused = m.refused(WEB, "service.create", {"name": "s5", "spec": {"className": "svc"}})
    assert (refused.code, refused.details["resource"]) == ("quota_exceeded", "addressesByPool.sa"), refused


def test_a_service_through_a_class_whose_pools_are_all_full_is_told_so_even_at_a_limit() -> None:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "class.create", {"name": "svc", "spec": {"ipFamily": "IPv4"}})
    for name, cidr in (("sa", "10.120.0.0/31"), ("sc", "10.122.0.0/31")):
        m.ok(ADMIN, "pool.create", {"name": name, "spec": {"cidr": cidr, "classNames": ["svc"]}})
    m.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"addressesByPool": {"sa": 2}}})
    for number in range(4):
        m.ok(WEB, "service.create", {"name": f"s{number}", "spec": {"className": "svc"}})
    refused = m.refused(WEB, "service.create", {"name": "s5", "spec": {"className": "svc"}})
    assert refused.code == "pool_exhausted", refused  # sa is at its limit, but raising it would free nothing
