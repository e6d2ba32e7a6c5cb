"""The client's sans-io core, without a network: requests, the error table, retry decisions,
back-off bounds, giving up (OutcomeUnknown for writes that may have applied), watch resumption,
parsing, and the rule that client/ never imports the server's packages."""

from __future__ import annotations

import ast
import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from chaos.cluster import free_ports, wait_until
from client import AsyncClient, Client, core, errors
from client.core import Call, Done, Endpoint, EndpointRing, Failure, Pause, RequestFactory, RetryPolicy, Safety
from client.errors import (
    AllotError,
    Gone,
    Invalid,
    NoLeader,
    NotFound,
    OutcomeUnknown,
    PoolExhausted,
    ProtocolError,
    RequestRefused,
    ServerError,
    Unavailable,
)
from client.models import IPAllocation, IPClaim, IPClass, IPPool, MemberStatus, Page, parse_object
from node.http import ERROR_STATUS  # only to check the client covers it: client/ itself never imports node/

REPO_ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = REPO_ROOT / "client"
TOKEN = "t" * 40
E1, E2, E3 = (Endpoint("http", "127.0.0.1", port) for port in (8401, 8402, 8403))


class FixedRandom:
    """A random source returning one value: the back-off at its ceiling (0.0) or floor (~1.0)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def error_body(code: str, message: str = "m", details: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "details": details or {}}}).encode()


def factory() -> RequestFactory:
    return RequestFactory(TOKEN)


def new_call(
    request: core.Request, policy: RetryPolicy | None = None, ring: EndpointRing | None = None, random: float = 0.0
) -> Call:
    return Call(request, policy or RetryPolicy(), ring or EndpointRing([E1, E2, E3]), 0.0, FixedRandom(random))


# ---- the error table -----------------------------------------------------------------------------


def test_error_table_covers_every_code_the_server_has() -> None:
    missing = sorted(set(ERROR_STATUS) - set(errors.ERROR_CLASSES))
    assert not missing, f"codes without an exception class: {missing}"
    for code, status in ERROR_STATUS.items():
        cls = errors.ERROR_CLASSES[code]
        assert cls.default_code == code, (code, cls)
        assert cls.default_status == status, (code, cls.default_status, status)
        raised = errors.error_from_answer(status, error_body(code, "why"))
        assert type(raised) is cls and raised.code == code and raised.status == status and raised.message == "why"


def test_one_exception_class_per_code() -> None:
    classes = list(errors.ERROR_CLASSES.values())
    assert len(classes) == len(set(classes))
    assert all(issubclass(cls, AllotError) for cls in classes)


def test_typed_details() -> None:
    exhausted = errors.error_from_answer(409, error_body("pool_exhausted", details={"largestFreePrefix": 29}))
    assert isinstance(exhausted, PoolExhausted) and exhausted.largest_free_prefix == 29
    full = errors.error_from_answer(409, error_body("pool_exhausted", details={"largestFreePrefix": None}))
    assert isinstance(full, PoolExhausted) and full.largest_free_prefix is None
    invalid = errors.error_from_answer(400, error_body("invalid", details={"field": "spec.prefixLength"}))
    assert isinstance(invalid, Invalid) and invalid.field == "spec.prefixLength"
    unknown = errors.error_from_answer(504, error_body("outcome_unknown", details={"requestId": "k-1"}))
    assert isinstance(unknown, OutcomeUnknown) and unknown.idempotency_key == "k-1"
    gone = errors.error_from_payload({"code": "gone", "message": "old", "details": {"compactedRevision": 7}})
    assert isinstance(gone, Gone) and gone.status == 410 and gone.compacted_revision == 7
    no_leader = errors.error_from_answer(503, error_body("no_leader"), retry_after="2")
    assert isinstance(no_leader, NoLeader) and isinstance(no_leader, Unavailable) and no_leader.retry_after_s == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [(418, RequestRefused), (409, RequestRefused), (503, Unavailable), (502, ServerError), (302, ProtocolError)],
)
def test_unknown_codes_map_by_status(status: int, expected: type[AllotError]) -> None:
    raised = errors.error_from_answer(status, error_body("a_code_from_the_future"))
    assert type(raised) is expected and raised.code == "a_code_from_the_future" and raised.status == status


def test_an_answer_that_is_not_the_api_s_still_gives_an_error() -> None:
    raised = errors.error_from_answer(502, b"<html>Bad Gateway</html>")
    assert type(raised) is ServerError and "Bad Gateway" in raised.message
    long_page = errors.error_from_answer(500, b"x" * 100_000)
    assert len(long_page.message) < errors.error_message_chars_max + 100


# ---- requests --------------------------------------------------------------------------------


def test_create_request() -> None:
    request = factory().create(core.IPCLAIMS, "web-1", {"poolRef": "edge"}, labels={"tier": "web"}, namespace="ns")
    assert (request.method, request.path, request.query, request.write) == ("POST", "/v1/ipclaims", (), True)
    assert json.loads(request.body or b"") == {
        "name": "web-1",
        "spec": {"poolRef": "edge"},
        "labels": {"tier": "web"},
        "namespace": "ns",
    }
    assert request.header("authorization") == f"Bearer {TOKEN}"
    assert request.header("content-type") == "application/json"
    key = request.header("Idempotency-Key")
    assert key is not None and key == request.idempotency_key and len(key) == 32
    again = factory().create(core.IPCLAIMS, "web-1", {"poolRef": "edge"})
    assert again.idempotency_key != key, "each logical write gets its own key"
    chosen = factory().create(core.IPCLAIMS, "web-1", None, idempotency_key="mine-1")
    assert chosen.header("Idempotency-Key") == "mine-1" and json.loads(chosen.body or b"")["spec"] == {}


def test_request_checks() -> None:
    with pytest.raises(ValueError, match="idempotency key"):
        factory().create(core.IPCLAIMS, "a", {}, idempotency_key="has space")
    with pytest.raises(ValueError, match="idempotency key"):
        factory().create(core.IPCLAIMS, "a", {}, idempotency_key="k" * 129)
    with pytest.raises(ValueError, match="not namespaced"):
        factory().get(core.IPPOOLS, "edge", namespace="x")
    with pytest.raises(ValueError, match="consistency"):
        factory().list(core.IPPOOLS, consistency="eventual")
    with pytest.raises(ValueError, match="cannot be created"):
        factory().create(core.IPALLOCATIONS, "a", {})
    with pytest.raises(ValueError, match="empty"):
        factory().get(core.IPPOOLS, "")


def test_reads_paths_and_queries() -> None:
    tenant = factory().for_tenant("acme", "web")
    listing = tenant.list(core.IPCLAIMS, limit=2, continue_token="abc", label_selector="a=b", namespace="ns")
    assert listing.method == "GET" and not listing.write and listing.body is None
    assert listing.target == "/v1/ipclaims?limit=2&continue=abc&labelSelector=a%3Db&namespace=ns&org=acme&project=web"
    pool = factory().get(core.IPPOOLS, "web/edge", consistency="stale")
    assert pool.target == "/v1/ippools/web%2Fedge?consistency=stale", "a slash in a pool name stays in the name"
    assert tenant.status().target == "/v1/status", "status takes no tenant"
    assert factory().delete(core.IPCLAIMS, "c", namespace="ns").target == "/v1/ipclaims/c?namespace=ns"
    watch = factory().watch(("ipclaims", "ippools"), 41)
    assert watch.target == "/v1/watch?kinds=ipclaims%2Cippools&resourceVersion=41"
    raw = factory().raw("delete", "/v1/ipallocations/x")
    assert raw.method == "DELETE" and raw.write and raw.idempotency_key


def test_platform_writes_are_sent_without_the_tenant_even_when_acting_for_one() -> None:
    """The server refuses class, node and quota writes from an admin acting for a tenant; a
    client made with as_tenant sends them for the platform, and keeps the tenant's view on reads."""
    tenant = factory().for_tenant("acme", "web")
    for kind, name in ((core.IPCLASSES, "gold"), (core.NODES, "n1"), (core.QUOTAS, "acme/web")):
        assert tenant.create(kind, name, {}).target == f"/v1/{kind.plural}"
        assert "org=" not in tenant.delete(kind, name).target
        assert tenant.get(kind, name).target.endswith("?org=acme&project=web")
    assert tenant.create(core.IPCLAIMS, "c", {}).target == "/v1/ipclaims?org=acme&project=web"


