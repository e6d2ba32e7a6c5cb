"""Canonical CBOR for commands (envelopes) and stored records.

Rules:
* Commands are plain data: ints, strings, bytes, booleans, null, lists and maps with string
  keys. No floats, no tags, no undefined. They are encoded canonically
  (`cbor2.dumps(x, canonical=True)`), and decoding is strict: anything that does not re-encode
  to the very same bytes is refused, so one command has exactly one encoding on every replica.
* Stored records are written with `dump_record`: CBOR with map keys in insertion order, not
  sorted. That is deterministic, because every record is built by this package's code from the
  same envelopes in the same order on every replica (labels are sorted when checked, never taken
  from a set), and it is four times cheaper than canonical sorting, which matters on the apply
  path (see docs/benchmarks.md). The price: two releases that build a record's maps in a
  different order write different bytes, so digests are compared between members of one
  release. Records may hold integers beyond 64 bits (IPv6 counts), which CBOR writes as bignums.
* Decoding a command refuses anything that does not re-encode to the same bytes, and checks the
  envelope's own fields; the body's fields are each type-checked by the handler that reads
  them, and unknown fields are refused there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

import cbor2

from statemachine.errors import invalid

# Final: the compiled build reads these as constants, not from the module's dict (on every command).
ENVELOPE_VERSION: Final = 1
envelope_bytes_max: Final = 256 * 1024
_nesting_depth_max: Final = 16

ROLE_ADMIN: Final = "admin"
ROLE_MEMBER: Final = "member"


def dumps(value: Any) -> bytes:
    """Canonical CBOR: for commands and for digests of commands."""
    return cbor2.dumps(value, canonical=True)


def dump_record(value: Any) -> bytes:
    """Deterministic CBOR for stored records (see the module docstring): what
    `cbor2.dumps(value)` gives, byte for byte."""
    parts: list[str] = []
    if _encode_plain(value, parts, 0):
        return "".join(parts).encode("latin-1")
    return cbor2.dumps(value)


# Records are small maps and lists of plain items, and cbor2's fixed cost per call and per
# container (an ABC isinstance check for each list) was most of their encoding, which every
# command pays several times over (docs/benchmarks.md). So dump_record writes the plain items
# itself, as cbor2 writes them (maps in insertion order, shortest heads, no tags but bignums),
# and leaves anything else (floats, other types, deep nesting) to cbor2: tests/test_codec.py
# compares the two on generated values.
#
# The bytes are gathered as a string of code points below 256, one per byte (latin-1), and
# encoded once at the end: joining strings of one-byte characters copies each part, where
# joining bytes objects goes through the buffer protocol for every part. A map key, one of few
# field names, is written as one part remembered from the last time (`_key_part`).
_CHR: Final = tuple([chr(byte) for byte in range(256)])
_UINT8: Final = tuple(["\x18" + chr(byte) for byte in range(256)])  # an unsigned integer < 256, head and byte
_UINT64_END: Final = 1 << 64
_plain_depth_max: Final = 32  # deeper values go to cbor2 (no record nests this deep)
# Remembered encodings of map keys: a pure function of the key, so what it holds cannot change a
# result. Bounded (label keys and tenants' names are keys too): once full it takes nothing
# more. Never iterated.
_keys_remembered_max: Final = 4096
_key_length_remembered_max: Final = 64
_encoded_keys: Final[dict[str, str]] = {}


def _put_head(parts: list[str], major: int, length: int) -> None:
    """Append the head of a CBOR item of major type `major` (shifted) with argument `length`
    < 2^64, in the fewest bytes."""
    if length < 24:
        parts.append(_CHR[major | length])
    elif length < 0x100:
        parts.append(_CHR[major | 24])
        parts.append(_CHR[length])
    elif length < 0x10000:
        parts.append(_CHR[major | 25])
        parts.append(_CHR[length >> 8])
        parts.append(_CHR[length & 0xFF])
    elif length < 0x100000000:
        parts.append(_CHR[major | 26])
        parts.append(_CHR[length >> 24])
        parts.append(_CHR[(length >> 16) & 0xFF])
        parts.append(_CHR[(length >> 8) & 0xFF])
        parts.append(_CHR[length & 0xFF])
    else:
        parts.append(_CHR[major | 27])
        parts.append(length.to_bytes(8, "big").decode("latin-1"))


def _put_text(parts: list[str], text: str) -> bool:
    """Append a text string; False for one that is not UTF-8 (a lone surrogate)."""
    try:
        encoded = text.encode()
    except UnicodeEncodeError:  # cbor2 refuses it in its own words
        return False
    length = len(encoded)
    _put_head(parts, 0x60, length)
    parts.append(text if length == len(text) else encoded.decode("latin-1"))  # ASCII: itself
    return True


def _key_part(key: str) -> str | None:
    """A string map key's encoding, head and all, as one part; None for one not UTF-8."""
    known = _encoded_keys.get(key)
    if known is not None:
        return known
    parts: list[str] = []
    if not _put_text(parts, key):
        return None
    part = "".join(parts)
    if len(key) <= _key_length_remembered_max and len(_encoded_keys) < _keys_remembered_max:
        _encoded_keys[key] = part
    return part


