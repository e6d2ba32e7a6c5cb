"""The member's state in LMDB: the state machine's records, applied one Raft log entry per write
transaction, with the index of that entry committed in the same transaction.

Rules (node/DESIGN.md says why):
* One environment file, `state.mdb`, with two named databases. `state` holds exactly the records
  the state machine writes, nothing else, so `statemachine.invariants.digest` over it is
  comparable across members. `node` holds this member's bookkeeping: `applied_index`, the index
  of the last snapshot created or installed, and the store format.
* `apply_entry(index, envelopes)` applies a whole log entry (a batch of envelopes) in ONE write
  transaction, and records `applied_index = index` in that same transaction. An entry at or below
  `applied_index` is skipped: that is how a journal replayed after a restart, or a crash that lost
  the last unsynced commits, comes out right. If anything raises (a broken invariant, a full map)
  the transaction is aborted and nothing of the entry is written.
* Readers get a consistent view over one read transaction (`with store.reader() as view`). Values
  are copied out as `bytes`; no LMDB buffer outlives its transaction.
* Snapshots are packed copies of the environment taken inside one read transaction, fsynced,
  with a manifest (applied_index, size, SHA-256) written atomically. Nothing is installed before
  its checksum is verified on the very bytes that will be installed; the install swaps the data
  file with one `rename`.
* Threads: `apply_entry`, `install_*` and `close` belong to one thread (pysyncobj's tick thread);
  `reader()`, `digest()`, `applied_index` and `begin_snapshot()` may be used from any thread.
  Installing a snapshot or closing invalidates open read views (they raise `lmdb.Error`).
* One process per directory (an advisory lock enforces it): the data-file swap assumes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol

import lmdb

from node.files import fsync_directory, write_atomically
from statemachine import EntryApply, Outcome
from statemachine.invariants import check_invariants as _check_invariants
from statemachine.invariants import digest as _digest
from statemachine.view import Write

# Bump when the layout of either database, or what an entry writes, changes. 2: claim and
# allocation records in their compact form, and refusals under a request id kept as dedup
# records (a store of format 1 replays its journal to a different state, so it is refused).
STORE_FORMAT = 2

map_size_default = 8 << 30  # 8 GiB of address space; the file is sparse and grows with use
max_readers_default = 126
copy_chunk_bytes = 1 << 20
# Records per write transaction of a packed snapshot copy: bounds the dirty pages one
# transaction holds (~100 MB at most with records up to 1 KB) while keeping commits few.
packed_copy_records_per_txn = 100_000

DATA_FILE = "state.mdb"  # LMDB with subdir=False: the lock file is state.mdb-lock
STAGING_FILE = "state.mdb.installing"  # a verified snapshot waiting to be renamed over DATA_FILE
SESSION_FILE = "session.json"
DIRECTORY_LOCK_FILE = "store.lock"
SNAPSHOT_DATA_FILE = "state.mdb"
SNAPSHOT_MANIFEST_FILE = "manifest.json"

STATE_DB = b"state"
NODE_DB = b"node"
_APPLIED_INDEX = b"applied_index"
_SNAPSHOT_INDEX = b"snapshot_index"
_FORMAT = b"format"

# Snapshot stream: header, data, then SHA-256 over header and data.
SNAPSHOT_MAGIC = b"ALLOTSNP"
_stream_header = struct.Struct(">8sIQQ")  # magic, store format, applied_index, data size
_stream_digest_bytes = 32

_BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


class StoreError(Exception):
    """The store cannot do what was asked; the message says what to do about it."""


class StoreFullError(StoreError):
    """LMDB's map is full: the member must be restarted with a larger `map_size`."""


class SnapshotError(StoreError):
    """A snapshot is missing, incomplete, garbled or fails its checksum. Nothing was installed."""


class UnsafeShutdownError(StoreError):
    """The data file may be torn: it was written with sync=False and the machine went down."""


