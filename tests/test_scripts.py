"""Data-driven tests of the IPAM state machine, in the style of etcd-io/raft's `testdata/*.txt`.

Each file in `tests/scripts/` is a story told to one fresh state machine. A test case is one
or more command lines, a line `----`, and the expected output; cases are separated by a blank
line, and `#` lines between cases are comments. Every command is applied in order, and after
every command the runner checks the state's invariants (`check_invariants`) and, for a refused
command, that it wrote nothing.

Rewriting: when behaviour changes on purpose, regenerate the expected outputs with

    ALLOT_REWRITE=1 .venv/bin/pytest tests/test_scripts.py [-k <script name>]

and review the diff (`git diff tests/scripts`) line by line before committing it.

The command language (WHO is `admin` for the platform admin, `admin@org/project` for an admin
acting for a tenant, `org/project` for a member of that project):

    pool   WHO NAME [cidr=C] [parent=P] [prefix=N] [family=IPv4|IPv6] [vis=platform|consumer|shared]
                    [shared=p1,p2] [classes=c1,c2] [min=N] [max=N] [default=N] [strategy=S]
                    [leading=N] [trailing=N] [excluded=C1,C2] [space=S]
    claim  WHO NAME [ns=NS] [pool=P] [class=C] [prefix=N] [address=A] [cidr=C] [reclaim=Delete|Retain]
    class  WHO NAME [family=F] [min=N] [max=N] [default=N] [strategy=S] [reclaim=R]
                    [vis=platform|restricted] [orgs=o1,o2] [isDefault]
    delete WHO pool|claim|class NAME [ns=NS]
    label  WHO pool|claim|class|pod|service|priorityclass|node NAME [ns=NS] [rv=N] [label.K=V ...]
                    [unlabel=K,...] [nolabels]   the kind's update: a merge patch of metadata.labels
    run    WHO COMMAND.TYPE [rid=ID] {json body}           any command with a raw JSON body
    get    WHO pool|claim|allocation|class NAME [ns=NS] [json]
    list   WHO pools|claims|allocations|classes [limit=N] [continue] [selector="k=v,..."] [ns=NS]
    status WHO POOL                                          the pool's live status
    invariants                                               check_invariants: `ok` or the problems
    tick DURATION                                            move the envelope clock (500ms, 30s, 16m)

Every write takes `rid=ID` (a request id, for exactly-once retries), `label.KEY=VALUE` (labels)
and the flag `details` (print a refusal's details). A NAME such as `c[1-4]` runs the command
once for each of c1..c4. `continue` resumes the previous `list` from its continue token.

Outputs: `ok created|existing|deleted <object>` (with `(no writes)` when the command changed
nothing), `rejected <code>: <message>`, and for `list` one line per object then a count,
`(3 items)`, or `(2 items, more: continue)` when there is another page. Each command runs one
second after the one before it (envelope time), unless `tick` moves the clock further.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from statemachine import Ok, Principal, Rejected, keys
from statemachine.errors import InvariantViolation
from statemachine.invariants import check_invariants, digest
from statemachine.queries import get, list_objects
from tests.harness import ADMIN, Machine, admin_for, member

SCRIPTS_DIR = Path(__file__).parent / "scripts"
REWRITE_ENV = "ALLOT_REWRITE"
SEPARATOR = "----"
REWRITE_HINT = f"to accept the actual output, run: {REWRITE_ENV}=1 .venv/bin/pytest tests/test_scripts.py -k {{stem}}"

_PLURALS = {
    "pool": "ippools",
    "pools": "ippools",
    "ippools": "ippools",
    "claim": "ipclaims",
    "claims": "ipclaims",
    "ipclaims": "ipclaims",
    "allocation": "ipallocations",
    "allocations": "ipallocations",
    "ipallocations": "ipallocations",
    "class": "ipclasses",
    "classes": "ipclasses",
    "ipclasses": "ipclasses",
}
_INT_OPTIONS = {"prefix", "min", "max", "default", "leading", "trailing"}
_LIST_OPTIONS = {"shared", "classes", "excluded", "orgs"}
_FLAGS = {"details", "json", "continue", "isDefault", "nolabels"}
_POOL_OPTIONS = {
    "cidr": ("spec", "cidr"),
    "parent": ("spec", "parentPool"),
    "prefix": ("spec", "prefixLength"),
    "family": ("spec", "ipFamily"),
    "vis": ("spec", "visibility"),
    "shared": ("spec", "sharedWith"),
    "classes": ("spec", "classNames"),
    "min": ("allocation", "minPrefixLength"),
    "max": ("allocation", "maxPrefixLength"),
    "default": ("allocation", "defaultPrefixLength"),
    "strategy": ("allocation", "strategy"),
    "leading": ("reserved", "leading"),
    "trailing": ("reserved", "trailing"),
    "excluded": ("spec", "excluded"),
    "space": ("spec", "addressSpace"),
}
_CLAIM_OPTIONS = {
    "pool": ("spec", "poolRef"),
    "class": ("spec", "className"),
    "prefix": ("spec", "prefixLength"),
    "address": ("spec", "address"),
    "cidr": ("spec", "cidr"),
    "reclaim": ("spec", "reclaimPolicy"),
}
_CLASS_OPTIONS = {
    "family": ("spec", "ipFamily"),
    "min": ("allocation", "minPrefixLength"),
    "max": ("allocation", "maxPrefixLength"),
    "default": ("allocation", "defaultPrefixLength"),
    "strategy": ("allocation", "strategy"),
    "reclaim": ("spec", "reclaimPolicy"),
    "vis": ("spec", "visibility"),
    "orgs": ("spec", "allowedOrgs"),
    "isDefault": ("spec", "isDefault"),
}
# `label WHO KIND NAME`: the update (label patch) command of each kind.
_LABEL_COMMANDS = {
    "pool": "pool.update",
    "claim": "claim.update",
    "class": "class.update",
    "pod": "pod.update",
    "service": "service.update",
    "priorityclass": "priorityclass.update",
    "node": "node.update",
}
_DURATION = re.compile(r"(\d+)(ms|s|m)")
_NAME_RANGE = re.compile(r"^(.*)\[(\d+)-(\d+)\](.*)$")


class ScriptError(Exception):
    """The script itself is malformed (not a behaviour of the state machine)."""


# ---- parsing the script file ------------------------------------------------------------------


@dataclass
class Case:
    commands: list[tuple[int, str]]  # (1-based line number, command text)
    expected: list[str]
    output_start: int  # 0-based index of the first expected line in the file's lines
    output_end: int  # 0-based index one past the last expected line

    @property
    def line(self) -> int:
        return self.commands[0][0]


def parse_script(text: str) -> list[Case]:
    lines = text.splitlines()
    cases: list[Case] = []
    position = 0
    while position < len(lines):
        stripped = lines[position].strip()
        if not stripped or stripped.startswith("#"):
            position += 1
            continue
        commands: list[tuple[int, str]] = []
        while position < len(lines) and lines[position].strip() != SEPARATOR:
            if not lines[position].strip():
                raise ScriptError(f"line {position + 1}: blank line inside a case before its '{SEPARATOR}'")
            if not lines[position].strip().startswith("#"):
                commands.append((position + 1, lines[position].strip()))
            position += 1
        if position == len(lines):
            raise ScriptError(f"line {commands[0][0]}: case has no '{SEPARATOR}' line")
        position += 1  # the separator
        start = position
        while position < len(lines) and lines[position].strip():
            position += 1
        cases.append(Case(commands, lines[start:position], start, position))
    return cases


def rewrite_script(text: str, cases: list[Case], outputs: list[list[str]]) -> str:
    lines = text.splitlines()
    for case, output in sorted(zip(cases, outputs, strict=True), key=lambda pair: -pair[0].output_start):
        lines[case.output_start : case.output_end] = output
    return "\n".join(lines) + "\n"


# ---- rendering objects so a reviewer sees at a glance what happened ---------------------------


def _labels(obj: dict[str, Any]) -> str:
    labels = obj["metadata"].get("labels") or {}
    return " {" + ",".join(f"{key}={value}" for key, value in labels.items()) + "}" if labels else ""


def _tenant_prefix(obj: dict[str, Any], viewer: Principal) -> str:
    metadata = obj["metadata"]
    if not metadata.get("org") or (metadata["org"], metadata["project"]) == (viewer.org, viewer.project):
        return ""
    return f"{metadata['org']}/{metadata['project']}/"


def _pool_line(obj: dict[str, Any]) -> str:
    metadata, spec, status = obj["metadata"], obj["spec"], obj["status"]
    pool_id = f"{metadata['org']}/{metadata['project']}/{metadata['name']}" if metadata["org"] else metadata["name"]
    visibility = spec["visibility"]
    if visibility == "shared":
        visibility += ":" + (",".join(spec["sharedWith"]) if spec["sharedWith"] else "org")
    if "allowedOrgs" in status:
        visibility += ":" + ",".join(status["allowedOrgs"])
    parts = [f"pool {pool_id} {status['allocatedCIDR']} {visibility}"]
    if "parentPool" in status:
        parts.append(f"parent={status['parentPool']}")
    if status["addressSpace"] != "default":
        parts.append(f"space={status['addressSpace']}")
    if spec["classNames"]:
        parts.append("classes=" + ",".join(spec["classNames"]))
    return " ".join(parts) + _labels(obj)


def _claim_line(obj: dict[str, Any], viewer: Principal, word: str) -> str:
    metadata, status = obj["metadata"], obj["status"]
    parts = [f"{word} {_tenant_prefix(obj, viewer)}{metadata['namespace']}/{metadata['name']}"]
    if word == "claim":
        parts.append(f"{status['allocatedCIDR']} pool={status['pool']}")
        class_name, reclaim, phase = status["className"], status["reclaimPolicy"], status["phase"]
    else:
        spec = obj["spec"]
        parts.append(f"{spec['cidr']} pool={spec['pool']}")
        class_name, reclaim, phase = spec["className"], spec["reclaimPolicy"], status["phase"]
    if class_name:
        parts.append(f"class={class_name}")
    parts.append(f"reclaim={reclaim} {phase}")
    return " ".join(parts) + _labels(obj)


def _class_line(obj: dict[str, Any]) -> str:
    spec = obj["spec"]
    allocation = spec["allocation"]
    parts = [
        f"class {obj['metadata']['name']} {spec['ipFamily']}",
        f"/{allocation['minPrefixLength']}../{allocation['maxPrefixLength']}",
        f"default=/{allocation['defaultPrefixLength']} {allocation['strategy']} reclaim={spec['reclaimPolicy']}",
    ]
    if spec["visibility"] != "platform":
        parts.append(f"{spec['visibility']}:" + ",".join(spec["allowedOrgs"]))
    if spec["isDefault"]:
        parts.append("(default)")
    return " ".join(parts) + _labels(obj)


def describe(obj: dict[str, Any], viewer: Principal) -> str:
    kind = obj.get("kind")
    if kind == "IPPool":
        return _pool_line(obj)
    if kind == "IPClaim":
        return _claim_line(obj, viewer, "claim")
    if kind == "IPAllocation":
        return _claim_line(obj, viewer, "allocation")
    if kind == "IPClass":
        return _class_line(obj)
    return json.dumps(obj, sort_keys=True)


def describe_status(obj: dict[str, Any]) -> list[str]:
    status = obj["status"]
    capacity = status["capacity"]
    largest = status["largestFreePrefix"]
    return [
        f"{_pool_line(obj).removeprefix('pool ')}",
        f"  phase={status['phase']} utilization={status['utilization']} "
        f"largestFreePrefix={'none' if largest is None else f'/{largest}'}",
        f"  capacity total={capacity['total']} allocated={capacity['allocated']} "
        f"available={capacity['available']} reserved={capacity['reserved']}; "
        f"allocations={status['allocations']} childPools={status['childPools']}",
    ]


def written_verb(command_type: str, created: bool) -> str:
    """How a script's output names a successful write."""
    if command_type.endswith(".delete"):
        return "deleted"
    if command_type.endswith(".update"):
        return "updated"
    return "created" if created else "existing"


