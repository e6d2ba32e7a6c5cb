"""pysyncobj, adapted: one replicated method, a durable journal, LMDB full dumps.

What pysyncobj 0.3.17 does not do, and this module adds (each narrowly, by subclassing or by
wrapping the one object it concerns; none of its source is copied):

* **Acknowledged means synced, and the tick thread never waits for the disk.** The journal is
  an mmap that pysyncobj never msyncs. We count its changes (a write generation, bumped after
  each write, with the index of each entry added) and a sync thread fdatasyncs it through our
  own descriptor, recording the generation each sync covered; so the tick thread knows, without
  waiting, the last index of this member's journal that is durable. The tick callback asks the
  sync thread for a sync; a finished sync wakes the tick (a pipe in pysyncobj's poller). A
  follower's successful `next_node_idx` (its acknowledgement of appended entries) names only
  entries that are synced, and the full acknowledgement follows the sync. The leader, whose own
  copy pysyncobj counts towards every majority, records a new commit index only as far as its
  journal is synced and the rest after the sync. So a slow disk delays commits, never
  heartbeats or answers to the leader. This also covers the no-op a new leader appends while
  handling messages. Term and vote (`journal.meta`) are fsynced, with their directory, before
  any message that reflects them can be sent. A failed fdatasync stops the member (after one,
  a retry can report success for data the kernel dropped).
* **One replicated method, taking bytes**: `apply_batch(batch)`, a CBOR map of the envelopes
  and the proposer's build and member id (`encode_batch`), applied by
  `LmdbStore.apply_entry(index, envelopes)` in one LMDB transaction. It never raises:
  a broken invariant (or any failure to apply) stops the member process on purpose, because
  pysyncobj would retry the entry every tick forever and wedge.
* **Full dumps are LMDB snapshots made off the tick thread.** The tick thread only pins a read
  transaction (the state at exactly the applied index) and starts a thread that writes the dump
  beside the dump file and renames it into place when complete; pysyncobj is told the dump
  succeeded only then, so it compacts its journal only behind a complete dump. Until then the
  dump file is the previous complete one (our serializer gives pysyncobj a link to it).
* **A crash between the dump's rename and the journal's compaction** would make pysyncobj clear
  the journal on load (its first entries no longer match the dump) and lose the entries after
  the dump. `repair_journal` compacts the journal behind the dump before pysyncobj opens it.
* **Peer links are kept warm**: a tiny message to every peer each `keepalive_s`, so the first
  vote request after a leader dies does not die on a stale connection. The same message carries
  the node heartbeats this member heard since the last one (`keepalive_payload`), so every
  member, the leader included, learns them without a log entry. Our own messages (type
  `allot_*`) are handled by the transport and never reach pysyncobj.

* **Fewer, earlier AppendEntries.** pysyncobj (with `appendEntriesUseBatch=False`) sends
  AppendEntries for every command it appends and again after every tick that applied entries,
  and tells followers of a commit only after the leader applied it. `_coalesce_append_entries`
  turns those sends into one per tick (all new entries in one message) and sends a new commit
  index as soon as it is recorded, before the leader applies; followers leave out
  acknowledgements that only repeat their last one (`SyncedTransport._repeats_recent_ack`).
* **An acknowledgement never moves a follower's next index back** (`_SyncObj__onMessageReceived`,
  overridden): pysyncobj did, on every acknowledgement that arrived after a later send, so under
  load it sent a quarter of all entries twice, and the follower deleted and re-appended them.
* **A snapshot chunk never moves a follower's commit index** (same override): pysyncobj raised it
  on every AppendEntries, also on a chunk of a leader's dump, over a log never checked against
  the leader's, so a deposed leader applied, and answered Ok, its own entries that never
  committed. Only the chunk that installs the dump (the log is then the leader's) may.

pysyncobj private attributes are touched in these places only: `_SyncObj__raftLog` (the journal
object); the transport we construct ourselves; `_SyncObj__raftElectionDeadline` (restarted after a
dump install, held after each entry applied as a follower); for the sending
above, `_SyncObj__sendAppendEntries` (replaced on the instance), `_SyncObj__raftNextIndex`,
`_SyncObj__getCurrentLogIndex` and `_SyncObj__newAppendEntriesTime` (read only);
`_SyncObj__raftCommitIndex` (read; written back, as leader, to the synced part of a new commit
index, and on a snapshot chunk that installed nothing, to its value before);
`_SyncObj__onMessageReceived` (overridden, calling pysyncobj's) and `_SyncObj__raftNextIndex`
(written back to the larger value there); `_applyCommand` (overridden:
the leader does not append a follower's entry of another build, answering it through
`_SyncObj__transport`). `_poller` (its subscribe) carries the sync thread's wake-up pipe.
`tests/test_raft.py` pins the version and checks each behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import random
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cbor2
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.journal import FileJournal
from pysyncobj.monotonic import monotonic as pysyncobj_clock
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import TCPTransport

from node.build_identity import build_id
from node.config import Timing
from node.store import LmdbStore, SnapshotError, pack_snapshot, verify_snapshot_stream
from statemachine import Outcome
from statemachine.context import Meta
from statemachine.errors import CONFLICT, InvariantViolation, Rejected

log = logging.getLogger("allot.raft")

PYSYNCOBJ_VERSION = "0.3.17"
EXIT_INVARIANT = 70  # the member stopped on purpose: its state or log cannot be trusted

_DUMP_MAGIC = b"ALLOTDUMP1\n"
batch_envelopes_max = 4096
append_entries_bytes_max = 64 << 20
repeat_ack_gap_s = 0.1  # a follower re-sends an unchanged acknowledgement at least this often


@dataclass(frozen=True)
class DecodedBatch:
    envelopes: list[bytes]
    leader_term: int | None  # the term a leader decided them in, or None for requests
    build: str | None  # the proposer's build id; None in entries of builds before the stamp
    proposer: str | None  # the member id that proposed them, likewise


def encode_batch(envelopes: Sequence[bytes], leader_term: int | None = None, *, build: str, proposer: str) -> bytes:
    """A log entry's command: a CBOR map of the envelopes, the build id and member id of the
    member proposing them (see `AllotRaft.apply_batch`), and with `leader_term` the term the
    leader decided them in (its timers' decisions)."""
    batch: dict[str, Any] = {"build": build, "proposer": proposer, "envelopes": list(envelopes)}
    if leader_term is not None:
        batch["leaderTerm"] = leader_term
    return cbor2.dumps(batch)


_STAMPED_FIELDS = (
    frozenset({"build", "proposer", "envelopes"}),
    frozenset({"build", "proposer", "envelopes", "leaderTerm"}),
)
# Entries written before builds were stamped: a bare list of envelopes, or a fenced map.
_UNSTAMPED_FENCED_FIELDS = frozenset({"leaderTerm", "envelopes"})


def decode_batch(batch: bytes) -> DecodedBatch:
    """An entry `encode_batch` wrote, or one an earlier build wrote (no build, no proposer)."""
    decoded = cbor2.loads(batch)
    leader_term: Any = None
    build: Any = None
    proposer: Any = None
    if isinstance(decoded, dict):
        fields = frozenset(decoded)
        if fields not in _STAMPED_FIELDS and fields != _UNSTAMPED_FENCED_FIELDS:
            raise ValueError(f"a batch map holds build, proposer, envelopes and leaderTerm, not {sorted(fields)}")
        leader_term, build, proposer = decoded.get("leaderTerm"), decoded.get("build"), decoded.get("proposer")
        decoded = decoded["envelopes"]
        if leader_term is not None and (type(leader_term) is not int or leader_term < 0):
            raise ValueError("a fenced batch's leaderTerm is a non-negative integer")
        if "build" in fields and not (isinstance(build, str) and isinstance(proposer, str)):
            raise ValueError("a batch's build and proposer are strings")
    if not isinstance(decoded, list) or not all(isinstance(item, bytes) for item in decoded):
        raise ValueError("a batch is a CBOR list of envelope byte strings (or a map holding that list)")
    return DecodedBatch(decoded, leader_term, build, proposer)


_UNREADABLE = object()  # a forwarded command that is not an `apply_batch` entry this build can read


def _forwarded_build(command: Any) -> Any:
    """The proposer's build named in a command a peer forwarded to the leader (None for an
    entry of a build from before the stamp), or `_UNREADABLE`: pysyncobj's framing (a type
    byte, then the pickled method id and arguments) around one `encode_batch` entry. The peer
    is authenticated by the cluster secret, and pysyncobj unpickles the same bytes when it
    applies the entry."""
    if not isinstance(command, bytes) or command[:1] != b"\x00":  # pysyncobj's REGULAR command
        return _UNREADABLE
    try:
        call = pickle.loads(command[1:])
        return decode_batch(call[1][0]).build
    except Exception:  # not ours to judge: pysyncobj appends it, and apply_batch decides as before
        return _UNREADABLE


def stop_member(reason: str) -> None:
    """Stop this process now: a replica that stops is recoverable, one that drifts is not."""
    log.critical("stopping this member: %s", reason)
    logging.shutdown()
    os._exit(EXIT_INVARIANT)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


ALLOT_MESSAGE_PREFIX = "allot_"  # message types of our own, between members, outside Raft


class SyncedTransport(TCPTransport):  # type: ignore[misc]
    """pysyncobj's TCP transport, acknowledging appended entries only as far as they are synced
    (`before_ack`), and delivering our own `allot_*` messages to `on_allot_message` instead of
    pysyncobj."""

    def __init__(self, sync_obj: Any, self_node: Any, other_nodes: Any) -> None:
        super().__init__(sync_obj, self_node, other_nodes)
        # (peer, successful next_node_idx) -> the acknowledgement to send instead.
        self.before_ack: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None
        self.last_acknowledged = 0  # the last index a successful next_node_idx of ours named
        self.on_allot_message: Callable[[Any, dict[str, Any]], None] | None = None
        self._last_ack: dict[Any, tuple[tuple[Any, bool], float]] = {}  # node -> (what, when)
        self.repeated_acks_skipped = 0
        sync_obj.allot_transport = self

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802 - pysyncobj's name
        if isinstance(message, dict) and str(message.get("type", "")).startswith(ALLOT_MESSAGE_PREFIX):
            if self.on_allot_message is not None:
                self.on_allot_message(node, message)
            return
        super()._onMessageReceived(node, message)

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict) and message.get("type") == "next_node_idx" and message.get("success"):
            if self.before_ack is not None:
                message = self.before_ack(node, message)
            self.last_acknowledged = int(message["next_node_idx"]) - 1
            if self._repeats_recent_ack(node, message):
                return True
        return bool(super().send(node, message))

    def _repeats_recent_ack(self, node: Any, message: dict[str, Any]) -> bool:
        """True for an acknowledgement the leader has just had, which is not sent again.

        A follower acknowledges every AppendEntries, also those that only carry a new commit
        index (one per commit, see `AllotRaft._coalesce_append_entries`). Such an answer repeats
        the previous one word for word; all the leader would learn from it is that the follower
        is alive, which it also learns from the next acknowledgement within `repeat_ack_gap_s`
        (far below `leader_fallback_s`, the silence after which a leader steps down). Refusals
        and acknowledgements of new entries are always sent.
        """
        acknowledged = (message.get("next_node_idx"), bool(message.get("reset")))
        now = time.monotonic()
        previous = self._last_ack.get(node)
        if previous is not None and previous[0] == acknowledged and now - previous[1] < repeat_ack_gap_s:
            self.repeated_acks_skipped += 1
            return True
        self._last_ack[node] = (acknowledged, now)
        return False


