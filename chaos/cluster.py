"""Real Allot member processes on 127.0.0.1, for multi-process tests and the chaos suite.

`Cluster` creates a temporary directory with a cluster secret and a token file, picks free
ports, and runs each member as `python -m node.cli serve ...` (what `allot up` runs), with its
stdout and stderr in a per-member log file. It can SIGKILL, SIGSTOP, SIGCONT, restart, and
wipe-and-restart a member, find the leader, and wait until members agree on applied index and
state digest. Every wait has a deadline; when one expires the error carries the tail of every
member's log.

Rules it keeps:

* 127.0.0.1 only. Ports are chosen below the kernel's ephemeral range, so a connection some
  process opens while a member is down cannot take that member's port before it restarts.
* Every process it starts is reaped: by `close()` (also on leaving the `with` block), and by an
  `atexit` safety net should a test runner die half-way. Processes are ended by pid only.
* HTTP with the standard library (`http.client`), one connection per request, always with a
  timeout. A member that cannot be reached raises `Unreachable`; HTTP errors are `Reply`s.
* Nothing sleeps a fixed time to wait for a condition: waits poll with a deadline.

Partitions (opt-in: `Cluster(partitionable=True)`; see docs/chaos.md). pysyncobj keeps one TCP
connection per pair of members, opened by the member whose address is the larger string, and
the accepting member identifies it by the address the connector sends, which must equal the
connector's address in the acceptor's member list. So each pair's connection can run through a
proxy (chaos/proxy.py) on the connector's side: the connector lists the other member at the
proxy's port (lower than every member's own port, so it still compares as the connector), while
the acceptor lists the connector at its real address. Each member gets its own member list on
its command line; member ids, roles and leaders are the same as without proxies. Cutting every
link of a member isolates it. A cluster created without `partitionable` runs exactly as before:
one shared member list, no proxies.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from chaos.proxy import CutMode, LinkStats, ProxyHub
from node.store import LmdbStore
from node.tokens import generate_token_file
from statemachine.errors import InvariantViolation
from statemachine.invariants import check_invariants

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

request_timeout_s_default = 5.0  # one HTTP request, connect to last byte
start_timeout_s = 30.0  # a member answering /healthz after its process starts
leader_timeout_s = 30.0  # the members agreeing on a leader
converge_timeout_s = 30.0  # the members agreeing on applied index and digest
stop_timeout_s = 10.0  # a process exiting after SIGTERM / SIGKILL
poll_interval_s = 0.05
log_tail_lines = 40

T = TypeVar("T")


# ---- processes: a registry so that nothing outlives the test run ---------------------------

_live_lock = threading.Lock()
_live: set[subprocess.Popen[bytes]] = set()


def register_process(process: subprocess.Popen[bytes]) -> None:
    """Let the atexit safety net kill this process should nobody else reap it."""
    with _live_lock:
        _live.add(process)


def reap_process(process: subprocess.Popen[bytes], timeout_s: float = stop_timeout_s) -> int | None:
    """SIGKILL (after SIGCONT is pointless: SIGKILL ends a stopped process too) and wait."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    with _live_lock:
        _live.discard(process)
    return code


_open_clusters: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def _reap_everything() -> None:
    for cluster in list(_open_clusters):
        with contextlib.suppress(Exception):
            cluster.close()
    with _live_lock:
        processes = list(_live)
    for process in processes:
        reap_process(process, timeout_s=2.0)


# ---- ports ------------------------------------------------------------------------------------


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_free(port: int) -> bool:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((HOST, port))
        probe.listen(1)
        return True
    except OSError:
        return False
    finally:
        probe.close()


_claimed_ports: set[int] = set()  # ports handed out by this process: never handed out twice


