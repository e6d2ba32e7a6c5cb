"""The command codec: golden bytes for every command type, round trips, and strict decoding.

Every replica must decode one command to one meaning, so an envelope that is not plain,
canonical, versioned data is refused by `apply` as `invalid` and writes nothing. Inside the
body, each handler type-checks its fields: floats, unknown fields and odd types are `invalid`
too, and never an exception out of `apply`.

Golden bytes live in tests/golden/envelopes.json. When the encoding changes on purpose,
regenerate them with

    ALLOT_REWRITE=1 .venv/bin/pytest tests/test_codec.py

and review `git diff tests/golden` before committing: a changed encoding is a wire-format change
(old log entries would decode differently), so it needs a new envelope version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from node.memstore import MemoryStore
from statemachine import (
    COMMAND_TYPES,
    ENVELOPE_VERSION,
    Envelope,
    InvariantViolation,
    Ok,
    Outcome,
    Principal,
    Rejected,
    apply,
    codec,
    decode_envelope,
    encode_envelope,
)
from statemachine.invariants import check_invariants
from statemachine.view import Overlay
from tests.harness import ADMIN, BASE_TS_MS, Machine, admin_for, member

GOLDEN = Path(__file__).parent / "golden" / "envelopes.json"
REWRITE_ENV = "ALLOT_REWRITE"
HOW_TO_REWRITE = (
    f"If the encoding changed on purpose, run `{REWRITE_ENV}=1 .venv/bin/pytest tests/test_codec.py` "
    "and review `git diff tests/golden` (and bump ENVELOPE_VERSION: old log entries must keep their meaning)."
)
ACME_WEB = member("acme", "web", "alice")


# ---- golden envelopes ----------------------------------------------------------------------


# (name, envelope), in an order in which they can be applied one after another to a fresh state.
def golden_envelopes() -> list[tuple[str, Envelope]]:
    ts = BASE_TS_MS
    return [
        (
            "class.create",
            Envelope(
                "class.create",
                {
                    "name": "standard",
                    "labels": {"tier": "gold"},
                    "spec": {
                        "ipFamily": "IPv4",
                        "isDefault": True,
                        "reclaimPolicy": "Retain",
                        "allocation": {"minPrefixLength": 24, "maxPrefixLength": 32, "defaultPrefixLength": 32},
                    },
                },
                ADMIN,
                "req-class-1",
                ts + 1,
            ),
        ),
        (
            "pool.create",
            Envelope(
                "pool.create",
                {
                    "name": "edge",
                    "labels": {"app.kubernetes.io/part-of": "edge", "zone": "a"},
                    "spec": {
                        "cidr": "10.20.0.0/16",
                        "ipFamily": "IPv4",
                        "visibility": "platform",
                        "classNames": ["standard"],
                        "allocation": {"strategy": "best-fit", "defaultPrefixLength": 32},
                        "reserved": {"leading": 1, "trailing": 1},
                        "excluded": ["10.20.128.0/24"],
                        "addressSpace": "default",
                    },
                },
                ADMIN,
                None,
                ts + 2,
            ),
        ),
        (
            "pool.create.ipv6",
            Envelope(
                "pool.create",
                {"name": "v6", "spec": {"cidr": "2001:db8::/48", "allocation": {"defaultPrefixLength": 64}}},
                ADMIN,
                None,
                ts + 3,
            ),
        ),
        (
            "pool.create.child",
            Envelope(
                "pool.create",
                {
                    "name": "team",
                    "spec": {"parentPool": "v6", "prefixLength": 56, "visibility": "shared", "sharedWith": ["db"]},
                },
                admin_for("acme", "web"),
                "req-child-1",
                ts + 3,
            ),
        ),
        (
            "claim.create",
            Envelope(
                "claim.create",
                {
                    "name": "web-0",
                    "namespace": "prod",
                    "labels": {"app": "web"},
                    "spec": {"poolRef": "edge", "prefixLength": 30, "reclaimPolicy": "Delete"},
                },
                ACME_WEB,
                "0b7c6f0e-5a1d-4c1e-9c1a-7f2d2f9a9b10",
                ts + 4,
            ),
        ),
        (
            "claim.create.address",
            Envelope(
                "claim.create",
                {"name": "vip", "spec": {"poolRef": "v6", "address": "2001:db8:0:100::10"}},
                admin_for("acme", "web"),
                None,
                ts + 5,
            ),
        ),
        _label_update("claim", {"name": "web-0", "namespace": "prod"}, ACME_WEB, ts + 6),
        _label_update("class", {"name": "standard"}, ADMIN, ts + 6),
        (
            "claim.delete",
            Envelope("claim.delete", {"name": "web-0", "namespace": "prod"}, ACME_WEB, "req-del-1", ts + 6),
        ),
        ("pool.delete", Envelope("pool.delete", {"name": "edge"}, ADMIN, None, ts + 7)),
        ("class.delete", Envelope("class.delete", {"name": "standard"}, ADMIN, None, ts + 8)),
        ("noop", Envelope("noop", {}, ADMIN, None, ts + 9)),
        *_scheduler_golden_envelopes(ts + 10),
    ]


def _label_update(kind: str, named: dict[str, str], principal: Principal, ts: int) -> tuple[str, Envelope]:
    """A label patch (KIND.update) of an object the golden commands before it made."""
    body = {**named, "metadata": {"labels": {"team": "blue", "app": None}}}
    return f"{kind}.update", Envelope(f"{kind}.update", body, principal, None, ts)


def _scheduler_golden_envelopes(ts: int) -> list[tuple[str, Envelope]]:
    """The scheduler's commands, applied after the IPAM ones (the v6 pool is still there)."""
    node_body = {
        "name": "node-1",
        "labels": {"disk": "ssd"},
        "spec": {
            "capacity": {"cpuMillis": 8000, "memoryBytes": 17179869184, "pods": 110},
            "taints": [{"key": "gpu", "value": "true", "effect": "NoSchedule"}],
            "zone": "eu-1a",
            "podPool": "pods",
            "podCIDRPrefixLength": 24,
        },
    }
    pod_body = {
        "name": "web-0",
        "namespace": "prod",
        "labels": {"app": "web"},
        "spec": {
            "requests": {"cpuMillis": 500, "memoryBytes": 268435456},
            "nodeSelector": {"disk": "ssd"},
            "nodeAffinity": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["eu-1a"]}],
            "tolerations": [{"key": "gpu", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
            "priority": 100,
            "schedulingPolicy": "binpack",
        },
        "plan": {"nodeName": "node-1"},
    }
    quota_spec = {
        "cpuMillis": 16000,
        "memoryBytes": 34359738368,
        "pods": 50,
        "services": 5,
        "addressesByPool": {"v6": 5},
        "defaultRequests": {"cpuMillis": 100, "memoryBytes": 134217728},
    }
    service_body = {
        "name": "web",
        "spec": {"type": "LoadBalancer", "poolRef": "v6", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }
    return [
        (
            "pool.create.pods",
            Envelope("pool.create", {"name": "pods", "spec": {"cidr": "10.244.0.0/16"}}, ADMIN, None, ts),
        ),
        ("quota.set", Envelope("quota.set", {"name": "acme/web", "spec": quota_spec}, ADMIN, "req-quota-1", ts + 1)),
        ("node.register", Envelope("node.register", node_body, ADMIN, None, ts + 2)),
        (
            "node.condition",
            Envelope(
                "node.condition", {"name": "node-1", "ready": False, "reason": "NodeStatusUnknown"}, ADMIN, None, ts + 3
            ),
        ),
        (
            "node.evict_unready",
            Envelope(
                "node.evict_unready",
                {"name": "node-1", "notReadyMillis": 300_000, "timeoutMillis": 300_000},
                ADMIN,
                None,
                ts + 3,
            ),
        ),
        ("node.condition.ready", Envelope("node.condition", {"name": "node-1", "ready": True}, ADMIN, None, ts + 4)),
        ("node.cordon", Envelope("node.cordon", {"name": "node-1"}, ADMIN, None, ts + 5)),
        ("node.uncordon", Envelope("node.uncordon", {"name": "node-1"}, ADMIN, None, ts + 6)),
        ("scheduler.configure", Envelope("scheduler.configure", {"policy": "binpack"}, ADMIN, None, ts + 7)),
        ("pod.create", Envelope("pod.create", pod_body, ACME_WEB, "req-pod-1", ts + 8)),
        ("service.create", Envelope("service.create", service_body, ACME_WEB, None, ts + 9)),
        ("scheduler.retry", Envelope("scheduler.retry", {"pods": 4}, ADMIN, None, ts + 10)),
        (
            "node.update",
            Envelope(
                "node.update",
                {
                    "name": "node-1",
                    "metadata": {"labels": {"disk": "ssd", "rack": None}},
                    "spec": {"taints": [{"key": "maintenance", "value": "", "effect": "NoSchedule"}]},
                },
                ADMIN,
                None,
                ts + 11,
            ),
        ),
        ("node.evict_tainted", Envelope("node.evict_tainted", {"name": "node-1"}, ADMIN, None, ts + 11)),
        ("node.drain", Envelope("node.drain", {"name": "node-1"}, ADMIN, None, ts + 11)),
        _label_update("pool", {"name": "pods"}, ADMIN, ts + 12),
        _label_update("pod", {"name": "web-0", "namespace": "prod"}, ACME_WEB, ts + 12),
        _label_update("service", {"name": "web"}, ACME_WEB, ts + 12),
        ("pod.delete", Envelope("pod.delete", {"name": "web-0", "namespace": "prod"}, ACME_WEB, None, ts + 12)),
        ("service.delete", Envelope("service.delete", {"name": "web"}, ACME_WEB, None, ts + 13)),
        ("node.delete", Envelope("node.delete", {"name": "node-1"}, ADMIN, None, ts + 14)),
        ("quota.delete", Envelope("quota.delete", {"name": "acme/web"}, ADMIN, None, ts + 15)),
        (
            "priorityclass.create",
            Envelope(
                "priorityclass.create",
                {"name": "critical", "spec": {"value": 1000000, "globalDefault": False, "description": "pages"}},
                ADMIN,
                "req-prc-1",
                ts + 16,
            ),
        ),
        _label_update("priorityclass", {"name": "critical"}, ADMIN, ts + 17),
        ("priorityclass.delete", Envelope("priorityclass.delete", {"name": "critical"}, ADMIN, None, ts + 17)),
    ]


def _load_golden() -> dict[str, str]:
    if not GOLDEN.exists():
        pytest.fail(f"{GOLDEN} is missing. {HOW_TO_REWRITE}")
    loaded: dict[str, str] = json.loads(GOLDEN.read_text())["envelopes"]
    return loaded


def test_golden_envelope_bytes() -> None:
    encoded = {name: encode_envelope(envelope).hex() for name, envelope in golden_envelopes()}
    if os.environ.get(REWRITE_ENV) == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        document = {
            "comment": "encode_envelope() of tests/test_codec.py:golden_envelopes(). " + HOW_TO_REWRITE,
            "envelopeVersion": ENVELOPE_VERSION,
            "envelopes": encoded,
        }
        GOLDEN.write_text(json.dumps(document, indent=2) + "\n")
    golden = _load_golden()
    changed = sorted(name for name in encoded.keys() | golden.keys() if encoded.get(name) != golden.get(name))
    assert not changed, f"encoded envelopes differ from {GOLDEN.name} for {changed}. {HOW_TO_REWRITE}"


def test_golden_covers_every_command_type() -> None:
    covered = {envelope.type for _, envelope in golden_envelopes()}
    assert covered == set(COMMAND_TYPES), f"add golden envelopes for {set(COMMAND_TYPES) - covered}"


def test_golden_bytes_decode_to_their_envelopes() -> None:
    golden = _load_golden()
    for name, envelope in golden_envelopes():
        data = bytes.fromhex(golden[name])
        assert decode_envelope(data) == envelope, name
        assert codec.dumps(codec.loads(data)) == data, f"{name}: golden bytes are not canonical"


def test_golden_envelopes_apply_in_order() -> None:
    """The golden commands are real commands: each is accepted by a fresh state machine."""
    store = MemoryStore()
    for index, (name, envelope) in enumerate(golden_envelopes(), start=1):
        outcome = apply(store, encode_envelope(envelope), index)
        assert isinstance(outcome.result, Ok), f"{name}: {outcome.result}"
        store.apply_writes(outcome.writes)
        check_invariants(store)


# ---- round trips ---------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)  # DNS labels, as tenants are
plain_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=10),
    st.binary(max_size=6),
)
plain_values = st.recursive(
    plain_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)
