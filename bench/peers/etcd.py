"""etcd 3.4 as a benchmark peer: a three-member cluster on 127.0.0.1, and two allocators.

The cluster: three `etcd` processes (Debian package `etcd-server`), each with its own data
directory in a temporary directory, peer and client URLs on free loopback ports, fsync on
(etcd's default: the WAL is fsync'd before a proposal is acknowledged), default snapshot and
quota settings. Heartbeat 50 ms and election timeout 300 ms (etcd randomises it to
300-600 ms), the same timing Allot uses, so failover compares the stores, not their timers.
The allocators talk to etcd's HTTP/JSON gRPC gateway (`/v3/kv/txn`, base64 keys and values)
with aiohttp, round-robin over the members (a follower forwards proposals to the leader).

Allocators:

* `EtcdKeyAllocator` ("etcd"): one key per allocated address, `/ipam/{pool}/{address}` with the
  claim's name as value: the approach of the Kubernetes IPAddress allocator. A claim takes the
  lowest candidate from an in-process free hint (addresses released by this process, else the
  next never-tried address; when it runs dry, a count of the pool's keys, and unless every address
  has one (the pool is exhausted: `PoolExhausted`), a range read of them rebuilds it) and
  sends one transaction: if `create_revision(key) == 0` put the key, else read it. Losing that
  race (the key exists with another name) moves on to the next candidate; finding its own name
  there (a retry of a transaction whose answer was lost) is success. A release deletes the key
  if its value is still the claim's name, and returns the address to the hint. Blocks longer than
  one address (/64s of an IPv6 /32) are keyed by their first address. `bulk_claim` (the big-pool
  scenario's untimed fill) writes the same keys 128 compare-and-creates per transaction.
* `EtcdBitmapAllocator` ("etcd-bitmap", for reference): one key per pool holding a bitmap of the
  pool (8 KiB for a /16), the classic allocator of Kubernetes service IPs. A claim sets the
  lowest clear bit and writes the bitmap with a compare-and-swap on its `mod_revision`; a
  failed compare returns the current bitmap in the same round trip and the claim tries again.
  Claims on one pool are serialised inside this process (one compare-and-swap in flight per
  pool), since concurrent swaps of one key from one process can only conflict with each other.
  When the bitmap held here has no clear bit, the claim reads the key again before refusing
  (`PoolExhausted`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.loadgen import AllocatorError, Pool, PoolExhausted
from bench.peers import Unavailable
from chaos.cluster import HOST, free_ports, reap_process, register_process, wait_until

heartbeat_ms = 50
election_ms = 300
start_timeout_s = 30.0
call_deadline_s = 30.0
request_timeout_s = 10.0
txn_ops_max = 128  # etcd's default --max-txn-ops
rebuild_slots_max = 1 << 24  # a range read that lists the free blocks of a pool larger than this is refused
bitmap_bits_max = 1 << 23  # 1 MiB of bitmap: etcd's default request limit is 1.5 MiB


def etcd_binary() -> str:
    found = shutil.which("etcd")
    if found is None:
        raise Unavailable("etcd is not installed (Debian: apt-get install etcd-server)")
    return found


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://{HOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{HOST}:{self.peer_port}"


def post_json(url: str, body: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any] | None:
    """A synchronous JSON POST for the harness; None when the member does not answer."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer
    except (OSError, urllib.error.URLError, ValueError):
        return None


