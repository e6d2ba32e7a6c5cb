"""The cuttable TCP proxy (chaos/proxy.py) against a small echo server on 127.0.0.1.

Open links forward bytes both ways; a stalled link moves nothing (checked with a bounded read
that must time out) and delivers everything queued, in order, when healed; a reset link aborts
its connections and refuses new ones; the number of connections per link is bounded; closing
the hub stops everything. A non-partitionable Cluster has no proxies and refuses partitions.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from chaos.cluster import HOST, Cluster, free_ports, wait_until
from chaos.proxy import CutMode, LinkState, LinkStats, ProxyHub, connections_per_link_max

read_timeout_s = 2.0  # a read that must succeed
silence_s = 0.3  # a read that must find nothing (the link is stalled)


class EchoServer:
    """Echoes every byte back; one thread per connection; closed by close()."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._echo, args=(connection,), daemon=True).start()

    @staticmethod
    def _echo(connection: socket.socket) -> None:
        try:
            while data := connection.recv(65536):
                connection.sendall(data)
        except OSError:
            pass
        finally:
            connection.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        for connection in self.connections:
            connection.close()
        self._thread.join(read_timeout_s)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def hub() -> Iterator[ProxyHub]:
    with ProxyHub() as proxies:
        yield proxies


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=read_timeout_s)


def read_exactly(sock: socket.socket, count: int, timeout_s: float = read_timeout_s) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def test_open_link_forwards_both_ways(echo: EchoServer, hub: ProxyHub) -> None:
    (port,) = free_ports(1)
    hub.add_link("a-b", port, f"{HOST}:{echo.port}")
    with connect(port) as client:
        payload = bytes(range(256)) * 1000
        client.sendall(payload)
        assert read_exactly(client, len(payload)) == payload
    (stats,) = hub.stats()
    assert stats.state is LinkState.OPEN and stats.bytes_forwarded == 2 * len(payload)


def test_stalled_link_moves_nothing_then_delivers_in_order(echo: EchoServer, hub: ProxyHub) -> None:
    (port,) = free_ports(1)
    hub.add_link("a-b", port, f"{HOST}:{echo.port}")
    with connect(port) as client:
        client.sendall(b"before")
        assert read_exactly(client, 6) == b"before"
        hub.cut(["a-b"], CutMode.STALL)
        client.sendall(b"during-1|")
        client.sendall(b"during-2")
        client.settimeout(silence_s)
        with pytest.raises(TimeoutError):
            client.recv(100)
        with connect(port) as late:  # a connection opened during the stall is held, not refused
            late.sendall(b"late")
            hub.heal(["a-b"])
            assert read_exactly(late, 4) == b"late"
        assert read_exactly(client, 17) == b"during-1|during-2"


def test_reset_link_aborts_connections_and_refuses_new_ones(echo: EchoServer, hub: ProxyHub) -> None:
    (port,) = free_ports(1)
    hub.add_link("a-b", port, f"{HOST}:{echo.port}")
    with connect(port) as client:
        client.sendall(b"x")
        assert read_exactly(client, 1) == b"x"
        hub.cut(["a-b"], CutMode.RESET)
        client.settimeout(read_timeout_s)
        with pytest.raises(OSError):
            if client.recv(1) == b"":
                raise ConnectionError("closed")
    with pytest.raises(OSError), connect(port) as refused:  # reset at once (even in connect), or closed
        refused.settimeout(read_timeout_s)
        refused.sendall(b"y")
        if refused.recv(1) == b"":
            raise ConnectionError("closed")
    hub.heal()
    with connect(port) as client:
        client.sendall(b"z")
        assert read_exactly(client, 1) == b"z"
    assert hub.stats()[0].connections_refused >= 1


def test_connections_per_link_are_bounded(echo: EchoServer, hub: ProxyHub) -> None:
    (port,) = free_ports(1)
    hub.add_link("a-b", port, f"{HOST}:{echo.port}")
    hub.cut(["a-b"], CutMode.STALL)
    clients = [connect(port) for _ in range(connections_per_link_max + 5)]
    try:

        def all_accepted() -> LinkStats | None:
            stats = hub.stats()[0]
            return stats if stats.connections_accepted == len(clients) else None

        stats = wait_until("the proxy to account for every connection", all_accepted, read_timeout_s)
        assert stats.connections_open <= connections_per_link_max
        assert stats.connections_refused >= 5
    finally:
        for client in clients:
            client.close()


def test_links_forward_to_loopback_only(hub: ProxyHub) -> None:
    (port,) = free_ports(1)
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        hub.add_link("a-b", port, "10.1.2.3:80")


def test_closing_the_hub_closes_its_ports(echo: EchoServer) -> None:
    (port,) = free_ports(1)
    hub = ProxyHub()
    hub.add_link("a-b", port, f"{HOST}:{echo.port}")
    client = connect(port)
    hub.close()
    hub.close()  # idempotent
    client.settimeout(read_timeout_s)
    with contextlib.suppress(ConnectionResetError):  # reset, or else closed: either way gone
        assert client.recv(1) == b""
    client.close()
    with pytest.raises(OSError):
        connect(port).close()


def test_a_cluster_without_partitions_has_no_proxies() -> None:
    cluster = Cluster()
    try:
        assert cluster.proxies is None
        for member_id in cluster.member_ids:
            assert cluster.member_view(member_id) == cluster.raft_addresses
        with pytest.raises(RuntimeError, match="partitionable"):
            cluster.isolate("m1")
        cluster.heal_links()  # nothing to heal: a no-op
    finally:
        cluster.close()


def test_a_partitionable_cluster_routes_each_pair_through_one_proxy() -> None:
    cluster = Cluster(partitionable=True)
    try:
        assert cluster.proxies is not None
        links = {stats.name: stats for stats in cluster.link_stats()}
        assert sorted(links) == ["m1-m2", "m1-m3", "m2-m3"]
        raft = cluster.raft_addresses
        for name, stats in links.items():
            low, high = name.split("-")  # members are numbered in Raft port order
            assert stats.target_address == raft[low]
            # the higher member (the one pysyncobj lets connect) dials the proxy; the lower one
            # knows it by its real address, which is what it will say it is
            assert cluster.member_view(high)[low] == stats.listen_address
            assert cluster.member_view(low)[high] == raft[high]
            assert stats.listen_address < raft[high]
    finally:
        cluster.close()
