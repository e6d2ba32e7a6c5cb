"""Data-driven tests of the scheduler half: `tests/scripts/sched_*.txt`, `quota_*.txt`,
`service_*.txt`, in the same file format and with the same rewrite switch as
tests/test_scripts.py (`ALLOT_REWRITE=1 .venv/bin/pytest tests/test_sched_scripts.py`), run by
a runner that knows the scheduler's kinds. Invariants are checked after every command, and a
refused command must write nothing.

Extra commands (WHO as in test_scripts.py; every write takes `rid=ID`, `label.K=V`, `details`):

    node    WHO NAME cpu=N mem=N pods=N [pool=P] [prefix=N] [zone=Z] [taints=k=v:Effect,...]
    pod     WHO NAME [ns=NS] [cpu=N] [mem=N] [priority=N] [policy=spread|binpack] [plan=NODE]
                     [select=k=v,...] [tolerate=k=v:Effect,k:NoExecute@SECONDS,...] [affinity=k:In:a|b,k:Exists,...]
    quota   WHO ID [cpu=N] [mem=N] [pods=N] [services=N] [maxprio=N] [defcpu=N] [defmem=N]
                   [byclass=c:N,...] [bypool=p:N,...]
    service WHO NAME [ns=NS] [type=ClusterIP|LoadBalancer] [pool=P] [class=C] [address=A]
    delete  WHO pod|service|node|quota NAME [ns=NS]
    cordon|uncordon|drain WHO NODE
    update  WHO NODE [label.K=V ...] [unlabel=K,...] [taints=k=v:Effect,...|none] [cordon=yes|no]
                                             node.update, a merge patch of labels, taints, cordon
    ready|notready WHO NODE
    evict   WHO NODE [after=MS] [timeout=MS]  node.evict_unready: NotReady for MS (default 300000),
                                             pods without a toleration go at timeout (300000)
    expire  WHO NODE                         node.evict_tainted: pods whose tolerationSeconds for
                                             the node's NoExecute taints ran out go
    plan    WHO [the pod options]       the node plan_pod chooses, or `none`
    get     WHO node|pod|service|quota NAME [ns=NS]
    list    WHO nodes|pods|services|quotas [field=spec.nodeName=N] [selector=S] [ns=NS] [limit=N]
    watch   WHO pods|nodes|... [from=REV] [field=...] [selector=...]    events after revision REV
    nodes                                    every node, as an admin sees it
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from statemachine import Ok, Principal, Rejected, keys, nodes
from statemachine.queries import events_after, get, list_objects
from statemachine.scheduler import plan_pod
from tests.harness import ADMIN
from tests.test_scripts import (
    REWRITE_ENV,
    SCHEDULER_SCRIPT_PREFIXES,
    Command,
    ScriptError,
    ScriptRunner,
    check_options,
    describe,
    describe_rejection,
    expand_names,
    parse_command,
    parse_principal,
    run_script,
    written_verb,
)

SCRIPTS_DIR = Path(__file__).parent / "scripts"
SCRIPT_PREFIXES = SCHEDULER_SCRIPT_PREFIXES
REWRITE_HINT = (
    f"to accept the actual output, run: {REWRITE_ENV}=1 .venv/bin/pytest tests/test_sched_scripts.py -k {{stem}}"
)
_PLURALS = {
    "node": "nodes",
    "nodes": "nodes",
    "pod": "pods",
    "pods": "pods",
    "service": "services",
    "services": "services",
    "quota": "quotas",
    "quotas": "quotas",
}
_GIB = 1 << 30


def _int(command: Command, key: str) -> int | None:
    value = command.options.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ScriptError(f"{command.verb}: {key}={value!r} is not an integer") from None


def _memory(value: int) -> str:
    return f"{value // _GIB}Gi" if value and value % _GIB == 0 else str(value)


def _limit(limits: dict[str, Any], name: str) -> str:
    return str(limits[name]) if name in limits else "-"


def describe_sched(obj: dict[str, Any], viewer: Principal) -> str:
    kind = obj.get("kind")
    labels = obj.get("metadata", {}).get("labels") or {}
    if kind == "Node":  # the built-in labels only when they are not the name and zone shown
        defaults = {nodes.HOSTNAME_LABEL: obj["metadata"]["name"], nodes.ZONE_LABEL: obj["spec"]["zone"]}
        labels = {key: value for key, value in labels.items() if defaults.get(key) != value}
    shown_labels = " {" + ",".join(f"{k}={v}" for k, v in labels.items()) + "}" if labels else ""
    if kind == "Node":
        spec, status = obj["spec"], obj["status"]
        capacity, used = spec["capacity"], status["allocated"]
        parts = [
            f"node {obj['metadata']['name']} {status['podCIDR']}",
            "Ready" if status["ready"] else f"NotReady({status['conditionReason']})",
            f"cpu={used['cpuMillis']}/{capacity['cpuMillis']}",
            f"mem={_memory(used['memoryBytes'])}/{_memory(capacity['memoryBytes'])}",
            f"pods={used['pods']}/{capacity['pods']}",
        ]
        if spec["unschedulable"]:
            parts.append("cordoned")
        if spec["zone"]:
            parts.append(f"zone={spec['zone']}")
        if spec["taints"]:
            parts.append("taints=" + ",".join(f"{t['key']}={t['value']}:{t['effect']}" for t in spec["taints"]))
        if "nominatedPod" in status:
            parts.append(f"nominee={status['nominatedPod']}")
        if "evictedPods" in status:
            parts.append(f"evicted={status['evictedPods']}")
        return " ".join(parts) + shown_labels
    if kind == "Pod":
        metadata, spec, status = obj["metadata"], obj["spec"], obj["status"]
        tenant = (
            ""
            if (metadata["org"], metadata["project"]) == (viewer.org, viewer.project)
            else (f"{metadata['org']}/{metadata['project']}/")
        )
        requests = spec["requests"]
        parts = [f"pod {tenant}{metadata['namespace']}/{metadata['name']} {status['phase']}"]
        if status["phase"] == "Bound":
            parts.append(f"{spec['nodeName']} {status['podIP']}")
        parts.append(f"cpu={requests['cpuMillis']} mem={_memory(requests['memoryBytes'])}")
        if spec["priority"]:
            parts.append(f"prio={spec['priority']}")
        if "priorityClassName" in spec:
            parts.append(f"class={spec['priorityClassName']}")
        if status["nominatedNodeName"]:
            parts.append(f"nominated={status['nominatedNodeName']}")
        if status["evictedFrom"]:
            parts.append(f"evictedFrom={status['evictedFrom']}")
        if status["reason"]:
            parts.append(f"({status['reason']}: {status['message']})")
        return " ".join(parts) + shown_labels
    if kind == "Quota":
        spec, used = obj["spec"], obj["status"]["used"]
        parts = [
            f"quota {obj['metadata']['name']}",
            f"cpu={used['cpuMillis']}/{_limit(spec, 'cpuMillis')}",
            f"mem={_memory(used['memoryBytes'])}/{_memory(spec['memoryBytes']) if 'memoryBytes' in spec else '-'}",
            f"pods={used['pods']}/{_limit(spec, 'pods')}",
            f"services={used['services']}/{_limit(spec, 'services')}",
            f"pending={used['pendingPods']}",
        ]
        if "maxPriority" in spec:
            parts.append(f"maxprio={spec['maxPriority']}")
        for table in ("addressesByClass", "addressesByPool"):
            for name, limit in spec.get(table, {}).items():
                parts.append(f"{table}.{name}={used[table].get(name, 0)}/{limit}")
        if "defaultRequests" in spec:
            defaults = spec["defaultRequests"]
            parts.append(f"defaults=cpu:{defaults['cpuMillis']},mem:{_memory(defaults['memoryBytes'])}")
        return " ".join(parts)
    if kind == "Service":
        metadata, spec, status = obj["metadata"], obj["spec"], obj["status"]
        parts = [f"service {metadata['namespace']}/{metadata['name']} {spec['type']} {status['address']}"]
        parts.append(f"pool={status['pool']}")
        if status["className"]:
            parts.append(f"class={status['className']}")
        return " ".join(parts) + shown_labels
    if kind == "PriorityClass":
        spec = obj["spec"]
        default = " globalDefault" if spec["globalDefault"] else ""
        return f"priorityclass {obj['metadata']['name']} value={spec['value']}{default} {spec['description']!r}"
    if kind == "SchedulerStatus":
        extra = "".join(f" {key}={obj[key]}" for key in ("examined", "bound") if key in obj)
        return f"scheduler policy={obj['policy']} nodes={obj['nodes']} pending={obj['pendingPods']}{extra}"
    return describe(obj, viewer)


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        key, colon, value = item.rpartition(":")
        if not colon:
            raise ScriptError(f"{what} {item!r} must look like key:value")
        pairs.append((key, value))
    return pairs


def _taints(text: str) -> list[dict[str, str]]:
    taints = []
    for key_value, effect in _pairs(text, "taint"):
        key, _, value = key_value.partition("=")
        taints.append({"key": key, "value": value, "effect": effect})
    return taints


def _tolerations(text: str) -> list[dict[str, Any]]:
    tolerations = []
    for key_value, effect_text in _pairs(text, "toleration"):
        key, equals, value = key_value.partition("=")
        toleration: dict[str, Any] = {"key": key, "operator": "Equal" if equals else "Exists"}
        if equals:
            toleration["value"] = value
        effect, at, seconds = effect_text.partition("@")  # k:NoExecute@30: tolerationSeconds 30
        if effect != "*":
            toleration["effect"] = effect
        if at:
            toleration["tolerationSeconds"] = int(seconds)
        tolerations.append(toleration)
    return tolerations


def _affinity(text: str) -> list[dict[str, Any]]:
    expressions = []
    for item in text.split(","):
        key, _, rest = item.partition(":")
        operator, _, values = rest.partition(":")
        expression: dict[str, Any] = {"key": key, "operator": operator}
        if values:
            expression["values"] = values.split("|")
        expressions.append(expression)
    return expressions


_POD_OPTIONS = {"ns", "cpu", "mem", "priority", "policy", "plan", "select", "tolerate", "affinity", "rid"}


def pod_spec(command: Command) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    cpu, memory = _int(command, "cpu"), _int(command, "mem")
    if cpu is not None or memory is not None:
        spec["requests"] = {}
        if cpu is not None:
            spec["requests"]["cpuMillis"] = cpu
        if memory is not None:
            spec["requests"]["memoryBytes"] = memory * _GIB
    priority = _int(command, "priority")
    if priority is not None:
        spec["priority"] = priority
    if "policy" in command.options:
        spec["schedulingPolicy"] = command.options["policy"]
    if "select" in command.options:
        spec["nodeSelector"] = dict(item.split("=", 1) for item in command.options["select"].split(","))
    if "tolerate" in command.options:
        spec["tolerations"] = _tolerations(command.options["tolerate"])
    if "affinity" in command.options:
        spec["nodeAffinity"] = _affinity(command.options["affinity"])
    return spec


class SchedRunner(ScriptRunner):
    def run(self, text: str) -> list[str]:
        if text.startswith("run "):
            return self._run_raw(text)
        command = parse_command(text)
        handler = {
            "node": self._node,
            "pod": self._pod,
            "quota": self._quota,
            "service": self._service,
            "delete": self._delete,
            "cordon": self._node_command,
            "uncordon": self._node_command,
            "drain": self._node_command,
            "update": self._update,
            "evict": self._node_command,
            "expire": self._node_command,
            "ready": self._node_command,
            "notready": self._node_command,
            "plan": self._plan,
            "get": self._get_sched,
            "list": self._list_sched,
            "watch": self._watch,
            "nodes": self._nodes,
        }.get(command.verb)
        if handler is None:
            return super().run(text)
        return handler(command)

    def _write(self, who: Principal, command_type: str, body: dict[str, Any], command: Command) -> list[str]:
        before = self.machine.digest()
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
            elif outcome.writes or self.machine.digest() != before:
                lines.append(f"  BUG: the refused command wrote {len(outcome.writes)} records")
            return lines
        if not isinstance(result, Ok):
            raise ScriptError(f"unexpected result {result!r}")
        verb = written_verb(command_type, result.created)
        if command_type.startswith(("node.", "scheduler.")) and command_type not in ("node.register", "node.delete"):
            verb = "done"
        suffix = "" if outcome.writes else " (no writes)"
        return [f"ok {verb} {describe_sched(result.value, who)}{suffix}"]

    def _who(self, command: Command, words: int) -> Principal:
        if len(command.words) != words:
            raise ScriptError(f"{command.verb}: expected {words - 1} argument(s) after the verb, got {command.words}")
        return parse_principal(command.words[0])

    def _node(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        check_options(command, {"cpu", "mem", "pods", "pool", "prefix", "zone", "taints", "rid"}, {"details"}, True)
        output: list[str] = []
        for name in expand_names(command.words[1]):
            spec: dict[str, Any] = {
                "capacity": {
                    "cpuMillis": _int(command, "cpu"),
                    "memoryBytes": (_int(command, "mem") or 0) * _GIB,
                    "pods": _int(command, "pods"),
                },
                "podPool": command.options.get("pool", "pods"),
            }
            if "prefix" in command.options:
                spec["podCIDRPrefixLength"] = _int(command, "prefix")
            if "zone" in command.options:
                spec["zone"] = command.options["zone"]
            if "taints" in command.options:
                spec["taints"] = _taints(command.options["taints"])
            body: dict[str, Any] = {"name": name, "spec": spec}
            if command.labels:
                body["labels"] = command.labels
            output += self._write(who, "node.register", body, command)
        return output

    def _pod(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        check_options(command, _POD_OPTIONS, {"details"}, True)
        output: list[str] = []
        for name in expand_names(command.words[1]):
            body: dict[str, Any] = {"name": name, "spec": pod_spec(command)}
            if "ns" in command.options:
                body["namespace"] = command.options["ns"]
            if command.labels:
                body["labels"] = command.labels
            if "plan" in command.options:
                body["plan"] = {"nodeName": command.options["plan"]}
            output += self._write(who, "pod.create", body, command)
        return output

    def _plan(self, command: Command) -> list[str]:
        who = self._who(command, 1)
        check_options(command, _POD_OPTIONS - {"plan", "ns", "rid"}, set())
        chosen = plan_pod(self.machine.store, pod_spec(command), who)
        return [f"plan {chosen or 'none'}"]

    def _quota(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        options = {"cpu", "mem", "pods", "services", "maxprio", "defcpu", "defmem", "byclass", "bypool", "rid"}
        check_options(command, options, {"details"})
        spec: dict[str, Any] = {}
        scalars = (("cpu", "cpuMillis"), ("pods", "pods"), ("services", "services"), ("maxprio", "maxPriority"))
        for option, field in scalars:
            value = _int(command, option)
            if value is not None:
                spec[field] = value
        memory = _int(command, "mem")
        if memory is not None:
            spec["memoryBytes"] = memory * _GIB
        for option, field in (("byclass", "addressesByClass"), ("bypool", "addressesByPool")):
            if option in command.options:
                spec[field] = {key: int(value) for key, value in _pairs(command.options[option], option)}
        if "defcpu" in command.options or "defmem" in command.options:
            spec["defaultRequests"] = {
                "cpuMillis": _int(command, "defcpu") or 0,
                "memoryBytes": (_int(command, "defmem") or 0) * _GIB,
            }
        return self._write(who, "quota.set", {"name": command.words[1], "spec": spec}, command)

    def _service(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        check_options(command, {"ns", "type", "pool", "class", "address", "rid"}, {"details"}, True)
        output: list[str] = []
        for name in expand_names(command.words[1]):
            spec: dict[str, Any] = {}
            for option, field in (
                ("type", "type"),
                ("pool", "poolRef"),
                ("class", "className"),
                ("address", "address"),
            ):
                if option in command.options:
                    spec[field] = command.options[option]
            body: dict[str, Any] = {"name": name, "spec": spec}
            if "ns" in command.options:
                body["namespace"] = command.options["ns"]
            if command.labels:
                body["labels"] = command.labels
            output += self._write(who, "service.create", body, command)
        return output

    def _delete(self, command: Command) -> list[str]:
        if len(command.words) != 3 or command.words[1] not in ("pod", "service", "node", "quota"):
            return super().run(" ".join([command.verb, *command.words]) + _rest(command))
        who = parse_principal(command.words[0])
        check_options(command, {"rid", "ns"}, {"details"})
        output: list[str] = []
        for name in expand_names(command.words[2]):
            body = {"name": name}
            if "ns" in command.options:
                body["namespace"] = command.options["ns"]
            output += self._write(who, f"{command.words[1]}.delete", body, command)
        return output

    def _node_command(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        check_options(command, {"rid", "reason", "after", "timeout"}, {"details"})
        output: list[str] = []
        for name in expand_names(command.words[1]):
            body: dict[str, Any] = {"name": name}
            if command.verb in ("ready", "notready"):
                body["ready"] = command.verb == "ready"
                if "reason" in command.options:
                    body["reason"] = command.options["reason"]
                command_type = "node.condition"
            elif command.verb == "evict":
                body["notReadyMillis"] = int(command.options.get("after", "300000"))
                body["timeoutMillis"] = int(command.options.get("timeout", "300000"))
                command_type = "node.evict_unready"
            elif command.verb == "expire":
                command_type = "node.evict_tainted"
            else:
                command_type = f"node.{command.verb}"
            output += self._write(who, command_type, body, command)
        return output

    def _update(self, command: Command) -> list[str]:
        who = self._who(command, 2)
        check_options(command, {"rid", "unlabel", "taints", "cordon"}, {"details"}, True)
        labels: dict[str, str | None] = dict(command.labels)
        for key in command.options.get("unlabel", "").split(",") if "unlabel" in command.options else ():
            labels[key] = None
        spec: dict[str, Any] = {}
        if "taints" in command.options:
            text = command.options["taints"]
            spec["taints"] = [] if text == "none" else _taints(text)
        if "cordon" in command.options:
            spec["unschedulable"] = command.options["cordon"] == "yes"
        body: dict[str, Any] = {"name": command.words[1]}
        if labels:
            body["metadata"] = {"labels": labels}
        if spec:
            body["spec"] = spec
        return self._write(who, "node.update", body, command)

    def _get_sched(self, command: Command) -> list[str]:
        if len(command.words) != 3 or command.words[1] not in _PLURALS:
            return super().run(" ".join([command.verb, *command.words]) + _rest(command))
        check_options(command, {"ns"}, {"json", "details"})
        who = parse_principal(command.words[0])
        try:
            obj = get(self.machine.store, who, _PLURALS[command.words[1]], command.words[2], command.options.get("ns"))
        except Rejected as refusal:
            return describe_rejection(refusal, "details" in command.flags)
        if "json" in command.flags:
            return json.dumps(obj, indent=2, sort_keys=True).splitlines()
        return [describe_sched(obj, who)]

    def _list_sched(self, command: Command) -> list[str]:
        if len(command.words) != 2 or command.words[1] not in _PLURALS:
            return super().run(" ".join([command.verb, *command.words]) + _rest(command))
        check_options(command, {"field", "selector", "ns", "limit"}, {"details", "continue"})
        who = parse_principal(command.words[0])
        try:
            page = list_objects(
                self.machine.store,
                who,
                _PLURALS[command.words[1]],
                limit=_int(command, "limit"),
                continue_token=self.continue_token if "continue" in command.flags else None,
                label_selector=command.options.get("selector"),
                namespace=command.options.get("ns"),
                field_selector=command.options.get("field"),
            )
        except Rejected as refusal:
            return describe_rejection(refusal, "details" in command.flags)
        self.continue_token = page["metadata"]["continue"]
        lines = [describe_sched(item, who) for item in page["items"]]
        count = len(lines)
        more = ", more: continue" if self.continue_token is not None else ""
        return [*lines, f"({count} item{'' if count == 1 else 's'}{more})"]

    def _watch(self, command: Command) -> list[str]:
        if len(command.words) != 2:
            raise ScriptError("watch WHO KINDS [from=REV] [field=...] [selector=...]")
        check_options(command, {"from", "field", "selector"}, {"details"})
        who = parse_principal(command.words[0])
        try:
            events, _ = events_after(
                self.machine.store,
                who,
                _int(command, "from") or 0,
                tuple(command.words[1].split(",")),
                field_selector=command.options.get("field"),
                label_selector=command.options.get("selector"),
            )
        except Rejected as refusal:
            return describe_rejection(refusal, "details" in command.flags)
        lines = [f"{event['type']} {describe_sched(event['object'], who)}" for event in events]
        return [*lines, f"({len(lines)} events)"]

    def _nodes(self, command: Command) -> list[str]:
        check_options(command, set(), set())
        page = list_objects(self.machine.store, ADMIN, "nodes", limit=1000)
        return [describe_sched(item, ADMIN) for item in page["items"]] or ["(no nodes)"]


def _rest(command: Command) -> str:
    options = "".join(f" {key}={value}" for key, value in command.options.items())
    labels = "".join(f" label.{key}={value}" for key, value in command.labels.items())
    return options + labels + "".join(f" {flag}" for flag in sorted(command.flags))


def _script_paths() -> list[Path]:
    return sorted(path for path in SCRIPTS_DIR.glob("*.txt") if path.name.startswith(SCRIPT_PREFIXES))


@pytest.mark.parametrize("path", _script_paths(), ids=lambda path: path.stem)
def test_sched_script(path: Path) -> None:
    text = path.read_text()
    rewrite = os.environ.get(REWRITE_ENV, "") not in ("", "0")
    shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
    result = run_script(shown, text, rewrite, SchedRunner)
    assert result.cases > 0, f"{path} holds no test cases"
    if result.rewritten is not None:
        if result.rewritten != text:
            path.write_text(result.rewritten)
        return
    if result.failures:
        hint = REWRITE_HINT.format(stem=path.stem)
        pytest.fail("\n\n".join(result.failures) + f"\n\n{len(result.failures)} case(s) differ; {hint}", False)


def test_sched_scripts_exist() -> None:
    stems = {path.name.split("_")[0] for path in _script_paths()}
    assert stems == {"sched", "quota", "service"}, stems