def describe_rejection(refusal: Rejected, show_details: bool) -> list[str]:
    lines = [f"rejected {refusal.code}: {refusal.message}"]
    if show_details:
        lines.append("  details: " + json.dumps(refusal.details, sort_keys=True))
    return lines


# ---- running commands ---------------------------------------------------------------------------


@dataclass
class Command:
    verb: str
    words: list[str]  # positional arguments after the verb
    options: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)


def parse_principal(text: str) -> Principal:
    if text == "admin":
        return ADMIN
    admin, _, tenant = text.rpartition("@")
    org, slash, project = tenant.partition("/")
    if not slash or not org or not project or admin not in ("", "admin"):
        raise ScriptError(f"{text!r} is not a principal: use admin, admin@org/project or org/project")
    return admin_for(org, project) if admin else member(org, project)


def parse_command(text: str) -> Command:
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise ScriptError(f"cannot split {text!r}: {exc}") from None
    command = Command(tokens[0], [])
    for token in tokens[1:]:
        key, equals, value = token.partition("=")
        if not equals:
            if token in _FLAGS:
                command.flags.add(token)
            else:
                command.words.append(token)
        elif key.startswith("label."):
            command.labels[key.removeprefix("label.")] = value
        else:
            command.options[key] = value
    return command


def expand_names(name: str) -> list[str]:
    found = _NAME_RANGE.match(name)
    if found is None:
        return [name]
    head, first, last, tail = found.groups()
    return [f"{head}{number}{tail}" for number in range(int(first), int(last) + 1)]


