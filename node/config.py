"""A member's configuration: flags or a JSON file, checked before anything starts.

Every mistake is reported at once with what to fix: a member id not among the members, a
malformed or non-loopback-looking address, two members on one port, a port already in use, a
missing or short cluster secret, an unreadable token file.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.files import write_atomically

_member_id_pattern = re.compile(r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?")
secret_chars_min = 32


class ConfigError(Exception):
    """The configuration cannot work; the message says what to change."""


@dataclass(frozen=True)
class Timing:
    """Raft timing, chosen for a LAN (node/DESIGN.md, "Replication", gives the reasons and measurements)."""

    append_entries_period_s: float = 0.05  # leader heartbeat
    election_timeout_min_s: float = 0.3
    election_timeout_max_s: float = 0.6
    connection_timeout_s: float = 10.0  # long enough for a snapshot transfer to finish
    leader_fallback_s: float = 1.0  # a leader cut off from the majority steps down this soon
    keepalive_s: float = 0.1  # warm peer links
    connection_retry_s: float = 0.25  # redial a member that is down this often (pysyncobj: 5 s)
    tick_period_s: float = 0.005
    batch_window_s: float = 0.001  # envelopes arriving within this become one log entry
    # A wiped follower installs the leader's last dump, then applies every entry after it: at
    # 1,000,000 allocations, dumps every 20,000 entries left ~150,000 claims to replay (rebuild
    # 32.9 s), every 5,000 entries ~50,000 (14.9 s); a dump is ~0.3 KiB per allocation
    # (docs/benchmarks.md, "Where the bytes go").
    log_compaction_entries: int = 5_000
    log_compaction_s: int = 600
    # The leader's scheduling timers (node/scheduling.py). A Ready node not heard for
    # node_grace_s becomes NotReady (Kubernetes' node-monitor-grace-period is 40 s); pending
    # pods get a queue sweep every pending_retry_s; a node NotReady for pod_eviction_s loses
    # its pods that do not tolerate node.kubernetes.io/unreachable (Kubernetes' default
    # tolerationSeconds for that taint is 300 s).
    node_grace_s: float = 40.0
    pending_retry_s: float = 2.0
    pod_eviction_s: float = 300.0


# Set by `allot up` in its members' environment to its own pid: a member whose parent is no
# longer that process stops (node/server.py), so killing `allot up` leaves no member running.
PARENT_ENV = "ALLOT_STOP_WITH_PARENT"

# Environment overrides for Timing fields an operator tunes per cluster (tests and benchmarks
# start `allot serve` processes and set these rather than new flags for every field).
TIMING_ENVIRONMENT = {
    "ALLOT_NODE_GRACE_SECONDS": "node_grace_s",
    "ALLOT_PENDING_RETRY_SECONDS": "pending_retry_s",
    "ALLOT_POD_EVICTION_SECONDS": "pod_eviction_s",
}
timing_seconds_max = 86_400.0


# The same fields as flags of `allot serve` / `allot up` and keys of a config file; a flag wins
# over the environment.
TIMING_FLAGS = {
    "node_grace_s": ("--node-grace-seconds", "nodeGraceSeconds"),
    "pending_retry_s": ("--pending-retry-seconds", "pendingRetrySeconds"),
    "pod_eviction_s": ("--pod-eviction-seconds", "podEvictionSeconds"),
}


def check_timing_value(value: object, name: str) -> float:
    """A timing setting's seconds, or a ConfigError naming where it came from (`name`: a flag,
    a config file key). NaN and infinity fail the range check."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}")
    if not 0.1 <= value <= timing_seconds_max:
        raise ConfigError(f"{name} {value:g} must be between 0.1 and {timing_seconds_max:g} seconds")
    return float(value)


def timing_with(timing: Timing, overrides: dict[str, float]) -> Timing:
    """`timing` with the TIMING_FLAGS fields in `overrides` replaced, each checked."""
    changes: dict[str, Any] = {
        name: check_timing_value(value, TIMING_FLAGS[name][0]) for name, value in overrides.items()
    }
    return dataclasses.replace(timing, **changes)


def timing_from_environment(
    timing: Timing, environ: dict[str, str] | None = None, given: Collection[str] = ()
) -> Timing:
    """`timing` with the fields named in TIMING_ENVIRONMENT replaced by the environment's values,
    except the fields in `given` (set by a flag, which wins: the variable is not even read)."""
    environ = dict(os.environ) if environ is None else environ
    changes: dict[str, Any] = {}
    for variable, field_name in TIMING_ENVIRONMENT.items():
        text = environ.get(variable)
        if field_name in given or text is None or not text.strip():
            continue
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{variable}={text!r} must be a number of seconds") from None
        if not 0.1 <= value <= timing_seconds_max:
            raise ConfigError(f"{variable}={text!r} must be between 0.1 and {timing_seconds_max:g} seconds")
        changes[field_name] = value
    return dataclasses.replace(timing, **changes) if changes else timing


