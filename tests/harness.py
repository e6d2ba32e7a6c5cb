"""A state machine on the in-memory store, driven the way the server drives it: one envelope at
a time, each at the next log position, each outcome's writes applied to the store."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.memstore import MemoryStore
from statemachine import Envelope, Ok, Outcome, Principal, Rejected, apply, encode_envelope, keys
from statemachine.invariants import check_invariants, digest

ADMIN = Principal("root", "", "", "admin")
BASE_TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parent.parent
CHILD_TIMEOUT_S = 120


def run_python(args: list[str], environment: Mapping[str, str] | None = None) -> str:
    """`python ARGS` in the project root, with this environment or `environment`: its stdout.
    Fails the test with the child's stderr unless it exits 0 within CHILD_TIMEOUT_S."""
    completed = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(os.environ if environment is None else environment),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def member(org: str, project: str, name: str = "user") -> Principal:
    return Principal(name, org, project, "member")


def admin_for(org: str, project: str) -> Principal:
    return Principal("root", org, project, "admin")


class Machine:
    def __init__(self, check_every_step: bool = False) -> None:
        self.store = MemoryStore()
        self.index = 0
        self.ts_ms = BASE_TS_MS
        self.check_every_step = check_every_step
        self.log: list[bytes] = []  # every envelope applied, for replay

    def run(
        self,
        principal: Principal,
        command_type: str,
        body: dict[str, Any],
        request_id: str | None = None,
        advance_ms: int = 1000,
    ) -> Outcome:
        self.ts_ms += advance_ms
        self.index += 1
        data = encode_envelope(Envelope(command_type, body, principal, request_id, self.ts_ms))
        self.log.append(data)
        outcome = apply(self.store, data, self.index)
        self.store.apply_writes(outcome.writes)
        if self.check_every_step:
            check_invariants(self.store)
        return outcome

    def ok(self, principal: Principal, command_type: str, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """Run a command that must succeed; return its value."""
        result = self.run(principal, command_type, body, **kwargs).result
        if not isinstance(result, Ok):
            raise AssertionError(f"{command_type} {body} was refused: {result}")
        return result.value

    def refused(self, principal: Principal, command_type: str, body: dict[str, Any], **kwargs: Any) -> Rejected:
        """Run a command that must be refused without changing state (under a request id, only
        the dedup record that remembers the refusal, and the meta record); return the refusal."""
        before = digest(self.store)
        outcome = self.run(principal, command_type, body, **kwargs)
        if not isinstance(outcome.result, Rejected):
            raise AssertionError(f"{command_type} {body} succeeded but should have been refused")
        if kwargs.get("request_id") is not None:
            bookkeeping = (keys.DEDUP, keys.DEDUP_EXPIRY, keys.META)
            others = [key for key, _ in outcome.writes if not key.startswith(bookkeeping)]
            if others:
                raise AssertionError(f"refused {command_type} changed state: {others[:5]}")
        elif outcome.writes or digest(self.store) != before:
            raise AssertionError(f"refused {command_type} changed state")
        return outcome.result

    def digest(self) -> str:
        return digest(self.store)

    def check(self) -> None:
        check_invariants(self.store)


def member_pids_using(directory: Path) -> list[int]:
    """Processes whose command line names this directory and `serve` (the members of `allot up`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"serve" in argv and any(str(directory).encode() in arg for arg in argv) and state != "Z":
            pids.append(int(entry.name))
    return pids
