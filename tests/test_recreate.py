"""Creating an object that already exists: one rule for every kind with labels.

A create answers the existing object (created=False, nothing written) only when both its spec
and its labels are identical (labels in any order); anything else is `already_exists`, saying
what differs (`details.differs`, and "a different spec" / "different labels" in the message)
and that the object must be deleted first. Before, IPClaims, IPPools, Services and IPClasses
answered a create with other labels as "unchanged" and kept the old labels, and Pods and Nodes
said "a different spec" when only the labels differed. `quota.set` replaces by design and is
not covered here. Every refusal must change nothing (`Machine.refused`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from statemachine import Ok, Principal, nodes
from statemachine.queries import get
from tests.harness import ADMIN, Machine, member

WEB = member("acme", "web")
CAPACITY = {"cpuMillis": 4000, "memoryBytes": 8 << 30, "pods": 8}
LABELS = {"app": "web", "tier": "front"}
OTHER_LABELS = {"app": "web", "tier": "back"}


@dataclass(frozen=True)
class Kind:
    command: str
    resource: str  # for queries.get
    principal: Principal
    name: str  # as queries.get and the messages name it
    spec: dict[str, Any]
    other_spec: dict[str, Any]


KINDS = [
    pytest.param(
        Kind("pool.create", "ippools", ADMIN, "edge", {"cidr": "10.60.0.0/24"}, {"cidr": "10.60.0.0/25"}),
        id="IPPool",
    ),
    pytest.param(
        Kind(
            "claim.create",
            "ipclaims",
            WEB,
            "default/c1",
            {"poolRef": "public", "prefixLength": 28},
            {"poolRef": "public", "prefixLength": 29},
        ),
        id="IPClaim",
    ),
    pytest.param(
        Kind(
            "class.create",
            "ipclasses",
            ADMIN,
            "gold",
            {"ipFamily": "IPv4"},
            {"ipFamily": "IPv4", "reclaimPolicy": "Retain"},
        ),
        id="IPClass",
    ),
    pytest.param(
        Kind(
            "service.create",
            "services",
            WEB,
            "default/api",
            {"poolRef": "public"},
            {"poolRef": "public", "type": "LoadBalancer"},
        ),
        id="Service",
    ),
    pytest.param(
        Kind(
            "pod.create",
            "pods",
            WEB,
            "default/p1",
            {"requests": {"cpuMillis": 100}},
            {"requests": {"cpuMillis": 200}},
        ),
        id="Pod",
    ),
    pytest.param(
        Kind(
            "node.register",
            "nodes",
            ADMIN,
            "n1",
            {"capacity": CAPACITY, "podPool": "pods"},
            {"capacity": {**CAPACITY, "cpuMillis": 8000}, "podPool": "pods"},
        ),
        id="Node",
    ),
]


def _machine() -> Machine:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "public", "spec": {"cidr": "10.50.0.0/24"}})
    m.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}})
    return m


def _body(kind: Kind, spec: dict[str, Any], labels: dict[str, str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"name": kind.name.split("/")[-1], "spec": spec}
    if labels is not None:
        body["labels"] = labels
    return body


def _created(kind: Kind) -> Machine:
    m = _machine()
    m.ok(kind.principal, kind.command, _body(kind, kind.spec, LABELS))
    return m


def _stored_labels(m: Machine, kind: Kind) -> dict[str, str]:
    """The object's labels, but a Node's built-in kubernetes.io/hostname (the name: nodes.py)."""
    name = kind.name.split("/")[-1]
    labels: dict[str, str] = get(m.store, kind.principal, kind.resource, name)["metadata"]["labels"]
    return _without_builtin(kind, labels)


def _without_builtin(kind: Kind, labels: dict[str, str]) -> dict[str, str]:
    if kind.resource != "nodes":
        return labels
    assert labels[nodes.HOSTNAME_LABEL] == kind.name, labels
    return {key: value for key, value in labels.items() if key != nodes.HOSTNAME_LABEL}


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_spec_and_labels_answer_the_existing_object(kind: Kind) -> None:
    m = _created(kind)
    before = m.digest()
    reordered = dict(reversed(list(LABELS.items())))  # label order never matters
    outcome = m.run(kind.principal, kind.command, _body(kind, kind.spec, reordered))
    assert isinstance(outcome.result, Ok) and outcome.result.created is False, outcome.result
    assert _without_builtin(kind, outcome.result.value["metadata"]["labels"]) == LABELS
    assert not outcome.writes and m.digest() == before


@pytest.mark.parametrize("kind", KINDS)
def test_other_labels_are_already_exists_and_keep_the_stored_labels(kind: Kind) -> None:
    m = _created(kind)
    refused = m.refused(kind.principal, kind.command, _body(kind, kind.spec, OTHER_LABELS))
    assert refused.code == "already_exists", refused
    assert refused.details["differs"] == ["labels"], refused
    assert f" {kind.name} " in refused.message, refused.message
    assert "with different labels" in refused.message and "spec" not in refused.message, refused.message
    # Labels change in place: a node's with node.update, the other kinds' with a label patch.
    remedy = "with node.update" if kind.command == "node.register" else "patch metadata.labels"
    assert remedy in refused.message, refused.message
    assert _stored_labels(m, kind) == LABELS


@pytest.mark.parametrize("kind", KINDS)
def test_no_labels_differ_from_some_labels(kind: Kind) -> None:
    m = _created(kind)
    refused = m.refused(kind.principal, kind.command, _body(kind, kind.spec, None))
    assert refused.code == "already_exists" and refused.details["differs"] == ["labels"], refused


@pytest.mark.parametrize("kind", KINDS)
def test_no_labels_again_answer_the_existing_object(kind: Kind) -> None:
    m = _machine()
    m.ok(kind.principal, kind.command, _body(kind, kind.spec, None))
    outcome = m.run(kind.principal, kind.command, _body(kind, kind.spec, {}))
    assert isinstance(outcome.result, Ok) and outcome.result.created is False, outcome.result


@pytest.mark.parametrize("kind", KINDS)
def test_another_spec_is_already_exists_naming_the_spec_only(kind: Kind) -> None:
    m = _created(kind)
    refused = m.refused(kind.principal, kind.command, _body(kind, kind.other_spec, LABELS))
    assert refused.code == "already_exists" and refused.details["differs"] == ["spec"], refused
    assert "with a different spec" in refused.message and "labels" not in refused.message, refused.message
    assert "delete it first" in refused.message, refused.message


@pytest.mark.parametrize("kind", KINDS)
def test_another_spec_and_other_labels_say_both(kind: Kind) -> None:
    m = _created(kind)
    refused = m.refused(kind.principal, kind.command, _body(kind, kind.other_spec, OTHER_LABELS))
    assert refused.code == "already_exists" and refused.details["differs"] == ["spec", "labels"], refused
    assert "with a different spec and different labels" in refused.message, refused.message


def test_a_claim_with_other_labels_under_a_request_id_is_remembered_as_refused() -> None:
    """The refusal under a request id is the answer a retry gets, as for any refusal."""
    kind = KINDS[1].values[0]
    assert isinstance(kind, Kind)
    m = _created(kind)
    body = _body(kind, kind.spec, OTHER_LABELS)
    first = m.refused(WEB, "claim.create", body, request_id="r1")
    again = m.refused(WEB, "claim.create", body, request_id="r1")
    assert first == again and first.details["differs"] == ["labels"]


def test_a_claim_asked_for_again_in_other_words_answers_the_claim() -> None:
    """A claim's spec says how it was asked for; a create under its name asking for the same
    thing another way answers the claim (as pools compare with their defaults filled in):
    another name of the same pool, the class's name for the default class, its default
    length or reclaim policy written out. Something else is still `already_exists`."""
    m = Machine(check_every_step=True)
    m.ok(
        ADMIN,
        "class.create",
        {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True, "reclaimPolicy": "Retain"}},
    )
    m.ok(ADMIN, "pool.create", {"name": "base", "spec": {"cidr": "10.80.0.0/24", "classNames": ["std"]}})
    m.ok(WEB, "pool.create", {"name": "own", "spec": {"parentPool": "base", "prefixLength": 28}})
    first = m.ok(WEB, "claim.create", {"name": "c", "spec": {"poolRef": "own"}})
    for other_words in ({"poolRef": "web/own"}, {"poolRef": "acme/web/own", "prefixLength": 32}):
        again = m.run(WEB, "claim.create", {"name": "c", "spec": other_words}).result
        assert isinstance(again, Ok) and again.created is False and again.value == first, other_words
    by_class = m.ok(WEB, "claim.create", {"name": "k", "spec": {}})
    assert by_class["status"]["className"] == "std" and by_class["status"]["reclaimPolicy"] == "Retain"
    spelled_out = {"className": "std", "prefixLength": 32, "reclaimPolicy": "Retain"}
    again = m.run(WEB, "claim.create", {"name": "k", "spec": spelled_out}).result
    assert isinstance(again, Ok) and again.created is False and again.value == by_class
    for other in ({"className": "std", "reclaimPolicy": "Delete"}, {"poolRef": "base"}, {"prefixLength": 31}):
        assert m.refused(WEB, "claim.create", {"name": "k", "spec": other}).code == "already_exists", other
    # Judged on the state now: once "base" names a pool of the tenant's own (found before the
    # platform's), the same words in other form ask for another pool. The very same spec still
    # answers the claim, as it always has.
    on_platform = m.ok(WEB, "claim.create", {"name": "s", "spec": {"poolRef": "base"}})
    m.ok(WEB, "pool.create", {"name": "base", "spec": {"parentPool": "own", "prefixLength": 30}})
    same = m.run(WEB, "claim.create", {"name": "s", "spec": {"poolRef": "base"}}).result
    assert isinstance(same, Ok) and same.value == on_platform
    spelled = {"name": "s", "spec": {"poolRef": "base", "prefixLength": 32}}
    assert m.refused(WEB, "claim.create", spelled).code == "already_exists"