class EtcdCluster:
    """Three etcd members in a temporary directory; `close()` kills and reaps them all."""

    def __init__(self, size: int = 3) -> None:
        self.binary = etcd_binary()
        self.base_dir = Path(tempfile.mkdtemp(prefix="allot-bench-etcd-"))
        ports = free_ports(2 * size)
        self.token = f"bench-{os.urandom(4).hex()}"
        self.members = {
            f"e{number}": EtcdMember(
                f"e{number}",
                ports[2 * (number - 1)],
                ports[2 * (number - 1) + 1],
                self.base_dir / f"e{number}",
                self.base_dir / f"e{number}.log",
            )
            for number in range(1, size + 1)
        }

    def command(self, member: EtcdMember) -> list[str]:
        initial = ",".join(f"{other.name}={other.peer_url}" for other in self.members.values())
        return [
            self.binary,
            "--name",
            member.name,
            "--data-dir",
            str(member.data_dir),
            "--listen-client-urls",
            member.client_url,
            "--advertise-client-urls",
            member.client_url,
            "--listen-peer-urls",
            member.peer_url,
            "--initial-advertise-peer-urls",
            member.peer_url,
            "--initial-cluster",
            initial,
            "--initial-cluster-token",
            self.token,
            "--initial-cluster-state",
            "new",  # ignored once the data directory exists (a restart)
            "--heartbeat-interval",
            str(heartbeat_ms),
            "--election-timeout",
            str(election_ms),
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ]

    def start_member(self, name: str) -> None:
        member = self.members[name]
        if member.process is not None and member.process.poll() is None:
            raise RuntimeError(f"etcd member {name} is already running")
        with open(member.log_path, "ab") as log:
            member.process = subprocess.Popen(
                self.command(member),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        register_process(member.process)

    def start(self) -> None:
        for name in self.members:
            self.start_member(name)
        self.leader(start_timeout_s)

    def kill(self, name: str) -> None:
        member = self.members[name]
        if member.process is not None:
            reap_process(member.process)
            member.process = None

    def close(self) -> None:
        for name in self.members:
            self.kill(name)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def running(self) -> list[str]:
        return [name for name, member in self.members.items() if member.process and member.process.poll() is None]

    def status(self, name: str) -> dict[str, Any] | None:
        return post_json(f"{self.members[name].client_url}/v3/maintenance/status", {}, timeout_s=1.0)

    def _log_tails(self) -> str:
        parts = []
        for name, member in self.members.items():
            with contextlib.suppress(OSError):
                lines = member.log_path.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"----- etcd {name} -----\n" + "\n".join(lines))
        return "\n".join(parts)

    def leader(self, timeout_s: float) -> str:
        """The running member every running member names as leader (waits up to timeout_s)."""

        def probe() -> str | None:
            names = self.running()
            if len(names) * 2 <= len(self.members):
                return None
            own_ids: dict[str, str] = {}
            leaders: set[str] = set()
            for name in names:
                status = self.status(name)
                if status is None or "leader" not in status:
                    return None
                own_ids[str(status["header"]["member_id"])] = name
                leaders.add(str(status["leader"]))
            if len(leaders) != 1:
                return None
            return own_ids.get(leaders.pop())

        return wait_until("the etcd members to agree on a leader", probe, timeout_s, on_timeout=self._log_tails)

    def urls(self) -> list[str]:
        return [member.client_url for member in self.members.values()]


class EtcdClient:
    """The part of the etcd v3 JSON gateway the allocators use, with retries and a deadline."""

    def __init__(self, urls: list[str], retries: Counter[str], timeout_s: float = request_timeout_s) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self.retries = retries
        self._next = itertools.count()
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.timeout_s), connector=aiohttp.TCPConnector(limit=0)
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        if self._session is None:
            raise RuntimeError("open() the client first")
        deadline = time.monotonic() + call_deadline_s
        attempt = 0
        while True:
            url = self.urls[next(self._next) % len(self.urls)]
            try:
                async with self._session.post(f"{url}{path}", json=body) as reply:
                    data = await reply.read()
                    if reply.status == 200:
                        answer: dict[str, Any] = json.loads(data)
                        return answer
                    reason = f"http {reply.status}"
                    if reply.status < 500 and reply.status != 429:
                        raise AllocatorError(reason, f"{path}: {data[:300]!r}")
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            self.retries[reason] += 1
            attempt += 1
            if time.monotonic() > deadline:
                raise AllocatorError("deadline", f"{path}: last {reason} after {attempt} attempts")
            await asyncio.sleep(min(0.2, 0.01 * attempt))

    async def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return await self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure})

    async def put(self, key: str, value: bytes) -> None:
        await self.call("/v3/kv/put", {"key": b64(key), "value": b64(value)})