def test_endpoints_and_settings() -> None:
    assert core.parse_endpoints("127.0.0.1:8401, http://127.0.0.1:8402,,http://127.0.0.1:8402") == (E1, E2)
    assert core.parse_endpoint("https://allot.example").port == 443
    for bad in ("ftp://x:1", "http://x:1/path", "http://:1", "http://x:99999"):
        with pytest.raises(ValueError):
            core.parse_endpoint(bad)
    endpoints, token = core.resolve_settings(None, None, {"ALLOT_ENDPOINTS": "h:1,h:2", "ALLOT_TOKEN": "tok"})
    assert [endpoint.url for endpoint in endpoints] == ["http://h:1", "http://h:2"] and token == "tok"
    endpoints, token = core.resolve_settings(["h:3"], "given", {"ALLOT_ENDPOINTS": "h:1", "ALLOT_TOKEN": "tok"})
    assert [endpoint.url for endpoint in endpoints] == ["http://h:3"] and token == "given"
    endpoints, token = core.resolve_settings(None, None, {})
    assert tuple(endpoint.url for endpoint in endpoints) == core.DEFAULT_ENDPOINTS and token is None
    assert core.parse_tenant("acme/web") == ("acme", "web")
    with pytest.raises(ValueError):
        core.parse_tenant("acme")


