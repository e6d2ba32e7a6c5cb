"""The synchronous client: the standard library's http.client, keep-alive connections, no event loop.

Only I/O and sleeping live here; every decision (what to send, what an answer means, whether
and where to try again, when to give up) is `client.core`'s, shared with the async client.

A `Client` is safe to share between threads: each call has its own retry state, and idle
connections are kept per endpoint in a locked pool.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import os
import queue
import random
import select
import socket
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

from client import core
from client.errors import AllotError, Forbidden, NotReady, ProtocolError, Unauthorized
from client.models import (
    IPAllocation,
    IPClaim,
    IPClass,
    IPPool,
    MemberReport,
    MemberStatus,
    Node,
    NodeHeartbeat,
    Page,
    Pod,
    PriorityClass,
    Quota,
    SchedulerStatus,
    Service,
    Taint,
    WatchEvent,
    WriteAnswer,
)

T = TypeVar("T")

idle_connections_per_endpoint_max = 16  # kept for reuse; more concurrent calls open more, then close them
read_chunk_bytes = 64 * 1024
stream_chunks_max = 64  # read ahead of the caller, per watch: at most this many chunks (4 MiB)
stream_reader_join_s = 2.0  # how long close() waits for a watch's reader thread to end
stream_close_check_s = 0.25  # a caller waiting for a watch's next bytes notices a close() this soon


def _new_connection(endpoint: core.Endpoint, timeout_s: float) -> http.client.HTTPConnection:
    if endpoint.scheme == "https":
        return http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout_s)
    return http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout_s)


def _is_stale(connection: http.client.HTTPConnection) -> bool:
    """An idle keep-alive connection has nothing to read: anything readable is the peer's EOF."""
    sock = connection.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _close_quietly(connection: http.client.HTTPConnection) -> None:
    with contextlib.suppress(OSError):
        if connection.sock is not None:
            connection.sock.shutdown(socket.SHUT_RDWR)
    connection.close()


def _headers(response: http.client.HTTPResponse) -> dict[str, str]:
    return {key.lower(): value for key, value in response.getheaders()}