def _write_dump_header(out: Any, last_entry: Any, previous_entry: Any, cluster: Sequence[str]) -> None:
    header = cbor2.dumps({"last": list(last_entry), "previous": list(previous_entry), "cluster": list(cluster)})
    out.write(_DUMP_MAGIC + struct.pack(">I", len(header)) + header)


DumpHeader = tuple[tuple[Any, ...], tuple[Any, ...], list[str], int]


def read_dump_header(path: Path) -> DumpHeader:
    """(last entry, previous entry, cluster, offset of the snapshot blob) of a dump file."""
    with open(path, "rb") as dump:
        return _read_header(dump, path)


def _read_header(dump: BinaryIO, path: Path) -> DumpHeader:
    """`read_dump_header` of an open dump file, read from its start."""
    dump.seek(0)
    magic = dump.read(len(_DUMP_MAGIC))
    if magic != _DUMP_MAGIC:
        raise SnapshotError(f"{path} is not an Allot dump (no dump written yet, or damaged)")
    try:
        (length,) = struct.unpack(">I", dump.read(4))
        header = cbor2.loads(dump.read(length))
        last, previous = tuple(header["last"]), tuple(header["previous"])
        cluster = [str(member) for member in header["cluster"]]
        if not isinstance(last[1], int) or not isinstance(previous[1], int):
            raise TypeError("the entries' indexes are not integers")
    except (struct.error, ValueError, TypeError, KeyError, IndexError, EOFError, cbor2.CBORDecodeError) as exc:
        # A leader's dump that lost a chunk on the way has a damaged header as often as a
        # damaged body: one error for both, which every caller handles.
        raise SnapshotError(f"{path} has a damaged header: {type(exc).__name__}: {exc}") from None
    return last, previous, cluster, len(_DUMP_MAGIC) + 4 + length


def _check_body(dump: BinaryIO, path: Path, header: DumpHeader) -> None:
    """Read an open dump's snapshot to its end and check its checksum, and that its state is
    not past the entry its header names (the header is outside the checksum)."""
    dump.seek(header[3])
    applied = verify_snapshot_stream(dump)
    if applied > int(header[0][1]):
        raise SnapshotError(f"{path} holds state at index {applied} but its header says {header[0][1]}")