def check_options(command: Command, options: set[str], flags: set[str], labels: bool = False) -> None:
    """Refuse options and flags the command does not take, so a typo never passes silently."""
    unknown = sorted(set(command.options) - options) + sorted(command.flags - flags)
    if command.labels and not labels:
        unknown.append("label.*")
    if unknown:
        raise ScriptError(
            f"{command.verb}: unknown option {unknown[0]!r}; known: {', '.join(sorted(options | flags)) or 'none'}"
        )


def build_body(name: str, command: Command, table: dict[str, tuple[str, str]]) -> dict[str, Any]:
    flags = {key for key in table if key in _FLAGS}
    check_options(command, set(table) - flags | {"rid", "ns"}, flags | {"details"}, labels=True)
    body: dict[str, Any] = {"name": name}
    spec: dict[str, Any] = {}
    fields: list[tuple[str, Any]] = [(key, True) for key in sorted(command.flags & flags)]
    for key, value in [*command.options.items(), *fields]:
        if key in ("rid", "ns"):
            continue
        section, field_name = table[key]
        converted: Any = value
        if key in _INT_OPTIONS:
            try:
                converted = int(value)
            except ValueError:
                raise ScriptError(f"{command.verb}: {key}={value!r} is not an integer") from None
        elif key in _LIST_OPTIONS:
            converted = value.split(",") if value else []
        target = spec if section == "spec" else spec.setdefault(section, {})
        target[field_name] = converted
    if "ns" in command.options:
        body["namespace"] = command.options["ns"]
    if command.labels:
        body["labels"] = command.labels
    body["spec"] = spec
    return body