@dataclass(frozen=True)
class MemberConfig:
    member_id: str
    members: dict[str, str]  # member id -> Raft address host:port (all members, self included)
    http_address: str  # host:port this member serves HTTP on
    data_dir: Path
    secret_file: Path
    token_file: Path
    timing: Timing = field(default_factory=Timing)

    @property
    def raft_address(self) -> str:
        return self.members[self.member_id]

    @property
    def peer_addresses(self) -> list[str]:
        return [address for member, address in sorted(self.members.items()) if member != self.member_id]

    def member_of_address(self, address: str) -> str | None:
        for member, member_address in self.members.items():
            if member_address == address:
                return member
        return None

    def secret(self) -> str:
        if self.secret_file.is_dir():
            raise ConfigError(f"the cluster secret file {self.secret_file} is a directory; give the secret file")
        try:
            secret = self.secret_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the cluster secret file {self.secret_file}: {exc.strerror}") from None
        if len(secret) < secret_chars_min:
            raise ConfigError(
                f"the cluster secret in {self.secret_file} is {len(secret)} characters; "
                f"use at least {secret_chars_min} (allot up generates one)"
            )
        return secret


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"{what} {text!r} must be host:port, for example 127.0.0.1:7001")
    return host, int(port_text)


def check_port_free(address: str, what: str) -> None:
    host, port = parse_address(address, what)
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    # SO_REUSEADDR as the real listeners use it: a port left in TIME_WAIT by a previous run is
    # free to listen on; only a live listener is a conflict.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        probe.listen(1)
    except OSError as exc:
        if exc.errno == errno.EADDRNOTAVAIL:
            mistake = f"{host} is not an address of this machine; give one of its own"
            raise ConfigError(f"{what} {address}: {mistake}") from None
        raise ConfigError(f"{what} {address} is not available: {exc.strerror}; pick another port") from None
    finally:
        probe.close()


def parse_members(text: str) -> dict[str, str]:
    """'m1=127.0.0.1:7001,m2=127.0.0.1:7002' -> {'m1': '127.0.0.1:7001', ...}."""
    members: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        member, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"member {item!r} must be id=host:port")
        if member in members:
            # Kept, the last address would win and the data directory would belong to a smaller
            # cluster for good (QA, 2026-12-07).
            raise ConfigError(
                f"member {member} is listed twice ({members[member]} and {address}); list each member once"
            )
        members[member] = address
    return members


def build(
    *,
    member_id: str,
    members: dict[str, str],
    http_address: str,
    data_dir: str | Path,
    secret_file: str | Path,
    token_file: str | Path,
    check_ports: bool = True,
    timing: Timing | None = None,
    timing_overrides: dict[str, float] | None = None,
) -> MemberConfig:
    if not _member_id_pattern.fullmatch(member_id):
        raise ConfigError(f"member id {member_id!r} must be 1-32 lowercase letters, digits or '-'")
    if len(members) < 1:
        raise ConfigError("list the cluster's members (id=host:port for each, this member included)")
    for member, address in members.items():
        if not _member_id_pattern.fullmatch(member):
            raise ConfigError(f"member id {member!r} must be 1-32 lowercase letters, digits or '-'")
        parse_address(address, f"Raft address of {member}")
    if member_id not in members:
        raise ConfigError(
            f"this member ({member_id}) is not in the member list ({', '.join(sorted(members))}); "
            "the list must include every member, this one too"
        )
    addresses = [*members.values(), http_address]
    duplicates = sorted({address for address in addresses if addresses.count(address) > 1})
    if duplicates:
        raise ConfigError(f"address {duplicates[0]} is used twice; every member needs its own ports")
    parse_address(http_address, "HTTP address")
    config = MemberConfig(
        member_id=member_id,
        members=dict(members),
        http_address=http_address,
        data_dir=Path(data_dir),
        secret_file=Path(secret_file),
        token_file=Path(token_file),
        timing=timing_with(
            timing_from_environment(timing or Timing(), given=(timing_overrides or {}).keys()), timing_overrides or {}
        ),
    )
    if not 0.1 <= config.timing.node_grace_s <= timing_seconds_max:
        raise ConfigError(f"the node grace period must be between 0.1 and {timing_seconds_max:g} seconds")
    if config.timing.log_compaction_entries < 2:  # pysyncobj asserts it
        raise ConfigError(f"--snapshot-entries must be at least 2, not {config.timing.log_compaction_entries}")
    if not str(secret_file):
        raise ConfigError("give the cluster secret file (--secret-file, or secretFile in a config file)")
    config.secret()
    if not str(token_file):
        raise ConfigError("give the token file (--tokens, or tokenFile in a config file)")
    if config.token_file.is_dir():
        raise ConfigError(f"token file {config.token_file} is a directory; give the token file (JSON)")
    if not config.token_file.is_file():
        raise ConfigError(f"token file {config.token_file} does not exist (allot up generates one)")
    if check_ports:
        check_port_free(config.raft_address, "Raft address")
        check_port_free(http_address, "HTTP address")
    return config