def test_decode_answer() -> None:
    assert core.decode_answer(200, {}, b'{"a":1}') == {"a": 1}
    with pytest.raises(ProtocolError):
        core.decode_answer(200, {}, b"<html>")
    with pytest.raises(NotFound):
        core.decode_answer(404, {}, error_body("not_found"))


# ---- retry decisions ---------------------------------------------------------------------------

# (what happened, whether a read is retried, whether a write is retried, write may have applied)
OUTCOMES: list[tuple[str, bool, bool, bool]] = [
    ("connect", True, True, False),
    ("timeout", True, True, True),
    ("lost", True, True, True),
    ("503 no_leader", True, True, False),
    ("503 overloaded", True, True, False),
    ("503 unavailable", True, True, False),
    ("504 outcome_unknown", True, True, True),
    ("504 timeout", True, True, False),
    ("502 bad_gateway", True, True, True),
    ("500 internal", False, False, False),
    ("400 invalid", False, False, False),
    ("401 unauthorized", False, False, False),
    ("404 not_found", False, False, False),
    ("408 request_timeout", False, False, False),
    ("409 conflict", False, False, False),
    ("409 pool_exhausted", False, False, False),
    ("410 gone", False, False, False),
    ("413 too_large", False, False, False),
]


def _happen(call: Call, attempt: core.Attempt, outcome: str) -> Pause | Done:
    if " " not in outcome:
        return call.failed(attempt, Failure(outcome), "it happened", 0.0)
    status, code = outcome.split(" ")
    return call.answered(attempt, int(status), {}, error_body(code), 0.0)


@pytest.mark.parametrize(("outcome", "read_retried", "write_retried", "maybe_applied"), OUTCOMES)
def test_retry_decisions(outcome: str, read_retried: bool, write_retried: bool, maybe_applied: bool) -> None:
    for request, retried in (
        (factory().get(core.IPPOOLS, "p"), read_retried),
        (factory().delete(core.IPPOOLS, "p"), write_retried),
    ):
        call = new_call(request)
        attempt = call.next_attempt(0.0)
        if retried:
            assert isinstance(_happen(call, attempt, outcome), Pause)
            assert call.maybe_applied == (maybe_applied and request.write)
        else:
            with pytest.raises(AllotError):
                _happen(call, attempt, outcome)
            assert call.attempts == 1


def test_every_4xx_code_is_never_retried() -> None:
    for code, status in ERROR_STATUS.items():
        error = errors.error_from_answer(status, error_body(code))
        if 400 <= status < 500:
            assert core.safety_of(error) is Safety.NEVER, code
        elif status in (503, 504):
            assert core.safety_of(error) is not Safety.NEVER, code


def test_failover_moves_on_at_once_then_backs_off() -> None:
    ring = EndpointRing([E1, E2, E3], start_index=1)
    call = new_call(factory().get(core.IPPOOLS, "p"), ring=ring)
    tried = []
    pauses = []
    for _ in range(6):
        attempt = call.next_attempt(0.0)
        tried.append(attempt.endpoint)
        pauses.append(call.failed(attempt, Failure.CONNECT, "refused", 0.0).seconds)
    assert tried == [E2, E3, E1, E2, E3, E1], "round robin from the preferred member"
    assert pauses == [0.0, 0.0, 0.05, 0.0, 0.0, 0.1], "no pause within a round; back-off between rounds"


def test_the_member_that_answered_is_tried_first_next_time() -> None:
    ring = EndpointRing([E1, E2, E3])
    call = new_call(factory().get(core.IPPOOLS, "p"), ring=ring)
    call.failed(call.next_attempt(0.0), Failure.CONNECT, "refused", 0.0)
    attempt = call.next_attempt(0.0)
    assert attempt.endpoint == E2
    step = call.answered(attempt, 200, {}, b"{}", 0.0)
    assert isinstance(step, Done) and ring.preferred == E2
    assert new_call(factory().get(core.IPPOOLS, "p"), ring=ring).next_attempt(0.0).endpoint == E2
    refused = new_call(factory().get(core.IPPOOLS, "p"), ring=ring)
    with pytest.raises(NotFound):
        refused.answered(refused.next_attempt(0.0), 404, {}, error_body("not_found"), 0.0)
    assert ring.preferred == E2, "a refusal is an answer: the member is fine"