principals = st.one_of(
    st.just(ADMIN),
    st.builds(admin_for, names, names),
    st.builds(member, names, names, names),
)
envelopes = st.builds(
    Envelope,
    type=st.sampled_from(COMMAND_TYPES),
    body=st.dictionaries(st.text(max_size=8), plain_values, max_size=5),
    principal=principals,
    request_id=st.one_of(st.none(), st.from_regex(r"[\x21-\x7e]{1,40}", fullmatch=True)),
    ts_ms=st.integers(min_value=0, max_value=2**63 - 1),
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(item) for item in value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    assume(_depth(envelope.body) <= 12)  # deeper bodies are refused by encode_envelope (tested below)
    data = encode_envelope(envelope)
    assert decode_envelope(data) == envelope
    assert encode_envelope(decode_envelope(data)) == data


def test_encoding_is_canonical_whatever_the_insertion_order() -> None:
    body_a = {"name": "x", "spec": {"cidr": "10.0.0.0/8", "addressSpace": "default"}}
    body_b = {"spec": {"addressSpace": "default", "cidr": "10.0.0.0/8"}, "name": "x"}
    first = encode_envelope(Envelope("pool.create", body_a, ADMIN, None, 5))
    second = encode_envelope(Envelope("pool.create", body_b, ADMIN, None, 5))
    assert first == second


@pytest.mark.parametrize(
    "body",
    [
        {"x": 1.5},
        {"x": [1, {"y": 2.0}]},
        {"x": {1: "integer key"}},
        {"x": {1, 2}},
        {"x": cbor2.CBORTag(2, b"\x01")},
        {"x": cbor2.undefined},
    ],
    ids=["float", "nested-float", "int-key", "set", "tag", "undefined"],
)
def test_encode_refuses_non_plain_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        encode_envelope(Envelope("noop", body, ADMIN, None, 1))


def test_encode_refuses_deep_nesting() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    with pytest.raises(ValueError):
        encode_envelope(Envelope("noop", {"x": deep}, ADMIN, None, 1))


# ---- strict decoding, through apply --------------------------------------------------------


def _busy_machine() -> Machine:
    machine = Machine()
    machine.ok(ADMIN, "class.create", {"name": "std", "spec": {"ipFamily": "IPv4", "isDefault": True}})
    machine.ok(ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "classNames": ["std"]}})
    machine.ok(ACME_WEB, "claim.create", {"name": "c1", "spec": {}})
    return machine