def dump_records_of_items(items: list[Any], first: Any) -> tuple[bytes, bytes]:
    """`(dump_record(items), dump_record([first, *items]))`, the items encoded once."""
    parts: list[str] = []
    for item in items:
        if not _encode_plain(item, parts, 1):  # (at the depth of a list's items)
            return dump_record(items), dump_record([first, *items])
    head: list[str] = []
    _put_head(head, 0x80, len(items))
    first_head: list[str] = []
    _put_head(first_head, 0x80, len(items) + 1)
    if not _encode_plain(first, first_head, 1):
        return dump_record(items), dump_record([first, *items])
    encoded_items = "".join(parts)
    return ("".join(head) + encoded_items).encode("latin-1"), ("".join(first_head) + encoded_items).encode("latin-1")


def _put_bignum(parts: list[str], tag: int, magnitude: int) -> None:
    """A bignum as cbor2 writes it: tag 2 (or 3 for a negative), then its magnitude as a byte
    string, big-endian, in the fewest bytes."""
    data = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    parts.append(_CHR[0xC0 | tag])
    _put_head(parts, 0x40, len(data))
    parts.append(data.decode("latin-1"))


def _encode_plain(value: Any, parts: list[str], depth: int) -> bool:
    """Append value's CBOR to parts; False (parts then half-written) when it is not plain."""
    kind = type(value)
    if kind is str:  # _put_text, inline: the most common item
        text: str = value
        try:
            encoded = text.encode()
        except UnicodeEncodeError:  # a lone surrogate: cbor2 refuses it in its own words
            return False
        length = len(encoded)
        if length < 24:
            parts.append(_CHR[0x60 | length])
        else:
            _put_head(parts, 0x60, length)
        parts.append(text if length == len(text) else encoded.decode("latin-1"))  # ASCII: itself
    elif kind is int:
        number: int = value
        if number >= 0:
            if number < 24:  # the usual case, one byte
                parts.append(_CHR[number])
            elif number < 0x100:
                parts.append(_UINT8[number])
            elif number < _UINT64_END:
                _put_head(parts, 0x00, number)
            else:
                _put_bignum(parts, 2, number)
        elif number >= -_UINT64_END:
            _put_head(parts, 0x20, -1 - number)
        else:
            _put_bignum(parts, 3, -1 - number)
    elif value is None:
        parts.append("\xf6")
    elif kind is bool:
        parts.append("\xf5" if value else "\xf4")
    elif kind is bytes:
        data: bytes = value
        _put_head(parts, 0x40, len(data))
        parts.append(data.decode("latin-1"))
    elif depth >= _plain_depth_max:
        return False
    elif kind is dict:
        mapping: dict[Any, Any] = value
        _put_head(parts, 0xA0, len(mapping))
        for key, item in mapping.items():
            if type(key) is str:
                part = _encoded_keys.get(key)
                if part is None:
                    part = _key_part(key)
                    if part is None:
                        return False
                parts.append(part)
            elif not _encode_plain(key, parts, depth + 1):
                return False
            if not _encode_plain(item, parts, depth + 1):
                return False
    elif kind is list:
        items: list[Any] = value
        _put_head(parts, 0x80, len(items))
        for item in items:
            if not _encode_plain(item, parts, depth + 1):
                return False
    else:
        return False
    return True


