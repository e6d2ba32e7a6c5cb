"""The HTTP API: authenticate, parse, build an Envelope, hand it to the member, map the answer.

No business logic lives here: what a command means is the state machine's business, and what
a read returns is `statemachine.queries`'. This module owns the wire: routes, tokens and
tenancy, strict JSON, limits, the one error table, watches and metrics.

Rules it keeps:

* Every answer is JSON (`/metrics` excepted), errors included, even aiohttp's own 404, 405 and
  413: `{"error": {"code", "message", "details"}}` with the status from `ERROR_STATUS`, the one
  table mapping codes to statuses. Handlers raise (`ApiError`, or the state machine's
  `Rejected`); one middleware turns every exception into a response and counts it.
* The tenant comes from the token, never from the body. An admin acts for a tenant by naming
  it in the query (`?org=&project=`); a member may name only its own tenant.
* Request bodies are JSON objects of plain data: no floats, NaN or Infinity, no duplicate keys,
  UTF-8, at most `Limits.body_bytes_max` bytes. What is refused changes nothing.
* Reads are linearizable (a read barrier first) unless `?consistency=stale`; the answer says
  which in the `X-Allot-Consistency` header (and lists in `metadata.consistency`).
* A read view is never held across an `await`: LMDB read transactions pin pages, and the local
  member's view holds its apply lock.
* JSON is written compactly with sorted keys: the same value gives the same bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from node.accelerate import build_state
from node.clock import wall_clock_ms
from node.member import Member, MemberError, NoLeaderError, OutcomeUnknownError, OverloadedError, WritesPausedError
from node.scheduling import PodPlan
from node.tokens import TokenStore
from statemachine import Outcome, claims, nodes, queries, quotas
from statemachine.codec import Envelope, Principal, encode_envelope
from statemachine.context import Meta
from statemachine.errors import GONE, OVERLOADED, Rejected
from statemachine.fields import check_node_name
from statemachine.scheduler import Cluster
from statemachine.view import ReadView

log = logging.getLogger("allot.http")

# ---- limits (named, with units) ------------------------------------------------------------

body_bytes_max = 64 * 1024  # request bodies; a claim or pool is well under 4 KiB
request_timeout_s = 10.0  # a write's commit, a read's barrier, reading a request body
watch_timeout_s_default = 300
watch_timeout_s_max = 3600
watch_heartbeat_s = 10.0  # a BOOKMARK line after this long without a line: dead peers show up
watches_max = 256  # concurrent watch streams per member
watches_per_project_max = 64  # of those, streams of one tenant project: no project takes them all
# A watch reads the event log in steps of this many records, one watch at a time
# (`Api._watch_reads`), and lets the member's other requests run between steps: 30 watches from
# revision 0 over 23,000 events, each reading 10,000 records at a time, held heartbeats for 16 s
# and every node went NotReady (QA, 2026-12-07). Yielding between steps alone still left 8.5 s.
watch_scan_step = 200
# A waiting watch looks this often for its client having gone: its slot is free within this
# (aiohttp tells a handler nothing until it writes, and a quiet watch writes every 10 s).
watch_gone_check_s = 0.5
idempotency_key_chars_max = 128  # = statemachine.codec.request_id_chars_max
member_grace_s = 1.0  # extra time a member gets to honour its own deadline before we give up
retry_after_s_min = 1  # Retry-After is whole seconds


@dataclass(frozen=True)
class Limits:
    body_bytes_max: int = body_bytes_max
    request_timeout_s: float = request_timeout_s
    watch_timeout_s_default: int = watch_timeout_s_default
    watch_timeout_s_max: int = watch_timeout_s_max
    watch_heartbeat_s: float = watch_heartbeat_s
    watches_max: int = watches_max
    watches_per_project_max: int = watches_per_project_max
    member_grace_s: float = member_grace_s
    watch_scan_step: int = watch_scan_step
    watch_gone_check_s: float = watch_gone_check_s

    def __post_init__(self) -> None:
        if self.watch_scan_step < 1 or self.watch_gone_check_s <= 0:
            raise ValueError("a watch reads at least one record a step, and looks for a gone client in a time > 0")


# ---- the one error table -------------------------------------------------------------------

ERROR_STATUS: dict[str, int] = {
    "invalid": 400,  # malformed or semantically wrong request; details.field names what to fix
    "unauthorized": 401,  # no token or an unknown one
    "forbidden": 403,  # a known principal that may not do this
    "not_found": 404,  # also another tenant's objects, and unknown routes
    "method_not_allowed": 405,
    "request_timeout": 408,  # the request body did not arrive in time
    "already_exists": 409,  # same name, a different spec or labels
    "conflict": 409,  # overlap, still in use, an Idempotency-Key reused for another request
    "pool_exhausted": 409,  # no room: a state of the pool, not a fault of the server (see DESIGN)
    "quota_exceeded": 403,  # as Kubernetes answers an exceeded ResourceQuota; details say which limit
    "unschedulable": 409,  # the pending queue is full and the pod does not fit now (see DESIGN)
    "gone": 410,  # a watch's resourceVersion was compacted away
    "too_large": 413,
    "unsupported_media_type": 415,
    "internal": 500,  # a bug; logged with its traceback
    "no_leader": 503,  # with Retry-After; nothing was proposed
    "overloaded": 503,  # with Retry-After; nothing was proposed
    "unavailable": 503,  # with Retry-After
    "not_ready": 503,  # /readyz only
    "outcome_unknown": 504,  # a write's deadline passed: retry with the same Idempotency-Key
    "timeout": 504,  # a read barrier's deadline passed; nothing changed
}


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code not in ERROR_STATUS:
            raise ValueError(f"error code {code!r} is not in the error table")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (an error message must not say `NoneType`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | _NotAnInteger):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "a JSON value of another kind"


def invalid(message: str, field_name: str | None = None) -> ApiError:
    return ApiError("invalid", message, {"field": field_name} if field_name else {})


def retry_after(code: str, message: str, retry_after_s: float, details: dict[str, Any] | None = None) -> ApiError:
    # The header speaks whole seconds (RFC 9110); an election takes a fraction of one, so the
    # body also carries the member's own estimate in milliseconds for clients that read it.
    seconds = max(retry_after_s_min, math.ceil(retry_after_s))
    millis = max(1, round(retry_after_s * 1000))
    extra = {"retryAfterSeconds": seconds, "retryAfterMillis": millis}
    return ApiError(code, message, {**(details or {}), **extra}, {"Retry-After": str(seconds)})


def from_rejected(refusal: Rejected) -> ApiError:
    if refusal.code == OVERLOADED:  # the state machine says when: a Retry-After header too
        retry_ms = refusal.details.get("retryAfterMillis", 1000)
        return retry_after(refusal.code, refusal.message, retry_ms / 1000, dict(refusal.details))
    return ApiError(refusal.code, refusal.message, dict(refusal.details))


@contextlib.contextmanager
def read_at(consistency: str) -> Iterator[None]:
    """A read's refusal (a 404, a bad selector) says how it was read, as its answer would: a
    stale 404 may be an object this member has not heard of yet."""
    try:
        yield
    except Rejected as refusal:
        error = from_rejected(refusal)
        error.headers[CONSISTENCY_HEADER] = consistency
        raise error from None


# ---- JSON ------------------------------------------------------------------------------------


def dumps(value: Any) -> bytes:
    """Compact, deterministic JSON (sorted keys, ASCII only, no NaN)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=dumps(value), status=status, headers=headers, content_type="application/json")


