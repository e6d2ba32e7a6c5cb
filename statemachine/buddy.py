"""A buddy allocator for CIDR blocks, kept in the ordered key-value store.

Every pool's block is tiled, at all times, by two kinds of records:

* free blocks  `F | pool uid | length (1 byte) | address (16 bytes)`  -> b""
* used blocks  `U | pool uid | address (16 bytes) | length (1 byte)`  -> owner key

Free keys group by prefix length, so "the lowest free block of length L" is one range seek and
allocation never enumerates addresses: allocate splits a larger free block down to the wanted
length (freeing the upper halves on the way), release merges a block with its free buddy as far
up as it goes. Both touch O(address bits) records, for IPv4 and IPv6 alike.

The pool state keeps, per prefix length, the number of free blocks and the address of the
lowest one. Choosing a block then needs no seek at all (first-fit is the minimum over those
lowest addresses, best-fit the longest length that has one); a seek is needed only to find the
next-lowest block after the lowest one at a length is taken. next-fit keeps a cursor, the
address after the block it handed out last, and takes the lowest free block at or after it
(one or two seeks per length that has free blocks), wrapping to first-fit when none is left
above it: a freed block is the last to be handed out again.

Used keys order by address, for "who holds this address" and for the invariant check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from statemachine.addresses import FAMILY_BITS, Block
from statemachine.errors import InvariantViolation
from statemachine.view import Overlay, prefix_end

FIRST_FIT: Final = "first-fit"
BEST_FIT: Final = "best-fit"
NEXT_FIT: Final = "next-fit"
STRATEGIES: Final = (FIRST_FIT, BEST_FIT, NEXT_FIT)
OWNER_RESERVED: Final = b"reserved"

UID_BYTES: Final = 10


@dataclass(init=False)
class PoolState:
    """The allocator's own record for one pool (key `ps/<uid>`)."""

    # A hand-written __init__, which mypyc compiles (see addresses.Block).
    uid: bytes
    family: str
    address: int
    length: int
    free_counts: list[int]  # index: prefix length - self.length
    lowest_free: dict[int, int]  # prefix length -> lowest free address
    allocated: int  # addresses held by allocations and child pools
    reserved: int  # addresses set aside by `reserved` and `excluded`
    allocations: int  # allocation records (bound or retained) in this pool
    child_pools: int
    # next-fit's cursor: the address after the block it handed out last (None: it never has,
    # and the record keeps the ten fields earlier builds wrote).
    next_address: int | None

    def __init__(
        self,
        uid: bytes,
        family: str,
        address: int,
        length: int,
        free_counts: list[int] | None = None,
        lowest_free: dict[int, int] | None = None,
        allocated: int = 0,
        reserved: int = 0,
        allocations: int = 0,
        child_pools: int = 0,
        next_address: int | None = None,
    ) -> None:
        self.uid = uid
        self.family = family
        self.address = address
        self.length = length
        self.free_counts = [] if free_counts is None else free_counts
        self.lowest_free = {} if lowest_free is None else lowest_free
        self.allocated = allocated
        self.reserved = reserved
        self.allocations = allocations
        self.child_pools = child_pools
        self.next_address = next_address

    @property
    def block(self) -> Block:
        return Block(self.family, self.address, self.length)

    @property
    def bits(self) -> int:
        return FAMILY_BITS[self.family]

    @property
    def usable(self) -> int:
        return self.block.size - self.reserved

    # Stored as a flat list, not a map: it is written by every claim and release, and a list
    # encodes and decodes in half the time.
    def to_plain(self) -> list[Any]:
        # Sorted by prefix length (the keys, all different): ints compare faster than pairs.
        lowest_free = self.lowest_free
        lowest_flat: list[int] = []
        for prefix_length in sorted(lowest_free):
            lowest_flat.append(prefix_length)
            lowest_flat.append(lowest_free[prefix_length])
        plain: list[Any] = [
            self.uid,
            self.family,
            self.address,
            self.length,
            self.free_counts,
            lowest_flat,
            self.allocated,
            self.reserved,
            self.allocations,
            self.child_pools,
        ]
        if self.next_address is not None:
            plain.append(self.next_address)
        return plain

    @classmethod
    def from_plain(cls, plain: list[Any]) -> PoolState:
        uid, family, address, length, free_counts, lowest_flat, allocated, reserved, allocations, children = plain[:10]
        lowest_free: dict[int, int] = {}
        if type(lowest_flat) is list and len(lowest_flat) % 2 == 0:  # as written: pairs in order
            flat: list[Any] = lowest_flat
            for at in range(0, len(flat), 2):
                lowest_free[flat[at]] = flat[at + 1]
        else:  # never written so: zip says what is wrong
            lowest_free = dict(zip(lowest_flat[::2], lowest_flat[1::2], strict=True))
        next_address = int(plain[10]) if len(plain) > 10 else None
        return cls(
            uid,
            family,
            address,
            length,
            free_counts,
            lowest_free,
            allocated,
            reserved,
            allocations,
            children,
            next_address,
        )

    @classmethod
    def new(cls, uid: bytes, block: Block) -> PoolState:
        return cls(uid, block.family, block.address, block.length, [0] * (block.bits - block.length + 1))