def loads(data: bytes) -> Any:
    """Decode a stored record: what `cbor2.loads(data)` gives. The plain items `dump_record`
    writes are read here (cbor2's fixed cost per call was most of a small record's decoding,
    several times on every command); anything else goes to cbor2, which decodes it or raises
    in its own words (tests/test_codec.py compares the two on generated values)."""
    try:
        value, end = _decode_item(data, 0, 0, False)
    except UnicodeDecodeError:  # not UTF-8: cbor2 refuses it as it does
        end = -1
    if end != len(data):
        return cbor2.loads(data)
    return value


_NOT_PLAIN: Final = -1  # the position _decode_item returns for what it leaves to cbor2


def _decode_item(data: bytes, pos: int, depth: int, canonical: bool) -> tuple[Any, int]:
    """The item that starts at data[pos] and the position after it; position _NOT_PLAIN when
    it is not a plain item (as `_encode_plain` writes them, bignums too), or with `canonical`
    not in canonical form (shortest heads, map keys ASCII strings in canonical order, no tags),
    or it nests deeper than `_plain_depth_max`: the caller then leaves the whole value to cbor2.
    Raises UnicodeDecodeError for a text string that is not UTF-8."""
    end = len(data)
    if pos >= end:
        return None, _NOT_PLAIN
    initial = data[pos]
    pos += 1
    major = initial >> 5
    argument = initial & 0x1F
    if major == 7:  # simple values and floats: only false, true and null are plain
        if argument == 20:
            return False, pos
        if argument == 21:
            return True, pos
        if argument == 22:
            return None, pos
        return None, _NOT_PLAIN
    if argument >= 24:
        if argument == 24:
            if pos >= end:
                return None, _NOT_PLAIN
            argument = data[pos]
            pos += 1
            shortest = 24
        elif argument == 25:
            if pos + 2 > end:
                return None, _NOT_PLAIN
            argument = data[pos] << 8 | data[pos + 1]
            pos += 2
            shortest = 0x100
        elif argument == 26:
            if pos + 4 > end:
                return None, _NOT_PLAIN
            argument = data[pos] << 24 | data[pos + 1] << 16 | data[pos + 2] << 8 | data[pos + 3]
            pos += 4
            shortest = 0x10000
        elif argument == 27:
            if pos + 8 > end:
                return None, _NOT_PLAIN
            high = data[pos] << 24 | data[pos + 1] << 16 | data[pos + 2] << 8 | data[pos + 3]
            low = data[pos + 4] << 24 | data[pos + 5] << 16 | data[pos + 6] << 8 | data[pos + 7]
            argument = high << 32 | low
            pos += 8
            shortest = 0x100000000
        else:  # indefinite lengths, reserved values
            return None, _NOT_PLAIN
        if canonical and argument < shortest:
            return None, _NOT_PLAIN
    if major == 0:
        return argument, pos
    if major == 3:
        if argument > end - pos:
            return None, _NOT_PLAIN
        return data[pos : pos + argument].decode("utf-8"), pos + argument
    if major == 5:
        return _decode_map(data, pos, argument, depth, canonical)
    if major == 4:
        if argument > end - pos or depth >= _plain_depth_max:  # an item takes a byte at least
            return None, _NOT_PLAIN
        items: list[Any] = [None] * argument
        for at in range(argument):
            item, pos = _decode_item(data, pos, depth + 1, canonical)
            if pos < 0:
                return None, _NOT_PLAIN
            items[at] = item
        return items, pos
    if major == 1:
        return -1 - argument, pos
    if major == 2:
        if argument > end - pos:
            return None, _NOT_PLAIN
        return data[pos : pos + argument], pos + argument
    # major 6, a tag: only the bignums of a record (tag 2, 3 for a negative), a byte string
    if canonical or argument not in (2, 3) or pos >= end or data[pos] >> 5 != 2:
        return None, _NOT_PLAIN
    magnitude, pos = _decode_item(data, pos, depth + 1, canonical)
    if pos < 0:
        return None, _NOT_PLAIN
    number = int.from_bytes(magnitude, "big")
    return (number if argument == 2 else -1 - number), pos


