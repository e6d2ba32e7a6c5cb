"""Model-based test of the IPAM state machine (Hypothesis stateful testing).

The real `apply` runs beside a deliberately naive model. The model keeps, for every pool, one
entry per address (pools are small: IPv4 /24../28 and IPv6 /120../124, all inside one /23 or
/119 region so that they overlap often) saying who holds it: nobody, `reserved` (reserved and
excluded ranges), a claim, or a child pool. Every outcome is decided by brute force over those
addresses, never by a buddy structure:

* a claim of /L succeeds iff some aligned /L block inside the pool is entirely free;
  first-fit takes the lowest such block; best-fit takes the first /L of the lowest of the
  smallest maximal free aligned blocks that can hold a /L (the buddy allocator's free blocks
  are exactly the maximal free aligned blocks, because free buddies are always merged);
  next-fit takes the lowest such block at or after the end of the block it took last in that
  pool, else the lowest;
* a claim of a specific address or CIDR succeeds iff the block lies in the pool and is free;
* child pools carve from their parent like claims do, with the parent's strategy;
* releases free the addresses; retained allocations keep them until re-bound or never.

After every step the test checks the refusal code, the allocated CIDR, the created flag, that
refusals and no-ops leave the state (digest and revision) unchanged, `check_invariants`, and, for
every pool, capacity and largestFreePrefix recomputed from the addresses. At the end of every
example the whole log is replayed into a fresh store and must give the same results and digest.

Runs are derandomized so CI is stable. More examples: `ALLOT_HYPOTHESIS_EXAMPLES=2000`; fresh
random exploration instead of the fixed seed: `ALLOT_HYPOTHESIS_RANDOM=1`.
"""

from __future__ import annotations

import copy
import ipaddress
import os
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from node.memstore import MemoryStore
from statemachine import COMMAND_TYPES, Ok, Principal, Rejected, apply, keys, queries
from statemachine.invariants import check_invariants, digest
from statemachine.machine import dedup_ttl_ms
from tests.harness import ADMIN, Machine, admin_for, member

EXAMPLES = int(os.environ.get("ALLOT_HYPOTHESIS_EXAMPLES", "200"))
STEPS = int(os.environ.get("ALLOT_HYPOTHESIS_STEPS", "50"))
RANDOM = os.environ.get("ALLOT_HYPOTHESIS_RANDOM", "") not in ("", "0")

V4, V6 = "IPv4", "IPv6"
BITS = {V4: 32, V6: 128}
# IPv6 at the very top of the space, where address arithmetic can run past 2^128 (next-fit's
# rounded-up cursor once did: f2464c1).
REGION_BASE = {V4: int(ipaddress.IPv4Address("10.0.0.0")), V6: (1 << 128) - (1 << 9)}
REGION_HOST_BITS = 9  # every generated block lies in 10.0.0.0/23 or the last /119 of IPv6
POOL_HOST_BITS = (4, 8)  # pools hold 16..256 addresses, so enumerating them is cheap

OK = "ok"  # the expected "code" of a success
INVALID, NOT_FOUND, ALREADY_EXISTS = "invalid", "not_found", "already_exists"
CONFLICT, POOL_EXHAUSTED, FORBIDDEN = "conflict", "pool_exhausted", "forbidden"
FIRST_FIT, BEST_FIT, NEXT_FIT = "first-fit", "best-fit", "next-fit"
DELETE, RETAIN = "Delete", "Retain"
RESERVED = "reserved"

WEB = member("acme", "web")
DB = member("acme", "db")
OTHER = member("zeta", "web")
WEB_ADMIN = admin_for("acme", "web")
PRINCIPALS = (ADMIN, WEB, DB, WEB_ADMIN, OTHER)
POOL_NAMES = ("p1", "p2", "p3", "p4")
CLAIM_NAMES = ("c1", "c2", "c3")
REQUEST_IDS = ("r1", "r2", "r3")


# ---- addresses ---------------------------------------------------------------------------


def fmt_address(family: str, address: int) -> str:
    return str(ipaddress.IPv4Address(address) if family == V4 else ipaddress.IPv6Address(address))


def fmt_cidr(family: str, address: int, length: int) -> str:
    return f"{fmt_address(family, address)}/{length}"


@dataclass(frozen=True)
class Blk:
    family: str
    address: int
    length: int

    @property
    def size(self) -> int:
        return 1 << (BITS[self.family] - self.length)

    def __str__(self) -> str:
        return fmt_cidr(self.family, self.address, self.length)


def parse_cidr(text: str) -> Blk | None:
    """None for anything that is not a CIDR with clear host bits."""
    try:
        network = ipaddress.ip_network(text, strict=True)
    except ValueError:
        return None
    family = V4 if network.version == 4 else V6
    return Blk(family, int(network.network_address), network.prefixlen)


def parse_address(text: str) -> Blk | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    family = V4 if address.version == 4 else V6
    return Blk(family, int(address), BITS[family])


# ---- the model ---------------------------------------------------------------------------


@dataclass
class MPool:
    org: str
    project: str
    name: str
    block: Blk
    space: str
    visibility: str
    shared_with: list[str]
    allocation: dict[str, Any]
    spec: dict[str, Any]  # the spec as the pool stores it, to tell "same spec" from "different"
    body: dict[str, Any]  # the body that made it, to send again
    creator: Principal
    parent: str | None
    holders: list[str | None]  # one entry per address: None (free), RESERVED, or the holder
    cursor: int = 0  # next-fit's: the offset after the block it took last

    @property
    def pid(self) -> str:
        return f"{self.org}/{self.project}/{self.name}" if self.org else self.name

    @property
    def bits(self) -> int:
        return BITS[self.block.family]

    def span(self, length: int) -> int:
        return 1 << (self.bits - length)

    def contains(self, blk: Blk) -> bool:
        return (
            blk.family == self.block.family
            and blk.length >= self.block.length
            and self.block.address <= blk.address
            and blk.address + blk.size <= self.block.address + self.block.size
        )

    def is_free(self, offset: int, length: int) -> bool:
        return all(holder is None for holder in self.holders[offset : offset + self.span(length)])

    def aligned_free(self, length: int) -> list[int]:
        """Offsets of every aligned /length block of the pool that is entirely free."""
        step = self.span(length)
        return [offset for offset in range(0, len(self.holders), step) if self.is_free(offset, length)]

    def maximal_free(self) -> list[tuple[int, int]]:
        """(offset, length) of every free aligned block whose enclosing aligned block is not free."""
        found: list[tuple[int, int]] = []

        def visit(offset: int, length: int) -> None:
            if self.is_free(offset, length):
                found.append((offset, length))
            elif length < self.bits:
                visit(offset, length + 1)
                visit(offset + self.span(length + 1), length + 1)

        visit(0, self.block.length)
        return found

    def choose(self, length: int, strategy: str) -> int | None:
        """The offset the allocator must pick for a /length, or None when nothing fits; for
        next-fit, the choice moves the cursor past it (every choice is taken)."""
        if strategy == NEXT_FIT:
            offsets = self.aligned_free(length)
            if not offsets:
                return None
            above = [offset for offset in offsets if offset >= self.cursor]
            chosen = min(above) if above else min(offsets)
            self.cursor = (chosen + self.span(length)) % len(self.holders)
            return chosen
        if strategy == FIRST_FIT:
            offsets = self.aligned_free(length)
            return min(offsets) if offsets else None
        fitting = [(block_length, offset) for offset, block_length in self.maximal_free() if block_length <= length]
        if not fitting:
            return None
        smallest = max(block_length for block_length, _ in fitting)
        return min(offset for block_length, offset in fitting if block_length == smallest)

    def take(self, offset: int, length: int, holder: str) -> None:
        for position in range(offset, offset + self.span(length)):
            if self.holders[position] is not None:
                raise AssertionError(f"model bug: {holder} takes an address held by {self.holders[position]}")
            self.holders[position] = holder

    def give_back(self, holder: str) -> None:
        self.holders = [None if held == holder else held for held in self.holders]

    def sub_block(self, offset: int, length: int) -> Blk:
        return Blk(self.block.family, self.block.address + offset, length)

    def offset_of(self, blk: Blk) -> int:
        return blk.address - self.block.address


