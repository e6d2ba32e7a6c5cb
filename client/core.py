"""The client's sans-io core: what to send, what an answer means, and when to try again.

Both shells (`client.sync.Client` on http.client, `client.aio.AsyncClient` on aiohttp) are
thin: they open connections, move bytes, read the clock and sleep. Everything they decide is
decided here, from data, so the two behave the same and the decisions are tested without a
network:

* `RequestFactory` builds a `Request` (method, path, query, headers, body bytes) for every
  route of the API, including the token, the tenant an admin acts for (`?org=&project=`) and,
  for writes, an `Idempotency-Key` that stays the same across every retry of that write.
* `decode_answer` turns a status and body into the JSON value or a typed exception (the one
  table in `client.errors`).
* `RetryPolicy` is the retry policy as data; `SAFETY_BY_CODE`, `SAFETY_BY_STATUS` and
  `SAFETY_BY_FAILURE` say which outcomes are retried and whether a write may have been applied.
  `Call` walks one logical request through attempts: which endpoint next, how long this attempt
  may take, how long to pause, and which error the caller gets when it gives up.
* `EndpointRing` remembers the member that answered last, so later calls start there.
* `LineSplitter` and `WatchCursor` read a watch stream and resume it after a disconnect without
  missing or repeating an event.

Rules it keeps:

* No I/O, no clock, no sleeping, no global random state: time comes in as arguments (`now_s`,
  monotonic seconds) and randomness from an injected source.
* 4xx refusals are never retried. A write is retried only with its original Idempotency-Key,
  which the server uses to apply it at most once.
* Nothing grows without a bound: attempts, total time, pauses, response bytes, watch lines,
  the failure history kept for the error message.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import enum
import json
import math
import random
import re
import secrets
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, Self, TypeVar

from client.errors import (
    AllotError,
    OutcomeUnknown,
    ProtocolError,
    Unavailable,
    error_from_answer,
    error_from_payload,
)
from client.models import (
    SCHEDULING_POLICIES,
    IPAllocation,
    IPClaim,
    IPClass,
    IPPool,
    Node,
    Page,
    Pod,
    PriorityClass,
    Quota,
    Service,
    Taint,
    WatchEvent,
    parse_object,
)

T = TypeVar("T")

# ---- limits and defaults (named, with units) -------------------------------------------------

DEFAULT_ENDPOINTS = ("http://127.0.0.1:8401", "http://127.0.0.1:8402", "http://127.0.0.1:8403")  # `allot up`
ENV_ENDPOINTS = "ALLOT_ENDPOINTS"
ENV_TOKEN = "ALLOT_TOKEN"
USER_AGENT = "allot-client/0.1"

response_bytes_max = 32 * 1024 * 1024  # one answer; a full page of 1000 pools is ~1 MiB
watch_line_bytes_max = 4 * 1024 * 1024  # one watch event; an object is at most a few KiB
watch_idle_timeout_s_default = 30.0  # the server sends a BOOKMARK every 10 s when idle
list_pages_max = 100_000  # a list iterator follows at most this many continue tokens
failures_kept_max = 8  # attempt failures quoted in a give-up error's message
attempt_timeout_s_max = 86_400.0  # a day: sockets cannot take every float (1e10 s overflows them)
idempotency_key_chars_max = 128  # the server's limit
endpoints_max = 64

HEADER_IDEMPOTENCY = "Idempotency-Key"
HEADER_REQUEST_ID = "X-Allot-Request-Id"
HEADER_RETRY_AFTER = "Retry-After"
HEADER_REPLAYED = "Idempotent-Replayed"  # the server's remembered answer to an earlier try of this write
HEADER_DRY_RUN = "X-Allot-Dry-Run"  # the answer is a dry run's: nothing was written
QUERY_DRY_RUN = "dryRun"
DRY_RUN_ALL = "All"
HTTP_CREATED = 201  # a create that made the object; 200: the identical object existed
MEDIA_TYPE_JSON = "application/json"
MEDIA_TYPE_MERGE_PATCH = "application/merge-patch+json"  # RFC 7386: PATCH /v1/nodes/{name}, as kubectl sends it

_idempotency_key = re.compile(rf"[\x21-\x7e]{{1,{idempotency_key_chars_max}}}")


def new_idempotency_key() -> str:
    """A fresh key for one logical write (128 random bits)."""
    return secrets.token_hex(16)


# ---- endpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """One member's HTTP base address."""

    scheme: str  # http or https
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def __str__(self) -> str:
        return self.url


def parse_endpoint(text: str) -> Endpoint:
    """`http://127.0.0.1:8401`, `https://allot.example:443` or `127.0.0.1:8401` (http assumed)."""
    value = text.strip()
    if not value:
        raise ValueError("an empty endpoint")
    if "://" not in value:
        value = "http://" + value
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"endpoint {text!r}: the scheme must be http or https")
    if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.username:
        raise ValueError(f"endpoint {text!r}: give only scheme, host and port")
    try:
        port = parsed.port
    except ValueError:
        raise ValueError(f"endpoint {text!r}: the port is not a number between 0 and 65535") from None
    if not parsed.hostname:
        raise ValueError(f"endpoint {text!r} has no host")
    return Endpoint(parsed.scheme, parsed.hostname, port or (443 if parsed.scheme == "https" else 80))


