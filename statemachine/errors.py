"""Refusals and broken invariants.

Two very different things can go wrong while applying a command:

* The command is wrong for the current state (bad input, unknown pool, pool exhausted, ...).
  That is an expected, replicated outcome: every replica reaches the same refusal, so it is
  returned as a value (`Rejected`) and the command changes nothing.
* The state itself is wrong (a free block overlaps an allocation, a counter disagrees with the
  records). Continuing would let this replica drift away from the others, so the state machine
  raises `InvariantViolation` and the member must stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

# The closed set of refusal codes. Clients map these to exceptions and HTTP statuses, so a
# code is never renamed or reused for a different meaning.
INVALID: Final = "invalid"
NOT_FOUND: Final = "not_found"
ALREADY_EXISTS: Final = "already_exists"
CONFLICT: Final = "conflict"
POOL_EXHAUSTED: Final = "pool_exhausted"
QUOTA_EXCEEDED: Final = "quota_exceeded"
UNSCHEDULABLE: Final = "unschedulable"
FORBIDDEN: Final = "forbidden"
GONE: Final = "gone"
OVERLOADED: Final = "overloaded"  # refused for now, nothing changed; details.retryAfterMillis says when to retry

REJECTION_CODES: Final = (
    INVALID,
    NOT_FOUND,
    ALREADY_EXISTS,
    CONFLICT,
    POOL_EXHAUSTED,
    QUOTA_EXCEEDED,
    UNSCHEDULABLE,
    FORBIDDEN,
    GONE,
    OVERLOADED,
)


@dataclass(eq=True)
class Rejected(Exception):
    """An expected refusal. Raised inside handlers for brevity, returned from `apply` as a value.

    Not frozen: the interpreter sets `__traceback__` and `__context__` on raised exceptions.
    """

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in REJECTION_CODES:
            raise InvariantViolation(f"unknown rejection code {self.code!r}")
        super().__init__(f"{self.code}: {self.message}")

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "details": dict(self.details)}


class InvariantViolation(Exception):
    """The replicated state is inconsistent. The member applying it must stop, loudly."""


def invalid(message: str, field_path: str | None = None, **details: Any) -> Rejected:
    if field_path is not None:
        details = {"field": field_path, **details}
    return Rejected(INVALID, message, details)


LABELS_PATCH_HINT: Final = (
    "to change its labels, patch metadata.labels (PATCH the object, or `allot KIND label NAME KEY=VALUE`)"
)


def already_exists(
    subject: str,
    same_spec: bool,
    same_labels: bool,
    remedy: str,
    holds: str = "",
    labels_patchable: bool = False,
    **details: Any,
) -> Rejected:
    """A create naming an object that exists with another spec, other labels, or both.

    One rule for every kind with labels: a create answers the existing object (created=False)
    only when its spec and its labels are both identical (labels compared as `check_labels`
    leaves them, sorted, so their order never matters); anything else is `already_exists`,
    saying what differs (`details.differs`: "spec", "labels") and how to change it (`remedy`).
    A create never changes an existing object, not even its labels: a client told "unchanged"
    must hold exactly what it asked for. With `labels_patchable`, other labels alone are
    answered with how to patch them (`LABELS_PATCH_HINT`) instead of `remedy`."""
    if same_spec and labels_patchable:
        remedy = LABELS_PATCH_HINT
    differs: list[str] = []
    said: list[str] = []
    if not same_spec:
        differs.append("spec")
        said.append("a different spec")
    if not same_labels:
        differs.append("labels")
        said.append("different labels")
    return Rejected(
        ALREADY_EXISTS, f"{subject} with {' and '.join(said)}{holds}; {remedy}", {**details, "differs": differs}
    )


def changed_since_read(subject: str, kind: str, name: str, current_version: int, read_version: int) -> Rejected:
    """A conditional update (a resourceVersion precondition, as in a Kubernetes patch) of an
    object that changed since the caller read it: its patch was computed from a state that is
    gone (a read-modify-write race). `subject` names it in the message ("Node n1")."""
    return Rejected(
        CONFLICT,
        f"{subject} changed since it was read: it is at resourceVersion {current_version}, not "
        f"{read_version}; read it again and apply your change to that",
        {"kind": kind, "name": name, "resourceVersion": current_version},
    )


def tenant_object_not_found(
    kind: str, namespace: str, name: str, platform_admin: bool, platform_may_own: bool, qualified: bool = True
) -> Rejected:
    """`not_found` for a namespaced tenant object (IPClaim, Pod, Service, ...). To an admin acting
    for the platform, whose own key range holds no tenant objects while its lists show every
    tenant's, it says how to reach the one it probably means. `qualified`: the message names
    the object as namespace/name (writes) or by its name and then the namespace (reads)."""
    message = f"{kind} {namespace}/{name} not found" if qualified else f"{kind} {name} not found"
    if platform_admin:
        if not qualified:
            message += f" in the platform's namespace {namespace}"
        owners = "the platform or a project" if platform_may_own else "projects"
        message += (
            f"; {kind}s belong to {owners}: for a tenant's, act for it (?org=...&project=..., the CLI's --as "
            "ORG/PROJECT), and give its namespace if not default (the list shows each object's org, project and "
            "namespace)"
        )
    return Rejected(NOT_FOUND, message, {"kind": kind, "name": name})
