"""Addresses as integers: parsing and formatting CIDRs (with netaddr), aligned block arithmetic."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import netaddr

from statemachine.errors import invalid

IPV4: Final = "IPv4"
IPV6: Final = "IPv6"
FAMILY_BITS: Final = {IPV4: 32, IPV6: 128}


@dataclass(init=False, unsafe_hash=True, order=True)
class Block:
    """An aligned CIDR block: `address` has no bits set below `length`."""

    # Final fields with a hand-written `__init__` rather than `frozen=True`: mypyc compiles
    # this `__init__` to native code, but leaves the one `@dataclass` generates interpreted
    # (mypyc issue 817), and the apply path builds several of these per command. The same
    # holds for every `init=False` dataclass in this package; mypy still refuses assignment.
    family: Final[str]
    address: Final[int]
    length: Final[int]

    def __init__(self, family: str, address: int, length: int) -> None:
        self.family = family
        self.address = address
        self.length = length

    @property
    def bits(self) -> int:
        return FAMILY_BITS[self.family]

    @property
    def size(self) -> int:
        return 1 << (self.bits - self.length)

    @property
    def last(self) -> int:
        return self.address + self.size - 1

    def contains(self, other: Block) -> bool:
        return (
            self.family == other.family
            and self.length <= other.length
            and self.address <= other.address
            and other.last <= self.last
        )

    def __str__(self) -> str:
        return f"{format_address(self.family, self.address)}/{self.length}"


def format_address(family: str, address: int) -> str:
    if family == IPV4:  # by hand: this runs for every claim, and is 5x faster than netaddr's
        return f"{address >> 24}.{(address >> 16) & 255}.{(address >> 8) & 255}.{address & 255}"
    return str(netaddr.IPAddress(address, 6))


def parse_cidr(text: object, field_path: str) -> Block:
    """Parse 'a.b.c.d/n' or 'x::/n'. Host bits must be clear: the block is what it says."""
    if not isinstance(text, str) or "/" not in text:
        raise invalid(f"{field_path} must be a CIDR such as 10.0.0.0/24 or 2001:db8::/64", field_path)
    try:
        network = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise invalid(f"{field_path} {text!r} is not a valid CIDR", field_path) from None
    family = IPV4 if network.version == 4 else IPV6
    if int(network.ip) != int(network.network):
        raise invalid(
            f"{field_path} {text!r} has host bits set; did you mean {network.cidr}?",
            field_path,
            suggestion=str(network.cidr),
        )
    return Block(family, int(network.network), int(network.prefixlen))


def parse_address(text: object, field_path: str) -> Block:
    """Parse a single address into its host block (/32 or /128)."""
    if not isinstance(text, str) or "/" in text:
        raise invalid(f"{field_path} must be a single address such as 10.0.0.7 or 2001:db8::7", field_path)
    try:
        address = netaddr.IPAddress(text)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise invalid(f"{field_path} {text!r} is not a valid IP address", field_path) from None
    family = IPV4 if address.version == 4 else IPV6
    return Block(family, int(address), FAMILY_BITS[family])


# IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, RFC 4291 section 2.5.5.2) stand for IPv4 nodes: an
# IPAM that handed one out as an IPv6 address would give out, a second time, the IPv4 address of
# an IPv4 pool in the same address space. No pool lies inside this block, a pool containing it
# must exclude it (pools.py), and no claim or service may ask for an address in it.
IPV4_MAPPED: Final[Block] = Block(IPV6, 0xFFFF << 32, 96)


def overlap_size(a: Block, b: Block) -> int:
    """How many addresses two aligned blocks share: all of the smaller one, or none."""
    if a.contains(b):
        return b.size
    if b.contains(a):
        return a.size
    return 0


def check_not_ipv4_mapped(block: Block, field_path: str) -> None:
    """Refuse a specific address or CIDR that overlaps the IPv4-mapped range."""
    if not overlap_size(block, IPV4_MAPPED):
        return
    if block.length == block.bits:
        address = format_address(block.family, block.address)
        head = f"{field_path} {address} is an IPv4-mapped IPv6 address ({IPV4_MAPPED})"
        fix = f"ask for {format_address(IPV4, block.address & 0xFFFFFFFF)} from an IPv4 pool"
    else:
        head = f"{field_path} {block} overlaps the IPv4-mapped IPv6 addresses ({IPV4_MAPPED})"
        fix = "ask for IPv4 addresses from an IPv4 pool"
    raise invalid(
        f"{head}; those stand for IPv4 nodes and are never handed out as IPv6 addresses (RFC 4291 2.5.5.2): {fix}",
        field_path,
    )


def range_to_blocks(family: str, first: int, last: int) -> list[Block]:
    """The fewest aligned blocks covering [first, last], lowest first (at most 2 * bits)."""
    bits = FAMILY_BITS[family]
    blocks: list[Block] = []
    while first <= last:
        # The largest block that starts at `first` (alignment) and does not pass `last`.
        span = first & -first if first else 1 << bits
        while span > last - first + 1:
            span >>= 1
        length = bits - (span.bit_length() - 1)
        blocks.append(Block(family, first, length))
        first += span
    return blocks
