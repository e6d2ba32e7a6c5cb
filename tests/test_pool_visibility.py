"""`internal` pools: platform pools that only the platform admin (an admin acting for no tenant)
sees and uses. Tenants, and admins acting for a tenant, get `not_found` for them everywhere a
pool can be named, never see them listed or watched, and never get their addresses through a
class or a service; the platform admin claims from them, carves child pools from them and
registers nodes on them. Every refusal here must change nothing (`Machine.refused`), and the
invariants are checked after every command."""

from __future__ import annotations

from typing import Any

import pytest

from statemachine import Ok, Principal, Rejected, pools
from statemachine.queries import events_after, get, list_objects
from tests.harness import ADMIN, Machine, admin_for, member

WEB = member("acme", "web")
ACTING = admin_for("acme", "web")  # an admin acting for acme/web: the tenant's view applies
TENANTS = [pytest.param(WEB, id="member"), pytest.param(ACTING, id="admin-for-tenant")]
CAPACITY = {"cpuMillis": 4000, "memoryBytes": 8 << 30, "pods": 8}


def _cluster() -> Machine:
    """`pods` (internal, backs class v4, first in key order among v4's pools) and `public`
    (platform, backs v4 too); v4 is the default class."""
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "class.create", {"name": "v4", "spec": {"ipFamily": "IPv4", "isDefault": True}})
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "pods", "spec": {"cidr": "10.244.0.0/22", "visibility": "internal", "classNames": ["v4"]}},
    )
    m.ok(ADMIN, "pool.create", {"name": "public", "spec": {"cidr": "10.50.0.0/24", "classNames": ["v4"]}})
    m.ok(ADMIN, "quota.set", {"name": "acme/web", "spec": {"services": 8}})
    return m


def _names(m: Machine, principal: Principal) -> list[str]:
    listed = list_objects(m.store, principal, "ippools")
    return [pool["metadata"]["name"] for pool in listed["items"]]


def _not_found(refusal: Rejected) -> None:
    assert refusal.code == "not_found", refusal


# ---- creation ------------------------------------------------------------------------------------


def test_an_internal_pool_is_a_platform_pool_created_by_the_platform_admin() -> None:
    m = _cluster()
    pool = get(m.store, ADMIN, "ippools", "pods")
    assert pool["spec"]["visibility"] == "internal"
    assert (pool["metadata"]["org"], pool["metadata"]["project"]) == ("", "")
    again = m.run(ADMIN, "pool.create", {"name": "pods", "spec": pool["spec"]}).result
    assert isinstance(again, Ok) and again.created is False


def test_a_member_may_not_create_an_internal_pool() -> None:
    m = _cluster()
    refused = m.refused(
        WEB,
        "pool.create",
        {"name": "mine", "spec": {"parentPool": "public", "prefixLength": 28, "visibility": "internal"}},
    )
    assert refused.code == "forbidden" and "internal pool" in refused.message


def test_an_admin_acting_for_a_tenant_may_not_create_an_internal_pool() -> None:
    m = _cluster()
    refused = m.refused(
        ACTING, "pool.create", {"name": "hidden", "spec": {"cidr": "10.60.0.0/24", "visibility": "internal"}}
    )
    assert refused.code == "invalid" and refused.details.get("field") == "spec.visibility", refused
    assert "act for the platform" in refused.message


def test_internal_is_listed_among_the_allowed_visibilities() -> None:
    m = _cluster()
    refused = m.refused(ADMIN, "pool.create", {"name": "bad", "spec": {"cidr": "10.9.0.0/16", "visibility": "private"}})
    assert refused.code == "invalid" and "internal" in refused.message


# ---- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_tenant_does_not_see_an_internal_pool(tenant: Principal) -> None:
    m = _cluster()
    with pytest.raises(Rejected) as caught:
        get(m.store, tenant, "ippools", "pods")
    _not_found(caught.value)
    assert _names(m, tenant) == ["public"]
    events, _ = events_after(m.store, tenant, 0, ("ippools",))
    assert [event["object"]["metadata"]["name"] for event in events] == ["public"]