def _decode_map(data: bytes, pos: int, count: int, depth: int, canonical: bool) -> tuple[Any, int]:
    """A map of `count` entries whose first key starts at data[pos] (see _decode_item): its keys
    strings, all different (and with `canonical`, ASCII and in canonical order)."""
    if count > len(data) - pos or depth >= _plain_depth_max:  # an entry takes two bytes at least
        return None, _NOT_PLAIN
    mapping: dict[str, Any] = {}
    previous, previous_length = "", -1
    for _ in range(count):
        if pos >= len(data) or data[pos] >> 5 != 3:
            return None, _NOT_PLAIN
        key_start = pos
        key, pos = _decode_item(data, pos, depth + 1, canonical)
        if pos < 0:
            return None, _NOT_PLAIN
        name: str = key
        if canonical:
            length = len(name)
            argument = data[key_start] & 0x1F
            if pos - key_start != length + (1 if argument < 24 else 1 + (1 << (argument - 24))):
                return None, _NOT_PLAIN  # more bytes than characters: not ASCII
            if length < previous_length or (length == previous_length and name <= previous):
                return None, _NOT_PLAIN
            previous, previous_length = name, length
        item, pos = _decode_item(data, pos, depth + 1, canonical)
        if pos < 0:
            return None, _NOT_PLAIN
        mapping[name] = item
    if len(mapping) != count:  # a key given twice: cbor2 decides what that means
        return None, _NOT_PLAIN
    return mapping, pos


def _refuse_tag(_decoder: Any, tag: Any) -> Any:
    raise ValueError(f"CBOR tag {tag.tag} is not allowed in a command")


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > _nesting_depth_max:
        raise ValueError("command nests too deeply")
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return
    if isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("map keys must be strings")
            _check_plain(item, depth + 1)
        return
    raise ValueError(f"values of type {type(value).__name__} are not allowed in a command")


def _in_canonical_order(value: Any) -> bool:
    """True when value is a map holding only plain items in which every map's keys are ASCII
    strings in canonical order (shorter first, then bytewise); False when unsure (floats,
    sets, dates, other keys), which sends the caller to the full canonical re-encoding.

    For such a value, insertion-order CBOR (`dump_record`) and canonical CBOR are the same
    bytes: key order is the only thing canonical encoding changes for plain items. The walk
    keeps its own stack, so no nesting depth can exhaust the interpreter's. (Typed maps and
    lists, and leaf types compared one by one, let the compiled build iterate and test them
    without generic calls: it runs on every command.)"""
    if type(value) is not dict:
        return False
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            mapping: dict[Any, Any] = item
            previous, previous_length = "", -1
            for key, child in mapping.items():
                if type(key) is not str:
                    return False
                name: str = key
                if not name.isascii():
                    return False
                length = len(name)
                if length < previous_length or (length == previous_length and name <= previous):
                    return False
                previous, previous_length = name, length
                kind = type(child)
                if kind is dict or kind is list:
                    stack.append(child)
                elif not (kind is str or kind is int or kind is bool or kind is bytes or child is None):
                    return False
        else:
            items: list[Any] = item
            for child in items:
                kind = type(child)
                if kind is dict or kind is list:
                    stack.append(child)
                elif not (kind is str or kind is int or kind is bool or kind is bytes or child is None):
                    return False
    return True