@dataclass
class MAlloc:
    principal: Principal  # who made (or last re-bound) the claim
    namespace: str
    name: str
    pool: str
    block: Blk
    reclaim: str
    spec: dict[str, Any]
    bound: bool = True

    @property
    def holder(self) -> str:
        return f"claim:{self.principal.org}/{self.principal.project}/{self.namespace}/{self.name}"


ClaimKey = tuple[str, str, str, str]  # org, project, namespace, name


@dataclass
class Expect:
    code: str
    created: bool = False
    writes: bool = False  # a success that changes state
    cidr: str | None = None  # status.allocatedCIDR of the returned object
    pool: str | None = None  # status.pool of a returned claim
    value: dict[str, Any] | None = None  # the exact value (a deduplicated retry)
    reason: str | None = None  # details.reason of a refused specific claim: reserved or allocated


def refuse(code: str) -> Expect:
    return Expect(code)


def normalise_allocation(value: dict[str, Any] | None, shortest: int, bits: int) -> dict[str, Any] | None:
    """The allocation policy with defaults filled in, or None when it is invalid."""
    value = value or {}
    given: dict[str, int | None] = {}
    for key in ("minPrefixLength", "maxPrefixLength", "defaultPrefixLength"):
        number = value.get(key)
        if number is not None and not shortest <= number <= bits:
            return None
        given[key] = number
    strategy = value.get("strategy") or FIRST_FIT
    if strategy not in (FIRST_FIT, BEST_FIT, NEXT_FIT):
        return None
    low = shortest if given["minPrefixLength"] is None else given["minPrefixLength"]
    high = bits if given["maxPrefixLength"] is None else given["maxPrefixLength"]
    default = high if given["defaultPrefixLength"] is None else given["defaultPrefixLength"]
    if not low <= default <= high:
        return None
    return {"minPrefixLength": low, "maxPrefixLength": high, "defaultPrefixLength": default, "strategy": strategy}


