"""Both clients through one suite, against a real three-member cluster (chaos.cluster).

Every test taking `make` runs twice: with the sync `Client`, and with the `AsyncClient` driven
through `Synced`, a thin proxy that runs each coroutine to completion on one event loop. The
test code is the same, so the two clients are held to the same behaviour: CRUD of every kind,
paging, a typed error for every code reachable over HTTP, an admin acting for a tenant, member
status, watch resumption after the member serving it is killed, OutcomeUnknown while the
leader is frozen (then the same key applies once), NoLeader/Unavailable without a quorum, and
the failover test: many concurrent claims while the leader is SIGKILLed.

One cluster for the module; each test starts by bringing every member back, uses its own names
and address ranges, and restores what it breaks in `finally`. Waits poll with deadlines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import inspect
import ipaddress
import itertools
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import pytest

from chaos.cluster import Cluster, wait_until
from client import (
    AllotError,
    AlreadyExists,
    AsyncClient,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    IPAllocation,
    IPClaim,
    IPClass,
    IPPool,
    MethodNotAllowed,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    PayloadTooLarge,
    PoolExhausted,
    ProtocolError,
    RetryPolicy,
    Unauthorized,
    Unavailable,
    WatchEvent,
)
from client.aio import AsyncReadableResource, AsyncWatchStream
from node.build_identity import build_id

ACME = "acme/web"
GLOBEX = "globex/prod"
slack_s = 3.0  # a call may overrun its deadline by scheduling noise on a busy 2-core machine, not more
event_wait_s = 20.0  # one watch event, across a member kill and an election


# ---- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with Cluster() as running:
        yield running


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


class Synced:
    """An async client object used through the sync client's interface: coroutines are run to
    completion on one loop, async iterators and context managers become sync ones."""

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._target = target
        self._loop = loop

    def _wrap(self, value: Any) -> Any:
        if inspect.iscoroutine(value):
            return self._wrap(self._loop.run_until_complete(value))
        if inspect.isasyncgen(value) or isinstance(value, AsyncClient | AsyncReadableResource | AsyncWatchStream):
            return Synced(value, self._loop)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if callable(value):
            return lambda *args, **kwargs: self._wrap(value(*args, **kwargs))
        return self._wrap(value)

    def __enter__(self) -> Synced:
        self._wrap(self._target.__aenter__())
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._wrap(self._target.__aexit__(*exc_info))

    def __iter__(self) -> Synced:
        return self

    def __next__(self) -> Any:
        try:
            return self._loop.run_until_complete(self._target.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None


def endpoints_of(cluster: Cluster, member_ids: list[str] | None = None) -> list[str]:
    return [f"http://{cluster.address(member_id)}" for member_id in member_ids or cluster.member_ids]


class ClientMaker:
    """Makes clients of one flavour; closes them all when the test ends."""

    def __init__(self, flavour: str, cluster: Cluster, loop: asyncio.AbstractEventLoop) -> None:
        self.flavour = flavour
        self.cluster = cluster
        self.loop = loop
        self.made: list[Client] = []

    def __call__(self, token: str, *, endpoints: list[str] | None = None, **options: Any) -> Client:
        chosen = endpoints or endpoints_of(self.cluster)
        if self.flavour == "sync":
            client = Client(chosen, token, **options)
        else:  # the async client, held to the sync client's interface (parity is the point)
            client = cast(Client, Synced(AsyncClient(chosen, token, **options), self.loop))
        self.made.append(client)
        return client

    def admin(self, **options: Any) -> Client:
        return self(self.cluster.admin_token, **options)

    def tenant(self, tenant: str = ACME, **options: Any) -> Client:
        return self(self.cluster.tenant_tokens[tenant], **options)

    def close(self) -> None:
        for client in self.made:
            with contextlib.suppress(Exception):
                client.close()


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest, cluster: Cluster, loop: asyncio.AbstractEventLoop) -> Iterator[ClientMaker]:
    if cluster.running_ids() != cluster.member_ids:  # a failed test left a member down
        cluster.ensure_all_running()
    maker = ClientMaker(str(request.param), cluster, loop)
    try:
        yield maker
    finally:
        maker.close()


_networks = itertools.count(1)


def next_cidr(prefix_length: int) -> str:
    """A block no other test uses: 10.N.0.0/prefix_length."""
    return f"10.{next(_networks)}.0.0/{prefix_length}"


def unique(make: ClientMaker, stem: str) -> str:
    return f"{make.flavour}-{stem}"


# ---- CRUD, paging, tenancy, status -----------------------------------------------------------------


def test_crud_of_every_kind(make: ClientMaker) -> None:
    admin, tenant = make.admin(), make.tenant()
    ipclass = admin.ipclasses.create(unique(make, "gold"), {"ipFamily": "IPv4"}, labels={"tier": "gold"})
    assert (
        isinstance(ipclass, IPClass)
        and ipclass.spec.ip_family == "IPv4"
        and ipclass.metadata.labels == {"tier": "gold"}
    )
    assert admin.ipclasses.get(ipclass.name) == ipclass
    assert ipclass.name in {item.name for item in admin.ipclasses.list()}

    cidr = next_cidr(28)
    pool = admin.ippools.create(unique(make, "edge"), {"cidr": cidr, "classNames": [ipclass.name]})
    assert isinstance(pool, IPPool) and pool.status.allocated_cidr == cidr and pool.spec.class_names == (ipclass.name,)
    assert pool.status.capacity is not None and (pool.status.capacity.total, pool.status.capacity.allocated) == (16, 0)
    again, created = admin.ippools.create_with_status(pool.name, {"cidr": cidr, "classNames": [ipclass.name]})
    assert again.metadata.uid == pool.metadata.uid, "the same spec again returns the existing pool"
    assert created is False, "and says it did not make it"

    claim = tenant.ipclaims.create(unique(make, "c1"), {"poolRef": pool.name}, labels={"app": "web"})
    assert isinstance(claim, IPClaim) and claim.metadata.tenant == ACME and claim.status.phase == "Bound"
    assert claim.status.allocated_cidr is not None
    assert ipaddress.IPv4Network(claim.status.allocated_cidr).subnet_of(ipaddress.IPv4Network(cidr))
    assert tenant.ipclaims.get(claim.name) == claim
    namespaced = tenant.ipclaims.create(unique(make, "c1"), {"poolRef": pool.name}, namespace="blue")
    assert namespaced.metadata.namespace == "blue" and namespaced.metadata.uid != claim.metadata.uid
    assert tenant.ipclaims.get(claim.name, namespace="blue") == namespaced

    allocation = tenant.ipallocations.get(claim.name)
    assert isinstance(allocation, IPAllocation) and allocation.spec.cidr == claim.status.allocated_cidr
    assert allocation.spec.claim_ref == claim.name and allocation.phase == "Bound"
    assert {item.metadata.namespace for item in tenant.ipallocations.list() if item.name == claim.name} == {
        "default",
        "blue",
    }
    capacity = admin.ippools.get(pool.name).status.capacity
    assert capacity is not None and capacity.allocated == 2

    assert tenant.ipclaims.delete(claim.name).name == claim.name
    tenant.ipclaims.delete(claim.name, namespace="blue")
    for read in (lambda: tenant.ipclaims.get(claim.name), lambda: tenant.ipallocations.get(claim.name)):
        with pytest.raises(NotFound):
            read()
    assert admin.ippools.delete(pool.name).name == pool.name
    assert admin.ipclasses.delete(ipclass.name).name == ipclass.name
    with pytest.raises(NotFound):
        admin.ippools.get(pool.name)

    with make.admin() as short_lived:
        assert short_lived.status().member_id in make.cluster.member_ids
    with pytest.raises(RuntimeError, match="closed"):
        short_lived.ipclasses.list_page()


def test_paging_through_lists(make: ClientMaker) -> None:
    admin, tenant = make.admin(), make.tenant()
    pool = admin.ippools.create(unique(make, "paging"), {"cidr": next_cidr(27)})
    batch = f"paging-{make.flavour}"
    names = [unique(make, f"p{number}") for number in range(7)]
    for name in names:
        tenant.ipclaims.create(name, {"poolRef": pool.name}, labels={"batch": batch})
    tenant.ipclaims.create(unique(make, "other"), {"poolRef": pool.name}, labels={"batch": "other"})

    selector = f"batch={batch}"
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        page = tenant.ipclaims.list_page(limit=3, continue_token=token, label_selector=selector)
        pages += 1
        assert len(page.items) <= 3 and page.resource_version is not None
        seen += [item.name for item in page.items]
        token = page.continue_token
        if token is None:
            break
        assert pages < 10
    assert sorted(seen) == sorted(names) and pages >= 3
    assert [item.name for item in tenant.ipclaims.list(page_size=2, label_selector=selector)] == seen
    assert len(list(tenant.ipclaims.list(page_size=1))) >= 8
    assert pool.name in {item.name for item in admin.ippools.list(page_size=1, consistency="stale")}


def test_typed_error_for_every_code_reachable_over_http(make: ClientMaker) -> None:
    admin, tenant = make.admin(), make.tenant()
    pool = admin.ippools.create(unique(make, "tiny"), {"cidr": next_cidr(30)})

    checks: list[tuple[type[AllotError], str, int, Callable[[], object]]] = [
        (Invalid, "invalid", 400, lambda: tenant.ipclaims.create("bad", {"poolRef": pool.name, "prefixLength": 8})),
        (Invalid, "invalid", 400, lambda: tenant.ipclaims.list_page(limit=0)),
        (Unauthorized, "unauthorized", 401, make("not-a-token-" + "x" * 40).ippools.list_page),
        (Forbidden, "forbidden", 403, tenant.as_tenant("globex", "prod").ipclaims.list_page),
        (NotFound, "not_found", 404, lambda: tenant.ipclaims.get("no-such-claim")),
        (NotFound, "not_found", 404, lambda: admin.request("GET", "/v1/no-such-route")),
        (MethodNotAllowed, "method_not_allowed", 405, lambda: admin.request("DELETE", "/v1/ipallocations/x")),
        (AlreadyExists, "already_exists", 409, lambda: admin.ippools.create(pool.name, {"cidr": next_cidr(30)})),
        (Conflict, "conflict", 409, lambda: admin.ippools.create(unique(make, "overlap"), {"cidr": pool.spec.cidr})),
        (
            PayloadTooLarge,
            "too_large",
            413,
            lambda: admin.ippools.create(
                "big", {"cidr": next_cidr(24)}, labels={f"k{i}": "v" * 60 for i in range(1200)}
            ),
        ),
    ]
    for cls, code, status, action in checks:
        with pytest.raises(cls) as raised:
            action()
        assert (raised.value.code, raised.value.status) == (code, status), raised.value
        assert raised.value.message
    with pytest.raises(Invalid) as invalid:
        checks[0][3]()
    assert invalid.value.field, "invalid names the field to fix"

    with pytest.raises(ProtocolError, match="at most 64"):
        make.admin(response_bytes_max=64).ippools.list_page()  # the client reads no more than it allows

    tenant.ipclaims.create(unique(make, "fill"), {"poolRef": pool.name, "prefixLength": 30})
    with pytest.raises(PoolExhausted) as exhausted:
        tenant.ipclaims.create(unique(make, "more"), {"poolRef": pool.name})
    assert exhausted.value.status == 409 and exhausted.value.largest_free_prefix is None
    assert "largestFreePrefix" in exhausted.value.details
    assert not exhausted.value.replayed
    # The same key again gets the remembered refusal, marked as such (docs/client.md, Idempotency).
    key = unique(make, "exhausted-key")
    for replayed in (False, True):
        with pytest.raises(PoolExhausted) as again:
            tenant.ipclaims.create(unique(make, "more"), {"poolRef": pool.name}, idempotency_key=key)
        assert again.value.replayed is replayed
    # A successful write's answer says so too, in create_answer and delete_answer.
    roomy = admin.ippools.create(unique(make, "replays"), {"cidr": next_cidr(29)})
    claim_name, made_key, gone_key = unique(make, "replay-me"), unique(make, "made-key"), unique(make, "gone-key")
    answers = [
        tenant.ipclaims.create_answer(claim_name, {"poolRef": roomy.name}, idempotency_key=made_key) for _ in range(2)
    ]
    assert [(answer.created, answer.replayed) for answer in answers] == [(True, False), (True, True)]
    assert answers[0].value.status.allocated_cidr == answers[1].value.status.allocated_cidr
    deletions = [tenant.ipclaims.delete_answer(claim_name, idempotency_key=gone_key) for _ in range(2)]
    assert [(answer.created, answer.replayed) for answer in deletions] == [(False, False), (False, True)]


def test_admin_acts_for_a_tenant(make: ClientMaker) -> None:
    admin = make.admin()
    pool = admin.ippools.create(unique(make, "shared"), {"cidr": next_cidr(28)})
    acting = admin.as_tenant("acme", "web")
    claim = acting.ipclaims.create(unique(make, "by-admin"), {"poolRef": pool.name})
    assert (claim.metadata.org, claim.metadata.project) == ("acme", "web")
    assert make.tenant(ACME).ipclaims.get(claim.name).metadata.uid == claim.metadata.uid
    with pytest.raises(NotFound):
        make.tenant(GLOBEX).ipclaims.get(claim.name)  # another tenant's object is not there for it
    constructed = make.admin(tenant=ACME)
    assert constructed.ipallocations.get(claim.name).spec.cidr == claim.status.allocated_cidr
    assert claim.name in {item.name for item in admin.ipclaims.list() if item.metadata.tenant == ACME}
    acting.close()  # a derived client shares its parent's connections: closing it closes nothing
    assert admin.ippools.get(pool.name).name == pool.name


def test_a_dry_run_client_is_answered_as_its_writes_would_be_and_changes_nothing(make: ClientMaker) -> None:
    admin, tenant = make.admin(), make.tenant()
    cidr = next_cidr(30)
    pool = admin.ippools.create(unique(make, "dry"), {"cidr": cidr})
    name = unique(make, "dry-1")
    preview = tenant.dry_run().ipclaims.create(name, {"poolRef": pool.name}, labels={"app": "web"})
    assert preview.status.allocated_cidr == f"{cidr.split('/')[0]}/32" and preview.metadata.labels == {"app": "web"}
    with pytest.raises(NotFound):
        tenant.ipclaims.get(name)  # a read on any member after the dry run: nothing was written
    claim = tenant.ipclaims.create(name, {"poolRef": pool.name})
    assert claim.status.allocated_cidr == preview.status.allocated_cidr, "the address the dry run showed"
    with pytest.raises(PoolExhausted):
        tenant.dry_run().ipclaims.create(unique(make, "dry-2"), {"poolRef": pool.name, "prefixLength": 30})
    with pytest.raises(Conflict):
        admin.dry_run().ippools.delete(pool.name)  # the claim holds it
    assert tenant.dry_run().ipclaims.label(name, {"team": "blue"}).metadata.labels == {"team": "blue"}
    assert tenant.dry_run().ipclaims.delete(name).name == name
    kept = tenant.ipclaims.get(name)
    assert kept.metadata.uid == claim.metadata.uid and kept.metadata.labels == {}
    assert kept.metadata.resource_version == claim.metadata.resource_version
    tenant.ipclaims.delete(name)
    admin.ippools.delete(pool.name)


def test_member_status(make: ClientMaker) -> None:
    client = make.admin()
    cluster = make.cluster
    assert client.status().member_id in cluster.member_ids
    for member_id, endpoint in zip(cluster.member_ids, endpoints_of(cluster), strict=True):
        status = client.status(endpoint)
        assert status.member_id == member_id and status.pid == cluster.members[member_id].pid
        assert status.build_id == build_id()
        assert status.last_log_index is not None and status.commit_index is not None
        assert status.last_log_index >= status.commit_index
    reports = client.cluster_status()
    assert [report.endpoint for report in reports] == endpoints_of(cluster)
    assert all(report.reachable and report.ready for report in reports)
    statuses = [report.status for report in reports if report.status is not None]
    assert len({status.leader for status in statuses}) == 1
    assert sum(status.role == "leader" for status in statuses) == 1


def test_sync_client_keeps_its_connection_alive(cluster: Cluster) -> None:
    with Client(endpoints_of(cluster), cluster.admin_token) as client:
        for _ in range(20):
            client.ippools.list_page(limit=1)
            client.status()
        assert client._transport.connections_opened == 1, "keep-alive: one connection for 40 calls"


# ---- one AsyncClient, several event loops -----------------------------------------------------------


def unclosed_aiohttp_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """aiohttp's warnings about a session or connector nobody closed. (A pooled connection
    left in a closed loop is closed by Python when collected, with a warning of its own: no
    client can close a socket whose loop is gone, so those are not counted.)"""
    return [
        str(w.message)
        for w in caught
        if "Unclosed client session" in str(w.message) or "Unclosed connector" in str(w.message)
    ]


def test_an_async_client_moves_to_a_new_event_loop_once_its_first_is_closed(cluster: Cluster) -> None:
    cluster.ensure_all_running()
    client = AsyncClient(endpoints_of(cluster), cluster.admin_token, deadline=10)
    assert asyncio.run(client.status()).member_id in cluster.member_ids  # the loop closes with a pooled connection
    first_session = client._transport._session

    async def second_run() -> tuple[tuple[Any, ...], Any]:
        try:  # concurrent calls in the new loop: one new session, made by whichever comes first
            answers = await asyncio.gather(client.status(), client.ippools.list_page(limit=1), client.status())
            return answers, client._transport._session
        finally:
            await client.close()

    gc.collect()  # what earlier tests left behind is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answers, second_session = asyncio.run(second_run())
        gc.collect()
    assert answers[0].member_id in cluster.member_ids and answers[1].items is not None
    assert first_session is not None and second_session is not None and second_session is not first_session
    assert first_session.closed and second_session.closed
    assert unclosed_aiohttp_warnings(caught) == [], "the first loop's session was closed, and no other was leaked"
    with pytest.raises(RuntimeError, match="the client is closed"):
        asyncio.run(client.status())


def test_an_async_client_refuses_a_second_event_loop_while_its_first_is_open(cluster: Cluster) -> None:
    cluster.ensure_all_running()
    client = AsyncClient(endpoints_of(cluster), cluster.admin_token, timeout=2, deadline=3)
    first = asyncio.new_event_loop()
    try:
        first.run_until_complete(client.status())
        for use in (client.status, client.close):
            with pytest.raises(RuntimeError, match="belongs to another event loop, which is still open: create one"):
                asyncio.run(use())
        assert first.run_until_complete(client.status()).member_id in cluster.member_ids, "its own loop still works"
    finally:
        first.run_until_complete(client.close())
        first.close()


def test_an_async_watch_resumes_in_a_new_event_loop(cluster: Cluster) -> None:
    cluster.ensure_all_running()
    prefix = "loops-"
    with Client(endpoints_of(cluster), cluster.admin_token) as writer:
        start = writer.ippools.list_page(limit=1).resource_version
        client = AsyncClient(endpoints_of(cluster), cluster.admin_token)
        stream = client.watch(["ippools"], start)

        async def next_named() -> WatchEvent:
            while True:
                event = await stream.next_event(event_wait_s)
                assert event is not None, f"no watch event within {event_wait_s} s"
                if event.object.name.startswith(prefix):
                    return event

        async def then_close() -> tuple[WatchEvent, int]:
            try:
                return await next_named(), stream.connections
            finally:
                await stream.close()
                await client.close()

        writer.ippools.create(f"{prefix}1", {"cidr": next_cidr(28)})
        first = asyncio.run(next_named())  # the loop closes with the stream's connection open
        writer.ippools.create(f"{prefix}2", {"cidr": next_cidr(28)})
        second, connections = asyncio.run(then_close())
    assert [(first.type, first.object.name), (second.type, second.object.name)] == [
        ("ADDED", f"{prefix}1"),
        ("ADDED", f"{prefix}2"),
    ]
    assert connections == 2, "the connection of the closed loop was replaced, and the stream resumed after it"


# ---- watch -----------------------------------------------------------------------------------------


def next_events(stream: Any, count: int, prefix: str) -> list[WatchEvent]:
    """`count` events about objects named `prefix...`, each within `event_wait_s`."""
    events: list[WatchEvent] = []
    while len(events) < count:
        event = stream.next_event(event_wait_s)
        assert event is not None, f"no watch event within {event_wait_s} s; have {[e.object.name for e in events]}"
        if event.object.name.startswith(prefix):
            events.append(event)
    return events


def test_watch_resumes_after_its_member_is_killed(make: ClientMaker) -> None:
    cluster = make.cluster
    admin, writer = make.admin(), make.tenant(deadline=30)
    pool = admin.ippools.create(unique(make, "watched"), {"cidr": next_cidr(28)})
    prefix = unique(make, "w-")
    start = writer.ipclaims.list_page(limit=1).resource_version
    assert start is not None
    stream = make.tenant().watch(["ipclaims"], start)
    victim = None
    try:
        for number in range(3):
            writer.ipclaims.create(f"{prefix}{number}", {"poolRef": pool.name})
        events = next_events(stream, 3, prefix)
        assert stream.endpoint is not None
        victim = next(m for m in cluster.member_ids if f"http://{cluster.address(m)}" == stream.endpoint)
        cluster.kill(victim)
        for number in range(3, 5):
            writer.ipclaims.create(f"{prefix}{number}", {"poolRef": pool.name})
        writer.ipclaims.delete(f"{prefix}0")
        events += next_events(stream, 3, prefix)
        assert stream.connections >= 2 and stream.endpoint not in (None, f"http://{cluster.address(victim)}")
        reports = make.admin(timeout=1.0).cluster_status()
        assert [report.reachable for report in reports].count(False) == 1
    finally:
        stream.close()
        if victim is not None:
            cluster.restart(victim)

    got = [(event.type, event.object.name) for event in events]
    expected = [("ADDED", f"{prefix}{number}") for number in range(5)] + [("DELETED", f"{prefix}0")]
    assert got == expected, "a resumed watch neither misses nor repeats events"
    revisions = [event.resource_version for event in events]
    assert revisions == sorted(set(revisions)), revisions
    with make.tenant().watch(["ipclaims"], start) as replay:  # the server's own record, in one stream
        assert [(e.type, e.object.name, e.resource_version) for e in next_events(replay, 6, prefix)] == [
            (*pair, revision) for pair, revision in zip(got, revisions, strict=True)
        ]


def test_a_watch_keeps_its_connection_across_waits_that_end_empty(make: ClientMaker) -> None:
    """A node agent polls its watch with a short timeout. The sync client read with the
    caller's timeout, and a socket that timed out cannot be read again: every empty wait
    dropped the connection and the next call reconnected (the member read its event log
    again for each). Now the waits end and the connection stays."""
    admin, writer = make.admin(), make.tenant()
    pool = admin.ippools.create(unique(make, "polled"), {"cidr": next_cidr(28)})
    start = writer.ipclaims.list_page(limit=1).resource_version
    assert start is not None
    stream = make.tenant().watch(["ipclaims"], start)
    try:
        for _ in range(4):
            waited_s = time.monotonic()
            assert stream.next_event(0.2) is None
            assert time.monotonic() - waited_s < 5.0
        assert stream.connections == 1, "an empty wait kept the connection"
        name = unique(make, "polled-1")
        writer.ipclaims.create(name, {"poolRef": pool.name})
        assert [event.object.name for event in next_events(stream, 1, name)] == [name]
        assert stream.connections == 1
    finally:
        stream.close()
    assert stream.next_event(0.2) is None, "a closed stream ends at once"

    # A stream dropped without close() ends its connection (and the sync client's reader thread).
    def readers() -> set[threading.Thread]:
        return {thread for thread in threading.enumerate() if thread.name == "allot-watch-reader"}

    before = readers()
    dropped = make.tenant().watch(["ipclaims"], start)
    assert dropped.next_event(event_wait_s) is not None, "connected: it replays the claim made above"
    its_reader = readers() - before
    assert len(its_reader) == (1 if make.flavour == "sync" else 0), its_reader
    del dropped
    gc.collect()
    wait_until("the dropped stream's reader thread to end", lambda: not (its_reader & readers()), 5.0)


# ---- faults: a frozen leader, a lost quorum ---------------------------------------------------------


def test_outcome_unknown_while_the_leader_is_frozen_then_the_key_applies_once(make: ClientMaker) -> None:
    cluster = make.cluster
    leader = cluster.wait_for_leader()
    pool = make.admin().ippools.create(unique(make, "frozen"), {"cidr": next_cidr(28)})
    name = unique(make, "frozen-claim")
    spec = {"poolRef": pool.name}
    deadline_s = 2.0
    only_leader = make.tenant(endpoints=endpoints_of(cluster, [leader]), timeout=0.6, deadline=deadline_s)
    cluster.stop(leader)  # connections are still accepted by the kernel; nothing answers
    try:
        started_s = time.monotonic()
        with pytest.raises(OutcomeUnknown) as raised:
            only_leader.ipclaims.create(name, spec)
        assert time.monotonic() - started_s <= deadline_s + slack_s
        key = raised.value.idempotency_key
        assert key is not None and key in raised.value.message and raised.value.code == "outcome_unknown"
        with pytest.raises(Unavailable) as read_failed:
            only_leader.ipclaims.get(name, deadline=0.8)
        assert not isinstance(read_failed.value, OutcomeUnknown), "a read has no outcome to be unsure of"
    finally:
        cluster.cont(leader)

    everyone = make.tenant(deadline=30)
    claim = everyone.ipclaims.create(name, spec, idempotency_key=key)
    assert everyone.ipclaims.create(name, spec, idempotency_key=key).metadata.uid == claim.metadata.uid
    allocations = [item for item in everyone.ipallocations.list() if item.name == name]
    assert [item.spec.cidr for item in allocations] == [claim.status.allocated_cidr], "applied exactly once"


def test_no_leader_and_unavailable_without_a_quorum(make: ClientMaker) -> None:
    # A member alone after a full stop knows no leader and answers 503 no_leader. (A member left
    # alone while running keeps naming its dead leader instead: see the note in docs/client.md.)
    cluster = make.cluster
    pool = make.admin().ippools.create(unique(make, "quorum"), {"cidr": next_cidr(28)})
    survivor = cluster.member_ids[0]
    name = unique(make, "nl")
    try:
        cluster.kill_all()
        cluster.start_member(survivor)
        wait_until(
            f"{survivor} to answer with no leader",
            lambda: (status := cluster.status(survivor)) is not None and status.get("leader") is None,
            15.0,
        )
        single = make.tenant(endpoints=endpoints_of(cluster, [survivor]), retry=RetryPolicy(attempts_max=1))
        with pytest.raises(NoLeader) as no_leader:
            single.ipclaims.create(name, {"poolRef": pool.name})
        assert no_leader.value.status == 503 and (no_leader.value.retry_after_s or 0) >= 1
        deadline_s = 1.5
        everyone = make.tenant(deadline=deadline_s)
        started_s = time.monotonic()
        with pytest.raises(Unavailable) as unavailable:
            everyone.ipclaims.create(name, {"poolRef": pool.name})
        assert time.monotonic() - started_s <= deadline_s + slack_s
        assert not isinstance(unavailable.value, OutcomeUnknown), "refused everywhere: nothing could apply"
    finally:
        cluster.ensure_all_running()
    with pytest.raises(NotFound):
        make.tenant(deadline=30).ipclaims.get(name)


# ---- failover: concurrent claims while the leader is SIGKILLed ---------------------------------------

workers_count = 8
claims_per_worker = 25
kill_after_claims = 40
failover_deadline_s = 20.0
failover_attempt_timeout_s = 3.0


@dataclass(frozen=True)
class Outcome:
    name: str
    cidr: str | None
    error: str | None
    started_s: float
    ended_s: float


def check_failover(
    cluster: Cluster, outcomes: list[Outcome], prefix: str, killed_s: float, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(outcomes) == workers_count * claims_per_worker
    failed = [outcome for outcome in outcomes if outcome.error is not None]
    assert not failed, f"{len(failed)} claims failed, e.g. {failed[:3]}"
    slowest = max(outcome.ended_s - outcome.started_s for outcome in outcomes)
    assert slowest <= failover_deadline_s + slack_s, f"a call took {slowest:.1f} s"
    straddled = [outcome for outcome in outcomes if outcome.started_s < killed_s < outcome.ended_s]
    assert straddled, "no call was in flight when the leader died: the test did not test failover"
    with capsys.disabled():  # numbers a reader of the run wants to see
        print(
            f"\n  failover {prefix}: {len(outcomes)} claims, {len(straddled)} in flight at the kill, "
            f"slowest {slowest:.2f} s (deadline {failover_deadline_s:g} s)"
        )

    reader = next(member_id for member_id in cluster.member_ids if cluster.members[member_id].running)
    held = [
        item
        for item in cluster.list_all(
            reader, "ipallocations", token=cluster.tenant_tokens[ACME], consistency="linearizable"
        )
        if item["metadata"]["name"].startswith(prefix)
    ]
    by_name = collections.defaultdict(list)
    for item in held:
        by_name[item["metadata"]["name"]].append(item["spec"]["cidr"])
    for outcome in outcomes:
        assert by_name.get(outcome.name) == [outcome.cidr], (
            f"{outcome.name}: answered {outcome.cidr}, held {by_name.get(outcome.name)}"
        )
    assert set(by_name) == {outcome.name for outcome in outcomes}, "an allocation nobody asked for"
    cidrs = collections.Counter(item["spec"]["cidr"] for item in held)
    assert not [cidr for cidr, count in cidrs.items() if count > 1], "an address is held twice"


def failover_pool(cluster: Cluster, flavour: str) -> str:
    name = f"{flavour}-failover"
    with Client(endpoints_of(cluster), cluster.admin_token, deadline=30) as admin:
        admin.ippools.create(name, {"cidr": next_cidr(22)})
    return name


def restore(cluster: Cluster, leader: str) -> None:
    cluster.start_member(leader)
    cluster.ensure_all_running()


def test_failover_sync_client_threads(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    leader = cluster.ensure_all_running()
    pool = failover_pool(cluster, "sync")
    prefix = "sync-fo-"
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    client = Client(
        endpoints_of(cluster),
        cluster.tenant_tokens[ACME],
        timeout=failover_attempt_timeout_s,
        deadline=failover_deadline_s,
    )

    def work(worker: int) -> None:
        for number in range(claims_per_worker):
            name = f"{prefix}{worker}-{number}"
            started_s = time.monotonic()
            cidr = error = None
            try:
                cidr = client.ipclaims.create(name, {"poolRef": pool}).status.allocated_cidr
            except AllotError as exc:
                error = repr(exc)
            with lock:
                outcomes.append(Outcome(name, cidr, error, started_s, time.monotonic()))

    threads = [threading.Thread(target=work, args=(worker,), daemon=True) for worker in range(workers_count)]
    with client:
        for thread in threads:
            thread.start()
        try:
            wait_until("claims before the kill", lambda: len(outcomes) >= kill_after_claims, 60.0)
            killed_s = time.monotonic()
            cluster.kill(leader)
        finally:
            for thread in threads:
                thread.join(failover_deadline_s * claims_per_worker)
        assert not any(thread.is_alive() for thread in threads)
    restore(cluster, leader)
    check_failover(cluster, outcomes, prefix, killed_s, capsys)


def test_failover_async_client_tasks(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    leader = cluster.ensure_all_running()
    pool = failover_pool(cluster, "async")
    prefix = "async-fo-"
    outcomes: list[Outcome] = []
    killed_at: list[float] = []

    async def work(client: AsyncClient, worker: int) -> None:
        for number in range(claims_per_worker):
            name = f"{prefix}{worker}-{number}"
            started_s = time.monotonic()
            cidr = error = None
            try:
                cidr = (await client.ipclaims.create(name, {"poolRef": pool})).status.allocated_cidr
            except AllotError as exc:
                error = repr(exc)
            outcomes.append(Outcome(name, cidr, error, started_s, time.monotonic()))

    async def kill_leader_midway() -> None:
        give_up_s = time.monotonic() + 60.0
        while len(outcomes) < kill_after_claims:
            assert time.monotonic() < give_up_s, "no progress before the kill"
            await asyncio.sleep(0.02)
        killed_at.append(time.monotonic())
        await asyncio.to_thread(cluster.kill, leader)

    async def run() -> None:
        async with AsyncClient(
            endpoints_of(cluster),
            cluster.tenant_tokens[ACME],
            timeout=failover_attempt_timeout_s,
            deadline=failover_deadline_s,
        ) as client:
            await asyncio.gather(kill_leader_midway(), *(work(client, worker) for worker in range(workers_count)))

    try:
        asyncio.run(run())
    finally:
        restore(cluster, leader)
    check_failover(cluster, outcomes, prefix, killed_at[0], capsys)
