"""The key layout of the replicated state. Every key the state machine writes is built here.

Object keys are readable paths; names are DNS-1123 labels, so '/' never appears inside a part
and a scope prefix (`claim/<org>/<project>/`) selects exactly one tenant's objects. Platform
objects use the empty org and project, so they sort first within their kind.

| prefix        | record                                                     |
|---------------|------------------------------------------------------------|
| `meta`        | revision, clock, last applied (index, position), counters  |
| `pool/`       | IPPool objects (`pool/<org>/<project>/<name>`)             |
| `ps/`         | allocator state of a pool, by pool uid (buddy.PoolState)   |
| `F`, `U`      | free and used blocks of a pool (see buddy.py)              |
| `rt/`         | root pools by address space, family and block (overlap)    |
| `class/`      | IPClass objects                                            |
| `ci/`         | which pools back a class (`ci/<class>/<pool key suffix>`)  |
| `defaultclass`| the name of the default class                              |
| `claim/`      | IPClaim objects (`claim/<org>/<project>/<namespace>/<name>`)|
| `alloc/`      | IPAllocation objects (same path as their claim)            |
| `dd/`, `dx/`  | request-id dedup records and their expiry index            |
| `ev/`         | the event log for watches: one record per revision         |
"""

from __future__ import annotations

from statemachine.addresses import IPV4, Block
from statemachine.view import prefix_end

META = b"meta"
DEFAULT_CLASS = b"defaultclass"

POOL = b"pool/"
CLASS = b"class/"
CLAIM = b"claim/"
ALLOC = b"alloc/"
ROOT = b"rt/"
CLASS_INDEX = b"ci/"
DEDUP = b"dd/"
DEDUP_EXPIRY = b"dx/"
EVENT = b"ev/"
EVENT_END = prefix_end(EVENT)
DEDUP_EXPIRY_END = prefix_end(DEDUP_EXPIRY)


def _path(*parts: str) -> bytes:
    return "/".join(parts).encode()


def pool_key(org: str, project: str, name: str) -> bytes:
    return POOL + _path(org, project, name)


def pool_scope_prefix(org: str, project: str) -> bytes:
    return POOL + _path(org, project, "")


def pool_org_prefix(org: str) -> bytes:
    return POOL + _path(org, "")


def class_key(name: str) -> bytes:
    return CLASS + name.encode()


def claim_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return CLAIM + _path(org, project, namespace, name)


def alloc_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return ALLOC + _path(org, project, namespace, name)


def tenant_prefix(kind_prefix: bytes, org: str, project: str) -> bytes:
    return kind_prefix + _path(org, project, "")


def split_path(key: bytes, kind_prefix: bytes) -> list[str]:
    return key[len(kind_prefix) :].decode().split("/")


def root_prefix(space: str, family: str) -> bytes:
    return ROOT + space.encode() + b"/" + (b"4" if family == IPV4 else b"6")


def root_key(space: str, block: Block) -> bytes:
    return root_prefix(space, block.family) + block.address.to_bytes(16, "big") + bytes([block.length])


def class_index_prefix(class_name: str) -> bytes:
    return CLASS_INDEX + class_name.encode() + b"/"


def class_index_key(class_name: str, pool: bytes) -> bytes:
    return class_index_prefix(class_name) + pool[len(POOL) :]


def dedup_key(org: str, project: str, request_id: str) -> bytes:
    return DEDUP + _path(org, project, "") + request_id.encode()


def dedup_expiry_key(ts_ms: int, dedup: bytes) -> bytes:
    return DEDUP_EXPIRY + ts_ms.to_bytes(8, "big") + dedup


def event_key(revision: int) -> bytes:
    return EVENT + revision.to_bytes(8, "big")


def event_revision(key: bytes) -> int:
    return int.from_bytes(key[len(EVENT) : len(EVENT) + 8], "big")
