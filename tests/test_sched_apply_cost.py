"""The shortcuts that keep a verified placement's apply cheap give the same answers as the long
way round (issue #5):

* decoding checks canonical form with a key-order walk and an insertion-order re-encoding
  instead of a canonical re-encoding: the same commands pass, the same are refused;
* the request-id digest of a decoded command is encoded in insertion order: the same digest;
* the overlay sorts its pending keys only when a scan or the writes need them: scans opened
  between writes see every pending write in order;
* `search` decodes each node record once and remembers it: the same choice as decoding afresh;
* a verified placement reads each record once and encodes each record it writes once.
"""

from __future__ import annotations

from typing import Any, ClassVar

import cbor2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from node.memstore import MemoryStore
from statemachine import Ok, codec, context, machine, nodes, pods, quotas, scheduler
from statemachine.codec import Envelope, decode_envelope, encode_envelope
from statemachine.machine import command_digest
from statemachine.view import Overlay
from tests.harness import ADMIN, Machine, member
from tests.test_codec import envelopes, golden_envelopes, plain_values

TENANT = member("acme", "web")
POD_SPEC = {"requests": {"cpuMillis": 100, "memoryBytes": 128 << 20}}


# ---- decoding ----------------------------------------------------------------------------------


def _strict_the_long_way(data: bytes) -> bool:
    """What loads_strict accepts, checked without the walk: canonical re-encoding gives the
    bytes, and the value is plain data (no floats, only string keys: 08eaaa7)."""
    try:
        value = cbor2.loads(data, tag_hook=codec._refuse_tag)
        codec._check_plain(value, -1)
    except (ValueError, cbor2.CBORDecodeError):
        return False
    return codec.dumps(value) == data


def _strict_now(data: bytes) -> bool:
    try:
        codec.loads_strict(data)
    except (ValueError, cbor2.CBORDecodeError):
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(st.text(max_size=6), plain_values, max_size=5), shuffle=st.randoms())
def test_strict_decoding_accepts_and_refuses_what_canonical_reencoding_did(body: dict[str, Any], shuffle: Any) -> None:
    canonical = codec.dumps({"body": body, "v": 1})
    assert _strict_now(canonical) and _strict_the_long_way(canonical)

    def reordered(value: Any) -> Any:  # the same maps, keys in another order
        if isinstance(value, dict):
            items = [(key, reordered(item)) for key, item in value.items()]
            shuffle.shuffle(items)
            return dict(items)
        if isinstance(value, list):
            return [reordered(item) for item in value]
        return value

    insertion_order = cbor2.dumps(reordered({"body": body, "v": 1}))
    assert _strict_now(insertion_order) == _strict_the_long_way(insertion_order)


@pytest.mark.parametrize(
    "value",
    [
        {"x": 1.5},  # a float: the walk hands it to the full check, which refuses it (not plain)
        {"x": [{"b": 1, "a": 2}]},  # unsorted keys in a map inside a list
        {"é": 1, "z": 2},  # non-ASCII keys take the full check
        {"": 1, "a": 2},  # an empty key
        {"x": {1: "integer key"}},  # canonical, but refused: not plain
        {"bb": 1, "a": 2},  # shorter keys sort first
        [1, 2],  # not a map at all
    ],
)
def test_strict_decoding_on_edge_cases_matches_canonical_reencoding(value: Any) -> None:
    for data in (codec.dumps(value), cbor2.dumps(value)):
        assert _strict_now(data) == _strict_the_long_way(data), data.hex()


# ---- the request-id digest ---------------------------------------------------------------------


def test_decoded_digest_equals_canonical_digest_for_every_golden_command() -> None:
    for name, envelope in golden_envelopes():
        decoded = decode_envelope(encode_envelope(envelope))
        assert machine._decoded_command_digest(decoded) == command_digest(envelope), name


@settings(max_examples=200, deadline=None)
@given(envelopes, st.one_of(st.none(), plain_values))
def test_decoded_digest_equals_canonical_digest(envelope: Envelope, plan: Any) -> None:
    if plan is not None:
        envelope = Envelope(envelope.type, {**envelope.body, "plan": plan}, *_rest(envelope))
    try:
        data = encode_envelope(envelope)
    except ValueError:
        assume(False)  # nests too deeply to be a command
    assert machine._decoded_command_digest(decode_envelope(data)) == command_digest(envelope)


def _rest(envelope: Envelope) -> tuple[Any, ...]:
    return envelope.principal, envelope.request_id, envelope.ts_ms


# ---- the overlay -------------------------------------------------------------------------------