def test_the_platform_admin_sees_an_internal_pool() -> None:
    m = _cluster()
    assert get(m.store, ADMIN, "ippools", "pods")["status"]["allocatedCIDR"] == "10.244.0.0/22"
    assert _names(m, ADMIN) == ["pods", "public"]
    events, _ = events_after(m.store, ADMIN, 0, ("ippools",))
    assert [event["object"]["metadata"]["name"] for event in events] == ["pods", "public"]


def test_platform_pools_stay_visible_to_every_tenant() -> None:
    m = _cluster()
    assert get(m.store, WEB, "ippools", "public")["spec"]["visibility"] == "platform"
    assert m.ok(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "public"}})["status"]["pool"] == "public"


# ---- claims ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_tenant_claim_from_an_internal_pool_is_not_found(tenant: Principal) -> None:
    m = _cluster()
    refused = m.refused(tenant, "claim.create", {"name": "grab", "spec": {"poolRef": "pods", "prefixLength": 24}})
    _not_found(refused)
    assert refused.message == "IPPool pods not found"


@pytest.mark.parametrize("tenant", TENANTS)
@pytest.mark.parametrize("spec", [{"className": "v4"}, {}], ids=["named-class", "default-class"])
def test_a_tenant_claim_through_a_class_never_lands_in_an_internal_pool(
    tenant: Principal, spec: dict[str, Any]
) -> None:
    m = _cluster()
    for index in range(4):
        claim = m.ok(tenant, "claim.create", {"name": f"c{index}", "spec": {**spec, "prefixLength": 26}})
        assert claim["status"]["pool"] == "public", claim["status"]
    # public is full now; the internal pool has room, but the tenant is told the class is full.
    refused = m.refused(tenant, "claim.create", {"name": "c4", "spec": {**spec, "prefixLength": 26}})
    assert refused.code == "pool_exhausted", refused
    assert get(m.store, ADMIN, "ippools", "pods")["status"]["capacity"]["allocated"] == 0


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_class_backed_only_by_internal_pools_serves_no_tenant(tenant: Principal) -> None:
    m = _cluster()
    m.ok(ADMIN, "class.create", {"name": "infra", "spec": {"ipFamily": "IPv4"}})
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "infra", "spec": {"cidr": "10.70.0.0/24", "visibility": "internal", "classNames": ["infra"]}},
    )
    _not_found(m.refused(tenant, "claim.create", {"name": "c", "spec": {"className": "infra"}}))
    _not_found(m.refused(tenant, "service.create", {"name": "s", "spec": {"className": "infra"}}))
    claim = m.ok(ADMIN, "claim.create", {"name": "c", "spec": {"className": "infra"}})
    assert claim["status"]["pool"] == "infra"


def test_the_platform_admin_claims_from_an_internal_pool() -> None:
    m = _cluster()
    claim = m.ok(ADMIN, "claim.create", {"name": "gw", "spec": {"poolRef": "pods", "prefixLength": 28}})
    assert claim["status"]["allocatedCIDR"] == "10.244.0.0/28" and claim["status"]["pool"] == "pods"
    by_class = m.ok(ADMIN, "claim.create", {"name": "viaclass", "spec": {"className": "v4", "prefixLength": 28}})
    assert by_class["status"]["pool"] == "pods"  # ranked with the platform pools, in key order
    m.ok(ADMIN, "claim.delete", {"name": "gw"})
    assert get(m.store, ADMIN, "ippools", "pods")["status"]["capacity"]["allocated"] == 16


# ---- services --------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_tenant_service_never_gets_an_internal_address(tenant: Principal) -> None:
    m = _cluster()
    _not_found(m.refused(tenant, "service.create", {"name": "s", "spec": {"poolRef": "pods"}}))
    _not_found(m.refused(tenant, "service.create", {"name": "s", "spec": {"poolRef": "pods", "address": "10.244.0.9"}}))
    for spec in ({"className": "v4"}, {}):
        name = f"s{len(spec)}"
        service = m.ok(tenant, "service.create", {"name": name, "spec": spec})
        assert service["status"]["pool"] == "public", service["status"]
        assert service["status"]["address"].startswith("10.50.0."), service["status"]
    assert get(m.store, ADMIN, "ippools", "pods")["status"]["capacity"]["allocated"] == 0