class ScriptRunner:
    def __init__(self) -> None:
        self.machine = Machine()
        self.continue_token: str | None = None

    def run(self, text: str) -> list[str]:
        if text.startswith("run "):
            return self._run_raw(text)
        command = parse_command(text)
        if command.verb == "tick":
            return self._tick(command)
        if command.verb == "invariants":
            check_options(command, set(), set())
            try:
                check_invariants(self.machine.store)
            except InvariantViolation as violation:
                return [f"violated: {violation}"]
            return ["ok"]
        if len(command.words) < 2:
            raise ScriptError(f"{command.verb} needs a principal and an argument")
        who = parse_principal(command.words[0])
        if command.verb in ("pool", "claim", "class"):
            table = {"pool": _POOL_OPTIONS, "claim": _CLAIM_OPTIONS, "class": _CLASS_OPTIONS}[command.verb]
            output: list[str] = []
            for name in expand_names(command.words[1]):
                body = build_body(name, command, table)
                output += self._write(who, f"{command.verb}.create", body, command)
            return output
        if command.verb == "label":
            return self._label(who, command)
        if command.verb == "delete":
            if len(command.words) != 3 or command.words[1] not in ("pool", "claim", "class"):
                raise ScriptError("delete WHO pool|claim|class NAME")
            check_options(command, {"rid", "ns"}, {"details"})
            output = []
            for name in expand_names(command.words[2]):
                body = {"name": name}
                if "ns" in command.options:
                    body["namespace"] = command.options["ns"]
                output += self._write(who, f"{command.words[1]}.delete", body, command)
            return output
        if command.verb == "get":
            return self._get(who, command)
        if command.verb == "list":
            return self._list(who, command)
        if command.verb == "status":
            check_options(command, set(), {"details"})
            try:
                pool = get(self.machine.store, who, "ippools", command.words[1])
            except Rejected as refusal:
                return describe_rejection(refusal, "details" in command.flags)
            return describe_status(pool)
        raise ScriptError(f"unknown command {command.verb!r}")

    def _label(self, who: Principal, command: Command) -> list[str]:
        """label WHO KIND NAME: the kind's update command, a merge patch of metadata.labels."""
        if len(command.words) != 3 or command.words[1] not in _LABEL_COMMANDS:
            raise ScriptError(f"label WHO {'|'.join(_LABEL_COMMANDS)} NAME [options]")
        check_options(command, {"rid", "ns", "rv", "unlabel"}, {"details", "nolabels"}, True)
        metadata: dict[str, Any] = {}
        if "nolabels" in command.flags:
            metadata["labels"] = None
        else:
            patch: dict[str, str | None] = dict(command.labels)
            for key in command.options["unlabel"].split(",") if "unlabel" in command.options else ():
                patch[key] = None
            if patch:
                metadata["labels"] = patch
        if "rv" in command.options:
            metadata["resourceVersion"] = int(command.options["rv"])
        body: dict[str, Any] = {"name": command.words[2], "metadata": metadata}
        if "ns" in command.options:
            body["namespace"] = command.options["ns"]
        return self._write(who, _LABEL_COMMANDS[command.words[1]], body, command)

    def _tick(self, command: Command) -> list[str]:
        found = _DURATION.fullmatch(command.words[0]) if len(command.words) == 1 else None
        if found is None:
            raise ScriptError("tick DURATION, such as tick 500ms, tick 30s or tick 16m")
        amount, unit = int(found.group(1)), found.group(2)
        self.machine.ts_ms += amount * {"ms": 1, "s": 1000, "m": 60_000}[unit]
        return [f"clock advanced {command.words[0]}"]

    def _run_raw(self, text: str) -> list[str]:
        head, brace, body_text = text.partition("{")
        words = head.split()
        if not brace or len(words) < 3:
            raise ScriptError("run WHO COMMAND.TYPE [rid=ID] [details] {json body}")
        try:
            body = json.loads(brace + body_text)
        except json.JSONDecodeError as exc:
            raise ScriptError(f"bad JSON body: {exc}") from None
        command = parse_command(" ".join(words))
        if len(command.words) != 2:
            raise ScriptError("run WHO COMMAND.TYPE [rid=ID] [details] {json body}")
        check_options(command, {"rid"}, {"details"})
        return self._write(parse_principal(words[1]), words[2], body, command)

    def _write(self, who: Principal, command_type: str, body: dict[str, Any], command: Command) -> list[str]:
        before = digest(self.machine.store)
        outcome = self.machine.run(who, command_type, body, request_id=command.options.get("rid"))
        result = outcome.result
        if isinstance(result, Rejected):
            lines = describe_rejection(result, "details" in command.flags)
            if "rid" in command.options:  # the refusal is remembered: its dedup record and meta only
                others = [
                    key for key, _ in outcome.writes if not key.startswith((keys.DEDUP, keys.DEDUP_EXPIRY, keys.META))
                ]
                if others:
                    lines.append(f"  BUG: the refused command wrote {len(others)} records besides its dedup record")
            elif outcome.writes or digest(self.machine.store) != before:
                lines.append(f"  BUG: the refused command wrote {len(outcome.writes)} records")
            return lines
        if not isinstance(result, Ok):
            raise ScriptError(f"unexpected result {result!r}")
        suffix = "" if outcome.writes else " (no writes)"
        return [f"ok {written_verb(command_type, result.created)} {describe(result.value, who)}{suffix}"]

    def _get(self, who: Principal, command: Command) -> list[str]:
        if len(command.words) != 3 or command.words[1] not in _PLURALS:
            raise ScriptError("get WHO pool|claim|allocation|class NAME")
        check_options(command, {"ns"}, {"json", "details"})
        try:
            obj = get(self.machine.store, who, _PLURALS[command.words[1]], command.words[2], command.options.get("ns"))
        except Rejected as refusal:
            return describe_rejection(refusal, "details" in command.flags)
        if "json" in command.flags:
            return json.dumps(obj, indent=2, sort_keys=True).splitlines()
        return [describe(obj, who)]

    def _list(self, who: Principal, command: Command) -> list[str]:
        if len(command.words) != 2 or command.words[1] not in _PLURALS:
            raise ScriptError("list WHO pools|claims|allocations|classes [limit=N] [continue] [selector=S] [ns=NS]")
        check_options(command, {"limit", "selector", "ns"}, {"continue", "details"})
        if "continue" in command.flags and self.continue_token is None:
            raise ScriptError("list ... continue: the previous list had no continue token")
        limit = command.options.get("limit")
        if limit is not None and not re.fullmatch(r"-?\d+", limit):
            raise ScriptError(f"list: limit={limit!r} is not an integer")
        try:
            page = list_objects(
                self.machine.store,
                who,
                _PLURALS[command.words[1]],
                limit=int(limit) if limit is not None else None,
                continue_token=self.continue_token if "continue" in command.flags else None,
                label_selector=command.options.get("selector"),
                namespace=command.options.get("ns"),
            )
        except Rejected as refusal:
            return describe_rejection(refusal, "details" in command.flags)
        lines = [describe(item, who) for item in page["items"]]
        self.continue_token = page["metadata"]["continue"]
        count = len(lines)
        summary = f"({count} item{'' if count == 1 else 's'}"
        lines.append(summary + (", more: continue)" if self.continue_token is not None else ")"))
        return lines


