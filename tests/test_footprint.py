"""The compact storage of claims and allocations, and packed snapshots (issue #3's footprint).

Claims, allocations, their watch events and the claims remembered for request ids are stored as
positional arrays (statemachine/claims.py, "the stored form"); every read rebuilds the public
object. These tests pin that the rebuilt object is exactly the one the write answered (same
fields, values and field order, so the JSON a client gets is unchanged), that the stored form
really is small, that records written as maps by an earlier build still read, and that the
packed snapshot copy holds the same records in fewer bytes.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.config import SERIALIZER_STATE

from bench import footprint
from node.raft import DumpWriter, read_dump_header
from node.store import LmdbStore
from statemachine import Envelope, Ok, apply, claims, codec, encode_envelope, keys
from statemachine.context import format_uid, rfc3339
from statemachine.queries import events_after, get, list_objects
from tests.harness import ADMIN, BASE_TS_MS, Machine, member

WEB = member("acme", "web")
KINDS = ("ipclaims", "ipallocations")


def _ordered(obj: Any) -> str:
    """JSON with the field order kept: equal strings mean equal objects in the same order."""
    return json.dumps(obj)


@pytest.fixture
def machine() -> Machine:
    m = Machine(check_every_step=True)
    m.ok(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/16"}})
    m.ok(
        ADMIN,
        "class.create",
        {"name": "v6", "spec": {"ipFamily": "IPv6", "allocation": {"defaultPrefixLength": 64}}},
    )
    m.ok(ADMIN, "pool.create", {"name": "q", "spec": {"cidr": "fd00::/48", "classNames": ["v6"]}})
    return m


SPECS: list[dict[str, Any]] = [
    {"poolRef": "p"},
    {"poolRef": "p", "prefixLength": 28},
    {"poolRef": "p", "address": "10.0.200.7"},
    {"poolRef": "p", "cidr": "10.0.100.0/24", "reclaimPolicy": "Retain"},
    {"className": "v6"},
    {"className": "v6", "prefixLength": 60, "reclaimPolicy": "Delete"},
]


def test_every_read_answers_exactly_what_the_write_answered(machine: Machine) -> None:
    answered = []
    for number, spec in enumerate(SPECS):
        labels = {"app": "web", "tier": str(number)} if number % 2 else {}
        answered.append(machine.ok(WEB, "claim.create", {"name": f"c{number}", "labels": labels, "spec": spec}))
    for claim in answered:
        name = claim["metadata"]["name"]
        assert _ordered(get(machine.store, WEB, "ipclaims", name)) == _ordered(claim)
        allocation = get(machine.store, WEB, "ipallocations", name)
        assert allocation["spec"]["cidr"] == claim["status"]["allocatedCIDR"]
        assert allocation["spec"]["claimRef"] == name == claim["status"]["allocationRef"]
    listed = list_objects(machine.store, WEB, "ipclaims")["items"]
    by_name = {claim["metadata"]["name"]: claim for claim in answered}
    assert [_ordered(item) for item in listed] == [_ordered(by_name[item["metadata"]["name"]]) for item in listed]
    # The same claim again answers the stored one, rebuilt: identical to the first answer.
    again = machine.ok(WEB, "claim.create", {"name": "c1", "labels": {"app": "web", "tier": "1"}, "spec": SPECS[1]})
    assert _ordered(again) == _ordered(by_name["c1"])


def test_watch_events_rebuild_the_objects_as_they_were(machine: Machine) -> None:
    created = machine.ok(WEB, "claim.create", {"name": "keep", "spec": SPECS[3]})
    deleted = machine.ok(WEB, "claim.delete", {"name": "keep"})  # Retain: the allocation is Released
    rebound = machine.ok(WEB, "claim.create", {"name": "keep", "spec": SPECS[3]})
    events, _ = events_after(machine.store, WEB, 0, KINDS)
    shapes = [(event["type"], event["object"]["kind"]) for event in events]
    assert shapes == [
        ("ADDED", "IPAllocation"),
        ("ADDED", "IPClaim"),
        ("MODIFIED", "IPAllocation"),
        ("DELETED", "IPClaim"),
        ("MODIFIED", "IPAllocation"),
        ("ADDED", "IPClaim"),
    ]
    claim_events = [event["object"] for event in events if event["object"]["kind"] == "IPClaim"]
    assert [_ordered(obj) for obj in claim_events] == [_ordered(created), _ordered(deleted), _ordered(rebound)]
    phases = [event["object"]["status"]["phase"] for event in events if event["object"]["kind"] == "IPAllocation"]
    assert phases == ["Bound", "Released", "Bound"]


def test_records_events_and_remembered_answers_are_compact(machine: Machine) -> None:
    answer = machine.ok(WEB, "claim.create", {"name": "small", "spec": {"poolRef": "p"}}, request_id="0" * 32)
    public = len(codec.dump_record(answer))
    claim_key = keys.claim_key("acme", "web", "default", "small")
    alloc_key = keys.alloc_key("acme", "web", "default", "small")
    for key in (claim_key, alloc_key):
        stored = machine.store.get(key)
        assert stored is not None
        assert len(stored) * 3 < public, (key, len(stored), public)
    last_event = max(machine.store.scan(keys.EVENT, keys.EVENT_END))[1]
    assert len(last_event) < public  # both objects, in fewer bytes than one public encoding
    dedup = machine.store.get(keys.dedup_key("acme", "web", "0" * 32))
    assert dedup is not None and len(dedup) < public
    # A retry with the same request id answers the remembered claim, rebuilt exactly.
    retry = machine.run(WEB, "claim.create", {"name": "small", "spec": {"poolRef": "p"}}, request_id="0" * 32)
    assert isinstance(retry.result, Ok) and retry.result.created and not retry.writes
    assert _ordered(retry.result.value) == _ordered(answer)


def test_a_remembered_delete_answers_the_deleted_claim(machine: Machine) -> None:
    machine.ok(WEB, "claim.create", {"name": "gone", "spec": {"poolRef": "p"}})
    first = machine.ok(WEB, "claim.delete", {"name": "gone"}, request_id="del-1")
    retry = machine.run(WEB, "claim.delete", {"name": "gone"}, request_id="del-1")
    assert isinstance(retry.result, Ok) and not retry.writes
    assert _ordered(retry.result.value) == _ordered(first)


def test_records_written_as_maps_by_an_earlier_build_still_read(machine: Machine) -> None:
    claim = machine.ok(WEB, "claim.create", {"name": "old", "spec": {"poolRef": "p"}})
    claim_key = keys.claim_key("acme", "web", "default", "old")
    alloc_key = keys.alloc_key("acme", "web", "default", "old")
    allocation = get(machine.store, WEB, "ipallocations", "old")
    machine.store.apply_writes([(claim_key, codec.dump_record(claim)), (alloc_key, codec.dump_record(allocation))])
    assert _ordered(get(machine.store, WEB, "ipclaims", "old")) == _ordered(claim)
    assert claims.decode_event_object(codec.dump_record(claim)) == claim
    machine.check()
    deleted = machine.ok(WEB, "claim.delete", {"name": "old"})  # releases through the map record
    assert deleted["status"]["allocatedCIDR"] == claim["status"]["allocatedCIDR"]
    machine.check()


@pytest.mark.parametrize(
    "timestamp",
    ["1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2026-01-01T00:00:00Z", "2100-03-01T12:30:07Z"],
)
def test_timestamps_made_here_are_stored_as_seconds(timestamp: str) -> None:
    seconds = claims._time_in(timestamp)
    assert isinstance(seconds, int)
    assert rfc3339(seconds * 1000) == timestamp


@pytest.mark.parametrize(
    "timestamp",
    ["", "garbage", "2026-1-01T00:00:00Z", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "1969-12-31T23:59:59Z"],
)
def test_other_timestamps_are_stored_as_text(timestamp: str) -> None:
    assert claims._time_in(timestamp) == timestamp


def test_uids_made_here_are_stored_as_bytes() -> None:
    uid = format_uid(bytes(range(10)))
    assert claims._uid_in(uid) == bytes(range(10))
    for odd in ("not-a-uid", "00-11", "000000000002-0000-0001-extra"):
        assert claims._uid_in(odd) == odd


def test_an_object_of_another_shape_is_kept_as_a_map(machine: Machine) -> None:
    claim = machine.ok(WEB, "claim.create", {"name": "shape", "spec": {"poolRef": "p"}})
    key = keys.claim_key("acme", "web", "default", "shape")
    assert claims._plain(key, claim) is not None
    odd = [
        {**claim, "extra": 1},
        {**claim, "metadata": {**claim["metadata"], "uid": 7}},
        {**claim, "status": {**claim["status"], "allocationRef": None}},
        {**claim, "spec": {"reclaimPolicy": "Delete", "poolRef": "p"}},  # another field order
    ]
    for obj in odd:
        assert claims._plain(key, obj) is None
        assert claims.compact_answer(obj) is None  # remembered as the map it is
        assert claims.decode_record(key, codec.dump_record(obj)) == obj
    assert claims._plain(keys.claim_key("acme", "web", "default", "other"), claim) is None


def _fill(store: LmdbStore, count: int) -> None:
    entries = [
        encode_envelope(
            Envelope("pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/16"}}, ADMIN, None, BASE_TS_MS)
        )
    ]
    for number in range(count):
        body = {"name": f"c{number}", "spec": {"poolRef": "p"}}
        entries.append(
            encode_envelope(Envelope("claim.create", body, WEB, f"rid-{number * 7919 % count}", BASE_TS_MS + number))
        )
    for index in range(0, len(entries), 8):
        outcomes = store.apply_entry(index // 8 + 1, entries[index : index + 8])
        assert outcomes is not None and all(outcome.ok for outcome in outcomes)


def test_a_snapshot_is_packed_and_holds_the_same_records(tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "source", sync=False) as source:
        _fill(source, 3000)
        info = source.create_snapshot(tmp_path / "snapshot")
        compact = tmp_path / "compact.mdb"
        with open(compact, "xb") as handle:
            source._require_env().copyfd(handle.fileno(), compact=True)
        # Key-ordered appends fill every page: smaller than a page-for-page compact copy.
        assert info.size_bytes < compact.stat().st_size
        with LmdbStore(tmp_path / "target", sync=False) as target:
            target.install_snapshot(tmp_path / "snapshot")
            assert target.applied_index == source.applied_index == info.applied_index
            assert target.digest() == source.digest()
            target.check_invariants()
            # The installed copy takes further entries like any store.
            extra = encode_envelope(
                Envelope("claim.create", {"name": "after", "spec": {"poolRef": "p"}}, WEB, None, BASE_TS_MS + 10**6)
            )
            assert target.apply_entry(target.applied_index + 1, [extra]) is not None
            assert source.apply_entry(source.applied_index + 1, [extra]) is not None
            assert target.digest() == source.digest()


def test_apply_is_unchanged_by_where_the_records_came_from() -> None:
    """Two replicas, one fed by the log and one by replaying it, store the same bytes."""
    first, second = Machine(), Machine()
    for m in (first, second):
        m.ok(ADMIN, "pool.create", {"name": "p", "spec": {"cidr": "10.0.0.0/24"}})
        for number in range(5):
            m.ok(WEB, "claim.create", {"name": f"c{number}", "spec": SPECS[number % 2]}, request_id=f"r{number}")
        m.ok(WEB, "claim.delete", {"name": "c2"})
    assert first.digest() == second.digest()
    replayed = Machine()
    for index, data in enumerate(first.log, start=1):
        replayed.store.apply_writes(apply(replayed.store, data, index).writes)
    assert replayed.digest() == first.digest()


def test_the_footprint_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """bench/footprint.py end to end on a tiny load (its numbers are printed, never asserted)."""
    footprint.main(["--claims", "300", "--batch", "4"])
    printed = capsys.readouterr().out
    assert printed.startswith("# ") and "load average" in printed
    for what in ("claim/", "alloc/", "U (used blocks)", "dd/ (dedup records)", "ev/ (event log)", "snapshot"):
        assert what in printed, printed


def _dump_once(writer: DumpWriter, dump_path: Path, index: int) -> None:
    """What pysyncobj does around our serializer: call it with `<dump>.tmp`, rename the tmp
    file over the dump at once, then poll the checker until the dump is reported."""
    tmp_path = Path(str(dump_path) + ".tmp")
    writer.serialize(str(tmp_path), (("entry", index), ("entry", index - 1), ["m1"]))
    os.replace(tmp_path, dump_path)  # pysyncobj's atomicReplace
    deadline = time.monotonic() + 30.0
    while (state := writer.check()) == SERIALIZER_STATE.SERIALIZING:
        assert time.monotonic() < deadline, "the dump was never reported"
        time.sleep(0.01)
    assert state == SERIALIZER_STATE.SUCCESS


def test_a_finished_dump_leaves_no_old_dump_behind(tmp_path: Path) -> None:
    """pysyncobj's rename of our hard link over the dump is a no-op (both names are one file),
    which used to leave `dump.tmp` holding the previous dump's blocks until the next dump."""
    with LmdbStore(tmp_path / "state", sync=False) as store:
        _fill(store, 200)
        dump_path = tmp_path / "dump"
        writer = DumpWriter(store, dump_path)
        _dump_once(writer, dump_path, store.applied_index)  # the first: no previous dump
        first = dump_path.stat().st_ino
        _fill_more(store, 50)
        _dump_once(writer, dump_path, store.applied_index)  # the second links the first to .tmp
        assert dump_path.stat().st_ino != first
        names = sorted(path.name for path in tmp_path.iterdir() if path.name.startswith("dump"))
        assert names == ["dump", "dump.verified"], names
        assert os.path.samefile(dump_path, tmp_path / "dump.verified"), "its second name is the new dump's"
        last, _, cluster, _ = read_dump_header(dump_path)
        assert int(last[1]) == store.applied_index and cluster == ["m1"]


def _fill_more(store: LmdbStore, count: int) -> None:
    for number in range(count):
        body = {"name": f"more{number}", "spec": {"poolRef": "p"}}
        data = encode_envelope(Envelope("claim.create", body, WEB, None, BASE_TS_MS + 10**7 + number))
        outcomes = store.apply_entry(store.applied_index + 1, [data])
        assert outcomes is not None and outcomes[0].ok
