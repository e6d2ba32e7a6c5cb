"""The state machine's compiled build (node/accelerate.py, node/compiled_build.py).

* A process runs the compiled build only when it is fresh: absent, stale (built from other
  sources) or switched off by ALLOT_PURE_PYTHON, it runs the sources, and says why.
* Both builds apply the same logs to the same state and the same outcomes, byte for byte: the
  IPAM scenario and the scheduler workload of tests/test_determinism.py are replayed in a
  process of each kind and their digests compared. So a cluster may mix the two.
* Malformed commands too: the compiled code checks declared types at run time where the
  sources do not, so a body with a wrong type that slipped past a handler's checks could make
  one build refuse and the other raise (which stops the member, on every replica alike). A log
  of 1,500 seeded malformed commands, after both workloads' setup, replays to the same outcomes
  (refusals with their messages) in both builds, and raises in neither.

The compiled build is the one `allot compile` made when it is fresh (CI compiles before the
tests run); otherwise this module compiles one into a temporary directory (about 40 s).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from node import accelerate
from node.compiled_build import build as compile_state_machine
from statemachine import Envelope, Ok, Rejected, codec, encode_envelope
from statemachine.invariants import check_invariants, digest
from statemachine.machine import COMMAND_TYPES
from tests.harness import ADMIN, BASE_TS_MS, admin_for, member, run_python
from tests.test_determinism import build_scenario, build_scheduler_scenario, outcomes_digest, replay

_PROBE = """
import json, sys
from node.accelerate import build_state
state = build_state()
result = {"compiled": state.compiled, "reason": state.reason}
if len(sys.argv) > 1:
    from statemachine import codec, machine
    from statemachine.invariants import check_invariants, digest
    from tests.test_determinism import outcomes_digest, replay
    store, outcomes = replay(list(codec.loads(open(sys.argv[1], "rb").read())))
    result.update(machine_file=machine.__file__, digest=digest(store), outcomes=outcomes_digest(outcomes))
