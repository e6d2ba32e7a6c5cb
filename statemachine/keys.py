"""The key layout of the replicated state. Every key the state machine writes is built here.

Object keys are readable paths; names are DNS-1123 labels (node names DNS-1123 subdomains, with
dots), so '/' never appears inside a part
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
| `prc/`        | PriorityClass objects (`prc/<name>`)                       |
| `defaultprc`  | the name of the global default PriorityClass               |
| `claim/`      | IPClaim objects (`claim/<org>/<project>/<namespace>/<name>`)|
|               | in claims.py's compact stored form                         |
| `alloc/`      | IPAllocation objects (same path as their claim), compact   |
| `dd/`, `dx/`  | request-id dedup records and their expiry index            |
| `ev/`         | the event log for watches: one record per revision         |
| `quota/`      | Quota objects (`quota/<org>/<project>`; project empty: org)|
| `qu/`         | tenant ledgers: usage and cached limits, same path as quota|
| `node/`       | Node objects (`node/<name>`)                               |
| `nst/`        | per-node scheduling record (nodes.NodeState), by name      |
| `pod/`        | Pod objects (`pod/<org>/<project>/<namespace>/<name>`)     |
| `pbn/`        | pods bound to a node: `pbn/<node>/<pod key suffix>`        |
| `pq/`         | the pending queue: `pq/<rank><pod uid>` -> pod key          |
| `svc/`        | Service objects (same path shape as pods)                  |
| `sched`       | scheduler singleton: counters, cluster policy, sweep cursor|
"""

from __future__ import annotations

from typing import Final

from statemachine.addresses import IPV4, Block
from statemachine.view import prefix_end

# Final: the compiled build uses these as constants, never looked up in the module. Paths are
# f-strings (no tuple of parts to join): keys are built several times on every command.
META: Final = b"meta"
DEFAULT_CLASS: Final = b"defaultclass"
DEFAULT_PRIORITY_CLASS: Final = b"defaultprc"

POOL: Final = b"pool/"
CLASS: Final = b"class/"
CLAIM: Final = b"claim/"
ALLOC: Final = b"alloc/"
ROOT: Final = b"rt/"
CLASS_INDEX: Final = b"ci/"
DEDUP: Final = b"dd/"
DEDUP_EXPIRY: Final = b"dx/"
EVENT: Final = b"ev/"
QUOTA: Final = b"quota/"
LEDGER: Final = b"qu/"
NODE: Final = b"node/"
NODE_STATE: Final = b"nst/"
POD: Final = b"pod/"
POD_BY_NODE: Final = b"pbn/"
QUEUE: Final = b"pq/"
SERVICE: Final = b"svc/"
SCHEDULER: Final = b"sched"
PRIORITY_CLASS: Final = b"prc/"
EVENT_END: Final = prefix_end(EVENT)
DEDUP_EXPIRY_END: Final = prefix_end(DEDUP_EXPIRY)


def pool_key(org: str, project: str, name: str) -> bytes:
    return POOL + f"{org}/{project}/{name}".encode()


def pool_id(org: str, project: str, name: str) -> str:
    """How the API names a pool: "name" for a platform pool, "org/project/name" for a tenant's.
    Here rather than in pools.py so that classes.py, which pools.py imports, can use it."""
    return f"{org}/{project}/{name}" if org else name


def pool_scope_prefix(org: str, project: str) -> bytes:
    return POOL + f"{org}/{project}/".encode()


def pool_org_prefix(org: str) -> bytes:
    return POOL + f"{org}/".encode()


def class_key(name: str) -> bytes:
    return CLASS + name.encode()


def priority_class_key(name: str) -> bytes:
    return PRIORITY_CLASS + name.encode()


def claim_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return CLAIM + f"{org}/{project}/{namespace}/{name}".encode()


def alloc_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return ALLOC + f"{org}/{project}/{namespace}/{name}".encode()


def tenant_prefix(kind_prefix: bytes, org: str, project: str) -> bytes:
    return kind_prefix + f"{org}/{project}/".encode()


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
    return DEDUP + f"{org}/{project}/".encode() + request_id.encode()


def dedup_expiry_key(ts_ms: int, dedup: bytes) -> bytes:
    return DEDUP_EXPIRY + ts_ms.to_bytes(8, "big") + dedup


def event_key(revision: int) -> bytes:
    return EVENT + revision.to_bytes(8, "big")


def event_revision(key: bytes) -> int:
    return int.from_bytes(key[len(EVENT) : len(EVENT) + 8], "big")


# ---- scheduler -------------------------------------------------------------------------------


def quota_key(org: str, project: str) -> bytes:
    return QUOTA + f"{org}/{project}".encode()


def ledger_key(org: str, project: str) -> bytes:
    return LEDGER + f"{org}/{project}".encode()


def node_key(name: str) -> bytes:
    return NODE + name.encode()


def node_state_key(name: str) -> bytes:
    return NODE_STATE + name.encode()


def pod_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return POD + f"{org}/{project}/{namespace}/{name}".encode()


def service_key(org: str, project: str, namespace: str, name: str) -> bytes:
    return SERVICE + f"{org}/{project}/{namespace}/{name}".encode()


def pods_on_node_prefix(node: str) -> bytes:
    return POD_BY_NODE + node.encode() + b"/"


def pod_on_node_key(node: str, pod: bytes) -> bytes:
    return pods_on_node_prefix(node) + pod[len(POD) :]


def pod_of_node_index(index_key: bytes, node: str) -> bytes:
    return POD + index_key[len(pods_on_node_prefix(node)) :]


priority_bias = 1 << 31  # priorities lie in [-2^31, 2^31); rank = bias - 1 - priority sorts high first


def queue_key(priority: int, uid: bytes) -> bytes:
    """Queue order: priority descending, then age (the uid is the log position of creation)."""
    return QUEUE + (priority_bias - 1 - priority).to_bytes(5, "big") + uid
