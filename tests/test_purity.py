"""statemachine/ is sans-io and deterministic: it imports only the standard library, cbor2,
netaddr and itself, and none of the standard modules that read clocks, draw random numbers,
touch the OS or run concurrently. Builtins that do I/O or depend on the hash seed are refused
too.

The checker is an ordinary function over source text, tested against small sources that
break each rule, so this test is known to be able to fail.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "statemachine"
PACKAGE_DIR = Path(__file__).resolve().parent.parent / PACKAGE
ALLOWED_THIRD_PARTY = frozenset({"cbor2", "netaddr"})
# Standard modules the state machine must not use: clocks, randomness, identity from the host,
# the OS, the network, concurrency, dynamic imports.
FORBIDDEN_STDLIB = frozenset(
    {
        "time",
        "random",
        "uuid",
        "os",
        "socket",
        "threading",
        "asyncio",
        "subprocess",
        "datetime",
        "secrets",
        "tempfile",
        "multiprocessing",
        "concurrent",
        "importlib",
        "signal",
        "select",
        "selectors",
        "shutil",
        "pathlib",
        "io",
        "glob",
        "zoneinfo",
        "calendar",
        "locale",
        "platform",
        "sched",
        "_thread",
        "ctypes",
        "urllib",
        "http",
        "logging",
    }
)
# Builtins that do I/O, import dynamically, or whose result depends on the hash seed. (`id()` is
# allowed: context.py keys a per-command lookup table by it and never iterates that table.)
FORBIDDEN_BUILTINS = frozenset(
    {"open", "print", "input", "eval", "exec", "compile", "__import__", "hash", "breakpoint"}
)


def _imported(node: ast.AST) -> list[str]:
    """Absolute module names an import statement names ([] for anything else)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and not node.level:  # relative imports stay in the package
        return [node.module or ""]
    return []


def import_problems(source: str, filename: str = "<source>") -> list[str]:
    """Every import or builtin call in source that the state machine may not use."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_BUILTINS:
            problems.append(f"{filename}:{node.lineno}: calls {node.func.id}()")
        for name in _imported(node):
            top = name.split(".")[0]
            where = f"{filename}:{getattr(node, 'lineno', '?')}"
            if top in FORBIDDEN_STDLIB:
                problems.append(f"{where}: imports {name}, which the state machine must not use")
            elif top not in {PACKAGE, "__future__", *ALLOWED_THIRD_PARTY} and top not in sys.stdlib_module_names:
                problems.append(f"{where}: imports {name}, which is neither stdlib, cbor2, netaddr nor {PACKAGE}")
    return problems


def _modules() -> list[Path]:
    return sorted(PACKAGE_DIR.rglob("*.py"))


def test_package_has_modules() -> None:
    names = {path.name for path in _modules()}
    assert {"machine.py", "codec.py", "view.py", "invariants.py", "queries.py", "buddy.py"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda path: path.name)
def test_statemachine_module_is_pure(path: Path) -> None:
    problems = import_problems(path.read_text(), str(path.relative_to(PACKAGE_DIR.parent)))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source",
    [
        "import time",
        "import os.path",
        "from datetime import datetime",
        "from random import Random",
        "import uuid as u",
        "def f():\n    import socket\n",
        "import threading, json",
        "from concurrent.futures import ThreadPoolExecutor",
        "import importlib",
        "import secrets",
        "import tempfile",
        "import multiprocessing",
        "import asyncio",
        "import subprocess",
        "import sortedcontainers",
        "from pysyncobj import SyncObj",
        "import node.memstore",
        "from tests.harness import Machine",
        "x = hash('a')",
        "f = open('/etc/hosts')",
        "print('hi')",
        "m = __import__('time')",
        "if True:\n    try:\n        import lmdb\n    except ImportError:\n        pass\n",
    ],
)
def test_checker_catches(source: str) -> None:
    assert import_problems(source), f"the checker let through: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib",
        "from collections.abc import Iterator",
        "import cbor2",
        "import netaddr",
        "from statemachine import keys",
        "from statemachine.codec import dumps",
        "from . import keys",
        "from __future__ import annotations",
        "import re\npattern = re.compile('a')",
        "from dataclasses import dataclass, field",
    ],
)
def test_checker_allows(source: str) -> None:
    assert import_problems(source) == []


def test_checker_reports_file_and_line() -> None:
    problems = import_problems("import hashlib\n\nimport time\n", "statemachine/x.py")
    assert problems == ["statemachine/x.py:3: imports time, which the state machine must not use"]
