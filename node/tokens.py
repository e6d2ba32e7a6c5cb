"""Bearer tokens: who a request comes from.

A token file is JSON:

    {"tokens": [{"token": "...", "name": "ci", "org": "acme", "project": "web", "role": "member"},
                {"token": "...", "name": "root", "role": "admin"}]}

Rules (checked when the file is loaded; a broken file is refused with the entry and field to fix):

* `token`: at least `token_chars_min` characters, printable ASCII without spaces (it travels in
  an HTTP header), unique across the file.
* `name`: who holds it (1-128 characters). Names may repeat, so a principal can hold an old and
  a new token while rotating.
* `role`: `admin` or `member`. A member token belongs to exactly one tenant and needs `org` and
  `project` (DNS labels). An admin token names no tenant: it acts for the platform, and for a
  tenant only when a request says so explicitly (see node/http.py).
* No other fields.

Lookups hash the presented token with SHA-256 and look the digest up in a dict: the time a
lookup takes does not depend on how much of a real token the presented one shares, so tokens
cannot be guessed byte by byte from response times.

The file is re-read when it changes (mtime, size or inode differ), checked at most once every
`reload_interval_s` on lookup: members pick up added or revoked tokens without a restart. A
broken new file keeps the tokens already loaded and logs why, so a typo cannot lock everyone
out; the file is tried again once it changes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from statemachine.codec import ROLE_ADMIN, ROLE_MEMBER, Principal

log = logging.getLogger("allot.tokens")

token_chars_min = 32  # secrets.token_urlsafe(32) gives 43
token_chars_max = 512
name_chars_max = 128
tokens_max = 10_000
token_file_bytes_max = 4 * 1024 * 1024
reload_interval_s = 1.0

_dns_label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_token_chars = re.compile(r"[\x21-\x7e]+")
_entry_fields = {"token", "name", "org", "project", "role"}


class TokenFileError(Exception):
    """The token file cannot be used; the message says which entry and field to fix."""


@dataclass(frozen=True)
class TokenEntry:
    name: str
    org: str
    project: str
    role: str

    def principal(self) -> Principal:
        return Principal(self.name, self.org, self.project, self.role)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _check_entry(position: int, raw: Any) -> tuple[str, TokenEntry]:
    where = f"tokens[{position}]"
    if not isinstance(raw, dict):
        raise TokenFileError(f"{where} must be an object")
    unknown = sorted(set(raw) - _entry_fields)
    if unknown:
        raise TokenFileError(f"{where} has unknown field(s) {', '.join(unknown)}; allowed: {sorted(_entry_fields)}")
    token = raw.get("token")
    if not isinstance(token, str) or not _token_chars.fullmatch(token):
        raise TokenFileError(f"{where}.token must be a string of printable ASCII characters without spaces")
    if not token_chars_min <= len(token) <= token_chars_max:
        raise TokenFileError(
            f"{where}.token is {len(token)} characters; tokens are {token_chars_min}-{token_chars_max} "
            "(generate one with: python -c 'import secrets; print(\"allot_\" + secrets.token_urlsafe(32))')"
        )
    name = raw.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= name_chars_max:
        raise TokenFileError(f"{where}.name must be a string of 1-{name_chars_max} characters")
    role = raw.get("role")
    if role not in (ROLE_ADMIN, ROLE_MEMBER):
        raise TokenFileError(f"{where}.role must be {ROLE_ADMIN!r} or {ROLE_MEMBER!r}, not {role!r}")
    org = raw.get("org", "")
    project = raw.get("project", "")
    for field, value in (("org", org), ("project", project)):
        if not isinstance(value, str) or (value and not _dns_label.fullmatch(value)):
            raise TokenFileError(
                f"{where}.{field} {value!r} must be a DNS label: 1-63 lowercase letters, digits or '-', "
                "starting and ending with a letter or digit"
            )
    if role == ROLE_MEMBER and not (org and project):
        raise TokenFileError(f"{where} ({name}): a member token needs both org and project")
    if role == ROLE_ADMIN and (org or project):
        raise TokenFileError(
            f"{where} ({name}): an admin token names no tenant (drop org and project); "
            "an admin acts for a tenant per request with ?org=&project="
        )
    return token, TokenEntry(name, org, project, role)


def parse_token_file(data: bytes) -> dict[bytes, TokenEntry]:
    """Check a token file's contents; return {sha256(token): entry}. Raises TokenFileError."""
    if len(data) > token_file_bytes_max:
        raise TokenFileError(f"the file is {len(data)} bytes; the limit is {token_file_bytes_max}")
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise TokenFileError(f"not valid JSON: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"tokens"} or not isinstance(document["tokens"], list):
        raise TokenFileError('the file must be an object with exactly one field, "tokens": a list of tokens')
    entries: list[Any] = document["tokens"]
    if len(entries) > tokens_max:
        raise TokenFileError(f"the file holds {len(entries)} tokens; the limit is {tokens_max}")
    table: dict[bytes, TokenEntry] = {}
    for position, raw in enumerate(entries):
        token, entry = _check_entry(position, raw)
        key = _digest(token)
        if key in table:
            raise TokenFileError(f"tokens[{position}] ({entry.name}) repeats the token of {table[key].name}")
        table[key] = entry
    return table


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


class TokenStore:
    """The tokens of one file, reloaded when the file changes.

    Thread-safe: lookups may come from any thread; a reload replaces the table in one step.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reload_interval_s: float = reload_interval_s,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._reload_interval_s = reload_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int, int] | None = None
        self._checked_s = clock()
        self.last_error: str | None = None  # why the newest version of the file was refused
        try:
            st = self.path.stat()
            table = parse_token_file(self._read())
        except OSError as exc:
            raise TokenFileError(f"cannot read token file {self.path}: {exc.strerror or exc}") from None
        except TokenFileError as exc:
            raise TokenFileError(f"token file {self.path}: {exc}") from None
        self._warn_if_readable_by_others(st)
        self._table = table
        self._signature = _signature(st)

    def _read(self) -> bytes:
        with self.path.open("rb") as handle:
            return handle.read(token_file_bytes_max + 1)

    def _warn_if_readable_by_others(self, st: os.stat_result) -> None:
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("token file %s is accessible to group or others; chmod 600 it", self.path)

    def __len__(self) -> int:
        return len(self._table)

    def lookup(self, token: str) -> TokenEntry | None:
        """The entry of a presented token, or None when it is not one of ours."""
        self.maybe_reload()
        return self._table.get(_digest(token))

    def maybe_reload(self, *, force: bool = False) -> bool:
        """Re-read the file if it changed and the interval passed; True when new tokens were loaded."""
        now = self._clock()
        if not force and now - self._checked_s < self._reload_interval_s:
            return False
        with self._lock:
            self._checked_s = now
            try:
                st = self.path.stat()
            except OSError as exc:
                self._refuse(f"cannot stat it: {exc.strerror or exc}", None)
                return False
            signature = _signature(st)
            if signature == self._signature:
                return False
            try:
                table = parse_token_file(self._read())
            except OSError as exc:
                self._refuse(f"cannot read it: {exc.strerror or exc}", None)
                return False
            except TokenFileError as exc:
                self._refuse(str(exc), signature)
                return False
            self._warn_if_readable_by_others(st)
            self._table = table
            self._signature = signature
            self.last_error = None
            log.info("token file %s reloaded: %d token(s)", self.path, len(table))
            return True

    def _refuse(self, reason: str, signature: tuple[int, int, int, int] | None) -> None:
        message = f"token file {self.path} changed but {reason}; keeping the {len(self._table)} token(s) loaded before"
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message
        if signature is not None:
            self._signature = signature  # do not re-parse the same broken file every second


# ---- generating a file for a local cluster -----------------------------------------------

DEMO_TENANTS = (("acme", "web"), ("globex", "prod"))


def new_token() -> str:
    # The prefix keeps a generated token from starting with "-" (one urlsafe token in 64
    # does), which a command line reads as an option: `allot --token -Xy...` fails to parse.
    # It also lets secret scanners recognise an Allot token in a leaked file.
    return "allot_" + secrets.token_urlsafe(32)


def generate_token_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, Any]:
    """Write a token file for a local cluster: one admin and one member per demo tenant
    (acme/web and globex/prod, in different orgs). Owner-only (0600), written atomically.
    Returns the document written. Refuses to replace an existing file unless `overwrite`."""
    target = Path(path)
    if target.exists() and not overwrite:
        raise TokenFileError(f"{target} already exists; remove it or pass overwrite=True")
    document: dict[str, Any] = {"tokens": [{"token": new_token(), "name": "admin", "role": ROLE_ADMIN}]}
    for org, project in DEMO_TENANTS:
        document["tokens"].append(
            {"token": new_token(), "name": f"{org}-{project}", "org": org, "project": project, "role": ROLE_MEMBER}
        )
    parse_token_file(json.dumps(document).encode())  # what we write must load
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return document
