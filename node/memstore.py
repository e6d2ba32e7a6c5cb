"""An in-memory ordered key-value store with the state machine's view interface.

Used by tests, the hypothesis model test and in-process benchmarks. It orders keys bytewise,
like LMDB. `SortedDict` (sortedcontainers) gives O(log n) inserts and lazy range scans, so a
store with millions of records behaves like the real one instead of degrading with size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from sortedcontainers import SortedDict

from statemachine.view import Write


class MemoryStore:
    def __init__(self) -> None:
        self._data: SortedDict = SortedDict()

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._data.get(key)
        return value

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key in self._data.irange(start, end, inclusive=(True, False)):
            yield key, self._data[key]

    def apply_writes(self, writes: Iterable[Write]) -> None:
        for key, value in writes:
            if value is None:
                self._data.pop(key, None)
            else:
                self._data[key] = value

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        yield from self._data.items()

    def __len__(self) -> int:
        return len(self._data)