def _read_body(
    response: http.client.HTTPResponse, sock: socket.socket | None, deadline_s: float, limit_bytes: int
) -> bytes:
    """The whole body, within the attempt's deadline and the size limit."""
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > limit_bytes:
        raise ProtocolError(f"the answer is {length} bytes; the client reads at most {limit_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            raise TimeoutError("the answer did not arrive in time")
        if sock is not None:
            sock.settimeout(remaining_s)
        # read(), not read1(): read1 never marks a Content-Length answer finished, and
        # http.client then refuses the next request on this kept-alive connection.
        chunk = response.read(read_chunk_bytes)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit_bytes:
            raise ProtocolError(f"the answer is larger than the {limit_bytes} bytes the client reads")
        chunks.append(chunk)


class _Stream:
    """An open streaming answer (a watch), read on a thread of its own.

    A socket file that timed out cannot be read again. Reading with the caller's wait as the
    timeout therefore ended the connection at every `next_event(timeout)` that found nothing,
    so a node agent polling once a second reconnected once a second (and the member read the
    event log again for each). The reader thread reads with the idle timeout only (no data at
    all for that long: the member's heartbeats stopped) and hands the chunks over through a
    bounded queue; the caller waits on the queue, and its wait ending leaves the stream open."""

    def __init__(self, connection: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._connection = connection
        self._response = response
        # Bytes read (b"" at the end), or what the read raised: the reader's last item.
        self._chunks: queue.Queue[bytes | BaseException] = queue.Queue(stream_chunks_max)
        self._closing = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self, idle_timeout_s: float) -> None:
        sock = self._connection.sock
        if sock is not None:
            sock.settimeout(max(0.001, idle_timeout_s))
        self._reader = threading.Thread(target=self._read_all, name="allot-watch-reader", daemon=True)
        self._reader.start()

    def _read_all(self) -> None:
        while not self._closing.is_set():
            try:
                chunk = self._response.read1(read_chunk_bytes)
            except BaseException as exc:  # handed to the caller, which decides (a closed stream: nobody)
                self._hand_over(exc)
                return
            self._hand_over(chunk)
            if not chunk:
                return

    def _hand_over(self, item: bytes | BaseException) -> None:
        while not self._closing.is_set():
            with contextlib.suppress(queue.Full):
                self._chunks.put(item, timeout=0.25)  # a full queue: the caller is behind, TCP holds the rest
                return

    def next_chunk(self, timeout_s: float | None) -> bytes | None:
        """The next bytes (b"" at the end), or None when `timeout_s` passes first (the stream
        stays open); raises what the read raised (TimeoutError: nothing for the idle timeout)."""
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._closing.is_set():  # closed from another thread: the end, not a wait forever
            slice_s = stream_close_check_s
            if deadline_s is not None:
                slice_s = min(slice_s, deadline_s - time.monotonic())
            try:
                item = self._chunks.get(timeout=max(0.0, slice_s))
            except queue.Empty:
                if deadline_s is not None and time.monotonic() >= deadline_s:
                    return None
                continue
            if isinstance(item, BaseException):
                raise item
            return item
        return b""

    def close(self) -> None:
        self._closing.set()
        reader = self._reader
        if reader is None or reader is threading.current_thread():
            _close_quietly(self._connection)
            return
        # Wake the reader (a shutdown ends its read) and let it end before the connection is
        # closed: closing the buffered file under a read that holds its lock aborts the
        # process at interpreter shutdown (QA, 2026-12-08: exit code 134).
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        reader.join(stream_reader_join_s)
        if not reader.is_alive():
            self._connection.close()


class HttpTransport:
    """Moves one request to one endpoint and back; pools keep-alive connections per endpoint."""

    def __init__(self, response_bytes_max: int = core.response_bytes_max) -> None:
        self.response_bytes_max = response_bytes_max
        self._idle: dict[core.Endpoint, list[http.client.HTTPConnection]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        self._closed = False
        self.connections_opened = 0  # for tests and curiosity: how often keep-alive did not help

    def _checkout(self, endpoint: core.Endpoint, timeout_s: float) -> http.client.HTTPConnection:
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the client is closed")
                idle = self._idle[endpoint]
                connection = idle.pop() if idle else None
            if connection is None:
                self.connections_opened += 1
                return _new_connection(endpoint, timeout_s)
            if not _is_stale(connection):
                return connection
            connection.close()

    def _checkin(self, endpoint: core.Endpoint, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle[endpoint]
            if not self._closed and len(idle) < idle_connections_per_endpoint_max:
                idle.append(connection)
                return
        connection.close()

    def _connect(self, connection: http.client.HTTPConnection, timeout_s: float) -> None:
        if connection.sock is not None:
            return
        connection.timeout = timeout_s
        try:
            connection.connect()
        except OSError as exc:  # refused, unreachable, no route, connect timeout: nothing was sent
            connection.close()
            raise core.TransportFailure(core.Failure.CONNECT, f"{type(exc).__name__}: {exc}") from None

    def exchange(
        self, endpoint: core.Endpoint, request: core.Request, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]:
        deadline_s = time.monotonic() + timeout_s
        connection = self._checkout(endpoint, timeout_s)
        self._connect(connection, timeout_s)
        try:
            if connection.sock is not None:
                connection.sock.settimeout(max(0.001, deadline_s - time.monotonic()))
            connection.request(request.method, request.target, body=request.body, headers=dict(request.headers))
            response = connection.getresponse()
            body = _read_body(response, connection.sock, deadline_s, self.response_bytes_max)
        except TimeoutError as exc:
            _close_quietly(connection)
            raise core.TransportFailure(core.Failure.TIMEOUT, f"no complete answer within {timeout_s:.3g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            _close_quietly(connection)
            raise core.TransportFailure(core.Failure.LOST, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            _close_quietly(connection)
            raise
        if response.will_close:
            connection.close()
        else:
            self._checkin(endpoint, connection)
        return response.status, _headers(response), body

    def open_stream(
        self, endpoint: core.Endpoint, request: core.Request, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes, _Stream | None]:
        """Send a streaming request on its own connection. A 200 answer comes back as a stream
        (body b""); any other as its whole body (and no stream)."""
        deadline_s = time.monotonic() + timeout_s
        with self._lock:
            if self._closed:
                raise RuntimeError("the client is closed")
        connection = _new_connection(endpoint, timeout_s)
        self.connections_opened += 1
        self._connect(connection, timeout_s)
        try:
            connection.request(request.method, request.target, body=request.body, headers=dict(request.headers))
            response = connection.getresponse()
            if response.status == 200:
                return response.status, _headers(response), b"", _Stream(connection, response)
            body = _read_body(response, connection.sock, deadline_s, self.response_bytes_max)
        except TimeoutError as exc:
            _close_quietly(connection)
            raise core.TransportFailure(core.Failure.TIMEOUT, f"no answer within {timeout_s:.3g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            _close_quietly(connection)
            raise core.TransportFailure(core.Failure.LOST, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            _close_quietly(connection)
            raise
        connection.close()
        return response.status, _headers(response), body, None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = [connection for connections in self._idle.values() for connection in connections]
            self._idle.clear()
        for connection in idle:
            connection.close()


# ---- resource accessors ----------------------------------------------------------------------


class ReadableResource(Generic[T]):
    """get / list / list_page for one kind (`client.ipallocations`)."""

    def __init__(self, client: Client, kind: core.KindInfo[T]) -> None:
        self._client = client
        self._kind = kind

    @property
    def kind(self) -> str:
        """The `kind` of its objects ("IPClaim")."""
        return self._kind.kind

    @property
    def platform_writes(self) -> bool:
        """Writes of this kind are the platform's: sent without the tenant a client acts for."""
        return self._kind.platform_writes

    def get(
        self,
        name: str,
        *,
        namespace: str | None = None,
        consistency: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        request = self._client._factory.get(self._kind, name, namespace=namespace, consistency=consistency)
        return self._kind.parse(self._client._execute(request, timeout, deadline).value)

    def list_page(
        self,
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
        consistency: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Page[T]:
        """One page: up to `limit` items and the token for the next page (None on the last).
        `field_selector` (pods: `spec.nodeName=n1`, `status.phase=Pending`, comma-separated)."""
        request = self._client._factory.list(
            self._kind,
            limit=limit,
            continue_token=continue_token,
            label_selector=label_selector,
            field_selector=field_selector,
            namespace=namespace,
            consistency=consistency,
        )
        return Page.parse(self._client._execute(request, timeout, deadline).value, self._kind.parse)

    def list(
        self,
        *,
        page_size: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
        consistency: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Iterator[T]:
        """Every item, page after page (each page is its own call with its own deadline)."""
        token: str | None = None
        for _ in range(core.list_pages_max):
            page = self.list_page(
                limit=page_size,
                continue_token=token,
                label_selector=label_selector,
                field_selector=field_selector,
                namespace=namespace,
                consistency=consistency,
                timeout=timeout,
                deadline=deadline,
            )
            yield from page.items
            token = core.next_continue(token, page)
            if token is None:
                return
        raise ProtocolError(f"a list longer than {core.list_pages_max} pages")


class WritableResource(ReadableResource[T]):
    """get / list / list_page / create / delete for one kind (`client.ippools`)."""

    def create(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        """Create (or, with the same spec and labels, get back) the object; `spec` uses the API's field names."""
        created, _ = self.create_with_status(
            name,
            spec,
            labels=labels,
            namespace=namespace,
            idempotency_key=idempotency_key,
            timeout=timeout,
            deadline=deadline,
        )
        return created

    def create_with_status(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> tuple[T, bool]:
        """`create`, and whether this request made the object (True, HTTP 201) or found the
        identical one (False, HTTP 200). A retry under the same idempotency key gets the first
        answer again, so a create that made the object says so even after a failover."""
        answer = self.create_answer(
            name,
            spec,
            labels=labels,
            namespace=namespace,
            idempotency_key=idempotency_key,
            timeout=timeout,
            deadline=deadline,
        )
        return answer.value, answer.created

    def create_answer(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> WriteAnswer[T]:
        """`create_with_status`, and whether the answer was replayed from an earlier try under
        the same idempotency key."""
        request = self._client._factory.create(
            self._kind, name, spec, labels=labels, namespace=namespace, idempotency_key=idempotency_key
        )
        done = self._client._execute(request, timeout, deadline)
        return WriteAnswer(self._kind.parse(done.value), done.status == core.HTTP_CREATED, core.replayed(done.headers))

    def delete_answer(
        self,
        name: str,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> WriteAnswer[T]:
        """`delete`, and whether the answer was replayed from an earlier try under the same
        idempotency key (`created` is False)."""
        request = self._client._factory.delete(self._kind, name, namespace=namespace, idempotency_key=idempotency_key)
        done = self._client._execute(request, timeout, deadline)
        return WriteAnswer(self._kind.parse(done.value), False, core.replayed(done.headers))

    def delete(
        self,
        name: str,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        """Delete the object; returns it as it was."""
        answer = self.delete_answer(
            name, namespace=namespace, idempotency_key=idempotency_key, timeout=timeout, deadline=deadline
        )
        return answer.value


class LabelledResource(WritableResource[T]):
    """A writable kind whose labels a patch changes in place (`client.ipclaims.label`)."""

    def label(
        self,
        name: str,
        labels: Mapping[str, str | None],
        *,
        namespace: str | None = None,
        resource_version: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        """Set labels (`{"team": "web"}`) and remove them (`{"old": None}`); the object's other
        labels stay, and nothing else of it changes (a claim keeps its address, a pod its node).
        The server merges them, so two callers labelling one object at once both keep their
        labels. `resource_version` (the object's `metadata.resource_version` as you read it)
        makes the change conditional: a `Conflict` if the object changed since. Returns the
        object as the change left it."""
        request = self._client._factory.label(
            self._kind,
            name,
            labels,
            namespace=namespace,
            resource_version=resource_version,
            idempotency_key=idempotency_key,
        )
        return self._kind.parse(self._client._execute(request, timeout, deadline).value)


class NodeResource(LabelledResource[Node]):
    """Nodes (`client.nodes`): the resource methods (`create` registers a node) and the
    platform's actions on one node. Admin tokens only, except get and list."""

    def _action(
        self, name: str, action: str, idempotency_key: str | None, timeout: float | None, deadline: float | None
    ) -> Node:
        request = self._client._factory.node_action(name, action, idempotency_key=idempotency_key)
        return Node.parse((self._client._execute(request, timeout, deadline)).value)

    def cordon(
        self,
        name: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Mark the node unschedulable: no new pods go there; bound pods stay."""
        return self._action(name, "cordon", idempotency_key, timeout, deadline)

    def uncordon(
        self,
        name: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Schedulable again; pending pods that fit there are placed in the same write."""
        return self._action(name, "uncordon", idempotency_key, timeout, deadline)

    def drain(
        self,
        name: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Cordon the node and send its pods back to the queue (Pending, `status.evicted_from`
        naming the node), from where they are placed elsewhere if they fit; `status.evicted_pods`
        says how many. A pod that fits nowhere shows the scheduler's reason (`Unschedulable`)."""
        return self._action(name, "drain", idempotency_key, timeout, deadline)

    def update(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        taints: Sequence[Taint] | None = None,
        unschedulable: bool | None = None,
        resource_version: int | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Change the node's labels, taints or cordon: a JSON merge patch of only the parts
        given, as `kubectl label|taint|cordon` send. `labels` merge into the node's (a None
        value removes that label); `taints` is the whole new list (`[]` removes them all);
        `unschedulable` cordons (True) or uncordons (False). Giving none is a `ValueError`
        before anything is sent. Bound pods stay when a label they select goes or a NoSchedule
        taint comes; the bound pods that do not tolerate one of the node's NoExecute taints go
        back to the queue (`status.evicted_from` naming the node; one whose toleration has
        `tolerationSeconds` goes when that time is up), and `status.evicted_pods`
        says how many (it is set whenever the node has a NoExecute taint after the patch). A
        label added or a taint removed lets pending pods that now fit bind in the same write.
        `resource_version` (the node's `metadata.resource_version` as you read it) makes the
        update conditional, for read-modify-write of the taint list: it is a `Conflict` if the
        node changed since (read it again and redo the change)."""
        request = self._client._factory.node_update(
            name,
            labels=labels,
            taints=taints,
            unschedulable=unschedulable,
            resource_version=resource_version,
            idempotency_key=idempotency_key,
        )
        return Node.parse((self._client._execute(request, timeout, deadline)).value)

    def heartbeat(self, name: str, *, timeout: float | None = None, deadline: float | None = None) -> NodeHeartbeat:
        """A node agent's heartbeat (any member takes it). Not logged, so not a write: a retry
        is harmless. A Ready node not heard for the grace period becomes NotReady."""
        request = self._client._factory.node_heartbeat(name)
        return NodeHeartbeat.parse((self._client._execute(request, timeout, deadline)).value)


class QuotaResource(WritableResource[Quota]):
    """Quotas (`client.quotas`), named `acme` (an org) or `acme/web` (a project). `set`
    creates or replaces one (so does `create`: it is the same request). Writes: admin."""

    def set(
        self,
        name: str,
        spec: Mapping[str, Any] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Quota:
        """Set the limits (`cpuMillis`, `memoryBytes`, `pods`, `services`, `addressesByClass`,
        `addressesByPool`, `defaultRequests`); limits left out are unlimited. Lowering a limit
        below what is used is a `Conflict`."""
        return self.create(
            name, spec, labels=labels, idempotency_key=idempotency_key, timeout=timeout, deadline=deadline
        )


class SchedulerResource:
    """The cluster's scheduler (`client.scheduler`): its policy and pending queue."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(
        self, *, consistency: str | None = None, timeout: float | None = None, deadline: float | None = None
    ) -> SchedulerStatus:
        """The policy, the node count and the pending pods (any token)."""
        request = self._client._factory.scheduler_get(consistency=consistency)
        return SchedulerStatus.parse((self._client._execute(request, timeout, deadline)).value)

    def set_policy(
        self,
        policy: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> SchedulerStatus:
        """`spread` (the default: least used node first) or `binpack` (most used first). Admin."""
        request = self._client._factory.scheduler_configure(policy, idempotency_key=idempotency_key)
        return SchedulerStatus.parse((self._client._execute(request, timeout, deadline)).value)

    def retry(
        self,
        pods: int | None = None,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> SchedulerStatus:
        """Search again for up to `pods` (1-16, default 16) pending pods now, as the leader
        does on a timer; the answer's `examined` and `bound` say what happened. Admin."""
        request = self._client._factory.scheduler_retry(pods, idempotency_key=idempotency_key)
        return SchedulerStatus.parse((self._client._execute(request, timeout, deadline)).value)


# ---- watch -----------------------------------------------------------------------------------


class WatchStream:
    """Events of the chosen kinds after a resourceVersion, as an iterator that never ends by
    itself: it reconnects (to another member if need be) and resumes exactly where it was.
    A reconnection that keeps failing gives up after the client's deadline (`Unavailable`);
    a compacted resourceVersion raises `Gone`. Close it (or leave its `with` block) to stop."""

    def __init__(self, client: Client, cursor: core.WatchCursor, idle_timeout_s: float, policy: core.RetryPolicy):
        self._client = client
        self._cursor = cursor
        self._idle_timeout_s = idle_timeout_s
        self._policy = policy
        self._splitter = core.LineSplitter()
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._stream: _Stream | None = None
        self._call: core.Call | None = None
        self._attempt: core.Attempt | None = None
        self._lines_on_connection = 0
        self._connected_s = 0.0
        self._resume_at_s = 0.0  # no reconnection attempt before this (a back-off pause)
        self._closed = False
        self._closed_event = threading.Event()
        self.endpoint: str | None = None  # the member the stream is connected to now
        self.connections = 0  # streams opened so far (1 + reconnections)

    @property
    def resource_version(self) -> int | None:
        """Every event up to this revision has been delivered: resume a new watch from here."""
        return self._cursor.resource_version

    def __iter__(self) -> WatchStream:
        return self

    def __next__(self) -> WatchEvent:
        event = self.next_event(None)
        if event is None:
            raise StopIteration
        return event

    def next_event(self, timeout_s: float | None) -> WatchEvent | None:
        """The next event; None after `timeout_s` without one (the connection stays open: the
        next call goes on reading it), or once the stream is closed. While it reconnects, the
        pauses between attempts end with `timeout_s` (the next call goes on where this one
        stopped) but an attempt under way is not cut short: the call returns at most one
        attempt's `timeout` late."""
        try:
            return self._next_event(timeout_s)
        except AllotError:
            self._call = None  # a spent outage budget: a caller that goes on gets a new one
            raise

    def _next_event(self, timeout_s: float | None) -> WatchEvent | None:
        until_s = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._closed:
            if self._pending:
                return self._pending.popleft()
            if self._stream is None:
                if not self._connect(until_s):
                    return None
                if until_s is not None and time.monotonic() >= until_s:
                    return None  # connected as the wait ended: keep the connection, read it next call
                continue
            try:
                chunk = self._stream.next_chunk(None if until_s is None else until_s - time.monotonic())
            except TimeoutError:
                self._drop((core.Failure.TIMEOUT, f"no data for {self._idle_timeout_s:g} s"))
                continue
            except (OSError, http.client.HTTPException) as exc:
                self._drop((core.Failure.LOST, f"{type(exc).__name__}: {exc}"))
                continue
            if chunk is None:
                return None  # the caller's wait ended; the connection stays for the next call
            if not chunk:
                self._drop((core.Failure.LOST, "the stream ended"))
                continue
            for line in self._splitter.feed(chunk):
                self._lines_on_connection += 1
                event = self._cursor.on_line(line)
                if event is not None:
                    self._pending.append(event)
            if until_s is not None and not self._pending and time.monotonic() >= until_s:
                return None
        return None

    def _connect(self, until_s: float | None) -> bool:
        """Connect (to another member if need be); False when the caller's wait ends first."""
        client = self._client
        if self._call is None:  # a new outage: a fresh budget of attempts and time
            self._call = core.Call(
                self._cursor.request(client._factory), self._policy, client._ring, time.monotonic(), client._random
            )
        call = self._call
        attempted = False
        while True:
            pause = core.reconnect_pause(self._resume_at_s, until_s, attempted, time.monotonic())
            # A close() from another thread ends the pause, and the reconnection, at once (QA,
            # 2026-12-08: it went on for seconds, and could open a connection after the close).
            if self._closed_event.wait(pause.seconds) or not pause.then_attempt:
                return False
            attempted = True
            attempt = call.next_attempt(time.monotonic())
            request = self._cursor.request(client._factory)
            try:
                status, headers, body, stream = client._transport.open_stream(
                    attempt.endpoint, request, attempt.timeout_s
                )
            except core.TransportFailure as exc:
                self._resume_at_s = (
                    time.monotonic() + call.failed(attempt, exc.failure, exc.detail, time.monotonic()).seconds
                )
                continue
            if stream is None:
                step = call.answered(attempt, status, headers, body, time.monotonic())
                if isinstance(step, core.Done):
                    raise ProtocolError(f"a watch answered {status} without a stream")
                self._resume_at_s = time.monotonic() + step.seconds
                continue
            if self._closed:  # closed while this attempt was under way
                stream.close()
                return False
            call.connected(attempt)
            self._stream, self._attempt = stream, attempt
            self._splitter.reset()
            self._lines_on_connection = 0
            self._connected_s = time.monotonic()
            stream.start(self._idle_timeout_s)
            self.endpoint = attempt.endpoint.url
            self.connections += 1
            return True

    def _drop(self, failure: tuple[core.Failure, str] | None) -> None:
        """Close the current connection. A `failure` of a connection that never worked (no
        line, closed soon after it opened) counts against the reconnect budget and sets a pause
        before the next attempt; after one that worked, the next outage starts with a fresh budget."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self.endpoint = None
        attempt, call = self._attempt, self._call
        worked = self._lines_on_connection > 0 or time.monotonic() - self._connected_s >= self._policy.attempt_timeout_s
        if failure is None or attempt is None or call is None or worked:
            self._call = None
            if failure is not None and attempt is not None:
                self._client._ring.failed(attempt.endpoint)
            return
        self._resume_at_s = time.monotonic() + call.failed(attempt, failure[0], failure[1], time.monotonic()).seconds

    def close(self) -> None:
        self._closed = True
        self._closed_event.set()  # ends a reconnection's pause on another thread
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __del__(self) -> None:
        # A stream dropped without close() (a `for` loop left by break, without `with`): its
        # reader thread holds the connection, not this object, and would otherwise read on,
        # or wait on a full queue, for as long as the process lives (code review, 2026-12-08).
        # Not at interpreter shutdown: daemon threads no longer run then, and the process ends.
        if sys.is_finalizing():
            return
        with contextlib.suppress(Exception):
            self.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


# ---- the client ------------------------------------------------------------------------------


class Client(core.ClientSettings):
    """The synchronous Allot client.

        with Client(["http://127.0.0.1:8401", "http://127.0.0.1:8402"], token=...) as allot:
            pool = allot.ippools.create("edge", {"cidr": "10.0.0.0/24"})
            claim = allot.ipclaims.create("web-1", {"poolRef": "edge"})
            print(claim.status.allocated_cidr)

    `endpoints` (a list, or a comma-separated string) and `token` default to ALLOT_ENDPOINTS and
    ALLOT_TOKEN, then to `allot up`'s local endpoints. `timeout` bounds one attempt, `deadline`
    one call (all attempts and pauses); every method takes both to override them per call.
    `tenant` ("org/project") makes an admin token act for that tenant.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str] | None = None,
        token: str | None = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        retry: core.RetryPolicy | None = None,
        tenant: str | tuple[str, str] | None = None,
        random_source: random.Random | None = None,
        response_bytes_max: int = core.response_bytes_max,
    ) -> None:
        self._configure(
            endpoints,
            token,
            timeout=timeout,
            deadline=deadline,
            retry=retry,
            tenant=tenant,
            random_source=random_source,
            environ=os.environ,
        )
        self._transport = HttpTransport(response_bytes_max)
        self._bind_resources()

    def _bind_resources(self) -> None:
        self.ippools: LabelledResource[IPPool] = LabelledResource(self, core.IPPOOLS)
        self.ipclaims: LabelledResource[IPClaim] = LabelledResource(self, core.IPCLAIMS)
        self.ipallocations: ReadableResource[IPAllocation] = ReadableResource(self, core.IPALLOCATIONS)
        self.ipclasses: LabelledResource[IPClass] = LabelledResource(self, core.IPCLASSES)
        self.priorityclasses: LabelledResource[PriorityClass] = LabelledResource(self, core.PRIORITYCLASSES)
        self.nodes = NodeResource(self, core.NODES)
        self.pods: LabelledResource[Pod] = LabelledResource(self, core.PODS)
        self.services: LabelledResource[Service] = LabelledResource(self, core.SERVICES)
        self.quotas = QuotaResource(self, core.QUOTAS)
        self.scheduler = SchedulerResource(self)

    def as_tenant(self, org: str, project: str) -> Client:
        """A client acting for one tenant (admin tokens only), sharing this one's connections.
        Closing it does nothing; close the client it came from."""
        return self._derive_for_tenant(org, project)

    def dry_run(self) -> Client:
        """A client whose writes are server dry runs (`?dryRun=All`, as `kubectl --dry-run=server`):
        each is checked and answered as it would be now (the address a claim would get, the node
        a pod would be bound to, the refusal it would meet), and nothing is kept. Reads are
        unchanged. It shares this one's connections; closing it does nothing."""
        return self._derive_for_dry_run()

    # -- the one request loop --

    def _execute(
        self,
        request: core.Request,
        timeout: float | None,
        deadline: float | None,
        ring: core.EndpointRing | None = None,
        policy: core.RetryPolicy | None = None,
    ) -> core.Done:
        call = core.Call(
            request,
            (policy or self._policy).with_overrides(timeout, deadline),
            ring or self._ring,
            time.monotonic(),
            self._random,
        )
        while True:
            attempt = call.next_attempt(time.monotonic())
            step: core.Step
            try:
                status, headers, body = self._transport.exchange(attempt.endpoint, request, attempt.timeout_s)
            except core.TransportFailure as exc:
                step = call.failed(attempt, exc.failure, exc.detail, time.monotonic())
            else:
                step = call.answered(attempt, status, headers, body, time.monotonic())
            if isinstance(step, core.Done):
                return step
            time.sleep(step.seconds)

    # -- members --

    def status(
        self, endpoint: str | None = None, *, timeout: float | None = None, deadline: float | None = None
    ) -> MemberStatus:
        """`/v1/status` of the given member (one attempt), or of whichever member answers."""
        if endpoint is None:
            return MemberStatus.parse(self._execute(self._factory.status(), timeout, deadline).value)
        ring = core.EndpointRing([core.parse_endpoint(endpoint)])
        policy = self._policy.for_one_member(timeout, deadline)
        return MemberStatus.parse(self._execute(self._factory.status(), None, None, ring, policy).value)

    def ready(self, endpoint: str, *, timeout: float | None = None, deadline: float | None = None) -> bool:
        """Whether the member says it is caught up and serving (`/readyz`; one attempt)."""
        ring = core.EndpointRing([core.parse_endpoint(endpoint)])
        try:
            self._execute(self._factory.readyz(), None, None, ring, self._policy.for_one_member(timeout, deadline))
        except NotReady:
            return False
        return True

    def cluster_status(self, *, timeout: float | None = None, deadline: float | None = None) -> list[MemberReport]:
        """Every endpoint's status and readiness, one attempt each, asked in turn within one
        deadline (the caller's, else the client's), each member with an equal share of the time
        left; unreachable ones, and any the deadline left no time for, say why. A token every
        member refuses raises (`Unauthorized`, `Forbidden`): they answered; one that only some
        refuse is reported per member."""
        until_s = time.monotonic() + self._policy.with_overrides(timeout, deadline).deadline_s
        reports: list[MemberReport] = []
        refusals: list[AllotError] = []
        for position, endpoint in enumerate(self.endpoints):
            left_s = until_s - time.monotonic()
            # An equal share of what is left, so that a hung member cannot use up the others' time.
            share_s = left_s / (len(self.endpoints) - position)
            if share_s < self._policy.attempt_time_min_s:
                reports.append(MemberReport(endpoint, None, None, core.NOT_ASKED))
                continue
            share_until_s = time.monotonic() + share_s
            try:
                member = self.status(endpoint, timeout=timeout, deadline=share_s)
            except AllotError as error:
                if isinstance(error, (Unauthorized, Forbidden)):
                    refusals.append(error)
                reports.append(MemberReport(endpoint, None, None, str(error)))
                continue
            ready: bool | None = None
            left_s = share_until_s - time.monotonic()
            if left_s > 0:
                try:
                    ready = self.ready(endpoint, timeout=timeout, deadline=left_s)
                except AllotError:
                    ready = None
            reports.append(MemberReport(endpoint, member, ready, None))
        if refusals and len(refusals) == len(reports):
            raise refusals[0]  # every member answered, refusing the token: no outage, a wrong token
        return reports

    # -- watch and raw requests --

    def watch(
        self,
        kinds: str | Sequence[str] | None = None,
        resource_version: int | None = None,
        *,
        field_selector: str | None = None,
        label_selector: str | None = None,
        idle_timeout: float = core.watch_idle_timeout_s_default,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> WatchStream:
        """Events of `kinds` (plural names; default all) after `resource_version` (default: now);
        `field_selector` narrows a watch of pods alone (`spec.nodeName=n1`: a node agent's pods),
        `label_selector` a watch of any kinds to objects with matching labels (`tier=web`)."""
        cursor = core.WatchCursor(core.normalize_kinds(kinds), resource_version, field_selector, label_selector)
        return WatchStream(self, cursor, idle_timeout, self._policy.with_overrides(timeout, deadline))

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Any:
        """Any route, with the same retries and errors; returns the answer's JSON value."""
        request = self._factory.raw(method, path, query=query, body=body, idempotency_key=idempotency_key)
        return self._execute(request, timeout, deadline).value

    # -- lifetime --

    def close(self) -> None:
        """Close idle connections; later calls raise. A client from `as_tenant` closes nothing."""
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