def test_retry_after_is_honoured_but_bounded() -> None:
    policy = RetryPolicy(retry_after_max_s=1.5)
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=policy, ring=EndpointRing([E1]))
    pause = call.answered(call.next_attempt(0.0), 503, {"retry-after": "1"}, error_body("no_leader"), 0.0)
    assert isinstance(pause, Pause) and pause.seconds == 1.0
    pause = call.answered(call.next_attempt(1.0), 503, {"retry-after": "30"}, error_body("no_leader"), 1.0)
    assert isinstance(pause, Pause) and pause.seconds == 1.5


def test_a_retry_hint_in_milliseconds_is_preferred_to_whole_seconds() -> None:
    call = new_call(factory().get(core.IPPOOLS, "p"), ring=EndpointRing([E1]))
    hinted = error_body("no_leader", details={"retryAfterSeconds": 1, "retryAfterMillis": 100})
    pause = call.answered(call.next_attempt(0.0), 503, {"retry-after": "1"}, hinted, 0.0)
    assert isinstance(pause, Pause) and pause.seconds == pytest.approx(0.1)
    assert core.retry_after_hint_s({"retryAfterSeconds": 2}) == 2.0
    assert core.retry_after_hint_s({"retryAfterMillis": True, "retryAfterSeconds": 1}) == 1.0
    assert core.retry_after_hint_s({"retryAfterMillis": -5}) is None


def test_backoff_bounds() -> None:
    policy = RetryPolicy(backoff_initial_s=0.05, backoff_multiplier=2.0, backoff_max_s=1.0, jitter=0.5)
    previous_ceiling = 0.0
    for round_number in range(1, 40):
        ceiling = policy.backoff_s(round_number, FixedRandom(0.0))
        floor = policy.backoff_s(round_number, FixedRandom(0.999999))
        assert previous_ceiling <= ceiling <= policy.backoff_max_s
        assert ceiling * (1 - policy.jitter) - 1e-9 <= floor <= ceiling
        previous_ceiling = ceiling
    assert policy.backoff_s(1, FixedRandom(0.0)) == 0.05 and policy.backoff_s(39, FixedRandom(0.0)) == 1.0
    with pytest.raises(ValueError):
        RetryPolicy(attempts_max=0)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=2)


def test_per_call_overrides() -> None:
    policy = RetryPolicy(attempt_timeout_s=5.0, deadline_s=30.0)
    assert policy.with_overrides(None, None) == policy
    changed = policy.with_overrides(timeout_s=0.5, deadline_s=2.0)
    assert (changed.attempt_timeout_s, changed.deadline_s, changed.attempts_max) == (0.5, 2.0, policy.attempts_max)
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=changed)
    assert call.next_attempt(0.0).timeout_s == 0.5 and call.next_attempt(1.8).timeout_s == pytest.approx(0.2)
    # A caller's mistake names the caller's words, not the policy's fields; an attempt takes a
    # day at most (a socket cannot take 1e10 s), a deadline may be longer (attempts bound it).
    for timeout, deadline, words in (
        (-1.0, None, "timeout must be more than 0"),
        (None, 0.0, "deadline must be more than 0 seconds"),
        (1e10, None, "timeout must be more than 0 and at most 86400 seconds, not 10000000000.0"),
        (float("nan"), None, "timeout must be more than 0"),
    ):
        with pytest.raises(ValueError, match=words):
            policy.with_overrides(timeout, deadline)
    assert policy.with_overrides(86_400.0, 1e9).deadline_s == 1e9


def test_write_that_may_have_applied_gives_outcome_unknown_with_its_key() -> None:
    request = factory().create(core.IPCLAIMS, "c", {"poolRef": "p"})
    policy = RetryPolicy(deadline_s=3.0, attempt_timeout_s=1.0)
    call = new_call(request, policy=policy)
    now_s = 0.0
    with pytest.raises(OutcomeUnknown) as raised:
        for _ in range(100):
            attempt = call.next_attempt(now_s)
            assert attempt.timeout_s <= min(1.0, 3.0 - now_s) + 1e-9, "an attempt never outlives the deadline"
            now_s += attempt.timeout_s
            now_s += call.failed(attempt, Failure.TIMEOUT, "no answer", now_s).seconds
    assert raised.value.idempotency_key == request.idempotency_key
    assert now_s <= 3.0 + 1e-9, "the call gave up within its deadline"
    assert request.idempotency_key is not None and request.idempotency_key in raised.value.message