def state_key(uid: bytes) -> bytes:
    return b"ps/" + uid


def free_prefix(uid: bytes, length: int) -> bytes:
    return b"F" + uid + bytes([length])


def free_key(uid: bytes, length: int, address: int) -> bytes:
    return b"F" + uid + bytes([length]) + address.to_bytes(16, "big")


def used_prefix(uid: bytes) -> bytes:
    return b"U" + uid


def used_key(uid: bytes, address: int, length: int) -> bytes:
    return b"U" + uid + address.to_bytes(16, "big") + bytes([length])


def decode_free_key(key: bytes) -> tuple[int, int]:
    """(length, address) of a free-block key."""
    return key[1 + UID_BYTES], int.from_bytes(key[2 + UID_BYTES : 18 + UID_BYTES], "big")


def decode_used_key(key: bytes) -> tuple[int, int]:
    """(address, length) of a used-block key."""
    return int.from_bytes(key[1 + UID_BYTES : 17 + UID_BYTES], "big"), key[17 + UID_BYTES]


def _add_free(ov: Overlay, state: PoolState, length: int, address: int) -> None:
    ov.put(free_key(state.uid, length, address), b"")
    state.free_counts[length - state.length] += 1
    lowest = state.lowest_free.get(length)
    if lowest is None or address < lowest:
        state.lowest_free[length] = address


def _remove_free(ov: Overlay, state: PoolState, length: int, address: int) -> None:
    ov.delete(free_key(state.uid, length, address))
    state.free_counts[length - state.length] -= 1
    if state.free_counts[length - state.length] == 0:
        del state.lowest_free[length]
    elif state.lowest_free[length] == address:
        prefix = free_prefix(state.uid, length)
        found = ov.first(prefix, prefix_end(prefix))
        if found is None:
            raise InvariantViolation(
                f"pool {state.uid.hex()} counts {state.free_counts[length - state.length]} free /{length} "
                "blocks but has none"
            )
        state.lowest_free[length] = decode_free_key(found[0])[1]


def init_free(ov: Overlay, state: PoolState) -> None:
    """A new pool: its whole block is one free block."""
    _add_free(ov, state, state.length, state.address)


def _split_down(ov: Overlay, state: PoolState, length: int, address: int, target: Block, owner: bytes) -> None:
    """Take free block (address, length) that contains target; free the halves not on the way."""
    _remove_free(ov, state, length, address)
    while length < target.length:
        length += 1
        half = 1 << (state.bits - length)
        lower, upper = address, address + half
        if target.address >= upper:
            _add_free(ov, state, length, lower)
            address = upper
        else:
            _add_free(ov, state, length, upper)
            address = lower
    ov.put(used_key(state.uid, target.address, target.length), owner)


