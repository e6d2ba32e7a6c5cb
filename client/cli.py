"""The operator commands of `allot`: status, pool, claim, class, alloc, watch, and the
scheduler's node, pod, service, quota, scheduler.

Built on the sync client only (so it works wherever `client/` is vendored: `python -m
client.cli ...`); `node/cli.py` hands these commands here. Tables for people (rich), `-o json`
for scripts, one clear line on stderr for an error, and exit codes scripts can rely on:

    0 ok                          5 no room: pool exhausted (quota exceeded, unschedulable)
    1 any other error             6 unavailable: no member could serve it; nothing was applied
    2 usage, or refused invalid   7 outcome unknown: a write may have been applied (key printed)
    3 not found                   8 unauthorized or forbidden
    4 already exists or conflict  130 interrupted (Ctrl-C)

Defaults work against a default `allot up` in the current directory: endpoints
127.0.0.1:8401-8403, and the admin token from ./.allot/tokens.json.
"""

from __future__ import annotations

import argparse
import decimal
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

from rich.console import Console
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from client import core
from client.errors import (
    AllotError,
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    NoLeader,
    NotFound,
    NotReady,
    OutcomeUnknown,
    Overloaded,
    PoolExhausted,
    QuotaExceeded,
    Unauthorized,
    Unavailable,
    Unschedulable,
)
from client.models import (
    SCHEDULING_POLICIES,
    ApiObject,
    IPAllocation,
    IPClaim,
    IPClass,
    IPPool,
    MemberReport,
    Node,
    NodeResources,
    Pod,
    PriorityClass,
    Quota,
    SchedulerStatus,
    Service,
    Taint,
    WatchEvent,
)
from client.sync import Client, LabelledResource, NodeResource, ReadableResource, WritableResource

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_NO_ROOM = 5
EXIT_UNAVAILABLE = 6
EXIT_OUTCOME_UNKNOWN = 7
EXIT_UNAUTHORIZED = 8
EXIT_INTERRUPTED = 130

# Most specific first: OutcomeUnknown before the other server errors, and so on.
EXIT_CODES: tuple[tuple[type[AllotError], int], ...] = (
    (NotFound, EXIT_NOT_FOUND),
    (AlreadyExists, EXIT_CONFLICT),
    (Conflict, EXIT_CONFLICT),
    (PoolExhausted, EXIT_NO_ROOM),
    (QuotaExceeded, EXIT_NO_ROOM),
    (Unschedulable, EXIT_NO_ROOM),
    (OutcomeUnknown, EXIT_OUTCOME_UNKNOWN),
    (Unavailable, EXIT_UNAVAILABLE),
    (Unauthorized, EXIT_UNAUTHORIZED),
    (Forbidden, EXIT_UNAUTHORIZED),
    (Invalid, EXIT_USAGE),
)

COMMANDS = (
    "status",
    "pool",
    "claim",
    "class",
    "alloc",
    "watch",
    "node",
    "pod",
    "service",
    "quota",
    "priorityclass",
    "scheduler",
)
DEFAULT_TOKEN_FILE = Path(".allot") / "tokens.json"  # where `allot up` writes its tokens
ENV_TOKEN_FILE = "ALLOT_TOKEN_FILE"
token_file_bytes_max = 4 * 1024 * 1024
table_width_default = 160  # when stdout is not a terminal and COLUMNS is unset: rows stay whole
bar_width = 16

EPILOG = """operator commands (talk to a running cluster; see docs/client.md):
  allot status                         members, leader, term, indexes, health
  allot pool create|list|get|delete    IP pools (list shows utilisation and free space)
  allot claim create|list|get|delete   IP claims (create prints the allocated CIDR)
  allot class create|list|get|delete   IP classes (admin)
  allot alloc list|get                 IP allocations (read only)
  allot node register|list|get|delete|cordon|uncordon|drain|label|taint|heartbeat
                                       nodes (admin; list shows readiness and usage;
                                       label KEY=VALUE|KEY-, taint KEY[=VALUE]:EFFECT|KEY[:EFFECT]-)
  allot pod create|list|get|delete     pods (create prints the node and IP, or why it waits)
  allot service create|list|get|delete services (create prints the address)
  allot quota set|list|get|delete      quotas of an org (acme) or a project (acme/web)
  allot priorityclass create|list|get|delete
                                       named pod priorities (admin writes)
  allot scheduler get|set|retry        the scheduling policy (spread, binpack), the pending queue
  allot watch                          stream changes
  global options: --endpoints, --token, --token-file, --as ORG/PROJECT, -o table|json"""

_GLOBAL_VALUE_OPTIONS = frozenset(
    {"--endpoints", "--token", "--token-file", "--token-name", "--as", "-o", "--output", "--timeout", "--deadline"}
)


def handles(argv: Sequence[str]) -> bool:
    """Whether `argv` (without the program name) is one of these commands, so `allot` can
    hand it over: the first word that is not a global option or its value names the command."""
    skip_value = False
    for word in argv:
        if skip_value:
            skip_value = False
            continue
        if word in _GLOBAL_VALUE_OPTIONS:
            skip_value = True
            continue
        if word.startswith("-"):
            continue
        return word in COMMANDS
    return False


class UsageError(Exception):
    """A mistake on the command line the parser could not catch (exit 2)."""


