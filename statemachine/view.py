"""The state machine's window onto state: an ordered key-value view.

The state machine reads through `ReadView` (point get, ascending range scan) and never writes
to it. While it applies one command it writes into an `Overlay`, which answers reads with its
own pending writes merged over the base view. When the command is refused, the overlay is
dropped and nothing changes; when it succeeds, the overlay's writes become the Outcome's writes
and the store applies them (the node inside its LMDB write transaction).

Keys and values are bytes; keys sort bytewise, which is how LMDB and the in-memory store order
them.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from typing import Protocol


class ReadView(Protocol):
    def get(self, key: bytes) -> bytes | None:
        """The value stored at key, or None."""

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Pairs with start <= key < end in ascending key order, produced lazily."""


Write = tuple[bytes, bytes | None]  # (key, value); value None deletes the key


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key that starts with prefix."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        raise ValueError("a prefix of only 0xff bytes has no upper bound; no key layout uses one")
    return stripped[:-1] + bytes([stripped[-1] + 1])


class Overlay:
    """Pending writes of one command over a read-only base view."""

    def __init__(self, base: ReadView) -> None:
        self._base = base
        self._pending: dict[bytes, bytes | None] = {}
        self._pending_keys: list[bytes] = []  # sorted, for merged scans

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        return self._base.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._pending:
            insort(self._pending_keys, key)
        self._pending[key] = value

    def delete(self, key: bytes) -> None:
        if key not in self._pending:
            insort(self._pending_keys, key)
        self._pending[key] = None

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        pending_index = bisect_left(self._pending_keys, start)
        base_items = self._base.scan(start, end)
        base_item = next(base_items, None)
        while True:
            pending_key: bytes | None = None
            if pending_index < len(self._pending_keys) and self._pending_keys[pending_index] < end:
                pending_key = self._pending_keys[pending_index]
            if base_item is None and pending_key is None:
                return
            if pending_key is not None and (base_item is None or pending_key <= base_item[0]):
                if base_item is not None and base_item[0] == pending_key:
                    base_item = next(base_items, None)  # the pending write shadows it
                pending_index += 1
                value = self._pending[pending_key]
                if value is not None:
                    yield pending_key, value
            elif base_item is not None:
                item = base_item
                base_item = next(base_items, None)
                yield item

    def first(self, start: bytes, end: bytes) -> tuple[bytes, bytes] | None:
        return next(self.scan(start, end), None)

    @property
    def has_writes(self) -> bool:
        return bool(self._pending)

    def writes(self) -> tuple[Write, ...]:
        return tuple((key, self._pending[key]) for key in self._pending_keys)

    @property
    def base(self) -> ReadView:
        return self._base