def _apply_raw(machine: Machine, data: bytes) -> Outcome:
    machine.index += 1
    outcome = apply(machine.store, data, machine.index)
    machine.store.apply_writes(outcome.writes)
    return outcome


def _plain(**overrides: Any) -> dict[str, Any]:
    plain = Envelope("noop", {}, ADMIN, None, BASE_TS_MS + 10_000_000).to_plain()
    plain.update(overrides)
    return plain


def _principal(name: Any = "root", org: Any = "", project: Any = "", role: Any = "admin") -> dict[str, Any]:
    return {"name": name, "org": org, "project": project, "role": role}


def _without(field: str) -> dict[str, Any]:
    plain = _plain()
    del plain[field]
    return plain


_GOOD = codec.dumps(_plain())
_BODY_AT = _GOOD.index(b"\x64body\xa0") + 5  # offset of the empty body map's byte


def _with_raw_body(raw_body: bytes) -> bytes:
    return _GOOD[:_BODY_AT] + raw_body + _GOOD[_BODY_AT + 1 :]


INVALID_ENVELOPES: dict[str, bytes] = {
    # floats in the envelope's own fields
    "float-version": codec.dumps(_plain(v=1.0)),
    "float-ts": codec.dumps(_plain(ts=float(BASE_TS_MS))),
    "float-rid": codec.dumps(_plain(rid=1.5)),
    "float-type": codec.dumps(_plain(type=2.5)),
    "float-role": codec.dumps(_plain(principal=_principal(role=0.5))),
    # CBOR tags: refused wherever they are, including the ones cbor2 decodes natively
    "bignum-version": codec.dumps(_plain(v=cbor2.CBORTag(2, b"\x01"))),
    "bignum-ts": codec.dumps(_plain(ts=cbor2.CBORTag(2, (BASE_TS_MS + 10_000_000).to_bytes(8, "big")))),
    "epoch-datetime-ts": codec.dumps(_plain(ts=cbor2.CBORTag(1, BASE_TS_MS // 1000))),
    "string-datetime-ts": codec.dumps(_plain(ts=cbor2.CBORTag(0, "2026-01-01T00:00:00Z"))),
    "uuid-tag-rid": codec.dumps(_plain(rid=cbor2.CBORTag(37, bytes(16)))),
    "unknown-tag-in-body": codec.dumps(_plain(body={"x": cbor2.CBORTag(4000, 1)})),
    # canonical CBOR, but not plain: a map key that is not a string, deep in the body of a
    # command whose handler sorts those keys (it stopped the member: a TypeError in apply)
    "int-key-in-pod-requests": codec.dumps(
        _plain(
            type="pod.create",
            principal=_principal(org="acme", project="web", role="member"),
            body={"name": "p1", "spec": {"requests": {"cpuMillis": 100, 7: 1}}},
        )
    ),
    "int-key-in-body": codec.dumps(_plain(body={1: "x"})),
    "bignum-in-body": codec.dumps(_plain(body={"x": cbor2.CBORTag(2, b"\x01")})),
    "tagged-envelope": codec.dumps(cbor2.CBORTag(4000, _plain())),
    "self-described-envelope": codec.dumps(cbor2.CBORTag(55799, _plain())),
    # fields of the envelope
    "unknown-field": codec.dumps(_plain(extra=1)),
    "missing-v": codec.dumps(_without("v")),
    "missing-type": codec.dumps(_without("type")),
    "missing-body": codec.dumps(_without("body")),
    "missing-principal": codec.dumps(_without("principal")),
    "missing-rid": codec.dumps(_without("rid")),
    "missing-ts": codec.dumps(_without("ts")),
    "principal-unknown-field": codec.dumps(_plain(principal={**_principal(), "groups": []})),
    "principal-missing-role": codec.dumps(_plain(principal={"name": "root", "org": "", "project": ""})),
    "principal-not-a-map": codec.dumps(_plain(principal=["root", "", "", "admin"])),
    "principal-name-too-long": codec.dumps(_plain(principal=_principal(name="n" * 129))),
    "principal-org-not-a-string": codec.dumps(_plain(principal=_principal(org=5, project="web"))),
    "principal-org-not-a-dns-label": codec.dumps(_plain(principal=_principal(org="Acme/x", project="web"))),
    "envelope-is-a-list": codec.dumps(list(_plain().values())),
    "envelope-is-an-int": codec.dumps(7),
    # version
    "version-0": codec.dumps(_plain(v=0)),
    "version-2": codec.dumps(_plain(v=ENVELOPE_VERSION + 1)),
    "version-string": codec.dumps(_plain(v="1")),
    "version-null": codec.dumps(_plain(v=None)),
    "version-true": codec.dumps(_plain(v=True)),
    # roles and tenants
    "role-owner": codec.dumps(_plain(principal=_principal(role="owner"))),
    "role-empty": codec.dumps(_plain(principal=_principal(role=""))),
    "role-capitalised": codec.dumps(_plain(principal=_principal(role="Admin"))),
    "member-without-tenant": codec.dumps(_plain(principal=_principal(role="member"))),
    "member-org-only": codec.dumps(_plain(principal=_principal(org="acme", role="member"))),
    "member-project-only": codec.dumps(_plain(principal=_principal(project="web", role="member"))),
    "admin-org-without-project": codec.dumps(_plain(principal=_principal(org="acme"))),
    # size
    "oversized": codec.dumps(_plain(body={"pad": "x" * codec.envelope_bytes_max})),
    # body
    "body-list": codec.dumps(_plain(body=[])),
    "body-string": codec.dumps(_plain(body="{}")),
    "body-null": codec.dumps(_plain(body=None)),
    "body-int": codec.dumps(_plain(body=1)),
    # type, rid, ts
    "type-int": codec.dumps(_plain(type=1)),
    "type-empty": codec.dumps(_plain(type="")),
    "type-unknown": codec.dumps(_plain(type="pod.create")),
    "type-too-long": codec.dumps(_plain(type="t" * 65)),
    "rid-empty": codec.dumps(_plain(rid="")),
    "rid-int": codec.dumps(_plain(rid=5)),
    "rid-bytes": codec.dumps(_plain(rid=b"r")),
    "rid-too-long": codec.dumps(_plain(rid="r" * (codec.request_id_chars_max + 1))),
    "rid-with-space": codec.dumps(_plain(rid="retry 1")),
    "ts-negative": codec.dumps(_plain(ts=-1)),
    "ts-too-large": codec.dumps(_plain(ts=1 << 63)),
    "ts-string": codec.dumps(_plain(ts="1767225600000")),
    "ts-bool": codec.dumps(_plain(ts=True)),
    # bytes that are not one canonical CBOR item
    "empty": b"",
    "truncated": _GOOD[:-1],
    "break-byte": b"\xff",
    "trailing-bytes": _GOOD + b"\x00",
    "non-canonical-key-order": cbor2.dumps(_plain()),
    "non-shortest-integer": _GOOD.replace(b"\x61v\x01", b"\x61v\x18\x01"),
    "indefinite-length-body": _with_raw_body(b"\xbf\xff"),
}


def test_invalid_envelope_fixtures_differ_from_the_good_one() -> None:
    assert decode_envelope(_GOOD) == Envelope("noop", {}, ADMIN, None, BASE_TS_MS + 10_000_000)
    assert len(INVALID_ENVELOPES["oversized"]) > codec.envelope_bytes_max
    for name, data in INVALID_ENVELOPES.items():
        assert data != _GOOD, name


@pytest.mark.parametrize("data", list(INVALID_ENVELOPES.values()), ids=list(INVALID_ENVELOPES))
def test_apply_refuses_invalid_envelope(data: bytes) -> None:
    machine = _busy_machine()
    before = machine.digest()
    outcome = _apply_raw(machine, data)
    assert isinstance(outcome.result, Rejected), f"accepted: {outcome.result}"
    assert outcome.result.code == "invalid", outcome.result
    assert outcome.writes == ()
    assert machine.digest() == before


# ---- handlers type-check the body ----------------------------------------------------------

# (principal, command type, body builder): the builder given GOOD makes a command that succeeds
# on _busy_machine(); given a float or an unknown field it must be refused as invalid.
BodyCase = tuple[Principal, str, Callable[[Any], dict[str, Any]], Any]

BODY_FIELD_CASES: dict[str, BodyCase] = {
    "claim.prefixLength": (
        ACME_WEB,
        "claim.create",
        lambda v: {"name": "c9", "spec": {"poolRef": "p1", "prefixLength": v}},
        30,
    ),
    "claim.name": (ACME_WEB, "claim.create", lambda v: {"name": v, "spec": {}}, "c9"),
    "claim.namespace": (ACME_WEB, "claim.create", lambda v: {"name": "c9", "namespace": v, "spec": {}}, "prod"),
    "claim.label-value": (ACME_WEB, "claim.create", lambda v: {"name": "c9", "labels": {"a": v}, "spec": {}}, "b"),
    "claim.reclaimPolicy": (ACME_WEB, "claim.create", lambda v: {"name": "c9", "spec": {"reclaimPolicy": v}}, "Retain"),
    "claim.address": (
        ACME_WEB,
        "claim.create",
        lambda v: {"name": "c9", "spec": {"poolRef": "p1", "address": v}},
        "10.0.0.77",
    ),
    "claim.spec": (ACME_WEB, "claim.create", lambda v: {"name": "c9", "spec": v}, {}),
    "claim-delete.name": (ACME_WEB, "claim.delete", lambda v: {"name": v}, "c1"),
    "pool.reserved.leading": (
        ADMIN,
        "pool.create",
        lambda v: {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "reserved": {"leading": v}}},
        2,
    ),
    "pool.allocation.max": (
        ADMIN,
        "pool.create",
        lambda v: {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "allocation": {"maxPrefixLength": v}}},
        30,
    ),
    "pool.cidr": (ADMIN, "pool.create", lambda v: {"name": "p2", "spec": {"cidr": v}}, "10.1.0.0/24"),
    "pool.excluded": (
        ADMIN,
        "pool.create",
        lambda v: {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "excluded": [v]}},
        "10.1.0.128/25",
    ),
    "pool.classNames": (
        ADMIN,
        "pool.create",
        lambda v: {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "classNames": v}},
        ["std"],
    ),
    "pool-delete.name": (ADMIN, "pool.delete", lambda v: {"name": v}, "empty"),
    "class.isDefault": (
        ADMIN,
        "class.create",
        lambda v: {"name": "other", "spec": {"ipFamily": "IPv4", "isDefault": v}},
        False,
    ),
    "class.defaultPrefixLength": (
        ADMIN,
        "class.create",
        lambda v: {"name": "other", "spec": {"ipFamily": "IPv4", "allocation": {"defaultPrefixLength": v}}},
        28,
    ),
    "class-delete.name": (ADMIN, "class.delete", lambda v: {"name": v}, "spare"),
}