class Refused(Exception):
    """The command would change what it was not told to (a label or taint that has another
    value, without --overwrite) or remove what is not there: nothing was sent. Exits `code`."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# ---- the command line ------------------------------------------------------------------------


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options, accepted before the command and after it (`allot pool list -o json`).
    On subcommands they default to SUPPRESS, so they never undo what was given before."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--endpoints",
        default=default(None),
        help=f"comma-separated member URLs (default: ${core.ENV_ENDPOINTS}, else {','.join(core.DEFAULT_ENDPOINTS)})",
    )
    parser.add_argument("--token", default=default(None), help=f"bearer token (default: ${core.ENV_TOKEN})")
    parser.add_argument(
        "--token-file",
        default=default(None),
        help=f"a file holding the token, or an allot token file (JSON; default: ${ENV_TOKEN_FILE}, "
        f"else {DEFAULT_TOKEN_FILE} if it exists)",
    )
    parser.add_argument(
        "--token-name",
        default=default(None),
        help="which entry of a JSON token file to use (default: the first admin)",
    )
    parser.add_argument(
        "--as", dest="tenant", metavar="ORG/PROJECT", default=default(None), help="act for a tenant (admin tokens)"
    )
    parser.add_argument(
        "-o", "--output", choices=("table", "json"), default=default("table"), help="output format (default table)"
    )
    parser.add_argument("--timeout", type=float, default=default(None), help="seconds one attempt may take (default 5)")
    parser.add_argument(
        "--deadline", type=float, default=default(None), help="seconds a command may take in all (default 30)"
    )


def _seconds(value: float | None, flag: str) -> float | None:
    """`--timeout` or `--deadline`, checked here so that a mistake names the flag the user typed
    (the client would name its `RetryPolicy` field)."""
    if value is None:
        return None
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number of seconds, not {value:g}")
    if value <= 0:
        raise UsageError(f"{flag} must be more than 0 seconds, not {value:g}")
    if flag == "--timeout" and value > core.attempt_timeout_s_max:
        raise UsageError(f"{flag} must be at most {core.attempt_timeout_s_max:g} seconds (a day), not {value:g}")
    return value


def _label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"a label is key=value, not {text!r}")
    return key, value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--spec must be a JSON object")
    return value


_memory_units = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}


def _decimal(text: str, what: str) -> decimal.Decimal:
    try:
        value = decimal.Decimal(text)
    except decimal.InvalidOperation:
        raise argparse.ArgumentTypeError(f"{what} {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{what} {text!r} must be a non-negative number")
    return value


def parse_cpu(text: str) -> int:
    """CPU as Kubernetes writes it, in millicores: `250m` is 250, `2` and `2.0` are 2000, `0.5` is 500."""
    value = text.strip()
    millis = _decimal(value[:-1], "cpu") if value.endswith("m") else _decimal(value, "cpu") * 1000
    if millis != millis.to_integral_value():
        raise argparse.ArgumentTypeError(f"cpu {text!r} is not a whole number of millicores")
    return int(millis)


def parse_memory(text: str) -> int:
    """Memory in bytes: `1073741824`, `512Mi`, `8Gi`, `1G` (Ki Mi Gi Ti: powers of 1024; k M G T: of 1000)."""
    value = text.strip()
    number, unit = value, ""
    for suffix in sorted(_memory_units, key=len, reverse=True):
        if suffix and value.endswith(suffix):
            number, unit = value[: -len(suffix)], suffix
            break
    unknown_unit = re.fullmatch(r"(.*\d)\s*([A-Za-z]+)", value) if not unit else None
    if unknown_unit:  # `10Pi`, `10KB`: a unit this parser does not know, not a malformed number
        raise argparse.ArgumentTypeError(
            f"memory {text!r}: the unit {unknown_unit.group(2)!r} is not supported; use bytes (no unit), "
            f"{' '.join(u for u in _memory_units if u.endswith('i'))} (powers of 1024) or "
            f"{' '.join(u for u in _memory_units if u and not u.endswith('i'))} (of 1000)"
        )
    size = _decimal(number, "memory") * _memory_units[unit]
    if size != size.to_integral_value():
        raise argparse.ArgumentTypeError(f"memory {text!r} is not a whole number of bytes")
    return int(size)


def _count_pair(text: str) -> tuple[str, int]:
    """NAME=COUNT (addresses per class or pool)."""
    name, sep, count = text.partition("=")
    if not sep or not name or not count.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=COUNT, not {text!r}")
    return name, int(count)


def parse_taint(text: str) -> dict[str, str]:
    """KEY[=VALUE]:EFFECT, e.g. gpu=true:NoSchedule."""
    rest, sep, effect = text.rpartition(":")
    key, _, value = rest.partition("=")
    if not sep or not key or not effect:
        raise argparse.ArgumentTypeError(f"a taint is KEY[=VALUE]:EFFECT (NoSchedule or NoExecute), not {text!r}")
    return {"key": key, "value": value, "effect": effect}


def parse_toleration(text: str) -> dict[str, Any]:
    """KEY=VALUE[:EFFECT] tolerates that taint (Equal); KEY[:EFFECT] any value of KEY (Exists);
    an empty KEY with Exists (`:NoSchedule`, or `""`) every taint; `@SECONDS` after NoExecute is
    its tolerationSeconds (`node.kubernetes.io/unreachable:NoExecute@30`)."""
    text, at, seconds = text.partition("@")
    head, sep, effect = text.partition(":")
    key, equals, value = head.partition("=")
    toleration: dict[str, Any] = {"key": key, "operator": "Equal" if equals else "Exists"}
    if equals:
        toleration["value"] = value
    if sep:
        if not effect:
            raise argparse.ArgumentTypeError(f"a toleration's effect after ':' is missing in {text!r}")
        toleration["effect"] = effect
    if at:
        if not seconds.isdigit():
            raise argparse.ArgumentTypeError(
                f"a toleration's seconds after '@' must be a whole number, not {seconds!r}"
            )
        toleration["tolerationSeconds"] = int(seconds)
    return toleration


def parse_port(text: str) -> dict[str, Any]:
    """[NAME=]PORT[/PROTOCOL], e.g. http=80/TCP or 53/UDP."""
    name, sep, rest = text.rpartition("=")
    number, slash, protocol = rest.partition("/")
    if not number.isdigit() or (sep and not name) or (slash and not protocol):
        raise argparse.ArgumentTypeError(f"a port is [NAME=]PORT[/PROTOCOL], not {text!r}")
    port: dict[str, Any] = {"port": int(number)}
    if name:
        port["name"] = name
    if protocol:
        port["protocol"] = protocol
    return port


TAINT_EFFECTS = ("NoSchedule", "NoExecute")  # the server's (kubectl's PreferNoSchedule is not one)


def parse_label_change(text: str) -> tuple[str, str | None]:
    """KEY=VALUE sets a label (an empty VALUE too), KEY- removes it (None), as `kubectl label`."""
    key, equals, value = text.partition("=")
    if equals and key:
        return key, value
    if not equals and len(text) > 1 and text.endswith("-"):
        return text[:-1], None
    raise UsageError(f"a label change is KEY=VALUE (set) or KEY- (remove), not {text!r}")


def label_patch(changes: Sequence[str]) -> dict[str, str | None]:
    """The labels a `node label` command sets (and removes: None), each key given once."""
    patch: dict[str, str | None] = {}
    for text in changes:
        key, value = parse_label_change(text)
        if key in patch and patch[key] != value:
            raise UsageError(
                f"label {key} is changed twice ({_label_change(key, patch[key])} and {text}); give it once"
            )
        patch[key] = value
    return patch


def _label_change(key: str, value: str | None) -> str:
    return f"{key}-" if value is None else f"{key}={value}"


@dataclass(frozen=True)
class TaintRemoval:
    """`KEY-` (every taint with the key), `KEY:EFFECT-`, or `KEY=VALUE:EFFECT-` (only with that value)."""

    key: str
    value: str | None = None  # None: any value
    effect: str | None = None  # None: either effect

    def matches(self, taint: Taint) -> bool:
        return taint.key == self.key and self.value in (None, taint.value) and self.effect in (None, taint.effect)

    def __str__(self) -> str:
        value = f"={self.value}" if self.value is not None else ""
        effect = f":{self.effect}" if self.effect is not None else ""
        return f"{self.key}{value}{effect}-"


def _check_effect(effect: str, text: str) -> None:
    if effect not in TAINT_EFFECTS:
        raise UsageError(f"taint {text!r}: the effect is {' or '.join(TAINT_EFFECTS)}, not {effect!r}")


def parse_taint_change(text: str) -> Taint | TaintRemoval:
    """KEY[=VALUE]:EFFECT adds a taint; KEY-, KEY:EFFECT- or KEY=VALUE:EFFECT- removes the
    taints that match, as `kubectl taint`."""
    if text.endswith("-"):
        head = text[:-1]
        rest, colon, effect = head.rpartition(":") if ":" in head else (head, "", "")
        key, equals, value = rest.partition("=")
        if not key or (colon and not effect):
            raise UsageError(f"a taint to remove is KEY-, KEY:EFFECT- or KEY=VALUE:EFFECT-, not {text!r}")
        if colon:
            _check_effect(effect, text)
        return TaintRemoval(key, value if equals else None, effect if colon else None)
    try:
        taint = parse_taint(text)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"{exc}; KEY-, KEY:EFFECT- removes one") from None
    _check_effect(taint["effect"], text)
    return Taint(taint["key"], taint["value"], taint["effect"])


@dataclass(frozen=True)
class TaintChanges:
    """What a `node taint` command asks: taints to add (one per key and effect) and to remove."""

    adds: tuple[Taint, ...]
    removals: tuple[TaintRemoval, ...]


def taint_changes(texts: Sequence[str]) -> TaintChanges:
    """The changes of a `node taint` command, checked before the node is read: a key and
    effect added twice with different values, or both added and removed, is a usage error."""
    adds: dict[tuple[str, str], Taint] = {}
    removals: list[TaintRemoval] = []
    for text in texts:
        change = parse_taint_change(text)
        if isinstance(change, TaintRemoval):
            removals.append(change)
            continue
        slot = (change.key, change.effect)
        if slot in adds and adds[slot] != change:
            raise UsageError(
                f"taint {change.key}:{change.effect} is given twice ({adds[slot]} and {change}); give it once"
            )
        adds[slot] = change
    for removal in removals:
        both = [str(taint) for taint in adds.values() if TaintRemoval(removal.key, None, removal.effect).matches(taint)]
        if both:
            raise UsageError(f"taint {both[0]} is both added and removed ({removal}); give one of them")
    return TaintChanges(tuple(adds.values()), tuple(removals))


def taints_after(name: str, current: Sequence[Taint], changes: TaintChanges, *, overwrite: bool) -> list[Taint]:
    """The node's new taint list, as `kubectl taint` computes it: removals drop every taint
    they match (one that matches none is refused: exit 3), a taint with the key and effect of
    one the node has replaces it in place only with `overwrite` (exit 4 without; the very same
    taint again changes nothing), new ones come last in the order given."""
    adds = {(taint.key, taint.effect): taint for taint in changes.adds}
    kept: list[Taint] = []
    replaced: set[tuple[str, str]] = set()
    clashes: list[str] = []
    for taint in current:
        if any(removal.matches(taint) for removal in changes.removals):
            continue
        new = adds.get((taint.key, taint.effect))
        if new is None:
            kept.append(taint)
            continue
        replaced.add((new.key, new.effect))
        if new != taint and not overwrite:
            clashes.append(f"{taint} (not {new})")
        kept.append(new)
    if clashes:
        raise Refused(
            f"node/{name} already has taint{'s' if len(clashes) > 1 else ''} {', '.join(clashes)} with the same "
            f"key and effect; pass --overwrite to replace {'them' if len(clashes) > 1 else 'it'}",
            EXIT_CONFLICT,
        )
    missing = [str(removal) for removal in changes.removals if not any(removal.matches(t) for t in current)]
    if missing:
        raise Refused(f"node/{name} has no taint matching {', '.join(missing)}", EXIT_NOT_FOUND)
    return kept + [taint for slot, taint in adds.items() if slot not in replaced]


def _write_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--idempotency-key", help="retry a write safely: the same key is applied at most once")
    parser.add_argument(
        "--dry-run",
        nargs="?",
        const=DRY_RUN_SERVER,
        choices=(DRY_RUN_SERVER,),
        help="ask the server what the write would do now (the address, node or refusal it would get) "
        "and change nothing",
    )


def _create_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label", type=_label, action="append", default=[], help="key=value (repeatable)")
    parser.add_argument("--spec", type=_json_object, help="more spec fields as a JSON object (API field names)")
    _write_options(parser)


def _allocation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--min-prefix-length", type=int)
    parser.add_argument("--max-prefix-length", type=int)
    parser.add_argument("--default-prefix-length", type=int)
    parser.add_argument("--strategy", choices=("first-fit", "best-fit", "next-fit"))


def _list_options(parser: argparse.ArgumentParser, *, namespaced: bool) -> None:
    parser.add_argument("-l", "--selector", help="label selector, e.g. tier=web,env!=dev")
    parser.add_argument("--page-size", type=int, help="items per request (the list still shows all)")
    parser.add_argument("--stale", action="store_true", help="read this member's state without a read barrier")
    if namespaced:
        parser.add_argument("-n", "--namespace", help="only this namespace")


def _named(parser: argparse.ArgumentParser, *, namespaced: bool = False) -> argparse.ArgumentParser:
    parser.add_argument("name")
    if namespaced:
        parser.add_argument("-n", "--namespace")
    return parser


def _add_scheduling_parsers(commands: Any, common: argparse.ArgumentParser) -> None:
    """node, pod, service, quota, scheduler."""
    node = commands.add_parser("node", parents=[common], help="nodes (admin)").add_subparsers(
        dest="action", required=True
    )
    register = node.add_parser("register", parents=[common], help="register a node; prints its pod CIDR")
    register.add_argument("name")
    register.add_argument("--cpu", type=parse_cpu, help="CPU capacity: 4 (cores) or 3500m (millicores)")
    register.add_argument("--memory", type=parse_memory, help="memory capacity: 8Gi, 512Mi or bytes")
    register.add_argument("--pods", type=int, help="the most pods it runs")
    register.add_argument("--pod-pool", help="the platform IP pool its pod CIDR comes from")
    register.add_argument("--pod-cidr-prefix-length", type=int, help="its pod CIDR's size (default /24, IPv6 /64)")
    register.add_argument("--zone", help="its zone (also the label topology.kubernetes.io/zone)")
    register.add_argument("--taint", type=parse_taint, action="append", default=[], help="KEY[=VALUE]:EFFECT")
    register.add_argument(
        "--unschedulable", action="store_true", help="register it cordoned: no pods until `allot node uncordon`"
    )
    _create_common(register)
    _list_options(node.add_parser("list", parents=[common], help="nodes with readiness and usage"), namespaced=False)
    _named(node.add_parser("get", parents=[common], help="one node"))
    _write_options(_named(node.add_parser("delete", parents=[common], help="delete a node (drain it first)")))
    for action, text in (
        ("cordon", "no new pods on the node; its pods stay"),
        ("uncordon", "make the node schedulable again"),
        ("drain", "cordon the node and send its pods back to the queue"),
    ):
        _write_options(_named(node.add_parser(action, parents=[common], help=text)))
    _label_parser(node, common, "node")
    taint = _named(
        node.add_parser("taint", parents=[common], help="add (KEY[=VALUE]:EFFECT) or remove (KEY[:EFFECT]-) taints")
    )
    taint.add_argument(
        "changes",
        nargs="+",
        metavar="KEY[=VALUE]:EFFECT|KEY[:EFFECT]-",
        help="KEY[=VALUE]:EFFECT adds a taint (NoSchedule or NoExecute); KEY- removes the key's, KEY:EFFECT- one",
    )
    taint.add_argument("--overwrite", action="store_true", help="replace a taint of the same key and effect")
    _resource_version_option(taint)
    _write_options(taint)
    _named(node.add_parser("heartbeat", parents=[common], help="send one heartbeat, as a node agent does"))

    pod = commands.add_parser("pod", parents=[common], help="pods").add_subparsers(dest="action", required=True)
    create = _named(
        pod.add_parser("create", parents=[common], help="create a pod; prints its node and IP"), namespaced=True
    )
    create.add_argument("--cpu", type=parse_cpu, help="CPU request: 250m or 0.25 (default: the quota's, or 0)")
    create.add_argument("--memory", type=parse_memory, help="memory request: 256Mi, 1Gi or bytes")
    create.add_argument(
        "--node-selector", type=_label, action="append", default=[], help="key=value the node must carry"
    )
    create.add_argument(
        "--toleration",
        type=parse_toleration,
        action="append",
        default=[],
        help="KEY=VALUE[:EFFECT], KEY[:EFFECT]; :NoExecute@SECONDS",
    )
    create.add_argument(
        "--priority", type=int, help="higher is placed first (default: the global default class's, or 0)"
    )
    create.add_argument("--priority-class", help="the PriorityClass whose value the pod gets")
    create.add_argument("--policy", choices=SCHEDULING_POLICIES, help="this pod's scheduling policy")
    _create_common(create)
    listing = pod.add_parser("list", parents=[common], help="pods")
    _list_options(listing, namespaced=True)
    listing.add_argument("--node", help="only pods bound to this node (spec.nodeName)")
    listing.add_argument("--phase", choices=("Bound", "Pending"), help="only pods in this phase (status.phase)")
    listing.add_argument("--field-selector", help="e.g. spec.nodeName=n1,status.phase=Bound")
    _named(pod.add_parser("get", parents=[common], help="one pod"), namespaced=True)
    _write_options(_named(pod.add_parser("delete", parents=[common], help="delete a pod"), namespaced=True))
    _label_parser(pod, common, "pod", namespaced=True)

    service = commands.add_parser("service", parents=[common], help="services").add_subparsers(
        dest="action", required=True
    )
    create = _named(
        service.add_parser("create", parents=[common], help="create a service; prints its address"), namespaced=True
    )
    source = create.add_mutually_exclusive_group()
    source.add_argument("--pool", help="take the address from this pool")
    source.add_argument("--class", dest="class_name", help="take it by IP class (default: the default class)")
    create.add_argument("--type", dest="service_type", choices=("ClusterIP", "LoadBalancer"))
    create.add_argument("--address", help="this exact address")
    create.add_argument("--port", type=parse_port, action="append", default=[], help="[NAME=]PORT[/PROTOCOL]")
    _create_common(create)
    _list_options(service.add_parser("list", parents=[common], help="services"), namespaced=True)
    _named(service.add_parser("get", parents=[common], help="one service"), namespaced=True)
    _write_options(_named(service.add_parser("delete", parents=[common], help="delete a service"), namespaced=True))
    _label_parser(service, common, "service", namespaced=True)

    quota = commands.add_parser("quota", parents=[common], help="quotas (writes: admin)").add_subparsers(
        dest="action", required=True
    )
    setter = quota.add_parser("set", parents=[common], help="set (create or replace) a quota; limits left out: none")
    setter.add_argument("name", help="an org (acme) or a project (acme/web)")
    setter.add_argument("--cpu", type=parse_cpu, help="CPU of bound pods: 8 or 8000m")
    setter.add_argument("--memory", type=parse_memory, help="memory of bound pods: 32Gi")
    setter.add_argument("--pods", type=int, help="bound pods")
    setter.add_argument("--services", type=int, help="services")
    setter.add_argument("--max-priority", type=int, help="the highest priority new pods may ask for")
    setter.add_argument("--addresses-by-class", type=_count_pair, action="append", default=[], help="CLASS=COUNT")
    setter.add_argument("--addresses-by-pool", type=_count_pair, action="append", default=[], help="POOL=COUNT")
    setter.add_argument("--default-cpu", type=parse_cpu, help="a project's request for pods that give none")
    setter.add_argument("--default-memory", type=parse_memory, help="a project's request for pods that give none")
    _create_common(setter)
    _list_options(quota.add_parser("list", parents=[common], help="quotas with usage"), namespaced=False)
    _named(quota.add_parser("get", parents=[common], help="one quota and its usage"))
    _write_options(_named(quota.add_parser("delete", parents=[common], help="remove a quota (admin)")))

    priority_class = commands.add_parser(
        "priorityclass", parents=[common], help="named pod priorities (writes: admin)"
    ).add_subparsers(dest="action", required=True)
    create = _named(priority_class.add_parser("create", parents=[common], help="create a PriorityClass"))
    create.add_argument("--value", type=int, help="the priority pods naming it get (required)")
    create.add_argument(
        "--global-default", action="store_true", default=None, help="the class of pods naming no class or priority"
    )
    create.add_argument("--description", help="what the class is for")
    _create_common(create)
    _list_options(priority_class.add_parser("list", parents=[common], help="PriorityClasses"), namespaced=False)
    _named(priority_class.add_parser("get", parents=[common], help="one PriorityClass"))
    _write_options(
        _named(priority_class.add_parser("delete", parents=[common], help="delete a PriorityClass (pods keep theirs)"))
    )
    _label_parser(priority_class, common, "PriorityClass (admin)")

    scheduler = commands.add_parser("scheduler", parents=[common], help="the scheduler").add_subparsers(
        dest="action", required=True
    )
    scheduler.add_parser("get", parents=[common], help="the policy, the node count, the pending pods")
    policy = scheduler.add_parser("set", parents=[common], help="set the cluster's scheduling policy (admin)")
    policy.add_argument("policy", choices=SCHEDULING_POLICIES)
    _write_options(policy)
    retry = scheduler.add_parser("retry", parents=[common], help="search again for pending pods now (admin)")
    retry.add_argument("--pods", type=int, help="how many pending pods (1-16, default 16)")
    _write_options(retry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="allot",
        description="Operate an Allot cluster: members, pools, claims, classes, allocations, nodes, pods, "
        "services, quotas, the scheduler, watches.",
        epilog="exit codes: 0 ok, 1 error, 2 usage/invalid, 3 not found, 4 exists/conflict, 5 no room "
        "(pool exhausted, quota exceeded, unschedulable), 6 unavailable, 7 outcome unknown, 8 unauthorized/forbidden",
    )
    _global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("status", parents=[common], help="the cluster at a glance: members, leader, health")

    pool = commands.add_parser("pool", parents=[common], help="IP pools").add_subparsers(dest="action", required=True)
    create = pool.add_parser("create", parents=[common], help="create a root or child pool")
    create.add_argument("name", help="pool name (or project/name, org/project/name)")
    where = create.add_mutually_exclusive_group(required=True)
    where.add_argument("--cidr", help="a root pool's block, e.g. 10.0.0.0/16")
    where.add_argument("--parent", help="carve a child pool from this pool")
    create.add_argument("--prefix-length", type=int, help="a child pool's size")
    create.add_argument("--family", choices=("IPv4", "IPv6"))
    create.add_argument("--visibility", choices=("platform", "internal", "consumer", "shared"))
    create.add_argument("--class", dest="class_names", action="append", default=[], help="IP class it backs")
    create.add_argument("--reserved-leading", type=int, help="addresses kept free at the start")
    create.add_argument("--reserved-trailing", type=int, help="addresses kept free at the end")
    create.add_argument("--exclude", action="append", default=[], help="CIDR never handed out (repeatable)")
    create.add_argument("--address-space")
    create.add_argument("--shared-with", action="append", default=[], help="project allowed to use it")
    _allocation_options(create)
    _create_common(create)
    _list_options(pool.add_parser("list", parents=[common], help="pools with utilisation"), namespaced=False)
    pool.add_parser("get", parents=[common], help="one pool").add_argument("name")
    delete = pool.add_parser("delete", parents=[common], help="delete a pool")
    delete.add_argument("name")
    _write_options(delete)
    _label_parser(pool, common, "pool")

    claim = commands.add_parser("claim", parents=[common], help="IP claims").add_subparsers(
        dest="action", required=True
    )
    create = claim.add_parser("create", parents=[common], help="claim addresses; prints the allocated CIDR")
    create.add_argument("name")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--pool", help="claim from this pool")
    source.add_argument("--class", dest="class_name", help="claim by IP class (default: the default class)")
    create.add_argument("--prefix-length", type=int)
    specific = create.add_mutually_exclusive_group()
    specific.add_argument("--address", help="this exact address")
    specific.add_argument("--cidr", help="this exact block")
    create.add_argument("--reclaim-policy", choices=("Delete", "Retain"))
    create.add_argument("-n", "--namespace")
    _create_common(create)
    claim_listing = claim.add_parser("list", parents=[common], help="claims")
    _list_options(claim_listing, namespaced=True)
    claim_listing.add_argument("--pool", help="only claims holding addresses of this pool (status.pool)")
    claim_listing.add_argument("--field-selector", help="status.pool=P, status.className=C")
    get = claim.add_parser("get", parents=[common], help="one claim")
    get.add_argument("name")
    get.add_argument("-n", "--namespace")
    delete = claim.add_parser("delete", parents=[common], help="delete a claim (releases its addresses)")
    delete.add_argument("name")
    delete.add_argument("-n", "--namespace")
    _write_options(delete)
    _label_parser(claim, common, "claim (and its allocation)", namespaced=True)

    ipclass = commands.add_parser("class", parents=[common], help="IP classes").add_subparsers(
        dest="action", required=True
    )
    create = ipclass.add_parser("create", parents=[common], help="create an IP class (admin)")
    create.add_argument("name")
    create.add_argument("--family", choices=("IPv4", "IPv6"))
    create.add_argument("--default", dest="is_default", action="store_true", help="the class of claims naming none")
    create.add_argument("--visibility", choices=("platform", "restricted"))
    create.add_argument("--allowed-org", action="append", default=[], help="org that may use a restricted class")
    create.add_argument("--reclaim-policy", choices=("Delete", "Retain"))
    _allocation_options(create)
    _create_common(create)
    _list_options(ipclass.add_parser("list", parents=[common], help="IP classes"), namespaced=False)
    ipclass.add_parser("get", parents=[common], help="one IP class").add_argument("name")
    delete = ipclass.add_parser("delete", parents=[common], help="delete an IP class (admin)")
    delete.add_argument("name")
    _write_options(delete)
    _label_parser(ipclass, common, "IP class (admin)")

    alloc = commands.add_parser("alloc", parents=[common], help="IP allocations (read only)").add_subparsers(
        dest="action", required=True
    )
    alloc_listing = alloc.add_parser("list", parents=[common], help="allocations")
    _list_options(alloc_listing, namespaced=True)
    alloc_listing.add_argument("--pool", help="only allocations in this pool (spec.pool)")
    alloc_listing.add_argument("--phase", choices=("Bound", "Released"), help="only allocations in this phase")
    alloc_listing.add_argument("--field-selector", help="spec.pool=P, spec.className=C, status.phase=Released")
    get = alloc.add_parser("get", parents=[common], help="one allocation")
    get.add_argument("name")
    get.add_argument("-n", "--namespace")

    _add_scheduling_parsers(commands, common)

    watch = commands.add_parser("watch", parents=[common], help="stream changes as they happen")
    watch.add_argument("--kinds", help=f"comma-separated: {','.join(core.KINDS)} (default all)")
    watch.add_argument("--resource-version", type=int, help="start after this revision (default: now)")
    watch.add_argument("--field-selector", help="a watch of pods alone: spec.nodeName=n1, status.phase=Pending")
    watch.add_argument("-l", "--selector", help="label selector, e.g. tier=web,env!=dev")
    watch.add_argument("--count", type=int, help="stop after this many events")
    watch.add_argument("--for", dest="duration", type=float, help="stop after this many seconds")
    return parser


# ---- settings --------------------------------------------------------------------------------


_names_shown_max = 20  # token names listed when --token-name matches none


def _read_token_file(path: Path, name: str | None) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(token_file_bytes_max + 1)
    except OSError as exc:
        raise UsageError(f"cannot read the token file {path}: {exc.strerror}") from None
    if len(data) > token_file_bytes_max:
        raise UsageError(f"the token file {path} is larger than {token_file_bytes_max} bytes")
    text = data.decode("utf-8", "replace").strip()
    if not text.startswith("{"):
        if name is not None:
            raise UsageError(f"--token-name needs a JSON token file; {path} holds a plain token")
        token = text.splitlines()[0].strip() if text else ""
        if not token:
            raise UsageError(f"the token file {path} is empty")
        return token
    try:
        entries = json.loads(text)["tokens"]
    except (ValueError, KeyError, TypeError):
        raise UsageError(f"{path} is neither a plain token nor an allot token file") from None
    names: list[str] = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            continue
        if entry.get("name") == name if name is not None else entry.get("role") == "admin":
            return str(entry["token"])
        if isinstance(entry.get("name"), str):
            names.append(entry["name"])
    wanted = f"entry named {name!r}" if name is not None else "admin entry"
    known = f"; its entries are named {', '.join(sorted(names)[:_names_shown_max])}" if names else ""
    raise UsageError(f"the token file {path} has no {wanted}{known}")


_CLUSTER_DOWN_HINT = "(is the cluster running, e.g. `allot up`, and are --endpoints / $ALLOT_ENDPOINTS right?)"
_TOKEN_SOURCES = (
    "pass --token or --token-file, set $ALLOT_TOKEN or $ALLOT_TOKEN_FILE, or run next to allot up's ./.allot/"
)


def resolve_token(args: argparse.Namespace, environ: dict[str, str]) -> str | None:
    """--token, then --token-file, then $ALLOT_TOKEN, then $ALLOT_TOKEN_FILE, then the token
    file a local `allot up` wrote (./.allot/tokens.json), else none."""
    if args.token:
        return str(args.token)
    if args.token_file:
        return _read_token_file(Path(args.token_file), args.token_name)
    if environ.get(core.ENV_TOKEN):
        return environ[core.ENV_TOKEN]
    if environ.get(ENV_TOKEN_FILE):
        return _read_token_file(Path(environ[ENV_TOKEN_FILE]), args.token_name)
    if DEFAULT_TOKEN_FILE.is_file():
        return _read_token_file(DEFAULT_TOKEN_FILE, args.token_name)
    return None


def _console(stream: TextIO) -> Console:
    columns = os.environ.get("COLUMNS", "")
    if stream.isatty() or columns.isdigit():
        return Console(file=stream, width=int(columns) if columns.isdigit() else None)
    return Console(file=stream, width=max(shutil.get_terminal_size().columns, table_width_default))


# ---- rendering -------------------------------------------------------------------------------


def _count(value: int) -> str:
    """Exact below a billion, else as a power of two (IPv6 pools hold 2^64 and more)."""
    if value < 10**9:
        return f"{value:,}"
    exponent = math.log2(value)
    return f"2^{int(exponent)}" if value & (value - 1) == 0 else f"≈2^{exponent:.1f}"


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def _utilisation(pool: IPPool) -> Table | str:
    capacity = pool.status.capacity
    if capacity is None:
        return "-"
    cell = Table.grid(padding=(0, 1))
    cell.add_row(
        ProgressBar(total=max(capacity.total, 1), completed=capacity.allocated, width=bar_width),
        pool.status.utilization or f"{capacity.used_fraction:.2%}",
    )
    return cell


def _scope(org: str | None, project: str | None) -> str:
    """`org/project`, `org` (an org's quota), or `platform`."""
    if org and project:
        return f"{org}/{project}"
    return org or "platform"


def _pool_visibility(pool: IPPool) -> str:
    """`platform (acme, initech)` for a platform pool reserved for some orgs by its classes."""
    visibility = _dash(pool.spec.visibility)
    allowed = pool.status.allowed_orgs
    return f"{visibility} ({', '.join(allowed)})" if allowed else visibility


def _pool_cidr(pool: IPPool) -> str:
    """The pool's block, with its address space when that is not the default one: two pools
    in different spaces may hold the same block."""
    cidr = _dash(pool.status.allocated_cidr or pool.spec.cidr)
    space = pool.status.address_space or pool.spec.address_space
    return f"{cidr} ({space})" if space and space != "default" else cidr


def pools_table(pools: Iterable[IPPool]) -> Table:
    table = Table(title="IP pools", title_justify="left")
    columns = ("NAME", "SCOPE", "VISIBILITY", "CIDR", "FAMILY", "UTILISATION", "USED/TOTAL", "FREE", "LARGEST FREE")
    for column in (*columns, "PHASE"):
        table.add_column(column, no_wrap=column in ("NAME", "CIDR"))
    for pool in pools:
        capacity = pool.status.capacity
        largest = pool.status.largest_free_prefix
        table.add_row(
            pool.name,
            _scope(pool.metadata.org, pool.metadata.project),
            _pool_visibility(pool),  # internal pools are platform-scoped too: this tells them apart
            _pool_cidr(pool),
            _dash(pool.spec.ip_family),
            _utilisation(pool),
            f"{_count(capacity.allocated)}/{_count(capacity.total)}" if capacity else "-",
            _count(capacity.available) if capacity else "-",
            f"/{largest}" if largest is not None else "none",
            Text(_dash(pool.status.phase), style="red" if pool.status.phase == "Exhausted" else "green"),
        )
    return table


def claims_table(claims: Iterable[IPClaim]) -> Table:
    table = Table(title="IP claims", title_justify="left")
    for column in ("NAME", "NAMESPACE", "TENANT", "CIDR", "POOL", "CLASS", "RECLAIM", "PHASE"):
        table.add_column(column, no_wrap=column in ("NAME", "CIDR"))
    for claim in claims:
        table.add_row(
            claim.name,
            _dash(claim.metadata.namespace),
            claim.metadata.tenant or "platform",  # as `claim get` says it
            _dash(claim.status.allocated_cidr),
            _dash(claim.status.pool),
            _dash(claim.status.class_name),
            _dash(claim.status.reclaim_policy),
            _dash(claim.status.phase),
        )
    return table


def allocations_table(allocations: Iterable[IPAllocation]) -> Table:
    table = Table(title="IP allocations", title_justify="left")
    for column in ("NAME", "NAMESPACE", "TENANT", "CIDR", "POOL", "CLAIM", "CLASS", "PHASE"):
        table.add_column(column, no_wrap=column in ("NAME", "CIDR"))
    for allocation in allocations:
        table.add_row(
            allocation.name,
            _dash(allocation.metadata.namespace),
            allocation.metadata.tenant or "platform",
            _dash(allocation.spec.cidr),
            _dash(allocation.spec.pool),
            _dash(allocation.spec.claim_ref),
            _dash(allocation.spec.class_name),
            _dash(allocation.phase),
        )
    return table


def classes_table(classes: Iterable[IPClass]) -> Table:
    table = Table(title="IP classes", title_justify="left")
    for column in ("NAME", "FAMILY", "DEFAULT", "VISIBILITY", "ALLOWED ORGS", "PREFIXES", "STRATEGY", "RECLAIM"):
        table.add_column(column, no_wrap=column == "NAME")
    for ipclass in classes:
        spec = ipclass.spec
        policy = spec.allocation
        table.add_row(
            ipclass.name,
            _dash(spec.ip_family),
            "yes" if spec.is_default else "",
            _dash(spec.visibility),
            ", ".join(spec.allowed_orgs) or "-",
            f"/{_dash(policy.min_prefix_length)}../{_dash(policy.max_prefix_length)} "
            f"(default /{_dash(policy.default_prefix_length)})",
            _dash(policy.strategy),
            _dash(spec.reclaim_policy),
        )
    return table


def priority_classes_table(priority_classes: Iterable[PriorityClass]) -> Table:
    table = Table(title="Priority classes", title_justify="left")
    for column in ("NAME", "VALUE", "GLOBAL DEFAULT", "DESCRIPTION"):
        table.add_column(column, no_wrap=column == "NAME")
    for priority_class in priority_classes:
        spec = priority_class.spec
        table.add_row(
            priority_class.name, _dash(spec.value), "yes" if spec.global_default else "", _dash(spec.description)
        )
    return table


def format_cpu(millis: int | None) -> str:
    """Millicores as Kubernetes writes them: 4 (cores) or 250m."""
    if millis is None:
        return "-"
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def format_memory(size: int | None) -> str:
    """Bytes in the largest binary unit that divides them exactly: 8Gi, 256Mi, 1000."""
    if size is None:
        return "-"
    for unit in ("Ti", "Gi", "Mi", "Ki"):
        factor = _memory_units[unit]
        if size and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _used_of(used: int | None, total: int | None, render: Callable[[int | None], str] = _dash) -> str:
    """`used/total`; a limit that is None (no quota on it) shows as ∞."""
    return f"{render(used)}/{render(total) if total is not None else '∞'}"


def _node_condition(node: Node) -> Text:
    ready = node.status.ready
    text = "Ready" if ready else "NotReady" if ready is not None else "Unknown"
    if node.unschedulable:
        text += ",SchedulingDisabled"
    return Text(text, style="green" if ready and not node.unschedulable else "yellow" if ready else "red")


def _node_usage(node: Node) -> tuple[str, str, str]:
    capacity = node.capacity or NodeResources(0, 0, 0)
    used = node.status.allocated
    return (
        _used_of(used.cpu_millis if used else None, capacity.cpu_millis, format_cpu),
        _used_of(used.memory_bytes if used else None, capacity.memory_bytes, format_memory),
        _used_of(used.pods if used else None, capacity.pods),
    )


def nodes_table(nodes: Iterable[Node]) -> Table:
    table = Table(title="Nodes", title_justify="left")
    for column in ("NAME", "STATUS", "POD CIDR", "CPU USED", "MEMORY USED", "PODS", "ZONE", "TAINTS", "NOMINATED"):
        table.add_column(column, no_wrap=column in ("NAME", "POD CIDR"))
    for node in nodes:
        table.add_row(
            node.name,
            _node_condition(node),
            _dash(node.pod_cidr),
            *_node_usage(node),
            _dash(node.spec.zone),
            ", ".join(str(taint) for taint in node.spec.taints) or "-",
            _dash(node.status.nominated_pod),
        )
    return table


def _pod_phase(pod: Pod) -> Text:
    return Text(_dash(pod.phase), style="green" if pod.bound else "yellow")


def pods_table(pods: Iterable[Pod]) -> Table:
    table = Table(title="Pods", title_justify="left")
    for column in ("NAME", "NAMESPACE", "TENANT", "PHASE", "NODE", "POD IP", "CPU", "MEMORY", "PRIORITY", "WAITING"):
        table.add_column(column, no_wrap=column in ("NAME", "POD IP"))
    for pod in pods:
        requests = pod.spec.requests
        waiting = f"{pod.pending_reason}: {pod.status.message}" if pod.pending_reason else "-"
        table.add_row(
            pod.name,
            _dash(pod.metadata.namespace),
            _dash(pod.metadata.tenant),
            _pod_phase(pod),
            _dash(pod.node_name),
            _dash(pod.pod_ip),
            format_cpu(requests.cpu_millis if requests else None),
            format_memory(requests.memory_bytes if requests else None),
            _dash(pod.spec.priority),
            waiting,
        )
    return table


def services_table(services: Iterable[Service]) -> Table:
    table = Table(title="Services", title_justify="left")
    for column in ("NAME", "NAMESPACE", "TENANT", "TYPE", "ADDRESS", "POOL", "CLASS", "PORTS"):
        table.add_column(column, no_wrap=column in ("NAME", "ADDRESS"))
    for service in services:
        table.add_row(
            service.name,
            _dash(service.metadata.namespace),
            _dash(service.metadata.tenant),
            _dash(service.spec.type),
            _dash(service.address),
            _dash(service.status.pool),
            _dash(service.status.class_name),
            ", ".join(str(port) for port in service.spec.ports) or "-",
        )
    return table


def _address_limits(quota: Quota) -> str:
    used = quota.used
    parts = []
    for table, limits, usage in (
        ("class", quota.spec.addresses_by_class, used.addresses_by_class if used else {}),
        ("pool", quota.spec.addresses_by_pool, used.addresses_by_pool if used else {}),
    ):
        for name in sorted({*limits, *usage}):
            parts.append(f"{table} {name} {_used_of(usage.get(name, 0), limits.get(name))}")
    return ", ".join(parts) or "-"


def quotas_table(quotas: Iterable[Quota]) -> Table:
    table = Table(title="Quotas (used/limit)", title_justify="left")
    for column in ("NAME", "CPU", "MEMORY", "PODS", "SERVICES", "PENDING PODS", "MAX PRIORITY", "ADDRESSES"):
        table.add_column(column, no_wrap=column == "NAME")
    for quota in quotas:
        spec, used = quota.spec, quota.used
        table.add_row(
            quota.name,
            _used_of(used.cpu_millis if used else None, spec.cpu_millis, format_cpu),
            _used_of(used.memory_bytes if used else None, spec.memory_bytes, format_memory),
            _used_of(used.pods if used else None, spec.pods),
            _used_of(used.services if used else None, spec.services),
            _dash(used.pending_pods if used else None),
            _dash(spec.max_priority),
            _address_limits(quota),
        )
    return table


def scheduler_table(status: SchedulerStatus) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        ("policy", status.policy),
        ("nodes", status.nodes),
        ("pending pods", status.pending_pods),
    ]
    if status.resource_version is not None:
        rows.append(("resourceVersion", status.resource_version))
    if status.examined is not None:
        rows += [("examined", status.examined), ("bound", status.bound)]
    for key, value in rows:
        table.add_row(key, _dash(value))
    return table


