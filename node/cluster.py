"""`allot up`: a local three-member cluster on 127.0.0.1, in the foreground.

The first start generates a cluster secret and a token file (an admin and two demo tenants in
different orgs) under the data directory, owner-only. Later starts reuse them and the members'
data. Ctrl-C stops all three members (SIGTERM, then SIGKILL after a grace period), after
quiescing them (SIGUSR1: they propose nothing more) and waiting up to `settle_timeout_s` until
every member has applied its whole log, all of it committed: an entry in flight at the stop
would be applied after the restart, with whatever build the members then run (a member stops
rather than apply an entry of another build: node/build_identity.py).

A member killed by a signal (`kill -9` or `kill` of the leader, to watch a failover) is
restarted on its own data a second later while the other two keep serving, at most
`restarts_max` times in `restart_window_s`. A member that exits by itself (a bad configuration,
a broken invariant: it stopped on purpose and says why in its log) stops the cluster:
restarting it would only repeat the failure. SIGHUP (the terminal closed) stops the cluster
like Ctrl-C; if `allot up` itself is killed, its members notice and stop (node/server.py).
Ports already in use (an earlier `allot up` still running) are refused before anything starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.accelerate import build_state
from node.config import PARENT_ENV
from node.raft import EXIT_INVARIANT
from node.tokens import TokenFileError, generate_token_file, parse_token_file

members_count = 3
start_timeout_s = 60.0
stop_grace_s = 10.0
settle_timeout_s = 3.0  # at Ctrl-C: waiting for every member to apply the committed log
poll_interval_s = 0.1
restart_delay_s = 1.0  # a killed member restarts after this: its failover is seen first
restarts_max = 5  # restarts of one member within restart_window_s; one more stops the cluster
restart_window_s = 60.0


@dataclass(frozen=True)
class PlannedMember:
    member_id: str
    http_address: str
    raft_address: str
    data_dir: Path


def plan(base_dir: Path, http_port: int, raft_port: int) -> list[PlannedMember]:
    return [
        PlannedMember(
            member_id=f"m{number}",
            http_address=f"127.0.0.1:{http_port + number - 1}",
            raft_address=f"127.0.0.1:{raft_port + number - 1}",
            data_dir=base_dir / f"m{number}",
        )
        for number in range(1, members_count + 1)
    ]


def ensure_secret(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")


# Where the running `node` package was imported from. Members import the same code from here
# (PYTHONPATH, with `python -P`, which leaves the current directory off the import path): `python
# -m` would otherwise import a `node/` package in the directory `allot up` runs in first, another
# checkout's perhaps, and the members would run other code than the command that started them.
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def member_environment(parent_pid: int) -> dict[str, str]:
    """The members' environment: this one, the parent's pid, and SOURCE_ROOT first on the path."""
    search_path = os.pathsep.join(item for item in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")) if item)
    return {**os.environ, PARENT_ENV: str(parent_pid), "PYTHONPATH": search_path}


def member_command(
    member: PlannedMember,
    members: list[PlannedMember],
    secret: Path,
    tokens: Path,
    timing_flags: dict[str, float] | None = None,
) -> list[str]:
    extra = [item for flag, value in (timing_flags or {}).items() for item in (flag, repr(float(value)))]
    return [
        sys.executable,
        "-P",  # SOURCE_ROOT, not the current directory: the code that runs `allot up`
        "-m",
        "node.cli",
        "serve",
        "--member-id",
        member.member_id,
        "--members",
        ",".join(f"{m.member_id}={m.raft_address}" for m in members),
        "--http",
        member.http_address,
        "--data-dir",
        str(member.data_dir),
        "--secret-file",
        str(secret),
        "--tokens",
        str(tokens),
        *extra,
    ]


def fetch_status(http_address: str, token: str, timeout_s: float = 1.0) -> dict[str, Any] | None:
    request = urllib.request.Request(f"http://{http_address}/v1/status", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status: dict[str, Any] = json.load(response)
            return status
    except (urllib.error.URLError, OSError, ValueError):
        return None


def settled(statuses: list[dict[str, Any] | None]) -> bool:
    """Every member answered, has taken its SIGUSR1 (`quiesced`: it proposes nothing more),
    and has committed and applied its whole log (`logSettled`), all at one commit index. (An
    entry appended but not committed would be committed after a restart, and applied then,
    with whatever build runs.) Without `quiesced`, a member whose event loop had not run its
    SIGUSR1 handler yet could look settled between two writes, take one more, and leave an
    entry of the old build in the log: its peers stopped at it after an upgrade (a full test
    run under load, 2026-12-08)."""
    if any(
        status is None or status.get("logSettled") is not True or status.get("quiesced") is not True
        for status in statuses
    ):
        return False
    return len({status.get("commitIndex") for status in statuses if status is not None}) == 1


def quiesce_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGUSR1 to every running member: it proposes nothing more (ReplicatedMember.quiesce), so
    the log stops growing and `settle` can see every member reach its end."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGUSR1)


def settle(
    members: list[PlannedMember],
    processes: list[subprocess.Popen[bytes]],
    admin_token: str,
    give_up: Callable[[], bool] = lambda: False,
) -> bool:
    """Wait, up to `settle_timeout_s` in all, until the running members have `settled`, or
    until `give_up()` (a second Ctrl-C). True when they settled; otherwise says why not."""
    running = [member for member, process in zip(members, processes, strict=True) if process.poll() is None]
    down = [member.member_id for member in members if member not in running]
    deadline = time.monotonic() + settle_timeout_s
    statuses: list[dict[str, Any] | None] = []
    while running:
        statuses = []
        for member in running:
            left_s = deadline - time.monotonic()
            statuses.append(fetch_status(member.http_address, admin_token, timeout_s=max(0.05, min(0.5, left_s))))
        if settled(statuses):
            if down:
                print(
                    f"allot up: {', '.join(down)} not running: it applies the rest of the log when it starts. "
                    "Before an upgrade, start the cluster once more on this build and stop it with all three up."
                )
            return not down
        if time.monotonic() >= deadline or give_up():
            break
        time.sleep(poll_interval_s)
    shown = [
        f"{member.member_id} "
        + (
            "no answer"
            if status is None
            else f"{'settled' if status.get('logSettled') else 'not settled'} at commit {status.get('commitIndex')}"
        )
        for member, status in zip(running, statuses, strict=False)
    ] + [f"{member_id} not running" for member_id in down]
    print(f"allot up: stopping before every member applied the whole log ({', '.join(shown)})")
    return False


def port_in_use(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the members bind: TIME_WAIT is free
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


def busy_ports(members: list[PlannedMember]) -> list[str]:
    """What of the members' addresses something else listens on, as 'm1 HTTP 127.0.0.1:8401'."""
    return [
        f"{member.member_id} {what} {address}"
        for member in members
        for what, address in (("HTTP", member.http_address), ("Raft", member.raft_address))
        if port_in_use(address)
    ]


