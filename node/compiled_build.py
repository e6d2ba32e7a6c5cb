"""`allot compile`: build the state machine with mypyc (see node/accelerate.py for how it is used).

The sources are copied to a temporary directory and compiled there by mypyc (a C compiler and
the Python headers are needed; mypy, which ships mypyc, is in the `test` extra). The result, a
complete `statemachine` package with an extension module beside each compiled source and a
manifest with the sources' fingerprint, replaces the build directory in one rename, so a
member starting meanwhile runs a whole build (the old, the new, or the sources), never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.accelerate import GROUP_NAME, MANIFEST, NOT_COMPILED, PACKAGE, default_build_dir, fingerprint, source_dir

compile_timeout_s = 900.0  # about 40 s on this 2-core machine; a hung compiler must not hang the caller

# Run by the child interpreter in the temporary directory: mypyc turns the modules into C, and
# setuptools compiles and links them in place.
_SETUP = """
import sys
from mypyc.build import mypycify
from setuptools import setup

modules = sys.argv[1:]
sys.argv[1:] = ["build_ext", "--inplace"]
setup(
    name="allot-statemachine-compiled",
    ext_modules=mypycify(["--config-file", "mypy.ini", *modules], opt_level="3", group_name={group!r}),
)
"""

# The project's mypy settings that matter for compiling: strict, and no stubs for cbor2/netaddr.
_MYPY_INI = """
[mypy]
strict = True
python_version = {version}
[mypy-cbor2.*,netaddr.*,sortedcontainers.*]
ignore_missing_imports = True
"""


class CompileError(Exception):
    pass


def _mypy_version() -> str:
    try:
        from mypy.version import __version__  # noqa: PLC0415 -- only the compiler needs mypy

        return str(__version__)
    except ImportError as exc:
        raise CompileError("mypyc is not installed: pip install -e '.[test]' (it comes with mypy)") from exc


def build(build_dir: Path | None = None, *, quiet: bool = True) -> Path:
    """Compile statemachine/ into build_dir (default build/mypyc beside the package)."""
    target = build_dir if build_dir is not None else default_build_dir()
    mypy_version = _mypy_version()
    sources = source_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".compile-", dir=target.parent) as scratch:
        work = Path(scratch) / "src"
        package = work / PACKAGE
        shutil.copytree(sources, package, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        # The fingerprint of what is compiled, not of the live tree, which may change meanwhile.
        built_from = fingerprint(package)
        (work / "mypy.ini").write_text(_MYPY_INI.format(version=f"{sys.version_info[0]}.{sys.version_info[1]}"))
        modules = sorted(f"{PACKAGE}/{path.name}" for path in package.glob("*.py") if path.name not in NOT_COMPILED)
        started = time.monotonic()
        try:
            completed = subprocess.run(
                [sys.executable, "-c", _SETUP.format(group=GROUP_NAME), *modules],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=compile_timeout_s,
                check=False,
                env={**os.environ, "MYPY_CACHE_DIR": str(Path(scratch) / "mypy-cache")},
            )
        except subprocess.TimeoutExpired as exc:
            raise CompileError(f"mypyc did not finish within {compile_timeout_s:.0f} s") from exc
        if completed.returncode != 0:
            raise CompileError(f"mypyc failed:\n{completed.stdout[-4000:]}\n{completed.stderr[-4000:]}")
        output = Path(scratch) / "out"
        shutil.copytree(package, output / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
        for library in work.glob(f"{GROUP_NAME}__mypyc*"):
            shutil.copy2(library, output / library.name)
        manifest = {"fingerprint": built_from, "mypy": mypy_version, "python": sys.version.split()[0]}
        (output / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if not quiet:
            print(f"compiled {len(modules)} modules in {time.monotonic() - started:.0f} s")
        # Swap in one rename; the old build is moved aside first and removed with the scratch.
        if target.exists():
            target.rename(Path(scratch) / "previous")
        output.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    del argv
    try:
        target = build(quiet=False)
    except CompileError as exc:
        print(f"allot compile: {exc}", file=sys.stderr)
        return 1
    print(f"the state machine's compiled build is in {target}; members started from now on use it")
    return 0