def status_table(reports: Sequence[MemberReport]) -> Table:
    table = Table(title="Allot members", title_justify="left")
    for column in ("MEMBER", "ENDPOINT", "PID", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED", "REVISION", "HEALTH"):
        table.add_column(column, no_wrap=column == "ENDPOINT")
    for report in reports:
        member = report.status
        if member is None:
            unreachable = Text("unreachable", style="bold red")
            table.add_row("?", report.endpoint, "-", "-", "-", "-", "-", "-", "-", unreachable)
            continue
        if member.quiesced:
            health = Text("quiesced", style="yellow")  # being stopped: it takes no writes
        elif report.ready is None:
            health = Text("unknown", style="yellow")
        else:
            health = Text("ready", style="green") if report.ready else Text("not ready", style="yellow")
        table.add_row(
            member.member_id,
            report.endpoint,
            _dash(member.pid),
            Text(_dash(member.role), style="bold" if member.role == "leader" else ""),
            _dash(member.leader),
            _dash(member.term),
            _dash(member.commit_index),
            _dash(member.applied_index),
            _dash(member.revision),
            health,
        )
    return table


def _describe(obj: ApiObject) -> Table:
    """One object as a two-column table: the fields a person looks at first, then the rest."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    meta = obj.metadata
    rows: list[tuple[str, Any]] = [("kind", obj.kind), ("name", meta.name)]
    if meta.namespace is not None:
        rows.append(("namespace", meta.namespace))
    rows += [
        ("tenant", _scope(meta.org, meta.project) if meta.org is not None else "-"),
        ("uid", meta.uid),
        ("resourceVersion", meta.resource_version),
        ("created", meta.creation_timestamp),
        ("labels", ", ".join(f"{key}={value}" for key, value in sorted(meta.labels.items())) or "-"),
    ]
    if isinstance(obj, IPPool):
        capacity = obj.status.capacity
        rows += [
            ("cidr", obj.status.allocated_cidr or obj.spec.cidr),
            ("address space", obj.status.address_space or obj.spec.address_space or "default"),
            ("parent", obj.spec.parent_pool),
            ("family", obj.spec.ip_family),
            ("visibility", _pool_visibility(obj)),
            ("classes", ", ".join(obj.spec.class_names) or "-"),
            ("utilisation", _utilisation(obj)),
            ("used/total", f"{_count(capacity.allocated)}/{_count(capacity.total)}" if capacity else "-"),
            ("free", _count(capacity.available) if capacity else "-"),
            (
                "largest free",
                f"/{obj.status.largest_free_prefix}" if obj.status.largest_free_prefix is not None else "none",
            ),
            ("phase", obj.status.phase),
        ]
    elif isinstance(obj, IPClaim):
        rows += [
            ("cidr", obj.status.allocated_cidr),
            ("pool", obj.status.pool),
            ("class", obj.status.class_name),
            ("reclaim", obj.status.reclaim_policy),
            ("phase", obj.status.phase),
        ]
    elif isinstance(obj, IPAllocation):
        rows += [
            ("cidr", obj.spec.cidr),
            ("pool", obj.spec.pool),
            ("claim", obj.spec.claim_ref),
            ("phase", obj.phase),
        ]
    elif isinstance(obj, IPClass):
        policy = obj.spec.allocation
        rows += [
            ("family", obj.spec.ip_family),
            ("default", "yes" if obj.spec.is_default else "no"),
            ("visibility", obj.spec.visibility),
            ("prefixes", f"/{policy.min_prefix_length}../{policy.max_prefix_length}"),
            ("strategy", policy.strategy),
            ("reclaim", obj.spec.reclaim_policy),
        ]
    elif isinstance(obj, PriorityClass):
        rows += [
            ("value", obj.spec.value),
            ("global default", "yes" if obj.spec.global_default else "no"),
            ("description", obj.spec.description),
        ]
    elif isinstance(obj, Node | Pod | Service | Quota):
        rows += _scheduling_rows(obj)
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Table | Text) else _dash(value))
    return table


def _scheduling_rows(obj: Node | Pod | Service | Quota) -> list[tuple[str, Any]]:
    if isinstance(obj, Node):
        cpu, memory, pod_count = _node_usage(obj)
        available = obj.available
        return [
            ("status", _node_condition(obj)),
            ("condition", obj.status.condition_reason),
            ("since", obj.status.last_transition_timestamp),
            ("pod cidr", obj.pod_cidr),
            ("pod pool", obj.status.pod_pool),
            ("cpu used", cpu),
            ("memory used", memory),
            ("pods", pod_count),
            (
                "available",
                f"cpu {format_cpu(available.cpu_millis)}, memory {format_memory(available.memory_bytes)}, "
                f"pods {available.pods}"
                if available
                else None,
            ),
            ("zone", obj.spec.zone),
            ("taints", ", ".join(str(taint) for taint in obj.spec.taints) or "-"),
            ("nominated pod", obj.status.nominated_pod),
            ("evicted pods", obj.status.evicted_pods),
        ]
    if isinstance(obj, Pod):
        requests = obj.spec.requests
        return [
            ("phase", _pod_phase(obj)),
            ("node", obj.node_name),
            ("pod ip", obj.pod_ip),
            ("reason", obj.status.reason),
            ("message", obj.status.message),
            ("nominated node", obj.status.nominated_node_name),
            ("evicted from", obj.status.evicted_from),
            ("cpu", format_cpu(requests.cpu_millis if requests else None)),
            ("memory", format_memory(requests.memory_bytes if requests else None)),
            ("priority", obj.spec.priority),
            ("priority class", obj.spec.priority_class_name),
            ("policy", obj.spec.scheduling_policy),
            ("node selector", ", ".join(f"{key}={value}" for key, value in sorted(obj.spec.node_selector.items()))),
            (
                "tolerations",
                ", ".join(
                    f"{item.key or '*'}{'=' + item.value if item.operator == 'Equal' else ''}"
                    f"{':' + item.effect if item.effect else ''}{'' if item.seconds is None else f' {item.seconds}s'}"
                    for item in obj.spec.tolerations
                ),
            ),
        ]
    if isinstance(obj, Service):
        return [
            ("type", obj.spec.type),
            ("address", obj.address),
            ("pool", obj.status.pool),
            ("class", obj.status.class_name),
            ("ports", ", ".join(str(port) for port in obj.spec.ports)),
        ]
    spec, used = obj.spec, obj.used
    defaults = spec.default_requests
    return [
        ("cpu", _used_of(used.cpu_millis if used else None, spec.cpu_millis, format_cpu)),
        ("memory", _used_of(used.memory_bytes if used else None, spec.memory_bytes, format_memory)),
        ("pods", _used_of(used.pods if used else None, spec.pods)),
        ("services", _used_of(used.services if used else None, spec.services)),
        ("pending pods", used.pending_pods if used else None),
        ("addresses", _address_limits(obj)),
        (
            "default requests",
            f"cpu {format_cpu(defaults.cpu_millis)}, memory {format_memory(defaults.memory_bytes)}"
            if defaults
            else None,
        ),
    ]


# ---- commands --------------------------------------------------------------------------------


class Output:
    def __init__(self, mode: str, stdout: TextIO, dry_run: bool = False) -> None:
        self.mode = mode
        self.stdout = stdout
        self.console = _console(stdout)
        # A write's one line says when nothing was written, as kubectl's does.
        self._note = f" {DRY_RUN_NOTE}" if dry_run else ""

    def json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def line(self, text: str) -> None:
        self.stdout.write(text + self._note + "\n")
        self.stdout.flush()


def _put(spec: dict[str, Any], key: str, value: Any) -> None:
    """Only what the command line gave: the server fills in its own defaults for the rest."""
    if value is not None and value != [] and value is not False:
        spec[key] = value


def with_spec_json(from_flags: dict[str, Any], from_spec: dict[str, Any] | None, path: str = "spec") -> dict[str, Any]:
    """The flags' spec fields with `--spec`'s added. Objects present in both merge field by field
    (`--cpu` and `--spec '{"requests": {"memoryBytes": ...}}'` both count); a field both give with
    different values is a usage error, since silently keeping either one would create something
    other than what one of them asked for."""
    merged = dict(from_flags)
    for key, spec_value in (from_spec or {}).items():
        field = f"{path}.{key}"
        if key not in merged or merged[key] == spec_value:
            merged[key] = spec_value
        elif isinstance(merged[key], dict) and isinstance(spec_value, dict):
            merged[key] = with_spec_json(merged[key], spec_value, field)
        else:
            raise UsageError(
                f"{field} is given twice: {json.dumps(merged[key])} by an option and {json.dumps(spec_value)} "
                f"by --spec; give it once"
            )
    return merged


def _allocation(args: argparse.Namespace) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    _put(policy, "minPrefixLength", args.min_prefix_length)
    _put(policy, "maxPrefixLength", args.max_prefix_length)
    _put(policy, "defaultPrefixLength", args.default_prefix_length)
    _put(policy, "strategy", args.strategy)
    return policy


def pool_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "cidr", args.cidr)
    _put(spec, "parentPool", args.parent)
    _put(spec, "prefixLength", args.prefix_length)
    _put(spec, "ipFamily", args.family)
    _put(spec, "visibility", args.visibility)
    _put(spec, "classNames", args.class_names)
    _put(spec, "excluded", args.exclude)
    _put(spec, "addressSpace", args.address_space)
    _put(spec, "sharedWith", args.shared_with)
    reserved: dict[str, Any] = {}
    _put(reserved, "leading", args.reserved_leading)
    _put(reserved, "trailing", args.reserved_trailing)
    _put(spec, "reserved", reserved or None)
    _put(spec, "allocation", _allocation(args) or None)
    return with_spec_json(spec, args.spec)


def claim_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "poolRef", args.pool)
    _put(spec, "className", args.class_name)
    _put(spec, "prefixLength", args.prefix_length)
    _put(spec, "address", args.address)
    _put(spec, "cidr", args.cidr)
    _put(spec, "reclaimPolicy", args.reclaim_policy)
    return with_spec_json(spec, args.spec)


def class_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "ipFamily", args.family)
    _put(spec, "isDefault", args.is_default)
    _put(spec, "visibility", args.visibility)
    _put(spec, "allowedOrgs", args.allowed_org)
    _put(spec, "reclaimPolicy", args.reclaim_policy)
    _put(spec, "allocation", _allocation(args) or None)
    return with_spec_json(spec, args.spec)


def node_spec(args: argparse.Namespace) -> dict[str, Any]:
    capacity: dict[str, Any] = {}
    _put(capacity, "cpuMillis", args.cpu)
    _put(capacity, "memoryBytes", args.memory)
    _put(capacity, "pods", args.pods)
    spec: dict[str, Any] = {}
    _put(spec, "capacity", capacity or None)
    _put(spec, "podPool", args.pod_pool)
    _put(spec, "podCIDRPrefixLength", args.pod_cidr_prefix_length)
    _put(spec, "zone", args.zone)
    _put(spec, "taints", args.taint)
    if args.unschedulable:
        spec["unschedulable"] = True
    return with_spec_json(spec, args.spec)


def pod_spec(args: argparse.Namespace) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    _put(requests, "cpuMillis", args.cpu)
    _put(requests, "memoryBytes", args.memory)
    spec: dict[str, Any] = {}
    _put(spec, "requests", requests or None)
    _put(spec, "nodeSelector", dict(args.node_selector) or None)
    _put(spec, "tolerations", args.toleration)
    _put(spec, "priority", args.priority)
    _put(spec, "priorityClassName", args.priority_class)
    _put(spec, "schedulingPolicy", args.policy)
    return with_spec_json(spec, args.spec)


def priority_class_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "value", args.value)
    _put(spec, "globalDefault", args.global_default)
    _put(spec, "description", args.description)
    return with_spec_json(spec, args.spec)


def service_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "type", args.service_type)
    _put(spec, "poolRef", args.pool)
    _put(spec, "className", args.class_name)
    _put(spec, "address", args.address)
    _put(spec, "ports", args.port)
    return with_spec_json(spec, args.spec)


def quota_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    _put(spec, "cpuMillis", args.cpu)
    _put(spec, "memoryBytes", args.memory)
    _put(spec, "pods", args.pods)
    _put(spec, "services", args.services)
    _put(spec, "maxPriority", args.max_priority)
    _put(spec, "addressesByClass", dict(args.addresses_by_class) or None)
    _put(spec, "addressesByPool", dict(args.addresses_by_pool) or None)
    defaults: dict[str, Any] = {}
    _put(defaults, "cpuMillis", args.default_cpu)
    _put(defaults, "memoryBytes", args.default_memory)
    _put(spec, "defaultRequests", defaults or None)
    return with_spec_json(spec, args.spec)


def _summary(obj: ApiObject) -> str:
    """What a person wants to see after a create: the block or address it got, where a pod went."""
    if isinstance(obj, IPClaim | IPPool) and obj.status.allocated_cidr:
        return f" {obj.status.allocated_cidr}"
    if isinstance(obj, Node) and obj.pod_cidr:
        return f" {obj.pod_cidr}"
    if isinstance(obj, Service) and obj.address:
        return f" {obj.address}"
    if isinstance(obj, Pod):
        if obj.bound:
            return f": Bound to {obj.node_name}, IP {obj.pod_ip}"
        if obj.pending_reason:
            return f": Pending, {obj.pending_reason}: {obj.status.message}"
    return ""


ResourceCommand = tuple[
    Callable[[Client], ReadableResource[Any]],
    Callable[[Iterable[Any]], Table],
    Callable[[argparse.Namespace], dict[str, Any]] | None,
]

RESOURCES: dict[str, ResourceCommand] = {
    "pool": (lambda client: client.ippools, pools_table, pool_spec),
    "claim": (lambda client: client.ipclaims, claims_table, claim_spec),
    "class": (lambda client: client.ipclasses, classes_table, class_spec),
    "alloc": (lambda client: client.ipallocations, allocations_table, None),
    "node": (lambda client: client.nodes, nodes_table, node_spec),
    "pod": (lambda client: client.pods, pods_table, pod_spec),
    "service": (lambda client: client.services, services_table, service_spec),
    "quota": (lambda client: client.quotas, quotas_table, quota_spec),
    "priorityclass": (lambda client: client.priorityclasses, priority_classes_table, priority_class_spec),
}
# What a create prints when it made the object (HTTP 201), and when the server answered with the
# identical object that already existed (HTTP 200: creates are idempotent). `quota set` creates or
# replaces, so its 200 is a replacement and says "set" too.
CREATE_VERBS = {
    "create": ("created", "unchanged (already exists)"),
    "register": ("registered", "unchanged (already registered)"),
    "set": ("set", "set"),
}
NODE_ACTION_VERBS = {"cordon": "cordoned", "uncordon": "uncordoned", "drain": "drained"}
# `node label` and `node taint` (PATCH /v1/nodes/NAME): what they print when they set or add,
# only removed, or both, as kubectl says it.
LABEL_VERBS = ("labeled", "unlabeled", "labeled")  # what `label` did: set, removed only, both
TAINT_VERBS = ("tainted", "untainted", "modified")
_REPLAYED_NOTE = "(replayed: the answer the server gave this idempotency key the first time)"
DRY_RUN_SERVER = "server"  # --dry-run's one value, as kubectl's: the server checks and answers
DRY_RUN_NOTE = "(server dry run)"


def _field_selector(args: argparse.Namespace) -> str | None:
    """`pod list --node N --phase P --field-selector S` (or a claim's or allocation's `--pool`),
    as one selector."""
    parts = []
    if getattr(args, "node", None):
        parts.append(f"spec.nodeName={args.node}")
    if getattr(args, "pool", None):
        parts.append(f"{'status' if args.command == 'claim' else 'spec'}.pool={args.pool}")
    if getattr(args, "phase", None):
        parts.append(f"status.phase={args.phase}")
    if getattr(args, "field_selector", None):
        parts.append(args.field_selector)
    return ",".join(parts) or None


def run_node_action(nodes: NodeResource, args: argparse.Namespace, out: Output) -> int:
    if args.action == "heartbeat":
        beat = nodes.heartbeat(args.name)
        if out.mode == "json":
            out.json(dict(beat.raw))
        else:
            # The answer is the member's view before this heartbeat: a NotReady node is marked Ready
            # by the leader once the heartbeat reaches it (a replicated condition change), not here.
            condition = "Ready" if beat.ready else "NotReady until the leader marks it Ready on this heartbeat"
            out.line(f"node/{beat.name} heartbeat taken by {_dash(beat.member_id)}; the node is {condition}")
        return EXIT_OK
    act = {"cordon": nodes.cordon, "uncordon": nodes.uncordon, "drain": nodes.drain}[args.action]
    node = act(args.name, idempotency_key=args.idempotency_key)
    if out.mode == "json":
        out.json(dict(node.raw))
        return EXIT_OK
    evicted = node.status.evicted_pods
    detail = f" ({evicted} pod{'' if evicted == 1 else 's'} evicted)" if evicted is not None else ""
    out.line(f"node/{node.name} {NODE_ACTION_VERBS[args.action]}{detail}")
    return EXIT_OK


def _evicted_detail(evicted: int | None, shown_when_none: bool) -> str:
    if evicted is None or (evicted == 0 and not shown_when_none):
        return ""
    return f" ({evicted} pod{'' if evicted == 1 else 's'} evicted)"


def _resource_version_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--resource-version",
        type=_positive_int,
        metavar="N",
        help="change it only if it is still at this resourceVersion (else exit 4, nothing changed)",
    )


def _label_parser(actions: Any, common: argparse.ArgumentParser, noun: str, namespaced: bool = False) -> None:
    """`NOUN label NAME KEY=VALUE|KEY- ...` (run_label)."""
    label = _named(
        actions.add_parser("label", parents=[common], help=f"set (KEY=VALUE) or remove (KEY-) {noun} labels"),
        namespaced=namespaced,
    )
    label.add_argument("changes", nargs="+", metavar="KEY=VALUE|KEY-", help="KEY=VALUE sets a label, KEY- removes it")
    label.add_argument("--overwrite", action="store_true", help="change a label that has another value")
    _resource_version_option(label)
    _write_options(label)


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a resourceVersion is a positive integer, not {text!r}")
    return int(text)


# `node taint` writes the node's whole taint list, computed from the node as read: sent as a
# conditional update, and read and computed again when another change came in between (at most
# this many attempts, so a node changed without pause cannot hold the command for ever).
taint_attempts_max = 5


def _taint_once(
    nodes: NodeResource, dry_run: NodeResource, args: argparse.Namespace, changes: TaintChanges, attempt: int
) -> tuple[Node, Node]:
    """(the node as read, as updated): one read, compute and conditional write. A taint that
    needs --overwrite is refused once a dry run through `dry_run` shows the caller may write
    the node (_refuse_unless_writable)."""
    before = nodes.get(args.name)
    if args.resource_version is not None and before.metadata.resource_version != args.resource_version:
        raise Refused(
            f"node/{args.name} is at resourceVersion {before.metadata.resource_version}, not "
            f"{args.resource_version}: it changed since; nothing was sent",
            EXIT_CONFLICT,
        )
    try:
        taints = taints_after(args.name, before.spec.taints, changes, overwrite=args.overwrite)
    except Refused as refusal:
        _refuse_unless_writable(lambda: dry_run.update(args.name, taints=before.spec.taints), refusal)
    # A retry after a conflict is a different write (computed anew), so it needs its own key.
    key = args.idempotency_key if args.idempotency_key is None or attempt == 1 else f"{args.idempotency_key}.{attempt}"
    try:
        node = nodes.update(
            args.name, taints=taints, resource_version=before.metadata.resource_version, idempotency_key=key
        )
    except Invalid as refused:
        # A server of a build before 2026-12-07 takes no precondition: without one, as then.
        if refused.field != "metadata.resourceVersion" or args.resource_version is not None:
            raise
        print(
            f"allot: the server takes no resourceVersion (an earlier build), so node/{args.name}'s taints are "
            "written without checking that nobody changed them since they were read",
            file=sys.stderr,
        )
        key = None if key is None else f"{key}.unconditional"  # the refusal is remembered under the key
        node = nodes.update(args.name, taints=taints, idempotency_key=key)
    return before, node


def run_node_update(nodes: NodeResource, dry_run: NodeResource, args: argparse.Namespace, out: Output) -> int:
    """`node taint`: read the node, check the change as kubectl does (a different value needs
    --overwrite), send the patch, retrying a conflict with another writer, print what changed.
    Bad input is refused before anything is sent."""
    changes = taint_changes(args.changes)
    attempt = 1
    while True:
        try:
            before, node = _taint_once(nodes, dry_run, args, changes, attempt)
            break
        except Conflict as conflict:
            # Another change came between our read and our write (the refusal names the
            # node's version now; any other conflict, such as an idempotency key used for
            # another request, is the caller's to see); with --resource-version the caller
            # asked for that version only.
            if "resourceVersion" not in conflict.details or args.resource_version is not None:
                raise
            if attempt == taint_attempts_max:
                raise Refused(
                    f"node/{args.name} changed {attempt} times between this command's read and its write; "
                    "nothing was written: run it again when the node is quieter",
                    EXIT_CONFLICT,
                ) from None
            attempt += 1
    new = [taint for taint in node.spec.taints if taint not in before.spec.taints]
    slots = {(taint.key, taint.effect) for taint in new}
    set_ = [str(taint) for taint in new]
    removed = [
        f"{taint}-"
        for taint in before.spec.taints
        if taint not in node.spec.taints and (taint.key, taint.effect) not in slots
    ]
    added_no_execute = any(taint.effect == "NoExecute" for taint in new)
    if out.mode == "json":
        out.json(dict(node.raw))
        return EXIT_OK
    changed = f" {', '.join(set_ + removed)}" if set_ or removed else ""
    out.line(
        f"node/{node.name} {_change_verb(TAINT_VERBS, set_, removed)}{changed}"
        f"{_evicted_detail(node.status.evicted_pods, added_no_execute)}"
    )
    return EXIT_OK


def _change_verb(verbs: tuple[str, str, str], set_: list[str], removed: list[str]) -> str:
    """How a label or taint command's line names what it did: (added, removed only, both)."""
    added, removed_only, both = verbs
    return "unchanged" if not set_ and not removed else both if set_ and removed else added if set_ else removed_only


def _refuse_unless_writable(probe: Callable[[], object], refusal: Refused) -> NoReturn:
    """Raise `refusal` (the caller's own mistake, such as a missing --overwrite) once a dry run
    of a write that changes nothing (`probe`) shows the caller may write the object at all:
    telling someone to pass --overwrite, only to be refused as forbidden, sends them round
    twice. The server's refusal of the dry run is raised instead (an earlier build that has no
    dry runs answers `invalid` for the parameter: then `refusal`, as before)."""
    try:
        probe()
    except Invalid as refused:
        if refused.field != core.QUERY_DRY_RUN:
            raise
    raise refusal


def run_label(
    resource: LabelledResource[Any], dry_run: LabelledResource[Any], args: argparse.Namespace, out: Output
) -> int:
    """`KIND label NAME KEY=VALUE|KEY- ...`, as `kubectl label`: read the object, refuse a new
    value for a label it has unless --overwrite (once a dry run through `dry_run` shows the
    caller may write it), note a removal of a label it does not have, send the merge patch
    (conditional with --resource-version), print what changed. Bad input is refused before
    anything is sent."""
    patch = label_patch(args.changes)
    namespace = getattr(args, "namespace", None)
    noun = resource.kind.lower()
    before = resource.get(args.name, namespace=namespace)
    labels = before.metadata.labels
    clashes = [
        f"{key}={labels[key]} (not {value})"
        for key, value in patch.items()
        if value is not None and key in labels and labels[key] != value
    ]
    if clashes and not args.overwrite:
        refusal = Refused(
            f"{noun}/{args.name} already has label{'s' if len(clashes) > 1 else ''} {', '.join(clashes)}; "
            f"pass --overwrite to change {'them' if len(clashes) > 1 else 'it'}",
            EXIT_CONFLICT,
        )
        unchanged = {key: labels[key] for key in patch if key in labels}
        _refuse_unless_writable(lambda: dry_run.label(args.name, unchanged, namespace=namespace), refusal)
    for key in [key for key, value in patch.items() if value is None and key not in labels]:
        print(f"allot: {noun}/{args.name} has no label {key}", file=sys.stderr)
    obj = resource.label(
        args.name,
        patch,
        namespace=namespace,
        resource_version=args.resource_version,
        idempotency_key=args.idempotency_key,
    )
    if out.mode == "json":
        out.json(dict(obj.raw))
        return EXIT_OK
    set_ = [_label_change(key, value) for key, value in patch.items() if value is not None and labels.get(key) != value]
    removed = [_label_change(key, None) for key, value in patch.items() if value is None and key in labels]
    changed = f" {', '.join(set_ + removed)}" if set_ or removed else ""
    out.line(f"{noun}/{args.name} {_change_verb(LABEL_VERBS, set_, removed)}{changed}")
    return EXIT_OK


def run_scheduler(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.action == "get":
        status = client.scheduler.get()
    elif args.action == "set":
        status = client.scheduler.set_policy(args.policy, idempotency_key=args.idempotency_key)
    else:
        status = client.scheduler.retry(args.pods, idempotency_key=args.idempotency_key)
    if out.mode == "json":
        out.json(dict(status.raw))
    elif args.action == "set":
        out.line(f"scheduler policy {status.policy}")
    elif args.action == "retry":
        out.line(
            f"scheduler retry: {_dash(status.examined)} pending pods examined, {_dash(status.bound)} bound, "
            f"{_dash(status.pending_pods)} still pending"
        )
    else:
        out.console.print(scheduler_table(status))
    return EXIT_OK


def run_resource(client: Client, args: argparse.Namespace, out: Output) -> int:
    accessor, table_of, spec_of = RESOURCES[args.command]
    resource = accessor(client)
    namespace = getattr(args, "namespace", None)
    if args.action == "list":
        items = list(
            resource.list(
                page_size=args.page_size,
                label_selector=args.selector,
                field_selector=_field_selector(args),
                namespace=namespace,
                consistency="stale" if args.stale else None,
            )
        )
        if out.mode == "json":
            out.json({"items": [dict(item.raw) for item in items]})
        else:
            out.console.print(table_of(items))
        return EXIT_OK
    obj: ApiObject
    if args.action == "get":
        obj = resource.get(args.name, namespace=namespace)
        if out.mode == "json":
            out.json(dict(obj.raw))
        else:
            out.console.print(_describe(obj))
        return EXIT_OK
    if args.tenant and resource.platform_writes:  # every write from here on: create, delete, label, ...
        print(f"allot: --as {args.tenant} is ignored: {args.command} writes are the platform's", file=sys.stderr)
    if isinstance(resource, NodeResource) and args.action in (*NODE_ACTION_VERBS, "heartbeat"):
        return run_node_action(resource, args, out)
    if isinstance(resource, LabelledResource) and args.action == "label":
        probes = accessor(client.dry_run())
        assert isinstance(probes, LabelledResource)  # the same accessor, on a dry-run client
        return run_label(resource, probes, args, out)
    if isinstance(resource, NodeResource) and args.action == "taint":
        return run_node_update(resource, client.dry_run().nodes, args, out)
    if not isinstance(resource, WritableResource) or spec_of is None:
        raise UsageError(f"{args.command} {args.action} is not possible")
    if args.action in CREATE_VERBS:
        labels = dict(args.label) if args.label else None
        answer = resource.create_answer(
            args.name, spec_of(args), labels=labels, namespace=namespace, idempotency_key=args.idempotency_key
        )
        made, existed = CREATE_VERBS[args.action]
        verb = made if answer.created else existed
    else:
        answer = resource.delete_answer(args.name, namespace=namespace, idempotency_key=args.idempotency_key)
        verb = "deleted"
    obj = answer.value
    if out.mode == "json":
        out.json(dict(obj.raw))
    else:
        replayed = f" {_REPLAYED_NOTE}" if answer.replayed else ""
        out.line(f"{obj.kind.lower()}/{obj.name} {verb}{_summary(obj)}{replayed}")
    return EXIT_OK


def _mixed_builds(reports: Sequence[MemberReport]) -> str | None:
    """A warning when the members that answered run more than one build, else None. A member
    that shows no build id runs a build from before build ids, which differs from any that does."""
    builds = {
        report.status.member_id: report.status.build_id or "a build from before build ids"
        for report in reports
        if report.status is not None
    }
    if len(set(builds.values())) <= 1:
        return None
    named = ", ".join(f"{member} runs {build}" for member, build in sorted(builds.items()))
    return (
        f"the members run different builds ({named}): a member whose build no majority runs takes no writes, "
        "and a member stops at the first log entry of another build; run one build on every member "
        "(README, Upgrading)"
    )


def run_status(client: Client, out: Output) -> int:
    reports = client.cluster_status()
    if out.mode == "json":
        out.json(
            [
                {
                    "endpoint": report.endpoint,
                    "reachable": report.reachable,
                    "ready": report.ready,
                    "error": report.error,
                    "status": dict(report.status.raw) if report.status is not None else None,
                }
                for report in reports
            ]
        )
    else:
        out.console.print(status_table(reports))
        for report in reports:
            if report.error is not None:
                out.console.print(Text(f"{report.endpoint}: {report.error}", style="red"), soft_wrap=True)
    mixed = _mixed_builds(reports)
    if mixed is not None and out.mode != "json":
        out.console.print(Text(mixed, style="bold red"), soft_wrap=True)
    leaders = {report.status.leader for report in reports if report.status is not None and report.status.leader}
    if not any(report.reachable for report in reports):
        if out.mode != "json":
            out.console.print(Text(f"no member answered {_CLUSTER_DOWN_HINT}", style="bold red"))
        return EXIT_UNAVAILABLE
    if not leaders:
        if out.mode != "json":
            out.console.print(Text("no leader: the cluster cannot accept writes now", style="bold red"))
        return EXIT_UNAVAILABLE
    return EXIT_UNAVAILABLE if mixed is not None else EXIT_OK  # a mixed cluster is about to lose members


def _event_line(event: WatchEvent) -> str:
    obj = event.object
    where = f"{obj.metadata.tenant}/" if obj.metadata.tenant else ""
    namespace = f"{obj.metadata.namespace}/" if obj.metadata.namespace else ""
    detail = ""
    if isinstance(obj, IPClaim):
        detail = _dash(obj.status.allocated_cidr)
    elif isinstance(obj, IPAllocation):
        detail = _dash(obj.spec.cidr)
    elif isinstance(obj, IPPool):
        detail = _dash(obj.status.allocated_cidr or obj.spec.cidr)
    elif isinstance(obj, Pod):
        detail = f"{_dash(obj.phase)} {obj.node_name or ''} {obj.pod_ip or obj.pending_reason or ''}".rstrip()
    elif isinstance(obj, Node):
        detail = (
            f"{_dash(obj.pod_cidr)} {'Ready' if obj.ready else 'NotReady'}{' cordoned' if obj.unschedulable else ''}"
        )
    elif isinstance(obj, Service):
        detail = _dash(obj.address)
    return f"{event.resource_version:>8}  {event.type:<8}  {event.kind:<12}  {where}{namespace}{obj.name}  {detail}"


def run_watch(client: Client, args: argparse.Namespace, out: Output) -> int:
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    until_s = time.monotonic() + args.duration if args.duration is not None else None
    seen = 0
    with client.watch(
        args.kinds, args.resource_version, field_selector=args.field_selector, label_selector=args.selector
    ) as stream:
        while args.count is None or seen < args.count:
            wait_s = None if until_s is None else until_s - time.monotonic()
            if wait_s is not None and wait_s <= 0:
                break
            event = stream.next_event(wait_s)
            if event is None:
                break
            seen += 1
            if out.mode == "json":
                out.line(json.dumps(dict(event.raw), sort_keys=True))
            else:
                out.line(_event_line(event))
    return EXIT_OK


# ---- entry point -----------------------------------------------------------------------------


def exit_code_for(error: AllotError) -> int:
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_ERROR


def _fail(message: str, code: int, stderr: TextIO) -> int:
    stderr.write(f"allot: {' '.join(message.split())}\n")  # one line, whatever the message holds
    stderr.flush()
    return code


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    out_stream = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)  # usage errors exit 2
    try:
        token = resolve_token(args, dict(os.environ))
        timeout, deadline = _seconds(args.timeout, "--timeout"), _seconds(args.deadline, "--deadline")
        client = Client(args.endpoints, token, timeout=timeout, deadline=deadline, tenant=args.tenant or None)
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE, err_stream)
    dry_run = getattr(args, "dry_run", None) is not None
    out = Output(args.output, out_stream, dry_run)
    try:
        with client:
            if dry_run:
                client = client.dry_run()
            if args.command == "status":
                return run_status(client, out)
            if args.command == "watch":
                return run_watch(client, args, out)
            if args.command == "scheduler":
                return run_scheduler(client, args, out)
            return run_resource(client, args, out)
    except AllotError as error:
        said = str(error)
        if token is None and isinstance(error, Unauthorized):
            said += f" (no token was given: {_TOKEN_SOURCES})"
        elif isinstance(error, Unavailable) and not isinstance(error, (NoLeader, Overloaded, NotReady)):
            said += f" {_CLUSTER_DOWN_HINT}"
        if error.replayed:
            said += f" {_REPLAYED_NOTE}"
        if dry_run:
            said += f" {DRY_RUN_NOTE}"
        return _fail(said, exit_code_for(error), err_stream)
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE, err_stream)
    except Refused as exc:
        return _fail(str(exc), exc.code, err_stream)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `allot watch | head`: the reader is gone, which is fine
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