def _machine_for_body_cases() -> Machine:
    machine = _busy_machine()
    machine.ok(ADMIN, "class.create", {"name": "spare", "spec": {"ipFamily": "IPv6"}})
    machine.ok(ADMIN, "pool.create", {"name": "empty", "spec": {"cidr": "10.9.0.0/24"}})
    return machine


def _run_plain_body(machine: Machine, principal: Principal, command_type: str, body: Any) -> Outcome:
    """Encode without encode_envelope's own checks, as a buggy or hostile proposer might."""
    plain = Envelope(command_type, {}, principal, None, BASE_TS_MS + 10_000_000).to_plain()
    plain["body"] = body
    return _apply_raw(machine, codec.dumps(plain))


@pytest.mark.parametrize("case", list(BODY_FIELD_CASES.values()), ids=list(BODY_FIELD_CASES))
def test_handler_accepts_the_good_value(case: BodyCase) -> None:
    principal, command_type, build, good = case
    machine = _machine_for_body_cases()
    outcome = _run_plain_body(machine, principal, command_type, build(good))
    assert isinstance(outcome.result, Ok), outcome.result
    check_invariants(machine.store)


@pytest.mark.parametrize("bad", [1.5, 30.0, float("inf"), {"nested": 1.0}, [0.5]], ids=str)
@pytest.mark.parametrize("case", list(BODY_FIELD_CASES.values()), ids=list(BODY_FIELD_CASES))
def test_handler_refuses_floats_in_the_body(case: BodyCase, bad: Any) -> None:
    principal, command_type, build, _ = case
    machine = _machine_for_body_cases()
    before = machine.digest()
    outcome = _run_plain_body(machine, principal, command_type, build(bad))
    assert isinstance(outcome.result, Rejected), outcome.result
    assert outcome.result.code == "invalid"
    assert outcome.writes == ()
    assert machine.digest() == before