# ---- running a script file ------------------------------------------------------------------------


@dataclass
class ScriptResult:
    failures: list[str]
    cases: int
    rewritten: str | None  # the file's new text in rewrite mode, else None


def run_script(path: Path, text: str, rewrite: bool, runner_class: type[ScriptRunner] = ScriptRunner) -> ScriptResult:
    try:
        cases = parse_script(text)
    except ScriptError as exc:
        raise ScriptError(f"{path}: {exc}") from None
    runner = runner_class()
    outputs: list[list[str]] = []
    failures: list[str] = []
    for case in cases:
        output: list[str] = []
        for line_number, command_text in case.commands:
            try:
                output += runner.run(command_text)
                check_invariants(runner.machine.store)
            except ScriptError as exc:
                raise ScriptError(f"{path}:{line_number}: {exc}") from None
            except InvariantViolation as violation:
                raise AssertionError(
                    f"{path}:{line_number}: invariant violated after {command_text!r}: {violation}"
                ) from violation
        outputs.append(output)
        if output != case.expected:
            diff = "\n".join(
                difflib.unified_diff(case.expected, output, "expected", "actual", lineterm="", n=len(output))
            )
            commands = "\n".join(f"  {command}" for _, command in case.commands)
            failures.append(f"{path}:{case.line}: output differs for\n{commands}\n{diff}")
    rewritten = rewrite_script(text, cases, outputs) if rewrite else None
    return ScriptResult(failures, len(cases), rewritten)