def loads_strict(data: bytes) -> Any:
    """Decode a command: canonical CBOR and nothing else.

    The re-encoding check refuses what a tag hook cannot see (cbor2 decodes bignums and dates
    itself), trailing bytes, unsorted keys and non-shortest integers: one command, one encoding.
    A decoded map keeps the order of the bytes, so when every map is already in canonical order
    (checked by a walk, much cheaper than canonical encoding's sorting) the insertion-order
    re-encoding must give back the very bytes; anything else takes the full canonical check.
    """
    if len(data) > envelope_bytes_max:
        raise ValueError(f"command is {len(data)} bytes; the limit is {envelope_bytes_max}")
    # The plain map that canonical encoding writes, read item by item: every head shortest,
    # every map's keys ASCII strings in canonical order, nothing after it. Such bytes are what
    # `dump_record` writes for the value decoded, as the check below would find.
    try:
        value, end = _decode_item(data, 0, 0, True)
    except UnicodeDecodeError:
        end = _NOT_PLAIN
    if end == len(data) and type(value) is dict:
        return value
    value = cbor2.loads(data, tag_hook=_refuse_tag)
    if _in_canonical_order(value) and dump_record(value) == data:
        return value
    # Off the fast path, what the walk did not vouch for: canonical CBOR may still hold map keys
    # that are not strings, or floats, which no proposing member writes (`encode_envelope`) and
    # which the handlers, reading string-keyed maps, must never meet.
    _check_plain(value, -1)  # -1: the body, one level down, may nest as deep as encode_envelope let it
    if dumps(value) != data:
        raise ValueError("command is not canonical CBOR (tags, trailing bytes or non-canonical encoding)")
    return value


@dataclass(init=False, unsafe_hash=True)
class Principal:
    """Who is acting: the tenant (org, project) and role come from the token, never the body.

    An admin with an empty org and project acts for the platform; an admin may also act for a
    tenant by naming it, which the member that builds the envelope puts in org and project.
    """

    # Final fields and a hand-written __init__: see addresses.Block.
    name: Final[str]
    org: Final[str]
    project: Final[str]
    role: Final[str]

    def __init__(self, name: str, org: str, project: str, role: str) -> None:
        self.name = name
        self.org = org
        self.project = project
        self.role = role

    @property
    def is_admin(self) -> bool:
        return self.role == ROLE_ADMIN

    @property
    def has_tenant(self) -> bool:
        return bool(self.org and self.project)

    @property
    def acts_for_platform(self) -> bool:
        """An admin acting for no tenant: sees every tenant's objects, owns none of them."""
        return self.is_admin and not self.has_tenant

    def to_plain(self) -> dict[str, Any]:
        return {"name": self.name, "org": self.org, "project": self.project, "role": self.role}


@dataclass(init=False, unsafe_hash=True)
class Envelope:
    """One command as it travels through the log.

    `ts_ms` is stamped once by the proposing member (milliseconds since the Unix epoch); apply
    never reads a clock. `request_id` is the client's idempotency key, or None.
    """

    # Final fields and a hand-written __init__: see addresses.Block.
    type: Final[str]
    body: Final[dict[str, Any]]
    principal: Final[Principal]
    request_id: Final[str | None]
    ts_ms: Final[int]
    version: Final[int]

    def __init__(
        self,
        type: str,
        body: dict[str, Any],
        principal: Principal,
        request_id: str | None,
        ts_ms: int,
        version: int = ENVELOPE_VERSION,
    ) -> None:
        self.type = type
        self.body = body
        self.principal = principal
        self.request_id = request_id
        self.ts_ms = ts_ms
        self.version = version

    def to_plain(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "type": self.type,
            "body": self.body,
            "principal": self.principal.to_plain(),
            "rid": self.request_id,
            "ts": self.ts_ms,
        }


def encode_envelope(envelope: Envelope) -> bytes:
    _check_plain(envelope.body)
    return dumps(envelope.to_plain())


_envelope_fields: Final = ("v", "type", "body", "principal", "rid", "ts")
# Tenant names and request ids become parts of keys, and LMDB keys hold at most 511 bytes: so
# org and project are DNS labels and request ids printable ASCII, both of bounded length.
_tenant_name_pattern: Final = re.compile(r"([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?")
_principal_fields: Final = ("name", "org", "project", "role")
request_id_chars_max: Final = 128
_request_id_pattern: Final = re.compile(rf"[\x21-\x7e]{{1,{request_id_chars_max}}}")
principal_field_chars_max: Final = 128