UNKNOWN_FIELD_BODIES: dict[str, tuple[Principal, str, dict[str, Any]]] = {
    "claim-top": (ACME_WEB, "claim.create", {"name": "c9", "spec": {}, "status": {}}),
    "claim-spec": (ACME_WEB, "claim.create", {"name": "c9", "spec": {"pool": "p1"}}),
    "claim-delete": (ACME_WEB, "claim.delete", {"name": "c1", "force": True}),
    "pool-top": (ADMIN, "pool.create", {"name": "p2", "spec": {"cidr": "10.1.0.0/24"}, "kind": "IPPool"}),
    "pool-spec": (ADMIN, "pool.create", {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "gateway": "10.1.0.1"}}),
    "pool-allocation": (
        ADMIN,
        "pool.create",
        {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "allocation": {"stratgy": "best-fit"}}},
    ),
    "pool-reserved": (ADMIN, "pool.create", {"name": "p2", "spec": {"cidr": "10.1.0.0/24", "reserved": {"lead": 1}}}),
    "pool-delete": (ADMIN, "pool.delete", {"name": "empty", "cascade": True}),
    "class-top": (ADMIN, "class.create", {"name": "other", "spec": {"ipFamily": "IPv4"}, "metadata": {}}),
    "class-spec": (ADMIN, "class.create", {"name": "other", "spec": {"ipFamily": "IPv4", "default": True}}),
    "class-delete": (ADMIN, "class.delete", {"name": "spare", "now": True}),
}