def test_scans_between_unordered_writes_see_every_pending_write_in_order() -> None:
    store = MemoryStore()
    store.apply_writes([(b"b", b"base"), (b"d", b"base")])
    overlay = Overlay(store)
    overlay.put(b"e", b"1")
    overlay.put(b"a", b"2")  # out of order
    assert list(overlay.scan(b"", b"z")) == [(b"a", b"2"), (b"b", b"base"), (b"d", b"base"), (b"e", b"1")]
    overlay.delete(b"b")
    overlay.put(b"c", b"3")
    assert overlay.first(b"b", b"z") == (b"c", b"3")
    assert list(overlay.scan(b"", b"z")) == [(b"a", b"2"), (b"c", b"3"), (b"d", b"base"), (b"e", b"1")]
    overlay.put(b"a", b"4")  # a key already pending keeps one place
    assert overlay.writes() == ((b"a", b"4"), (b"b", None), (b"c", b"3"), (b"e", b"1"))


# ---- search ------------------------------------------------------------------------------------


def _cluster(node_count: int) -> Machine:
    machine_ = Machine()
    machine_.ok(ADMIN, "pool.create", {"name": "pods", "spec": {"cidr": "10.0.0.0/8"}})
    for number in range(node_count):
        capacity = {"cpuMillis": 1000 + 100 * (number % 3), "memoryBytes": 4 << 30, "pods": 10}
        body = {"name": f"n{number}", "labels": {"zone": f"z{number % 2}"}}
        machine_.ok(ADMIN, "node.register", {**body, "spec": {"capacity": capacity, "podPool": "pods"}})
    return machine_


def _search_decoding_afresh(store: MemoryStore, needs: pods.Needs, policy: str) -> scheduler.Found:
    scheduler._searched_state.cache_clear()
    try:
        return scheduler.search(store, needs, None, policy)
    finally:
        scheduler._searched_state.cache_clear()


@pytest.mark.parametrize("policy", [pods.SPREAD, pods.BINPACK])
def test_search_with_remembered_records_chooses_what_fresh_decoding_does(policy: str) -> None:
    machine_ = _cluster(6)
    given = {**POD_SPEC, "schedulingPolicy": policy, "nodeSelector": {"zone": "z1"}}
    needs = pods.Needs.of(pods.check_spec(given)[0])
    for number in range(20):  # the nodes fill up, so records change between searches
        remembered = scheduler.search(machine_.store, needs, None, policy)
        assert remembered == _search_decoding_afresh(machine_.store, needs, policy)
        machine_.ok(TENANT, "pod.create", {"name": f"p{number}", "spec": given})
    machine_.check()


# ---- what one verified placement costs ---------------------------------------------------------


class _CountingOverlay(Overlay):
    """An overlay that counts reads and writes per key."""

    instances: ClassVar[list[_CountingOverlay]] = []

    def __init__(self, base: Any) -> None:
        super().__init__(base)
        self.reads: dict[bytes, int] = {}
        self.puts: dict[bytes, int] = {}
        _CountingOverlay.instances.append(self)

    def get(self, key: bytes) -> bytes | None:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.puts[key] = self.puts.get(key, 0) + 1
        super().put(key, value)


def test_a_verified_placement_reads_and_writes_each_record_once(monkeypatch: pytest.MonkeyPatch) -> None:
    machine_ = _cluster(3)
    chosen = scheduler.plan_pod(machine_.store, POD_SPEC, TENANT)
    assert chosen is not None
    encodes: list[Any] = []
    real_dump = codec.dump_record

    def counting_dump(value: Any) -> bytes:
        encodes.append(value)
        return real_dump(value)

    monkeypatch.setattr(machine, "Overlay", _CountingOverlay)
    for module in (codec, context, machine, nodes, quotas, scheduler):
        monkeypatch.setattr(module, "dump_record", counting_dump)
    _CountingOverlay.instances.clear()
    body = {"name": "verified", "spec": POD_SPEC, "plan": {"nodeName": chosen}}
    outcome = machine_.run(TENANT, "pod.create", body, request_id="r1")
    assert isinstance(outcome.result, Ok)
    assert outcome.result.value["spec"]["nodeName"] == chosen

    (overlay,) = _CountingOverlay.instances
    assert all(count == 1 for count in overlay.reads.values()), overlay.reads
    assert all(count == 1 for count in overlay.puts.values()), overlay.puts
    # One encoding per record written (the allocator's free and used blocks and the indexes
    # hold raw keys, not records), plus the request-id digest's (strict decoding checks the
    # command as it reads it: no encoding).
    records = [key for key, value in outcome.writes if value and key[:1] not in (b"F", b"U")]
    assert len(encodes) == len(records) + 1, (len(encodes), records)
    machine_.check()