@dataclass(frozen=True)
class SnapshotInfo:
    applied_index: int
    size_bytes: int
    sha256: str  # hex digest of the snapshot's data file
    format: int = STORE_FORMAT

    def to_json(self) -> bytes:
        plain = {
            "format": self.format,
            "applied_index": self.applied_index,
            "size_bytes": self.size_bytes,
            "sha256": self.sha256,
        }
        return json.dumps(plain, sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> SnapshotInfo:
        try:
            plain = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SnapshotError(f"snapshot manifest {where} is not JSON: {exc}") from None
        expected = {"format", "applied_index", "size_bytes", "sha256"}
        if not isinstance(plain, dict) or set(plain) != expected:
            raise SnapshotError(f"snapshot manifest {where} must hold exactly {sorted(expected)}")
        for name in ("format", "applied_index", "size_bytes"):
            value = plain[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SnapshotError(f"snapshot manifest {where}: {name} must be a non-negative integer")
        sha = plain["sha256"]
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise SnapshotError(f"snapshot manifest {where}: sha256 must be 64 lowercase hex digits")
        if plain["format"] != STORE_FORMAT:
            raise SnapshotError(
                f"snapshot {where} has store format {plain['format']}; this build reads format {STORE_FORMAT}"
            )
        return cls(plain["applied_index"], plain["size_bytes"], sha, plain["format"])


def _encode_index(index: int) -> bytes:
    return index.to_bytes(8, "big")


def _decode_index(raw: bytes | None) -> int:
    return 0 if raw is None else int.from_bytes(raw, "big")


def _boot_id() -> str | None:
    try:
        with open(_BOOT_ID_PATH) as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def _write(txn: lmdb.Transaction[bytes], cursor: lmdb.Cursor[bytes], writes: tuple[Write, ...]) -> None:
    """Make one command's writes (sorted, each key once) through a cursor of the state database:
    the puts between two deletes in one `putmulti` call, which costs about half as much as a
    `txn.put` each (py-lmdb's argument parsing and LMDB's cursor setup per call)."""
    start = 0
    for at, (key, value) in enumerate(writes):
        if value is None:
            if at > start:
                cursor.putmulti(writes[start:at])  # type: ignore[arg-type]  # no None among them
            txn.delete(key)
            start = at + 1
    if start < len(writes):
        cursor.putmulti(writes[start:] if start else writes)  # type: ignore[arg-type]


class LmdbView:
    """The state machine's `ReadView` over one LMDB transaction (read or write) begun with the
    state database as its default (`env.begin(db=...)`): reads name no database, which spares
    py-lmdb parsing a keyword argument on each of the several reads of every command."""

    def __init__(self, txn: lmdb.Transaction[bytes]) -> None:
        self._txn: lmdb.Transaction[bytes] | None = txn
        # `get` is the transaction's own (buffers=False: a copy, never a memoryview) until the
        # view is closed: the state machine's several reads of every command then call into
        # py-lmdb directly, with no Python frame of this class's in between.
        self.get: Callable[[bytes], bytes | None] = txn.get

    def _live(self) -> lmdb.Transaction[bytes]:
        if self._txn is None:
            raise StoreError("read view used after its transaction ended; read inside `with store.reader()`")
        return self._txn

    def _get_after_close(self, key: bytes) -> bytes | None:
        return self._live().get(key)  # raises

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        txn = self._live()
        if start >= end:
            return
        with txn.cursor() as cursor:  # closed when the scan ends or is abandoned
            if not cursor.set_range(start):
                return
            for key, value in cursor.iternext():
                if key >= end:
                    return
                yield key, value

    def close(self) -> None:
        self._txn = None
        self.get = self._get_after_close


class PendingSnapshot:
    """A read transaction pinned at one applied_index, to be copied out, from any thread.

    Open it where the snapshot point is decided (pysyncobj's tick thread) and write it elsewhere:
    later entries applied meanwhile do not get into the copy. Close it promptly: while it is
    open, LMDB cannot reuse the pages it sees, so the file grows.
    """

    def __init__(
        self,
        txn: lmdb.Transaction[bytes],
        env: lmdb.Environment,
        applied_index: int,
        databases: Sequence[tuple[bytes, lmdb._Database]],
    ) -> None:
        self._txn: lmdb.Transaction[bytes] | None = txn
        self._env = env
        self.applied_index = applied_index
        self._databases = databases  # (name, handle) of every named database, copied in this order

    def write(self, directory: str | os.PathLike[str]) -> SnapshotInfo:
        """Write `state.mdb` (a packed copy) and `manifest.json` into directory (new or empty)."""
        if self._txn is None:
            raise SnapshotError("this pending snapshot was already written or closed")
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        if any(target.iterdir()):
            raise SnapshotError(f"snapshot directory {target} is not empty")
        data_path = target / SNAPSHOT_DATA_FILE
        try:
            _write_packed_copy(self._txn, self._databases, data_path, self._env.info()["map_size"])
        except lmdb.Error as exc:
            raise SnapshotError(f"copying the store into {data_path} failed: {exc}") from exc
        finally:
            self.close()
        size, sha = _hash_file(data_path)
        inside = _applied_index_inside(data_path)
        if inside != self.applied_index:
            raise SnapshotError(
                f"the copy holds applied_index {inside}, the pinned transaction saw {self.applied_index}"
            )
        info = SnapshotInfo(self.applied_index, size, sha)
        write_atomically(target / SNAPSHOT_MANIFEST_FILE, info.to_json())  # last: marks it complete
        return info

    def close(self) -> None:
        if self._txn is not None:
            self._txn.abort()
            self._txn = None

    def __enter__(self) -> PendingSnapshot:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _write_packed_copy(
    txn: lmdb.Transaction[bytes], databases: Sequence[tuple[bytes, lmdb._Database]], path: Path, map_size: int
) -> None:
    """Copy every record the read transaction sees into a new LMDB file at path, in key order
    with MDB_APPEND, and fsync it.

    Why not `env.copyfd(compact=True)`: that copies the B-tree's pages as they are, and pages
    filled by inserts in key-scattered order (claim names, random request ids) are only 55-65 %
    full, so that copy is 1.6-1.8x the bytes it holds. Appending in key order fills every leaf
    page, which made the copy 40 % smaller (bench/footprint.py) and, measured there, no slower.
    py-lmdb lets other threads run between records, so the tick thread is not stalled by it.
    The records, and so `digest`, are the same; only their pages differ.
    """
    with open(path, "xb"):
        pass  # refuse to overwrite, as the exclusive create of a plain copy would
    with lmdb.open(
        str(path), subdir=False, map_size=map_size, max_dbs=len(databases), lock=False, sync=False, metasync=False
    ) as out:
        for name, source in databases:
            target = out.open_db(name)
            with txn.cursor(db=source) as cursor:
                if not cursor.first():
                    continue
                items = cursor.iternext()  # one iterator across the chunks: it resumes where it stopped
                while True:
                    with out.begin(write=True, db=target) as write_txn:
                        consumed, added = write_txn.cursor().putmulti(
                            itertools.islice(items, packed_copy_records_per_txn), append=True
                        )
                        if added != consumed:  # cannot happen for a sorted, unique source: never skip silently
                            raise SnapshotError(f"packed copy of {name!r}: {consumed - added} records not appended")
                    if consumed < packed_copy_records_per_txn:
                        break
        out.sync(True)
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _read_stream_header(source: IO[bytes]) -> tuple[bytes, int, int]:
    """(the header's bytes, applied_index, data size) of a snapshot stream; SnapshotError if it is not one."""
    header = source.read(_stream_header.size)
    if len(header) != _stream_header.size:
        raise SnapshotError("snapshot stream is shorter than its header")
    magic, fmt, applied, size = _stream_header.unpack(header)
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotError("not an Allot snapshot stream (bad magic)")
    if fmt != STORE_FORMAT:
        raise SnapshotError(f"snapshot stream has store format {fmt}; this build reads format {STORE_FORMAT}")
    return header, int(applied), int(size)


def _check_stream_end(source: IO[bytes], size: int, data_size: int, blob_hasher: Any) -> None:
    """After a stream's data: all of it came, its checksum matches, and nothing follows."""
    if data_size != size:
        raise SnapshotError(f"snapshot stream is truncated: {data_size} of {size} data bytes")
    if source.read(_stream_digest_bytes) != blob_hasher.digest():
        raise SnapshotError("snapshot stream is corrupt: its SHA-256 does not match its contents")
    if source.read(1):
        raise SnapshotError("snapshot stream has bytes after its checksum")


def verify_snapshot_stream(source: IO[bytes]) -> int:
    """Read a blob made by `LmdbStore.write_snapshot_stream` to its end and check it as an
    install would, keeping nothing: its applied_index, or SnapshotError."""
    header, applied, size = _read_stream_header(source)
    blob_hasher = hashlib.sha256(header)
    data_size = 0
    while data_size < size:
        chunk = source.read(min(copy_chunk_bytes, size - data_size))
        if not chunk:
            break
        blob_hasher.update(chunk)
        data_size += len(chunk)
    _check_stream_end(source, size, data_size, blob_hasher)
    return applied


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _stage(source: IO[bytes], limit: int, staging: Path, *hashers: _Hasher) -> int:
    """Copy at most limit bytes from source into staging, feeding the hashers; fsync; the size."""
    size = 0
    with open(staging, "wb") as handle:
        while size < limit:
            chunk = source.read(min(copy_chunk_bytes, limit - size))
            if not chunk:
                break
            for hasher in hashers:
                hasher.update(chunk)
            handle.write(chunk)
            size += len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return size


def _hash_file(path: Path) -> tuple[int, str]:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(copy_chunk_bytes):
            hasher.update(chunk)
            size += len(chunk)
    return size, hasher.hexdigest()


def _applied_index_inside(data_path: Path) -> int:
    """Open an LMDB file read-only, without a lock file, and read its applied_index."""
    try:
        with lmdb.open(str(data_path), subdir=False, readonly=True, lock=False, max_dbs=2) as env:
            node_db = env.open_db(NODE_DB, create=False)
            state_db = env.open_db(STATE_DB, create=False)
            with env.begin(db=node_db) as txn:
                fmt = _decode_index(txn.get(_FORMAT))
                applied = _decode_index(txn.get(_APPLIED_INDEX))
                txn.stat(state_db)
    except lmdb.Error as exc:
        raise SnapshotError(f"{data_path} is not a readable Allot store: {exc}") from exc
    if fmt != STORE_FORMAT:
        raise SnapshotError(f"{data_path} has store format {fmt}; this build reads format {STORE_FORMAT}")
    return applied


def read_manifest(directory: str | os.PathLike[str]) -> SnapshotInfo:
    """The manifest of a snapshot directory, checked for shape only (see `verify_snapshot`)."""
    path = Path(directory) / SNAPSHOT_MANIFEST_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotError(f"{path} is missing: the snapshot is incomplete") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read {path}: {exc}") from exc
    return SnapshotInfo.from_json(raw, str(path))


def verify_snapshot(directory: str | os.PathLike[str]) -> SnapshotInfo:
    """Check a snapshot directory: manifest shape, data size and SHA-256, and the index inside."""
    info = read_manifest(directory)
    data_path = Path(directory) / SNAPSHOT_DATA_FILE
    try:
        size, sha = _hash_file(data_path)
    except OSError as exc:
        raise SnapshotError(f"cannot read snapshot data {data_path}: {exc}") from exc
    if (size, sha) != (info.size_bytes, info.sha256):
        raise SnapshotError(
            f"snapshot {directory} is corrupt: data is {size} bytes with SHA-256 {sha}, "
            f"the manifest says {info.size_bytes} bytes with {info.sha256}"
        )
    inside = _applied_index_inside(data_path)
    if inside != info.applied_index:
        raise SnapshotError(f"snapshot {directory}: manifest says applied_index {info.applied_index}, data {inside}")
    return info


def pack_snapshot(directory: str | os.PathLike[str], out: IO[bytes]) -> SnapshotInfo:
    """Stream a snapshot directory as one self-checking blob: header, data, SHA-256 of both.

    The data is checked against the manifest while it is streamed; on a mismatch SnapshotError
    is raised and what was written to `out` must be discarded (it also fails the receiver's
    check, since the trailing digest is never written).
    """
    info = read_manifest(directory)
    header = _stream_header.pack(SNAPSHOT_MAGIC, info.format, info.applied_index, info.size_bytes)
    blob_hasher = hashlib.sha256(header)
    data_hasher = hashlib.sha256()
    out.write(header)
    size = 0
    with open(Path(directory) / SNAPSHOT_DATA_FILE, "rb") as handle:
        while chunk := handle.read(copy_chunk_bytes):
            size += len(chunk)
            if size > info.size_bytes:
                break
            blob_hasher.update(chunk)
            data_hasher.update(chunk)
            out.write(chunk)
    if (size, data_hasher.hexdigest()) != (info.size_bytes, info.sha256):
        raise SnapshotError(f"snapshot {directory} is corrupt: its data does not match its manifest")
    out.write(blob_hasher.digest())
    return info


# py-lmdb before 3.0 released the GIL inside its C calls, and an install closing the environment
# under a reader outside the gate (the digest thread, the dump writer's pinned transaction) then
# crashed the process (SIGSEGV, code review with 1.4.1, 2026-12-08). 3.x keeps the GIL unless
# `lmdb.enable_drop_gil()` is called, which nothing here does: such a reader gets lmdb.Error.
if int(lmdb.__version__.split(".")[0]) < 3:
    raise ImportError(f"Allot needs py-lmdb 3 or later (found {lmdb.__version__}): pip install 'lmdb>=3,<4'")


class SwapGate:
    """Read views share the store; swapping in a snapshot's data file waits for them to end.

    Installing a snapshot closes the LMDB environment and opens the new file. A read view open
    on another thread then (an HTTP read or watch on the event loop, the scheduling timers, the
    digest thread) failed with lmdb's "Attempt to operate on closed/deleted/dropped object",
    and one begun in between with "the store is closed": a 500 for a client of a follower that
    was catching up. Read views are short and never span an await, so the swap waits for the
    open ones and holds new ones off until the new file is open. Both waits are bounded.
    """

    def __init__(self, *, reader_wait_s: float = 30.0, swap_wait_s: float = 2.0) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._swapping = False
        self._reader_wait_s = reader_wait_s
        self._swap_wait_s = swap_wait_s
        self.swaps_without_quiet = 0  # swaps that gave up waiting for read views (they then fail)

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        with self._condition:
            if self._swapping and not self._condition.wait_for(lambda: not self._swapping, self._reader_wait_s):
                raise StoreError(f"the store was being replaced by a snapshot for over {self._reader_wait_s:g} s")
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if self._readers == 0:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def swapping(self) -> Iterator[None]:
        with self._condition:
            self._swapping = True
            if not self._condition.wait_for(lambda: self._readers == 0, self._swap_wait_s):
                self.swaps_without_quiet += 1  # a read view held past all reason: it fails, as before
        try:
            yield
        finally:
            with self._condition:
                self._swapping = False
                self._condition.notify_all()


class LmdbStore:
    """The member's state machine records and bookkeeping in one LMDB environment."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        map_size: int = map_size_default,
        sync: bool = True,
        max_readers: int = max_readers_default,
    ) -> None:
        """Open (creating if missing) the store in `directory`.

        `map_size` bounds the data file (bytes of address space; sparse on Linux); when it is
        full, applying raises StoreFullError and the member must restart with a larger one.
        `sync=True` fsyncs data pages on every commit (metadata unsynced: a power loss may undo
        the last commits, never tear the file); `sync=False` leaves flushing to the OS, which a
        process crash survives but a power loss may not (then opening raises
        UnsafeShutdownError). Either way the Raft journal is the durable record; see DESIGN.md.
        """
        if map_size <= 0:
            raise ValueError(f"map_size must be a positive number of bytes, not {map_size}")
        self._directory = Path(directory)
        self._map_size = map_size
        self._sync = sync
        self._max_readers = max_readers
        self._env: lmdb.Environment | None = None
        self._gate = SwapGate()
        self._lock_fd: int | None = None
        self._applied_index = 0
        self._snapshot_index = 0
        self._prepare_directory()
        try:
            self._check_previous_session()
            self._write_session(clean=False)
            self._open_env()
        except BaseException:
            self._release_directory()
            raise

    # --- opening and closing -------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            probe_fd, probe_path = tempfile.mkstemp(prefix=".write-probe-", dir=self._directory)
            os.close(probe_fd)
            os.unlink(probe_path)
        except OSError as exc:
            raise StoreError(f"store directory {self._directory} is not a writable directory: {exc}") from exc
        lock_fd = os.open(self._directory / DIRECTORY_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StoreError(
                f"store directory {self._directory} is in use by another store (process or open LmdbStore)"
            ) from None
        self._lock_fd = lock_fd
        with contextlib.suppress(FileNotFoundError):  # an install interrupted before its rename
            os.unlink(self._directory / STAGING_FILE)

    def _release_directory(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _check_previous_session(self) -> None:
        """Refuse a data file that sync=False may have left torn by a power loss.

        A process crash loses nothing that LMDB handed to the kernel, so an unclean shutdown
        within the same boot is harmless. After a reboot, only a store that was closed cleanly
        (fully synced) or written with sync=True is known to be intact.
        """
        if not (self._directory / DATA_FILE).exists():
            return
        try:
            previous = json.loads((self._directory / SESSION_FILE).read_bytes())
            clean, synced, boot = bool(previous["clean"]), bool(previous["sync"]), previous["boot_id"]
        except FileNotFoundError:
            return  # written by a build without sessions, or created by hand: nothing to go on
        except (OSError, ValueError, KeyError, TypeError):
            clean, synced, boot = False, False, None
        current = _boot_id()
        if not clean and not synced and (boot is None or current is None or boot != current):
            raise UnsafeShutdownError(
                f"the store in {self._directory} was written with sync=False and the machine restarted "
                "before it was closed cleanly, so its data file may be torn. Remove "
                f"{self._directory / DATA_FILE} and rebuild it: install the latest snapshot and replay "
                "the Raft journal (or catch up from the other members)"
            )

    def _write_session(self, *, clean: bool) -> None:
        session = {"boot_id": _boot_id(), "sync": self._sync, "clean": clean}
        write_atomically(self._directory / SESSION_FILE, json.dumps(session).encode())

    def _open_env(self) -> None:
        path = self._directory / DATA_FILE
        try:
            env = lmdb.open(
                str(path),
                subdir=False,
                map_size=self._map_size,
                max_dbs=2,
                max_readers=self._max_readers,
                sync=self._sync,
                metasync=False,  # see DESIGN.md: may undo the last commits, never tears the file
            )
        except lmdb.Error as exc:
            raise StoreError(f"cannot open the LMDB store {path}: {exc}") from exc
        try:
            with env.begin(write=True) as txn:
                self._state_db = env.open_db(STATE_DB, txn=txn)
                self._node_db = env.open_db(NODE_DB, txn=txn)
                fmt = _decode_index(txn.get(_FORMAT, db=self._node_db))
                if fmt == 0:
                    if txn.stat(self._state_db)["entries"] or txn.get(_APPLIED_INDEX, db=self._node_db):
                        raise StoreError(f"{path} holds data but no store format: it is not an Allot store")
                    txn.put(_FORMAT, _encode_index(STORE_FORMAT), db=self._node_db)
                elif fmt != STORE_FORMAT:
                    raise StoreError(f"{path} has store format {fmt}; this build reads format {STORE_FORMAT}")
                self._applied_index = _decode_index(txn.get(_APPLIED_INDEX, db=self._node_db))
                self._snapshot_index = _decode_index(txn.get(_SNAPSHOT_INDEX, db=self._node_db))
        except BaseException:
            env.close()
            raise
        self._env = env

    def _require_env(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreError(f"the store in {self._directory} is closed")
        return self._env

    def close(self) -> None:
        """Flush everything to disk and close. Open read views become unusable. Idempotent."""
        if self._env is None and self._lock_fd is None:
            return
        try:
            if self._env is not None:
                self._env.sync(True)
                self._env.close()
                self._env = None
                self._write_session(clean=True)  # only once the data is on disk
        finally:
            self._release_directory()

    @property
    def closed(self) -> bool:
        return self._env is None

    def __enter__(self) -> LmdbStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # --- reading ------------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def map_size(self) -> int:
        return self._map_size

    @property
    def sync(self) -> bool:
        return self._sync

    @property
    def applied_index(self) -> int:
        """The index of the last log entry applied (0 for a new store)."""
        return self._applied_index

    @property
    def snapshot_index(self) -> int:
        """The applied_index of the last snapshot created or installed here (0 if none)."""
        return self._snapshot_index

    @contextlib.contextmanager
    def reader(self) -> Iterator[LmdbView]:
        """A consistent read-only view of the state machine's records, for the `with` block
        (which must not await: a snapshot install waits for the view to end)."""
        with self._gate.reading():
            env = self._require_env()
            with env.begin(db=self._state_db, buffers=False) as txn:
                view = LmdbView(txn)
                try:
                    yield view
                finally:
                    view.close()

    def digest(self) -> str:
        with self.reader() as view:
            return _digest(view)

    def digest_at(self) -> tuple[int, str]:
        """(applied_index, digest) read in one transaction, so the two always belong together.

        Not behind the swap gate: hashing a large state takes seconds, and a snapshot install
        must not wait that long on the tick thread. An install closes the environment under
        it instead, and this raises StoreError; the caller computes it again later."""
        env = self._require_env()
        try:
            with env.begin(db=self._state_db, buffers=False) as txn:
                applied = _decode_index(txn.get(_APPLIED_INDEX, db=self._node_db))
                view = LmdbView(txn)
                try:
                    return applied, _digest(view)
                finally:
                    view.close()
        except lmdb.Error as exc:
            raise StoreError(f"the digest was interrupted (a snapshot was installed meanwhile?): {exc}") from exc

    def check_invariants(self) -> None:
        """Raise InvariantViolation if the state is broken (reads everything: tests and debug)."""
        with self.reader() as view:
            _check_invariants(view)

    def used_bytes(self) -> int:
        """Bytes of the map in use (the file may be larger: LMDB keeps freed pages for reuse)."""
        with self._gate.reading():
            env = self._require_env()
            return (env.info()["last_pgno"] + 1) * env.stat()["psize"]

    # --- applying -----------------------------------------------------------------------------

    def apply_entry(self, index: int, envelopes: Sequence[bytes]) -> list[Outcome] | None:
        """Apply one log entry (a batch of encoded envelopes) in one write transaction.

        Returns the envelopes' outcomes in order, or None when `index <= applied_index` (a replay:
        nothing changes). Raises InvariantViolation (from the state machine) or StoreError after
        aborting the transaction: nothing of the entry is written and applied_index is unchanged,
        and the caller must stop the member.
        """
        if index <= 0:
            raise ValueError(f"log indexes start at 1, not {index}")
        env = self._require_env()
        state_db = self._state_db
        txn = env.begin(write=True, db=state_db)
        try:
            if index <= _decode_index(txn.get(_APPLIED_INDEX, db=self._node_db)):
                txn.abort()
                return None
            view = LmdbView(txn)
            entry = EntryApply(view, index)  # the meta record: read once, written once
            outcomes: list[Outcome] = []
            with txn.cursor() as cursor:  # the state database's, as the transaction's default
                for position, data in enumerate(envelopes):
                    outcome = entry.apply(data, position)
                    _write(txn, cursor, outcome.writes)
                    outcomes.append(outcome)
                meta_write = entry.meta_write()
                if meta_write is not None:
                    cursor.put(meta_write[0], meta_write[1])
            view.close()
            txn.put(_APPLIED_INDEX, _encode_index(index), db=self._node_db)
            txn.commit()
        except lmdb.MapFullError as exc:
            txn.abort()
            raise StoreFullError(
                f"the LMDB map of {self._directory / DATA_FILE} is full at map_size={self._map_size} bytes "
                f"({self._map_size / (1 << 20):.1f} MiB); entry {index} was not applied. Restart the member "
                "with a larger map_size (LmdbStore(map_size=...)); the journal replays the entry"
            ) from exc
        except lmdb.BadValsizeError as exc:
            txn.abort()
            raise StoreError(
                f"entry {index}: the state machine wrote a key LMDB cannot store (keys are 1 to "
                f"{env.max_key_size()} bytes): {exc}. Every member fails alike: fix the state machine"
            ) from exc
        except BaseException:
            txn.abort()
            raise
        self._applied_index = index
        return outcomes

    # --- snapshots ----------------------------------------------------------------------------

    def begin_snapshot(self) -> PendingSnapshot:
        """Pin the current state for a snapshot; write it with `.write(directory)` (any thread)."""
        env = self._require_env()
        txn = env.begin(buffers=False)
        try:
            applied = _decode_index(txn.get(_APPLIED_INDEX, db=self._node_db))
        except BaseException:
            txn.abort()
            raise
        return PendingSnapshot(txn, env, applied, ((STATE_DB, self._state_db), (NODE_DB, self._node_db)))

    def create_snapshot(self, directory: str | os.PathLike[str]) -> SnapshotInfo:
        """Write a packed, checksummed copy of the store into directory (new or empty)."""
        with self.begin_snapshot() as pending:
            info = pending.write(directory)
        self._record_snapshot_index(info.applied_index)
        return info

    verify_snapshot = staticmethod(verify_snapshot)

    def install_snapshot(self, directory: str | os.PathLike[str]) -> SnapshotInfo:
        """Replace the store's contents with a verified snapshot directory.

        The data file is copied next to the store while it is hashed, and the copy itself is
        checked against the manifest (size, SHA-256, applied_index inside); only then is it
        renamed over the store's data file. A corrupt snapshot raises SnapshotError and leaves the
        store as it was.
        """
        self._require_env()
        info = read_manifest(directory)
        staging = self._directory / STAGING_FILE
        try:
            data_hasher = hashlib.sha256()
            with open(Path(directory) / SNAPSHOT_DATA_FILE, "rb") as source:
                size = _stage(source, info.size_bytes + 1, staging, data_hasher)  # +1 notices excess
            if (size, data_hasher.hexdigest()) != (info.size_bytes, info.sha256):
                raise SnapshotError(
                    f"snapshot {directory} is corrupt: data is {size} bytes with SHA-256 "
                    f"{data_hasher.hexdigest()}, the manifest says {info.size_bytes} bytes with {info.sha256}"
                )
            self._swap_in(staging, info.applied_index)
        except OSError as exc:
            raise SnapshotError(f"cannot install snapshot {directory}: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
        return info

    def write_snapshot_stream(self, out: IO[bytes]) -> SnapshotInfo:
        """Snapshot the store and stream it to `out` as one self-checking blob (`pack_snapshot`)."""
        with tempfile.TemporaryDirectory(prefix=".snapshot-", dir=self._directory) as scratch:
            self.create_snapshot(Path(scratch) / "snapshot")
            return pack_snapshot(Path(scratch) / "snapshot", out)

    def snapshot_bytes(self) -> bytes:
        """The whole store as one self-checking blob (see `write_snapshot_stream`)."""
        buffer = io.BytesIO()
        self.write_snapshot_stream(buffer)
        return buffer.getvalue()

    def install_snapshot_stream(self, source: IO[bytes]) -> SnapshotInfo:
        """Install a blob made by `write_snapshot_stream`, checked end to end before the swap."""
        self._require_env()
        header, applied, size = _read_stream_header(source)
        staging = self._directory / STAGING_FILE
        try:
            blob_hasher = hashlib.sha256(header)
            data_hasher = hashlib.sha256()
            data_size = _stage(source, size, staging, blob_hasher, data_hasher)
            _check_stream_end(source, size, data_size, blob_hasher)
            self._swap_in(staging, applied)
        except OSError as exc:
            raise SnapshotError(f"cannot install the snapshot stream: {exc}") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staging)
        return SnapshotInfo(applied, size, data_hasher.hexdigest())

    def install_snapshot_bytes(self, data: bytes) -> SnapshotInfo:
        """Install a blob made by `snapshot_bytes`; garbage or a corrupt blob raises SnapshotError."""
        return self.install_snapshot_stream(io.BytesIO(data))

    def _swap_in(self, staging: Path, applied_index: int) -> None:
        """Rename a verified copy over the data file and reopen. Must not be given unverified data."""
        inside = _applied_index_inside(staging)
        if inside != applied_index:
            raise SnapshotError(f"snapshot claims applied_index {applied_index} but its data holds {inside}")
        self._require_env().sync(True)  # before the gate: read views wait only for the swap itself
        with self._gate.swapping():
            env = self._require_env()
            env.close()
            self._env = None
            try:
                os.replace(staging, self._directory / DATA_FILE)
            finally:
                self._open_env()  # the new data, or the old if the rename failed
        fsync_directory(self._directory)
        self._record_snapshot_index(applied_index)
        self._require_env().sync(True)

    def _record_snapshot_index(self, index: int) -> None:
        env = self._require_env()
        with env.begin(write=True, db=self._node_db) as txn:
            txn.put(_SNAPSHOT_INDEX, _encode_index(index))
        self._snapshot_index = index


TORN_FILE = "state.mdb.torn"  # the data file set aside by open_replica_store (the latest only)


def open_replica_store(
    directory: str | os.PathLike[str], *, map_size: int = map_size_default
) -> tuple[LmdbStore, Path | None]:
    """Open a Raft member's store with sync=False, setting aside a data file a power loss may have torn.

    A member's store never needs its own fsync: pysyncobj compacts the journal only behind a
    complete, fsynced dump, so the dump plus the journal always rebuild the state. When the
    last session ended in a power loss (UnsafeShutdownError) the data file is renamed to
    `state.mdb.torn` (replacing an older one) and an empty store is opened; pysyncobj then
    installs its dump into it and replays the journal, and the leader sends whatever this
    member lacks. Returns the store and the set-aside path (None when nothing was set aside).
    """
    path = Path(directory)
    try:
        return LmdbStore(path, map_size=map_size, sync=False), None
    except UnsafeShutdownError:
        set_aside = path / TORN_FILE
        os.replace(path / DATA_FILE, set_aside)
        fsync_directory(path)
        return LmdbStore(path, map_size=map_size, sync=False), set_aside