@pytest.mark.parametrize("case", list(UNKNOWN_FIELD_BODIES.values()), ids=list(UNKNOWN_FIELD_BODIES))
def test_handler_refuses_unknown_fields(case: tuple[Principal, str, dict[str, Any]]) -> None:
    principal, command_type, body = case
    machine = _machine_for_body_cases()
    before = machine.digest()
    outcome = machine.run(principal, command_type, body)
    assert isinstance(outcome.result, Rejected), outcome.result
    assert outcome.result.code == "invalid"
    assert outcome.writes == ()
    assert machine.digest() == before


def test_tags_inside_a_handler_body_are_refused() -> None:
    """A bignum is a CBOR tag: a claim must not be made from `prefixLength: tag(2, h'1e')`."""
    machine = _machine_for_body_cases()
    before = machine.digest()
    outcome = _run_plain_body(
        machine,
        ACME_WEB,
        "claim.create",
        {"name": "c9", "spec": {"poolRef": "p1", "prefixLength": cbor2.CBORTag(2, b"\x1e")}},
    )
    assert isinstance(outcome.result, Rejected), outcome.result
    assert outcome.result.code == "invalid"
    assert machine.digest() == before


def test_non_string_label_key_is_invalid_not_a_crash() -> None:
    """Map keys must be strings (codec rule); a label map with an integer key must be refused as
    invalid. apply must never raise for bad input: an InvariantViolation stops the member."""
    machine = _machine_for_body_cases()
    outcome = _run_plain_body(machine, ACME_WEB, "claim.create", {"name": "c9", "labels": {7: "x"}, "spec": {}})
    assert isinstance(outcome.result, Rejected)
    assert outcome.result.code == "invalid"


