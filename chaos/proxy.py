"""TCP proxies on 127.0.0.1 that the chaos harness can cut and heal: network partitions.

One `Link` listens on a port and forwards every connection to one target address, byte for
byte, in both directions. A link is in one of three states:

* **open**: bytes flow.
* **stalled** (a silent partition, like a switch dropping packets): nothing moves. Connections
  stay open and new ones are accepted, but no byte is read from either side, so what the
  members send waits in kernel buffers (and then in their own send buffers) exactly as it would
  behind a dead link. Neither end sees an error; pysyncobj notices only through its own
  timeouts. On heal, the queued bytes are delivered in order: TCP streams are never corrupted,
  because the proxy never drops a byte of an open stream.
* **reset** (a link that answers with RST, like a rejecting firewall): every connection is
  aborted at once and new ones are accepted and aborted immediately.

Every link of a `ProxyHub` runs on one asyncio loop in one daemon thread. Limits: at most
`connections_per_link_max` connections per link (the oldest is aborted to admit a new one: a
member that keeps reconnecting behind a stall cannot pile them up), 64 KiB in flight per
direction per connection. Listening and connecting are on 127.0.0.1 only. `close()` aborts every
connection, closes every listener and stops the thread; it is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeVar

HOST = "127.0.0.1"
chunk_bytes = 64 * 1024  # read at most this much before writing it on: in flight per direction
connections_per_link_max = 16
connect_timeout_s = 2.0  # the proxy connecting to the link's target
call_timeout_s = 10.0  # a harness call into the proxy thread

T = TypeVar("T")


class LinkState(StrEnum):
    OPEN = "open"
    STALLED = "stalled"
    RESET = "reset"


class CutMode(StrEnum):
    STALL = "stall"
    RESET = "reset"


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with an RST (SO_LINGER 0), not a FIN: a hard failure, as a cut link gives."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        _abort(self.client)
        if self.upstream is not None:
            _abort(self.upstream)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


@dataclass(frozen=True)
class LinkStats:
    name: str
    listen_address: str
    target_address: str
    state: LinkState
    connections_open: int
    connections_accepted: int
    connections_refused: int  # aborted on arrival (reset) or to stay within the limit
    bytes_forwarded: int


class Link:
    """One listening port forwarding to one target. Use through `ProxyHub` (its loop's thread)."""

    def __init__(self, name: str, listen_port: int, target_address: str) -> None:
        self.name = name
        self.listen_port = listen_port
        self.target_address = target_address
        self.state = LinkState.OPEN
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._connections: list[_Connection] = []  # oldest first
        self._server: asyncio.Server | None = None
        self.connections_accepted = 0
        self.connections_refused = 0
        self.bytes_forwarded = 0

    @property
    def listen_address(self) -> str:
        return f"{HOST}:{self.listen_port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, HOST, self.listen_port, reuse_address=True)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for connection in list(self._connections):
            connection.abort()
        self._connections.clear()

    def cut(self, mode: CutMode) -> None:
        self._flowing.clear()
        if mode is CutMode.RESET:
            self.state = LinkState.RESET
            for connection in list(self._connections):
                connection.abort()
            self._connections.clear()
        else:
            self.state = LinkState.STALLED

    def heal(self) -> None:
        self.state = LinkState.OPEN
        self._flowing.set()

    def stats(self) -> LinkStats:
        return LinkStats(
            name=self.name,
            listen_address=self.listen_address,
            target_address=self.target_address,
            state=self.state,
            connections_open=len(self._connections),
            connections_accepted=self.connections_accepted,
            connections_refused=self.connections_refused,
            bytes_forwarded=self.bytes_forwarded,
        )

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state is LinkState.RESET:
            self.connections_refused += 1
            _abort(writer)
            return
        while len(self._connections) >= connections_per_link_max:
            self.connections_refused += 1
            self._connections.pop(0).abort()
        connection = _Connection(writer)
        self._connections.append(connection)
        self.connections_accepted += 1
        try:
            # Behind a stall the connection is accepted (the kernel would have completed the
            # handshake anyway) but the target is not even dialled until the link heals.
            await self._flowing.wait()
            if connection.closed:
                return
            host, _, port = self.target_address.rpartition(":")
            try:
                upstream_reader, upstream = await asyncio.wait_for(
                    asyncio.open_connection(host, int(port)), connect_timeout_s
                )
            except (OSError, TimeoutError):
                return  # target down: the client sees its connection close, as with no listener
            connection.upstream = upstream
            if connection.closed:  # cut (reset) while connecting
                _abort(upstream)
                return
            forward = asyncio.create_task(self._pump(reader, upstream, connection))
            backward = asyncio.create_task(self._pump(upstream_reader, writer, connection))
            connection.tasks = [forward, backward]
            await asyncio.wait(connection.tasks, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            connection.abort()
            with contextlib.suppress(ValueError):
                self._connections.remove(connection)

    async def _pump(self, source: asyncio.StreamReader, target: asyncio.StreamWriter, connection: _Connection) -> None:
        """Copy until EOF or an error; never move a byte while the link is cut."""
        try:
            while not connection.closed:
                await self._flowing.wait()
                data = await source.read(chunk_bytes)
                if not data:
                    return
                await self._flowing.wait()  # a read that completed as the link was cut waits here
                if connection.closed:
                    return
                target.write(data)
                await target.drain()
                self.bytes_forwarded += len(data)
        except (OSError, asyncio.IncompleteReadError):
            return


class ProxyHub:
    """Links on one asyncio loop in one daemon thread, driven from any other thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._links: dict[str, Link] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name="allot-chaos-proxy", daemon=True)
        self._thread.start()

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await make()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(call_timeout_s)

    def add_link(self, name: str, listen_port: int, target_address: str) -> Link:
        """Listen on 127.0.0.1:`listen_port` and forward to `target_address` (127.0.0.1:port)."""
        if self._closed:
            raise RuntimeError("the proxy hub is closed")
        if name in self._links:
            raise ValueError(f"link {name!r} exists already")
        if not target_address.startswith(f"{HOST}:"):
            raise ValueError(f"links forward to {HOST} only, not {target_address}")

        async def create() -> Link:
            link = Link(name, listen_port, target_address)
            await link.start()
            return link

        link = self._call(create)
        self._links[name] = link
        return link

    @property
    def link_names(self) -> list[str]:
        return list(self._links)

    def cut(self, names: Iterable[str], mode: CutMode = CutMode.STALL) -> None:
        chosen = [self._links[name] for name in names]

        async def cut_all() -> None:
            for link in chosen:
                link.cut(mode)

        self._call(cut_all)

    def heal(self, names: Iterable[str] | None = None) -> None:
        """Open the given links (default: all)."""
        chosen = list(self._links.values()) if names is None else [self._links[name] for name in names]

        async def heal_all() -> None:
            for link in chosen:
                link.heal()

        self._call(heal_all)

    def stats(self) -> list[LinkStats]:
        links = list(self._links.values())

        async def collect() -> list[LinkStats]:
            return [link.stats() for link in links]

        return self._call(collect)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        links = list(self._links.values())

        async def close_all() -> None:
            for link in links:
                await link.close()
            # Let the accept handlers and pumps that were just aborted run to their end.
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(close_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(call_timeout_s)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> ProxyHub:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