def killed_by_signal(code: int) -> str | None:
    """The signal's name when an exit code says a signal ended the member: negative from
    Popen for an unhandled one, 128 + its number for SIGTERM and SIGINT, which it handles."""
    number = -code if code < 0 else code - 128 if code - 128 in (signal.SIGTERM, signal.SIGINT) else None
    if number is None:
        return None
    return signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_grace_s
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        if process.poll() is None:
            process.kill()
            process.wait()


def _token_file_problem(path: Path) -> str | None:
    """What keeps `allot up` from using this token file (the banner prints its admin token)."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "is a directory, not a token file"
    try:
        entries = parse_token_file(path.read_bytes())
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    except TokenFileError as exc:
        return str(exc)
    if not any(entry.role == "admin" for entry in entries.values()):
        return "has no admin token (an entry with role admin)"
    return None


def up(
    base_dir: Path,
    http_port: int,
    raft_port: int,
    token_file: Path | None,
    timing_flags: dict[str, float] | None = None,
) -> int:
    """Start (or restart) the local cluster in the foreground. `timing_flags` are passed to
    every member's `allot serve` (`--node-grace-seconds`, ...)."""
    if token_file is not None:  # checked before anything is written under base_dir
        problem = _token_file_problem(token_file)
        if problem is not None:
            print(f"allot up: --tokens {token_file}: {problem}", file=sys.stderr)
            return 2
    members = plan(base_dir, http_port, raft_port)
    busy = busy_ports(members)  # also before anything is written: "starts nothing" means no files either
    if busy:
        print(
            f"allot up: in use already: {', '.join(busy)}. Is an earlier allot up still running "
            f"(`pgrep -af 'node.cli serve'`)? Stop it, or choose other ports (--http-port, --raft-port).",
            file=sys.stderr,
        )
        return 2
    base_dir.mkdir(parents=True, exist_ok=True)
    secret = base_dir / "cluster.secret"
    ensure_secret(secret)
    tokens = token_file or base_dir / "tokens.json"
    if token_file is None and not tokens.exists():
        generate_token_file(tokens)
    problem = _token_file_problem(tokens)
    if problem is not None:
        print(f"allot up: {tokens}: {problem}; fix it, or remove it to generate a new one", file=sys.stderr)
        return 2
    document = json.loads(tokens.read_text())
    admin_token = next(entry["token"] for entry in document["tokens"] if entry.get("role") == "admin")
    processes: list[subprocess.Popen[bytes]] = []
    interrupted = False
    signals = 0  # a second Ctrl-C stops the members without waiting for them to settle

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal interrupted, signals
        interrupted = True
        signals += 1

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal was closed
    previous = {signum: signal.signal(signum, on_signal) for signum in handled}
    environment = member_environment(os.getpid())

    def start(member: PlannedMember) -> subprocess.Popen[bytes]:
        member.data_dir.mkdir(parents=True, exist_ok=True)
        with open(member.data_dir / "member.log", "ab") as log_file:  # the child keeps its own copy
            return subprocess.Popen(
                member_command(member, members, secret, tokens, timing_flags),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us; we stop the members in order
                env=environment,
            )

    try:
        for member in members:
            processes.append(start(member))
        leader = wait_for_leader(members, processes, admin_token, lambda: interrupted)
        if leader is None:
            return 1
        print_banner(members, [process.pid for process in processes], leader, tokens, document)
        supervisor = Supervisor(members)
        while not interrupted:
            for position, (member, process) in enumerate(zip(members, processes, strict=True)):
                code = process.poll()
                if code is None:
                    continue
                if not supervisor.restart_due(position, code, time.monotonic()):
                    return 1
                if supervisor.ready_to_start(position, time.monotonic()):
                    processes[position] = start(member)
                    pid = processes[position].pid
                    print(f"allot up: member {member.member_id} restarted on its data (pid {pid})", flush=True)
            time.sleep(0.2)
        print("\nallot up: stopping the cluster ...", flush=True)
        quiesce_all(processes)
        settle(members, processes, admin_token, lambda: signals > 1)
        return 0
    finally:
        stop_all(processes)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Supervisor:
    """Which exited members `up` restarts, and when (module docstring)."""

    def __init__(self, members: list[PlannedMember]) -> None:
        self._members = members
        self._due: dict[int, float] = {}  # position -> when its restart is due
        self._restarts: dict[int, list[float]] = {}  # position -> times of its recent restarts

    def restart_due(self, position: int, code: int, now: float) -> bool:
        """Note that the member at position exited with code; False (after saying why) when
        the cluster must stop instead of restarting it."""
        if position in self._due:
            return True
        member = self._members[position]
        log = member.data_dir / "member.log"
        name = killed_by_signal(code)
        if name is None:
            print(
                f"allot up: member {member.member_id} exited with {code}; see {log}. Stopping the cluster.",
                file=sys.stderr,
            )
            return False
        recent = [moment for moment in self._restarts.get(position, []) if now - moment < restart_window_s]
        if len(recent) >= restarts_max:
            print(
                f"allot up: member {member.member_id} was killed {len(recent) + 1} times within "
                f"{restart_window_s:.0f} s; see {log}. Stopping the cluster.",
                file=sys.stderr,
            )
            return False
        self._restarts[position] = recent
        self._due[position] = now + restart_delay_s
        down, members = len(self._due), len(self._members)
        if down == 1:
            others = "the others keep serving"
        elif down <= (members - 1) // 2:
            others = f"{down} of {members} members are down; the others keep serving"
        else:
            others = f"{down} of {members} members are down; writes wait until a majority is back"
        print(
            f"allot up: member {member.member_id} was killed by {name}; {others}. "
            f"Restarting it in {restart_delay_s:.0f} s on its data.",
            flush=True,
        )
        return True

    def ready_to_start(self, position: int, now: float) -> bool:
        due = self._due.get(position)
        if due is None or now < due:
            return False
        del self._due[position]
        self._restarts.setdefault(position, []).append(now)
        return True