print(json.dumps(result))
"""


def _probe(build_dir: Path, *args: str, pure: bool = False) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key != accelerate.PURE_PYTHON_ENV}
    env[accelerate.BUILD_DIR_ENV] = str(build_dir)
    if pure:
        env[accelerate.PURE_PYTHON_ENV] = "1"
    result: dict[str, Any] = json.loads(run_python(["-c", _PROBE, *args], env))
    return result


@pytest.fixture(scope="module")
def compiled_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    existing = accelerate.default_build_dir()
    manifest = accelerate.read_manifest(existing)
    if manifest is not None and manifest["fingerprint"] == accelerate.fingerprint(accelerate.source_dir()):
        return existing
    return compile_state_machine(tmp_path_factory.mktemp("compiled") / "mypyc")


def test_a_fresh_build_is_used(compiled_build: Path) -> None:
    result = _probe(compiled_build)
    assert result["compiled"], result["reason"]
    assert str(compiled_build) in result["reason"]


def test_no_build_means_the_sources_run(tmp_path: Path) -> None:
    result = _probe(tmp_path / "nothing-here")
    assert not result["compiled"]
    assert "no compiled build" in result["reason"]


def test_a_stale_build_is_not_used(compiled_build: Path, tmp_path: Path) -> None:
    """A build whose manifest names other sources (as after an edit) is passed over."""
    stale = tmp_path / "mypyc"
    shutil.copytree(compiled_build, stale)
    manifest = json.loads((stale / accelerate.MANIFEST).read_text())
    manifest["fingerprint"] = "0" * 64
    (stale / accelerate.MANIFEST).write_text(json.dumps(manifest))
    result = _probe(stale)
    assert not result["compiled"]
    assert "stale" in result["reason"]


def test_the_fingerprint_changes_with_any_source(tmp_path: Path) -> None:
    package = tmp_path / "statemachine"
    shutil.copytree(accelerate.source_dir(), package, ignore=shutil.ignore_patterns("__pycache__"))
    before = accelerate.fingerprint(package)
    assert accelerate.fingerprint(package) == before
    source = package / "buddy.py"
    source.write_text(source.read_text() + "\n")
    assert accelerate.fingerprint(package) != before


def test_pure_python_can_be_asked_for(compiled_build: Path) -> None:
    result = _probe(compiled_build, pure=True)
    assert not result["compiled"]
    assert accelerate.PURE_PYTHON_ENV in result["reason"]


# Valid bodies of most command types; the malformed log takes them apart (`_malformed_body`).
_TEMPLATES: dict[str, dict[str, Any]] = {
    "pool.create": {"name": "fz", "spec": {"cidr": "10.200.0.0/16", "allocation": {"strategy": "best-fit"}}},
    "pool.delete": {"name": "fz"},
    "claim.create": {"name": "fzc", "spec": {"poolRef": "fz", "prefixLength": 30}},
    "claim.delete": {"name": "fzc"},
    "class.create": {
        "name": "fzk",
        "spec": {
            "ipFamily": "IPv4",
            "visibility": "platform",
            "allocation": {"minPrefixLength": 24, "maxPrefixLength": 32, "defaultPrefixLength": 32},
        },
    },
    "quota.set": {
        "name": "acme/web",
        "spec": {"cpuMillis": 9000, "pods": 40, "addressesByPool": {"vips": 3}, "defaultRequests": {"cpuMillis": 10}},
    },
    "node.register": {
        "name": "fzn",
        "labels": {"disk": "ssd"},
        "spec": {
            "capacity": {"cpuMillis": 2000, "memoryBytes": 1 << 30, "pods": 4},
            "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}],
            "zone": "z1",
            "podPool": "pods",
            "podCIDRPrefixLength": 28,
        },
    },
    "node.condition": {"name": "n1", "ready": False, "reason": "Lost"},
    "node.cordon": {"name": "n2"},
    "node.drain": {"name": "n3"},
    "node.evict_unready": {"name": "n1", "notReadyMillis": 30_000, "timeoutMillis": 300_000},
    "pod.create": {
        "name": "fzp",
        "labels": {"app": "x"},
        "spec": {
            "requests": {"cpuMillis": 100, "memoryBytes": 1 << 20},
            "nodeSelector": {"disk": "ssd"},
            "nodeAffinity": [{"key": "zone", "operator": "In", "values": ["z1"]}],
            "tolerations": [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}],
            "priority": 5,
            "schedulingPolicy": "binpack",
        },
        "plan": {"nodeName": "n1"},
    },
    "pod.delete": {"name": "fzp"},
    "service.create": {
        "name": "fzs",
        "spec": {"type": "LoadBalancer", "poolRef": "vips", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    },
    "service.delete": {"name": "fzs"},
    "scheduler.configure": {"policy": "binpack"},
    "scheduler.retry": {"pods": 3},
}
_JUNK_LEAVES: list[Any] = [
    None, True, False, 0, -1, 1, 24, 33, 129, 2**63, 2**70, -(2**70), "", "x", "-a-", "A", "n1", "pods",
    "vips", "10.0.0.0/8", "10.244.0.300", "2001:db8::/129", "IPv6", "In", "Exists", "NoExecute", "spread",
    "acme/web", "a" * 300, "\u00e9",
]  # fmt: skip
_JUNK_KEYS = ["name", "spec", "labels", "cpuMillis", "pods", "key", "values", "effect", "nodeName", "extra"]


def _junk(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth >= 3 or roll < 0.6:
        return rng.choice(_JUNK_LEAVES)
    if roll < 0.8:
        return [_junk(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(_JUNK_KEYS): _junk(rng, depth + 1) for _ in range(rng.randrange(4))}


def _malformed_body(rng: random.Random, command_type: str) -> dict[str, Any]:
    """A template with one value swapped for junk, one field dropped or one unknown field
    added, at any depth; or, for a command without a template and now and then, junk alone."""
    template = _TEMPLATES.get(command_type)
    if template is None or rng.random() < 0.1:
        return {rng.choice(_JUNK_KEYS): _junk(rng) for _ in range(rng.randrange(4))}
    body: dict[str, Any] = codec.loads(codec.dumps(template))  # a deep copy
    container: Any = body
    while True:  # walk down to a random map or list
        children = list(container.items()) if isinstance(container, dict) else list(enumerate(container))
        nested = [(where, value) for where, value in children if isinstance(value, (dict, list)) and value]
        if not nested or rng.random() < 0.25:
            break
        container = rng.choice(nested)[1]
    slots = list(container) if isinstance(container, dict) else list(range(len(container)))
    action = rng.random()
    if action < 0.7 and slots:
        container[rng.choice(slots)] = _junk(rng)
    elif action < 0.85 and slots:
        del container[rng.choice(slots)]
    elif isinstance(container, dict):
        container["unexpected"] = _junk(rng)
    else:
        container.append(_junk(rng))
    return body


MALFORMED_COMMANDS = 1500


def build_malformed_log(seed: int = 7, count: int = MALFORMED_COMMANDS) -> list[bytes]:
    """Both workloads' logs (pools, classes, claims, nodes, pods, quotas, services), then
    `count` malformed commands of every type from several principals, some with request ids
    (some of them reused) and some with the leader's plan. Envelopes are well formed: what a
    member would replicate for a client's bad body that got past HTTP's own checks."""
    rng = random.Random(seed)
    tenants = [member("acme", "web"), member("globex", "api"), admin_for("acme", "web")]
    log = [*build_scenario().log, *build_scheduler_scenario().log]
    for number in range(count):
        command_type = rng.choice(COMMAND_TYPES)
        # Mostly the principal the command is for, so that most draws reach the body checks.
        admins_only = command_type.split(".")[0] in ("pool", "class", "quota", "node", "scheduler")
        principal = ADMIN if admins_only and rng.random() < 0.85 else rng.choice([ADMIN, *tenants])
        request_id = f"fz-{rng.randrange(count // 4)}" if rng.random() < 0.3 else None
        envelope = Envelope(
            command_type,
            _malformed_body(rng, command_type),
            principal,
            request_id,
            BASE_TS_MS + 50_000_000 + number * 7,
        )
        log.append(encode_envelope(envelope))
    return log


@pytest.mark.parametrize("workload", ["ipam", "scheduler", "malformed"])
def test_both_builds_apply_a_log_alike(workload: str, compiled_build: Path, tmp_path: Path) -> None:
    if workload == "malformed":
        log = build_malformed_log()
    else:
        log = (build_scenario() if workload == "ipam" else build_scheduler_scenario()).log
    log_file = tmp_path / "log.cbor"
    log_file.write_bytes(codec.dumps(log))
    store, outcomes = replay(log)  # the sources, in this process: raises if apply does
    if workload == "malformed":
        malformed = [outcome.result for outcome in outcomes[-MALFORMED_COMMANDS:]]
        refusals = {result.code for result in malformed if isinstance(result, Rejected)}
        assert {"invalid", "not_found", "forbidden"} <= refusals, refusals  # reached past the first checks
        assert sum(isinstance(result, Ok) for result in malformed) >= 20  # and some mutations were still valid
        check_invariants(store)
    compiled = _probe(compiled_build, str(log_file))
    pure = _probe(compiled_build, str(log_file), pure=True)
    assert compiled["compiled"] and compiled["machine_file"].endswith(".so"), compiled
    assert not pure["compiled"] and pure["machine_file"].endswith(".py"), pure
    expected = {"digest": digest(store), "outcomes": outcomes_digest(outcomes)}
    assert {field: compiled[field] for field in expected} == expected
    assert {field: pure[field] for field in expected} == expected