def error_response(error: ApiError) -> web.Response:
    body = {"error": {"code": error.code, "message": error.message, "details": error.details}}
    return json_response(body, error.status, error.headers)


class _StrictJsonError(Exception):
    pass


class _NotAnInteger(str):
    """A JSON number with a fraction or an exponent (or NaN, Infinity), kept as its text until
    the whole body is parsed, so the refusal can name the field it was given for."""


def _refuse_constant(text: str) -> NoReturn:
    raise _StrictJsonError(f"{text} is not allowed in a request body")


def _first_non_integer(value: Any, path: str) -> tuple[str, str] | None:
    """(field path, text) of the first number that is not an integer, in document order."""
    if isinstance(value, _NotAnInteger):
        return path, str(value)
    if isinstance(value, dict):
        for key, item in value.items():
            found = _first_non_integer(item, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found = _first_non_integer(item, f"{path}[{position}]")
            if found is not None:
                return found
    return None


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise _StrictJsonError(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """A request body: one JSON object of plain data, or `invalid` saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise invalid(f"the body is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise invalid("the body is empty; send a JSON object")
    try:
        non_integers: list[_NotAnInteger] = []

        def keep_non_integer(number: str) -> _NotAnInteger:
            non_integers.append(_NotAnInteger(number))
            return non_integers[-1]

        value = json.loads(
            text, parse_float=keep_non_integer, parse_constant=_refuse_constant, object_pairs_hook=_object
        )
        # Only a body that holds one is walked for its field: most bodies hold none.
        non_integer = _first_non_integer(value, "") if non_integers else None
    except _StrictJsonError as exc:
        raise invalid(str(exc)) from None
    except json.JSONDecodeError as exc:
        raise invalid(f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise invalid("the body nests too deeply; no request needs more than a few levels") from None
    except ValueError:  # Python refuses to convert an integer of more than sys.get_int_max_str_digits() digits
        raise invalid(
            f"a number in the body has more than {sys.get_int_max_str_digits()} digits; no field takes one that large"
        ) from None
    if not isinstance(value, dict):
        raise invalid(f"the body must be a JSON object, not {_json_kind(value)}")
    if non_integer is not None:
        field_path, number = non_integer
        raise invalid(f"{field_path} must be an integer, not {number} (commands hold no floats)", field_path)
    return value


# ---- resources and routes --------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    plural: str
    create: str | None  # command types; None: not writable over HTTP
    delete: str | None
    namespaced: bool
    name_pattern: str = "[^/]+"
    actions: tuple[str, ...] = ()  # POST /v1/{plural}/{name}/{action} -> command "{kind}.{action}"
    action_prefix: str = ""
    update: str | None = None  # PATCH /v1/{plural}/{name}: a merge patch (statemachine/relabel.py)
    acts_for_tenants: bool = True  # its PATCH takes ?org=&project= (a node's does not: the platform's)


# Pools may be named `name`, `project/name` or `org/project/name`, quotas `org` or
# `org/project`: as extra path segments (`/v1/ippools/web/edge`) or with the slashes URL-encoded
# (`/v1/ippools/web%2Fedge`); aiohttp matches routes on the decoded path, so both reach the same
# handler. `POST /v1/quotas` sets a quota (creates or replaces it: `quota.set`).
KINDS: dict[str, Kind] = {
    "ippools": Kind("ippools", "pool.create", "pool.delete", False, r"[^/]+(?:/[^/]+){0,2}", update="pool.update"),
    "ipclaims": Kind("ipclaims", "claim.create", "claim.delete", True, update="claim.update"),
    "ipallocations": Kind("ipallocations", None, None, True),
    "ipclasses": Kind("ipclasses", "class.create", "class.delete", False, update="class.update"),
    "nodes": Kind(
        "nodes",
        "node.register",
        "node.delete",
        False,
        actions=("cordon", "uncordon", "drain"),
        action_prefix="node",
        update="node.update",
        acts_for_tenants=False,
    ),
    "pods": Kind("pods", "pod.create", "pod.delete", True, update="pod.update"),
    "services": Kind("services", "service.create", "service.delete", True, update="service.update"),
    # A quota's labels change with quota.set, which replaces the whole quota.
    "quotas": Kind("quotas", "quota.set", "quota.delete", False, r"[^/]+(?:/[^/]+)?"),
    "priorityclasses": Kind(
        "priorityclasses", "priorityclass.create", "priorityclass.delete", False, update="priorityclass.update"
    ),
}
if set(KINDS) != set(queries.RESOURCES):  # a kind added to the state machine needs its routes
    raise RuntimeError(f"HTTP kinds {sorted(KINDS)} differ from statemachine kinds {sorted(queries.RESOURCES)}")

TENANT_PARAMS = frozenset({"org", "project"})
DEFAULT_NAMESPACE = claims.DEFAULT_NAMESPACE  # of every namespaced kind


def _name_namespace(kind: Kind, params: dict[str, str], body: dict[str, Any]) -> None:
    """Put `?namespace=` into a command's body, leaving out the default namespace: a request
    that names it and one that does not are the same request, and must digest alike, or a
    retry spelled the other way under the same Idempotency-Key is refused as another request."""
    namespace = params.get("namespace")
    if kind.namespaced and namespace is not None and namespace != DEFAULT_NAMESPACE:
        body["namespace"] = namespace


POD_CREATE = "pod.create"
JSON_MEDIA_TYPE = "application/json"
BODY_CODINGS = ("identity", "gzip", "deflate")  # Content-Encodings of a request body
MERGE_PATCH_MEDIA_TYPE = "application/merge-patch+json"  # RFC 7386, kubectl patch --type merge
CONSISTENCY_LINEARIZABLE = "linearizable"
CONSISTENCY_STALE = "stale"
CONSISTENCY_HEADER = "X-Allot-Consistency"
REQUEST_ID_HEADER = "X-Allot-Request-Id"
REVISION_HEADER = "X-Allot-Revision"
# On the answer to a write whose Idempotency-Key was already used for the same request within
# the dedup window: the answer is the one remembered then, not a new application (the header
# name is the one Stripe's API uses for the same thing).
REPLAYED_HEADER = "Idempotent-Replayed"
# A dry run's answer says it was one (the body is what the write would have answered).
DRY_RUN_HEADER = "X-Allot-Dry-Run"
DRY_RUN_PARAM = "dryRun"
DRY_RUN_ALL = "All"  # Kubernetes' one value: every stage runs, nothing is stored
IDEMPOTENCY_HEADER = "Idempotency-Key"

_dns_label = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_idempotency_key = re.compile(rf"[\x21-\x7e]{{1,{idempotency_key_chars_max}}}")
_decimal_digits_max = 18  # query integers (limit, resourceVersion, timeoutSeconds) have at most this many
_decimal = re.compile(rf"[0-9]{{1,{_decimal_digits_max}}}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
T = TypeVar("T")


# ---- metrics ---------------------------------------------------------------------------------


_COMPILED_METRIC = "allot_state_machine_compiled"
_COMPILED_HELP = "1 when this member applies entries with the state machine compiled by `allot compile`"


class MemberCollector:
    """Gauges read from `member.status()` at scrape time (the replicated member adds its own)."""

    _gauges = (
        ("term", "allot_member_term", "Raft term this member knows"),
        ("commitIndex", "allot_member_commit_index", "Raft commit index this member knows"),
        ("appliedIndex", "allot_member_applied_index", "last log index applied to this member's store"),
        ("revision", "allot_member_revision", "state revision (resourceVersion) of this member's store"),
        ("snapshotIndex", "allot_member_snapshot_index", "log index of this member's latest snapshot"),
    )
    _roles = ("leader", "follower", "candidate")

    def __init__(self, member: Member) -> None:
        self._member = member

    def describe(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("allot_member_ready", "1 when this member is caught up and serving")
        yield GaugeMetricFamily("allot_member_role", "1 for this member's current role", labels=["role"])
        yield GaugeMetricFamily(_COMPILED_METRIC, _COMPILED_HELP)
        for _, name, documentation in self._gauges:
            yield GaugeMetricFamily(name, documentation)

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "allot_member_ready", "1 when this member is caught up and serving", value=1 if self._member.ready() else 0
        )
        yield GaugeMetricFamily(_COMPILED_METRIC, _COMPILED_HELP, value=1 if build_state().compiled else 0)
        try:
            status = self._member.status(include_digest=False)  # a scrape never hashes the state
        except Exception:
            log.exception("member.status() failed during a metrics scrape")
            return
        role = GaugeMetricFamily("allot_member_role", "1 for this member's current role", labels=["role"])
        current = str(status.get("role", ""))
        for name in sorted({*self._roles, current} - {""}):
            role.add_metric([name], 1 if name == current else 0)
        yield role
        for key, name, documentation in self._gauges:
            value = status.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                yield GaugeMetricFamily(name, documentation, value=value)
        peers = status.get("peersConnected")
        if isinstance(peers, list):  # a replicated member's
            yield GaugeMetricFamily(
                "allot_member_peers_connected", "peers this member has a working Raft link to", value=len(peers)
            )


# What this member's leader timers did (SchedulingTimers.stats): metric, help, stats key.
_LEADER_COUNTERS = (
    (
        "allot_leader_node_condition_changes",
        "Ready/NotReady transitions this member committed as leader",
        "nodeConditionsChanged",
    ),
    (
        "allot_leader_node_evictions",
        "evictions this member committed as leader: from nodes NotReady for the pod eviction timeout, "
        "and of pods whose tolerationSeconds for a node's NoExecute taints ran out",
        "nodeEvictions",
    ),
    ("allot_leader_pods_evicted", "pods those evictions sent back to the pending queue", "podsEvicted"),
)


class SchedulingCollector:
    """Nodes by condition, pods by phase, the pending queue: from `member.scheduling_stats()`
    (the member's node table, kept current from applied writes: a scrape reads no pods)."""

    def __init__(self, member: Member) -> None:
        self._member = member

    def describe(self) -> Iterable[Metric]:
        return self._families({})

    def collect(self) -> Iterable[Metric]:
        try:
            stats = self._member.scheduling_stats()
        except Exception:
            log.exception("member.scheduling_stats() failed during a metrics scrape")
            return []
        return self._families(stats)

    @staticmethod
    def _families(stats: dict[str, int]) -> list[Metric]:
        node_families = GaugeMetricFamily("allot_nodes", "registered nodes by condition", labels=["condition"])
        pod_families = GaugeMetricFamily("allot_pods", "pods by phase", labels=["phase"])
        if stats:
            node_families.add_metric(["Ready"], stats["nodesReady"])
            node_families.add_metric(["NotReady"], stats["nodesNotReady"])
            pod_families.add_metric(["Bound"], stats["podsBound"])
            pod_families.add_metric(["Pending"], stats["podsPending"])
        return [
            node_families,
            GaugeMetricFamily(
                "allot_nodes_cordoned", "nodes marked unschedulable", value=stats.get("nodesCordoned", 0)
            ),
            pod_families,
            GaugeMetricFamily(
                "allot_pending_queue_length", "pods waiting in the pending queue", value=stats.get("podsPending", 0)
            ),
            GaugeMetricFamily(
                "allot_pod_plans_in_flight",
                "pod placements this member planned that are not answered yet",
                value=stats.get("plansInFlight", 0),
            ),
            *(
                CounterMetricFamily(name, help_text, value=stats.get(key, 0))
                for name, help_text, key in _LEADER_COUNTERS
            ),
            GaugeMetricFamily(
                "allot_leader_evictions_held",
                "1 while this leader holds evictions because too many nodes are NotReady",
                value=stats.get("evictionsHeld", 0),
            ),
        ]


class Metrics:
    """One registry per app, so several apps (tests, several members in one process) coexist."""

    def __init__(self, member: Member, collectors: Sequence[Collector] = ()) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "allot_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "allot_http_request_duration_seconds",
            "time to answer an HTTP request (watches: the whole stream), by route template and method",
            ["route", "method"],
            registry=self.registry,
        )
        self.watches = Gauge("allot_http_watches", "watch streams open now", registry=self.registry)
        self.registry.register(MemberCollector(member))
        self.registry.register(SchedulingCollector(member))
        for collector in collectors:
            self.registry.register(collector)

    def observe(self, route: str, method: str, status: int, duration_s: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(duration_s)


_methods = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"  # bounded label values


# ---- the API ---------------------------------------------------------------------------------


class Api:
    def __init__(
        self, member: Member, tokens: TokenStore, limits: Limits, collectors: Sequence[Collector] = ()
    ) -> None:
        self.member = member
        self.tokens = tokens
        self.limits = limits
        self.prometheus = Metrics(member, collectors)
        self.watches_open = 0
        self._watch_reads = asyncio.Semaphore(1)  # one watch reads the event log at a time (watch_scan_step)
        self.watches_by_project: dict[tuple[str, str], int] = {}  # tenant -> streams open; no zero entries

    # -- the middleware: every exception becomes a JSON error, every answer is counted --

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started_s = time.perf_counter()
        status = 499  # the client went away before an answer (nginx's convention)
        try:
            response = await self._answer(request, handler)
            status = response.status
            return response
        finally:
            method = request.method if request.method in _methods else "OTHER"
            self.prometheus.observe(_route_label(request), method, status, time.perf_counter() - started_s)

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as error:
            return error_response(error)
        except Rejected as refusal:
            return error_response(from_rejected(refusal))
        except web.HTTPException as exc:
            return error_response(self._from_http_exception(request, exc))
        except Exception:
            log.exception("unexpected error answering %s %s", request.method, request.path)
            return error_response(ApiError("internal", "internal error; it has been logged"))

    def _from_http_exception(self, request: web.Request, exc: web.HTTPException) -> ApiError:
        if exc.status == 404:
            return ApiError("not_found", f"nothing at {request.path}", {"path": request.path})
        if exc.status == 405:
            allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
            return ApiError(
                "method_not_allowed",
                f"{request.method} is not allowed on {request.path}; allowed: {', '.join(allowed)}",
                {"allowed": allowed},
                {"Allow": ", ".join(allowed)},
            )
        if exc.status == 413:
            return ApiError(
                "too_large",
                f"the request body is larger than {self.limits.body_bytes_max} bytes",
                {"limitBytes": self.limits.body_bytes_max},
            )
        code = {400: "invalid", 401: "unauthorized", 403: "forbidden", 415: "unsupported_media_type"}.get(exc.status)
        if code is None:
            code = "internal" if exc.status >= 500 else "invalid"
        return ApiError(code, exc.reason)

    # -- request parts --

    def _params(self, request: web.Request, allowed: Iterable[str]) -> dict[str, str]:
        allowed_set = set(allowed)
        params: dict[str, str] = {}
        for key, value in request.query.items():
            if key not in allowed_set:
                if key in TENANT_PARAMS and request.method not in ("GET", "HEAD"):  # node actions, the scheduler
                    raise invalid(
                        f"{request.path} is the platform's: act for the platform, not for a tenant: "
                        "leave out ?org= and ?project= (the CLI's --as)",
                        "principal",
                    )
                allowed_text = ", ".join(sorted(allowed_set)) or "none"
                raise invalid(f"unknown query parameter {key!r}; allowed here: {allowed_text}", key)
            if key in params:
                raise invalid(f"query parameter {key!r} is given more than once", key)
            params[key] = value
        return params

    def _write_params(self, request: web.Request, allowed: Iterable[str]) -> tuple[dict[str, str], bool]:
        """A write's query parameters, and whether it is a dry run (`?dryRun=All`, as Kubernetes
        spells it): checked, answered and kept by nobody (_submit)."""
        params = self._params(request, {*allowed, DRY_RUN_PARAM})
        dry_run = params.pop(DRY_RUN_PARAM, None)
        if dry_run is not None and dry_run != DRY_RUN_ALL:
            raise invalid(f"{DRY_RUN_PARAM} must be {DRY_RUN_ALL}, not {dry_run!r}", DRY_RUN_PARAM)
        return params, dry_run is not None

    def _principal(self, request: web.Request) -> Principal:
        """Who asks: the token's principal, or the tenant an admin names with ?org=&project=.
        Called before the query is checked, so a request without a valid token learns nothing."""
        header = request.headers.get("Authorization")
        challenge = {"WWW-Authenticate": 'Bearer realm="allot"'}
        if header is None:
            raise ApiError("unauthorized", "send Authorization: Bearer <token>", headers=challenge)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError("unauthorized", "the Authorization header must be 'Bearer <token>'", headers=challenge)
        entry = self.tokens.lookup(token)
        if entry is None:
            raise ApiError("unauthorized", "unknown token", headers=challenge)
        org, project = request.query.get("org"), request.query.get("project")
        if org is None and project is None:
            return entry.principal()
        if not org or not project:
            raise invalid("to act for a tenant give both org and project", "org" if not org else "project")
        for name, value in (("org", org), ("project", project)):
            if not _dns_label.fullmatch(value):
                raise invalid(f"{name} {value!r} must be a DNS label (lowercase letters, digits, '-')", name)
        if entry.role == "admin":
            return Principal(entry.name, org, project, entry.role)
        if (org, project) == (entry.org, entry.project):
            return entry.principal()
        raise ApiError(
            "forbidden",
            f"this token belongs to {entry.org}/{entry.project}; only an admin may act for another tenant",
            {"org": org, "project": project},
        )

    def _request_id(self, request: web.Request) -> str:
        keys = request.headers.getall(IDEMPOTENCY_HEADER, [])
        if not keys:
            return uuid.uuid4().hex
        if len(keys) > 1:
            raise invalid(f"give one {IDEMPOTENCY_HEADER} header, not {len(keys)}", IDEMPOTENCY_HEADER)
        key = keys[0]
        if not _idempotency_key.fullmatch(key):
            raise invalid(
                f"{IDEMPOTENCY_HEADER} must be 1-{idempotency_key_chars_max} printable ASCII characters without spaces",
                IDEMPOTENCY_HEADER,
            )
        return key

    async def _body(self, request: web.Request, media_types: tuple[str, ...] = (JSON_MEDIA_TYPE,)) -> dict[str, Any]:
        if request.content_type not in media_types or (request.charset or "utf-8").lower() not in ("utf-8", "utf8"):
            given = request.headers.get("Content-Type", "none")
            raise ApiError(
                "unsupported_media_type",
                f"send the body as JSON with Content-Type: {' or '.join(media_types)} (got {given})",
                {"contentType": given},
            )
        coding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if coding not in BODY_CODINGS:
            # aiohttp decodes the codings it knows and passes any other through as if plain.
            raise ApiError(
                "unsupported_media_type",
                f"Content-Encoding {coding!r} is not supported; send the body as {', '.join(BODY_CODINGS)}",
                {"contentEncoding": coding},
            )
        length = request.content_length
        if length is not None and length > self.limits.body_bytes_max:
            raise ApiError(
                "too_large",
                f"the request body is {length} bytes; the limit is {self.limits.body_bytes_max}",
                {"limitBytes": self.limits.body_bytes_max},
            )
        try:
            async with asyncio.timeout(self.limits.request_timeout_s):
                raw = await request.read()  # client_max_size refuses more than the limit (413)
        except TimeoutError:
            raise ApiError("request_timeout", "the request body did not arrive in time") from None
        except web.RequestPayloadError as exc:  # e.g. Content-Encoding: gzip on a body that is not
            raise invalid(f"the request body could not be read: {exc}") from None
        return parse_json_object(raw)

    async def _call(self, awaitable: Awaitable[T], on_timeout: ApiError) -> T:
        try:
            async with asyncio.timeout(self.limits.request_timeout_s + self.limits.member_grace_s):
                return await awaitable
        except NoLeaderError as exc:
            raise retry_after("no_leader", str(exc) or "no leader is known right now", exc.retry_after_s) from None
        except OverloadedError as exc:
            raise retry_after("overloaded", str(exc) or "the member is overloaded", exc.retry_after_s) from None
        except WritesPausedError as exc:
            raise retry_after("unavailable", str(exc), exc.retry_after_s) from None
        except (OutcomeUnknownError, TimeoutError) as exc:
            if str(exc):
                on_timeout.message = f"{on_timeout.message} ({exc})"
            raise on_timeout from None
        except MemberError as exc:
            raise retry_after("unavailable", str(exc) or "the member cannot serve this now", 1) from None

    async def _catch_up(self, what: str) -> None:
        """A read barrier: return once this member has applied everything the leader had
        committed when it was called; 504 `timeout` (nothing changed: retry `what`) if not in time."""
        timeout = ApiError("timeout", f"the read barrier did not complete in time; nothing changed, retry {what}")
        await self._call(self.member.read_barrier(self.limits.request_timeout_s), timeout)

    async def _consistency(self, params: dict[str, str]) -> str:
        consistency = params.get("consistency", CONSISTENCY_LINEARIZABLE)
        if consistency == CONSISTENCY_LINEARIZABLE:
            await self._catch_up("the read")
        elif consistency != CONSISTENCY_STALE:
            raise invalid(
                f"consistency must be {CONSISTENCY_LINEARIZABLE} or {CONSISTENCY_STALE}, not {consistency!r}",
                "consistency",
            )
        return consistency

    # -- health, readiness, status, metrics --

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return json_response({"status": "ok", "memberId": self.member.member_id})

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        if not self.member.ready():
            raise retry_after("not_ready", "this member is not caught up yet", 1)
        return json_response({"status": "ready", "memberId": self.member.member_id})

    async def status(self, request: web.Request) -> web.StreamResponse:
        self._principal(request)
        self._params(request, ())
        return json_response(self.member.status())

    async def metrics_text(self, request: web.Request) -> web.StreamResponse:
        text = generate_latest(self.prometheus.registry)
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- resources --

    def list_handler(self, kind: Kind) -> Handler:
        allowed = {"limit", "continue", "labelSelector", "fieldSelector", "consistency", *TENANT_PARAMS}
        if kind.namespaced:
            allowed.add("namespace")

        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            params = self._params(request, allowed)
            limit = _int_param(params, "limit")
            consistency = await self._consistency(params)
            with read_at(consistency), self.member.reader() as view:
                result = queries.list_objects(
                    view,
                    principal,
                    kind.plural,
                    limit=limit,
                    continue_token=params.get("continue") or None,
                    label_selector=params.get("labelSelector") or None,
                    namespace=params.get("namespace"),
                    field_selector=params.get("fieldSelector") or None,
                )
            result["metadata"]["consistency"] = consistency
            return json_response(result, headers={CONSISTENCY_HEADER: consistency})

        return handler

    def get_handler(self, kind: Kind) -> Handler:
        allowed = {"consistency", *TENANT_PARAMS, *(("namespace",) if kind.namespaced else ())}

        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            params = self._params(request, allowed)
            consistency = await self._consistency(params)
            with read_at(consistency), self.member.reader() as view:
                obj = queries.get(view, principal, kind.plural, request.match_info["name"], params.get("namespace"))
            return json_response(obj, headers={CONSISTENCY_HEADER: consistency})

        return handler

    def create_handler(self, kind: Kind, command_type: str) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            _, dry_run = self._write_params(request, TENANT_PARAMS)
            request_id = self._request_id(request)
            body = await self._body(request)
            if kind.namespaced and body.get("namespace") == DEFAULT_NAMESPACE:
                del body["namespace"]  # the default said one way (see _name_namespace)
            if command_type != POD_CREATE:
                return await self._submit(command_type, body, principal, request_id, dry_run)
            return await self._submit_pod(body, principal, request_id, dry_run)

        return handler

    async def _submit_pod(
        self, body: dict[str, Any], principal: Principal, request_id: str, dry_run: bool
    ) -> web.StreamResponse:
        """pod.create with this member's plan (node/scheduling.py): reserved while in flight,
        so pods planned together spread over nodes as they would one after another."""
        if "plan" in body:
            raise invalid("plan is chosen by the server; leave it out of the body", "plan")
        plan: PodPlan | None = self.member.plan_pod(body.get("spec"), principal)
        try:
            if plan is not None:
                body["plan"] = {"nodeName": plan.node_name}
            return await self._submit(POD_CREATE, body, principal, request_id, dry_run)
        finally:
            if plan is not None:
                self.member.release_plan(plan)

    def action_handler(self, kind: Kind, action: str) -> Handler:
        command_type = f"{kind.action_prefix}.{action}"

        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            _, dry_run = self._write_params(request, ())
            request_id = self._request_id(request)
            await self._empty_body(request)
            body = {"name": request.match_info["name"]}
            return await self._submit(command_type, body, principal, request_id, dry_run)

        return handler

    def update_handler(self, kind: Kind, command_type: str) -> Handler:
        """PATCH /v1/{plural}/{name}: a JSON merge patch (RFC 7386), as `kubectl label` sends:
        {"metadata": {"labels": {K: V or null}, "resourceVersion": N}} for every kind with an
        update (statemachine/relabel.py); a node's also takes {"spec": {"taints": [...],
        "unschedulable": bool}} (node.update, as `kubectl taint|cordon`). A resourceVersion makes
        it conditional: 409 conflict if the object changed since it was read."""
        # A node is the platform's: no tenant to act for (refused here, before the log).
        tenant = TENANT_PARAMS if kind.acts_for_tenants else set()
        allowed = {*tenant, *(("namespace",) if kind.namespaced else ())}
        noun = queries.kind_of(kind.plural)
        named_by = {"name": "the path", **({"namespace": "?namespace="} if kind.namespaced else {})}
        # What a patch may name; the state machine says why a spec or status cannot change.
        patchable = ("metadata", "spec") if kind.update == "node.update" else ("metadata",)
        explained = ("spec", "status")

        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            params, dry_run = self._write_params(request, allowed)
            request_id = self._request_id(request)
            body = await self._body(request, (JSON_MEDIA_TYPE, MERGE_PATCH_MEDIA_TYPE))
            for field, where in named_by.items():
                if field in body:
                    raise invalid(f"the {noun} is named by {where}; leave {field} out of the patch", field)
            for field in body:
                if field not in patchable and field not in explained:
                    raise invalid(
                        f"the patch has unknown field {field!r}; a patch of a {noun} gives {', '.join(patchable)}",
                        field,
                    )
            body["name"] = request.match_info["name"]
            _name_namespace(kind, params, body)
            metadata = body.get("metadata")
            if isinstance(metadata, dict) and "resourceVersion" in metadata and metadata["resourceVersion"] is None:
                del metadata["resourceVersion"]  # no precondition, said one way (see _name_namespace)
            return await self._submit(command_type, body, principal, request_id, dry_run)

        return handler

    async def _empty_body(self, request: web.Request) -> None:
        """Actions take no body; one that is sent must be `{}` (fields may come later)."""
        if not request.body_exists:
            return
        body = await self._body(request)
        if body:
            raise invalid(f"this action takes no body fields; got {', '.join(sorted(body))}", sorted(body)[0])

    # -- scheduling: heartbeats and the scheduler --

    async def node_heartbeat(self, request: web.Request) -> web.StreamResponse:
        """A node agent's heartbeat: kept in members' memory, never in the log. The leader
        turns missing heartbeats into NotReady (node/scheduling.py). Any member accepts it."""
        principal = self._principal(request)
        self._params(request, ())
        if not (principal.is_admin and not principal.has_tenant):
            raise ApiError("forbidden", "only the platform (an admin token) sends node heartbeats")
        await self._empty_body(request)
        name = check_node_name(request.match_info["name"], "name")
        with self.member.reader() as view:  # this member's state: a known node needs no barrier
            node = nodes.load(view, name)
        if node is None:
            # Registered a moment ago through another member, perhaps, and not applied here
            # yet: an agent told its registration succeeded must not hear "not registered".
            # So a miss catches up with the leader's commit before it is believed.
            await self._catch_up("the heartbeat")
            with self.member.reader() as view:
                node = nodes.load(view, name)
        if node is None:
            raise ApiError("not_found", f"Node {name} is not registered", {"kind": nodes.KIND, "name": name})
        if not self.member.record_heartbeat(name):
            raise retry_after("overloaded", "this member's heartbeat table is full; retry shortly", 1)
        return json_response(
            {
                "kind": "NodeHeartbeat",
                "name": name,
                "ready": node["status"]["ready"],
                "memberId": self.member.member_id,
            }
        )

    async def scheduler_get(self, request: web.Request) -> web.StreamResponse:
        principal = self._principal(request)
        params = self._params(request, {"consistency", *TENANT_PARAMS})  # an admin acting for a tenant sees its view
        consistency = await self._consistency(params)
        with self.member.reader() as view:
            cluster = Cluster.load(view)
            revision = Meta.load(view).revision
            # A tenant (or an admin acting for one) counts its own project's pending pods, not
            # other tenants' (exploratory testing, 2026-12-07: the whole queue was shown).
            pending = (
                quotas.load_ledger(view, principal.org, principal.project).pending
                if principal.has_tenant
                else cluster.pending
            )
        body = {
            "kind": "SchedulerStatus",
            "policy": cluster.policy,
            "nodes": cluster.nodes,
            "pendingPods": pending,
            "resourceVersion": revision,
        }
        return json_response(body, headers={CONSISTENCY_HEADER: consistency})

    async def scheduler_configure(self, request: web.Request) -> web.StreamResponse:
        principal = self._principal(request)
        _, dry_run = self._write_params(request, ())
        request_id = self._request_id(request)
        body = await self._body(request)
        return await self._submit("scheduler.configure", body, principal, request_id, dry_run)

    async def scheduler_retry(self, request: web.Request) -> web.StreamResponse:
        principal = self._principal(request)
        _, dry_run = self._write_params(request, ())
        request_id = self._request_id(request)
        body = await self._body(request) if request.body_exists else {}
        return await self._submit("scheduler.retry", body, principal, request_id, dry_run)

    def delete_handler(self, kind: Kind, command_type: str) -> Handler:
        allowed = {*TENANT_PARAMS, *(("namespace",) if kind.namespaced else ())}

        async def handler(request: web.Request) -> web.StreamResponse:
            principal = self._principal(request)
            params, dry_run = self._write_params(request, allowed)
            request_id = self._request_id(request)
            body: dict[str, Any] = {"name": request.match_info["name"]}
            _name_namespace(kind, params, body)
            return await self._submit(command_type, body, principal, request_id, dry_run)

        return handler

    async def refuse_allocation_write(self, request: web.Request) -> web.StreamResponse:
        raise ApiError(
            "method_not_allowed",
            "IPAllocations are written and removed with their IPClaims: create, delete or label the IPClaim "
            "of the same namespace and name instead",
            {"allowed": ["GET", "HEAD"]},
            {"Allow": "GET, HEAD"},
        )

    async def _submit(
        self, command_type: str, body: dict[str, Any], principal: Principal, request_id: str, dry_run: bool = False
    ) -> web.StreamResponse:
        # A dry run carries no request id: it must neither replay a real write's answer nor
        # be one (statemachine.preview).
        envelope_id = None if dry_run else request_id
        envelope = Envelope(command_type, body, principal, envelope_id, wall_clock_ms())
        try:
            data = encode_envelope(envelope)
        except (ValueError, TypeError) as exc:  # nesting too deep, lone surrogates, ...
            raise invalid(f"the body cannot be made into a command: {exc}") from None
        if dry_run:
            return await self._dry_run(data)
        unknown = ApiError(
            "outcome_unknown",
            f"the write may or may not have been applied; it is safe to retry with the same "
            f"{IDEMPOTENCY_HEADER}: {request_id}",
            {"requestId": request_id},
            {REQUEST_ID_HEADER: request_id},
        )
        outcome = await self._call(self.member.submit(data, self.limits.request_timeout_s), unknown)
        headers = {REQUEST_ID_HEADER: request_id, REVISION_HEADER: str(outcome.revision)}
        if outcome.replayed:
            headers[REPLAYED_HEADER] = "true"
        return _write_answer(outcome, headers)

    async def _dry_run(self, data: bytes) -> web.StreamResponse:
        """The answer the write would get now, from this member's state once it has caught up
        with the leader's commit (as a linearizable read): nothing is proposed or kept, so a
        later write may be answered otherwise (another write came first)."""
        await self._catch_up("the dry run")
        return _write_answer(self.member.dry_run(data), {DRY_RUN_HEADER: DRY_RUN_ALL})

    # -- watch --

    async def watch(self, request: web.Request) -> web.StreamResponse:
        principal = self._principal(request)
        params = self._params(
            request, {"kinds", "resourceVersion", "timeoutSeconds", "fieldSelector", "labelSelector", *TENANT_PARAMS}
        )
        kinds = _kinds_param(params.get("kinds"))
        selectors = _WatchSelectors(params.get("fieldSelector") or None, params.get("labelSelector") or None)
        start = _int_param(params, "resourceVersion")
        timeout_s = _int_param(params, "timeoutSeconds")
        if timeout_s is None:
            timeout_s = self.limits.watch_timeout_s_default
        if not 1 <= timeout_s <= self.limits.watch_timeout_s_max:
            raise invalid(f"timeoutSeconds must be between 1 and {self.limits.watch_timeout_s_max}", "timeoutSeconds")
        if self.watches_open >= self.limits.watches_max:
            raise retry_after("overloaded", f"this member already serves {self.limits.watches_max} watches", 1)
        project = (principal.org, principal.project) if principal.has_tenant else None
        if project is not None and self.watches_by_project.get(project, 0) >= self.limits.watches_per_project_max:
            raise retry_after(
                "overloaded",
                f"project {principal.org}/{principal.project} already has {self.limits.watches_per_project_max} "
                "watches open on this member: close one, or watch several kinds in one stream (kinds=a,b)",
                1,
            )
        if start is not None:
            await self._refuse_unreached_revision(start)

        # The first batch is read before the answer starts, so a compacted revision is a 410.
        async with self._watch_reads:
            lines, revision, current = self._first_events(principal, selectors, start, kinds)

        self.watches_open += 1
        if project is not None:
            self.watches_by_project[project] = self.watches_by_project.get(project, 0) + 1
        self.prometheus.watches.inc()
        response = web.StreamResponse(
            headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )
        try:
            await response.prepare(request)
            if start is None:
                await response.write(_bookmark(revision))
            still_allowed = functools.partial(self._still_principal, request, principal)
            await self._stream(
                request, response, principal, still_allowed, kinds, selectors, lines, revision, current, timeout_s
            )
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away; nothing to tell it
        except Exception:  # the answer has started: the middleware can no longer replace it
            log.exception("watch failed after its answer started")
            internal = {"code": "internal", "message": "internal error; it has been logged", "details": {}}
            with contextlib.suppress(Exception):
                await response.write(dumps({"type": "ERROR", "object": {"error": internal}}) + b"\n")
        finally:
            self.watches_open -= 1
            if project is not None:
                left = self.watches_by_project[project] - 1
                if left:
                    self.watches_by_project[project] = left
                else:
                    del self.watches_by_project[project]
            self.prometheus.watches.dec()
        return response

    def _first_events(
        self, principal: Principal, selectors: _WatchSelectors, start: int | None, kinds: tuple[str, ...]
    ) -> tuple[bytes, int, int]:
        """(the first step's event lines, the revision they reach, the state's revision) of a
        watch from `start` (None: from now, no events)."""
        if start is not None:
            return self._read_step(principal, selectors, start, kinds)
        with self.member.reader() as view:
            current = Meta.load(view).revision
            # Checked here too, so a bad selector is a 400 rather than an ERROR line later.
            selectors.events_after(view, principal, current, kinds, limit=0)
        return b"", current, current

    def _read_step(
        self, principal: Principal, selectors: _WatchSelectors, revision: int, kinds: tuple[str, ...]
    ) -> tuple[bytes, int, int]:
        """One step of a watch after `revision`: (its event lines, encoded here since that is
        part of the step's work, the revision they reach, the state's revision). `gone` when the
        event log no longer reaches back to `revision`."""
        with self.member.reader() as view:
            current = Meta.load(view).revision
            events, reached = selectors.events_after(view, principal, revision, kinds, self.limits.watch_scan_step)
        return _event_lines(events), reached, current

    async def _refuse_unreached_revision(self, start: int) -> None:
        """Refuse a watch from a revision the cluster has not reached.

        Ahead of this member only, it may be a revision the cluster has (a lagging follower): so
        this member first catches up with the leader's commit, as a linearizable read does. A
        revision still ahead then is none this cluster gave out (one from a cluster since restored
        or rebuilt, or from another cluster); served, the watch would skip every event up to it
        and answer with a revision the state never had. It is `gone`, like a compacted one, so a
        controller does what it does then: list again and watch from the list's revision."""
        with self.member.reader() as view:
            current = Meta.load(view).revision
        if start <= current:
            return
        await self._catch_up("the watch")
        with self.member.reader() as view:
            current = Meta.load(view).revision
        if start > current:
            raise ApiError(
                GONE,
                f"resourceVersion {start} is newer than this cluster's revision {current}, so it was not "
                "given out by this cluster as it is now; list again and watch from the list's resourceVersion",
                {"resourceVersion": start, "revision": current},
            )

    def _still_principal(self, request: web.Request, principal: Principal) -> bool:
        """Whether the stream's token still stands for `principal` (it was not revoked or
        changed in the token file since the stream started)."""
        try:
            return self._principal(request) == principal
        except ApiError:
            return False

    async def _wait_for_change(self, request: web.Request, revision: int, wait_s: float) -> bool:
        """Wait until the state passes `revision` or `wait_s` pass, looking every
        `watch_gone_check_s` for the client having gone: False if it has."""
        loop = asyncio.get_running_loop()
        until_s = loop.time() + wait_s
        while True:
            transport = request.transport
            if transport is None or transport.is_closing():
                return False
            remaining_s = until_s - loop.time()
            if remaining_s <= 0:
                return True
            await self.member.wait_for_change(revision, min(remaining_s, self.limits.watch_gone_check_s))
            with self.member.reader() as view:
                if Meta.load(view).revision > revision:
                    return True

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        principal: Principal,
        still_allowed: Callable[[], bool],
        kinds: tuple[str, ...],
        selectors: _WatchSelectors,
        lines: bytes,
        revision: int,
        current: int,
        timeout_s: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + timeout_s
        heartbeat_s = self.limits.watch_heartbeat_s
        last_line_s = loop.time()
        while True:
            if not still_allowed():  # checked before every line: a revoked token reads no more
                revoked = {
                    "code": "unauthorized",
                    "message": "the token was revoked or changed; watch again",
                    "details": {},
                }
                await response.write(dumps({"type": "ERROR", "object": {"error": revoked}}) + b"\n")
                return
            if lines:  # one write per step: a revision's events travel together
                await response.write(lines)
                last_line_s = loop.time()
            elif loop.time() - last_line_s >= heartbeat_s:
                await response.write(_bookmark(revision))
                last_line_s = loop.time()
            now_s = loop.time()
            if now_s >= deadline_s:
                break
            if revision >= current:  # caught up: wait for a change, a heartbeat or the deadline
                wait_s = min(deadline_s - now_s, max(0.0, last_line_s + heartbeat_s - now_s))
                if wait_s > 0 and not await self._wait_for_change(request, revision, wait_s):
                    return  # the client went away: free its slot now
            else:
                await asyncio.sleep(0)  # catching up: the member's other requests go between steps
            final_line: bytes | None = None
            async with self._watch_reads:  # free at once unless other watches are reading
                try:
                    lines, revision, current = self._read_step(principal, selectors, revision, kinds)
                except Rejected as refusal:  # fell behind by more than the event log holds
                    if refusal.code != GONE:
                        raise
                    error = {"code": refusal.code, "message": refusal.message, "details": refusal.details}
                    final_line = dumps({"type": "ERROR", "object": {"error": error}}) + b"\n"
            if final_line is not None:
                await response.write(final_line)
                return
        await response.write(_bookmark(revision))


@dataclass(frozen=True)
class _WatchSelectors:
    """A watch's `fieldSelector` and `labelSelector`, applied to every batch of events."""

    field_selector: str | None
    label_selector: str | None

    def events_after(
        self,
        view: ReadView,
        principal: Principal,
        revision: int,
        kinds: tuple[str, ...],
        scan_max: int = queries.list_scan_max,
        limit: int = queries.watch_events_max,
    ) -> tuple[list[dict[str, Any]], int]:
        return queries.events_after(
            view, principal, revision, kinds, limit, self.field_selector, self.label_selector, scan_max
        )


def _write_answer(outcome: Outcome, headers: dict[str, str]) -> web.Response:
    """A write's answer: 201 for a new object, 200 otherwise, or its refusal; with `headers`."""
    result = outcome.result
    if isinstance(result, Rejected):
        error = from_rejected(result)
        error.headers.update(headers)
        raise error
    return json_response(result.value, 201 if result.created else 200, headers)


def _event_lines(events: list[dict[str, Any]]) -> bytes:
    return b"".join(dumps(event) + b"\n" for event in events)


def _bookmark(revision: int) -> bytes:
    """A line that says "nothing you may see changed up to this revision": resume from it."""
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Bookmark", "metadata": {"resourceVersion": revision}}}
    return dumps(bookmark) + b"\n"


def _int_param(params: dict[str, str], name: str) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if not _decimal.fullmatch(value):
        raise invalid(
            f"{name} must be a non-negative integer of at most {_decimal_digits_max} digits, not {value!r}", name
        )
    return int(value)


def _kinds_param(value: str | None) -> tuple[str, ...]:
    if value is None:
        return tuple(KINDS)
    kinds: list[str] = []
    for part in value.split(","):
        name = part.strip()
        if name not in KINDS:
            raise invalid(f"unknown kind {name!r} in kinds; known: {', '.join(KINDS)}", "kinds")
        if name not in kinds:
            kinds.append(name)
    return tuple(kinds)


API_KEY = web.AppKey("allot_api", Api)


def build_app(
    member: Member, tokens: TokenStore, *, limits: Limits | None = None, collectors: Sequence[Collector] = ()
) -> web.Application:
    """The aiohttp application serving Allot's public HTTP API for one member."""
    limits = limits or Limits()
    api = Api(member, tokens, limits, collectors)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await api.middleware(request, handler)

    app = web.Application(middlewares=[middleware], client_max_size=limits.body_bytes_max)
    app[API_KEY] = api
    router = app.router
    router.add_get("/healthz", api.healthz)
    router.add_get("/readyz", api.readyz)
    router.add_get("/metrics", api.metrics_text)
    router.add_get("/v1/status", api.status)
    router.add_get("/v1/watch", api.watch, allow_head=False)  # a HEAD would hold a stream open
    for kind in KINDS.values():
        collection = f"/v1/{kind.plural}"
        item = f"/v1/{kind.plural}/{{name:{kind.name_pattern}}}"
        router.add_get(collection, api.list_handler(kind))
        router.add_get(item, api.get_handler(kind))
        if kind.create is not None and kind.delete is not None:
            router.add_post(collection, api.create_handler(kind, kind.create))
            router.add_delete(item, api.delete_handler(kind, kind.delete))
        else:
            router.add_post(collection, api.refuse_allocation_write)
            router.add_delete(item, api.refuse_allocation_write)
            router.add_patch(item, api.refuse_allocation_write)
        for action in kind.actions:
            router.add_post(f"{item}/{action}", api.action_handler(kind, action))
        if kind.update is not None:
            router.add_patch(item, api.update_handler(kind, kind.update))
    router.add_post("/v1/nodes/{name}/heartbeat", api.node_heartbeat)
    router.add_get("/v1/scheduler", api.scheduler_get)
    router.add_put("/v1/scheduler", api.scheduler_configure)
    router.add_post("/v1/scheduler/retry", api.scheduler_retry)
    return app