class Model:
    def __init__(self) -> None:
        self.pools: dict[str, MPool] = {}
        self.allocs: dict[ClaimKey, MAlloc] = {}

    # -- lookups

    @staticmethod
    def visible(pool: MPool, principal: Principal) -> bool:
        if (principal.is_admin and not principal.has_tenant) or pool.visibility == "platform":
            return True  # an admin acting for a tenant sees what the tenant sees
        if pool.org != principal.org:
            return False
        if pool.project == principal.project:
            return True
        return pool.visibility == "shared" and (not pool.shared_with or principal.project in pool.shared_with)

    def resolve(self, principal: Principal, ref: str) -> MPool | None:
        parts = ref.split("/")
        candidates: list[str] = []
        if len(parts) == 1:
            if principal.has_tenant:
                candidates.append(f"{principal.org}/{principal.project}/{ref}")
            candidates.append(ref)
        elif len(parts) == 2:
            if principal.org:
                candidates.append(f"{principal.org}/{ref}")
        else:
            candidates.append(ref)
        for pid in candidates:
            pool = self.pools.get(pid)
            if pool is not None and self.visible(pool, principal):
                return pool
        return None

    def allocations_in(self, pid: str) -> int:
        return sum(1 for alloc in self.allocs.values() if alloc.pool == pid)

    def children_of(self, pid: str) -> int:
        return sum(1 for pool in self.pools.values() if pool.parent == pid)

    def status(self, pool: MPool) -> dict[str, Any]:
        """A pool's status fields, recomputed from its addresses."""
        reserved = sum(1 for holder in pool.holders if holder == RESERVED)
        allocated = sum(1 for holder in pool.holders if holder not in (None, RESERVED))
        total = len(pool.holders) - reserved
        lengths = [length for _, length in pool.maximal_free()]
        largest = min(lengths) if lengths else None
        exhausted = largest is None or largest > pool.allocation["maxPrefixLength"]
        return {
            "allocatedCIDR": str(pool.block),
            "capacity": {"total": total, "allocated": allocated, "available": total - allocated, "reserved": reserved},
            "largestFreePrefix": largest,
            "phase": "Exhausted" if exhausted else "Ready",
            "allocations": self.allocations_in(pool.pid),
            "childPools": self.children_of(pool.pid),
        }

    # -- commands; each returns what the state machine must answer and, on success, updates the model

    def pool_create(self, principal: Principal, body: dict[str, Any]) -> Expect:
        name: str = body["name"]
        spec_in: dict[str, Any] = body.get("spec") or {}
        visibility = spec_in.get("visibility") or ("consumer" if principal.has_tenant else "platform")
        if visibility == "platform":
            if not principal.is_admin:
                return refuse(FORBIDDEN)
            org, project = "", ""
        else:
            if not principal.has_tenant:
                return refuse(INVALID)
            org, project = principal.org, principal.project
        wanted: Blk | None = None
        source: MPool | Blk  # where the block comes from: the parent pool, or a root's own CIDR
        if spec_in.get("parentPool") is not None:
            parent = self.resolve(principal, spec_in["parentPool"])
            if parent is None:
                return refuse(NOT_FOUND)
            source = parent
            if spec_in.get("addressSpace") is not None:
                return refuse(INVALID)
            if spec_in.get("cidr") is not None:
                wanted = parse_cidr(spec_in["cidr"])
                if wanted is None or not parent.contains(wanted):
                    return refuse(INVALID)
            length = spec_in.get("prefixLength")
            if length is not None and not parent.block.length <= length <= parent.bits:
                return refuse(INVALID)
            if wanted is not None and length is not None and length != wanted.length:
                return refuse(INVALID)
            if wanted is None and length is None:
                return refuse(INVALID)
            family, space = parent.block.family, parent.space
        else:
            if not principal.is_admin:
                return refuse(FORBIDDEN)
            if spec_in.get("cidr") is None or spec_in.get("prefixLength") is not None:
                return refuse(INVALID)
            wanted = parse_cidr(spec_in["cidr"])
            if wanted is None:
                return refuse(INVALID)
            source = wanted
            family, space = wanted.family, spec_in.get("addressSpace", "default")
        shared_with: list[str] = spec_in.get("sharedWith") or []
        if shared_with and visibility != "shared":
            return refuse(INVALID)
        bits = BITS[family]
        block_length = wanted.length if wanted is not None else int(spec_in["prefixLength"])
        allocation = normalise_allocation(spec_in.get("allocation"), block_length, bits)
        if allocation is None:
            return refuse(INVALID)
        size = 1 << (bits - block_length)
        reserved_in: dict[str, int] = spec_in.get("reserved") or {}
        leading, trailing = reserved_in.get("leading", 0), reserved_in.get("trailing", 0)
        if not (0 <= leading <= size and 0 <= trailing <= size) or leading + trailing >= size:
            return refuse(INVALID)
        excluded_in: list[str] = spec_in.get("excluded") or []
        excluded: list[Blk] = []
        if wanted is not None:
            if len(set(excluded_in)) != len(excluded_in):
                return refuse(INVALID)
            for text in excluded_in:
                blk = parse_cidr(text)
                if blk is None or not (
                    blk.family == family
                    and blk.length >= wanted.length
                    and wanted.address <= blk.address
                    and blk.address + blk.size <= wanted.address + wanted.size
                ):
                    return refuse(INVALID)
                excluded.append(blk)
        elif excluded_in:
            return refuse(INVALID)
        spec: dict[str, Any] = {
            "ipFamily": family,
            "visibility": visibility,
            "sharedWith": shared_with,
            "classNames": [],
            "allocation": allocation,
        }
        if isinstance(source, Blk):
            spec["cidr"] = str(source)
            spec["addressSpace"] = space
        else:
            spec["parentPool"] = spec_in["parentPool"]
            if wanted is not None:
                spec["cidr"] = str(wanted)
            else:
                spec["prefixLength"] = block_length
        spec["reserved"] = {"leading": leading, "trailing": trailing}
        spec["excluded"] = [str(blk) for blk in excluded]

        pid = f"{org}/{project}/{name}" if org else name
        existing = self.pools.get(pid)
        if existing is not None:
            if existing.spec == spec:
                return Expect(OK, cidr=str(existing.block))
            return refuse(ALREADY_EXISTS)
        if not isinstance(source, Blk) and visibility == "platform" and source.org:
            return refuse(INVALID)  # a child of a tenant's pool belongs to that tenant
        if not isinstance(source, Blk) and source.org and (source.org, source.project) != (org, project):
            return refuse(FORBIDDEN)  # a child of a tenant's pool belongs to that project, whoever asks
        if not isinstance(source, Blk) and not source.org and not principal.is_admin:
            low, high = source.allocation["minPrefixLength"], source.allocation["maxPrefixLength"]
            if not low <= block_length <= high:
                return refuse(INVALID)  # a tenant carving a platform pool is bound by its policy

        # Where the block comes from.
        if isinstance(source, Blk):
            for other in self.pools.values():
                if other.parent is None and other.space == space and other.block.family == family:
                    lo, hi = other.block.address, other.block.address + other.block.size
                    if source.address < hi and lo < source.address + source.size:
                        return refuse(CONFLICT)
            block = source
        elif wanted is not None:
            if not source.is_free(source.offset_of(wanted), wanted.length):
                return refuse(CONFLICT)
            block = wanted
        else:
            offset = source.choose(block_length, source.allocation["strategy"])
            if offset is None:
                return refuse(POOL_EXHAUSTED)
            block = source.sub_block(offset, block_length)

        pool = MPool(
            org=org,
            project=project,
            name=name,
            block=block,
            space=space,
            visibility=visibility,
            shared_with=shared_with,
            allocation=allocation,
            spec=spec,
            body=copy.deepcopy(body),
            creator=principal,
            parent=None if isinstance(source, Blk) else source.pid,
            holders=[None] * size,
        )
        pool.holders[:leading] = [RESERVED] * leading
        pool.holders[size - trailing :] = [RESERVED] * trailing
        for blk in excluded:  # held back: the union of the reserved and excluded ranges, which may overlap
            offset = pool.offset_of(blk)
            pool.holders[offset : offset + blk.size] = [RESERVED] * blk.size
        if all(holder == RESERVED for holder in pool.holders):
            return refuse(INVALID)
        if isinstance(source, MPool):
            source.take(source.offset_of(block), block.length, f"pool:{pid}")
        self.pools[pid] = pool
        return Expect(OK, created=True, writes=True, cidr=str(block))

    def pool_delete(self, principal: Principal, body: dict[str, Any]) -> Expect:
        pool = self.resolve(principal, body["name"])
        if pool is None:
            return refuse(NOT_FOUND)
        acts_for_platform = principal.is_admin and not principal.has_tenant
        if not acts_for_platform and (pool.org, pool.project) != (principal.org, principal.project):
            return refuse(FORBIDDEN)
        if self.allocations_in(pool.pid) or self.children_of(pool.pid):
            return refuse(CONFLICT)
        del self.pools[pool.pid]
        if pool.parent is not None:
            self.pools[pool.parent].give_back(f"pool:{pool.pid}")
        return Expect(OK, writes=True, cidr=str(pool.block))

    def asks_for_what_it_holds(
        self, principal: Principal, alloc: MAlloc, spec: dict[str, Any], specific: Blk | None
    ) -> bool:
        """The same request in other words: the pool it names now is the one the claim holds an
        address of, the reclaim policy (Delete by default) is the claim's, and the size is the
        block it holds: the same specific block, or a length (the pool's default if none is
        given) equal to the block's, for a claim that asked for a length."""
        pool = self.resolve(principal, spec["poolRef"])
        if pool is None or pool.pid != alloc.pool or (spec.get("reclaimPolicy") or DELETE) != alloc.reclaim:
            return False
        if (specific is not None) != ("address" in alloc.spec or "cidr" in alloc.spec):
            return False
        if specific is not None:
            return specific == alloc.block
        asked = spec.get("prefixLength")
        return int(pool.allocation["defaultPrefixLength"] if asked is None else asked) == alloc.block.length

    def claim_create(self, principal: Principal, body: dict[str, Any]) -> Expect:
        name: str = body["name"]
        namespace: str = body.get("namespace", "default")
        spec_in: dict[str, Any] = body["spec"]
        sizes = [key for key in ("prefixLength", "address", "cidr") if spec_in.get(key) is not None]
        if len(sizes) > 1:
            return refuse(INVALID)
        specific: Blk | None = None
        if sizes == ["address"]:
            specific = parse_address(spec_in["address"])
        elif sizes == ["cidr"]:
            specific = parse_cidr(spec_in["cidr"])
        elif sizes == ["prefixLength"] and not 0 <= spec_in["prefixLength"] <= 128:
            return refuse(INVALID)
        if sizes and sizes != ["prefixLength"] and specific is None:
            return refuse(INVALID)
        spec = {key: value for key, value in spec_in.items() if value is not None}
        key: ClaimKey = (principal.org, principal.project, namespace, name)
        alloc = self.allocs.get(key)
        if alloc is not None and alloc.bound:
            if alloc.spec == spec or self.asks_for_what_it_holds(principal, alloc, spec, specific):
                return Expect(OK, cidr=str(alloc.block), pool=alloc.pool)
            return refuse(ALREADY_EXISTS)
        pool = self.resolve(principal, spec_in["poolRef"])
        if pool is None:
            return refuse(NOT_FOUND)
        if specific is not None:
            length = specific.length
        else:
            asked = spec_in.get("prefixLength")
            length = int(pool.allocation["defaultPrefixLength"] if asked is None else asked)
        if specific is not None and specific.family != pool.block.family:
            return refuse(INVALID)
        if length > pool.bits:
            return refuse(INVALID)
        if not pool.allocation["minPrefixLength"] <= length <= pool.allocation["maxPrefixLength"]:
            return refuse(INVALID)
        if specific is not None and not pool.contains(specific):
            return refuse(INVALID)
        reclaim = spec_in.get("reclaimPolicy") or DELETE
        if alloc is not None:  # retained for this name: bound again, or refused
            compatible = (
                alloc.pool == pool.pid
                and alloc.block.length == length
                and (specific is None or specific == alloc.block)
            )
            if not compatible:
                return refuse(CONFLICT)
            alloc.bound, alloc.reclaim, alloc.spec, alloc.principal = True, reclaim, spec, principal
            return Expect(OK, created=True, writes=True, cidr=str(alloc.block), pool=alloc.pool)
        if specific is not None:
            held = [holder for holder in pool.holders[pool.offset_of(specific) :][: specific.size] if holder]
            if held:  # the reason names the holder of the lowest taken address
                return Expect(CONFLICT, reason="reserved" if held[0] == RESERVED else "allocated")
            offset = pool.offset_of(specific)
        else:
            chosen = pool.choose(length, pool.allocation["strategy"])
            if chosen is None:
                return refuse(POOL_EXHAUSTED)
            offset = chosen
        alloc = MAlloc(principal, namespace, name, pool.pid, pool.sub_block(offset, length), reclaim, spec)
        pool.take(offset, length, alloc.holder)
        self.allocs[key] = alloc
        return Expect(OK, created=True, writes=True, cidr=str(alloc.block), pool=pool.pid)

    def claim_delete(self, principal: Principal, body: dict[str, Any]) -> Expect:
        key: ClaimKey = (principal.org, principal.project, body.get("namespace", "default"), body["name"])
        alloc = self.allocs.get(key)
        if alloc is None or not alloc.bound:
            return refuse(NOT_FOUND)
        if alloc.reclaim == RETAIN:
            alloc.bound = False
        else:
            self.pools[alloc.pool].give_back(alloc.holder)
            del self.allocs[key]
        return Expect(OK, writes=True, cidr=str(alloc.block), pool=alloc.pool)

    def dispatch(self, principal: Principal, command_type: str, body: dict[str, Any]) -> Expect:
        handlers = {
            "pool.create": self.pool_create,
            "pool.delete": self.pool_delete,
            "claim.create": self.claim_create,
            "claim.delete": self.claim_delete,
        }
        return handlers[command_type](principal, body)