def wait_for_leader(
    members: list[PlannedMember],
    processes: list[subprocess.Popen[bytes]],
    admin_token: str,
    interrupted: Any,
) -> str | None:
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline and not interrupted():
        for member, process in zip(members, processes, strict=True):
            code = process.poll()
            if code is not None:
                log = (member.data_dir / "member.log").read_text(errors="replace").strip().splitlines()[-5:]
                what = "stopped itself (exit 70)" if code == EXIT_INVARIANT else "failed to start"
                print(f"allot up: member {member.member_id} {what}:", *log, sep="\n  ", file=sys.stderr)
                return None
        statuses = [fetch_status(member.http_address, admin_token) for member in members]
        leaders = {status["leader"] for status in statuses if status is not None and status.get("leader")}
        if len(leaders) == 1 and all(status is not None for status in statuses):
            return str(leaders.pop())
        time.sleep(poll_interval_s)
    if not interrupted():
        print(f"allot up: no leader after {start_timeout_s:.0f} s; see the member.log files", file=sys.stderr)
    return None


def print_banner(
    members: list[PlannedMember], pids: list[int], leader: str, tokens: Path, document: dict[str, Any]
) -> None:
    print("Allot is up: a three-member cluster on 127.0.0.1 (Ctrl-C stops it; data stays for next time)")
    for member, pid in zip(members, pids, strict=True):
        role = "leader" if member.member_id == leader else "follower"
        print(f"  {member.member_id}  http://{member.http_address}  ({role})  pid {pid}  data: {member.data_dir}")
    print("A member killed by a signal (kill -9 the leader's pid to watch a failover) restarts a second later.")
    print(f"State machine: {build_state().reason}")
    print(f"Tokens (from {tokens}):")
    for entry in document["tokens"]:
        who = "admin" if entry.get("role") == "admin" else f"{entry.get('org')}/{entry.get('project')}"
        print(f"  {who:<14} {entry['token']}")
    first = members[0].http_address
    print("Try:")
    print(f"  curl -s -H 'Authorization: Bearer <admin token>' http://{first}/v1/status")
    sys.stdout.flush()
