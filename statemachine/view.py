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

from bisect import bisect_left
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
        # Every pending key, sorted only when a scan or `writes` needs the order: a command
        # writes a dozen keys in no particular order and scans seldom, so one sort of a short
        # list is cheaper than keeping it sorted on every write.
        self._pending_keys: list[bytes] = []
        self._keys_sorted = True

    def get(self, key: bytes) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        return self._base.get(key)

    def _sorted_keys(self) -> list[bytes]:
        if not self._keys_sorted:
            self._pending_keys.sort()
            self._keys_sorted = True
        return self._pending_keys

    def put(self, key: bytes, value: bytes) -> None:
        if key not in self._pending:  # (put and delete note a new key inline: no call per write)
            pending_keys = self._pending_keys
            if self._keys_sorted and pending_keys and key < pending_keys[-1]:
                self._keys_sorted = False
            pending_keys.append(key)
        self._pending[key] = value

    def delete(self, key: bytes) -> None:
        if key not in self._pending:
            pending_keys = self._pending_keys
            if self._keys_sorted and pending_keys and key < pending_keys[-1]:
                self._keys_sorted = False
            pending_keys.append(key)
        self._pending[key] = None

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        # Callers never write while a scan is open (each scan is consumed or copied first).
        pending_keys = self._sorted_keys()
        pending_index = bisect_left(pending_keys, start)
        base_items = self._base.scan(start, end)
        base_item = next(base_items, None)
        while True:
            pending_key: bytes | None = None
            if pending_index < len(pending_keys) and pending_keys[pending_index] < end:
                pending_key = pending_keys[pending_index]
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
        pending = self._pending
        return tuple([(key, pending[key]) for key in self._sorted_keys()])

    @property
    def base(self) -> ReadView:
        return self._base