def _string(value: Any, field_path: str, chars_max: int) -> str:
    if not isinstance(value, str):
        raise invalid(f"{field_path} must be a string", field_path)
    if len(value) > chars_max:
        raise invalid(f"{field_path} is longer than {chars_max} characters", field_path)
    return value


def _check_principal(name: Any, org: Any, project: Any, role: Any) -> Principal:
    principal = Principal(
        name=_string(name, "principal.name", principal_field_chars_max),
        org=_string(org, "principal.org", principal_field_chars_max),
        project=_string(project, "principal.project", principal_field_chars_max),
        role=_string(role, "principal.role", 16),
    )
    for part in ("org", "project"):
        if not _tenant_name_pattern.fullmatch(getattr(principal, part)):
            raise invalid(f"principal.{part} must be a DNS label (lowercase letters, digits, '-')", f"principal.{part}")
    if principal.role not in (ROLE_ADMIN, ROLE_MEMBER):
        raise invalid(f"principal.role must be admin or member, not {principal.role!r}", "principal.role")
    if bool(principal.org) != bool(principal.project):
        raise invalid("principal org and project are set together or not at all", "principal")
    if not principal.is_admin and not principal.has_tenant:
        raise invalid("a member principal must belong to an org and project", "principal")
    return principal


# A cluster sees few distinct principals, and checking one (two patterns, four strings) is a
# pure function of its strings: so the checked value is remembered. A refused principal raises
# and is not cached. The cache is bounded and never iterated, so nothing leaks into results.
_checked_principal: Final = lru_cache(maxsize=1024)(_check_principal)


def _has_exactly(mapping: dict[Any, Any], fields: tuple[str, ...]) -> bool:
    """Whether the map's keys are the fields (all different): as many keys, and each field among
    them. A few lookups, where comparing its keys with a set walks both."""
    return len(mapping) == len(fields) and all(field in mapping for field in fields)  # (mypyc: a loop)


def decode_envelope(data: bytes) -> Envelope:
    """Decode and check an envelope. Raises `Rejected(invalid)` with what is wrong."""
    try:
        plain = loads_strict(data)
    except (ValueError, cbor2.CBORDecodeError) as exc:
        raise invalid(f"undecodable command: {exc}") from None
    if not isinstance(plain, dict) or not _has_exactly(plain, _envelope_fields):
        raise invalid("envelope must be a map with exactly the fields v, type, body, principal, rid, ts")
    if type(plain["v"]) is not int or plain["v"] != ENVELOPE_VERSION:
        raise invalid(f"envelope version {plain['v']!r} is not supported (expected {ENVELOPE_VERSION})")
    command_type = _string(plain["type"], "type", 64)
    body = plain["body"]
    if not isinstance(body, dict):
        raise invalid("body must be a map", "body")
    principal_plain = plain["principal"]
    if not isinstance(principal_plain, dict) or not _has_exactly(principal_plain, _principal_fields):
        raise invalid("principal must be a map with exactly name, org, project, role", "principal")
    name, org = principal_plain["name"], principal_plain["org"]
    project, role = principal_plain["project"], principal_plain["role"]
    if type(name) is str and type(org) is str and type(project) is str and type(role) is str:
        principal = _checked_principal(name, org, project, role)
    else:
        principal = _check_principal(name, org, project, role)  # refuses it, naming the field
    rid = plain["rid"]
    if rid is not None:
        rid = _string(rid, "rid", request_id_chars_max)
        if not _request_id_pattern.fullmatch(rid):
            raise invalid(
                f"rid must be 1-{request_id_chars_max} printable ASCII characters without spaces "
                "(use null for no request id)",
                "rid",
            )
    ts = plain["ts"]
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0 or ts >= 1 << 63:
        raise invalid("ts must be a non-negative integer of milliseconds", "ts")
    return Envelope(command_type, body, principal, rid, ts, ENVELOPE_VERSION)
