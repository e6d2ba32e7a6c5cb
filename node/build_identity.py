"""Which build a member runs: everything that decides the state it computes from the log.

The Raft log holds commands, and each member applies them with its own code. Two builds whose
rules differ in anything (a new check, another order in the pending queue, a library that
parses an address differently) compute different states from one log, and nothing in the log
itself would show it. So every log entry names the build of the member that proposed it
(`node.raft.encode_batch`), and a member stops rather than apply an entry of another build
(`AllotRaft.apply_batch`): a member that stops is recoverable, one that drifts is not.

The build id is a hash of the server's sources (`node/` and `statemachine/`, every module:
narrowing it to the modules that apply entries today would silently miss the next one that
does), of the Python minor version and of the versions of the libraries apply runs through. The
compiled state machine (`allot compile`) is compiled from the same sources and applies every
entry to the same bytes (tests/test_compiled.py), so it has the same id: a cluster may mix
compiled and pure-Python members. A change to a comment changes the id too; the rule it guards
is the README's "upgrade the whole cluster at once", and a conservative id cannot let two
different rule sets pass as one.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import sys
from pathlib import Path

SOURCE_PACKAGES = ("node", "statemachine")
# What apply runs through besides our own code: CBOR decoding and encoding of every record, the
# store, address parsing, and the log itself.
LIBRARIES = ("cbor2", "lmdb", "netaddr", "pysyncobj")
BUILD_ID_CHARS = 16  # 64 bits of SHA-256: a name to compare, not a defence against forgery
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def compute_build_id(root: Path = PROJECT_ROOT) -> str:
    """The build id of the sources under `root` with the interpreter and libraries of this process."""
    digest = hashlib.sha256()
    digest.update(f"python {sys.version_info[0]}.{sys.version_info[1]}\0".encode())
    for library in LIBRARIES:
        digest.update(f"{library} {importlib.metadata.version(library)}\0".encode())
    for package in SOURCE_PACKAGES:
        for source in package_modules(root / package):
            content = source.read_bytes()
            digest.update(f"{package}/{source.name}\0{len(content)}\0".encode())
            digest.update(content)
    return digest.hexdigest()[:BUILD_ID_CHARS]


def package_modules(directory: Path) -> list[Path]:
    """The package's modules in name order: regular files named *.py, not hidden ones (an
    editor's lock file `.#raft.py` is a dangling link). A package without modules is an error:
    hashing nothing would give every broken install one id."""
    modules = sorted(path for path in directory.glob("*.py") if not path.name.startswith(".") and path.is_file())
    if not modules:
        raise RuntimeError(f"no Python modules in {directory}: the server's sources are not installed there")
    return modules


@functools.cache
def build_id() -> str:
    """This process's build id, computed once (the sources are read at the first call)."""
    return compute_build_id()
