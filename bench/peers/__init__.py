"""The stores the benchmark suite drives: Allot itself and its peers (etcd, PostgreSQL).

Each module has a store class that starts and stops the store on 127.0.0.1 in a temporary
directory (every process reaped, every wait with a deadline) and hands out an allocator for
`bench.loadgen`. `Store` is the interface `bench.suite` relies on; `Replicated` adds what the
failover scenario needs.
"""

from __future__ import annotations

from typing import Protocol

from bench.loadgen import Allocator


class Store(Protocol):
    label: str  # the name in reports: "allot", "etcd", "etcd-bitmap", "postgres"

    def start(self) -> None: ...

    def close(self) -> None: ...

    def allocator(self, timeout_s: float = ...) -> Allocator:
        """A client of the started store; `timeout_s` bounds each request (then it is retried)."""
        ...

    def describe(self) -> str:
        """How this store is configured, for the report."""
        ...


class Replicated(Store, Protocol):
    """A store of several members whose leader can be killed and brought back."""

    def member_ids(self) -> list[str]: ...

    def leader(self, timeout_s: float) -> str: ...

    def kill(self, member_id: str) -> None: ...

    def restart(self, member_id: str, timeout_s: float) -> None: ...

    def wait_whole(self, timeout_s: float) -> None:
        """Every member running and the members agreeing on a leader."""
        ...


class Unavailable(Exception):
    """A peer cannot run here (its programs are not installed): the suite skips it and says why."""
