"""The LMDB store (node/store.py) against the in-memory store, which is the reference.

What a member relies on: an entry is applied whole or not at all; entries at or below
applied_index are skipped (journal replay after a restart); reads see one consistent state and
hand out bytes; a snapshot installs only if its checksum holds, and then reproduces the source
exactly.
"""

from __future__ import annotations

import inspect
import io
import json
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.memstore import MemoryStore
from node.store import (
    DATA_FILE,
    NODE_DB,
    SESSION_FILE,
    SNAPSHOT_DATA_FILE,
    SNAPSHOT_MANIFEST_FILE,
    STAGING_FILE,
    STATE_DB,
    STORE_FORMAT,
    TORN_FILE,
    LmdbStore,
    SnapshotError,
    StoreError,
    StoreFullError,
    UnsafeShutdownError,
    open_replica_store,
    verify_snapshot,
)
from statemachine import Envelope, InvariantViolation, Ok, Outcome, Principal, Rejected, apply, encode_envelope
from statemachine import keys as state_keys
from statemachine.invariants import check_invariants, digest
from statemachine.view import prefix_end
from tests.harness import ADMIN, BASE_TS_MS, member

ACME = member("acme", "web")
GLOBEX = member("globex", "api")
ALL_KEYS_END = b"\xff" * 64  # what invariants.digest scans up to

Entry = tuple[int, list[bytes]]


class Log:
    """Encoded envelopes with increasing timestamps, as a proposing member stamps them."""

    def __init__(self) -> None:
        self.envelopes: list[bytes] = []
        self.ts_ms = BASE_TS_MS

    def add(
        self, principal: Principal, command_type: str, body: dict[str, Any], request_id: str | None = None
    ) -> bytes:
        self.ts_ms += 1000
        data = encode_envelope(Envelope(command_type, body, principal, request_id, self.ts_ms))
        self.envelopes.append(data)
        return data


def pool(log: Log, name: str, cidr: str) -> bytes:
    return log.add(ADMIN, "pool.create", {"name": name, "spec": {"cidr": cidr}})


def claim(log: Log, who: Principal, name: str, pool_ref: str, length: int, request_id: str | None = None) -> bytes:
    body = {"name": name, "spec": {"poolRef": pool_ref, "prefixLength": length}}
    return log.add(who, "claim.create", body, request_id)


def unclaim(log: Log, who: Principal, name: str) -> bytes:
    return log.add(who, "claim.delete", {"name": name})


def workload() -> Log:
    """Successes, every kind of refusal, dedup hits and conflicts, deletes, and an exhausted pool."""
    log = Log()
    pool(log, "p1", "10.0.0.0/16")
    pool(log, "small", "192.168.0.0/30")
    pool(log, "p6", "fd00::/48")
    pool(log, "p1", "10.0.0.0/16")  # exists: found, not created
    pool(log, "overlap", "10.0.128.0/17")  # overlaps p1: refused
    for i in range(6):
        claim(log, ACME, f"c{i}", "p1", 28 + i % 3)
    claim(log, GLOBEX, "g1", "p1", 24, request_id="req-1")
    claim(log, GLOBEX, "g1", "p1", 24, request_id="req-1")  # retry: the first result again
    claim(log, GLOBEX, "g2", "p1", 24, request_id="req-1")  # same id, other command: conflict
    claim(log, ACME, "v6", "p6", 64)
    claim(log, ACME, "s1", "small", 31)
    claim(log, ACME, "s2", "small", 31)
    claim(log, ACME, "s3", "small", 31)  # exhausted
    claim(log, ACME, "nope", "missing", 28)  # not found
    unclaim(log, ACME, "c1")
    unclaim(log, ACME, "c1")  # already gone
    claim(log, ACME, "c7", "p1", 28)  # takes c1's block back
    log.add(ACME, "noop", {})
    log.add(ACME, "no.such.command", {})
    unclaim(log, ACME, "s1")
    claim(log, ACME, "s4", "small", 32)
    return log


def batches(envelopes: list[bytes], sizes: list[int], first_index: int = 1, gap: int = 1) -> list[Entry]:
    """Cut envelopes into entries of the given sizes (cycled); indexes advance by `gap`, as log
    entries that carry no envelopes for us (pysyncobj's own) leave holes."""
    entries: list[Entry] = []
    cursor, index, turn = 0, first_index, 0
    while cursor < len(envelopes):
        size = sizes[turn % len(sizes)]
        entries.append((index, envelopes[cursor : cursor + size]))
        cursor += size
        index += gap
        turn += 1
    return entries


