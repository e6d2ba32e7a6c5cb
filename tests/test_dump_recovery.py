"""A damaged dump never becomes this member's only dump (node/raft.py: DumpWriter, recover_dump).

pysyncobj renames a dump received from the leader over the dump file before our deserializer
checks it. A dump that lost a chunk on the way used to replace the member's own whole dump, and
a member restarted then failed to start (`KeyError` reading the header). Now the last dump
known whole keeps a second name (`dump.verified`): a received dump that fails its check is
replaced by it, and at start a dump not known whole is checked first (code review, 2026-12-07).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from node import raft
from node import store as store_module
from node.raft import DumpWriter, _write_dump_header, check_dump, dump_is_verified, read_dump_header, recover_dump
from node.store import LmdbStore, SnapshotError
from tests.test_footprint import _dump_once, _fill, _fill_more


def _damaged_copies(dump_path: Path, directory: Path) -> dict[str, Path]:
    """Copies of a whole dump as a lost chunk leaves one: cut in its header, cut in its body,
    and a flipped byte in its body (a chunk delivered garbled)."""
    data = dump_path.read_bytes()
    _, _, _, offset = read_dump_header(dump_path)
    middle = offset + (len(data) - offset) // 2
    flipped = bytearray(data)
    flipped[middle] ^= 0xFF
    copies = {
        "header cut": data[: offset - 3],
        "body cut": data[:middle],
        "byte flipped": bytes(flipped),
        "header garbled": data[:12] + bytes(40) + data[52:],
    }
    paths = {}
    for name, content in copies.items():
        path = directory / name.replace(" ", "-")
        path.write_bytes(content)
        paths[name] = path
    return paths


def _received(dump_path: Path, damaged: Path) -> None:
    """What pysyncobj does with a leader's dump once its last chunk is in: rename it over ours."""
    staged = dump_path.with_name("dump.1.tmp")
    shutil.copyfile(damaged, staged)
    os.replace(staged, dump_path)


@pytest.fixture
def dumped(tmp_path: Path) -> tuple[LmdbStore, Path, DumpWriter]:
    store = LmdbStore(tmp_path / "state", sync=False)
    _fill(store, 200)
    dump_path = tmp_path / "raft" / "dump"
    dump_path.parent.mkdir()
    writer = DumpWriter(store, dump_path)
    _dump_once(writer, dump_path, store.applied_index)
    return store, dump_path, writer


def test_a_damaged_header_is_a_snapshot_error_not_a_crash(dumped: tuple[LmdbStore, Path, DumpWriter]) -> None:
    store, dump_path, _ = dumped
    with store:
        for name, damaged in _damaged_copies(dump_path, dump_path.parent).items():
            if "header" in name:
                with pytest.raises(SnapshotError, match="damaged header"):
                    read_dump_header(damaged)
            with pytest.raises(SnapshotError):
                check_dump(damaged)
        assert check_dump(dump_path)[0] == read_dump_header(dump_path)[0], "a whole dump passes"


def test_a_received_dump_that_fails_its_check_is_replaced_by_the_last_whole_one(
    dumped: tuple[LmdbStore, Path, DumpWriter],
) -> None:
    store, dump_path, writer = dumped
    with store:
        whole = dump_path.read_bytes()
        index = int(read_dump_header(dump_path)[0][1])
        for name, damaged in _damaged_copies(dump_path, dump_path.parent).items():
            _received(dump_path, damaged)
            assert not dump_is_verified(dump_path)
            with pytest.raises(SnapshotError):
                writer.deserialize(str(dump_path))  # pysyncobj logs it and keeps its journal
            assert dump_path.read_bytes() == whole, f"{name}: the whole dump is back"
            assert dump_is_verified(dump_path)
            assert store.applied_index == index, "and the store was not touched"

        # A whole dump received from a leader (here: a newer one of our own state, copied)
        # is checked, installed when newer, and becomes the dump known whole.
        _fill_more(store, 20)
        newer_store_dump = dump_path.with_name("newer")
        _dump_once(writer, dump_path, store.applied_index)
        shutil.copyfile(dump_path, newer_store_dump)
        os.unlink(dump_path.with_name("dump.verified"))
        _received(dump_path, newer_store_dump)
        last, _, _ = writer.deserialize(str(dump_path))
        assert int(last[1]) == store.applied_index and dump_is_verified(dump_path)


def test_at_start_a_damaged_dump_is_replaced_or_set_aside(dumped: tuple[LmdbStore, Path, DumpWriter]) -> None:
    store, dump_path, _ = dumped
    with store:
        whole = dump_path.read_bytes()
        damaged = _damaged_copies(dump_path, dump_path.parent)
        # Killed after pysyncobj renamed a damaged dump in and before it was checked.
        _received(dump_path, damaged["header cut"])
        recover_dump(dump_path)
        assert dump_path.read_bytes() == whole and dump_is_verified(dump_path)
        DumpWriter(store, dump_path)  # starts (it raised KeyError before)
        recover_dump(dump_path)  # known whole: nothing to do
        assert dump_path.read_bytes() == whole

        # A dump from a build before the second name: checked once, then known whole.
        os.unlink(dump_path.with_name("dump.verified"))
        recover_dump(dump_path)
        assert dump_is_verified(dump_path)

        # Damaged with nothing whole to put back: set aside, so pysyncobj starts without it.
        os.unlink(dump_path.with_name("dump.verified"))
        _received(dump_path, damaged["byte flipped"])
        recover_dump(dump_path)
        assert not dump_path.exists()
        assert dump_path.with_name("dump.damaged").read_bytes() == damaged["byte flipped"].read_bytes()