@dataclass
class DedupRecord:
    command: tuple[str, dict[str, Any], Principal]
    written_ms: int
    value: dict[str, Any]
    created: bool
    refusal: str | None = None  # the code of a remembered refusal


def reaches_handler(principal: Principal, command_type: str) -> bool:
    """Whether the envelope gets past decoding and the command type to a handler: only then is
    the request id looked up and the result (a refusal too) remembered."""
    principal_ok = principal.role in ("admin", "member") and (principal.has_tenant or principal.is_admin)
    return principal_ok and command_type in COMMAND_TYPES and command_type != "noop"


# ---- strategies --------------------------------------------------------------------------

families = st.sampled_from((V4, V6))
principals = st.sampled_from(PRINCIPALS)
pool_names = st.sampled_from(POOL_NAMES)
claim_names = st.sampled_from(CLAIM_NAMES)
namespaces = st.sampled_from((None, None, "ns1"))
request_ids = st.sampled_from((None, None, None, None, *REQUEST_IDS))
reclaim_policies = st.sampled_from((None, DELETE, RETAIN, RETAIN))
rebind_variants = st.sampled_from(("same-length", "same-block", "default-length", "other-length", "other-block"))
# Most references are plain names (own project first, then platform); some are qualified.
pool_refs = st.sampled_from(
    [
        *POOL_NAMES,
        *POOL_NAMES,
        *POOL_NAMES,
        *POOL_NAMES,
        *POOL_NAMES,
        *(f"web/{name}" for name in POOL_NAMES),
        *(f"acme/web/{name}" for name in POOL_NAMES),
        "acme/db/p1",
        "db/p2",
        "nope",
    ]
)


@st.composite
def region_blocks(draw: st.DrawFn, host_bits_min: int, host_bits_max: int) -> Blk:
    """An aligned block of 2**host_bits addresses inside the test region of either family."""
    family = draw(families)
    host_bits = draw(st.integers(host_bits_min, host_bits_max))
    slot = draw(st.integers(0, (1 << (REGION_HOST_BITS - host_bits)) - 1))
    return Blk(family, REGION_BASE[family] + (slot << host_bits), BITS[family] - host_bits)


@st.composite
def inner_blocks(draw: st.DrawFn, outer: Blk) -> Blk:
    """An aligned block of 1..8 addresses inside outer (or, rarely, just after it)."""
    host_bits = draw(st.integers(0, min(3, BITS[outer.family] - outer.length)))
    slots = outer.size >> host_bits
    after_fits = outer.address + outer.size < 1 << BITS[outer.family]  # not past the top of the space
    slot = draw(st.integers(0, slots - 1) | st.just(slots)) if after_fits else draw(st.integers(0, slots - 1))
    return Blk(outer.family, outer.address + (slot << host_bits), BITS[outer.family] - host_bits)


def draw_policy(draw: st.DrawFn, spec: dict[str, Any], family: str, length: int) -> None:
    """Optional allocation policy and reservations (sometimes out of range, to be refused)."""
    bits = BITS[family]
    if draw(st.booleans()):
        allocation: dict[str, Any] = {}
        strategy = draw(st.sampled_from((BEST_FIT, BEST_FIT, FIRST_FIT, NEXT_FIT, None)))
        low = draw(st.none() | st.none() | st.integers(length - 1, bits))
        high = draw(st.none() | st.none() | st.integers(length, bits))
        default = draw(st.none() | st.none() | st.integers(length, bits))
        for key, value in (
            ("strategy", strategy),
            ("minPrefixLength", low),
            ("maxPrefixLength", high),
            ("defaultPrefixLength", default),
        ):
            if value is not None:
                allocation[key] = value
        spec["allocation"] = allocation
    if draw(st.integers(0, 3)) == 0:
        amounts = st.sampled_from((0, 1, 2, 3, 8, 128))
        spec["reserved"] = draw(st.fixed_dictionaries({}, optional={"leading": amounts, "trailing": amounts}))


def draw_visibility(draw: st.DrawFn, spec: dict[str, Any]) -> None:
    choice = draw(st.sampled_from((None, None, None, "platform", "consumer", "shared")))
    if choice is not None:
        spec["visibility"] = choice
    if choice == "shared" or draw(st.integers(0, 9)) == 0:
        shared_with = draw(st.sampled_from(([], ["db"], ["web"], ["db", "web"])))
        if shared_with:
            spec["sharedWith"] = shared_with


def draw_exclusions(draw: st.DrawFn, spec: dict[str, Any], block: Blk) -> None:
    if draw(st.integers(0, 2)) == 0:
        excluded = draw(st.lists(inner_blocks(block), min_size=1, max_size=2))
        spec["excluded"] = [str(blk) for blk in excluded]