# Bodies as a JSON front end could produce them (string keys, no floats), aimed at field names
# the handlers know, so that most draws get past the first checks.
_field_names = st.sampled_from(
    [
        "name",
        "namespace",
        "labels",
        "spec",
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
        "poolRef",
        "className",
        "address",
        "reclaimPolicy",
        "minPrefixLength",
        "maxPrefixLength",
        "defaultPrefixLength",
        "strategy",
        "leading",
        "trailing",
        "isDefault",
        "allowedOrgs",
        "other",
    ]
)
_json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=-1, max_value=130),
    st.text(max_size=8),
    st.sampled_from(
        [
            "p1",
            "std",
            "spare",
            "c1",
            "10.0.0.0/24",
            "10.0.0.0/28",
            "10.0.0.9",
            "10.1.0.0/24",
            "2001:db8::/64",
            "IPv4",
            "IPv6",
            "platform",
            "consumer",
            "shared",
            "restricted",
            "Delete",
            "Retain",
            "best-fit",
            "first-fit",
            "acme",
            "web",
            "acme/web/p1",
        ]
    ),
)
_json_values = st.recursive(
    _json_leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_field_names, inner, max_size=4)),
    max_leaves=12,
)
_fuzz_base = _machine_for_body_cases().store


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    command_type=st.sampled_from(COMMAND_TYPES),
    body=st.dictionaries(_field_names, _json_values, max_size=5),
    principal=st.sampled_from([ADMIN, ACME_WEB, admin_for("acme", "web"), member("globex", "api")]),
)
@example(
    command_type="claim.create",
    body={"name": "c9", "spec": {"poolRef": "p1", "prefixLength": 2**70}},
    principal=ACME_WEB,
)
@example(
    command_type="pool.create",
    body={"name": "p2", "spec": {"cidr": "10.1.0.0/24", "addressSpace": None}},
    principal=ADMIN,
)
def test_apply_never_raises_on_json_like_bodies(command_type: str, body: dict[str, Any], principal: Principal) -> None:
    assume(_depth(body) <= 12)
    data = encode_envelope(Envelope(command_type, body, principal, None, BASE_TS_MS + 10_000_000))
    try:
        outcome = apply(_fuzz_base, data, 1000)
    except InvariantViolation as exc:  # pragma: no cover - reported as the failure
        pytest.fail(f"apply raised for a bad command instead of refusing it: {exc}")
    if isinstance(outcome.result, Rejected):
        assert outcome.writes == ()
        return
    after = Overlay(_fuzz_base)
    for key, value in outcome.writes:
        if value is None:
            after.delete(key)
        else:
            after.put(key, value)
    check_invariants(after)


def _nested(depth: int, key: str) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {key: value}
    return value


@pytest.mark.parametrize("key", ["a", "é"], ids=["ascii-fast-path", "non-ascii-slow-path"])
def test_a_body_as_deep_as_encode_allows_decodes_on_either_path(key: str) -> None:
    """The nesting limit is the body's, whichever decode path the bytes take: a non-ASCII key
    sends a command off the fast path, where the check runs on the whole envelope, one level
    above the body."""
    deepest = {"name": "x", "spec": _nested(codec._nesting_depth_max - 1, key)}
    data = encode_envelope(Envelope("pool.create", deepest, ADMIN, None, BASE_TS_MS))
    assert decode_envelope(data).body == deepest
    with pytest.raises(ValueError, match="nests too deeply"):
        encode_envelope(
            Envelope(
                "pool.create", {"name": "x", "spec": _nested(codec._nesting_depth_max, key)}, ADMIN, None, BASE_TS_MS
            )
        )


# ---- stored records: dump_record writes plain items itself, as cbor2 does -----------------------

record_leaves = st.one_of(
    plain_leaves,
    st.integers(),  # bignums too: those go to cbor2
    st.sampled_from(
        [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, -24, -25, -(2**64), -(2**64) - 1]
    ),
    st.text(min_size=20, max_size=300),  # heads of one and two bytes
    st.binary(min_size=20, max_size=300),
    st.floats(allow_nan=False),  # not plain: cbor2 writes the whole value
    st.tuples(st.integers()),
)
record_values = st.recursive(
    record_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=30),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=30),
    ),
    max_leaves=60,
)


@settings(max_examples=500, deadline=None)
@given(value=record_values)
def test_dump_record_writes_what_cbor2_writes(value: Any) -> None:
    assert codec.dump_record(value) == cbor2.dumps(value)


def test_dump_record_leaves_deep_nesting_and_surrogates_to_cbor2() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    assert codec.dump_record(deep) == cbor2.dumps(deep)
    with pytest.raises(Exception) as refused:  # whatever cbor2 raises, dump_record raises
        cbor2.dumps(["\ud800"])
    with pytest.raises(refused.type):
        codec.dump_record(["\ud800"])


