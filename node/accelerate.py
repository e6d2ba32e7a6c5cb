"""Run the state machine compiled by mypyc when a fresh compiled build is there.

`allot compile` (node/compiled_build.py) compiles statemachine/ with mypyc into `build/mypyc/` next to
the package: a complete copy of the `statemachine` package with a C extension beside each
compiled module, and a manifest holding the fingerprint of the sources it was built from.
`use_compiled_build()` puts that directory first on `sys.path`, so `import statemachine` loads
the compiled package, but only when

* `ALLOT_PURE_PYTHON` is not set to a non-empty value other than `0`,
* `statemachine` has not been imported yet (a process runs one build, never a mix), and
* the manifest's fingerprint equals the fingerprint of the sources now in statemachine/ (an
  edited source makes the build stale: the sources run, never an older compiled copy).

Both builds are the same code, so they apply every entry to the same bytes (a test replays the
same logs through both and compares digests); mixing them in one cluster is safe. The compiled
build only makes apply cheaper (see docs/benchmarks.md). Entry points call this before anything
imports `statemachine`: `node/__init__.py` (the server and the CLI) and `bench/__init__.py`. The
test process imports `statemachine` first, so it runs the sources: its tests instrument the
state machine's module attributes, which compiled modules call past. The members that tests
start run the compiled build when it is fresh.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "statemachine"
BUILD_DIR_ENV = "ALLOT_COMPILED_DIR"  # where the compiled build lives, if not build/mypyc
PURE_PYTHON_ENV = "ALLOT_PURE_PYTHON"
MANIFEST = "manifest.json"
GROUP_NAME = "allot_statemachine"  # mypyc's shared library is <group>__mypyc.<suffix>
# The modules left as Python: an exception class declared as a dataclass (mypyc cannot compile
# one) and the package's __init__, which only re-exports.
NOT_COMPILED = frozenset({"__init__.py", "errors.py"})


@dataclass(frozen=True)
class BuildState:
    compiled: bool
    reason: str  # why the compiled build is, or is not, in use


_state: BuildState | None = None


def source_dir() -> Path:
    """statemachine/'s sources: installed beside this package (never the compiled copy)."""
    return Path(__file__).resolve().parent.parent / PACKAGE


def default_build_dir() -> Path:
    configured = os.environ.get(BUILD_DIR_ENV)
    if configured:
        return Path(configured)
    return source_dir().parent / "build" / "mypyc"


def fingerprint(package_dir: Path) -> str:
    """SHA-256 over the package's Python sources (names and bytes, in name order) and the
    interpreter's extension-module tag: a build is fresh only for these sources on this Python."""
    digest = hashlib.sha256()
    digest.update(importlib.machinery.EXTENSION_SUFFIXES[0].encode())
    for source in sorted(package_dir.glob("*.py")):
        content = source.read_bytes()
        digest.update(f"{source.name}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def read_manifest(build_dir: Path) -> dict[str, str] | None:
    try:
        manifest = json.loads((build_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("fingerprint"), str):
        return None
    return {str(key): str(value) for key, value in manifest.items()}


def _is_extension(origin: str | None) -> bool:
    return origin is not None and any(origin.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _pure_python_requested() -> bool:
    return os.environ.get(PURE_PYTHON_ENV, "") not in ("", "0")


def choice_for_new_process(build_dir: Path | None = None) -> BuildState:
    """What a process started now with this environment runs (nothing imported yet)."""
    chosen = build_dir if build_dir is not None else default_build_dir()
    if _pure_python_requested():
        return BuildState(False, f"{PURE_PYTHON_ENV} is set")
    manifest = read_manifest(chosen)
    if manifest is None:
        return BuildState(False, f"no compiled build in {chosen} (run `allot compile`)")
    if manifest["fingerprint"] != fingerprint(source_dir()):
        return BuildState(False, f"the compiled build in {chosen} is stale: the sources changed (run `allot compile`)")
    return BuildState(True, f"compiled by mypyc {manifest.get('mypy', '?')} in {chosen}")


def _decide(build_dir: Path) -> BuildState:
    if PACKAGE in sys.modules:
        machine = sys.modules.get(f"{PACKAGE}.machine")
        if machine is not None and _is_extension(getattr(machine, "__file__", None)):
            return BuildState(True, f"compiled: {PACKAGE} was already loaded from {machine.__file__}")
        return BuildState(False, f"{PACKAGE} was imported before the compiled build could be chosen")
    return choice_for_new_process(build_dir)


def use_compiled_build(build_dir: Path | None = None) -> BuildState:
    """Choose the build this process runs, once; later calls return the first choice."""
    global _state  # noqa: PLW0603 -- one decision per process, made before the first import
    if _state is not None:
        return _state
    chosen = build_dir if build_dir is not None else default_build_dir()
    state = _decide(chosen)
    if state.compiled and PACKAGE not in sys.modules:
        sys.path.insert(0, str(chosen))
        try:
            origin = getattr(importlib.import_module(f"{PACKAGE}.machine"), "__file__", None)
            if not _is_extension(origin):
                raise ImportError(f"{origin} was loaded instead of the extension module")
        except ImportError as exc:
            # A build that cannot load here (a library it was linked against is gone, say):
            # forget every module it brought in and run the sources.
            sys.path.remove(str(chosen))
            loaded = [name for name in sys.modules if name.split(".")[0] in (PACKAGE, f"{GROUP_NAME}__mypyc")]
            for name in loaded:
                del sys.modules[name]
            state = BuildState(False, f"the compiled build in {chosen} failed to load ({exc}); running the sources")
    _state = state
    return state


def build_state() -> BuildState:
    """The choice made by `use_compiled_build` (made now if nothing made it yet)."""
    return use_compiled_build()