@st.composite
def root_pool_bodies(draw: st.DrawFn) -> dict[str, Any]:
    block = draw(region_blocks(*POOL_HOST_BITS))
    spec: dict[str, Any] = {"cidr": str(block)}
    if draw(st.integers(0, 4)) == 0:
        spec["addressSpace"] = "blue"
    draw_visibility(draw, spec)
    draw_policy(draw, spec, block.family, block.length)
    draw_exclusions(draw, spec, block)
    return {"name": draw(pool_names), "spec": spec}


@st.composite
def seed_pool_bodies(draw: st.DrawFn, name: str, family: str) -> dict[str, Any]:
    """A root pool that is always accepted: 16..64 addresses somewhere in the region."""
    host_bits = draw(st.integers(4, 6))
    slot = draw(st.integers(0, (1 << (REGION_HOST_BITS - host_bits)) - 1))
    block = Blk(family, REGION_BASE[family] + (slot << host_bits), BITS[family] - host_bits)
    spec: dict[str, Any] = {
        "cidr": str(block),
        "allocation": {"strategy": draw(st.sampled_from((BEST_FIT, FIRST_FIT, NEXT_FIT)))},
    }
    reserved = draw(st.fixed_dictionaries({}, optional={"leading": st.integers(0, 2), "trailing": st.integers(0, 2)}))
    if reserved:
        spec["reserved"] = reserved
    return {"name": name, "spec": spec}


@st.composite
def child_pool_bodies(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"parentPool": draw(pool_refs)}
    if draw(st.booleans()):
        family = draw(families)
        length = BITS[family] - draw(st.integers(2, 7))
        spec["prefixLength"] = length
    else:
        block = draw(region_blocks(2, 6))
        family, length = block.family, block.length
        spec["cidr"] = str(block)
        draw_exclusions(draw, spec, block)
    draw_visibility(draw, spec)
    draw_policy(draw, spec, family, length)
    return {"name": draw(pool_names), "spec": spec}


@st.composite
def claim_bodies(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"poolRef": draw(pool_refs)}
    if kind == "prefix":
        spec["prefixLength"] = draw(st.integers(27, 33) | st.integers(123, 129) | st.integers(24, 28))
    elif kind == "address":
        family = draw(families)
        offset = draw(st.integers(0, (1 << REGION_HOST_BITS) - 1))
        spec["address"] = fmt_address(family, REGION_BASE[family] + offset)
    elif kind == "cidr":
        spec["cidr"] = str(draw(region_blocks(0, 4)))
    reclaim = draw(reclaim_policies)
    if reclaim is not None:
        spec["reclaimPolicy"] = reclaim
    body: dict[str, Any] = {"name": draw(claim_names), "spec": spec}
    namespace = draw(namespaces)
    if namespace is not None:
        body["namespace"] = namespace
    return body


def claim_name_body(name: str, namespace: str | None) -> dict[str, Any]:
    return {"name": name} if namespace is None else {"name": name, "namespace": namespace}


NO_TENANT_MEMBER = Principal("user", "", "", "member")
# Commands refused as `invalid` whatever the state (names outside POOL_NAMES / CLAIM_NAMES where
# an existing object would be looked at first).
INVALID_COMMANDS: list[tuple[Principal, str, dict[str, Any]]] = [
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.1/24"}}),
    (ADMIN, "pool.create", {"name": "P1", "spec": {"cidr": "10.0.0.0/24"}}),
    (ADMIN, "pool.create", {"name": 5, "spec": {"cidr": "10.0.0.0/24"}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "colour": "red"}}),
    (ADMIN, "pool.create", {"name": "p1", "size": 3, "spec": {"cidr": "10.0.0.0/24"}}),
    (ADMIN, "pool.create", {"name": "p1"}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "prefixLength": 26}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/33"}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "fd00::/120", "ipFamily": "IPv4"}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "visibility": "public"}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "visibility": "consumer"}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "sharedWith": ["db"]}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "classNames": ["gold"]}}),
    (ADMIN, "pool.create", {"name": "p1", "labels": {"bad key!": "x"}, "spec": {"cidr": "10.0.0.0/24"}}),
    (
        ADMIN,
        "pool.create",
        {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "allocation": {"minPrefixLength": 30, "maxPrefixLength": 28}}},
    ),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "allocation": {"strategy": "worst-fit"}}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "allocation": {"minPrefixLength": 20}}}),
    (
        ADMIN,
        "pool.create",
        {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "reserved": {"leading": 200, "trailing": 56}}},
    ),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/28", "reserved": {"leading": 17}}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "excluded": ["10.0.1.0/28"]}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "excluded": ["fd00::/126"]}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "excluded": ["10.0.0.8/30"] * 2}}),
    (ADMIN, "pool.create", {"name": "p1", "spec": {"cidr": "10.0.0.0/24", "addressSpace": "Blue"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "prefixLength": 30, "address": "10.0.0.1"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "prefixLength": 200}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "address": "10.0.0.300"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "address": "10.0.0.0/32"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "cidr": "10.0.0.1/30"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "reclaimPolicy": "Keep"}}),
    (WEB, "claim.create", {"name": "c1", "spec": {"poolRef": "p1", "size": 4}}),
    (WEB, "claim.create", {"name": "c1", "namespace": "Bad", "spec": {"poolRef": "p1"}}),
    (WEB, "claim.create", {"name": "-c", "spec": {"poolRef": "p1"}}),
    (ADMIN, "claim.create", {"name": "zz", "spec": {"prefixLength": 30}}),
    (WEB, "claim.create", {"name": "zz", "spec": {"poolRef": "a/b/c/d"}}),
    (WEB, "claim.create", {"name": "zz", "spec": {"poolRef": "Bad"}}),
    (WEB, "claim.create", {"name": "zz", "spec": {"poolRef": 7}}),
    (NO_TENANT_MEMBER, "claim.create", {"name": "c1", "spec": {"poolRef": "p1"}}),
    (Principal("user", "acme", "web", "owner"), "claim.delete", {"name": "c1"}),
    (WEB, "claim.delete", {"name": "C1"}),
    (WEB, "claim.delete", {"name": "c1", "force": True}),
    (WEB, "claim.delete", {"namespace": "default"}),
    (ADMIN, "pool.delete", {"name": ""}),
    (ADMIN, "pool.delete", {"name": "p1", "force": True}),
    (ADMIN, "pool.delete", {"name": "a/b/c/d"}),
    (ADMIN, "pool.resize", {"name": "p1"}),
]


# ---- the state machine -------------------------------------------------------------------