def apply_to_memory(entries: list[Entry]) -> tuple[MemoryStore, list[Outcome]]:
    """The reference: each envelope at its (index, position), its writes applied at once."""
    memory = MemoryStore()
    outcomes: list[Outcome] = []
    for index, envelopes in entries:
        for position, data in enumerate(envelopes):
            outcome = apply(memory, data, index, position)
            memory.apply_writes(outcome.writes)
            outcomes.append(outcome)
    return memory, outcomes


def without_meta(outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes as an entry's commands give them: the meta record is not among their writes,
    it is written once after them (EntryApply)."""
    return [
        Outcome(o.result, tuple(w for w in o.writes if w[0] != state_keys.META), o.revision, o.replayed)
        for o in outcomes
    ]


def apply_to_lmdb(store: LmdbStore, entries: list[Entry]) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for index, envelopes in entries:
        applied = store.apply_entry(index, envelopes)
        assert applied is not None, f"entry {index} was skipped"
        outcomes.extend(applied)
    return outcomes


def everything(store: LmdbStore) -> list[tuple[bytes, bytes]]:
    with store.reader() as view:
        return list(view.scan(b"", ALL_KEYS_END))


def raw_env(directory: Path) -> lmdb.Environment:
    """The store's LMDB file opened directly, to damage it the way a bug or a lost file would."""
    return lmdb.open(str(directory / DATA_FILE), subdir=False, max_dbs=2, map_size=1 << 26)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    with LmdbStore(tmp_path / "store", map_size=1 << 26) as opened:
        yield opened


@pytest.fixture
def loaded(store: LmdbStore) -> LmdbStore:
    """A store holding the whole workload, three envelopes per entry."""
    apply_to_lmdb(store, batches(workload().envelopes, [3]))
    return store


# --- applying -----------------------------------------------------------------------------------


def test_lmdb_and_memory_agree_on_outcomes_state_and_digest(store: LmdbStore) -> None:
    entries = batches(workload().envelopes, [1, 4, 2, 7], gap=2)
    memory, applied_one_by_one = apply_to_memory(entries)
    outcomes = apply_to_lmdb(store, entries)

    assert outcomes == without_meta(applied_one_by_one)  # and the state is the same, below
    assert sum(state_keys.META in dict(o.writes) for o in applied_one_by_one) >= 15
    assert everything(store) == list(memory.items())
    assert store.digest() == digest(memory)
    assert store.applied_index == entries[-1][0]
    store.check_invariants()
    # The workload really exercised both paths.
    assert sum(o.ok for o in outcomes) >= 15
    codes = {o.result.code for o in outcomes if isinstance(o.result, Rejected)}
    assert {"conflict", "pool_exhausted", "not_found", "invalid"} <= codes


def test_each_envelope_sees_the_writes_of_those_before_it_in_the_entry(store: LmdbStore) -> None:
    log = Log()
    entry = [pool(log, "p1", "10.0.0.0/24"), claim(log, ACME, "a", "p1", 30), claim(log, ACME, "b", "p1", 30)]
    outcomes = store.apply_entry(1, entry)
    assert outcomes is not None
    results = [o.result for o in outcomes]
    assert all(isinstance(r, Ok) for r in results)
    cidrs = [r.value["status"]["allocatedCIDR"] for r in results[1:] if isinstance(r, Ok)]
    assert cidrs == ["10.0.0.0/30", "10.0.0.4/30"]


def test_an_empty_entry_only_advances_applied_index(store: LmdbStore) -> None:
    before = store.digest()
    assert store.apply_entry(5, []) == []
    assert store.applied_index == 5
    assert store.digest() == before


def test_replayed_entries_are_skipped_and_change_nothing(tmp_path: Path) -> None:
    log = workload()
    entries = batches(log.envelopes, [2])
    last = entries[-1][0]
    with LmdbStore(tmp_path / "s") as store:
        apply_to_lmdb(store, entries)
        after = store.digest()
        other = [claim(log, ACME, "late", "p1", 28)]
        for index, envelopes in [*entries, (last, other), (1, other)]:
            assert store.apply_entry(index, envelopes) is None
        assert (store.digest(), store.applied_index) == (after, last)

    with LmdbStore(tmp_path / "s") as reopened:  # the journal replays from the start after a restart
        assert (reopened.digest(), reopened.applied_index) == (after, last)
        for index, envelopes in entries:
            assert reopened.apply_entry(index, envelopes) is None
        assert reopened.digest() == after
        outcomes = reopened.apply_entry(last + 1, other)
        assert outcomes is not None and outcomes[0].ok
        assert reopened.applied_index == last + 1


def test_a_store_of_another_format_is_refused_by_name(tmp_path: Path) -> None:
    LmdbStore(tmp_path / "s").close()
    with lmdb.open(str(tmp_path / "s" / DATA_FILE), subdir=False, max_dbs=2) as env, env.begin(write=True) as txn:
        txn.put(b"format", (STORE_FORMAT - 1).to_bytes(8, "big"), db=env.open_db(NODE_DB, txn=txn))
    with pytest.raises(StoreError, match=f"store format {STORE_FORMAT - 1}; this build reads format {STORE_FORMAT}"):
        LmdbStore(tmp_path / "s")


def test_index_zero_is_refused(store: LmdbStore) -> None:
    with pytest.raises(ValueError, match="start at 1"):
        store.apply_entry(0, [])


def test_replay_over_state_that_holds_the_entry_stops_the_entry(tmp_path: Path) -> None:
    """If the bookkeeping were lost (applied_index behind the state), replaying an entry the state
    already holds must be caught by the state machine, and the store must write nothing."""
    directory = tmp_path / "s"
    log = workload()
    with LmdbStore(directory) as store:
        apply_to_lmdb(store, batches(log.envelopes, [1]))
        held = store.applied_index
    with raw_env(directory) as env, env.begin(write=True) as txn:
        txn.put(b"applied_index", (2).to_bytes(8, "big"), db=env.open_db(NODE_DB, txn=txn))
    with LmdbStore(directory) as store:
        assert store.applied_index == 2
        before = store.digest()
        with pytest.raises(InvariantViolation, match="replayed"):
            store.apply_entry(held - 1, [claim(log, ACME, "again", "p1", 28)])
        assert (store.digest(), store.applied_index) == (before, 2)


def test_invariant_violation_mid_entry_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    log = Log()
    with LmdbStore(directory) as store:
        store.apply_entry(1, [pool(log, "p1", "10.0.0.0/16")])
    with raw_env(directory) as env, env.begin(write=True) as txn:  # a record damaged on disk
        txn.put(state_keys.pool_key("", "", "p1"), b"\xff\x00 not cbor", db=env.open_db(STATE_DB, txn=txn))
    with LmdbStore(directory) as store:
        before = store.digest()
        entry = [pool(log, "p2", "10.1.0.0/16"), claim(log, ACME, "c", "p1", 28)]  # writes, then breaks
        with pytest.raises(InvariantViolation):
            store.apply_entry(2, entry)
        assert (store.digest(), store.applied_index) == (before, 1)
        with store.reader() as view:
            assert view.get(state_keys.pool_key("", "", "p2")) is None
        outcomes = store.apply_entry(3, [pool(log, "p3", "10.2.0.0/16")])  # the store is still usable
        assert outcomes is not None and outcomes[0].ok


def test_a_key_lmdb_cannot_hold_aborts_the_whole_entry(store: LmdbStore) -> None:
    """LMDB keys are at most 511 bytes; the state machine bounds request ids in characters, and 128
    four-byte characters make a dedup key of over 512 bytes (reported as a state machine bug).
    Either the state machine refuses such an id, or the store aborts the entry with a clear error."""
    log = Log()
    store.apply_entry(1, [pool(log, "p1", "10.0.0.0/16")])
    before = store.digest()
    entry = [claim(log, ACME, "a", "p1", 28), claim(log, ACME, "b", "p1", 28, request_id="\U0001f600" * 128)]
    try:
        outcomes = store.apply_entry(2, entry)
    except StoreError as exc:
        assert "511 bytes" in str(exc)
        assert (store.digest(), store.applied_index) == (before, 1)
    else:
        assert outcomes is not None and isinstance(outcomes[1].result, Rejected)


def test_a_full_map_aborts_the_entry_and_names_the_option(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    log = Log()
    map_size = 256 * 1024
    with LmdbStore(directory, map_size=map_size) as store:
        store.apply_entry(1, [pool(log, "p1", "10.0.0.0/8")])
        index = 1
        with pytest.raises(StoreFullError, match="map_size=262144") as raised:
            for index in range(2, 2000):
                before = (store.digest(), store.applied_index)
                store.apply_entry(index, [claim(log, ACME, f"c{index}-{j}", "p1", 32) for j in range(20)])
        assert "larger map_size" in str(raised.value)
        assert (store.digest(), store.applied_index) == before
        failed = [claim(log, ACME, f"c{index}-{j}", "p1", 32) for j in range(20)]
    with LmdbStore(directory, map_size=8 * map_size) as bigger:  # restarted with room: replay goes on
        assert bigger.applied_index == index - 1
        assert bigger.apply_entry(index, failed) is not None
        bigger.check_invariants()


# --- reading ------------------------------------------------------------------------------------


def test_scans_match_the_memory_store_on_every_range(loaded: LmdbStore) -> None:
    memory = MemoryStore()
    memory.apply_writes(everything(loaded))
    stored = [key for key, _ in memory.items()]
    prefixes = [b"pool/", b"claim/acme/", b"alloc/", b"ev/", b"F", b"U", b"meta", b"zzz", b""]
    bounds = [b"", b"\x00", b"a", b"claim/", b"meta", b"meta\x00", b"p", b"\xff", ALL_KEYS_END, *stored[::5]]
    ranges = [(p, prefix_end(p)) for p in prefixes if p] + [(a, b) for a in bounds for b in bounds]
    with loaded.reader() as view:
        for start, end in ranges:
            got = list(view.scan(start, end))
            assert got == list(memory.scan(start, end)), (start, end)
            assert all(start <= key < end for key, _ in got)
        assert list(view.scan(b"meta", b"meta")) == []  # empty range, start == end
        assert list(view.scan(b"z", b"a")) == []  # start after end
        assert list(view.scan(b"claim/acme/web/default/c0\x00", b"claim/acme/web/default/c0\x01")) == []
        assert [k for k, _ in view.scan(b"claim/acme/", prefix_end(b"claim/acme/"))] == sorted(
            k for k in stored if k.startswith(b"claim/acme/")
        )
        for key, value in memory.items():
            assert view.get(key) == value
        assert view.get(b"no such key") is None


def test_reads_hand_out_bytes_never_buffers(loaded: LmdbStore) -> None:
    with loaded.reader() as view:
        value = view.get(b"meta")
        assert type(value) is bytes
        for key, value in view.scan(b"", ALL_KEYS_END):
            assert type(key) is bytes and type(value) is bytes
    assert value  # still usable after the transaction ended: it was copied out


def test_scans_are_lazy_and_may_be_abandoned(loaded: LmdbStore) -> None:
    with loaded.reader() as view:
        scan = view.scan(b"", ALL_KEYS_END)
        assert inspect.isgenerator(scan)
        first = next(scan)
        del scan  # abandoned early: its cursor is closed, the view still works
        for _ in view.scan(b"", ALL_KEYS_END):
            break
        assert next(view.scan(b"", ALL_KEYS_END)) == first
        assert view.get(first[0]) == first[1]


def test_a_reader_sees_one_state_while_entries_commit(loaded: LmdbStore) -> None:
    before = loaded.digest()
    log = Log()
    log.ts_ms += 10**6
    with loaded.reader() as view:
        outcomes = loaded.apply_entry(loaded.applied_index + 1, [claim(log, ACME, "new", "p1", 28)])
        assert outcomes is not None and outcomes[0].ok
        assert digest(view) == before  # the reader's transaction predates the commit
    assert loaded.digest() != before


def test_a_view_is_unusable_after_its_block(loaded: LmdbStore) -> None:
    with loaded.reader() as view:
        pass
    with pytest.raises(StoreError, match="after its transaction ended"):
        view.get(b"meta")
    with pytest.raises(StoreError, match="after its transaction ended"):
        list(view.scan(b"", b"z"))


# --- snapshots ----------------------------------------------------------------------------------


def _follow_up() -> list[bytes]:
    log = Log()
    log.ts_ms += 10**7
    return [claim(log, GLOBEX, "after", "p1", 26), unclaim(log, ACME, "c0")]


def test_snapshot_installs_into_a_fresh_store_and_both_go_on_alike(loaded: LmdbStore, tmp_path: Path) -> None:
    info = loaded.create_snapshot(tmp_path / "snap")
    assert info.applied_index == loaded.applied_index == loaded.snapshot_index
    assert verify_snapshot(tmp_path / "snap") == info == loaded.verify_snapshot(tmp_path / "snap")
    assert info.size_bytes == (tmp_path / "snap" / SNAPSHOT_DATA_FILE).stat().st_size

    with LmdbStore(tmp_path / "fresh") as fresh:
        assert fresh.install_snapshot(tmp_path / "snap") == info
        assert (fresh.digest(), fresh.applied_index) == (loaded.digest(), loaded.applied_index)
        assert fresh.snapshot_index == info.applied_index
        assert everything(fresh) == everything(loaded)
        fresh.check_invariants()
        assert fresh.apply_entry(info.applied_index, []) is None  # the journal replays: skipped
        nxt = info.applied_index + 1
        assert fresh.apply_entry(nxt, _follow_up()) == loaded.apply_entry(nxt, _follow_up())
        assert fresh.digest() == loaded.digest()
        assert not (fresh.directory / STAGING_FILE).exists()

    with LmdbStore(tmp_path / "fresh") as reopened:  # the installed state is durable
        assert (reopened.digest(), reopened.applied_index) == (loaded.digest(), loaded.applied_index)


def test_installing_replaces_existing_state(loaded: LmdbStore, tmp_path: Path) -> None:
    with LmdbStore(tmp_path / "other") as other:
        log = Log()
        other.apply_entry(1, [pool(log, "elsewhere", "172.16.0.0/12")])
        other.apply_entry(10_000, [])  # ahead of the snapshot: installing rolls it back, by request
        loaded.create_snapshot(tmp_path / "snap")
        other.install_snapshot(tmp_path / "snap")
        assert (other.digest(), other.applied_index) == (loaded.digest(), loaded.applied_index)


def test_read_views_on_other_threads_are_never_broken_by_an_install(loaded: LmdbStore, tmp_path: Path) -> None:
    """An install closes the environment and opens the new file. Read views open on other
    threads then failed ("Attempt to operate on closed/deleted/dropped object"), and one begun
    in between with "the store is closed": a 500 for the clients of a follower catching up."""
    blob = loaded.snapshot_bytes()
    with LmdbStore(tmp_path / "follower") as follower:
        follower.install_snapshot_bytes(blob)
        stop = threading.Event()
        failures: list[str] = []
        reads = [0]

        def read_constantly() -> None:
            while not stop.is_set():
                try:
                    with follower.reader() as view:
                        for _ in view.scan(b"", b"\xff" * 8):
                            pass
                    follower.used_bytes()
                    reads[0] += 1
                except Exception as exc:
                    failures.append(repr(exc))
                    return

        readers = [threading.Thread(target=read_constantly) for _ in range(3)]
        for reader in readers:
            reader.start()
        try:
            for _ in range(15):
                follower.install_snapshot_bytes(blob)
        finally:
            stop.set()
            for reader in readers:
                reader.join(timeout=30)
        assert not failures, failures
        assert reads[0] > 0
        assert follower.digest() == loaded.digest()


def _damage(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("offset", [0, 4096 + 100, -1])
def test_a_flipped_byte_is_caught_and_nothing_is_installed(loaded: LmdbStore, tmp_path: Path, offset: int) -> None:
    loaded.create_snapshot(tmp_path / "snap")
    _damage(tmp_path / "snap" / SNAPSHOT_DATA_FILE, offset)
    with pytest.raises(SnapshotError, match="corrupt"):
        verify_snapshot(tmp_path / "snap")
    with LmdbStore(tmp_path / "target") as target:
        log = Log()
        target.apply_entry(3, [pool(log, "mine", "10.9.0.0/16")])
        before = (target.digest(), target.applied_index)
        with pytest.raises(SnapshotError, match="corrupt"):
            target.install_snapshot(tmp_path / "snap")
        assert (target.digest(), target.applied_index) == before
        assert not (target.directory / STAGING_FILE).exists()


def test_a_missing_or_garbled_manifest_is_refused(loaded: LmdbStore, tmp_path: Path) -> None:
    snap = tmp_path / "snap"
    loaded.create_snapshot(snap)
    manifest = snap / SNAPSHOT_MANIFEST_FILE
    good = json.loads(manifest.read_bytes())
    cases: list[tuple[bytes | None, str]] = [
        (None, "missing"),
        (b"{not json", "not JSON"),
        (b"[]", "exactly"),
        (json.dumps({**good, "extra": 1}).encode(), "exactly"),
        (json.dumps({**good, "applied_index": "7"}).encode(), "non-negative integer"),
        (json.dumps({**good, "sha256": "00"}).encode(), "hex"),
        (json.dumps({**good, "format": 99}).encode(), "format 99"),
        (json.dumps({**good, "size_bytes": good["size_bytes"] - 1}).encode(), "corrupt"),
        (json.dumps({**good, "applied_index": good["applied_index"] + 1}).encode(), "applied_index"),
    ]
    with LmdbStore(tmp_path / "target") as target:
        for content, message in cases:
            if content is None:
                manifest.unlink()
            else:
                manifest.write_bytes(content)
            with pytest.raises(SnapshotError, match=message):
                verify_snapshot(snap)
            with pytest.raises(SnapshotError, match=message):
                target.install_snapshot(snap)
            assert target.applied_index == 0
        assert everything(target) == []


def test_a_snapshot_needs_an_empty_directory(loaded: LmdbStore, tmp_path: Path) -> None:
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "something").write_text("x")
    with pytest.raises(SnapshotError, match="not empty"):
        loaded.create_snapshot(tmp_path / "snap")


def test_a_pinned_snapshot_holds_the_state_at_the_pin_even_when_written_later(
    loaded: LmdbStore, tmp_path: Path
) -> None:
    at_pin = (loaded.digest(), loaded.applied_index)
    pending = loaded.begin_snapshot()
    assert pending.applied_index == at_pin[1]
    loaded.apply_entry(at_pin[1] + 1, _follow_up())  # applied after the pin: not in the copy
    written: list[Any] = []
    writer = threading.Thread(target=lambda: written.append(pending.write(tmp_path / "snap")))
    writer.start()
    writer.join(timeout=10)
    assert written and written[0].applied_index == at_pin[1]
    with pytest.raises(SnapshotError, match="already written"):
        pending.write(tmp_path / "again")
    with LmdbStore(tmp_path / "fresh") as fresh:
        fresh.install_snapshot(tmp_path / "snap")
        assert (fresh.digest(), fresh.applied_index) == at_pin


def test_snapshot_bytes_round_trip(loaded: LmdbStore, tmp_path: Path) -> None:
    blob = loaded.snapshot_bytes()
    assert not [p for p in loaded.directory.iterdir() if p.name.startswith(".snapshot-")]
    with LmdbStore(tmp_path / "fresh") as fresh:
        info = fresh.install_snapshot_bytes(blob)
        assert info.applied_index == loaded.applied_index
        assert (fresh.digest(), fresh.applied_index) == (loaded.digest(), loaded.applied_index)
        out = io.BytesIO()
        assert fresh.write_snapshot_stream(out).applied_index == loaded.applied_index
    with LmdbStore(tmp_path / "third") as third:
        third.install_snapshot_stream(io.BytesIO(out.getvalue()))
        assert third.digest() == loaded.digest()


def test_garbage_and_damaged_bytes_are_refused(loaded: LmdbStore, tmp_path: Path) -> None:
    blob = loaded.snapshot_bytes()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x80
    header_flipped = bytearray(blob)
    header_flipped[12] ^= 0x01  # inside the applied_index field
    cases = {
        b"": "shorter than its header",
        b"garbage" * 100: "bad magic",
        blob[: len(blob) // 2]: "truncated",
        blob[:-1]: "SHA-256",
        bytes(flipped): "SHA-256",
        bytes(header_flipped): "SHA-256",
        blob + b"\x00": "after its checksum",
    }
    with LmdbStore(tmp_path / "target") as target:
        log = Log()
        target.apply_entry(7, [pool(log, "mine", "10.9.0.0/16")])
        before = (target.digest(), target.applied_index)
        for data, message in cases.items():
            with pytest.raises(SnapshotError, match=message):
                target.install_snapshot_bytes(data)
            assert (target.digest(), target.applied_index) == before
            assert not (target.directory / STAGING_FILE).exists()


# --- opening and closing ------------------------------------------------------------------------


def test_a_directory_that_cannot_be_written_fails_fast(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StoreError, match="not a writable directory"):
        LmdbStore(tmp_path / "file" / "store")


def test_one_store_per_directory(store: LmdbStore) -> None:
    with pytest.raises(StoreError, match="in use"):
        LmdbStore(store.directory)


def test_a_closed_store_says_so(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s")
    store.close()
    store.close()  # idempotent
    assert store.closed
    with pytest.raises(StoreError, match="closed"), store.reader():
        pass
    with pytest.raises(StoreError, match="closed"):
        store.apply_entry(1, [])


def _previous_session(directory: Path, **fields: Any) -> None:
    session = json.loads((directory / SESSION_FILE).read_bytes())
    (directory / SESSION_FILE).write_text(json.dumps({**session, **fields}))


def test_unsynced_store_after_a_reboot_without_clean_close_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    with LmdbStore(directory, sync=False) as store:
        store.apply_entry(1, [pool(Log(), "p1", "10.0.0.0/16")])
    _previous_session(directory, clean=False)  # a process crash: same boot, page cache intact
    LmdbStore(directory).close()
    _previous_session(directory, clean=False, sync=True)  # synced commits survive a power loss
    with LmdbStore(directory, sync=False):
        pass
    _previous_session(directory, clean=False, sync=False, boot_id="another-boot")  # power loss
    with pytest.raises(UnsafeShutdownError, match="sync=False"):
        LmdbStore(directory)
    (directory / DATA_FILE).unlink()  # the documented way out: rebuild from a snapshot
    with LmdbStore(directory) as rebuilt:
        assert rebuilt.applied_index == 0


def test_replica_store_sets_a_torn_data_file_aside(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    store, torn = open_replica_store(directory)
    assert torn is None
    with store:
        store.apply_entry(1, [pool(Log(), "p1", "10.0.0.0/16")])
    _previous_session(directory, clean=False)  # a process crash: the data file is kept
    store, torn = open_replica_store(directory)
    with store:
        assert torn is None and store.applied_index == 1
    _previous_session(directory, clean=False, boot_id="another-boot")  # a power loss
    store, torn = open_replica_store(directory)
    with store:
        assert torn == directory / TORN_FILE and torn.exists()
        assert store.applied_index == 0  # empty: the dump and the journal rebuild it


# --- batching changes identity only, never results ------------------------------------------------


def _command_log(ops: list[tuple[int, int, int]]) -> list[bytes]:
    log = Log()
    pool(log, "p1", "10.0.0.0/26")
    for kind, name, length in ops:
        if kind == 0:
            claim(log, ACME, f"c{name}", "p1", length)
        elif kind == 1:
            unclaim(log, ACME, f"c{name}")
        else:
            claim(log, ACME, f"c{name}", "p1", length, request_id=f"r{name % 3}")
    return log.envelopes


def _meaning(outcome: Outcome) -> tuple[object, ...]:
    """What a client sees, minus uids (which come from the log position)."""
    if isinstance(outcome.result, Rejected):
        return ("refused", outcome.result.code, outcome.revision)
    status = outcome.result.value.get("status", {})
    return ("ok", outcome.result.created, status.get("allocatedCIDR"), outcome.revision)


@settings(max_examples=25, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(27, 32)), max_size=25),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    reopen_every=st.integers(1, 5),
)
def test_any_batching_agrees_with_memory_and_with_one_envelope_per_entry(
    ops: list[tuple[int, int, int]], sizes: list[int], reopen_every: int
) -> None:
    envelopes = _command_log(ops)
    entries = batches(envelopes, sizes, gap=3)
    memory, expected = apply_to_memory(entries)
    _, singles = apply_to_memory(batches(envelopes, [1]))
    with tempfile.TemporaryDirectory() as scratch:
        store = LmdbStore(Path(scratch) / "s", map_size=1 << 24, sync=False)
        try:
            outcomes: list[Outcome] = []
            for turn, (index, batch) in enumerate(entries):
                if turn % reopen_every == reopen_every - 1:  # restarts, with the journal replayed
                    store.close()
                    store = LmdbStore(Path(scratch) / "s", map_size=1 << 24, sync=False)
                    if index > 3:
                        assert store.apply_entry(index - 3, batch) is None
                applied = store.apply_entry(index, batch)
                assert applied is not None
                outcomes.extend(applied)
            assert outcomes == without_meta(expected)
            assert store.digest() == digest(memory)
            check_invariants(memory)
            store.check_invariants()
        finally:
            store.close()
    assert [_meaning(o) for o in outcomes] == [_meaning(o) for o in singles]