def free_ports(count: int, *, consecutive: bool = False) -> list[int]:
    """`count` free TCP ports on 127.0.0.1 below the ephemeral range (consecutive if asked)."""
    high = min(_ephemeral_low(), 65536) - count
    low = 20000 if high > 21000 else 1024
    rng = random.Random()
    for _ in range(2000):
        if consecutive:
            start = rng.randrange(low, high)
            candidates = list(range(start, start + count))
        else:
            candidates = rng.sample(range(low, high), count)
        if any(port in _claimed_ports for port in candidates):
            continue
        if all(_port_free(port) for port in candidates):
            _claimed_ports.update(candidates)
            return candidates
    raise RuntimeError(f"found no {count} free ports on {HOST}")


# ---- HTTP ---------------------------------------------------------------------------------------


class Unreachable(Exception):
    """No HTTP answer: connection refused or reset, or no answer before the timeout."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or the raw text when the body is not JSON
    headers: dict[str, str]

    @property
    def code(self) -> str:
        """The error code of an error answer ('' if the body is not an Allot error)."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            return str(self.body["error"].get("code", ""))
        return ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _target(path: str, params: dict[str, str] | None) -> str:
    if not params:
        return path
    return f"{path}{'&' if '?' in path else '?'}{urllib.parse.urlencode(params)}"