# ---- child pools -----------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", TENANTS)
def test_a_tenant_may_not_carve_a_child_of_an_internal_pool(tenant: Principal) -> None:
    m = _cluster()
    body = {"name": "mine", "spec": {"parentPool": "pods", "prefixLength": 24}}
    _not_found(m.refused(tenant, "pool.create", body))


def test_the_platform_admin_carves_children_of_an_internal_pool_with_their_own_visibility() -> None:
    m = _cluster()
    hidden = m.ok(
        ADMIN,
        "pool.create",
        {"name": "infra", "spec": {"parentPool": "pods", "prefixLength": 24, "visibility": "internal"}},
    )
    shown = m.ok(ADMIN, "pool.create", {"name": "lbs", "spec": {"parentPool": "pods", "prefixLength": 24}})
    assert (hidden["status"]["parentPool"], shown["status"]["parentPool"]) == ("pods", "pods")
    assert shown["spec"]["visibility"] == "platform"
    # The internal child is hidden like its parent; the platform child serves tenants.
    _not_found(m.refused(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "infra"}}))
    assert (
        m.ok(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "lbs", "prefixLength": 28}})["status"]["pool"]
        == "lbs"
    )
    assert _names(m, WEB) == ["lbs", "public"]
    assert _names(m, ADMIN) == ["infra", "lbs", "pods", "public"]


def test_an_internal_child_of_a_platform_pool_hides_that_range() -> None:
    m = _cluster()
    m.ok(
        ADMIN,
        "pool.create",
        {"name": "vips", "spec": {"parentPool": "public", "cidr": "10.50.0.128/25", "visibility": "internal"}},
    )
    _not_found(m.refused(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "vips"}}))
    claim = m.ok(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "public", "prefixLength": 25}})
    assert claim["status"]["allocatedCIDR"] == "10.50.0.0/25"
    refused = m.refused(WEB, "claim.create", {"name": "d", "spec": {"poolRef": "public", "prefixLength": 25}})
    assert refused.code == "pool_exhausted"


# ---- nodes -----------------------------------------------------------------------------------


def test_a_node_registers_on_an_internal_pool_that_tenants_could_not_exhaust() -> None:
    m = _cluster()
    # What a tenant would try: take the whole pod-CIDR pool. It cannot even see it.
    _not_found(m.refused(WEB, "claim.create", {"name": "grab", "spec": {"poolRef": "pods", "prefixLength": 22}}))
    for index in range(4):
        node = m.ok(ADMIN, "node.register", {"name": f"n{index}", "spec": {"capacity": CAPACITY, "podPool": "pods"}})
        assert node["status"]["podPool"] == "pods"
        assert node["status"]["podCIDR"] == f"10.244.{index}.0/24"
    pod = m.ok(WEB, "pod.create", {"name": "p", "spec": {"requests": {"cpuMillis": 100}}})
    assert pod["status"]["phase"] == "Bound" and pod["status"]["podIP"].startswith("10.244."), pod["status"]
    refused = m.refused(ADMIN, "node.register", {"name": "n4", "spec": {"capacity": CAPACITY, "podPool": "pods"}})
    assert refused.code == "pool_exhausted"


def test_an_admin_acting_for_a_tenant_registers_no_node() -> None:
    """Nodes are the platform's: acting for a tenant, an admin is told to act for the platform
    (before, it was told the internal pod pool did not exist, as the tenant would be)."""
    m = _cluster()
    body = {"name": "n1", "spec": {"capacity": CAPACITY, "podPool": "pods"}}
    refused = m.refused(ACTING, "node.register", body)
    assert (refused.code, refused.details) == ("invalid", {"field": "principal"}), refused
    assert m.ok(ADMIN, "node.register", body)["status"]["podCIDR"] == "10.244.0.0/24"


def test_a_tenant_pod_pool_is_still_forbidden() -> None:
    m = _cluster()
    m.ok(WEB, "pool.create", {"name": "own", "spec": {"parentPool": "public", "prefixLength": 25}})
    body = {"name": "n1", "spec": {"capacity": CAPACITY, "podPool": "acme/web/own"}}
    assert m.refused(ADMIN, "node.register", body).code == "forbidden"


# ---- deletion --------------------------------------------------------------------------------


