"""The state machine's compiled build (node/accelerate.py, node/compiled_build.py).

* A process runs the compiled build only when it is fresh: absent, stale (built from other
  sources) or switched off by ALLOT_PURE_PYTHON, it runs the sources, and says why.
* Both builds apply the same logs to the same state and the same outcomes, byte for byte: the
  IPAM scenario and the scheduler workload of tests/test_determinism.py are replayed in a
  process of each kind and their digests compared. So a cluster may mix the two.

The compiled build is the one `allot compile` made when it is fresh (CI compiles before the
tests run); otherwise this module compiles one into a temporary directory (about 40 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node import accelerate
from node.compiled_build import build as compile_state_machine
from statemachine import codec
from tests.test_determinism import build_scenario, build_scheduler_scenario, outcomes_digest, replay

ROOT = Path(__file__).resolve().parent.parent
SUBPROCESS_TIMEOUT_S = 120

_PROBE = """
import json, sys
from node.accelerate import build_state
state = build_state()
result = {"compiled": state.compiled, "reason": state.reason}
if len(sys.argv) > 1:
    from statemachine import codec, machine
    from statemachine.invariants import digest
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
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout)
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


@pytest.mark.parametrize("workload", ["ipam", "scheduler"])
def test_both_builds_apply_a_log_alike(workload: str, compiled_build: Path, tmp_path: Path) -> None:
    scenario = build_scenario() if workload == "ipam" else build_scheduler_scenario()
    log_file = tmp_path / "log.cbor"
    log_file.write_bytes(codec.dumps(scenario.log))
    _, outcomes = replay(scenario.log)
    compiled = _probe(compiled_build, str(log_file))
    pure = _probe(compiled_build, str(log_file), pure=True)
    assert compiled["compiled"] and compiled["machine_file"].endswith(".so"), compiled
    assert not pure["compiled"] and pure["machine_file"].endswith(".py"), pure
    expected = {"digest": scenario.digest(), "outcomes": outcomes_digest(outcomes)}
    assert {field: compiled[field] for field in expected} == expected
    assert {field: pure[field] for field in expected} == expected