def warn_if_secret_exposed(config: MemberConfig) -> bool:
    """Log a warning when the cluster secret file is open to group or others (as for the token
    file): anyone who reads it can join the Raft group or inject entries. True when it warned."""
    if not config.secret_file.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return False
    logging.getLogger("allot.config").warning(
        "cluster secret file %s is accessible to group or others; chmod 600 it", config.secret_file
    )
    return True


IDENTITY_FILE = "cluster.json"  # in a member's data dir: which cluster and member its data is
IDENTITY_FORMAT = 1


def _secret_digest(secret: str) -> str:
    """Names the cluster's secret without revealing it (a domain-separated SHA-256, 128 bits)."""
    return hashlib.sha256(b"allot cluster identity\0" + secret.encode()).hexdigest()[:32]


def check_cluster_identity(config: MemberConfig) -> None:
    """Refuse data that belongs to another member or cluster than the configuration says.

    The data dir records, at the member's first start on it, its member id, the cluster's member
    ids and Raft addresses, and a digest of the cluster secret (`cluster.json`). A later start
    must agree on all but the addresses. A member started with another member list on its data
    would count a quorum of its own: listing only itself, it led a one-member cluster on the
    replicated data, handed out addresses the cluster had handed out, and on rejoining with a
    higher term overwrote writes the real majority had acknowledged. Data of another cluster
    (another secret) would be served as this cluster's and copied into it. Addresses may change
    (members moved together, `allot up --raft-port`); the record then follows them. Data dirs of
    earlier builds have no record; their first start under this build writes one."""
    path = config.data_dir / IDENTITY_FILE
    wanted: dict[str, Any] = {
        "format": IDENTITY_FORMAT,
        "memberId": config.member_id,
        "members": dict(sorted(config.members.items())),
        "secretDigest": _secret_digest(config.secret()),
    }
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        raw = path.read_text() if path.exists() else None
    except OSError as exc:
        raise ConfigError(f"data dir {config.data_dir} cannot be used: {exc.strerror}") from None
    if raw is not None:
        recorded = _load_identity(path, raw)
        if recorded["memberId"] != config.member_id:
            raise ConfigError(
                f"data dir {config.data_dir} holds member {recorded['memberId']}'s data, not {config.member_id}'s: "
                "give each member its own data dir"
            )
        if sorted(recorded["members"]) != sorted(config.members):
            raise ConfigError(
                f"data dir {config.data_dir} belongs to a cluster of members {', '.join(sorted(recorded['members']))}, "
                f"but --members lists {', '.join(sorted(config.members))}. A member started with another member "
                "list forms a quorum of its own on this data and can undo writes the cluster acknowledged: "
                "give the cluster's member list (a new member list is a new cluster, on empty data dirs)"
            )
        if recorded["secretDigest"] != wanted["secretDigest"]:
            raise ConfigError(
                f"data dir {config.data_dir} belongs to a cluster with another secret than {config.secret_file}: "
                "give that cluster's secret file, or use an empty data dir for a new cluster (if this member "
                f"never joined, e.g. it was first started with a wrong secret, delete {path} or the data dir)"
            )
        if recorded == wanted:
            return
    try:
        write_atomically(path, (json.dumps(wanted, indent=2) + "\n").encode())
    except OSError as exc:
        raise ConfigError(f"cannot record the cluster identity in {path}: {exc.strerror}") from None


def _load_identity(path: Path, raw: str) -> dict[str, Any]:
    try:
        recorded = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); it records which cluster this data is") from None
    fields = {"format", "memberId", "members", "secretDigest"}
    if not isinstance(recorded, dict) or set(recorded) != fields or recorded["format"] != IDENTITY_FORMAT:
        raise ConfigError(
            f"{path} is not a cluster identity of format {IDENTITY_FORMAT} (keys {', '.join(sorted(fields))})"
        )
    if not isinstance(recorded["members"], dict):
        raise ConfigError(f"{path}: members must be an object of member id -> Raft address")
    return recorded


def load_file(path: str | Path) -> dict[str, Any]:
    """A JSON config file with the same keys as the flags (memberId, members, http, dataDir, ...)."""

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # JSON leaves a key given twice to the reader, and Python's keeps the last: a member
        # listed twice would silently make a smaller cluster.
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(f"config file {path} gives {key!r} twice; give it once")
            seen[key] = value
        return seen

    try:
        raw = json.loads(Path(path).read_text(), object_pairs_hook=unique_keys)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    allowed = {"memberId", "members", "http", "dataDir", "secretFile", "tokenFile"}
    allowed |= {config_key for _, config_key in TIMING_FLAGS.values()}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a JSON object with keys among {', '.join(sorted(allowed))}")
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"config file {path} has unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the keys are {', '.join(sorted(allowed))}"
        )
    return raw