@pytest.mark.parametrize("tenant", TENANTS)
def test_only_the_platform_admin_deletes_an_internal_pool(tenant: Principal) -> None:
    m = _cluster()
    _not_found(m.refused(tenant, "pool.delete", {"name": "pods"}))
    m.ok(ADMIN, "pool.delete", {"name": "pods"})
    assert _names(m, ADMIN) == ["public"]


# ---- children of a tenant's pool -------------------------------------------------------------


def _tenant_pool() -> Machine:
    """acme/web owns `tp`, a consumer child of the platform pool `public`."""
    m = _cluster()
    tp = m.ok(WEB, "pool.create", {"name": "tp", "spec": {"parentPool": "public", "prefixLength": 26}})
    assert (tp["metadata"]["org"], tp["metadata"]["project"]) == ("acme", "web")
    return m


@pytest.mark.parametrize("visibility", ["internal", "platform"])
def test_the_platform_admin_may_not_give_a_tenant_pool_a_platform_owned_child(visibility: str) -> None:
    m = _tenant_pool()
    body = {"name": "child", "spec": {"parentPool": "acme/web/tp", "prefixLength": 28, "visibility": visibility}}
    refused = m.refused(ADMIN, "pool.create", body)
    assert refused.code == "invalid" and refused.details.get("field") == "spec.visibility", refused
    assert refused.details.get("parentPool") == "acme/web/tp", refused
    assert "a child of a tenant's pool belongs to that tenant" in refused.message, refused.message
    assert f"visibility: {visibility}" in refused.message and "act for acme/web" in refused.message
    # The tenant still owns all of its pool, and can delete it.
    m.ok(WEB, "pool.delete", {"name": "tp"})


def test_the_platform_admin_default_visibility_is_refused_under_a_tenant_pool() -> None:
    """Acting for no tenant, a pool without visibility is `platform`: the same refusal, saying so."""
    m = _tenant_pool()
    refused = m.refused(
        ADMIN, "pool.create", {"name": "child", "spec": {"parentPool": "acme/web/tp", "prefixLength": 28}}
    )
    assert refused.code == "invalid" and refused.details.get("field") == "spec.visibility", refused
    assert "the default when acting for no tenant" in refused.message, refused.message


@pytest.mark.parametrize("visibility", ["internal", "platform"])
def test_an_admin_acting_for_the_tenant_is_told_to_use_a_tenant_visibility(visibility: str) -> None:
    """Not "act for the platform": that would be refused too."""
    m = _tenant_pool()
    body = {"name": "child", "spec": {"parentPool": "tp", "prefixLength": 28, "visibility": visibility}}
    refused = m.refused(ACTING, "pool.create", body)
    assert refused.code == "invalid" and refused.details.get("field") == "spec.visibility", refused
    assert "a child of a tenant's pool belongs to that tenant" in refused.message, refused.message


def test_a_member_asking_for_an_internal_child_of_its_pool_is_still_forbidden() -> None:
    m = _tenant_pool()
    body = {"name": "child", "spec": {"parentPool": "tp", "prefixLength": 28, "visibility": "internal"}}
    assert m.refused(WEB, "pool.create", body).code == "forbidden"


@pytest.mark.parametrize("visibility", [None, "consumer", "shared"])
def test_an_admin_acting_for_the_tenant_carves_a_child_the_tenant_owns(visibility: str | None) -> None:
    m = _tenant_pool()
    spec: dict[str, Any] = {"parentPool": "tp", "prefixLength": 28}
    if visibility is not None:
        spec["visibility"] = visibility
    child = m.ok(ACTING, "pool.create", {"name": "child", "spec": spec})
    assert (child["metadata"]["org"], child["metadata"]["project"]) == ("acme", "web")
    assert child["spec"]["visibility"] == (visibility or "consumer")
    assert "child" in _names(m, WEB)
    m.ok(WEB, "pool.delete", {"name": "child"})
    m.ok(WEB, "pool.delete", {"name": "tp"})


def test_platform_owned_children_of_platform_pools_are_unchanged() -> None:
    m = _cluster()
    for visibility in ("internal", "platform"):
        body = {"name": visibility, "spec": {"parentPool": "public", "prefixLength": 28, "visibility": visibility}}
        assert m.ok(ADMIN, "pool.create", body)["spec"]["visibility"] == visibility


# ---- an admin acting for a tenant has the tenant's rights over other pools ---------------------