def parse_endpoints(value: str | Sequence[str]) -> tuple[Endpoint, ...]:
    """A comma-separated string (as in ALLOT_ENDPOINTS) or a sequence of endpoints."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    endpoints: list[Endpoint] = []
    for part in parts:
        if isinstance(part, str) and not part.strip():
            continue
        endpoint = parse_endpoint(part)
        if endpoint not in endpoints:
            endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no endpoints given")
    if len(endpoints) > endpoints_max:
        raise ValueError(f"{len(endpoints)} endpoints; at most {endpoints_max}")
    return tuple(endpoints)


def resolve_settings(
    endpoints: str | Sequence[str] | None, token: str | None, environ: Mapping[str, str]
) -> tuple[tuple[Endpoint, ...], str | None]:
    """Explicit arguments first, then ALLOT_ENDPOINTS / ALLOT_TOKEN, then `allot up`'s endpoints."""
    chosen: str | Sequence[str] = (
        endpoints if endpoints is not None else environ.get(ENV_ENDPOINTS) or ",".join(DEFAULT_ENDPOINTS)
    )
    resolved_token = token if token is not None else environ.get(ENV_TOKEN) or None
    if resolved_token is not None and (not resolved_token or any(c in resolved_token for c in "\r\n")):
        raise ValueError(
            "the token must be a non-empty single line: pass the bearer token itself, or leave token out "
            f"to use {ENV_TOKEN}"
        )
    return parse_endpoints(chosen), resolved_token