def test_write_that_never_left_gives_unavailable() -> None:
    request = factory().create(core.IPCLAIMS, "c", {"poolRef": "p"})
    call = new_call(request, policy=RetryPolicy(attempts_max=4))
    with pytest.raises(Unavailable) as raised:
        for _ in range(20):
            call.failed(call.next_attempt(0.0), Failure.CONNECT, "refused", 0.0)
    assert not isinstance(raised.value, OutcomeUnknown)
    assert "nothing was applied" in raised.value.message
    assert raised.value.details["attempts"] == 12, "4 attempts per member, 3 members"
    assert "12 attempts made" in raised.value.message


def test_a_server_outcome_unknown_is_passed_on_with_the_same_key() -> None:
    request = factory().create(core.IPCLAIMS, "c", {"poolRef": "p"})
    call = new_call(request, policy=RetryPolicy(attempts_max=1), ring=EndpointRing([E1]))
    body = error_body("outcome_unknown", details={"requestId": request.idempotency_key})
    with pytest.raises(OutcomeUnknown) as raised:
        call.answered(call.next_attempt(0.0), 504, {}, body, 0.0)
    assert raised.value.idempotency_key == request.idempotency_key and raised.value.status == 504


def test_read_gives_up_with_the_last_member_error_or_unavailable() -> None:
    one_round = RetryPolicy(attempts_max=1)  # one attempt per member
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=one_round, ring=EndpointRing([E1, E2]))
    call.failed(call.next_attempt(0.0), Failure.TIMEOUT, "slow", 0.0)
    with pytest.raises(NoLeader):
        call.answered(call.next_attempt(0.0), 503, {}, error_body("no_leader"), 0.0)
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=RetryPolicy(deadline_s=0.5))
    with pytest.raises(Unavailable) as raised:
        for _ in range(100):
            call.failed(call.next_attempt(0.4), Failure.LOST, "reset", 0.4)
    assert "reset" in raised.value.message and not isinstance(raised.value, OutcomeUnknown)
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=one_round, ring=EndpointRing([E1, E2]))
    call.answered(call.next_attempt(0.0), 504, {}, error_body("timeout"), 0.0)
    with pytest.raises(Unavailable) as proxied:  # a read always ends in an Unavailable
        call.answered(call.next_attempt(0.0), 502, {}, b"<html>Bad Gateway</html>", 0.0)
    assert "Bad Gateway" in proxied.value.message and type(proxied.value) is Unavailable


def test_retry_then_success_returns_the_value() -> None:
    call = new_call(factory().create(core.IPCLAIMS, "c", {}))
    step = call.answered(call.next_attempt(0.0), 504, {}, error_body("outcome_unknown"), 0.0)
    assert isinstance(step, Pause)
    done = call.answered(call.next_attempt(0.0), 201, {}, b'{"ok":1}', 0.0)
    assert isinstance(done, Done) and done.value == {"ok": 1} and done.status == 201
    assert call.attempts == 2 and call.maybe_applied


def test_attempts_and_failure_history_are_bounded() -> None:
    call = new_call(factory().get(core.IPPOOLS, "p"), policy=RetryPolicy(attempts_max=50, deadline_s=1e9))
    with pytest.raises(Unavailable):
        for _ in range(200):
            call.failed(call.next_attempt(0.0), Failure.CONNECT, "refused", 0.0)
    assert call.attempts == 150, "50 attempts per member, 3 members"
    assert len(call.failures) == core.failures_kept_max


# ---- watch streams -----------------------------------------------------------------------------


def event_line(event_type: str, name: str, revision: int, kind: str = "IPClaim") -> bytes:
    obj = {"kind": kind, "metadata": {"name": name, "resourceVersion": revision}, "spec": {}, "status": {}}
    return json.dumps({"type": event_type, "object": obj}).encode()


