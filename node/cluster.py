"""`allot up`: a local three-member cluster on 127.0.0.1, in the foreground.

The first start generates a cluster secret and a token file (an admin and two demo tenants in
different orgs) under the data directory, owner-only. Later starts reuse them and the members'
data. Ctrl-C stops all three members (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.accelerate import build_state
from node.tokens import generate_token_file

members_count = 3
start_timeout_s = 60.0
stop_grace_s = 10.0
poll_interval_s = 0.1


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


def up(
    base_dir: Path,
    http_port: int,
    raft_port: int,
    token_file: Path | None,
    timing_flags: dict[str, float] | None = None,
) -> int:
    """Start (or restart) the local cluster in the foreground. `timing_flags` are passed to
    every member's `allot serve` (`--node-grace-seconds`, ...)."""
    base_dir.mkdir(parents=True, exist_ok=True)
    secret = base_dir / "cluster.secret"
    ensure_secret(secret)
    tokens = token_file or base_dir / "tokens.json"
    if token_file is None and not tokens.exists():
        generate_token_file(tokens)
    try:
        document = json.loads(tokens.read_text())
        admin_token = next(entry["token"] for entry in document["tokens"] if entry.get("role") == "admin")
    except (OSError, ValueError, KeyError, StopIteration):
        print(f"allot up: {tokens} has no admin token; fix it or remove it to generate a new one", file=sys.stderr)
        return 2
    members = plan(base_dir, http_port, raft_port)
    processes: list[subprocess.Popen[bytes]] = []
    interrupted = False

    def on_signal(_signum: int, _frame: Any) -> None:
        nonlocal interrupted
        interrupted = True

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for member in members:
            member.data_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(member.data_dir / "member.log", "ab")  # noqa: SIM115 - the child owns it
            processes.append(
                subprocess.Popen(
                    member_command(member, members, secret, tokens, timing_flags),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches us; we stop the members in order
                )
            )
            log_file.close()
        leader = wait_for_leader(members, processes, admin_token, lambda: interrupted)
        if leader is None:
            return 1
        print_banner(members, leader, tokens, document)
        while not interrupted:
            for member, process in zip(members, processes, strict=True):
                if process.poll() is not None:
                    print(
                        f"allot up: member {member.member_id} exited with {process.returncode}; "
                        f"see {member.data_dir / 'member.log'}. Stopping the cluster.",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(0.2)
        print("\nallot up: stopping the cluster ...", flush=True)
        return 0
    finally:
        stop_all(processes)
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def wait_for_leader(
    members: list[PlannedMember],
    processes: list[subprocess.Popen[bytes]],
    admin_token: str,
    interrupted: Any,
) -> str | None:
    deadline = time.monotonic() + start_timeout_s
    while time.monotonic() < deadline and not interrupted():
        for member, process in zip(members, processes, strict=True):
            if process.poll() is not None:
                log = (member.data_dir / "member.log").read_text(errors="replace").strip().splitlines()[-5:]
                print(f"allot up: member {member.member_id} failed to start:", *log, sep="\n  ", file=sys.stderr)
                return None
        statuses = [fetch_status(member.http_address, admin_token) for member in members]
        leaders = {status["leader"] for status in statuses if status is not None and status.get("leader")}
        if len(leaders) == 1 and all(status is not None for status in statuses):
            return str(leaders.pop())
        time.sleep(poll_interval_s)
    if not interrupted():
        print(f"allot up: no leader after {start_timeout_s:.0f} s; see the member.log files", file=sys.stderr)
    return None


def print_banner(members: list[PlannedMember], leader: str, tokens: Path, document: dict[str, Any]) -> None:
    print("Allot is up: a three-member cluster on 127.0.0.1 (Ctrl-C stops it; data stays for next time)")
    for member in members:
        role = "leader" if member.member_id == leader else "follower"
        print(f"  {member.member_id}  http://{member.http_address}  ({role})  data: {member.data_dir}")
    print(f"State machine: {build_state().reason}")
    print(f"Tokens (from {tokens}):")
    for entry in document["tokens"]:
        who = "admin" if entry.get("role") == "admin" else f"{entry.get('org')}/{entry.get('project')}"
        print(f"  {who:<14} {entry['token']}")
    first = members[0].http_address
    print("Try:")
    print(f"  curl -s -H 'Authorization: Bearer <admin token>' http://{first}/v1/status")
    sys.stdout.flush()