class EndpointRing:
    """The endpoints in a fixed order and the one to try first: the last that answered.

    Shared by every call of a client (threads too): its only mutable state is one int, whose
    assignment is atomic, so a race only means a call starts at a slightly older preference.
    """

    def __init__(self, endpoints: Sequence[Endpoint], start_index: int = 0) -> None:
        if not endpoints:
            raise ValueError("an endpoint ring needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self._preferred = start_index % len(self.endpoints)

    @property
    def preferred(self) -> Endpoint:
        return self.endpoints[self._preferred]

    def after(self, endpoint: Endpoint) -> Endpoint:
        index = self.endpoints.index(endpoint) if endpoint in self.endpoints else -1
        return self.endpoints[(index + 1) % len(self.endpoints)]

    def answered(self, endpoint: Endpoint) -> None:
        if endpoint in self.endpoints:
            self._preferred = self.endpoints.index(endpoint)

    def failed(self, endpoint: Endpoint) -> None:
        """Move the preference off a member that failed, so other calls do not start there."""
        if self.preferred == endpoint:
            self._preferred = (self._preferred + 1) % len(self.endpoints)


# ---- requests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # already percent-encoded
    query: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    write: bool = False  # changes state: retried only with its Idempotency-Key
    idempotency_key: str | None = None

    @property
    def target(self) -> str:
        """Path and query, as sent on the request line."""
        return f"{self.path}?{urllib.parse.urlencode(self.query)}" if self.query else self.path

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class KindInfo(Generic[T]):
    """A resource kind's route and model. A new kind is one of these plus one accessor line
    in each client (`self.nodes = WritableResource(self, NODES)`)."""

    plural: str  # the path segment: /v1/{plural}
    kind: str  # the `kind` field of its objects
    parse: Callable[[Any], T]
    namespaced: bool  # takes ?namespace= (claims, allocations, pods, services)
    writable: bool  # POST and DELETE exist
    # Its writes are the platform's (classes, nodes, quotas): sent without ?org=&project= even by
    # a client acting for a tenant, which the server refuses for them (reads keep the tenant's view).
    platform_writes: bool = False
    labels_patchable: bool = False  # PATCH /v1/{plural}/{name} changes its labels (`label_request`)


IPPOOLS = KindInfo("ippools", "IPPool", IPPool.parse, namespaced=False, writable=True, labels_patchable=True)
IPCLAIMS = KindInfo("ipclaims", "IPClaim", IPClaim.parse, namespaced=True, writable=True, labels_patchable=True)
IPALLOCATIONS = KindInfo("ipallocations", "IPAllocation", IPAllocation.parse, namespaced=True, writable=False)
IPCLASSES = KindInfo(
    "ipclasses", "IPClass", IPClass.parse, namespaced=False, writable=True, platform_writes=True, labels_patchable=True
)
NODES = KindInfo(
    "nodes", "Node", Node.parse, namespaced=False, writable=True, platform_writes=True, labels_patchable=True
)
PODS = KindInfo("pods", "Pod", Pod.parse, namespaced=True, writable=True, labels_patchable=True)
SERVICES = KindInfo("services", "Service", Service.parse, namespaced=True, writable=True, labels_patchable=True)
# POST sets (creates or replaces), labels too
QUOTAS = KindInfo("quotas", "Quota", Quota.parse, namespaced=False, writable=True, platform_writes=True)
PRIORITYCLASSES = KindInfo(
    "priorityclasses",
    "PriorityClass",
    PriorityClass.parse,
    namespaced=False,
    writable=True,
    platform_writes=True,
    labels_patchable=True,
)
KINDS: dict[str, KindInfo[Any]] = {
    info.plural: info
    for info in (IPPOOLS, IPCLAIMS, IPALLOCATIONS, IPCLASSES, NODES, PODS, SERVICES, QUOTAS, PRIORITYCLASSES)
}

CONSISTENCIES = ("linearizable", "stale")
NODE_ACTIONS = ("cordon", "uncordon", "drain")  # POST /v1/nodes/{name}/{action}: replicated writes


def metadata_patch(
    labels: Mapping[str, str | None] | None, resource_version: int | None, subject: str
) -> dict[str, Any]:
    """The `metadata` of a merge patch: `labels` merge into the object's (a None value removes
    that label), `resource_version` (the object's, as read) makes the update conditional.
    `subject` names the object in a ValueError ("a node")."""
    metadata: dict[str, Any] = {}
    if resource_version is not None:
        if not isinstance(resource_version, int) or isinstance(resource_version, bool) or resource_version < 1:
            raise ValueError(
                f"resource_version is {subject}'s resourceVersion as read (>= 1), not {resource_version!r}"
            )
        metadata["resourceVersion"] = resource_version
    if labels is not None:
        for key, value in labels.items():
            if not isinstance(key, str) or not (value is None or isinstance(value, str)):
                raise ValueError(
                    f"label {key!r}: labels map a string key to a string value, or to None to remove the label"
                )
        metadata["labels"] = dict(labels)
    return metadata


def node_patch(
    labels: Mapping[str, str | None] | None,
    taints: Sequence[Taint] | None,
    unschedulable: bool | None,
    resource_version: int | None = None,
) -> dict[str, Any]:
    """The body of PATCH /v1/nodes/{name}, a JSON merge patch (RFC 7386) of only the parts
    given: `labels` merge into the node's (a None value removes that label), `taints` replace
    the whole list (`[]` removes every taint), `unschedulable` is the cordon. A patch of nothing
    is refused before anything is sent. `resource_version` (the node's, as read) makes it a
    conditional update: the server refuses it (`Conflict`) if the node changed since."""
    if labels is None and taints is None and unschedulable is None:
        raise ValueError("a node update changes labels, taints or unschedulable: give at least one")
    patch: dict[str, Any] = {}
    metadata = metadata_patch(labels, resource_version, "a node")
    if metadata:
        patch["metadata"] = metadata
    spec: dict[str, Any] = {}
    if taints is not None:
        if isinstance(taints, Taint) or not all(isinstance(taint, Taint) for taint in taints):
            raise ValueError("taints is the node's whole new list of Taint(key, value, effect); [] removes them all")
        spec["taints"] = [{"key": taint.key, "value": taint.value, "effect": taint.effect} for taint in taints]
    if unschedulable is not None:
        if not isinstance(unschedulable, bool):
            raise ValueError(f"unschedulable is True (cordon) or False (uncordon), not {unschedulable!r}")
        spec["unschedulable"] = unschedulable
    if spec:
        patch["spec"] = spec
    return patch


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_idempotency_key(key: str) -> str:
    if not _idempotency_key.fullmatch(key):
        raise ValueError(
            f"an idempotency key is 1-{idempotency_key_chars_max} printable ASCII characters without spaces"
        )
    return key


@dataclass(frozen=True)
class RequestFactory:
    """Builds every request the API knows, for one token and (optionally) one tenant."""

    token: str | None
    tenant: tuple[str, str] | None = None  # (org, project) an admin acts for
    user_agent: str = USER_AGENT
    dry_run: bool = False  # every write asks ?dryRun=All: answered as it would be, kept by nobody

    def for_tenant(self, org: str, project: str) -> RequestFactory:
        if not org or not project:
            raise ValueError("acting for a tenant needs both org and project")
        return dataclasses.replace(self, tenant=(org, project))

    def for_dry_run(self) -> RequestFactory:
        return dataclasses.replace(self, dry_run=True)

    def build(
        self,
        method: str,
        path: str,
        *,
        query: Iterable[tuple[str, str]] = (),
        body: Any = None,
        write: bool = False,
        idempotency_key: str | None = None,
        tenant_scoped: bool = True,
        content_type: str = MEDIA_TYPE_JSON,
    ) -> Request:
        params = [(key, value) for key, value in query]
        if tenant_scoped and self.tenant is not None:
            params += [("org", self.tenant[0]), ("project", self.tenant[1])]
        if write and self.dry_run:
            params.append((QUERY_DRY_RUN, DRY_RUN_ALL))
        headers = [("Accept", "application/json"), ("User-Agent", self.user_agent)]
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        data = None
        if body is not None:
            data = _json_bytes(body)
            headers.append(("Content-Type", content_type))
        key = None
        if write:
            key = check_idempotency_key(idempotency_key) if idempotency_key is not None else new_idempotency_key()
            headers.append((HEADER_IDEMPOTENCY, key))
        return Request(method, path, tuple(params), tuple(headers), data, write, key)

    # -- resources --

    @staticmethod
    def _item_path(kind: KindInfo[Any], name: str) -> str:
        if not name:
            raise ValueError(f"a {kind.kind} name must not be empty")
        # Pool names may be `project/name`: the server accepts the slash percent-encoded.
        return f"/v1/{kind.plural}/{urllib.parse.quote(name, safe='')}"

    @staticmethod
    def _namespace(kind: KindInfo[Any], namespace: str | None) -> list[tuple[str, str]]:
        if namespace is None:
            return []
        if not kind.namespaced:
            raise ValueError(f"{kind.plural} are not namespaced")
        return [("namespace", namespace)]

    @staticmethod
    def _consistency(consistency: str | None) -> list[tuple[str, str]]:
        if consistency is None:
            return []
        if consistency not in CONSISTENCIES:
            raise ValueError(f"consistency must be one of {CONSISTENCIES}, not {consistency!r}")
        return [("consistency", consistency)]

    def list(
        self,
        kind: KindInfo[Any],
        *,
        limit: int | None = None,
        continue_token: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        namespace: str | None = None,
        consistency: str | None = None,
    ) -> Request:
        query: list[tuple[str, str]] = []
        if limit is not None:
            query.append(("limit", str(limit)))
        if continue_token:
            query.append(("continue", continue_token))
        if label_selector:
            query.append(("labelSelector", label_selector))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        query += self._namespace(kind, namespace) + self._consistency(consistency)
        return self.build("GET", f"/v1/{kind.plural}", query=query)

    def get(
        self, kind: KindInfo[Any], name: str, *, namespace: str | None = None, consistency: str | None = None
    ) -> Request:
        query = self._namespace(kind, namespace) + self._consistency(consistency)
        return self.build("GET", self._item_path(kind, name), query=query)

    def create(
        self,
        kind: KindInfo[Any],
        name: str,
        spec: Mapping[str, Any] | None,
        *,
        labels: Mapping[str, str] | None = None,
        namespace: str | None = None,
        idempotency_key: str | None = None,
    ) -> Request:
        if not kind.writable:
            raise ValueError(f"{kind.plural} cannot be created over the API")
        body: dict[str, Any] = {"name": name, "spec": dict(spec or {})}
        if labels is not None:
            body["labels"] = dict(labels)
        if namespace is not None:
            self._namespace(kind, namespace)
            body["namespace"] = namespace
        return self.build(
            "POST",
            f"/v1/{kind.plural}",
            body=body,
            write=True,
            idempotency_key=idempotency_key,
            tenant_scoped=not kind.platform_writes,
        )

    def delete(
        self, kind: KindInfo[Any], name: str, *, namespace: str | None = None, idempotency_key: str | None = None
    ) -> Request:
        if not kind.writable:
            raise ValueError(f"{kind.plural} cannot be deleted over the API")
        query = self._namespace(kind, namespace)
        return self.build(
            "DELETE",
            self._item_path(kind, name),
            query=query,
            write=True,
            idempotency_key=idempotency_key,
            tenant_scoped=not kind.platform_writes,
        )

    def label(
        self,
        kind: KindInfo[Any],
        name: str,
        labels: Mapping[str, str | None],
        *,
        namespace: str | None = None,
        resource_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Request:
        """PATCH /v1/{plural}/{name}: a merge patch of the object's labels (`metadata_patch`), sent
        as application/merge-patch+json; a replicated write, retried with its key."""
        if not kind.labels_patchable:
            raise ValueError(f"the labels of {kind.plural} cannot be patched (a quota's are set with the quota)")
        if isinstance(labels, str) or not isinstance(labels, Mapping):
            raise ValueError("labels is a mapping of label to value (None removes the label)")
        return self.build(
            "PATCH",
            self._item_path(kind, name),
            query=self._namespace(kind, namespace),
            body={"metadata": metadata_patch(labels, resource_version, f"the {kind.kind}")},
            write=True,
            idempotency_key=idempotency_key,
            tenant_scoped=not kind.platform_writes,
            content_type=MEDIA_TYPE_MERGE_PATCH,
        )

    # -- nodes and the scheduler (platform routes: they take no tenant parameters) --

    def node_action(self, name: str, action: str, *, idempotency_key: str | None = None) -> Request:
        """cordon, uncordon or drain: a replicated write, retried with its key."""
        if action not in NODE_ACTIONS:
            raise ValueError(f"a node action is one of {NODE_ACTIONS}, not {action!r}")
        path = f"{self._item_path(NODES, name)}/{action}"
        return self.build("POST", path, write=True, idempotency_key=idempotency_key, tenant_scoped=False)

    def node_update(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        taints: Sequence[Taint] | None = None,
        unschedulable: bool | None = None,
        resource_version: int | None = None,
        idempotency_key: str | None = None,
    ) -> Request:
        """PATCH /v1/nodes/{name}: a merge patch of the node's labels, taints and cordon
        (`node_patch`), sent as application/merge-patch+json; a replicated write, retried with
        its key."""
        return self.build(
            "PATCH",
            self._item_path(NODES, name),
            body=node_patch(labels, taints, unschedulable, resource_version),
            write=True,
            idempotency_key=idempotency_key,
            tenant_scoped=False,
            content_type=MEDIA_TYPE_MERGE_PATCH,
        )

    def node_heartbeat(self, name: str) -> Request:
        """A node agent's heartbeat: kept in the members' memory, never in the log, so it is not
        a write: repeating one is always harmless and it carries no Idempotency-Key."""
        return self.build("POST", f"{self._item_path(NODES, name)}/heartbeat", tenant_scoped=False)

    def scheduler_get(self, *, consistency: str | None = None) -> Request:
        return self.build("GET", "/v1/scheduler", query=self._consistency(consistency))

    def scheduler_configure(self, policy: str, *, idempotency_key: str | None = None) -> Request:
        if policy not in SCHEDULING_POLICIES:
            raise ValueError(f"the scheduling policy is one of {SCHEDULING_POLICIES}, not {policy!r}")
        return self.build(
            "PUT",
            "/v1/scheduler",
            body={"policy": policy},
            write=True,
            idempotency_key=idempotency_key,
            tenant_scoped=False,
        )

    def scheduler_retry(self, pods: int | None = None, *, idempotency_key: str | None = None) -> Request:
        """A sweep of the pending queue; `pods`: how many queue entries to search again (server default 16)."""
        body = {} if pods is None else {"pods": pods}
        return self.build(
            "POST", "/v1/scheduler/retry", body=body, write=True, idempotency_key=idempotency_key, tenant_scoped=False
        )

    # -- members and watches --

    def status(self) -> Request:
        return self.build("GET", "/v1/status", tenant_scoped=False)

    def readyz(self) -> Request:
        return self.build("GET", "/readyz", tenant_scoped=False)

    def watch(
        self,
        kinds: Sequence[str] | None,
        resource_version: int | None,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> Request:
        query: list[tuple[str, str]] = []
        if kinds:
            query.append(("kinds", ",".join(kinds)))
        if resource_version is not None:
            query.append(("resourceVersion", str(resource_version)))
        if field_selector:
            query.append(("fieldSelector", field_selector))
        if label_selector:
            query.append(("labelSelector", label_selector))
        return self.build("GET", "/v1/watch", query=query)

    def raw(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        idempotency_key: str | None = None,
    ) -> Request:
        """Any route (an escape hatch for what the typed API does not cover yet)."""
        if not path.startswith("/"):
            raise ValueError("the path must start with /")
        method = method.upper()
        write = method in ("POST", "PUT", "PATCH", "DELETE")
        return self.build(
            method, path, query=sorted((query or {}).items()), body=body, write=write, idempotency_key=idempotency_key
        )


def parse_tenant(tenant: str | tuple[str, str]) -> tuple[str, str]:
    """`"org/project"` or `("org", "project")`."""
    if isinstance(tenant, str):
        org, sep, project = tenant.partition("/")
        if not sep or not org or not project or "/" in project:
            raise ValueError(f"a tenant is 'org/project', not {tenant!r}")
        return org, project
    return tenant


def normalize_kinds(kinds: str | Sequence[str] | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    parts = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    cleaned = tuple(dict.fromkeys(part.strip() for part in parts if part.strip()))
    return cleaned or None


# ---- answers ---------------------------------------------------------------------------------


def replayed(headers: Mapping[str, str]) -> bool:
    """Whether the server answered a write from its record of an earlier try under its key."""
    return headers.get(HEADER_REPLAYED.lower()) == "true"


def decode_answer(status: int, headers: Mapping[str, str], body: bytes) -> Any:
    """The JSON value of a 2xx answer, or the typed exception of any other."""
    if 200 <= status < 300:
        try:
            return json.loads(body.decode("utf-8")) if body else None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"a {status} answer that is not JSON: {exc}", status=status) from None
    error = error_from_answer(status, body, headers.get(HEADER_RETRY_AFTER.lower()))
    error.replayed = replayed(headers)
    raise error


def next_continue(previous: str | None, page: Page[Any]) -> str | None:
    """The continue token to follow after `page`; refuses a server that repeats one (a loop)."""
    token = page.continue_token
    if token is not None and token == previous:
        raise ProtocolError("the server returned the same continue token twice")
    return token


# ---- the retry policy, as data ---------------------------------------------------------------


class Failure(enum.Enum):
    """What went wrong below HTTP."""

    CONNECT = "connect"  # no connection was made: the request was never sent
    TIMEOUT = "timeout"  # sent, but no complete answer in time
    LOST = "lost"  # sent, but the connection broke before a complete answer


class TransportFailure(Exception):
    """Raised by a shell's transport: no complete HTTP answer; `failure` says how far it got."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Safety(enum.Enum):
    """Whether an outcome may be retried, and what a write may have done meanwhile."""

    NEVER = "never"  # an answer to keep: a refusal, or a server bug
    NOTHING_APPLIED = "nothing-applied"  # retry anywhere; nothing was proposed
    MAYBE_APPLIED = "maybe-applied"  # retry (a write with its key); it may have been applied


SAFETY_BY_CODE: dict[str, Safety] = {
    "no_leader": Safety.NOTHING_APPLIED,
    "overloaded": Safety.NOTHING_APPLIED,
    "unavailable": Safety.NOTHING_APPLIED,
    "not_ready": Safety.NOTHING_APPLIED,
    "timeout": Safety.NOTHING_APPLIED,  # a read barrier ran out of time; reads change nothing
    "outcome_unknown": Safety.MAYBE_APPLIED,
}
# Answers whose code the client does not know (a proxy between client and member, say).
SAFETY_BY_STATUS: dict[int, Safety] = {
    502: Safety.MAYBE_APPLIED,
    503: Safety.NOTHING_APPLIED,
    504: Safety.MAYBE_APPLIED,
}
SAFETY_BY_FAILURE: dict[Failure, Safety] = {
    Failure.CONNECT: Safety.NOTHING_APPLIED,
    Failure.TIMEOUT: Safety.MAYBE_APPLIED,
    Failure.LOST: Safety.MAYBE_APPLIED,
}


def safety_of(error: AllotError) -> Safety:
    """Every 4xx is NEVER: refusals are answers, not failures."""
    if 400 <= error.status < 500:
        return Safety.NEVER
    by_code = SAFETY_BY_CODE.get(error.code)
    if by_code is not None:
        return by_code
    return SAFETY_BY_STATUS.get(error.status, Safety.NEVER)


def retry_after_hint_s(details: Mapping[str, Any]) -> float | None:
    """The pause a 503 asks for: the member's estimate in milliseconds when it gives one (an
    election takes a fraction of a second), else its whole-second Retry-After."""
    for name, scale in (("retryAfterMillis", 0.001), ("retryAfterSeconds", 1.0)):
        value = details.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value) * scale
    return None


class RandomSource(Protocol):
    def random(self) -> float: ...


def _check_seconds(value: float, name: str, at_most: float = math.inf) -> None:
    """More than 0 seconds (nan is refused too) and at most `at_most`."""
    if not 0 < value <= at_most:
        bound = "" if math.isinf(at_most) else f" and at most {at_most:g}"
        raise ValueError(f"{name} must be more than 0{bound} seconds, not {value!r}")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard one call tries. Every field is a bound; the defaults suit a LAN cluster whose
    failover takes about a second.

    The attempt budget is counted in rounds over the members: `attempts_max` is the attempts
    per member, so a call over N endpoints makes at most `attempts_max * N` attempts
    (`attempts_for`). Failing over inside a round costs no time (a refused connection returns
    at once) and the pauses come between rounds, so it is the number of rounds that decides
    how long an outage a call rides out: 20 rounds are 19 pauses, about 8-16 s with the
    default back-off (0.05 s doubling to 1 s, jittered), whatever the number of members. A
    budget counted across all members would shrink with every member added: 20 attempts over
    3 members are under 7 rounds, about 2 s, less than a whole cluster takes to restart, so
    more members would mean less outage tolerance. The deadline still bounds the call as
    before; the attempt cap stays a hard bound on work (at most `endpoints_max` members) for
    callers that set a very long deadline. (Dropping the cap and letting the deadline alone
    end a call would also fix the asymmetry, but would change what one member always did: a
    call against a cluster that is not there would hang the whole 30 s instead of ~12 s, and
    with `jitter=1` pauses may be ~0, so only a count bounds the work.)
    """

    attempts_max: int = 20  # attempts per member, i.e. rounds over the ring: a call makes <= attempts_max * N
    deadline_s: float = 30.0  # total time per call, pauses included
    attempt_timeout_s: float = 5.0  # one attempt: connect, send, whole answer
    backoff_initial_s: float = 0.05  # pause after the first round (every member tried once)
    backoff_multiplier: float = 2.0
    backoff_max_s: float = 1.0
    jitter: float = 0.5  # a pause is drawn from [(1 - jitter) * p, p]: clients do not retry in step
    retry_after_max_s: float = 1.0  # a member's Retry-After is honoured up to this
    attempt_time_min_s: float = 0.05  # an attempt needs this much of the deadline left

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("attempts_max must be at least 1")
        _check_seconds(self.deadline_s, "deadline_s")  # the attempt cap bounds the work of a long one
        _check_seconds(self.attempt_timeout_s, "attempt_timeout_s", attempt_timeout_s_max)
        _check_seconds(self.attempt_time_min_s, "attempt_time_min_s")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s or self.backoff_multiplier < 1:
            raise ValueError("backoff needs 0 <= initial <= max and multiplier >= 1")
        if self.retry_after_max_s < 0:
            raise ValueError("retry_after_max_s must not be negative")

    def with_overrides(self, timeout_s: float | None = None, deadline_s: float | None = None) -> RetryPolicy:
        """This policy with a caller's `timeout` (one attempt) and `deadline` (the whole call)."""
        if timeout_s is not None:
            _check_seconds(timeout_s, "timeout", attempt_timeout_s_max)
        if deadline_s is not None:
            _check_seconds(deadline_s, "deadline")
        return dataclasses.replace(
            self,
            attempt_timeout_s=self.attempt_timeout_s if timeout_s is None else timeout_s,
            deadline_s=self.deadline_s if deadline_s is None else deadline_s,
        )

    def for_one_member(self, timeout_s: float | None, deadline_s: float | None) -> RetryPolicy:
        """One attempt (asking a particular member must not fail over), with a caller's
        `timeout` and `deadline` as `with_overrides` takes them, within the deadline: the
        caller's, else this policy's."""
        chosen = self.with_overrides(timeout_s, deadline_s)
        return dataclasses.replace(chosen, attempts_max=1, deadline_s=min(chosen.deadline_s, chosen.attempt_timeout_s))

    def attempts_for(self, members: int) -> int:
        """The attempts one call may make over `members` endpoints: `attempts_max` full rounds."""
        return self.attempts_max * max(1, members)

    def backoff_s(self, round_number: int, random_source: RandomSource) -> float:
        """The pause after `round_number` (1, 2, ...) full rounds over the members."""
        exponent = max(0, round_number - 1)
        ceiling = min(self.backoff_max_s, self.backoff_initial_s * self.backoff_multiplier ** min(exponent, 64))
        return ceiling * (1 - self.jitter * random_source.random())


# ---- one logical call ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    endpoint: Endpoint
    timeout_s: float
    number: int  # 1, 2, ...


@dataclass(frozen=True)
class Done:
    value: Any  # the answer's JSON value
    status: int
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Pause:
    seconds: float  # sleep this long, then ask for the next attempt


Step = Done | Pause


NOT_ASKED = "not asked: the call's deadline ended before its turn"  # a cluster_status report


@dataclass(frozen=True)
class ReconnectPause:
    seconds: float  # sleep this long first
    then_attempt: bool  # then make an attempt; False: the caller's wait has ended, return


def reconnect_pause(resume_at_s: float, until_s: float | None, attempted: bool, now_s: float) -> ReconnectPause:
    """How a reconnecting watch stream spends its caller's wait (until `until_s`; None: no
    limit): it waits out the back-off pause before its next attempt (`resume_at_s`), but not
    past `until_s`, and after an attempt in this call it makes another only while the wait
    lasts. The first attempt of a call is made whatever the timeout once any pause is over, so
    a caller polling with short timeouts still reconnects."""
    wait_s = max(0.0, resume_at_s - now_s)
    if until_s is None:
        return ReconnectPause(wait_s, True)
    if attempted and now_s >= until_s:
        return ReconnectPause(0.0, False)
    if wait_s > 0 and now_s + wait_s > until_s:
        return ReconnectPause(max(0.0, until_s - now_s), False)
    return ReconnectPause(wait_s, True)


class Call:
    """One logical request across its attempts.

        call = Call(request, policy, ring, now_s, random_source)
        while True:
            attempt = call.next_attempt(now_s)           # raises when it is time to give up
            ... send to attempt.endpoint within attempt.timeout_s ...
            step = call.answered(attempt, status, headers, body, now_s)   # or call.failed(...)
            if isinstance(step, Done): return step.value
            sleep(step.seconds)

    Endpoints are tried in ring order from the preferred one; a failed member is left for the
    next at once, and after a full round (every member tried) the call pauses: exponential
    back-off with jitter, at least the Retry-After a member asked for (bounded). The attempt
    budget is `policy.attempts_max` rounds (`attempts_max` times the number of endpoints), so
    adding members never shortens how long a call keeps trying. When attempts or time run out
    the caller gets: `OutcomeUnknown` (with the key) for a write that may have
    been applied; otherwise an `Unavailable`: the last member's own (`NoLeader`, `ReadTimeout`,
    ...) if it said one, else one listing what went wrong.
    """

    def __init__(
        self,
        request: Request,
        policy: RetryPolicy,
        ring: EndpointRing,
        now_s: float,
        random_source: RandomSource,
    ) -> None:
        self.request = request
        self.policy = policy
        self.ring = ring
        self.random_source = random_source
        self.started_s = now_s
        self.deadline_s = now_s + policy.deadline_s
        self.attempts = 0
        self.attempts_max = policy.attempts_for(len(ring.endpoints))  # rounds, not attempts overall
        self.maybe_applied = False  # a write attempt may have reached the state machine
        self.failures: list[str] = []  # the latest few, for the give-up message
        self.last_error: AllotError | None = None  # the last attempt's error answer, if it had one
        self._next: Endpoint = ring.preferred
        self._tried: set[Endpoint] = set()
        self._rounds = 0
        self._retry_after_s = 0.0

    # -- the shell's side --

    def next_attempt(self, now_s: float) -> Attempt:
        remaining_s = self.deadline_s - now_s
        if self.attempts >= self.attempts_max:
            raise self._give_up(f"{self.attempts} attempts made")
        if remaining_s < self.policy.attempt_time_min_s:
            raise self._give_up(f"the deadline of {self.policy.deadline_s:g} s passed")
        self.attempts += 1
        return Attempt(self._next, min(self.policy.attempt_timeout_s, remaining_s), self.attempts)

    def answered(self, attempt: Attempt, status: int, headers: Mapping[str, str], body: bytes, now_s: float) -> Step:
        """An HTTP answer arrived (headers lower-cased)."""
        try:
            value = decode_answer(status, headers, body)
        except AllotError as error:
            safety = safety_of(error)
            if safety is Safety.NEVER:
                self.ring.answered(attempt.endpoint)  # it answered: a refusal is an answer
                raise
            self.last_error = error
            return self._retry(attempt, safety, f"{error.status} {error.code}: {error.message}", now_s, error)
        self.ring.answered(attempt.endpoint)
        return Done(value, status, headers)

    def connected(self, attempt: Attempt) -> None:
        """A streaming answer started (a watch): the member is good."""
        self.ring.answered(attempt.endpoint)

    def failed(self, attempt: Attempt, failure: Failure, detail: str, now_s: float) -> Pause:
        """No (complete) HTTP answer: connection refused, timed out, or broken."""
        self.last_error = None
        return self._retry(attempt, SAFETY_BY_FAILURE[failure], f"{failure.value}: {detail}", now_s, None)

    # -- decisions --

    def _retry(self, attempt: Attempt, safety: Safety, detail: str, now_s: float, error: AllotError | None) -> Pause:
        self.ring.failed(attempt.endpoint)
        if safety is Safety.MAYBE_APPLIED and self.request.write:
            self.maybe_applied = True
        self.failures.append(f"{attempt.endpoint} {detail}")
        del self.failures[:-failures_kept_max]
        if error is not None:
            retry_after = retry_after_hint_s(error.details)
            if retry_after is not None:
                self._retry_after_s = max(self._retry_after_s, min(retry_after, self.policy.retry_after_max_s))
        self._tried.add(attempt.endpoint)
        candidate = self.ring.after(attempt.endpoint)
        pause_s = 0.0
        if candidate in self._tried:  # every member had its turn: a new round, after a pause
            self._rounds += 1
            pause_s = max(self.policy.backoff_s(self._rounds, self.random_source), self._retry_after_s)
            self._tried.clear()
            self._retry_after_s = 0.0
        self._next = candidate
        if self.attempts >= self.attempts_max:
            raise self._give_up(f"{self.attempts} attempts made")
        if now_s + pause_s + self.policy.attempt_time_min_s > self.deadline_s:
            raise self._give_up(f"the deadline of {self.policy.deadline_s:g} s leaves no time for another attempt")
        return Pause(pause_s)

    def _give_up(self, why: str) -> AllotError:
        counts = collections.Counter(self.failures)  # the same refusal five times is said once
        tried = "; ".join(f"{f} (x{counts[f]})" if counts[f] > 1 else f for f in counts) or "no attempt was made"
        if self.attempts > len(self.failures) > 0:
            tried = f"the last {len(self.failures)} failures: {tried}"
        details: dict[str, Any] = {"attempts": self.attempts, "failures": list(self.failures)}
        if self.request.write and self.maybe_applied:
            if isinstance(self.last_error, OutcomeUnknown) and self.last_error.idempotency_key is not None:
                return self.last_error
            return OutcomeUnknown(
                f"gave up ({why}); the write may or may not have been applied: repeat it with "
                f"idempotency key {self.request.idempotency_key} to learn its result. Attempts: {tried}",
                details=details,
                idempotency_key=self.request.idempotency_key,
            )
        if isinstance(self.last_error, Unavailable):
            return self.last_error  # the member's own words: NoLeader, ReadTimeout, ...
        message = f"no member answered ({why}): {tried}"
        if self.request.write:
            message += "; nothing was applied"
            details["requestId"] = self.request.idempotency_key
        return Unavailable(message, details=details)


# ---- watch streams ---------------------------------------------------------------------------


class LineSplitter:
    """Bytes in, complete lines out; a line longer than the limit is a protocol error."""

    def __init__(self, line_bytes_max: int = watch_line_bytes_max) -> None:
        self.line_bytes_max = line_bytes_max
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buffer += chunk
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            line = bytes(self._buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.line_bytes_max or any(len(line) > self.line_bytes_max for line in lines):
            raise ProtocolError(f"a watch line longer than {self.line_bytes_max} bytes")
        return lines

    def reset(self) -> None:
        """A new connection: a half line from the old one is worthless."""
        self._buffer.clear()


class WatchCursor:
    """Where a watch stands, so a new connection resumes it exactly.

    The server writes each revision's events together, but a connection can break in the
    middle of them. The cursor therefore tracks two things: the last revision known complete
    (every event of it delivered: a later revision's event or a BOOKMARK at or past it came),
    and how many events of the revision in progress were delivered. A new connection resumes
    from the revision before the one in progress and skips the events already delivered: the
    event log gives every member the same events in the same order, so the count is enough.
    """

    def __init__(
        self,
        kinds: Sequence[str] | None,
        resource_version: int | None,
        field_selector: str | None = None,
        label_selector: str | None = None,
    ) -> None:
        self.kinds = tuple(kinds) if kinds else None
        self.field_selector = field_selector or None  # pods only: spec.nodeName=n1, status.phase=Pending
        self.label_selector = label_selector or None  # any kind: tier=web,env!=dev
        self.complete: int | None = resource_version  # every event up to here was delivered
        self._partial: int | None = None  # the revision whose events are being delivered
        self._delivered = 0  # events of `_partial` handed to the caller
        self._skip = 0  # events of `_partial` still to drop on this connection (already delivered)

    @property
    def resource_version(self) -> int | None:
        """The revision to resume from: every event up to it has been delivered."""
        return self._partial - 1 if self._partial is not None else self.complete

    def request(self, factory: RequestFactory) -> Request:
        """The request for a new connection, resuming where the last one stopped."""
        self._skip = self._delivered
        return factory.watch(self.kinds, self.resource_version, self.field_selector, self.label_selector)

    def on_line(self, line: bytes) -> WatchEvent | None:
        """The event to deliver, or None (a bookmark, or an event delivered before)."""
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ProtocolError(f"a watch line that is not JSON: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("a watch line that is not a JSON object")
        kind_of_line = message.get("type")
        obj = message.get("object")
        if kind_of_line == "ERROR":
            error = obj.get("error") if isinstance(obj, dict) else None
            raise error_from_payload(error if isinstance(error, dict) else {})
        if not isinstance(obj, dict) or not isinstance(kind_of_line, str):
            raise ProtocolError("a watch line without type and object")
        metadata = obj.get("metadata")
        revision = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
        if not isinstance(revision, int) or isinstance(revision, bool):
            raise ProtocolError("a watch line without metadata.resourceVersion")
        if kind_of_line == "BOOKMARK":
            self._bookmark(revision)
            return None
        return self._event(kind_of_line, obj, revision, message)

    def _bookmark(self, revision: int) -> None:
        if self._partial is not None:
            if revision < self._partial:
                return  # an older bookmark tells nothing new
            self._partial, self._delivered, self._skip = None, 0, 0
        self.complete = revision if self.complete is None else max(self.complete, revision)

    def _event(self, event_type: str, obj: dict[str, Any], revision: int, raw: dict[str, Any]) -> WatchEvent | None:
        if self.complete is not None and revision <= self.complete:
            return None  # delivered before: a resumed stream never repeats an event
        if self._partial is None or revision > self._partial:
            if self._partial is not None:
                self.complete = self._partial  # a later revision began: the earlier one is whole
            self._partial, self._delivered, self._skip = revision, 0, 0
        elif revision < self._partial:
            raise ProtocolError(f"watch revisions went backwards: {revision} after {self._partial}")
        if self._skip > 0:
            self._skip -= 1
            return None
        self._delivered += 1
        parsed = parse_object(obj)
        return WatchEvent(event_type, parsed.kind, parsed, revision, raw)


class ClientSettings(abc.ABC):
    """What both shells (`Client`, `AsyncClient`) hold besides their transport: the endpoint
    ring, the retry policy, the request factory (with its tenant) and the random source.

    A shell calls `_configure(...)` from its constructor (with `os.environ`: the core does no
    I/O), then sets its transport, and defines `_bind_resources()`."""

    _random: random.Random
    _ring: EndpointRing
    _policy: RetryPolicy
    _factory: RequestFactory
    _owns_transport: bool

    def _configure(
        self,
        endpoints: str | Sequence[str] | None,
        token: str | None,
        *,
        timeout: float | None,
        deadline: float | None,
        retry: RetryPolicy | None,
        tenant: str | tuple[str, str] | None,
        random_source: random.Random | None,
        environ: Mapping[str, str],
    ) -> None:
        resolved, resolved_token = resolve_settings(endpoints, token, environ)
        self._random = random_source or random.Random()
        self._ring = EndpointRing(resolved, int(self._random.random() * len(resolved)))
        self._policy = (retry or RetryPolicy()).with_overrides(timeout, deadline)
        factory = RequestFactory(resolved_token)
        self._factory = factory.for_tenant(*parse_tenant(tenant)) if tenant is not None else factory
        self._owns_transport = True

    @abc.abstractmethod
    def _bind_resources(self) -> None:
        """Set the shell's typed resource accessors (`ippools`, `ipclaims`, ...)."""

    @property
    def endpoints(self) -> tuple[str, ...]:
        return tuple(endpoint.url for endpoint in self._ring.endpoints)

    @property
    def policy(self) -> RetryPolicy:
        return self._policy

    def _derive_for_tenant(self, org: str, project: str) -> Self:
        """A shallow copy acting for one tenant, sharing this one's connections (it never closes them)."""
        return self._derive(self._factory.for_tenant(org, project))

    def _derive_for_dry_run(self) -> Self:
        """A shallow copy whose writes are dry runs, sharing this one's connections."""
        return self._derive(self._factory.for_dry_run())

    def _derive(self, factory: RequestFactory) -> Self:
        derived = object.__new__(type(self))
        derived.__dict__.update(self.__dict__)
        derived._factory = factory
        derived._owns_transport = False
        derived._bind_resources()
        return derived