def range_kvs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The key-values of the first range response inside a txn answer ([] if none)."""
    for item in response.get("responses", []):
        if "response_range" in item:
            kvs: list[dict[str, Any]] = item["response_range"].get("kvs", [])
            return kvs
    return []


class FreeHint:
    """Lowest-first candidates for one pool (integer addresses of claim-sized blocks): released
    blocks first, then never-tried ones."""

    def __init__(self, pool: Pool) -> None:
        self.next = pool.first
        self.step = pool.step
        self.end = pool.first + pool.size * pool.step
        self.released: list[int] = []

    def take(self) -> int | None:
        if self.released:
            return heapq.heappop(self.released)
        if self.next < self.end:
            self.next += self.step
            return self.next - self.step
        return None

    def give_back(self, address: int) -> None:
        heapq.heappush(self.released, address)


class EtcdKeyAllocator:
    label = "etcd"

    def __init__(self, urls: list[str], timeout_s: float = request_timeout_s) -> None:
        self.retries: Counter[str] = Counter()
        self.client = EtcdClient(urls, self.retries, timeout_s)
        self.hints: dict[str, FreeHint] = {}

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    @staticmethod
    def prefix(pool: Pool) -> str:
        return f"/ipam/{pool.name}/"

    async def create_pool(self, pool: Pool) -> None:
        await self.client.put(f"/ipam-pools/{pool.name}", str(pool.cidr).encode())
        self.hints[pool.name] = FreeHint(pool)

    @staticmethod
    def range_end(prefix: str) -> str:
        return prefix[:-1] + chr(ord(prefix[-1]) + 1)

    def key(self, pool: Pool, address: int) -> str:
        return b64(f"{self.prefix(pool)}{pool.address(address)}")

    async def _rebuild(self, pool: Pool, hint: FreeHint) -> None:
        """Count the pool's keys; unless every block has one (the pool is full: PoolExhausted),
        range-read them, and every block without a key becomes a candidate again."""
        prefix = self.prefix(pool)
        span = {"key": b64(prefix), "range_end": b64(self.range_end(prefix))}
        counted = await self.client.call("/v3/kv/range", {**span, "count_only": True})
        if int(counted.get("count", 0)) >= pool.size:
            raise PoolExhausted(f"pool {pool.name}: all {pool.size:,} blocks have a key")
        if pool.size > rebuild_slots_max:
            raise AllocatorError("unsupported", f"pool {pool.name}: too many blocks to list the free ones")
        answer = await self.client.call("/v3/kv/range", {**span, "keys_only": True})
        taken = {int(ipaddress.ip_address(unb64(kv["key"]).decode()[len(prefix) :])) for kv in answer.get("kvs", [])}
        blocks = (pool.block(index) for index in range(pool.size))
        hint.released = [address for address in blocks if address not in taken]
        heapq.heapify(hint.released)

    async def claim(self, pool: Pool, name: str) -> str:
        """Candidates from the hint; when it runs dry, look at the store (_rebuild) before refusing:
        other clients may have released blocks this process does not know of."""
        hint = self.hints.setdefault(pool.name, FreeHint(pool))
        rebuilt = False
        while True:
            candidate = hint.take()
            if candidate is None:
                if rebuilt:  # raced away by other clients since the read: look once more
                    self.retries["rebuilt, raced"] += 1
                await self._rebuild(pool, hint)
                rebuilt = True
                continue
            key = self.key(pool, candidate)
            answer = await self.client.txn(
                [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                [{"request_put": {"key": key, "value": b64(name)}}],
                [{"request_range": {"key": key}}],
            )
            if answer.get("succeeded"):
                return pool.cidr_of(candidate)
            kvs = range_kvs(answer)
            if kvs and unb64(kvs[0].get("value", "")).decode() == name:
                return pool.cidr_of(candidate)  # our own earlier attempt, whose answer was lost
            self.retries["conflict"] += 1

    async def bulk_claim(self, pool: Pool, names: Sequence[str]) -> None:
        """The big-pool fill: the same keys claim() would create (lowest candidates from the hint),
        `txn_ops_max` compare-and-creates per transaction, 8 transactions in flight."""
        hint = self.hints.setdefault(pool.name, FreeHint(pool))
        batches: list[list[tuple[int, str]]] = []
        for start in range(0, len(names), txn_ops_max):
            batch = []
            for name in names[start : start + txn_ops_max]:
                candidate = hint.take()
                if candidate is None:
                    raise PoolExhausted(f"pool {pool.name} has no room for {len(names):,} claims")
                batch.append((candidate, name))
            batches.append(batch)
        gate = asyncio.Semaphore(8)

        async def send(batch: list[tuple[int, str]]) -> None:
            keys = [(self.key(pool, address), name) for address, name in batch]
            async with gate:
                answer = await self.client.txn(
                    [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"} for key, _ in keys],
                    [{"request_put": {"key": key, "value": b64(name)}} for key, name in keys],
                    [],
                )
            if not answer.get("succeeded"):
                raise AllocatorError("conflict", f"bulk fill of {pool.name}: a key already existed")

        await asyncio.gather(*(send(batch) for batch in batches))

    async def release(self, pool: Pool, name: str, cidr: str) -> None:
        address = int(ipaddress.ip_network(cidr).network_address)
        key = self.key(pool, address)
        await self.client.txn(
            [{"key": key, "target": "VALUE", "result": "EQUAL", "value": b64(name)}],
            [{"request_delete_range": {"key": key}}],
            [],
        )
        self.hints.setdefault(pool.name, FreeHint(pool)).give_back(address)


def lowest_clear_bit(bitmap: bytearray) -> int | None:
    for index, byte in enumerate(bitmap):
        if byte != 0xFF:
            inverted = ~byte & 0xFF
            return index * 8 + (inverted & -inverted).bit_length() - 1
    return None


class EtcdBitmapAllocator:
    label = "etcd-bitmap"

    def __init__(self, urls: list[str], timeout_s: float = request_timeout_s) -> None:
        self.retries: Counter[str] = Counter()
        self.client = EtcdClient(urls, self.retries, timeout_s)
        self.cache: dict[str, tuple[bytearray, str]] = {}  # pool -> (bitmap, mod_revision)
        self.locks: dict[str, asyncio.Lock] = {}

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    @staticmethod
    def key(pool: Pool) -> str:
        return b64(f"/ipam-bitmap/{pool.name}")

    async def create_pool(self, pool: Pool) -> None:
        if pool.size > bitmap_bits_max:
            raise AllocatorError(
                "unsupported", f"a bitmap of {pool.size:,} blocks is {pool.size // 8:,} bytes, over the request limit"
            )
        key = self.key(pool)
        empty = bytes((pool.size + 7) // 8)
        answer = await self.client.txn(
            [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            [{"request_put": {"key": key, "value": b64(empty)}}],
            [{"request_range": {"key": key}}],
        )
        if answer.get("succeeded"):
            self.cache[pool.name] = (bytearray(empty), str(answer["header"]["revision"]))
        else:
            kv = range_kvs(answer)[0]
            self.cache[pool.name] = (bytearray(unb64(kv["value"])), str(kv["mod_revision"]))

    async def _swap(self, pool: Pool, change: Any) -> Any:
        """Apply `change(bitmap) -> (new bitmap, result)` with compare-and-swap until it sticks."""
        key = self.key(pool)
        async with self.locks.setdefault(pool.name, asyncio.Lock()):
            while True:
                bitmap, revision = self.cache[pool.name]
                updated, result = change(bytearray(bitmap))
                answer = await self.client.txn(
                    [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revision}],
                    [{"request_put": {"key": key, "value": b64(bytes(updated))}}],
                    [{"request_range": {"key": key}}],
                )
                if answer.get("succeeded"):
                    self.cache[pool.name] = (updated, str(answer["header"]["revision"]))
                    return result
                kv = range_kvs(answer)[0]
                self.cache[pool.name] = (bytearray(unb64(kv["value"])), str(kv["mod_revision"]))
                self.retries["conflict"] += 1

    async def claim(self, pool: Pool, name: str) -> str:
        def set_lowest(bitmap: bytearray) -> tuple[bytearray, int]:
            bit = lowest_clear_bit(bitmap)
            if bit is None or bit >= pool.size:
                raise PoolExhausted(f"pool {pool.name} has no free address")
            bitmap[bit // 8] |= 1 << (bit % 8)
            return bitmap, bit

        try:
            bit = await self._swap(pool, set_lowest)
        except PoolExhausted:
            # Full as far as the bitmap held here says: a careful client reads the pool before
            # refusing (another client may have cleared a bit since), then tries once more.
            await self._refresh(pool)
            bit = await self._swap(pool, set_lowest)
        return pool.cidr_of(pool.block(int(bit)))

    async def _refresh(self, pool: Pool) -> None:
        """Read the pool's bitmap from etcd (a linearizable range read) into the cache."""
        async with self.locks.setdefault(pool.name, asyncio.Lock()):
            answer = await self.client.call("/v3/kv/range", {"key": self.key(pool)})
            kv = answer["kvs"][0]
            self.cache[pool.name] = (bytearray(unb64(kv["value"])), str(kv["mod_revision"]))

    async def release(self, pool: Pool, name: str, cidr: str) -> None:
        bit = (int(ipaddress.ip_network(cidr).network_address) - pool.first) // pool.step

        def clear(bitmap: bytearray) -> tuple[bytearray, None]:
            bitmap[bit // 8] &= ~(1 << (bit % 8)) & 0xFF
            return bitmap, None

        await self._swap(pool, clear)


class EtcdStore:
    """A fresh three-member etcd cluster per start(); `bitmap` picks the allocator."""

    def __init__(self, *, bitmap: bool = False) -> None:
        self.bitmap = bitmap
        self.label = "etcd-bitmap" if bitmap else "etcd"
        etcd_binary()  # Unavailable when etcd is not installed
        self.cluster: EtcdCluster | None = None

    def start(self) -> None:
        self.cluster = EtcdCluster()
        try:
            self.cluster.start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _cluster(self) -> EtcdCluster:
        if self.cluster is None:
            raise RuntimeError("start() the store first")
        return self.cluster

    def allocator(self, timeout_s: float = request_timeout_s) -> EtcdKeyAllocator | EtcdBitmapAllocator:
        urls = self._cluster().urls()
        return EtcdBitmapAllocator(urls, timeout_s) if self.bitmap else EtcdKeyAllocator(urls, timeout_s)

    @staticmethod
    def version() -> str:
        try:
            first = subprocess.run(
                [etcd_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
            ).stdout.splitlines()
        except (OSError, subprocess.TimeoutExpired):
            return "etcd"
        return first[0] if first else "etcd"

    def describe(self) -> str:
        common = (
            f"{self.version()}, three members on 127.0.0.1, fsync on (default), heartbeat {heartbeat_ms} ms, "
            f"election timeout {election_ms} ms (Allot's timing), other settings default; "
            "HTTP/JSON gateway with aiohttp, requests round-robin over the members"
        )
        if self.bitmap:
            return common + "; one bitmap key per pool, compare-and-swap on mod_revision, one swap in flight per pool"
        return (
            common + "; one key per address, compare-and-create (create_revision == 0) on the lowest candidate "
            "from an in-process free hint, conflicts retried with the next candidate"
        )

    # -- failover --

    def member_ids(self) -> list[str]:
        return list(self._cluster().members)

    def leader(self, timeout_s: float) -> str:
        return self._cluster().leader(timeout_s)

    def kill(self, member_id: str) -> None:
        self._cluster().kill(member_id)

    def restart(self, member_id: str, timeout_s: float) -> None:
        cluster = self._cluster()
        cluster.start_member(member_id)

        def healthy() -> bool:
            return cluster.status(member_id) is not None

        wait_until(f"etcd {member_id} to answer", healthy, timeout_s)

    def wait_whole(self, timeout_s: float) -> None:
        cluster = self._cluster()
        for name in cluster.members:
            if name not in cluster.running():
                self.restart(name, timeout_s)
        cluster.leader(timeout_s)