# The dump file's second name: the last dump this member knows to be whole (one it wrote, or one
# received and checked end to end). pysyncobj renames a dump received from the leader over the
# dump file BEFORE the deserializer checks it, so a dump that lost a chunk on the way would
# otherwise be the only one left: a member restarted then could not load it (code review,
# 2026-12-07). With the second name, the whole one is put back. The name is only ever given to
# the file that was checked or written (the writer's own file before it is renamed into place;
# a checked file only if the new link is still that file), never to whatever the dump's path
# names by then: the dump writer's thread and pysyncobj's tick thread both rename over it.
VERIFIED_SUFFIX = ".verified"


def _verified_path(dump_path: Path) -> Path:
    return dump_path.with_name(dump_path.name + VERIFIED_SUFFIX)


def _is_verified(dump: BinaryIO, dump_path: Path) -> bool:
    """The open dump file is the one last known whole."""
    try:
        verified = os.stat(_verified_path(dump_path))
    except OSError:
        return False
    own = os.fstat(dump.fileno())
    return (own.st_dev, own.st_ino) == (verified.st_dev, verified.st_ino)


def dump_is_verified(dump_path: Path) -> bool:
    """The dump file is the one last known whole (its second name is the same file)."""
    try:
        with open(dump_path, "rb") as dump:
            return _is_verified(dump, dump_path)
    except OSError:
        return False


def _mark_verified(dump_path: Path, source: Path, same_as: BinaryIO | None = None) -> bool:
    """Give `source`, known whole, the dump's second name, durably with the file's own data;
    with `same_as`, only if `source` is still that open file (the one checked): False if not."""
    verified = _verified_path(dump_path)
    link = verified.with_name(verified.name + ".tmp")
    _fsync_path(source)
    link.unlink(missing_ok=True)
    os.link(source, link)
    if same_as is not None:
        linked, checked = os.stat(link), os.fstat(same_as.fileno())
        if (linked.st_dev, linked.st_ino) != (checked.st_dev, checked.st_ino):
            link.unlink()  # another file was renamed over the path meanwhile: it is not marked
            return False
    os.replace(link, verified)
    _fsync_path(dump_path.parent)
    return True


def _mark_open_verified(dump: BinaryIO, dump_path: Path) -> None:
    if not _mark_verified(dump_path, dump_path, same_as=dump):
        log.warning("the dump file changed while it was checked; the last whole dump keeps its name")


def restore_verified_dump(dump_path: Path) -> bool:
    """Put the last dump known whole back over the dump file; False if there is none to put back."""
    verified = _verified_path(dump_path)
    if not verified.exists() or dump_is_verified(dump_path):
        return False
    restoring = dump_path.with_name(dump_path.name + ".restore")
    restoring.unlink(missing_ok=True)
    os.link(verified, restoring)
    os.replace(restoring, dump_path)
    _fsync_path(dump_path.parent)
    return True


def check_dump(dump_path: Path) -> DumpHeader:
    """`read_dump_header`, after reading the whole dump and checking its snapshot."""
    with open(dump_path, "rb") as dump:
        header = _read_header(dump, dump_path)
        _check_body(dump, dump_path, header)
    return header


def recover_dump(dump_path: Path) -> None:
    """At start, before pysyncobj or repair_journal reads the dump: one not known whole (a
    leader's, renamed in before a crash let it be checked; or one from a build before the
    second name) is checked end to end. A damaged one is replaced by the last whole one, or, if
    there is none, set aside (`dump.damaged`): pysyncobj then starts from the journal alone,
    and the leader sends a snapshot if the journal does not reach back far enough."""
    if not dump_path.exists():
        return
    try:
        with open(dump_path, "rb") as dump:
            if _is_verified(dump, dump_path):
                return
            _check_body(dump, dump_path, _read_header(dump, dump_path))
            _mark_open_verified(dump, dump_path)
    except (SnapshotError, OSError) as exc:
        if restore_verified_dump(dump_path):
            log.error("the dump failed its check (%s): put back the last whole dump", exc)
        else:
            damaged = dump_path.with_name(dump_path.name + ".damaged")
            os.replace(dump_path, damaged)
            _fsync_path(dump_path.parent)
            log.error("the dump failed its check (%s) and no whole one is kept: set it aside as %s", exc, damaged)


def repair_journal(journal_path: Path, dump_path: Path) -> None:
    """Drop journal entries that the dump already covers, if a crash left them behind.

    pysyncobj compacts its journal only after it sees the dump succeed; if the member died in
    between, its loader would find the journal's first entries unequal to the dump's and clear
    the whole journal, losing the entries after the dump. Compacting first avoids that.
    """
    if not journal_path.exists() or not dump_path.exists():
        return
    try:
        _, previous, _, _ = read_dump_header(dump_path)
    except (SnapshotError, OSError):
        return  # no usable dump: pysyncobj replays the whole journal
    journal = FileJournal(str(journal_path))
    try:
        indexes = [journal[position][1] for position in range(len(journal))]
        previous_index = previous[1]
        if previous_index in indexes and indexes[0] != previous_index:
            position = indexes.index(previous_index)
            log.warning("journal starts at %d but the dump covers %d: compacting it", indexes[0], previous_index)
            journal.deleteEntriesTo(position)
            journal.flush()
    finally:
        journal._destroy()


def _remove_flat_directory(directory: Path) -> None:
    """Remove a directory of plain files (a snapshot's staging directory), if it exists."""
    if directory.exists():
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()