def http_request(
    address: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    timeout_s: float = request_timeout_s_default,
) -> Reply:
    """One request on a new connection. Raises Unreachable when no HTTP answer arrives."""
    sent = dict(headers or {})
    if token is not None:
        sent.setdefault("Authorization", f"Bearer {token}")
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        sent.setdefault("Content-Type", "application/json")
    host, port = _split(address)
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request(method, _target(path, params), body=data, headers=sent)
        response = connection.getresponse()
        payload = response.read()
        reply_headers = {key: value for key, value in response.getheaders()}
        status = response.status
    except (OSError, http.client.HTTPException) as exc:
        raise Unreachable(f"{method} {path} on {address}: {type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()
    text = payload.decode("utf-8", "replace")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return Reply(status, parsed, reply_headers)


class WatchStream:
    """An open `GET /v1/watch` answer, read one NDJSON line at a time."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response
        self.status = response.status

    def next_line(self, timeout_s: float) -> dict[str, Any] | None:
        """The next event or bookmark; None when the stream ended or nothing came in time."""
        sock = self._connection.sock
        if sock is not None:
            sock.settimeout(max(0.01, timeout_s))
        try:
            line = self._response.readline()
        except (OSError, http.client.HTTPException):
            return None
        if not line:
            return None
        value: dict[str, Any] = json.loads(line)
        return value

    def close(self) -> None:
        """Drop the connection, as a client that goes away mid-stream would."""
        with contextlib.suppress(OSError):
            if self._connection.sock is not None:
                self._connection.sock.shutdown(socket.SHUT_RDWR)
        self._connection.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_watch(
    address: str,
    token: str,
    *,
    kinds: str,
    resource_version: int | None,
    timeout_seconds: int = 60,
    connect_timeout_s: float = request_timeout_s_default,
) -> WatchStream:
    params = {"kinds": kinds, "timeoutSeconds": str(timeout_seconds)}
    if resource_version is not None:
        params["resourceVersion"] = str(resource_version)
    host, port = _split(address)
    connection = http.client.HTTPConnection(host, port, timeout=connect_timeout_s)
    try:
        connection.request("GET", _target("/v1/watch", params), headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
    except (OSError, http.client.HTTPException) as exc:
        connection.close()
        raise Unreachable(f"watch on {address}: {type(exc).__name__}: {exc}") from exc
    return WatchStream(connection, response)


def wait_until(
    what: str,
    probe: Callable[[], T | None],
    timeout_s: float,
    *,
    on_timeout: Callable[[], str] | None = None,
    interval_s: float = poll_interval_s,
) -> T:
    """Poll `probe` until it returns something other than None (or False); fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout is not None else ""
            raise AssertionError(f"timed out after {timeout_s:.1f} s waiting for {what}\n{detail}")
        time.sleep(interval_s)


# ---- members --------------------------------------------------------------------------------


@dataclass
class MemberProcess:
    member_id: str
    raft_address: str
    http_address: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    stopped: bool = False  # SIGSTOPped by us
    starts: int = 0
    exit_codes: list[int | None] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


def serve_command(
    member_id: str,
    members: dict[str, str],
    http_address: str,
    data_dir: Path,
    secret_file: Path,
    token_file: Path,
    snapshot_entries: int | None = None,
) -> list[str]:
    """The `allot serve` command line for one member (as `allot up` builds it)."""
    command = [
        sys.executable,
        "-m",
        "node.cli",
        "serve",
        "--member-id",
        member_id,
        "--members",
        ",".join(f"{member}={address}" for member, address in members.items()),
        "--http",
        http_address,
        "--data-dir",
        str(data_dir),
        "--secret-file",
        str(secret_file),
        "--tokens",
        str(token_file),
    ]
    if snapshot_entries is not None:
        command += ["--snapshot-entries", str(snapshot_entries)]
    return command


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONHASHSEED", None)
    return env


def write_secret(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"test-cluster-secret-{os.urandom(24).hex()}\n")


@dataclass(frozen=True)
class Converged:
    applied_index: int
    digest: str
    revision: int


@dataclass(frozen=True)
class StoredState:
    """A stopped member's state read from its data directory: index, digest, invariant problems."""

    member_id: str
    applied_index: int
    digest: str
    problems: tuple[str, ...]  # empty when check_invariants passes


def link_name(member_a: str, member_b: str) -> str:
    """The name of the proxied link between two members (order does not matter)."""
    first, second = sorted((member_a, member_b))
    return f"{first}-{second}"


class Cluster:
    """Three (or `size`) real members on 127.0.0.1. Use as a context manager."""

    def __init__(
        self,
        *,
        size: int = 3,
        snapshot_entries: int | None = None,
        base_dir: Path | None = None,
        keep_dir: bool | None = None,
        partitionable: bool = False,
    ) -> None:
        self._owns_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="allot-cluster-")) if base_dir is None else base_dir
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.keep_dir = bool(os.environ.get("ALLOT_KEEP_CLUSTER_DIR")) if keep_dir is None else keep_dir
        self.snapshot_entries = snapshot_entries
        self.secret_file = self.base_dir / "cluster.secret"
        write_secret(self.secret_file)
        self.token_file = self.base_dir / "tokens.json"
        document = generate_token_file(self.token_file)
        entries = document["tokens"]
        self.admin_token: str = next(entry["token"] for entry in entries if entry["role"] == "admin")
        self.tenant_tokens: dict[str, str] = {
            f"{entry['org']}/{entry['project']}": entry["token"] for entry in entries if entry["role"] != "admin"
        }
        self.partitionable = partitionable
        # Member id -> a source tree to run that member from, for tests of mixed builds; a
        # member not named here runs this checkout (REPO_ROOT). Read at each start.
        self.source_roots: dict[str, Path] = {}
        # Member id -> environment variables for that member only (a wrong wall clock: node/clock.py).
        # Read at each start.
        self.member_env: dict[str, dict[str, str]] = {}
        pairs = size * (size - 1) // 2 if partitionable else 0
        ports = free_ports(2 * size + pairs)
        raft_and_proxy_ports = ports[: size + pairs]
        if partitionable:
            # Proxy ports below every member's Raft port, Raft ports ascending by member number:
            # see the module docstring for why the order matters to pysyncobj.
            raft_and_proxy_ports = sorted(raft_and_proxy_ports)
            if len({len(str(port)) for port in raft_and_proxy_ports}) != 1:
                raise RuntimeError(f"partitionable clusters need ports of one width, got {raft_and_proxy_ports}")
        proxy_ports, raft_ports = raft_and_proxy_ports[:pairs], raft_and_proxy_ports[pairs:]
        http_ports = ports[size + pairs :]
        self.members: dict[str, MemberProcess] = {}
        for number in range(1, size + 1):
            member_id = f"m{number}"
            self.members[member_id] = MemberProcess(
                member_id=member_id,
                raft_address=f"{HOST}:{raft_ports[number - 1]}",
                http_address=f"{HOST}:{http_ports[number - 1]}",
                data_dir=self.base_dir / member_id,
                log_path=self.base_dir / f"{member_id}.log",
            )
        self._member_views: dict[str, dict[str, str]] = {member_id: self.raft_addresses for member_id in self.members}
        # Members that exited without the harness ending them (a member stops itself on a
        # broken invariant): (member id, exit code, time.monotonic() when noticed).
        self.unexpected_exits: list[tuple[str, int, float]] = []
        self._accounted: set[subprocess.Popen[bytes]] = set()  # processes _note_exit has seen
        self.proxies: ProxyHub | None = None
        self._closed = False
        _open_clusters.add(self)
        if partitionable:
            self._plan_links(proxy_ports)

    # -- lifecycle --

    def __enter__(self) -> Cluster:
        try:
            if not any(member.process is not None for member in self.members.values()):
                self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout_s: float = leader_timeout_s) -> str:
        """Start every member; return the leader once all agree on one."""
        for member_id in self.members:
            self.start_member(member_id, wait=False)
        for member_id in self.members:
            self.wait_member_up(member_id)
        return self.wait_for_leader(timeout_s)

    def close(self) -> None:
        """Kill and reap every member, close the proxies, remove the directory (unless kept). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for member in self.members.values():
            if member.process is not None:
                self._note_exit(member)
                member.exit_codes.append(reap_process(member.process))
                member.process = None
                member.stopped = False
        if self.proxies is not None:
            self.proxies.close()
        if self._owns_dir and not self.keep_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    @property
    def member_ids(self) -> list[str]:
        return list(self.members)

    @property
    def raft_addresses(self) -> dict[str, str]:
        return {member_id: member.raft_address for member_id, member in self.members.items()}

    def member_view(self, member_id: str) -> dict[str, str]:
        """The member list (id -> Raft address) on this member's command line."""
        return dict(self._member_views[member_id])

    def running_ids(self) -> list[str]:
        return [member_id for member_id, member in self.members.items() if member.running and not member.stopped]

    def _note_exit(self, member: MemberProcess) -> None:
        """Call before the harness ends or replaces a process: if it had already exited by
        itself, remember that in `unexpected_exits`. Each process is accounted for once."""
        process = member.process
        if process is None or process in self._accounted:
            return
        self._accounted.add(process)
        code = process.poll()
        if code is not None:
            self.unexpected_exits.append((member.member_id, code, time.monotonic()))

    def start_member(self, member_id: str, *, wait: bool = True) -> None:
        member = self.members[member_id]
        if member.running:
            raise RuntimeError(f"{member_id} is already running (pid {member.pid})")
        if member.process is not None:  # it exited by itself: record that before replacing it
            self._note_exit(member)
            member.exit_codes.append(member.process.returncode)
            with _live_lock:
                _live.discard(member.process)
        member.data_dir.mkdir(parents=True, exist_ok=True)
        member.starts += 1
        command = serve_command(
            member_id,
            self.member_view(member_id),
            member.http_address,
            member.data_dir,
            self.secret_file,
            self.token_file,
            self.snapshot_entries,
        )
        with open(member.log_path, "ab") as log:
            log.write(f"\n=== harness: start #{member.starts} of {member_id} at {time.time():.3f} ===\n".encode())
            log.flush()
            member.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.source_roots.get(member_id, REPO_ROOT),  # `python -m` imports from here first
                env={**child_environment(), **self.member_env.get(member_id, {})},
                start_new_session=True,  # a Ctrl-C of the test run is ours to handle, not theirs
            )
        register_process(member.process)
        member.stopped = False
        if wait:
            self.wait_member_up(member_id)

    def wait_member_up(self, member_id: str, timeout_s: float = start_timeout_s) -> None:
        member = self.members[member_id]

        def healthy() -> bool:
            self._require_running(member_id)
            try:
                return http_request(member.http_address, "GET", "/healthz", timeout_s=1.0).status == 200
            except Unreachable:
                return False

        wait_until(f"{member_id} to answer /healthz", healthy, timeout_s, on_timeout=self.log_tails)

    def _require_running(self, member_id: str) -> None:
        member = self.members[member_id]
        if member.process is None or member.process.poll() is None:
            return
        code = member.process.returncode
        raise AssertionError(f"member {member_id} exited unexpectedly with code {code}\n{self.log_tails()}")

    def check_running(self, member_ids: Sequence[str] | None = None) -> None:
        """Fail (with log tails) if a member that should be running has exited."""
        for member_id in member_ids or self.running_ids():
            self._require_running(member_id)

    # -- faults --

    def kill(self, member_id: str) -> None:
        """SIGKILL the member and reap it."""
        member = self.members[member_id]
        if member.process is None:
            return
        self._note_exit(member)
        member.exit_codes.append(reap_process(member.process))
        member.process = None
        member.stopped = False

    def kill_all(self) -> None:
        """SIGKILL every member at (nearly) the same moment, then reap them."""
        for member in self.members.values():
            self._note_exit(member)
        processes = [member.process for member in self.members.values() if member.process is not None]
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for member_id in self.members:
            self.kill(member_id)

    def terminate(self, member_id: str, timeout_s: float = stop_timeout_s) -> int | None:
        """SIGTERM (a clean stop); SIGKILL if it does not exit in time. Returns the exit code."""
        member = self.members[member_id]
        if member.process is None:
            return None
        self._note_exit(member)
        process = member.process
        if member.stopped:
            self.cont(member_id)
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
        try:
            code: int | None = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        reap_process(process)
        member.exit_codes.append(code)
        member.process = None
        return code

    def stop(self, member_id: str) -> None:
        """SIGSTOP: the process freezes, its sockets stay open (a hung machine, a GC pause)."""
        member = self.members[member_id]
        if member.process is None or member.process.poll() is not None:
            raise RuntimeError(f"{member_id} is not running")
        member.process.send_signal(signal.SIGSTOP)
        member.stopped = True

    def cont(self, member_id: str) -> None:
        member = self.members[member_id]
        if member.process is not None and member.process.poll() is None:
            member.process.send_signal(signal.SIGCONT)
        member.stopped = False

    def restart(self, member_id: str, *, wait: bool = True) -> None:
        """Start a member that was killed (or kill it first), keeping its data."""
        if self.members[member_id].running:
            self.kill(member_id)
        self.start_member(member_id, wait=wait)

    def wipe(self, member_id: str) -> None:
        """Delete a (dead) member's data directory."""
        member = self.members[member_id]
        if member.running:
            raise RuntimeError(f"kill {member_id} before wiping its data")
        shutil.rmtree(member.data_dir, ignore_errors=True)

    def wipe_and_restart(self, member_id: str, *, wait: bool = True) -> None:
        self.kill(member_id)
        self.wipe(member_id)
        self.start_member(member_id, wait=wait)

    # -- partitions (partitionable clusters only) --

    def _plan_links(self, proxy_ports: list[int]) -> None:
        """One proxy per pair of members, on the side of the member that opens the connection."""
        by_port = sorted(self.members.values(), key=lambda member: _split(member.raft_address)[1])
        pairs = [(low, high) for position, low in enumerate(by_port) for high in by_port[position + 1 :]]
        self.proxies = ProxyHub()
        for (acceptor, connector), proxy_port in zip(pairs, proxy_ports, strict=True):
            name = link_name(acceptor.member_id, connector.member_id)
            self.proxies.add_link(name, proxy_port, acceptor.raft_address)
            self._member_views[connector.member_id][acceptor.member_id] = f"{HOST}:{proxy_port}"

    def _require_proxies(self) -> ProxyHub:
        if self.proxies is None:
            raise RuntimeError("this cluster has no proxied links: create it with Cluster(partitionable=True)")
        return self.proxies

    def cut_links(self, pairs: Sequence[tuple[str, str]], mode: CutMode = CutMode.STALL) -> None:
        """Cut the links between the given pairs of members (both directions)."""
        self._require_proxies().cut([link_name(first, second) for first, second in pairs], mode)

    def partition(self, groups: Sequence[Sequence[str]], mode: CutMode = CutMode.STALL) -> list[str]:
        """Cut every link between members of different groups; members not named form one more group.

        Returns the names of the links cut."""
        named = [member_id for group in groups for member_id in group]
        unknown = sorted(set(named) - set(self.members))
        if unknown or len(named) != len(set(named)):
            raise ValueError(f"groups must name distinct members of {self.member_ids}: {groups}")
        rest = [member_id for member_id in self.members if member_id not in named]
        all_groups = [list(group) for group in groups] + ([rest] if rest else [])
        group_of = {member_id: number for number, group in enumerate(all_groups) for member_id in group}
        cut = [
            (first, second)
            for position, first in enumerate(self.members)
            for second in list(self.members)[position + 1 :]
            if group_of[first] != group_of[second]
        ]
        self.cut_links(cut, mode)
        return [link_name(first, second) for first, second in cut]

    def isolate(self, member_id: str, mode: CutMode = CutMode.STALL) -> list[str]:
        """Cut the member off from every other member (its HTTP port stays reachable)."""
        return self.partition([[member_id]], mode)

    def heal_links(self) -> None:
        """Open every proxied link again (a no-op for clusters without proxies)."""
        if self.proxies is not None:
            self.proxies.heal()

    def link_stats(self) -> list[LinkStats]:
        return self._require_proxies().stats()

    # -- offline inspection --

    def inspect_stored_state(self, member_id: str) -> StoredState:
        """Open a stopped member's store: applied index, digest, and check_invariants' verdict."""
        member = self.members[member_id]
        if member.running:
            raise RuntimeError(f"stop {member_id} before reading its store")
        store = LmdbStore(member.data_dir / "state")
        try:
            applied_index, state_digest = store.digest_at()
            with store.reader() as view:
                try:
                    check_invariants(view)
                    problems: tuple[str, ...] = ()
                except InvariantViolation as exc:
                    problems = tuple(str(exc).split("; "))
        finally:
            store.close()
        return StoredState(member_id, applied_index, state_digest, problems)

    def ensure_all_running(self, timeout_s: float = converge_timeout_s) -> str:
        """Open cut links, resume stopped members, start dead ones, wait for a leader and convergence."""
        self.heal_links()
        for member_id, member in self.members.items():
            if member.stopped:
                self.cont(member_id)
            if not member.running:
                self.start_member(member_id, wait=False)
        for member_id in self.members:
            self.wait_member_up(member_id)
        leader = self.wait_for_leader(timeout_s)
        self.wait_converged(timeout_s=timeout_s)
        return leader

    # -- HTTP --

    def address(self, member_id: str) -> str:
        return self.members[member_id].http_address

    def request(
        self,
        member_id: str,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        timeout_s: float = request_timeout_s_default,
        anonymous: bool = False,
    ) -> Reply:
        """A request to one member, as the admin unless `token` (or `anonymous`) says otherwise."""
        chosen = None if anonymous else (token or self.admin_token)
        return http_request(
            self.address(member_id),
            method,
            path,
            token=chosen,
            body=body,
            raw=raw,
            headers=headers,
            params=params,
            timeout_s=timeout_s,
        )

    def status(self, member_id: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
        """The member's /v1/status, or None if it does not answer."""
        try:
            reply = self.request(member_id, "GET", "/v1/status", timeout_s=timeout_s)
        except Unreachable:
            return None
        if reply.status != 200 or not isinstance(reply.body, dict):
            return None
        return reply.body

    def statuses(self, member_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any] | None]:
        return {member_id: self.status(member_id) for member_id in (member_ids or self.running_ids())}

    def list_all(
        self,
        member_id: str,
        plural: str,
        *,
        token: str | None = None,
        consistency: str = "stale",
        page_limit: int = 500,
        timeout_s: float = request_timeout_s_default,
    ) -> list[dict[str, Any]]:
        """Every object of a kind the token may see, following `continue` tokens."""
        items: list[dict[str, Any]] = []
        continue_token: str | None = None
        for _ in range(10_000):
            params = {"limit": str(page_limit), "consistency": consistency}
            if continue_token:
                params["continue"] = continue_token
            reply = self.request(member_id, "GET", f"/v1/{plural}", token=token, params=params, timeout_s=timeout_s)
            if reply.status != 200:
                raise AssertionError(f"listing {plural} on {member_id}: {reply.status} {reply.body}")
            items.extend(reply.body["items"])
            continue_token = reply.body["metadata"].get("continue")
            if not continue_token:
                return items
        raise AssertionError(f"listing {plural} on {member_id} did not end")

    # -- waits --

    def leader(self, member_ids: Sequence[str] | None = None) -> str | None:
        """The leader the given members (default: running ones) all name, if they agree now."""
        candidates = list(member_ids or self.running_ids())
        statuses = [self.status(member_id) for member_id in candidates]
        if not statuses or any(status is None for status in statuses):
            return None
        leaders = {status["leader"] for status in statuses if status is not None}
        if len(leaders) != 1:
            return None
        leader = leaders.pop()
        if leader not in candidates:
            return None
        own = statuses[candidates.index(leader)]
        if own is None or own.get("role") != "leader":
            return None
        return str(leader)

    def wait_for_leader(self, timeout_s: float = leader_timeout_s, member_ids: Sequence[str] | None = None) -> str:
        """Wait until the given members (default: running ones) agree on a leader among them."""

        def probe() -> str | None:
            ids = list(member_ids or self.running_ids())
            self.check_running(ids)
            return self.leader(ids)

        return wait_until("the members to agree on a leader", probe, timeout_s, on_timeout=self.describe)

    def converged(self, member_ids: Sequence[str] | None = None) -> Converged | None:
        """Applied index, digest and revision, if the members agree on them (digest current)."""
        statuses = [self.status(member_id) for member_id in (member_ids or self.running_ids())]
        seen: set[tuple[int, str, int]] = set()
        for status in statuses:
            if status is None or not status.get("digest") or status.get("digestIndex") != status.get("appliedIndex"):
                return None
            seen.add((int(status["appliedIndex"]), str(status["digest"]), int(status["revision"])))
        if len(seen) != 1:
            return None
        applied, state_digest, revision = seen.pop()
        return Converged(applied, state_digest, revision)

    def wait_converged(
        self, *, timeout_s: float = converge_timeout_s, member_ids: Sequence[str] | None = None
    ) -> Converged:
        """Wait until the members (default: running ones) hold the same applied index and digest."""

        def probe() -> Converged | None:
            ids = list(member_ids or self.running_ids())
            self.check_running(ids)
            return self.converged(ids)

        return wait_until("the members to converge", probe, timeout_s, on_timeout=self.describe)

    # -- diagnostics --

    def log_tail(self, member_id: str, lines: int = log_tail_lines) -> str:
        try:
            text = self.members[member_id].log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self, member_id: str) -> str:
        try:
            return self.members[member_id].log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tails(self, lines: int = log_tail_lines) -> str:
        parts = []
        for member_id, member in self.members.items():
            state = "stopped" if member.stopped else "running" if member.running else "down"
            parts.append(f"----- {member_id} ({state}, pid {member.pid}) last {lines} log lines -----")
            parts.append(self.log_tail(member_id, lines))
        return "\n".join(parts)

    def describe(self) -> str:
        """Each member's status (as far as it answers) and log tail: printed when a wait fails."""
        lines = ["member statuses:"]
        for member_id, member in self.members.items():
            status = self.status(member_id, timeout_s=0.5) if member.running and not member.stopped else None
            lines.append(f"  {member_id}: {json.dumps(status, sort_keys=True) if status else 'no answer'}")
        text = "\n".join(lines) + "\n" + self.log_tails()
        print(text, file=sys.stderr, flush=True)
        return text


@contextlib.contextmanager
def running_cluster(**kwargs: Any) -> Iterator[Cluster]:
    with Cluster(**kwargs) as cluster:
        yield cluster