@settings(
    max_examples=EXAMPLES,
    print_blob=True,
    stateful_step_count=STEPS,
    derandomize=not RANDOM,
    database=None,  # a failure prints the shrunk steps and a @reproduce_failure blob instead
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
class IpamModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.machine = Machine()
        self.model = Model()
        self.results: list[Ok | Rejected] = []
        self.dedup: dict[tuple[str, str, str], DedupRecord] = {}
        self.sent_with_id: list[tuple[Principal, str, dict[str, Any], str]] = []
        self.step_done = True  # False while a step runs: a failed step skips the replay check
        self.revision = 0  # the state's revision: one more for every command that changes state

    # -- running a command beside the model

    def execute(
        self,
        principal: Principal,
        command_type: str,
        body: dict[str, Any],
        request_id: str | None = None,
        expect: Expect | None = None,
        advance_ms: int = 1000,
    ) -> None:
        self.step_done = False
        now_ms = self.machine.ts_ms + advance_ms
        dedup_key = (principal.org, principal.project, request_id) if request_id is not None else None
        record = self.dedup.get(dedup_key) if dedup_key is not None else None
        if record is not None and now_ms - record.written_ms > dedup_ttl_ms:
            record = None  # expired: the command runs afresh
        modelled = expect is None  # False for commands the model does not interpret (invalid ones)
        if expect is not None:
            pass
        elif record is not None:
            same = record.command == (command_type, body, principal)
            if not same:
                expect = refuse(CONFLICT)
            elif record.refusal is not None:
                expect = refuse(record.refusal)
            else:
                expect = Expect(OK, created=record.created, value=record.value)
        else:
            expect = self.model.dispatch(principal, command_type, copy.deepcopy(body))
        before = digest(self.machine.store)
        outcome = self.machine.run(principal, command_type, copy.deepcopy(body), request_id, advance_ms)
        self.results.append(outcome.result)
        result = outcome.result
        what = f"{command_type} {body} by {principal} (request id {request_id})"
        if isinstance(result, Rejected):
            assert expect.code == result.code, f"{what}: expected {expect.code}, got {result}"
            if expect.reason is not None:
                reason = result.details.get("reason")
                assert reason == expect.reason, f"{what}: refused because {reason}, not {expect.reason}: {result}"
        else:
            assert expect.code == OK, f"{what}: expected {expect.code}, got success {result.value}"
            assert result.created == expect.created, f"{what}: created={result.created}, expected {expect.created}"
            status = result.value.get("status", {})
            if expect.value is not None:
                assert result.value == expect.value, f"{what}: a retry returned {result.value}, not {expect.value}"
            if expect.cidr is not None:
                got = status.get("allocatedCIDR")
                assert got == expect.cidr, f"{what}: allocated {got}, the model expects {expect.cidr}"
            if expect.pool is not None:
                assert status.get("pool") == expect.pool, f"{what}: from pool {status.get('pool')}, not {expect.pool}"
        remembered = False
        if isinstance(result, Ok) and dedup_key is not None and expect.value is None:
            # A first success under a request id is remembered, even one that changed nothing.
            self.dedup[dedup_key] = DedupRecord(
                (command_type, copy.deepcopy(body), principal), now_ms, result.value, result.created
            )
            remembered = True
        elif (
            isinstance(result, Rejected)
            and dedup_key is not None
            and record is None
            and reaches_handler(principal, command_type)
        ):
            # So is a first refusal by a handler: the same request delivered again later must
            # get it again, whatever changed meanwhile.
            self.dedup[dedup_key] = DedupRecord(
                (command_type, copy.deepcopy(body), principal), now_ms, {}, False, refusal=result.code
            )
            remembered = True
        if expect.writes:
            assert outcome.writes, f"{what}: succeeded without writing anything"
            assert outcome.revision == self.revision + 1, f"{what}: revision {outcome.revision} after {self.revision}"
        else:
            assert outcome.revision == self.revision, f"{what}: changed nothing, yet revision {outcome.revision}"
            if remembered:  # only the dedup record (and the meta record that counts it)
                other = [key for key, _ in outcome.writes if not key.startswith((keys.DEDUP, keys.DEDUP_EXPIRY))]
                assert other in ([], [keys.META]), f"{what}: changed nothing, yet wrote {other}"
            else:
                assert not outcome.writes, f"{what}: must change nothing but wrote {len(outcome.writes)} records"
                assert digest(self.machine.store) == before, f"{what}: must change nothing but the digest changed"
        self.revision = outcome.revision
        if request_id is not None and modelled:
            self.sent_with_id.append((principal, command_type, copy.deepcopy(body), request_id))
        self.step_done = True

    # -- rules

    @initialize(v4=seed_pool_bodies("p1", V4), v6=seed_pool_bodies("p2", V6))
    def seed_pools(self, v4: dict[str, Any], v6: dict[str, Any]) -> None:
        """Two platform pools to start from, so that most claims find a pool."""
        self.execute(ADMIN, "pool.create", v4)
        self.execute(ADMIN, "pool.create", v6)

    @rule(principal=st.sampled_from((ADMIN, ADMIN, ADMIN, WEB_ADMIN, WEB)), body=root_pool_bodies(), rid=request_ids)
    def create_root_pool(self, principal: Principal, body: dict[str, Any], rid: str | None) -> None:
        self.execute(principal, "pool.create", body, rid)

    @rule(principal=principals, body=child_pool_bodies(), rid=request_ids)
    def create_child_pool(self, principal: Principal, body: dict[str, Any], rid: str | None) -> None:
        self.execute(principal, "pool.create", body, rid)

    @precondition(lambda self: bool(self.model.pools))
    @rule(which=st.integers(0, 7), change_strategy=st.booleans(), rid=request_ids)
    def create_existing_pool_again(self, which: int, change_strategy: bool, rid: str | None) -> None:
        pool = self.model.pools[sorted(self.model.pools)[which % len(self.model.pools)]]
        body = copy.deepcopy(pool.body)
        if change_strategy:
            strategy = pool.allocation["strategy"]
            allocation = body["spec"].setdefault("allocation", {})
            allocation["strategy"] = {FIRST_FIT: BEST_FIT, BEST_FIT: NEXT_FIT, NEXT_FIT: FIRST_FIT}[strategy]
        self.execute(pool.creator, "pool.create", body, rid)

    @rule(principal=principals, body=claim_bodies("prefix"), rid=request_ids)
    def claim_by_prefix(self, principal: Principal, body: dict[str, Any], rid: str | None) -> None:
        self.execute(principal, "claim.create", body, rid)

    @rule(principal=principals, body=claim_bodies("address") | claim_bodies("cidr"), rid=request_ids)
    def claim_block_anywhere(self, principal: Principal, body: dict[str, Any], rid: str | None) -> None:
        self.execute(principal, "claim.create", body, rid)

    @rule(principal=principals, body=claim_bodies("default"), rid=request_ids)
    def claim_default_length(self, principal: Principal, body: dict[str, Any], rid: str | None) -> None:
        self.execute(principal, "claim.create", body, rid)

    @precondition(lambda self: any(not alloc.bound for alloc in self.model.allocs.values()))
    @rule(which=st.integers(0, 7), variant=rebind_variants, reclaim=reclaim_policies, rid=request_ids)
    def claim_retained_again(self, which: int, variant: str, reclaim: str | None, rid: str | None) -> None:
        retained = sorted(key for key, alloc in self.model.allocs.items() if not alloc.bound)
        self._claim_again(self.model.allocs[retained[which % len(retained)]], variant, reclaim, rid)

    def _claim_again(self, alloc: MAlloc, variant: str, reclaim: str | None, rid: str | None) -> None:
        """Create a claim under the name of a retained allocation: with a matching spec it gets
        the same block back; with another length or block it is refused (conflict)."""
        spec: dict[str, Any] = {"poolRef": alloc.spec["poolRef"]}
        if variant == "same-length":
            spec["prefixLength"] = alloc.block.length
        elif variant == "same-block" and alloc.block.length == BITS[alloc.block.family]:
            spec["address"] = fmt_address(alloc.block.family, alloc.block.address)
        elif variant == "same-block":
            spec["cidr"] = str(alloc.block)
        elif variant == "other-length":
            spec["prefixLength"] = alloc.block.length - 1
        elif variant == "other-block":  # its buddy: the same size, and inside the pool unless it is the pool
            spec["cidr"] = str(Blk(alloc.block.family, alloc.block.address ^ alloc.block.size, alloc.block.length))
        if reclaim is not None:
            spec["reclaimPolicy"] = reclaim
        body = {**claim_name_body(alloc.name, alloc.namespace), "spec": spec}
        self.execute(alloc.principal, "claim.create", body, rid)

    def _pick_pool(self, which: int, principal: Principal) -> tuple[MPool, Principal, str]:
        """An existing pool, a principal that can see it, and a reference that names it."""
        pool = self.model.pools[sorted(self.model.pools)[which % len(self.model.pools)]]
        if not self.model.visible(pool, principal):
            principal = pool.creator
        return pool, principal, pool.pid

    @precondition(lambda self: bool(self.model.pools))
    @rule(
        which=st.integers(0, 7),
        principal=principals,
        host_bits=st.integers(0, 5),
        name=claim_names,
        namespace=namespaces,
        reclaim=reclaim_policies,
        rid=request_ids,
    )
    def claim_prefix_in_existing_pool(
        self,
        which: int,
        principal: Principal,
        host_bits: int,
        name: str,
        namespace: str | None,
        reclaim: str | None,
        rid: str | None,
    ) -> None:
        """A claim by prefix length, sized to fit an existing pool."""
        self._claim_in_pool(which, principal, "prefix", host_bits, 0, name, namespace, reclaim, rid)

    @precondition(lambda self: bool(self.model.pools))
    @rule(
        which=st.integers(0, 7),
        principal=principals,
        kind=st.sampled_from(("address", "cidr")),
        host_bits=st.integers(0, 3),
        slot=st.integers(0, 255),
        name=claim_names,
        namespace=namespaces,
        reclaim=reclaim_policies,
        rid=request_ids,
    )
    def claim_block_in_existing_pool(
        self,
        which: int,
        principal: Principal,
        kind: str,
        host_bits: int,
        slot: int,
        name: str,
        namespace: str | None,
        reclaim: str | None,
        rid: str | None,
    ) -> None:
        """A claim of a specific address or CIDR inside an existing pool."""
        self._claim_in_pool(which, principal, kind, host_bits, slot, name, namespace, reclaim, rid)

    def _claim_in_pool(
        self,
        which: int,
        principal: Principal,
        kind: str,
        host_bits: int,
        slot: int,
        name: str,
        namespace: str | None,
        reclaim: str | None,
        rid: str | None,
    ) -> None:
        pool, principal, ref = self._pick_pool(which, principal)
        host_bits = min(host_bits, pool.bits - pool.block.length)
        length = pool.bits - host_bits
        spec: dict[str, Any] = {"poolRef": ref}
        if kind == "prefix":
            spec["prefixLength"] = length
        else:
            offset = (slot % (len(pool.holders) >> host_bits)) << host_bits
            blk = pool.sub_block(offset, length)
            if kind == "address":
                spec["address"] = fmt_address(blk.family, blk.address)
            else:
                spec["cidr"] = str(blk)
        if reclaim is not None:
            spec["reclaimPolicy"] = reclaim
        self.execute(principal, "claim.create", {**claim_name_body(name, namespace), "spec": spec}, rid)

    @precondition(lambda self: bool(self.model.pools))
    @rule(
        which=st.integers(0, 7),
        principal=principals,
        by_cidr=st.booleans(),
        extra_bits=st.integers(0, 3),
        slot=st.integers(0, 15),
        name=pool_names,
        strategy=st.sampled_from((None, BEST_FIT, FIRST_FIT, NEXT_FIT)),
        leading=st.sampled_from((0, 0, 1, 2)),
        rid=request_ids,
    )
    def carve_child_of_existing_pool(
        self,
        which: int,
        principal: Principal,
        by_cidr: bool,
        extra_bits: int,
        slot: int,
        name: str,
        strategy: str | None,
        leading: int,
        rid: str | None,
    ) -> None:
        """A child pool sized to fit an existing parent, by prefix length or at a given block."""
        parent, principal, ref = self._pick_pool(which, principal)
        length = min(parent.block.length + extra_bits, parent.bits)
        spec: dict[str, Any] = {"parentPool": ref}
        if by_cidr:
            host_bits = parent.bits - length
            offset = (slot % (len(parent.holders) >> host_bits)) << host_bits
            spec["cidr"] = str(parent.sub_block(offset, length))
        else:
            spec["prefixLength"] = length
        if strategy is not None:
            spec["allocation"] = {"strategy": strategy}
        if leading:
            spec["reserved"] = {"leading": leading}
        self.execute(principal, "pool.create", {"name": name, "spec": spec}, rid)

    @rule(principal=principals, name=claim_names, namespace=namespaces, rid=request_ids)
    def delete_claim(self, principal: Principal, name: str, namespace: str | None, rid: str | None) -> None:
        self.execute(principal, "claim.delete", claim_name_body(name, namespace), rid)

    @precondition(lambda self: any(alloc.bound for alloc in self.model.allocs.values()))
    @rule(which=st.integers(0, 7), rid=request_ids, again=st.none() | rebind_variants, reclaim=reclaim_policies)
    def delete_bound_claim(self, which: int, rid: str | None, again: str | None, reclaim: str | None) -> None:
        """Delete a claim that exists; when `again`, at once claim the same name again."""
        bound = sorted(key for key, alloc in self.model.allocs.items() if alloc.bound)
        alloc = self.model.allocs[bound[which % len(bound)]]
        namespace = None if alloc.namespace == "default" else alloc.namespace
        self.execute(alloc.principal, "claim.delete", claim_name_body(alloc.name, namespace), rid)
        if again is not None and not alloc.bound and bound[which % len(bound)] in self.model.allocs:
            self._claim_again(alloc, again, reclaim, None)

    @rule(principal=principals, ref=pool_refs, rid=request_ids)
    def delete_pool(self, principal: Principal, ref: str, rid: str | None) -> None:
        self.execute(principal, "pool.delete", {"name": ref}, rid)

    @precondition(lambda self: bool(self.model.pools))
    @rule(which=st.integers(0, 7))
    def delete_existing_pool(self, which: int) -> None:
        """Leaves first, so that deletes succeed as well as being refused."""
        pids = sorted(self.model.pools, key=lambda pid: (self.model.children_of(pid), pid))
        pool = self.model.pools[pids[which % len(pids)]]
        self.execute(ADMIN, "pool.delete", {"name": pool.pid})

    @precondition(lambda self: bool(self.sent_with_id))
    @rule(which=st.integers(0, 15), sibling=st.booleans(), expired=st.integers(0, 4).map(lambda n: n == 0))
    def retry_request(self, which: int, sibling: bool, expired: bool) -> None:
        """Send a command again with its request id: the first result again; conflict when
        another principal of the same tenant (so another command) reuses the id; a fresh run
        once the id has expired (and then every other id has expired too)."""
        principal, command_type, body, rid = self.sent_with_id[-1 - which % len(self.sent_with_id)]
        if sibling and principal in (WEB, WEB_ADMIN):
            principal = WEB_ADMIN if principal == WEB else WEB
        advance_ms = dedup_ttl_ms + 1000 if expired else 1000
        self.execute(principal, command_type, body, rid, advance_ms=advance_ms)

    @rule(command=st.sampled_from(INVALID_COMMANDS), rid=request_ids)
    def invalid_command(self, command: tuple[Principal, str, dict[str, Any]], rid: str | None) -> None:
        """Refused as invalid, and remembered under its request id when a handler refused it; a
        request id still in use for another command is a conflict first, unless the envelope
        itself is bad."""
        principal, command_type, body = command
        envelope_ok = reaches_handler(principal, command_type)
        record = self.dedup.get((principal.org, principal.project, rid)) if rid is not None else None
        live = record is not None and self.machine.ts_ms + 1000 - record.written_ms <= dedup_ttl_ms
        code = INVALID
        if live and envelope_ok and record is not None:
            same = record.command == (command_type, body, principal)
            code = record.refusal if same and record.refusal is not None else CONFLICT
        self.execute(principal, command_type, body, rid, expect=refuse(code))

    # -- checks after every step

    @invariant()
    def state_matches_model(self) -> None:
        if not self.step_done:
            return
        store = self.machine.store
        check_invariants(store)
        listed = queries.list_objects(store, ADMIN, "ippools", limit=1000)["items"]
        pids = {self._pid(item["metadata"]) for item in listed}
        assert pids == set(self.model.pools), f"pools {sorted(pids)}, the model has {sorted(self.model.pools)}"
        for pid, pool in self.model.pools.items():
            status = queries.get(store, ADMIN, "ippools", pid)["status"]
            expected = self.model.status(pool)
            actual = {key: status.get(key) for key in expected}
            assert actual == expected, f"pool {pid}: status {actual}, by brute force {expected}"
        allocations = queries.list_objects(store, ADMIN, "ipallocations", limit=1000)["items"]
        actual_allocs = {
            self._claim_key(item["metadata"]): (item["spec"]["pool"], item["spec"]["cidr"], item["status"]["phase"])
            for item in allocations
        }
        expected_allocs = {
            key: (alloc.pool, str(alloc.block), "Bound" if alloc.bound else "Released")
            for key, alloc in self.model.allocs.items()
        }
        assert actual_allocs == expected_allocs, f"allocations {actual_allocs}, the model has {expected_allocs}"
        claims = queries.list_objects(store, ADMIN, "ipclaims", limit=1000)["items"]
        actual_claims = {self._claim_key(item["metadata"]): item["status"]["allocatedCIDR"] for item in claims}
        expected_claims = {key: str(alloc.block) for key, alloc in self.model.allocs.items() if alloc.bound}
        assert actual_claims == expected_claims, f"claims {actual_claims}, the model has {expected_claims}"

    @staticmethod
    def _pid(metadata: dict[str, Any]) -> str:
        org, project, name = metadata["org"], metadata["project"], metadata["name"]
        return f"{org}/{project}/{name}" if org else str(name)

    @staticmethod
    def _claim_key(metadata: dict[str, Any]) -> ClaimKey:
        return (metadata["org"], metadata["project"], metadata["namespace"], metadata["name"])

    def teardown(self) -> None:
        """Replay the whole log into a fresh store: the same results and the same digest."""
        if not self.step_done or not self.machine.log:
            return
        replica = MemoryStore()
        for index, (data, original) in enumerate(zip(self.machine.log, self.results, strict=True), start=1):
            outcome = apply(replica, data, index)
            replica.apply_writes(outcome.writes)
            assert outcome.result == original, f"replaying entry {index} gave {outcome.result}, not {original}"
        assert digest(replica) == digest(self.machine.store), "replaying the log gave a different state"


TestIpamModel = IpamModel.TestCase


def _platform_pool(name: str, block: Blk, strategy: str) -> MPool:
    """A model of an empty platform pool of 16 addresses, for the model's own tests."""
    return MPool(
        org="",
        project="",
        name=name,
        block=block,
        space="default",
        visibility="platform",
        shared_with=[],
        allocation={"strategy": strategy},
        spec={},
        body={},
        creator=ADMIN,
        parent=None,
        holders=[None] * 16,
    )


def test_model_best_fit_prefers_the_smallest_hole() -> None:
    """The model's best-fit is not first-fit: a /30 goes into the small hole, not the lowest one."""
    pool = _platform_pool("p", Blk(V4, REGION_BASE[V4], 28), BEST_FIT)
    pool.take(4, 30, "a")  # free: /30 at 0, /29 at 8
    pool.take(8, 30, "b")  # free: /30 at 0, /30 at 12
    pool.give_back("a")  # free: /29 at 0, /30 at 12
    assert pool.maximal_free() == [(0, 29), (12, 30)]
    assert pool.choose(30, BEST_FIT) == 12
    assert pool.choose(30, FIRST_FIT) == 0
    assert pool.choose(29, BEST_FIT) == 0
    assert pool.choose(28, BEST_FIT) is None


def test_model_next_fit_rotates_and_wraps() -> None:
    """The model's next-fit takes the lowest free block at or after the cursor, then wraps."""
    pool = _platform_pool("p", Blk(V4, REGION_BASE[V4], 28), NEXT_FIT)
    assert pool.choose(32, NEXT_FIT) == 0 and pool.cursor == 1
    pool.take(0, 32, "a")
    pool.give_back("a")
    assert pool.choose(30, NEXT_FIT) == 4, "rounded up to the next /30 boundary, not the freed 0"
    pool.take(4, 30, "b")
    pool.cursor = 14
    assert pool.choose(30, NEXT_FIT) == 0, "no /30 starts at or after 14: wrap to the lowest"
    assert pool.cursor == 4


@pytest.mark.parametrize("family", [V4, V6])
def test_next_fit_at_the_top_of_the_address_space_matches_the_model(family: str) -> None:
    """next-fit in the last /28 of the address space: with the cursor after each of its 16
    addresses (k /32 claims, all but the last given back), a /30 and then a /29 go where the
    model says, wrapping when the cursor rounded up passes the end: 2^32 or 2^128, past every
    address (IPv6 raised OverflowError there before f2464c1)."""
    top = Blk(family, (1 << BITS[family]) - 16, BITS[family] - 4)
    tenant = member("acme", "web")
    for singles in range(1, 17):
        machine = Machine(check_every_step=True)
        spec = {"cidr": str(top), "allocation": {"strategy": NEXT_FIT}}
        machine.ok(ADMIN, "pool.create", {"name": "top", "spec": spec})
        model = _platform_pool("top", top, NEXT_FIT)
        steps = [(f"c{number}", BITS[family]) for number in range(singles)]
        steps += [("wide", BITS[family] - 2), ("wider", BITS[family] - 3)]
        for name, length in steps:
            offset = model.choose(length, NEXT_FIT)
            body = {"name": name, "spec": {"poolRef": "top", "prefixLength": length}}
            outcome = machine.run(tenant, "claim.create", body)
            if offset is None:
                assert isinstance(outcome.result, Rejected), (singles, name, outcome.result)
                assert outcome.result.code == POOL_EXHAUSTED, outcome.result
                continue
            assert isinstance(outcome.result, Ok), (singles, name, outcome.result)
            assert outcome.result.value["status"]["allocatedCIDR"] == str(model.sub_block(offset, length))
            model.take(offset, length, name)
            if name == f"c{singles - 1}":  # the cursor is after it; give the others back
                for number in range(singles - 1):
                    machine.ok(tenant, "claim.delete", {"name": f"c{number}"})
                    model.give_back(f"c{number}")