def bookmark(revision: int) -> bytes:
    return json.dumps(
        {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": {"resourceVersion": revision}}}
    ).encode()


def test_line_splitter() -> None:
    splitter = core.LineSplitter(line_bytes_max=10)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde\n\nf") == [b"abc", b"de"]
    assert splitter.feed(b"g\n") == [b"fg"]
    splitter.reset()
    with pytest.raises(ProtocolError):
        splitter.feed(b"x" * 11)


def test_watch_resumes_mid_revision_without_repeating_or_missing() -> None:
    cursor = core.WatchCursor(("ipclaims",), 4)
    assert cursor.request(factory()).target == "/v1/watch?kinds=ipclaims&resourceVersion=4"
    delivered = [cursor.on_line(event_line("ADDED", "a", 5)), cursor.on_line(event_line("ADDED", "b", 6))]
    assert [event.object.name for event in delivered if event] == ["a", "b"]
    assert cursor.resource_version == 5, "revision 6 may have more events: resume before it"
    # The connection breaks; the new one starts at revision 5 and skips what was delivered.
    assert cursor.request(factory()).target.endswith("resourceVersion=5")
    assert cursor.on_line(event_line("ADDED", "b", 6)) is None, "b was delivered already"
    again = cursor.on_line(event_line("ADDED", "c", 6))
    assert again is not None and again.object.name == "c" and again.resource_version == 6
    assert cursor.on_line(bookmark(6)) is None and cursor.resource_version == 6
    # Broken again right after the bookmark: nothing to skip, nothing repeated.
    assert cursor.request(factory()).target.endswith("resourceVersion=6")
    assert cursor.on_line(event_line("ADDED", "c", 6)) is None
    late = cursor.on_line(event_line("DELETED", "a", 7))
    assert late is not None and (late.type, late.kind, late.object.name) == ("DELETED", "IPClaim", "a")


def test_a_watch_keeps_its_selectors_across_reconnections() -> None:
    cursor = core.WatchCursor(("pods",), 4, "spec.nodeName=n1", "app=web,tier!=db")
    first = cursor.request(factory()).target
    selectors = "fieldSelector=spec.nodeName%3Dn1&labelSelector=app%3Dweb%2Ctier%21%3Ddb"
    assert first == f"/v1/watch?kinds=pods&resourceVersion=4&{selectors}"
    assert cursor.on_line(event_line("ADDED", "a", 5)) is not None and cursor.on_line(bookmark(5)) is None
    assert cursor.request(factory()).target == first.replace("resourceVersion=4", "resourceVersion=5")


def test_watch_cursor_refuses_nonsense() -> None:
    cursor = core.WatchCursor(None, None)
    assert cursor.on_line(bookmark(10)) is None and cursor.resource_version == 10
    assert cursor.on_line(event_line("ADDED", "a", 9)) is None, "older than what was delivered"
    assert cursor.on_line(event_line("ADDED", "a", 12)) is not None
    with pytest.raises(ProtocolError, match="backwards"):
        cursor.on_line(event_line("ADDED", "b", 11))
    with pytest.raises(ProtocolError):
        cursor.on_line(b"not json")
    gone = json.dumps({"type": "ERROR", "object": {"error": {"code": "gone", "message": "compacted", "details": {}}}})
    with pytest.raises(Gone):
        cursor.on_line(gone.encode())


# ---- typed results -----------------------------------------------------------------------------

POOL = {
    "kind": "IPPool",
    "metadata": {"name": "edge", "org": "", "project": "", "resourceVersion": 2, "uid": "u1", "labels": {"a": "b"}},
    "spec": {"cidr": "10.0.0.0/28", "ipFamily": "IPv4", "classNames": ["gold"], "reserved": {"leading": 1}},
    "status": {
        "allocatedCIDR": "10.0.0.0/28",
        "capacity": {"total": 16, "allocated": 4, "available": 12, "reserved": 1},
        "utilization": "25.00%",
        "largestFreePrefix": 29,
        "phase": "Ready",
        "futureField": True,
    },
}


def test_models_parse_and_keep_the_raw_dict() -> None:
    pool = IPPool.parse(POOL)
    assert pool.name == "edge" and pool.metadata.labels == {"a": "b"} and pool.metadata.tenant == ""
    assert pool.spec.class_names == ("gold",) and pool.spec.reserved_leading == 1 and pool.spec.reserved_trailing == 0
    assert pool.status.capacity is not None and pool.status.capacity.used_fraction == 0.25
    assert pool.status.largest_free_prefix == 29 and pool.raw["status"]["futureField"] is True
    claim = IPClaim.parse({"kind": "IPClaim", "metadata": {"name": "c", "org": "acme", "project": "web"}})
    assert claim.metadata.tenant == "acme/web" and claim.status.allocated_cidr is None
    allocation = parse_object({"kind": "IPAllocation", "metadata": {"name": "c"}, "status": {"phase": "Bound"}})
    assert isinstance(allocation, IPAllocation) and allocation.phase == "Bound"
    assert isinstance(parse_object({"kind": "IPClass", "metadata": {"name": "g"}}), IPClass)
    future = parse_object({"kind": "Pod", "metadata": {"name": "p"}, "spec": {"x": 1}})
    assert future.kind == "Pod" and future.name == "p"
    page = Page.parse({"items": [POOL], "metadata": {"continue": "k", "resourceVersion": 3}}, IPPool.parse)
    assert page.items[0].name == "edge" and page.continue_token == "k" and page.resource_version == 3
    member = MemberStatus.parse({"memberId": "m1", "role": "leader", "term": 2, "members": ["m1", "m2"]})
    assert member.role == "leader" and member.members == ("m1", "m2") and member.applied_index is None
    assert member.digest is None and member.digest_index is None
    digested = MemberStatus.parse({"memberId": "m2", "members": [], "digest": "ab12", "digestIndex": 40})
    assert digested.digest == "ab12" and digested.digest_index == 40
    broken_objects: list[Any] = [{"metadata": {}}, {"kind": "IPPool"}, []]
    for broken in broken_objects:
        with pytest.raises(ProtocolError):
            parse_object(broken)


def test_a_repeated_continue_token_is_refused() -> None:
    page = Page.parse({"items": [], "metadata": {"continue": "same"}}, IPPool.parse)
    assert core.next_continue(None, page) == "same"
    with pytest.raises(ProtocolError):
        core.next_continue("same", page)


# ---- vendorable: client/ speaks HTTP only -------------------------------------------------------

FORBIDDEN_PACKAGES = ("node", "statemachine", "chaos", "bench", "tests")


def imported_modules(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def forbidden_imports(source: str) -> list[str]:
    return sorted(m for m in imported_modules(source) if m.split(".")[0] in FORBIDDEN_PACKAGES)


def test_the_import_checker_can_fail() -> None:
    assert forbidden_imports("import node.http\nfrom statemachine import queries\nimport json") == [
        "node.http",
        "statemachine",
    ]
    assert forbidden_imports("def f():\n    from chaos.cluster import Cluster\n") == ["chaos.cluster"]


def test_client_never_imports_the_server() -> None:
    sources = sorted(CLIENT_DIR.glob("*.py"))
    assert len(sources) >= 6
    for path in sources:
        assert not forbidden_imports(path.read_text()), f"{path.name} imports {forbidden_imports(path.read_text())}"
    probe = (
        "import sys, client, client.cli\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN_PACKAGES!r})\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_the_sync_client_runs_no_event_loop() -> None:
    source = (CLIENT_DIR / "sync.py").read_text()
    roots = {module.split(".")[0] for module in imported_modules(source)}
    assert not roots & {"asyncio", "aiohttp"}, "the sync client is the standard library's http.client, no loop"


# ---- a reconnecting watch keeps to its caller's timeout --------------------------------------


def test_reconnect_pause_ends_with_the_callers_wait() -> None:
    pause = core.reconnect_pause
    assert pause(0.0, None, False, 10.0) == core.ReconnectPause(0.0, True)
    assert pause(12.0, None, True, 10.0) == core.ReconnectPause(2.0, True), "no wait limit: the whole pause"
    assert pause(12.0, 11.0, False, 10.0) == core.ReconnectPause(1.0, False), "the pause outlasts the wait"
    assert pause(10.5, 11.0, False, 10.0) == core.ReconnectPause(0.5, True)
    assert pause(0.0, 9.0, False, 10.0) == core.ReconnectPause(0.0, True), "a call's first attempt is made"
    assert pause(0.0, 9.0, True, 10.0) == core.ReconnectPause(0.0, False), "but not a second one past the wait"


def test_a_watch_that_cannot_reconnect_returns_none_at_its_timeout() -> None:
    """No member listens: each attempt fails at once and the back-off pauses grow. Before, the
    stream slept through them all and answered after the client's deadline, not the call's
    timeout. Now each call returns about on time, and the outage's deadline still ends it."""
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(2)]
    wait_s, deadline_s, slack_s = 0.3, 3.0, 0.5
    with Client(endpoints, token="t", timeout=0.5, deadline=deadline_s) as client:
        stream = client.watch(["ipclaims"], 0)
        started_s = time.monotonic()
        with pytest.raises(Unavailable):
            while time.monotonic() - started_s < deadline_s + 5:
                polled_s = time.monotonic()
                assert stream.next_event(wait_s) is None
                assert time.monotonic() - polled_s <= wait_s + slack_s
        assert time.monotonic() - started_s <= deadline_s + slack_s + wait_s
        # A caller that catches Unavailable and goes on polling gets a new outage budget, not
        # the spent one again at once (a code review found it raised at every call).
        polled_s = time.monotonic()
        assert stream.next_event(wait_s) is None
        assert time.monotonic() - polled_s >= wait_s * 0.9

    async def poll_async() -> None:
        async with AsyncClient(endpoints, token="t", timeout=0.5, deadline=deadline_s) as client:
            stream = client.watch(["ipclaims"], 0)
            polled_s = time.monotonic()
            assert await stream.next_event(wait_s) is None
            assert time.monotonic() - polled_s <= wait_s + slack_s
            await stream.close()

    asyncio.run(poll_async())


def test_closing_a_watch_ends_its_reconnection_at_once() -> None:
    """QA, 2026-12-08: close() from another thread did not stop a stream that was
    reconnecting: the waiting next_event went on through its back-off pauses until the
    deadline (Unavailable 7.6 s after the close), and could open a connection after it."""
    endpoints = [f"http://127.0.0.1:{port}" for port in free_ports(2)]  # nobody listens
    with Client(endpoints, token="t", timeout=0.5, deadline=60) as client:
        stream = client.watch(["ipclaims"], 1)
        answers: list[object] = []
        waiter = threading.Thread(target=lambda: answers.append(stream.next_event(None)))
        waiter.start()
        wait_until("two failed attempts", lambda: client._transport.connections_opened >= 2, 10.0)  # then a pause
        closed_s = time.monotonic()
        stream.close()
        waiter.join(10)
        assert not waiter.is_alive() and answers == [None], answers
        assert time.monotonic() - closed_s < 2.0
        assert stream.endpoint is None


def test_a_program_that_exits_with_a_watch_open_exits_cleanly(tmp_path: Path) -> None:
    """QA, 2026-12-08: closing the stream from its finalizer at interpreter shutdown, under
    the reader thread's read, aborted the process (exit code 134). A server that answers the
    watch and then stays silent plays the member."""
    script = tmp_path / "exit_with_watch.py"
    script.write_text(
        "import socket, sys, threading\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from client import Client\n"
        "listener = socket.create_server(('127.0.0.1', 0))\n"
        "held = []\n"
        "def serve():\n"
        "    conn, _ = listener.accept()\n"
        "    held.append(conn)\n"
        "    conn.recv(65536)\n"
        "    conn.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/x-ndjson\\r\\n'\n"
        "                 b'Transfer-Encoding: chunked\\r\\n\\r\\n')\n"
        "threading.Thread(target=serve, daemon=True).start()\n"
        "client = Client(f'http://127.0.0.1:{listener.getsockname()[1]}', 'token')\n"
        "stream = client.watch(['ipclaims'], 1)\n"
        "print(stream.next_event(0.5), stream.connections)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["None", "1"], done.stdout


def test_member_status_calls_keep_to_the_deadline() -> None:
    """Members that accept connections and never answer (a stopped process): each call of
    status, ready and cluster_status ends by the client's deadline, not after one attempt's
    timeout per member (before: 5 s for status(endpoint), 15 s for cluster_status)."""
    silent = []
    for _ in range(3):
        listener = socket.create_server(("127.0.0.1", 0), backlog=8)  # listens, never accepts
        silent.append(listener)
    endpoints = [f"http://127.0.0.1:{listener.getsockname()[1]}" for listener in silent]
    deadline_s, slack_s = 1.0, 0.75
    try:
        with Client(endpoints, token="t", timeout=5.0, deadline=deadline_s) as client:
            for call in (
                lambda: client.status(endpoints[0]),
                lambda: client.ready(endpoints[0]),
                lambda: client.status(endpoints[1], deadline=0.5),
            ):
                started_s = time.monotonic()
                with pytest.raises(Unavailable):
                    call()
                assert time.monotonic() - started_s <= deadline_s + slack_s
            started_s = time.monotonic()
            reports = client.cluster_status()
            assert time.monotonic() - started_s <= deadline_s + slack_s
            assert [report.reachable for report in reports] == [False, False, False]
        # Each member asked in turn gets an equal share of the time left: a hung first member
        # does not leave the next one unasked.
        (closed_port,) = free_ports(1)
        with Client([endpoints[0], f"http://127.0.0.1:{closed_port}"], token="t", deadline=deadline_s) as client:
            hung, refused = client.cluster_status()
            assert hung.error is not None and hung.error != core.NOT_ASKED
            assert refused.error is not None and "refused" in refused.error.lower(), refused.error

        async def ask_all() -> list[Any]:
            async with AsyncClient(endpoints, token="t", timeout=5.0, deadline=deadline_s) as client:
                return await client.cluster_status()

        started_s = time.monotonic()
        assert [report.reachable for report in asyncio.run(ask_all())] == [False, False, False]
        assert time.monotonic() - started_s <= deadline_s + slack_s
    finally:
        for listener in silent:
            listener.close()
