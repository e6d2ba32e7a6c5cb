"""Where a member's bytes go: the state per key prefix, and LMDB's pages around it.

    python -m bench.footprint                      # 50,000 claims
    python -m bench.footprint --claims 200000 --batch 16

Fills a temporary LMDB store (node/store.LmdbStore, sync off) the way a member does: one /8
pool, then single-address claims with a 32-hex-digit request id each (what the client library
sends as Idempotency-Key), grouped `--batch` envelopes per log entry and applied with
`apply_entry`. Then it prints:

* per key prefix: records, key bytes, value bytes, and bytes per allocation;
* which tables are bounded (event log, dedup) and what they weigh at their bound, so a small
  run's per-allocation figure can be extrapolated to a million allocations;
* LMDB: page size, tree depth, branch / leaf / overflow pages, the bytes those pages take
  against the raw key + value bytes, the map in use, and the size of a compact copy (what a
  snapshot dump is).

It prints numbers only and asserts nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.ipam_apply import machine_line
from node.store import LmdbStore
from statemachine import Envelope, Principal, encode_envelope
from statemachine.context import events_max
from statemachine.machine import dedup_records_max

ADMIN = Principal("bench", "", "", "admin")
TENANT = Principal("bench", "acme", "web", "member")
BASE_TS_MS = 1_767_225_600_000
pool_name = "big"
pool_cidr = "10.0.0.0/8"

# Key prefixes in the order they are reported; the first that matches a key wins, so longer
# prefixes that share a first byte with a shorter one come first.
PREFIXES: tuple[tuple[str, bytes], ...] = (
    ("meta", b"meta"),
    ("pool/", b"pool/"),
    ("ps/ (allocator state)", b"ps/"),
    ("pbn/", b"pbn/"),
    ("pod/", b"pod/"),
    ("pq/", b"pq/"),
    ("F (free blocks)", b"F"),
    ("U (used blocks)", b"U"),
    ("rt/", b"rt/"),
    ("class/", b"class/"),
    ("ci/", b"ci/"),
    ("defaultclass", b"defaultclass"),
    ("claim/", b"claim/"),
    ("alloc/", b"alloc/"),
    ("dd/ (dedup records)", b"dd/"),
    ("dx/ (dedup expiry)", b"dx/"),
    ("ev/ (event log)", b"ev/"),
)
BOUNDED = {
    "ev/ (event log)": events_max,
    "dd/ (dedup records)": dedup_records_max,
    "dx/ (dedup expiry)": dedup_records_max,
}
# Per LMDB leaf node: an 8-byte node header plus a 2-byte slot in the page's pointer array.
lmdb_node_overhead_bytes = 10


@dataclass
class Tally:
    records: int = 0
    key_bytes: int = 0
    value_bytes: int = 0

    @property
    def total(self) -> int:
        return self.key_bytes + self.value_bytes


def request_id(number: int) -> str:
    """32 hex digits, like `client.core.new_idempotency_key`, but reproducible."""
    return hashlib.blake2b(number.to_bytes(8, "big"), digest_size=16).hexdigest()


def envelopes(claims: int) -> Iterator[bytes]:
    yield encode_envelope(
        Envelope("pool.create", {"name": pool_name, "spec": {"cidr": pool_cidr}}, ADMIN, None, BASE_TS_MS)
    )
    for number in range(claims):
        body = {"name": f"b{number}", "spec": {"poolRef": pool_name}}
        # One millisecond apart: a fill at ~1,000 claims/s, so no dedup record expires in a
        # run shorter than the dedup TTL (15 minutes of envelope time = 900,000 claims).
        yield encode_envelope(Envelope("claim.create", body, TENANT, request_id(number), BASE_TS_MS + number))


def fill(store: LmdbStore, claims: int, batch: int) -> float:
    started = time.perf_counter()
    pending: list[bytes] = []
    index = 0
    for data in envelopes(claims):
        pending.append(data)
        if len(pending) == batch:
            index += 1
            _apply(store, index, pending)
            pending = []
    if pending:
        _apply(store, index + 1, pending)
    return time.perf_counter() - started


def _apply(store: LmdbStore, index: int, batch: list[bytes]) -> None:
    outcomes = store.apply_entry(index, batch)
    for outcome in outcomes or ():
        if not outcome.ok:
            raise SystemExit(f"footprint fill: a command was refused: {outcome.result}")


def tally(store: LmdbStore) -> dict[str, Tally]:
    found = {label: Tally() for label, _ in PREFIXES}
    found["other"] = Tally()
    with store.reader() as view:
        for key, value in view.scan(b"\x00", b"\xff"):
            label = next((name for name, prefix in PREFIXES if key.startswith(prefix)), "other")
            entry = found[label]
            entry.records += 1
            entry.key_bytes += len(key)
            entry.value_bytes += len(value)
    return {label: entry for label, entry in found.items() if entry.records}


def print_prefixes(found: dict[str, Tally], claims: int) -> None:
    print(f"\n{'prefix':<24} {'records':>9} {'key B':>11} {'value B':>12} {'total B':>12} {'B/alloc':>8}")
    total = Tally()
    for label, entry in found.items():
        total.records += entry.records
        total.key_bytes += entry.key_bytes
        total.value_bytes += entry.value_bytes
        per = entry.total / claims
        print(
            f"{label:<24} {entry.records:>9,} {entry.key_bytes:>11,} {entry.value_bytes:>12,} "
            f"{entry.total:>12,} {per:>8.1f}"
        )
    print(
        f"{'all':<24} {total.records:>9,} {total.key_bytes:>11,} {total.value_bytes:>12,} "
        f"{total.total:>12,} {total.total / claims:>8.1f}"
    )
    print("\nbounded tables (records kept at most; bytes at that bound, from this run's mean record):")
    for label, bound in BOUNDED.items():
        table = found.get(label)
        if table is None:
            continue
        mean = table.total / table.records
        at_bound = mean * bound
        print(f"  {label:<22} bound {bound:>9,} records, {mean:6.1f} B each: {at_bound / 2**20:7.1f} MiB")
    unbounded = sum(entry.total for label, entry in found.items() if label not in BOUNDED)
    bounded_full = sum(
        entry.total / entry.records * BOUNDED[label]
        for label, entry in found.items()
        if label in BOUNDED and entry.records
    )
    million = unbounded / claims * 1_000_000 + bounded_full
    print(
        f"  per live allocation outside the bounded tables: {unbounded / claims:.1f} B; raw state at 1,000,000 "
        f"allocations with full bounded tables: {million / 2**20:,.0f} MiB"
    )


def print_lmdb(store: LmdbStore, found: dict[str, Tally], claims: int, scratch: Path) -> None:
    env = store._require_env()  # the bench reads LMDB's own statistics
    with env.begin() as txn:
        stat = txn.stat(store._state_db)
    psize = stat["psize"]
    pages = stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
    raw = sum(entry.total for entry in found.values())
    nodes = raw + lmdb_node_overhead_bytes * stat["entries"]
    page_bytes = pages * psize
    print(
        f"\nLMDB state db: page {psize} B, depth {stat['depth']}, entries {stat['entries']:,}; "
        f"branch {stat['branch_pages']:,}, leaf {stat['leaf_pages']:,}, overflow {stat['overflow_pages']:,} pages"
    )
    print(
        f"  pages {page_bytes / 2**20:.1f} MiB for {raw / 2**20:.1f} MiB of keys + values "
        f"({nodes / 2**20:.1f} MiB with LMDB's {lmdb_node_overhead_bytes} B per record): "
        f"{page_bytes / nodes:.2f}x, {page_bytes / claims:.0f} B per allocation"
    )
    used = store.used_bytes()
    file_size = (store.directory / "state.mdb").stat().st_size
    print(f"  map in use {used / 2**20:.1f} MiB ({used / claims:.0f} B/alloc), data file {file_size / 2**20:.1f} MiB")
    copy = scratch / "compact.mdb"
    started = time.perf_counter()
    with open(copy, "xb") as handle:
        env.copyfd(handle.fileno(), compact=True)
    copy_s = time.perf_counter() - started
    compact = copy.stat().st_size
    print(f"  env.copyfd(compact=True): {compact / 2**20:.1f} MiB ({compact / claims:.0f} B/alloc) in {copy_s:.2f} s")
    started = time.perf_counter()
    with store.begin_snapshot() as pending:
        info = pending.write(scratch / "snapshot")
    snapshot_s = time.perf_counter() - started
    print(
        f"  snapshot (a dump's data): {info.size_bytes / 2**20:.1f} MiB ({info.size_bytes / claims:.0f} B/alloc) "
        f"in {snapshot_s:.2f} s with its checksum"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--claims", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=8, help="envelopes per log entry")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.footprint", *(sys.argv[1:] if argv is None else argv)])
    load = os.getloadavg()
    print(f"# {machine_line()}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {command}")
    with (
        tempfile.TemporaryDirectory(prefix="allot-footprint-") as scratch,
        LmdbStore(Path(scratch) / "store", sync=False) as store,
    ):
        seconds = fill(store, args.claims, args.batch)
        rate = args.claims / seconds
        print(f"filled {args.claims:,} claims in {seconds:.1f} s ({rate:,.0f}/s), {args.batch} per entry")
        found = tally(store)
        print_prefixes(found, args.claims)
        print_lmdb(store, found, args.claims, Path(scratch))


if __name__ == "__main__":
    main()