def test_an_admin_acting_for_a_tenant_does_not_see_or_use_another_projects_consumer_pool() -> None:
    """Exploratory testing, 2026-12-07: an admin acting for globex/prod claimed from acme/web's
    `consumer` pool by its full name; acme/web then had a pool that counted an allocation it
    could not list, and could not delete its pool. Acting for a tenant, an admin sees and uses
    pools as that tenant does."""
    m = _cluster()
    m.ok(WEB, "pool.create", {"name": "own", "spec": {"parentPool": "public", "prefixLength": 28}})
    other = admin_for("globex", "prod")
    _not_found(m.refused(other, "claim.create", {"name": "x", "spec": {"poolRef": "acme/web/own"}}))
    _not_found(m.refused(admin_for("acme", "db"), "claim.create", {"name": "x", "spec": {"poolRef": "web/own"}}))
    assert "own" not in _names(m, other)
    _not_found(m.refused(other, "pool.delete", {"name": "acme/web/own"}))
    assert "own" in _names(m, ACTING) and "own" in _names(m, ADMIN)
    claimed = m.ok(ACTING, "claim.create", {"name": "mine", "spec": {"poolRef": "own"}})
    assert claimed["status"]["allocatedCIDR"] == "10.50.0.0/32"


def test_an_admin_acting_for_a_tenant_may_not_delete_a_platform_pool() -> None:
    """A pool name resolves to the tenant's own pool first and to a platform pool after: acting
    for a tenant that has no pool of that name, `pool delete` found the platform pool and
    deleted it. Now it is refused as it is for the tenant; the platform admin deletes it."""
    m = _cluster()
    m.ok(ADMIN, "pool.create", {"name": "spare", "spec": {"cidr": "10.60.0.0/24"}})
    refusal = m.refused(ACTING, "pool.delete", {"name": "spare"})
    assert refusal.code == "forbidden", refusal
    assert "only an admin acting for the platform" in refusal.message
    assert m.refused(WEB, "pool.delete", {"name": "spare"}).code == "forbidden"
    m.ok(WEB, "pool.create", {"name": "spare", "spec": {"parentPool": "public", "prefixLength": 28}})
    deleted = m.ok(ACTING, "pool.delete", {"name": "spare"})  # the tenant's own pool of that name
    assert (deleted["metadata"]["org"], deleted["metadata"]["project"]) == ("acme", "web")
    m.ok(ADMIN, "pool.delete", {"name": "spare"})
    assert "spare" not in _names(m, ADMIN)


def test_a_retained_allocation_left_by_the_old_rule_can_still_be_freed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before 2026-12-07 an admin acting for globex/prod could claim from acme/web's `consumer`
    pool. A claim made so with reclaimPolicy Retain, then deleted, leaves a Released allocation
    that only binding it again frees, and the pool cannot be deleted until then. The new rule
    must not make that impossible: naming the allocation's pool by its full id binds it again."""
    m = _cluster()
    m.ok(WEB, "pool.create", {"name": "own", "spec": {"parentPool": "public", "prefixLength": 28}})
    other = admin_for("globex", "prod")
    old_rule = pools.visible

    def visible_before(pool: dict[str, Any], principal: Principal) -> bool:
        if principal.is_admin and pool["spec"]["visibility"] != "internal":
            return True
        return old_rule(pool, principal)

    monkeypatch.setattr(pools, "visible", visible_before)
    spec = {"poolRef": "acme/web/own", "reclaimPolicy": "Retain"}
    held = m.ok(other, "claim.create", {"name": "stray", "spec": spec})["status"]["allocatedCIDR"]
    m.ok(other, "claim.delete", {"name": "stray"})
    monkeypatch.setattr(pools, "visible", old_rule)

    assert m.refused(WEB, "pool.delete", {"name": "own"}).code == "conflict"
    _not_found(m.refused(other, "claim.create", {"name": "fresh", "spec": {"poolRef": "acme/web/own"}}))
    rebound = m.ok(other, "claim.create", {"name": "stray", "spec": {"poolRef": "acme/web/own"}})
    assert rebound["status"]["allocatedCIDR"] == held
    m.ok(other, "claim.delete", {"name": "stray"})  # reclaimPolicy Delete now: the address is free
    m.ok(WEB, "pool.delete", {"name": "own"})