def test_the_dump_writer_never_gives_the_verified_name_to_a_file_it_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dump writer's thread and pysyncobj's tick thread both rename files over the dump's
    path: a leader's dump, damaged on the way, renamed in while the writer finished its own,
    got the verified name, and nothing checked it again (code review, 2026-12-07)."""
    with LmdbStore(tmp_path / "leader") as leader, LmdbStore(tmp_path / "follower") as follower:
        _fill(leader, 50)
        blob = io.BytesIO()
        _write_dump_header(blob, (b"x", 10, 2), (b"y", 9, 2), ["a", "b", "c"])
        leader.write_snapshot_stream(blob)
        received = blob.getvalue()
        damaged = received[: len(received) // 2] + received[len(received) // 2 + 4096 :]
        raft_dir = tmp_path / "raft"
        raft_dir.mkdir()
        dump_path = raft_dir / "dump"
        writer = DumpWriter(follower, dump_path)
        fsync_path = raft._fsync_path
        raced: list[str] = []

        def racing_fsync(path: Path) -> None:
            fsync_path(path)
            if path == raft_dir and not raced:  # the tick thread's rename, at the worst moment
                raced.append(str(path))
                staged = dump_path.with_name("dump.1.tmp")
                staged.write_bytes(damaged)
                os.replace(staged, dump_path)

        monkeypatch.setattr(raft, "_fsync_path", racing_fsync)
        writer._write(follower.begin_snapshot(), (b"l", 1, 1), (b"p", 0, 1), ["a", "b", "c"], raft_dir / "dump.tmp")
        monkeypatch.setattr(raft, "_fsync_path", fsync_path)
        assert raced
        assert not (dump_path.read_bytes() == damaged and dump_is_verified(dump_path))
        recover_dump(dump_path)
        check_dump(dump_path)  # whatever is there now is whole
        assert dump_is_verified(dump_path)


def test_a_dump_renamed_over_the_one_being_checked_is_not_marked(
    dumped: tuple[LmdbStore, Path, DumpWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark goes to the file that was checked, or to none."""
    store, dump_path, writer = dumped
    with store:
        whole = dump_path.read_bytes()
        damaged = _damaged_copies(dump_path, dump_path.parent)["byte flipped"]
        os.unlink(dump_path.with_name("dump.verified"))
        check_body = raft._check_body

        def swapped_while_checked(dump: Any, path: Path, header: Any) -> None:
            check_body(dump, path, header)
            _received(dump_path, damaged)  # renamed in after the check, before the mark

        monkeypatch.setattr(raft, "_check_body", swapped_while_checked)
        writer.deserialize(str(dump_path))  # the checked file was whole: no error
        assert dump_path.read_bytes() != whole and not dump_is_verified(dump_path), "the newcomer is not marked"


def test_a_leaders_newer_dump_received_while_ours_is_written_stays_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A follower writes dumps of its own. A leader's dump that arrived meanwhile was renamed
    in and installed (pysyncobj then cuts the journal to the entries after it), and the writer
    then renamed its older dump over it: at the next start the journal's first entries did not
    match the dump's, pysyncobj cleared the journal, and acknowledged entries were gone."""
    with LmdbStore(tmp_path / "leader", sync=False) as leader, LmdbStore(tmp_path / "follower", sync=False) as follower:
        _fill(leader, 200)
        _fill(follower, 200)
        _fill_more(leader, 40)  # the leader is ahead of the follower
        leader_raft = tmp_path / "leader-raft"
        leader_raft.mkdir()
        leader_dump = leader_raft / "dump"
        _dump_once(DumpWriter(leader, leader_dump), leader_dump, leader.applied_index)
        leader_index = leader.applied_index

        raft_dir = tmp_path / "raft"
        raft_dir.mkdir()
        dump_path = raft_dir / "dump"
        writer = DumpWriter(follower, dump_path)
        own_index = follower.applied_index
        pack_snapshot = store_module.pack_snapshot
        received: list[int] = []

        def leader_dump_arrives_while_packing(staging: Path, out: Any) -> None:
            pack_snapshot(staging, out)
            # The tick thread handles the leader's last chunk, as AllotRaft does: under the lock.
            with writer.path_lock:
                _received(dump_path, leader_dump)
                last, _, _ = writer.deserialize(str(dump_path))
            received.append(int(last[1]))

        monkeypatch.setattr(raft, "pack_snapshot", leader_dump_arrives_while_packing)
        _dump_once(writer, dump_path, own_index)
        assert received == [leader_index] and own_index < leader_index
        assert int(read_dump_header(dump_path)[0][1]) == leader_index, "the leader's newer dump stays"
        assert dump_is_verified(dump_path) and writer.dumps_superseded == 1
        assert writer.last_dump_index == leader_index and follower.applied_index == leader_index
        assert not dump_path.with_suffix(".new").exists()

        # With no newer dump in place, the writer's own dump goes in as before.
        monkeypatch.setattr(raft, "pack_snapshot", pack_snapshot)
        follower.apply_entry(follower.applied_index + 1, [])  # an entry of no commands moves the index
        _dump_once(writer, dump_path, follower.applied_index)
        assert int(read_dump_header(dump_path)[0][1]) == follower.applied_index == writer.last_dump_index
        assert writer.dumps_superseded == 1