# ---- stored records: loads reads plain items itself, as cbor2 does -----------------------------


def _same(left: Any, right: Any) -> bool:
    """Equal, and of the same types all the way down (1, True and 1.0 are equal, not the same)."""
    if type(left) is not type(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, dict):
        return list(left) == list(right) and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, float):  # NaN is not equal to itself, and -0.0 equals 0.0
        return repr(left) == repr(right)
    return bool(left == right)


def _result(decode: Callable[[bytes], Any], data: bytes) -> tuple[str, Any]:
    """What decode does with data: its value, or the type and words of what it raises."""
    try:
        return "value", decode(data)
    except Exception as exc:  # whatever cbor2 raises, loads must raise alike
        return "raised", (type(exc), str(exc))


def _same_result(left: tuple[str, Any], right: tuple[str, Any]) -> bool:
    return left[0] == right[0] and (_same(left[1], right[1]) if left[0] == "value" else left[1] == right[1])


@settings(max_examples=500, deadline=None)
@given(value=record_values)
@example(value=[2**64, -(2**64) - 1, {"used": 2**127 | 1}])
def test_loads_reads_what_cbor2_reads(value: Any) -> None:
    data = cbor2.dumps(value)
    assert _same(codec.loads(data), cbor2.loads(data))


@st.composite
def damaged_records(draw: st.DrawFn) -> bytes:
    """A record's bytes cut short, with a byte changed, or with bytes after it."""
    data = bytearray(cbor2.dumps(draw(record_values)))
    how = draw(st.sampled_from(["cut", "change", "append"]))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    if how == "change":
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    return bytes(data) + draw(st.binary(min_size=1, max_size=4))


@settings(max_examples=1000, deadline=None)
@given(data=st.one_of(damaged_records(), st.binary(max_size=40)))
@example(data=b"\xa2aa\x01aa\x02")  # a key twice
@example(data=b"\xc2\x40")  # a bignum of no bytes
@example(data=b"\xc2\x59\x00\x01\x01")  # a bignum whose bytes have a long head
@example(data=b"\x62\xc3\x28")  # not UTF-8
@example(data=b"\x9f\x01\xff")  # indefinite length
@example(data=b"\x82\xf6\xf9\x7c\x01")  # a half-precision NaN: equal to cbor2's, though not to itself
def test_loads_does_what_cbor2_does_with_any_bytes(data: bytes) -> None:
    assert _same_result(_result(codec.loads, data), _result(cbor2.loads, data))


def _loads_strict_by_reencoding(data: bytes) -> Any:
    """What `codec.loads_strict` accepted before it read canonical maps itself (the fast path
    checked the insertion-order encoding, which equals cbor2's)."""
    if len(data) > codec.envelope_bytes_max:
        raise ValueError(f"command is {len(data)} bytes; the limit is {codec.envelope_bytes_max}")
    value = cbor2.loads(data, tag_hook=codec._refuse_tag)
    if codec._in_canonical_order(value) and cbor2.dumps(value) == data:
        return value
    codec._check_plain(value, -1)
    if codec.dumps(value) != data:
        raise ValueError("command is not canonical CBOR (tags, trailing bytes or non-canonical encoding)")
    return value


@st.composite
def command_bytes(draw: st.DrawFn) -> bytes:
    """A plain value canonically or not, maybe with a byte changed or cut short."""
    value = draw(st.one_of(st.dictionaries(st.text(max_size=8), plain_values, max_size=6), record_values))
    data = bytearray(codec.dumps(value) if draw(st.booleans()) else cbor2.dumps(value))
    how = draw(st.sampled_from(["keep", "keep", "cut", "change"]))
    if how == "cut":
        return bytes(data[: draw(st.integers(0, max(len(data) - 1, 0)))])
    if how == "change":
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@settings(max_examples=1000, deadline=None)
@given(data=command_bytes())
@example(data=codec.dumps({"a": {"b": [1, "x"], "aa": None}, "bb": b"\x00"}))
@example(data=b"\xa2aa\x01aa\x02")  # a key twice
@example(data=b"\xa1\x61a\x18\x01")  # an integer with a long head
@example(data=codec.dumps({"\u00e9": 1}))  # a key not ASCII
def test_loads_strict_accepts_what_reencoding_accepted(data: bytes) -> None:
    assert _same_result(_result(codec.loads_strict, data), _result(_loads_strict_by_reencoding, data))


def test_loads_strict_leaves_deep_nesting_to_the_reencoding_check() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"k": deep}
    data = codec.dumps(deep)
    assert _same_result(_result(codec.loads_strict, data), _result(_loads_strict_by_reencoding, data))


@settings(max_examples=300, deadline=None)
@given(items=st.lists(record_values, max_size=12), first=record_values)
def test_dump_records_of_items_writes_both_as_cbor2_does(items: list[Any], first: Any) -> None:
    assert codec.dump_records_of_items(items, first) == (cbor2.dumps(items), cbor2.dumps([first, *items]))