def _next_fit(ov: Overlay, state: PoolState, length: int) -> tuple[int, int, int] | None:
    """(target address, container address, container length) of the lowest free aligned /length
    at or after the cursor, or None when there is none above it."""
    cursor = state.address if state.next_address is None else state.next_address
    size = 1 << (state.bits - length)
    wanted = -(-cursor // size) * size  # the cursor rounded up to a /length boundary
    end = state.address + state.block.size
    if wanted >= end:
        # Nothing above the cursor (at the top of IPv6, rounding up may even reach 2^128, which
        # no key can hold): wrap.
        return None
    best: tuple[int, int, int] | None = None
    for container_length in sorted(state.lowest_free):
        if container_length > length:
            continue
        container_size = 1 << (state.bits - container_length)
        prefix = free_prefix(state.uid, container_length)
        # The free block holding the cursor, if there is one, else the first one after it.
        start = wanted & ~(container_size - 1)
        for _ in range(2):
            found = ov.first(free_key(state.uid, container_length, start), prefix_end(prefix))
            if found is None:
                break
            container = decode_free_key(found[0])[1]
            target = max(container, wanted)
            if target + size <= container + container_size:
                if best is None or target < best[0]:
                    best = (target, container, container_length)
                break
            start = container + container_size
            if start >= end:
                break
    return best


def allocate(ov: Overlay, state: PoolState, length: int, strategy: str, owner: bytes) -> Block | None:
    """Carve a free block of the given length, or None when no free block is large enough.

    first-fit: the lowest-addressed block that fits. best-fit: a block from the smallest free
    block that fits (the lowest such), which keeps large blocks whole for large claims.
    next-fit: the lowest-addressed block that fits at or after the cursor (the end of the block
    next-fit handed out last), else the lowest one; the cursor moves past it.
    """
    if not state.length <= length <= state.bits:
        raise InvariantViolation(f"allocate /{length} from a /{state.length} pool")
    if strategy == NEXT_FIT:
        above = _next_fit(ov, state, length)
        if above is not None:
            target_address, container, container_length = above
            target = Block(state.family, target_address, length)
            _split_down(ov, state, container_length, container, target, owner)
            _advance(state, target)
            return target
    chosen: tuple[int, int] | None = None  # (address, length) of the free block to split
    if strategy == BEST_FIT:
        fitting = [candidate for candidate in state.lowest_free if candidate <= length]
        if fitting:
            longest = max(fitting)
            chosen = (state.lowest_free[longest], longest)
    else:
        for candidate, address in state.lowest_free.items():
            if candidate <= length and (chosen is None or address < chosen[0]):
                chosen = (address, candidate)
    if chosen is None:
        return None
    target = Block(state.family, chosen[0], length)
    _split_down(ov, state, chosen[1], chosen[0], target, owner)
    if strategy == NEXT_FIT:  # wrapped around: nothing was free above the cursor
        _advance(state, target)
    return target


def _advance(state: PoolState, taken: Block) -> None:
    """next-fit's cursor after handing out `taken`: the address after it (the pool's start
    again after its end)."""
    after = taken.address + taken.size
    state.next_address = after if after < state.address + state.block.size else state.address


def find_free_container(ov: Overlay, state: PoolState, target: Block) -> int | None:
    """The length of the free block that contains target, or None if any of it is in use."""
    for length in range(target.length, state.length - 1, -1):
        if state.free_counts[length - state.length] == 0:
            continue
        mask_address = target.address & ~((1 << (state.bits - length)) - 1)
        if ov.get(free_key(state.uid, length, mask_address)) is not None:
            return length
    return None


def claim_block(ov: Overlay, state: PoolState, target: Block, owner: bytes) -> bool:
    """Carve exactly target (which lies inside the pool). False when any of it is taken."""
    if not state.block.contains(target):
        raise InvariantViolation(f"claim {target} outside pool block {state.block}")
    length = find_free_container(ov, state, target)
    if length is None:
        return False
    container = target.address & ~((1 << (state.bits - length)) - 1)
    _split_down(ov, state, length, container, target, owner)
    return True


def holder(ov: Overlay, state: PoolState, target: Block) -> bytes | None:
    """The owner of some used block overlapping target (one containing it, or inside it)."""
    for length in range(state.length, target.length + 1):
        mask_address = target.address & ~((1 << (state.bits - length)) - 1)
        owner = ov.get(used_key(state.uid, mask_address, length))
        if owner is not None:
            return owner
    after_last = target.last + 1
    start = used_prefix(state.uid) + target.address.to_bytes(16, "big")
    end = used_prefix(state.uid) + after_last.to_bytes(17, "big")[1:] if after_last < 1 << 128 else None
    inside = ov.first(start, end if end is not None else prefix_end(used_prefix(state.uid)))
    return None if inside is None else inside[1]


def release(ov: Overlay, state: PoolState, block: Block, owner: bytes) -> None:
    """Give block back, merging it with its free buddy for as long as there is one."""
    key = used_key(state.uid, block.address, block.length)
    held_by = ov.get(key)
    if held_by != owner:
        raise InvariantViolation(f"release {block} by {owner!r}, but it is held by {held_by!r}")
    ov.delete(key)
    address, length = block.address, block.length
    while length > state.length:
        buddy = address ^ (1 << (state.bits - length))
        if ov.get(free_key(state.uid, length, buddy)) is None:
            break
        _remove_free(ov, state, length, buddy)
        address = min(address, buddy)
        length -= 1
    _add_free(ov, state, length, address)


def largest_free_prefix(state: PoolState) -> int | None:
    """The shortest prefix length with a free block (the biggest claim that can succeed)."""
    for offset, count in enumerate(state.free_counts):
        if count:
            return state.length + offset
    return None


def drop_all(ov: Overlay, state: PoolState) -> None:
    """Delete every free and used record of a pool that is being deleted."""
    for prefix in (b"F" + state.uid, used_prefix(state.uid)):
        for key, _ in list(ov.scan(prefix, prefix_end(prefix))):
            ov.delete(key)