# The scheduler's scripts need the scheduler's commands: tests/test_sched_scripts.py runs them.
SCHEDULER_SCRIPT_PREFIXES = ("sched_", "quota_", "service_")


def _script_paths() -> list[Path]:
    return sorted(path for path in SCRIPTS_DIR.glob("*.txt") if not path.name.startswith(SCHEDULER_SCRIPT_PREFIXES))


@pytest.mark.parametrize("path", _script_paths(), ids=lambda path: path.stem)
def test_script(path: Path) -> None:
    text = path.read_text()
    rewrite = os.environ.get(REWRITE_ENV, "") not in ("", "0")
    result = run_script(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path, text, rewrite)
    assert result.cases > 0, f"{path} holds no test cases"
    if result.rewritten is not None:
        if result.rewritten != text:
            path.write_text(result.rewritten)
        return
    if result.failures:
        hint = REWRITE_HINT.format(stem=path.stem)
        pytest.fail("\n\n".join(result.failures) + f"\n\n{len(result.failures)} case(s) differ; {hint}", False)


def test_scripts_exist() -> None:
    assert len(_script_paths()) >= 10, f"expected the IPAM scripts in {SCRIPTS_DIR}"


# ---- the runner's own behaviour: a wrong expectation must fail, and rewrite must fix it -----------