class DumpWriter:
    """Writes pysyncobj full dumps as LMDB snapshots, from a background thread."""

    def __init__(self, store: LmdbStore, dump_path: Path) -> None:
        self._store = store
        self._dump_path = dump_path
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._lock = threading.Lock()
        # Held while a dump file is put in the dump's place: by the writer's thread, and by
        # the tick thread while it handles a leader's dump message (pysyncobj renames the
        # received dump over ours inside that handling, then loads it). See _put_in_place.
        self.path_lock = threading.Lock()
        self.dumps_superseded = 0  # own dumps dropped because a leader's newer one was in place
        self.last_dump_index = 0  # the dump on disk's index, from its header (0: none yet)
        with contextlib.suppress(OSError, SnapshotError, ValueError, IndexError, TypeError):
            self.last_dump_index = int(read_dump_header(dump_path)[0][1])
        self.last_dump_seconds = 0.0

    def serialize(self, tmp_path: str, data: Any) -> None:
        """pysyncobj's serializer hook, on the tick thread: pin the state, start the writer."""
        last_entry, previous_entry, cluster = data
        try:
            # pysyncobj renames tmp_path over the dump file as soon as this returns: give it
            # the previous complete dump, so the file on disk is never a half-written one.
            Path(tmp_path).unlink(missing_ok=True)
            if self._dump_path.exists():
                os.link(self._dump_path, tmp_path)
            else:
                Path(tmp_path).write_bytes(b"")
            pending = self._store.begin_snapshot()
        except Exception:
            # Reported through check(): pysyncobj then resets and tries again later. Raising
            # here instead would leave its serializer stuck and no dump would ever be made.
            log.exception("starting a full dump failed")
            with self._lock:
                self._state = SERIALIZER_STATE.FAILED
            return
        with self._lock:
            self._state = SERIALIZER_STATE.SERIALIZING
        cluster_ids = sorted(str(getattr(node, "id", node)) for node in cluster)
        thread = threading.Thread(
            target=self._write,
            args=(pending, last_entry, previous_entry, cluster_ids, Path(tmp_path)),
            name="allot-dump",
            daemon=True,
        )
        thread.start()

    def _write(self, pending: Any, last_entry: Any, previous_entry: Any, cluster: list[str], tmp_path: Path) -> None:
        started = time.monotonic()
        new_path = self._dump_path.with_suffix(".new")
        staging = self._dump_path.parent / "dump-staging"
        try:
            with pending:
                _remove_flat_directory(staging)  # left by a crash during an earlier dump
                pending.write(staging)
            with open(new_path, "wb") as out:
                _write_dump_header(out, last_entry, previous_entry, cluster)
                pack_snapshot(staging, out)
                out.flush()
                os.fsync(out.fileno())
            self._put_in_place(new_path, int(last_entry[1]))
            # pysyncobj renamed tmp_path (our hard link to the previous dump) over the dump file;
            # POSIX makes that rename a no-op when both names are one file, so tmp_path stayed,
            # and now it alone keeps the previous dump's blocks on disk (a whole dump: 100+ MB
            # in a big state). pysyncobj touches tmp_path only inside serialize(), which it
            # does not call again before check() reports this dump: dropping it here is safe.
            tmp_path.unlink(missing_ok=True)
            state = SERIALIZER_STATE.SUCCESS
            self.last_dump_seconds = time.monotonic() - started
        except Exception:
            log.exception("writing the full dump failed; the previous one stays")
            state = SERIALIZER_STATE.FAILED
        finally:
            _remove_flat_directory(staging)
        with self._lock:
            self._state = state

    def _put_in_place(self, new_path: Path, index: int) -> None:
        """Rename the written dump over the dump's path, unless a leader's newer dump is there.

        A follower writes its own dumps too. While one is written, the leader's dump may
        arrive: pysyncobj renames it over ours, installs it, and cuts its journal to the entries
        after it. Renaming our older dump over that one then left a dump older than the
        journal's first entry; at the next start pysyncobj, finding the two unequal, cleared the
        journal and kept only the dump's entries: entries this member had acknowledged were
        gone from its log. The leader's dump stays; ours is dropped (pysyncobj is still told
        SUCCESS: it then compacts its log up to our older index, which it does not hold, so it
        changes nothing). Reported as a pre-existing gap, 2026-12-07."""
        with self.path_lock:
            in_place = self._verified_dump_index()
            if in_place > index:
                new_path.unlink()
                self.dumps_superseded += 1
                log.info("dropped this member's dump at %d: the leader's dump at %d is in place", index, in_place)
                return
            _mark_verified(self._dump_path, new_path)  # this file, whatever the dump's path names by then
            os.replace(new_path, self._dump_path)
            _fsync_path(self._dump_path.parent)
            self.last_dump_index = index

    def _verified_dump_index(self) -> int:
        """The index of the dump in place if it is known whole, else 0."""
        try:
            with open(self._dump_path, "rb") as dump:
                if not _is_verified(dump, self._dump_path):
                    return 0
                return int(_read_header(dump, self._dump_path)[0][1])
        except (OSError, SnapshotError, ValueError, IndexError, TypeError):
            return 0

    def check(self) -> int:
        """pysyncobj's serializeChecker: SUCCESS and FAILED are reported once."""
        with self._lock:
            state = self._state
            if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
                self._state = SERIALIZER_STATE.NOT_SERIALIZING
        return int(state)

    def deserialize(self, path: str) -> tuple[Any, Any, Any]:
        """pysyncobj's deserializer: install the dump's state if ours is older; return its entries.

        A dump not known whole (one just received from the leader) is checked end to end even
        when its state is not newer than ours, and made durable before pysyncobj, told it
        loaded, truncates the journal behind it. One that fails is replaced by the last whole
        dump and the error raised: pysyncobj then logs it, keeps its journal as it was, and the
        leader sends the snapshot again."""
        dump_path = Path(path)
        with open(dump_path, "rb") as dump:  # one file throughout: other threads rename over the path
            whole = _is_verified(dump, dump_path)
            try:
                header = _read_header(dump, dump_path)
                last, previous, cluster, offset = header
                if int(last[1]) > self._store.applied_index:
                    dump.seek(offset)
                    info = self._store.install_snapshot_stream(dump)
                    log.info("installed a snapshot at index %d (%d bytes)", info.applied_index, info.size_bytes)
                elif not whole:
                    _check_body(dump, dump_path, header)
            except (SnapshotError, OSError) as exc:
                if not whole and restore_verified_dump(dump_path):
                    log.error("a received dump failed its check (%s): put back the last whole dump", exc)
                raise
            if not whole:
                _mark_open_verified(dump, dump_path)
        self.last_dump_index = int(last[1])
        return last, previous, set(cluster)


def raft_conf(
    timing: Timing, secret: str, address: str, journal_path: Path, dump_path: Path, *, auto_tick: bool = True
) -> SyncObjConf:
    """pysyncobj's configuration for an Allot member (DumpWriter fills in the serializer hooks)."""
    return SyncObjConf(
        password=secret,
        bindAddress=address,
        journalFile=str(journal_path),
        fullDumpFile=str(dump_path),
        appendEntriesUseBatch=False,  # send at once; our own batcher makes the entries large
        appendEntriesPeriod=timing.append_entries_period_s,
        raftMinTimeout=timing.election_timeout_min_s,
        raftMaxTimeout=timing.election_timeout_max_s,
        connectionTimeout=timing.connection_timeout_s,
        connectionRetryTime=timing.connection_retry_s,
        leaderFallbackTimeout=timing.leader_fallback_s,
        autoTickPeriod=timing.tick_period_s,
        autoTick=auto_tick,
        logCompactionMinEntries=timing.log_compaction_entries,
        logCompactionMinTime=timing.log_compaction_s,
        maxBindRetries=1,  # a port conflict fails at once instead of retrying silently forever
        commandsWaitLeader=False,  # no leader: answer 503 now rather than queue
        useFork=False,  # LMDB must never cross a fork
        # pysyncobj truncates a follower's log to the resent entries without a conflict check;
        # resends that carry the whole rest of the leader's log keep that harmless (see
        # node/DESIGN.md). One of our entries is at most 1 MiB.
        appendEntriesBatchSizeBytes=append_entries_bytes_max,
    )


