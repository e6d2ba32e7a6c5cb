"""The asynchronous client: aiohttp, one session with keep-alive connections per client.

The mirror of `client.sync`: the same methods, the same retries, the same errors, because every
decision is `client.core`'s; this module only awaits I/O and sleeps. A client's session belongs
to the event loop it was created in (on first use); used from another loop once that one is
closed (a second `asyncio.run`), the client starts a new session there. Using it from two open
loops is an error.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

import aiohttp
from yarl import URL

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

connections_per_endpoint_max = 32  # concurrent connections to one member; more calls wait for one
read_chunk_bytes = 64 * 1024


async def _read_body(response: aiohttp.ClientResponse, limit_bytes: int) -> bytes:
    if response.content_length is not None and response.content_length > limit_bytes:
        raise ProtocolError(f"the answer is {response.content_length} bytes; the client reads at most {limit_bytes}")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(read_chunk_bytes)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit_bytes:
            raise ProtocolError(f"the answer is larger than the {limit_bytes} bytes the client reads")
        chunks.append(chunk)


def _replaceable(owner: asyncio.AbstractEventLoop) -> bool:
    """Whether something made in the event loop `owner` must be replaced before it is used in the
    running loop: False in `owner` itself, True when `owner` is another loop that is closed (what
    was made there died with it: a second `asyncio.run`). Another loop that is still open may be
    using it (or may again): a RuntimeError that says what to do."""
    if owner is asyncio.get_running_loop():
        return False
    if owner.is_closed():
        return True
    raise RuntimeError(
        "this AsyncClient belongs to another event loop, which is still open: create one client per "
        "event loop, or use it (and close it) within one loop"
    )


def _failure(exc: BaseException) -> core.TransportFailure:
    """aiohttp's exceptions, sorted by how far the request got."""
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return core.TransportFailure(core.Failure.CONNECT, detail)  # no connection: nothing was sent
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return core.TransportFailure(core.Failure.TIMEOUT, detail)
    return core.TransportFailure(core.Failure.LOST, detail)


class AiohttpTransport:
    """Moves one request to one endpoint and back, on a shared aiohttp session.

    The session is created on first use, in the running loop, and belongs to it. Used from
    another loop after that one closed, the transport closes the dead session (aiohttp only
    forgets its connections: they cannot be closed without their loop) and creates a new one in
    the running loop."""

    def __init__(self, response_bytes_max: int = core.response_bytes_max) -> None:
        self.response_bytes_max = response_bytes_max
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None  # the loop the session belongs to
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the client is closed")

    async def _get_session(self) -> aiohttp.ClientSession:
        self._check_open()
        stale: aiohttp.ClientSession | None = None
        if self._session is not None and self._session_loop is not None and _replaceable(self._session_loop):
            stale, self._session = self._session, None
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=connections_per_endpoint_max)
            self._session = aiohttp.ClientSession(
                connector=connector, auto_decompress=True, read_bufsize=core.watch_line_bytes_max
            )
            self._session_loop = asyncio.get_running_loop()
        session = self._session  # set before any await: concurrent calls share this one
        if stale is not None:
            await stale.close()
            self._check_open()  # closed while the stale session was being closed
        return session

    @staticmethod
    def _url(endpoint: core.Endpoint, request: core.Request) -> str:
        return endpoint.url + request.target

    async def exchange(
        self, endpoint: core.Endpoint, request: core.Request, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]:
        session = await self._get_session()
        try:
            async with asyncio.timeout(timeout_s):
                async with session.request(
                    request.method,
                    URL(self._url(endpoint, request), encoded=True),
                    data=request.body,
                    headers=dict(request.headers),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s),
                ) as response:
                    body = await _read_body(response, self.response_bytes_max)
                    return response.status, {key.lower(): value for key, value in response.headers.items()}, body
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(exc) from None

    async def open_stream(
        self, endpoint: core.Endpoint, request: core.Request, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes, aiohttp.ClientResponse | None]:
        """A 200 answer comes back open, to be read as a stream; any other with its whole body."""
        session = await self._get_session()
        try:
            async with asyncio.timeout(timeout_s):
                response = await session.request(
                    request.method,
                    URL(self._url(endpoint, request), encoded=True),
                    headers=dict(request.headers),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=timeout_s),
                )
                headers = {key.lower(): value for key, value in response.headers.items()}
                if response.status == 200:
                    return response.status, headers, b"", response
                try:
                    body = await _read_body(response, self.response_bytes_max)
                finally:
                    response.release()
                return response.status, headers, body, None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise _failure(exc) from None

    async def close(self) -> None:
        """Close the session: in the loop it belongs to, or in any loop once that one is closed."""
        if self._session is not None and self._session_loop is not None:
            _replaceable(self._session_loop)  # raises if another open loop owns the session
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