_SELF_TEST = """\
# a comment
pool admin p1 cidr=10.0.0.0/29
----
ok created pool p1 10.0.0.0/29 platform

claim acme/web c[1-2] pool=p1 prefix=30
----
ok created claim default/c1 10.0.0.0/30 pool=p1 reclaim=Delete Bound
ok created claim default/c2 10.0.9.9/30 pool=p1 reclaim=Delete Bound

claim acme/web more pool=p1 prefix=32
----
wrong
"""


def test_runner_reports_differences_and_rewrites(tmp_path: Path) -> None:
    path = tmp_path / "self.txt"
    result = run_script(path, _SELF_TEST, rewrite=False)
    assert result.cases == 3
    assert len(result.failures) == 2
    assert result.failures[0].startswith(f"{path}:6: output differs")
    assert "+ok created claim default/c2 10.0.0.4/30" in result.failures[0]
    assert "-wrong" in result.failures[1]
    assert "+rejected pool_exhausted: IPPool p1 has no free /32; its largest free prefix is none" in result.failures[1]

    rewritten = run_script(path, _SELF_TEST, rewrite=True).rewritten
    assert rewritten is not None
    assert rewritten.startswith("# a comment\n")
    assert run_script(path, rewritten, rewrite=False).failures == []


def test_runner_refuses_malformed_scripts(tmp_path: Path) -> None:
    with pytest.raises(ScriptError, match="no '----'"):
        run_script(tmp_path / "bad.txt", "pool admin p1 cidr=10.0.0.0/24\n", rewrite=False)
    with pytest.raises(ScriptError, match=r"bad\.txt:1: .*unknown option 'cider'"):
        run_script(tmp_path / "bad.txt", "pool admin p1 cider=10.0.0.0/24\n----\nok\n", rewrite=False)
    with pytest.raises(ScriptError, match=r"bad\.txt:2: list: unknown option 'selecter'"):
        run_script(tmp_path / "bad.txt", "# x\nlist admin claims selecter=a=b\n----\nok\n", rewrite=False)