class AllotRaft(SyncObj):  # type: ignore[misc]
    """The Raft member: pysyncobj with Allot's one replicated method and durability."""

    _SyncObj__sendAppendEntries: Callable[[], None]  # pysyncobj's, replaced on the instance
    _SyncObj__raftElectionDeadline: float  # pysyncobj's, on its own clock; moved by _load_dump and apply_batch
    _SyncObj__raftCommitIndex: int  # pysyncobj's; held back by synced_commit_index and _SyncObj__onMessageReceived

    def __init__(
        self,
        self_address: str,
        peer_addresses: Sequence[str],
        conf: SyncObjConf,
        store: LmdbStore,
        dump_writer: DumpWriter,
        on_applied: Callable[[int], None],
        keepalive_s: float,
    ) -> None:
        self.allot_transport: SyncedTransport | None = None
        self._store = store
        self._on_applied = on_applied
        self.build_id = build_id()  # applies only entries proposed by members of this build
        # Set once the replay of another build's entries, applied before (an upgrade), reached
        # the last of them and asked pysyncobj for a dump (apply_batch).
        self._dump_asked_after_other_build = False
        # Journal durability, by generation: every journal change bumps `_journal_generation`
        # (after it is written, on the tick thread); a finished fdatasync records the generation
        # it covered in `_synced_generation`. `_unsynced_entries` holds (index, generation) of
        # the entries added since, oldest first (tick thread only), so the leader knows how far
        # its own copy is durable without waiting for the disk.
        self._journal_generation = 0
        self._synced_generation = 0
        self._unsynced_entries: deque[tuple[int, int]] = deque()
        self._journal_sync_lock = threading.Lock()  # one fdatasync at a time; guards the descriptor
        self._sync_wanted = threading.Condition()
        self._sync_requested = False
        self._sync_stopping = False
        self._wake_read, self._wake_write = -1, -1  # the sync thread's wake-up pipe, made below
        self._wake_subscribed = False
        self.commits_held_for_sync = 0  # times the leader held its commit index for its own sync
        self.acks_held_for_sync = 0  # acknowledgements a follower cut back to its synced entries
        self._acks_owed: dict[Any, int] = {}  # peer -> term: a full acknowledgement once synced
        self._keepalive_s = keepalive_s
        self._next_keepalive = 0.0
        self.journal_syncs = 0
        self.next_index_regressions_kept = 0  # acknowledgements that would have moved one back
        self.resent_entries_received = 0  # entries received at indexes this member's log held already
        self.fenced_entries_refused = 0  # leader-fenced entries appended in another term (apply_batch)
        # On the leader, for an entry a follower forwards: whether to refuse it, given its
        # proposer's build (None: a build from before builds were stamped). Set by the
        # replicated member (ReplicatedMember._refuses_forwarded_build); by default, never.
        self.refuses_forwarded_build: Callable[[str | None], bool] = lambda _build: False
        self.forwarded_entries_refused = 0  # entries of another build the leader did not append
        self.handing_over = False  # set while this leader hands leadership over: forwarded entries wait
        self.observe_sync_s: Callable[[float], None] = lambda _seconds: None
        self.observe_apply_s: Callable[[float], None] = lambda _seconds: None
        # Hooks for the replicated member, all called on the tick thread: the outcomes of each
        # applied entry; a dump installed (the store changed without entries); the extra
        # fields of the next keep-alive; an `allot_keepalive` received from a peer.
        self.on_outcomes: Callable[[list[Outcome]], None] = lambda _outcomes: None
        self.on_dump_installed: Callable[[], None] = lambda: None
        self.dumps_loaded = 0  # dumps installed (or found current) by _load_dump, at start and from leaders
        self.snapshot_commits_refused = 0  # see _SyncObj__onMessageReceived
        self.failed_dump_acks_refused = 0  # see _durable_acknowledgement
        self._receiving_dump = False  # inside the handling of a leader's snapshot message
        self._received_dump_failed = False  # ... whose dump failed its check
        self.keepalive_payload: Callable[[], dict[str, Any]] = dict
        self.on_keepalive: Callable[[dict[str, Any]], None] = lambda _message: None
        conf.serializer = dump_writer.serialize
        conf.deserializer = self._load_dump
        self._dump_writer = dump_writer
        self._election_timeout_s = (conf.raftMinTimeout, conf.raftMaxTimeout)
        conf.serializeChecker = dump_writer.check
        super().__init__(self_address, list(peer_addresses), conf=conf, transportClass=SyncedTransport)
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wrap_journal(conf.journalFile)
        if self.allot_transport is None:
            raise RuntimeError("pysyncobj did not construct the transport we gave it")
        self.allot_transport.before_ack = self._durable_acknowledgement
        self.allot_transport.on_allot_message = self._on_allot_message
        self._coalesce_append_entries()
        self.addOnTickCallback(self._tick)
        threading.Thread(target=self._run_journal_sync, name="allot-journal-sync", daemon=True).start()

    def _coalesce_append_entries(self) -> None:
        """Send AppendEntries once per tick, and the news of a commit before applying it.

        With `appendEntriesUseBatch=False` pysyncobj sends AppendEntries to every follower for
        each command it appends and again after each tick that applied entries, and every one
        of those messages costs both sides a pickle, a Fernet round and an acknowledgement (with
        its journal sync) back. Here every such request only sets a flag, and the tick callback
        sends once, after the tick appended all queued commands: the new entries travel in one
        message. A new commit index is sent at once, before the leader applies the entries, so
        followers apply them while the leader does instead of after it (the leader's apply was
        on every follower-received write's path). A send that would carry nothing new (no
        entries, the commit index already sent, the heartbeat not due) is skipped.
        """
        self.append_entries_sent = 0
        self._append_entries_wanted = False
        self._commit_index_sent = -1
        self._send_append_entries = self._SyncObj__sendAppendEntries  # the bound original

        def request_append_entries() -> None:
            self._append_entries_wanted = True

        # pysyncobj calls `self.__sendAppendEntries()`, i.e. this instance attribute.
        self._SyncObj__sendAppendEntries = request_append_entries

    def _SyncObj__onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802 - pysyncobj's name
        """pysyncobj's message handler, except that an acknowledgement never moves a follower's
        next index back, and a snapshot chunk never moves the commit index (below).

        The leader sends AppendEntries optimistically: sending entries up to N sets the
        follower's next index to N + 1 at once. Its tick sends first and reads the sockets
        after, so under load the acknowledgement of an earlier message (next index M < N + 1)
        arrives after the later one left, and pysyncobj sets the next index to M: the next send
        repeats entries M..N, which the follower already holds. The follower deletes them and
        appends them again ("truncating already-applied log entries", logged as CRITICAL), and
        between the two its journal is shorter than what it acknowledged. Measured at 64 clients
        before the change: a quarter of all entries a follower received were such repeats.
        Keeping the larger index is what Raft implementations that pipeline do (etcd's
        progress tracking). A refusal (`reset`) still sets the index wherever the follower says,
        so a lost message or a follower that fell behind is handled as before.
        """
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        kept: int | None = None
        kind = message.get("type") if isinstance(message, dict) else None
        # pysyncobj raises a follower's commit index towards the leader's on every
        # AppendEntries, also on the snapshot path (no prevLogIdx), whose chunks never check
        # this member's log against the leader's. A deposed leader whose log still ends in
        # entries of its own term that never committed would mark them committed, apply them
        # and answer their clients Ok before the snapshot replaced them: an acknowledged write
        # that no replica keeps, its address free to be handed out again (code review,
        # 2026-12-07, reproduced in tests/test_raft.py). Such a message may move the commit
        # index only when it installed the dump: the log is then the leader's.
        snapshot_path = kind == "append_entries" and "prevLogIdx" not in message
        commit_before: int = self._SyncObj__raftCommitIndex
        dumps_before = self.dumps_loaded
        self._receiving_dump, self._received_dump_failed = snapshot_path, False
        if kind == "next_node_idx" and message.get("success") and not message.get("reset"):
            kept = next_index.get(node)
        elif kind == "append_entries" and message.get("entries"):
            # Entries at indexes this follower's log holds already: repeats (what the change
            # above keeps from happening) and, after a leader change, replacements.
            entries = message["entries"]
            held_up_to = min(entries[-1][1], self._SyncObj__getCurrentLogIndex())
            self.resent_entries_received += max(0, held_up_to - entries[0][1] + 1)
        # The leader's dump is renamed over ours inside this call: not while the dump writer
        # puts its own in place (DumpWriter._put_in_place).
        path_lock = self._dump_writer.path_lock if snapshot_path else contextlib.nullcontext()
        try:
            with path_lock:
                super()._SyncObj__onMessageReceived(node, message)
        finally:
            self._receiving_dump = self._received_dump_failed = False
        if snapshot_path and self.dumps_loaded == dumps_before and self._SyncObj__raftCommitIndex > commit_before:
            self._SyncObj__raftCommitIndex = commit_before
            self._SyncObj__raftLog.setRaftCommitIndex(commit_before)
            self.snapshot_commits_refused += 1
        if kept is not None and node in next_index and next_index[node] < kept:
            next_index[node] = kept
            self.next_index_regressions_kept += 1

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:  # noqa: N802, N803 - pysyncobj's names
        """pysyncobj's, except that the leader does not append an entry a follower forwarded
        when `refuses_forwarded_build` refuses its proposer's build, and answers the follower
        REQUEST_DENIED (nothing appended) instead; nor while it hands leadership over
        (`handing_over`: NOT_LEADER, see below).

        A follower checks its own build against the majority's before it proposes
        (`ReplicatedMember._build_majority_check`), but it judges by keep-alives up to a second
        old, so a member restarted on another build could still get one entry through; applying
        it would stop every member of the majority's build. The leader judges the entry itself.
        pysyncobj calls this with `commandType` None only for a command a peer forwarded (its
        own proposals name their type), so this member's own entries pass untouched."""
        # Not only while leader: a member that receives the command as follower and wins an
        # election before its next tick would append it then. Refused on a follower, it is
        # answered REQUEST_DENIED instead of NOT_LEADER: 503 either way.
        if commandType is None:
            error: int | None = None
            if self.handing_over:
                # Leadership is being handed over (ReplicatedMember.hand_over_leadership):
                # pysyncobj hands it only to a follower with the whole log, which a steady
                # stream of appends keeps from happening. Nothing appended: the follower
                # answers 503 no_leader, and its client's retry finds the next leader.
                error = FAIL_REASON.NOT_LEADER
            else:
                build = _forwarded_build(command)
                if build is not _UNREADABLE and self.refuses_forwarded_build(build):
                    self.forwarded_entries_refused += 1
                    error = FAIL_REASON.REQUEST_DENIED
            if error is not None:
                if isinstance(callback, tuple):  # (the peer, its request id)
                    node, request_id = callback
                    self._SyncObj__transport.send(
                        node,
                        {"type": "apply_command_response", "request_id": request_id, "error": error},
                    )
                return
        super()._applyCommand(command, callback, commandType)

    def _flush_append_entries(self, *, commit: bool = False) -> None:
        """Send AppendEntries if asked for (or for a new commit index) and if it carries news."""
        if not (self._append_entries_wanted or commit):
            return
        self._append_entries_wanted = False
        if not self._isLeader():
            return
        commit_index = self._SyncObj__raftCommitIndex
        next_index = self._SyncObj__raftNextIndex
        last_index = self._SyncObj__getCurrentLogIndex()
        nothing_new = (
            commit_index == self._commit_index_sent
            and pysyncobj_clock() <= self._SyncObj__newAppendEntriesTime
            and all(next_index.get(node, 0) == last_index + 1 for node in self.otherNodes)
        )
        if nothing_new:
            return
        self._commit_index_sent = commit_index
        self.append_entries_sent += 1
        self._send_append_entries()

    def match_indexes(self) -> dict[str, int]:
        """Tick thread, as leader: each follower's match index, by its Raft address."""
        matched: dict[Any, int] = self._SyncObj__raftMatchIndex
        return {str(getattr(node, "address", node)): int(index) for node, index in matched.items()}

    @property
    def repeated_acks_skipped(self) -> int:
        return self.allot_transport.repeated_acks_skipped if self.allot_transport is not None else 0

    def _on_allot_message(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("type") == "allot_keepalive":
            self.on_keepalive(message)

    def _wrap_journal(self, journal_path: str) -> None:
        journal = self._SyncObj__raftLog
        if not isinstance(journal, FileJournal):
            raise RuntimeError("a journal file is required (SyncObjConf.journalFile)")
        meta_path = Path(journal._FileJournal__metaStorer.getPath())
        # Sync through our own descriptor: the file's pages are shared with pysyncobj's mmap, so
        # fdatasync writes them back just as msync would, but it releases the GIL while the disk
        # works, where mmap.flush() holds it and stalls the HTTP thread (measured: 78 ms gaps).
        # The journal keeps its inode for life (pysyncobj grows it in place, never replaces it).
        self._journal_fd = os.open(journal_path, os.O_RDONLY)
        # What a previous process wrote may still be only in the page cache (it was killed
        # before syncing): make it durable before this member acknowledges or counts any of it.
        os.fdatasync(self._journal_fd)

        unsynced = self._unsynced_entries

        def marking(method: Callable[..., Any], track: Callable[..., None]) -> Callable[..., Any]:
            def marked(*args: Any) -> Any:
                result = method(*args)
                # Bumped after the write: a sync that reads this generation covers the write.
                self._journal_generation += 1
                track(*args)
                return result

            return marked

        def added(_command: Any, index: int, _term: int) -> None:
            unsynced.append((index, self._journal_generation))

        def deleted_from(index: int) -> None:  # a follower's log truncated at index
            while unsynced and unsynced[-1][0] >= index:
                unsynced.pop()

        def deleted_to(index: int) -> None:  # compacted behind a dump
            while unsynced and unsynced[0][0] < index:
                unsynced.popleft()

        def cleared() -> None:
            unsynced.clear()

        journal.add = marking(journal.add, added)
        journal.clear = marking(journal.clear, cleared)
        journal.deleteEntriesFrom = marking(journal.deleteEntriesFrom, deleted_from)
        journal.deleteEntriesTo = marking(journal.deleteEntriesTo, deleted_to)
        store_term = journal.setCurrentTerm

        def durable_term(term: int, voted_for: Any) -> None:
            store_term(term, voted_for)  # writes journal.meta.tmp and renames it, without fsync
            _fsync_path(meta_path)
            _fsync_path(meta_path.parent)

        journal.setCurrentTerm = durable_term
        store_commit_index = journal.setRaftCommitIndex

        def synced_commit_index(index: int) -> None:
            # pysyncobj records a new commit index before applying and answering. Its leader
            # counts its own copy of every entry towards the majority, so that copy must be
            # synced first: the leader records the commit index only as far as its journal is
            # durable, asks the sync thread for the rest and records the remainder in a later
            # tick (the sync thread wakes it). It never waits for the disk itself, so a slow
            # fdatasync cannot stop its heartbeats. This also covers the no-op a new leader
            # appends while handling messages. A follower applies only what the leader
            # committed, durable on a majority already: it records the index as it comes.
            if self._isLeader():
                durable = self._durable_index()
                if index > durable:
                    self.request_journal_sync()
                    self.commits_held_for_sync += 1
                    recorded = int(journal.getRaftCommitIndex())
                    allowed = max(durable, recorded)
                    self._SyncObj__raftCommitIndex = allowed  # pysyncobj set it to index just now
                    if allowed == recorded:
                        return
                    index = allowed
            store_commit_index(index)
            self._flush_append_entries(commit=True)

        journal.setRaftCommitIndex = synced_commit_index
        self._journal = journal

    def _load_dump(self, path: str) -> tuple[Any, Any, Any]:
        """pysyncobj's deserializer: install the dump (if newer), then restart the election timer.

        pysyncobj calls this on the tick thread when the leader's last dump chunk arrives (or at
        start). Verifying and installing a large dump takes longer than an election timeout, and
        pysyncobj set the timer when the message arrived, so the next tick would start an
        election although the leader was heard just now, bumping the term and deposing a
        healthy leader. Restarting the timer here treats the install as part of handling that
        message, which it is.
        """
        try:
            loaded = self._dump_writer.deserialize(path)
        except Exception:
            if self._receiving_dump:
                self._received_dump_failed = True  # its answer must not say success
            raise
        self.dumps_loaded += 1
        self.on_dump_installed()
        low, high = self._election_timeout_s
        # pysyncobj's own clock (CLOCK_MONOTONIC_RAW on Linux), not time.monotonic().
        self._SyncObj__raftElectionDeadline = pysyncobj_clock() + random.uniform(low, high)
        return loaded

    def _durable_acknowledgement(self, peer: Any, message: dict[str, Any]) -> dict[str, Any]:
        """The transport's `before_ack`: a successful next_node_idx names only synced entries.

        pysyncobj acknowledges everything it appended. The entries past this member's synced
        index are left out, the sync thread is asked for them, and the full acknowledgement
        follows when it is done (`_send_owed_acks`). The shortened one is still sent (unless it
        repeats the last one, see `SyncedTransport._repeats_recent_ack`): the leader hears from
        this member while its disk is slow, so it neither steps down nor counts unsynced
        entries. Everything up to the synced index is in this leader's log: pysyncobj appends
        only after checking the entry before them against the leader's.

        The answer to a leader's dump that failed its check is a refusal instead: pysyncobj
        answers success whether its load worked or not, naming this member's own log end, and
        the leader would count this member for entries its log may hold from another term (a
        deposed leader's own, the very member a snapshot is sent to): an entry committed on
        that count could be held by the leader alone (code review, 2026-12-07). The refusal
        names the committed prefix, which is the leader's, so the leader goes back there and
        sends its entries, or its dump again."""
        if self._received_dump_failed:
            self.failed_dump_acks_refused += 1
            return {
                **message,
                "success": False,
                "reset": True,
                "next_node_idx": int(self._SyncObj__raftCommitIndex) + 1,
            }
        durable = self._durable_index()
        if int(message["next_node_idx"]) - 1 <= durable:
            return message
        self.request_journal_sync()
        self.acks_held_for_sync += 1
        self._acks_owed[peer] = int(self.raftCurrentTerm)
        return {**message, "next_node_idx": durable + 1}

    def _send_owed_acks(self) -> None:
        """Tick thread, after a sync finished: the acknowledgements held back for it."""
        if not self._acks_owed or self.allot_transport is None:
            return
        term, durable, last = int(self.raftCurrentTerm), self._durable_index(), self._SyncObj__getCurrentLogIndex()
        for peer, owed_term in list(self._acks_owed.items()):
            if owed_term != term or self._isLeader():
                del self._acks_owed[peer]  # a new term: its leader asks again, and is answered then
                continue
            if durable >= last:
                del self._acks_owed[peer]
            message = {"type": "next_node_idx", "next_node_idx": durable + 1, "reset": False, "success": True}
            self.allot_transport.send(peer, message)

    def request_journal_sync(self) -> None:
        """Ask the sync thread for an fdatasync of every journal change so far; do not wait."""
        if self._synced_generation >= self._journal_generation:
            return
        with self._sync_wanted:
            self._sync_requested = True
            self._sync_wanted.notify()

    def _write_back_to(self, target: int) -> None:
        """fdatasync, recording that generation `target` is durable. Hold `_journal_sync_lock`."""
        if self._synced_generation >= target or self._journal_fd < 0:
            return
        started = time.monotonic()
        try:
            self.write_back_journal()
        except OSError as exc:
            # After a failed fdatasync the kernel may have dropped the dirty pages and a retry
            # can report success: nothing written since the last good sync can be trusted.
            stop_member(f"fdatasync of the Raft journal failed: {exc}")
        self._synced_generation = target
        self.journal_syncs += 1
        self.observe_sync_s(time.monotonic() - started)

    def _run_journal_sync(self) -> None:
        """The sync thread: one fdatasync per request (covering every change made before it
        starts), then a wake-up for the tick thread, which may now record a commit."""
        while True:
            with self._sync_wanted:
                while not (self._sync_requested or self._sync_stopping):
                    self._sync_wanted.wait(timeout=1.0)
                if self._sync_stopping:
                    return
                self._sync_requested = False
            with self._journal_sync_lock:
                if self._journal_fd < 0:
                    return  # destroyed: the pipe is closed, and its number may be reused
                self._write_back_to(self._journal_generation)
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                    os.write(self._wake_write, b"s")

    def _durable_index(self) -> int:
        """The last log index up to which this member's journal is synced (tick thread)."""
        synced, unsynced = self._synced_generation, self._unsynced_entries
        while unsynced and unsynced[0][1] <= synced:
            unsynced.popleft()
        return unsynced[0][0] - 1 if unsynced else int(self._SyncObj__getCurrentLogIndex())

    def _on_wake(self, _descriptor: int, _event_mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass
        self._send_owed_acks()

    def write_back_journal(self) -> None:
        """fdatasync the journal file: every entry pysyncobj wrote so far reaches the disk."""
        os.fdatasync(self._journal_fd)

    def _hold_election_timer(self) -> None:
        """As follower: keep the election timer at least the shortest timeout away.

        pysyncobj checks the timer first thing in a tick, before it reads any message. Time this
        member spent not reading (applying a long backlog in one tick: 19 s in a 200,000-claim
        rebuild) says nothing about the leader, and used to start an election that deposed a
        healthy one. (Journal syncs, which did the same behind a busy disk, no longer run on the
        tick thread.) Not a fresh random draw: in steady state that would lengthen every
        follower's timer (the later of two draws) and slow failover (measured: median 0.47 ->
        0.54 s over 10 kills)."""
        low, _ = self._election_timeout_s
        held = pysyncobj_clock() + low
        self._SyncObj__raftElectionDeadline = max(self._SyncObj__raftElectionDeadline, held)

    def _doDestroy(self) -> None:  # noqa: N802 - pysyncobj's name; runs on the tick thread last
        super()._doDestroy()
        with self._sync_wanted:
            self._sync_stopping = True
            self._sync_wanted.notify()
        with self._journal_sync_lock:  # waits for an fdatasync in progress
            fd, self._journal_fd = self._journal_fd, -1
            if fd >= 0:
                os.close(fd)
            for wake_fd in (self._wake_read, self._wake_write):
                if wake_fd >= 0:
                    os.close(wake_fd)
            self._wake_read = self._wake_write = -1

    def _tick(self) -> None:
        if not self._wake_subscribed:  # here, on the tick thread: the poller is not thread-safe
            self._poller.subscribe(self._wake_read, self._on_wake, POLL_EVENT_TYPE.READ)
            self._wake_subscribed = True
        # Entries first: the followers write and sync them while the sync thread syncs this
        # member's copy (see `synced_commit_index` and `_durable_acknowledgement`).
        self._flush_append_entries()
        self.request_journal_sync()
        now = time.monotonic()
        if now >= self._next_keepalive and self.allot_transport is not None:
            self._next_keepalive = now + self._keepalive_s
            message = {**self.keepalive_payload(), "type": "allot_keepalive"}
            for node in self.otherNodes:
                self.allot_transport.send(node, message)

    @replicated  # type: ignore[untyped-decorator]
    def apply_batch(self, batch: bytes) -> list[Outcome] | None:
        """Apply one log entry.

        An entry proposed by a member of another build (`node.build_identity`) stops this
        member before it changes anything: the two builds may compute different states from it.
        An entry this member applied already (a journal replayed after a restart) is skipped as
        always, whoever proposed it, so the README's upgrade (every member applies the whole
        log, then all restart on the new build) passes.

        A batch fenced with the term its leader decided it in (the scheduling timers' node
        conditions and sweeps) is applied only if that same leader appended it, i.e. the
        entry's own term is that term; otherwise it is refused without reaching the state
        machine. A leader that was paused past an election and resumes may decide on stale
        information (its heartbeat table stopped with it: every node looks silent) before it
        hears of the new term; proposed then, the decision is forwarded to the new leader and
        would commit. The entry's term is in the log, the same on every member, so every member
        refuses alike. Pinned by tests/test_raft.py."""
        index = self.raftLastApplied + 1  # pysyncobj applies entry raftLastApplied + 1 now
        started = time.monotonic()
        try:
            decoded = decode_batch(batch)
            if decoded.build != self.build_id:
                applied_index = self._store.applied_index
                if index > applied_index:
                    stop_member(self._other_build_message(index, decoded))
                if index == applied_index and not self._dump_asked_after_other_build:
                    # The last entry this member applied before the restart, of another build
                    # (an upgrade). A dump now (the usual one waits for 5,000 entries or ten
                    # minutes): rebuilding this member's store (after a power loss), or a wiped
                    # member copying from this one, then never needs the other build's entries,
                    # which would stop it.
                    self._dump_asked_after_other_build = True
                    self.forceLogCompaction()
            leader_term = decoded.leader_term
            entry_term = self._entry_term(index) if leader_term is not None else None
            if leader_term is not None and entry_term != leader_term:
                outcomes = self._refuse_entry(index, len(decoded.envelopes), leader_term, entry_term)
            else:
                outcomes = self._store.apply_entry(index, decoded.envelopes)
        except BaseException as exc:
            stop_member(f"applying log entry {index} failed: {type(exc).__name__}: {exc}")
            raise  # unreachable: stop_member exits
        self.observe_apply_s(time.monotonic() - started)
        if not self._isLeader():
            self._hold_election_timer()  # a long backlog is applied in one tick, not listening
        try:
            if outcomes:
                self.on_outcomes(outcomes)
            self._on_applied(index)
        except Exception:
            # The entry is applied and recorded with its index: a hook's failure (the event loop
            # closing under it, say) must not take the outcomes from the clients waiting for them.
            log.exception("a hook after applying log entry %d failed; the entry stays applied", index)
        return outcomes

    def last_log_index(self) -> int:
        """Tick thread: the index of the last entry in this member's log, committed or not."""
        return int(self._SyncObj__getCurrentLogIndex())

    def _other_build_message(self, index: int, decoded: DecodedBatch) -> str:
        proposed_by = (
            f"member {decoded.proposer} running build {decoded.build}"
            if decoded.build is not None
            else "a member of a build from before 2026-12-07, which did not name its build"
        )
        return (
            f"log entry {index} was proposed by {proposed_by}, and this member runs build {self.build_id}: "
            "two builds may compute different states from one entry, so this member applied nothing from it. "
            "Every member must run the same build (README, Upgrading). To go on, run this member on the "
            "build that proposed the entry: restart it on that build, or move its data directory aside "
            "and start it on that build to copy the leader's state"
        )

    def _entry_term(self, index: int) -> int:
        entries = self._SyncObj__getEntries(index, 1)
        if not entries or entries[0][1] != index:
            raise InvariantViolation(f"entry {index} is being applied but the log does not hold it")
        return int(entries[0][2])

    def _refuse_entry(self, index: int, count: int, leader_term: int, entry_term: int | None) -> list[Outcome] | None:
        """Record entry `index` as applied with nothing changed; each of its `count` envelopes
        is answered with a refusal (None on a replay, as `apply_entry` answers)."""
        if self._store.apply_entry(index, []) is None:
            return None
        with self._store.reader() as view:
            revision = Meta.load(view).revision
        refusal = Rejected(
            CONFLICT,
            f"decided by the leader of term {leader_term} but appended in term {entry_term}: a leader's "
            "own decision counts only in the term it was made in; the current leader decides afresh",
            {"leaderTerm": leader_term, "entryTerm": entry_term},
        )
        self.fenced_entries_refused += 1
        return [Outcome(refusal, (), revision) for _ in range(count)]