# ---- resource accessors ----------------------------------------------------------------------


class AsyncReadableResource(Generic[T]):
    """get / list / list_page for one kind (`client.ipallocations`)."""

    def __init__(self, client: AsyncClient, kind: core.KindInfo[T]) -> None:
        self._client = client
        self._kind = kind

    async def get(
        self,
        name: str,
        *,
        namespace: str | None = None,
        consistency: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        request = self._client._factory.get(self._kind, name, namespace=namespace, consistency=consistency)
        return self._kind.parse((await self._client._execute(request, timeout, deadline)).value)

    async def list_page(
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
        return Page.parse((await self._client._execute(request, timeout, deadline)).value, self._kind.parse)

    async def list(
        self,
        *,
        page_size: int | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
        consistency: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[T]:
        """Every item, page after page (each page is its own call with its own deadline)."""
        token: str | None = None
        for _ in range(core.list_pages_max):
            page = await self.list_page(
                limit=page_size,
                continue_token=token,
                label_selector=label_selector,
                field_selector=field_selector,
                namespace=namespace,
                consistency=consistency,
                timeout=timeout,
                deadline=deadline,
            )
            for item in page.items:
                yield item
            token = core.next_continue(token, page)
            if token is None:
                return
        raise ProtocolError(f"a list longer than {core.list_pages_max} pages")


class AsyncWritableResource(AsyncReadableResource[T]):
    """get / list / list_page / create / delete for one kind (`client.ippools`)."""

    async def create(
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
        created, _ = await self.create_with_status(
            name,
            spec,
            labels=labels,
            namespace=namespace,
            idempotency_key=idempotency_key,
            timeout=timeout,
            deadline=deadline,
        )
        return created

    async def create_with_status(
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
        answer = await self.create_answer(
            name,
            spec,
            labels=labels,
            namespace=namespace,
            idempotency_key=idempotency_key,
            timeout=timeout,
            deadline=deadline,
        )
        return answer.value, answer.created

    async def create_answer(
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
        done = await self._client._execute(request, timeout, deadline)
        return WriteAnswer(self._kind.parse(done.value), done.status == core.HTTP_CREATED, core.replayed(done.headers))

    async def delete_answer(
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
        done = await self._client._execute(request, timeout, deadline)
        return WriteAnswer(self._kind.parse(done.value), False, core.replayed(done.headers))

    async def delete(
        self,
        name: str,
        *,
        namespace: str | None = None,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> T:
        """Delete the object; returns it as it was."""
        answer = await self.delete_answer(
            name, namespace=namespace, idempotency_key=idempotency_key, timeout=timeout, deadline=deadline
        )
        return answer.value


class AsyncLabelledResource(AsyncWritableResource[T]):
    """A writable kind whose labels a patch changes in place (`client.ipclaims.label`)."""

    async def label(
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
        return self._kind.parse((await self._client._execute(request, timeout, deadline)).value)


class AsyncNodeResource(AsyncLabelledResource[Node]):
    """Nodes (`client.nodes`): the resource methods (`create` registers a node) and the
    platform's actions on one node. Admin tokens only, except get and list."""

    async def _action(
        self, name: str, action: str, idempotency_key: str | None, timeout: float | None, deadline: float | None
    ) -> Node:
        request = self._client._factory.node_action(name, action, idempotency_key=idempotency_key)
        return Node.parse((await self._client._execute(request, timeout, deadline)).value)

    async def cordon(
        self,
        name: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Mark the node unschedulable: no new pods go there; bound pods stay."""
        return await self._action(name, "cordon", idempotency_key, timeout, deadline)

    async def uncordon(
        self,
        name: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> Node:
        """Schedulable again; pending pods that fit there are placed in the same write."""
        return await self._action(name, "uncordon", idempotency_key, timeout, deadline)

    async def drain(
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
        return await self._action(name, "drain", idempotency_key, timeout, deadline)

    async def update(
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
        return Node.parse((await self._client._execute(request, timeout, deadline)).value)

    async def heartbeat(
        self, name: str, *, timeout: float | None = None, deadline: float | None = None
    ) -> NodeHeartbeat:
        """A node agent's heartbeat (any member takes it). Not logged, so not a write: a retry
        is harmless. A Ready node not heard for the grace period becomes NotReady."""
        request = self._client._factory.node_heartbeat(name)
        return NodeHeartbeat.parse((await self._client._execute(request, timeout, deadline)).value)


class AsyncQuotaResource(AsyncWritableResource[Quota]):
    """Quotas (`client.quotas`), named `acme` (an org) or `acme/web` (a project). `set`
    creates or replaces one (so does `create`: it is the same request). Writes: admin."""

    async def set(
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
        return await self.create(
            name, spec, labels=labels, idempotency_key=idempotency_key, timeout=timeout, deadline=deadline
        )


class AsyncSchedulerResource:
    """The cluster's scheduler (`client.scheduler`): its policy and pending queue."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(
        self, *, consistency: str | None = None, timeout: float | None = None, deadline: float | None = None
    ) -> SchedulerStatus:
        """The policy, the node count and the pending pods (any token)."""
        request = self._client._factory.scheduler_get(consistency=consistency)
        return SchedulerStatus.parse((await self._client._execute(request, timeout, deadline)).value)

    async def set_policy(
        self,
        policy: str,
        *,
        idempotency_key: str | None = None,
        timeout: float | None = None,
        deadline: float | None = None,
    ) -> SchedulerStatus:
        """`spread` (the default: least used node first) or `binpack` (most used first). Admin."""
        request = self._client._factory.scheduler_configure(policy, idempotency_key=idempotency_key)
        return SchedulerStatus.parse((await self._client._execute(request, timeout, deadline)).value)

    async def retry(
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
        return SchedulerStatus.parse((await self._client._execute(request, timeout, deadline)).value)


# ---- watch -----------------------------------------------------------------------------------


class AsyncWatchStream:
    """Events of the chosen kinds after a resourceVersion, as an async iterator that never ends
    by itself: it reconnects (to another member if need be) and resumes exactly where it was.
    A reconnection that keeps failing gives up after the client's deadline (`Unavailable`);
    a compacted resourceVersion raises `Gone`. Close it (or leave its `async with`) to stop."""

    def __init__(
        self, client: AsyncClient, cursor: core.WatchCursor, idle_timeout_s: float, policy: core.RetryPolicy
    ) -> None:
        self._client = client
        self._cursor = cursor
        self._idle_timeout_s = idle_timeout_s
        self._policy = policy
        self._splitter = core.LineSplitter()
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._stream: aiohttp.ClientResponse | None = None
        self._stream_loop: asyncio.AbstractEventLoop | None = None  # the loop the connection belongs to
        self._call: core.Call | None = None
        self._attempt: core.Attempt | None = None
        self._lines_on_connection = 0
        self._connected_s = self._last_data_s = 0.0
        self._resume_at_s = 0.0  # no reconnection attempt before this (a back-off pause)
        self._closed = False
        self.endpoint: str | None = None  # the member the stream is connected to now
        self.connections = 0  # streams opened so far (1 + reconnections)

    @property
    def resource_version(self) -> int | None:
        """Every event up to this revision has been delivered: resume a new watch from here."""
        return self._cursor.resource_version

    def __aiter__(self) -> AsyncWatchStream:
        return self

    async def __anext__(self) -> WatchEvent:
        event = await self.next_event(None)
        if event is None:
            raise StopAsyncIteration
        return event

    async def next_event(self, timeout_s: float | None) -> WatchEvent | None:
        """The next event; None after `timeout_s` without one (the connection stays open),
        or once the stream is closed. While it reconnects, the pauses between attempts end with
        `timeout_s` (the next call goes on where this one stopped) but an attempt under way is
        not cut short: the call returns at most one attempt's `timeout` late."""
        try:
            return await self._next_event(timeout_s)
        except AllotError:
            self._call = None  # a spent outage budget: a caller that goes on gets a new one
            raise

    async def _next_event(self, timeout_s: float | None) -> WatchEvent | None:
        until_s = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._closed:
            if self._pending:
                return self._pending.popleft()
            if self._stream is None:
                if not await self._connect(until_s):
                    return None
                continue
            if self._stream_loop is not None and _replaceable(self._stream_loop):
                await self._drop(None)  # the connection died with its loop: reconnect, resume exactly
                continue
            idle_until_s = self._last_data_s + self._idle_timeout_s
            wait_s = (idle_until_s if until_s is None else min(idle_until_s, until_s)) - time.monotonic()
            try:
                async with asyncio.timeout(max(0.001, wait_s)):
                    chunk = await self._stream.content.readany()
            except TimeoutError:
                now_s = time.monotonic()
                if until_s is not None and until_s <= now_s < idle_until_s:
                    return None  # the caller's wait ended; an aiohttp stream survives a cancelled read
                await self._drop((core.Failure.TIMEOUT, f"no data for {self._idle_timeout_s:g} s"))
                continue
            except (aiohttp.ClientError, OSError) as exc:
                await self._drop((core.Failure.LOST, f"{type(exc).__name__}: {exc}"))
                continue
            if not chunk:
                await self._drop((core.Failure.LOST, "the stream ended"))
                continue
            self._last_data_s = time.monotonic()
            for line in self._splitter.feed(chunk):
                self._lines_on_connection += 1
                event = self._cursor.on_line(line)
                if event is not None:
                    self._pending.append(event)
            if until_s is not None and not self._pending and time.monotonic() >= until_s:
                return None
        return None

    async def _connect(self, until_s: float | None) -> bool:
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
            await asyncio.sleep(pause.seconds)
            if not pause.then_attempt:
                return False
            attempted = True
            attempt = call.next_attempt(time.monotonic())
            request = self._cursor.request(client._factory)
            try:
                status, headers, body, stream = await client._transport.open_stream(
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
            call.connected(attempt)
            self._stream, self._attempt = stream, attempt
            self._stream_loop = asyncio.get_running_loop()
            self._splitter.reset()
            self._lines_on_connection = 0
            self._connected_s = self._last_data_s = time.monotonic()
            self.endpoint = attempt.endpoint.url
            self.connections += 1
            return True

    async def _drop(self, failure: tuple[core.Failure, str] | None) -> None:
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

    async def close(self) -> None:
        if self._stream is not None and self._stream_loop is not None:
            _replaceable(self._stream_loop)  # raises if another open loop owns the connection
        self._closed = True
        if self._stream is not None:
            self._stream.close()  # aiohttp leaves a connection of a closed loop alone
            self._stream = None

    async def __aenter__(self) -> AsyncWatchStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()


# ---- the client ------------------------------------------------------------------------------


class AsyncClient(core.ClientSettings):
    """The asynchronous Allot client; `client.sync.Client` with `await`.

    async with AsyncClient(["http://127.0.0.1:8401", "http://127.0.0.1:8402"], token=...) as allot:
        claim = await allot.ipclaims.create("web-1", {"poolRef": "edge"})
        async for pool in allot.ippools.list():
            print(pool.name, pool.status.utilization)
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
        self._transport = AiohttpTransport(response_bytes_max)
        self._bind_resources()

    def _bind_resources(self) -> None:
        self.ippools: AsyncLabelledResource[IPPool] = AsyncLabelledResource(self, core.IPPOOLS)
        self.ipclaims: AsyncLabelledResource[IPClaim] = AsyncLabelledResource(self, core.IPCLAIMS)
        self.ipallocations: AsyncReadableResource[IPAllocation] = AsyncReadableResource(self, core.IPALLOCATIONS)
        self.ipclasses: AsyncLabelledResource[IPClass] = AsyncLabelledResource(self, core.IPCLASSES)
        self.priorityclasses: AsyncLabelledResource[PriorityClass] = AsyncLabelledResource(self, core.PRIORITYCLASSES)
        self.nodes = AsyncNodeResource(self, core.NODES)
        self.pods: AsyncLabelledResource[Pod] = AsyncLabelledResource(self, core.PODS)
        self.services: AsyncLabelledResource[Service] = AsyncLabelledResource(self, core.SERVICES)
        self.quotas = AsyncQuotaResource(self, core.QUOTAS)
        self.scheduler = AsyncSchedulerResource(self)

    def as_tenant(self, org: str, project: str) -> AsyncClient:
        """A client acting for one tenant (admin tokens only), sharing this one's connections.
        Closing it does nothing; close the client it came from."""
        return self._derive_for_tenant(org, project)

    def dry_run(self) -> AsyncClient:
        """A client whose writes are server dry runs (`?dryRun=All`, as `kubectl --dry-run=server`):
        each is checked and answered as it would be now (the address a claim would get, the node
        a pod would be bound to, the refusal it would meet), and nothing is kept. Reads are
        unchanged. It shares this one's connections; closing it does nothing."""
        return self._derive_for_dry_run()

    # -- the one request loop --

    async def _execute(
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
                status, headers, body = await self._transport.exchange(attempt.endpoint, request, attempt.timeout_s)
            except core.TransportFailure as exc:
                step = call.failed(attempt, exc.failure, exc.detail, time.monotonic())
            else:
                step = call.answered(attempt, status, headers, body, time.monotonic())
            if isinstance(step, core.Done):
                return step
            await asyncio.sleep(step.seconds)

    # -- members --

    async def status(
        self, endpoint: str | None = None, *, timeout: float | None = None, deadline: float | None = None
    ) -> MemberStatus:
        """`/v1/status` of the given member (one attempt), or of whichever member answers."""
        if endpoint is None:
            return MemberStatus.parse((await self._execute(self._factory.status(), timeout, deadline)).value)
        ring = core.EndpointRing([core.parse_endpoint(endpoint)])
        policy = self._policy.for_one_member(timeout, deadline)
        return MemberStatus.parse((await self._execute(self._factory.status(), None, None, ring, policy)).value)

    async def ready(self, endpoint: str, *, timeout: float | None = None, deadline: float | None = None) -> bool:
        """Whether the member says it is caught up and serving (`/readyz`; one attempt)."""
        ring = core.EndpointRing([core.parse_endpoint(endpoint)])
        policy = self._policy.for_one_member(timeout, deadline)
        try:
            await self._execute(self._factory.readyz(), None, None, ring, policy)
        except NotReady:
            return False
        return True

    async def _report(
        self, endpoint: str, timeout: float | None, until_s: float
    ) -> tuple[MemberReport, AllotError | None]:
        try:
            member = await self.status(endpoint, timeout=timeout, deadline=max(0.001, until_s - time.monotonic()))
        except AllotError as error:
            return MemberReport(endpoint, None, None, str(error)), error
        ready: bool | None = None
        left_s = until_s - time.monotonic()
        if left_s > 0:
            try:
                ready = await self.ready(endpoint, timeout=timeout, deadline=left_s)
            except AllotError:
                ready = None
        return MemberReport(endpoint, member, ready, None), None

    async def cluster_status(
        self, *, timeout: float | None = None, deadline: float | None = None
    ) -> list[MemberReport]:
        """Every endpoint's status and readiness, asked at the same time, within one deadline
        (the caller's, else the client's); unreachable ones say why. A token every member
        refuses raises (`Unauthorized`, `Forbidden`): they answered; one that only some refuse
        is reported per member."""
        until_s = time.monotonic() + self._policy.with_overrides(timeout, deadline).deadline_s
        answers = await asyncio.gather(*(self._report(endpoint, timeout, until_s) for endpoint in self.endpoints))
        refusals = [error for _, error in answers if isinstance(error, (Unauthorized, Forbidden))]
        if refusals and len(refusals) == len(answers):
            raise refusals[0]  # every member answered, refusing the token: no outage, a wrong token
        return [report for report, _ in answers]

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
    ) -> AsyncWatchStream:
        """Events of `kinds` (plural names; default all) after `resource_version` (default: now);
        `field_selector` narrows a watch of pods alone (`spec.nodeName=n1`: a node agent's pods),
        `label_selector` a watch of any kinds to objects with matching labels (`tier=web`)."""
        cursor = core.WatchCursor(core.normalize_kinds(kinds), resource_version, field_selector, label_selector)
        return AsyncWatchStream(self, cursor, idle_timeout, self._policy.with_overrides(timeout, deadline))

    async def request(
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
        return (await self._execute(request, timeout, deadline)).value

    # -- lifetime --

    async def close(self) -> None:
        """Close the session and its connections; later calls raise. A client from `as_tenant`
        closes nothing."""
        if self._owns_transport:
            await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.close()
