"""Typed exceptions: one class per stable error code of the HTTP API, mapped in ONE table.

Every error the client raises is an `AllotError` with `.code` (the API's stable code),
`.status` (the HTTP status it stands for), `.message` and `.details` (the server's `details`
object, or what the client knows). Both clients build them with `error_from_answer`, so the
same answer raises the same exception in the sync and the async client.

Codes the client does not know yet (a newer server) still raise something sensible: a generic
class chosen by the HTTP status (`RequestRefused` for 4xx, `Unavailable` for 503,
`ServerError` for other 5xx, `ProtocolError` for anything else).

The hierarchy lets callers catch broadly or narrowly:

    AllotError
    ├── RequestRefused (4xx: the request was wrong for the state; never retried)
    │   ├── Invalid, Unauthorized, Forbidden, NotFound, MethodNotAllowed, RequestTimeout,
    │   │   AlreadyExists, Conflict, PoolExhausted, QuotaExceeded, Unschedulable, Gone,
    │   │   PayloadTooLarge, UnsupportedMediaType
    ├── ServerError (5xx)
    │   ├── InternalError
    │   ├── Unavailable (nothing was applied; retried on another member)
    │   │   ├── NoLeader, Overloaded, NotReady
    │   │   └── ReadTimeout (a read barrier's deadline passed; nothing changed)
    │   └── OutcomeUnknown (a write may or may not have been applied; `.idempotency_key`)
    └── ProtocolError (the answer was not the API's: not JSON, too large, a strange status)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

error_message_chars_max = 2000  # a message quoted from a non-JSON answer is cut to this


def _detail_int(details: Mapping[str, Any], key: str) -> int | None:
    value = details.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class AllotError(Exception):
    """Base of every error the client raises."""

    default_code: ClassVar[str] = "error"
    default_status: ClassVar[int] = 0

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code if code is not None else self.default_code
        self.status = status if status is not None else self.default_status
        self.details: dict[str, Any] = dict(details or {})
        # The server answered a write with the refusal it gave an earlier request under the
        # same idempotency key (within its 15-minute window), not a new judgement.
        self.replayed = False

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status}, message={self.message!r})"


# ---- 4xx: refusals ---------------------------------------------------------------------------


class RequestRefused(AllotError):
    """The server refused the request (4xx). Retrying the same request gives the same answer."""

    default_code = "refused"
    default_status = 400


class Invalid(RequestRefused):
    default_code = "invalid"
    default_status = 400

    @property
    def field(self) -> str | None:
        """The request field to fix (`spec.prefixLength`, `limit`, ...), when the server names one."""
        value = self.details.get("field")
        return value if isinstance(value, str) else None


class Unauthorized(RequestRefused):
    default_code = "unauthorized"
    default_status = 401


class Forbidden(RequestRefused):
    default_code = "forbidden"
    default_status = 403


class NotFound(RequestRefused):
    default_code = "not_found"
    default_status = 404


class MethodNotAllowed(RequestRefused):
    default_code = "method_not_allowed"
    default_status = 405


class RequestTimeout(RequestRefused):
    default_code = "request_timeout"
    default_status = 408


class AlreadyExists(RequestRefused):
    default_code = "already_exists"
    default_status = 409


class Conflict(RequestRefused):
    default_code = "conflict"
    default_status = 409


class PoolExhausted(RequestRefused):
    default_code = "pool_exhausted"
    default_status = 409

    @property
    def largest_free_prefix(self) -> int | None:
        """Prefix length of the largest free block (29 for a free /29); None when the pool is full."""
        value = self.details.get("largestFreePrefix")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def pool(self) -> str | None:
        value = self.details.get("pool")
        return value if isinstance(value, str) else None


class QuotaExceeded(RequestRefused):
    """A pod that could never fit its quota, or a service over its quota. (A pod that would fit
    once others go is not refused: it waits, Pending with reason QuotaExceeded.)"""

    default_code = "quota_exceeded"
    default_status = 403  # as Kubernetes answers an exceeded ResourceQuota

    @property
    def quota(self) -> str | None:
        """The quota that refused: `acme` (an org's) or `acme/web` (a project's)."""
        value = self.details.get("quota")
        return value if isinstance(value, str) else None

    @property
    def resource(self) -> str | None:
        """The limit passed: `cpuMillis`, `memoryBytes`, `pods`, `services`, `addressesByClass.gold`, ..."""
        value = self.details.get("resource")
        return value if isinstance(value, str) else None

    @property
    def limit(self) -> int | None:
        return _detail_int(self.details, "limit")

    @property
    def used(self) -> int | None:
        return _detail_int(self.details, "used")

    @property
    def requested(self) -> int | None:
        return _detail_int(self.details, "requested")


class Unschedulable(RequestRefused):
    default_code = "unschedulable"
    default_status = 409


class Gone(RequestRefused):
    """A watch's resourceVersion was compacted away: list again and watch from the list's version."""

    default_code = "gone"
    default_status = 410

    @property
    def compacted_revision(self) -> int | None:
        value = self.details.get("compactedRevision")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class PayloadTooLarge(RequestRefused):
    default_code = "too_large"
    default_status = 413


class UnsupportedMediaType(RequestRefused):
    default_code = "unsupported_media_type"
    default_status = 415


# ---- 5xx: the server could not answer --------------------------------------------------------


class ServerError(AllotError):
    default_code = "server_error"
    default_status = 500


class InternalError(ServerError):
    """A bug in the server (it logged the traceback). Not retried: it would likely fail again."""

    default_code = "internal"
    default_status = 500


class Unavailable(ServerError):
    """No member could serve the request; nothing was applied. Raised by the client too, when
    every attempt failed before anything could have been proposed."""

    default_code = "unavailable"
    default_status = 503

    @property
    def retry_after_s(self) -> float | None:
        value = self.details.get("retryAfterSeconds")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class NoLeader(Unavailable):
    default_code = "no_leader"
    default_status = 503


class Overloaded(Unavailable):
    default_code = "overloaded"
    default_status = 503


class NotReady(Unavailable):
    default_code = "not_ready"
    default_status = 503


class ReadTimeout(Unavailable):
    """A linearizable read could not be confirmed in time; nothing changed."""

    default_code = "timeout"
    default_status = 504


class OutcomeUnknown(ServerError):
    """A write may or may not have been applied. Repeat it with the same `idempotency_key`
    (the `idempotency_key=` argument of every write): it is applied at most once, and the
    repeat returns the first result."""

    default_code = "outcome_unknown"
    default_status = 504

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> None:
        merged = dict(details or {})
        if idempotency_key is not None:
            merged.setdefault("requestId", idempotency_key)
        super().__init__(message, code=code, status=status, details=merged)

    @property
    def idempotency_key(self) -> str | None:
        value = self.details.get("requestId")
        return value if isinstance(value, str) else None


class ProtocolError(AllotError):
    """The answer was not what the API promises (not JSON, too large, an unexpected status)."""

    default_code = "protocol_error"
    default_status = 0


# ---- the one table ---------------------------------------------------------------------------

ERROR_CLASSES: dict[str, type[AllotError]] = {
    "invalid": Invalid,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "request_timeout": RequestTimeout,
    "already_exists": AlreadyExists,
    "conflict": Conflict,
    "pool_exhausted": PoolExhausted,
    "quota_exceeded": QuotaExceeded,
    "unschedulable": Unschedulable,
    "gone": Gone,
    "too_large": PayloadTooLarge,
    "unsupported_media_type": UnsupportedMediaType,
    "internal": InternalError,
    "no_leader": NoLeader,
    "overloaded": Overloaded,
    "unavailable": Unavailable,
    "not_ready": NotReady,
    "outcome_unknown": OutcomeUnknown,
    "timeout": ReadTimeout,
}


def class_for(code: str, status: int) -> type[AllotError]:
    """The exception class for an error code; a generic one chosen by status for unknown codes."""
    known = ERROR_CLASSES.get(code)
    if known is not None:
        return known
    if status == 503:
        return Unavailable
    if 400 <= status < 500:
        return RequestRefused
    if 500 <= status < 600:
        return ServerError
    return ProtocolError


def error_from_payload(error: Mapping[str, Any], status: int | None = None) -> AllotError:
    """The exception for an API error object `{code, message, details}` (as a watch's ERROR
    line carries it); the status defaults to the one the code stands for."""
    code = error.get("code")
    code = code if isinstance(code, str) and code else "internal"
    known = ERROR_CLASSES.get(code)
    resolved_status = status if status is not None else known.default_status if known is not None else 500
    raw_details = error.get("details")
    details = dict(raw_details) if isinstance(raw_details, dict) else {}
    cls = class_for(code, resolved_status)
    return cls(str(error.get("message") or code), code=code, status=resolved_status, details=details)


def error_from_answer(status: int, body: bytes, retry_after: str | None = None) -> AllotError:
    """The exception for an HTTP error answer: the API's `{"error": {code, message, details}}`,
    or a generic one by status when the body is something else (a proxy's HTML page)."""
    code: str | None = None
    message = ""
    details: dict[str, Any] = {}
    try:
        parsed = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        code = error["code"]
        message = str(error.get("message", ""))
        raw_details = error.get("details")
        if isinstance(raw_details, dict):
            details = raw_details
    else:
        text = body.decode("utf-8", "replace").strip()
        message = f"HTTP {status}" + (f": {text[:error_message_chars_max]}" if text else "")
    if retry_after is not None and "retryAfterSeconds" not in details and retry_after.strip().isdigit():
        details["retryAfterSeconds"] = int(retry_after.strip())  # an HTTP-date: the client's back-off applies
    cls = class_for(code or "", status)
    return cls(message or f"HTTP {status}", code=code or cls.default_code, status=status, details=details)
