"""Pods: tenant objects, namespaced like claims, that the scheduler binds to nodes.

`spec` (all optional):
* `requests`: `{cpuMillis, memoryBytes}`; each one left out takes the project quota's
  `defaultRequests` value (or zero), as a Kubernetes LimitRange default does, filled in at
  creation and stored, so a later change of defaults never changes what an existing pod is
  charged. Left out with no default (or a default of 0) while the project's or org's quota
  limits that resource, the pod is refused (`quota_exceeded`), as Kubernetes' ResourceQuota
  admission does; an explicit 0 is a request. The requests the defaults filled in are listed
  in `spec.defaultedRequests` (set by the server, as Kubernetes' LimitRanger notes them on a
  pod; absent when none were), and the same create again reads those as the pod got them, so a
  retry after the defaults changed is still the same pod; a request the pod gave itself and the
  retry leaves out makes it another pod (`already_exists`).
* `nodeSelector`: labels the node must carry (all of them).
* `nodeAffinity`: required match expressions, all of which must hold:
  `{key, operator: In|NotIn|Exists|DoesNotExist, values}` (a single Kubernetes node selector
  term; `NotIn` and `DoesNotExist` match nodes without the key).
* `tolerations`: `{key, operator: Equal|Exists, value, effect, tolerationSeconds}`; Kubernetes'
  matching rules (an empty effect tolerates both effects; `Exists` with no key tolerates every
  taint). `tolerationSeconds` (0 to a year, effect NoExecute only) is how long the pod stays on
  a node once the NoExecute taint it matches is there (the unreachable taint of a NotReady node:
  cluster.node_evict_unready; any other: cluster.node_evict_tainted); the first matching
  toleration decides (`toleration_ms`); stored only when given.
* `priority`: integer in [-2^31, 2^31); higher is scheduled first.
* `schedulingPolicy`: `spread` or `binpack`, overriding the cluster's.

The scheduler sets `spec.nodeName` when it binds the pod, with `status.podIP`; a pending pod has
`status.phase: Pending` with a reason. Pods are immutable once created (delete and create).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from statemachine import keys, quotas
from statemachine.codec import loads
from statemachine.errors import invalid
from statemachine.fields import (
    check_label_key,
    check_label_value,
    check_labels,
    check_map,
    check_name,
    check_node_name,
    list_items_max,
    opt_choice,
    opt_int,
    opt_str,
)
from statemachine.nodes import NO_EXECUTE, TAINT_EFFECTS
from statemachine.quotas import check_requests
from statemachine.view import ReadView

KIND: Final = "Pod"
DEFAULT_NAMESPACE: Final = "default"
PHASE_PENDING: Final = "Pending"
PHASE_BOUND: Final = "Bound"
# Every phase a pod can be in: queries refuses a field selector asking for any other.
PHASES: Final[tuple[str, ...]] = (PHASE_PENDING, PHASE_BOUND)
SPREAD: Final = "spread"
BINPACK: Final = "binpack"
POLICIES: Final = (SPREAD, BINPACK)
AFFINITY_OPERATORS: Final = ("In", "NotIn", "Exists", "DoesNotExist")
TOLERATION_OPERATORS: Final = ("Equal", "Exists")
priority_min = quotas.priority_min
priority_max = quotas.priority_max

_client_body_fields: Final = ("name", "namespace", "labels", "spec")
_body_fields: Final = (*_client_body_fields, "plan")
_spec_fields: Final = (
    "requests",
    "nodeSelector",
    "nodeAffinity",
    "tolerations",
    "priority",
    "priorityClassName",
    "schedulingPolicy",
)
_expression_fields: Final = ("key", "operator", "values")
_toleration_fields: Final = ("key", "operator", "value", "effect", "tolerationSeconds")
toleration_seconds_max = 31_536_000  # a year: how long a NoExecute taint may be tolerated, at most


@dataclass(init=False, unsafe_hash=True)
class Needs:
    """What the filters and scores read from a pod spec, in the shape they read it."""

    # Final fields and a hand-written __init__: see addresses.Block.
    cpu_millis: Final[int]
    memory_bytes: Final[int]
    selector: Final[tuple[tuple[str, str], ...]]
    affinity: Final[tuple[tuple[str, str, tuple[str, ...]], ...]]  # (key, operator, values)
    tolerations: Final[tuple[tuple[str, str, str, str], ...]]  # (key, operator, value, effect)
    policy: Final[str | None]
    priority: Final[int]  # a nominee of higher priority keeps its reservation from this pod

    def __init__(
        self,
        cpu_millis: int,
        memory_bytes: int,
        selector: tuple[tuple[str, str], ...],
        affinity: tuple[tuple[str, str, tuple[str, ...]], ...],
        tolerations: tuple[tuple[str, str, str, str], ...],
        policy: str | None,
        priority: int,
    ) -> None:
        self.cpu_millis = cpu_millis
        self.memory_bytes = memory_bytes
        self.selector = selector
        self.affinity = affinity
        self.tolerations = tolerations
        self.policy = policy
        self.priority = priority

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Needs:
        requests = spec["requests"]
        return cls(
            requests["cpuMillis"],
            requests["memoryBytes"],
            tuple(spec["nodeSelector"].items()),
            tuple((item["key"], item["operator"], tuple(item["values"])) for item in spec["nodeAffinity"]),
            tuple((item["key"], item["operator"], item["value"], item["effect"]) for item in spec["tolerations"]),
            spec["schedulingPolicy"],
            spec["priority"],
        )


def _check_affinity(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("spec.nodeAffinity must be a list of match expressions", "spec.nodeAffinity")
    if len(value) > list_items_max:
        raise invalid(f"spec.nodeAffinity has more than {list_items_max} expressions", "spec.nodeAffinity")
    expressions = []
    for position, item in enumerate(value):
        field_path = f"spec.nodeAffinity[{position}]"
        given = check_map(item, field_path, _expression_fields)
        key = opt_str(given, "key", f"{field_path}.key")
        if key is None:
            raise invalid(f"{field_path}.key is required", f"{field_path}.key")
        check_label_key(key, f"{field_path}.key")
        operator = opt_choice(given, "operator", f"{field_path}.operator", AFFINITY_OPERATORS)
        if operator is None:
            raise invalid(f"{field_path}.operator is required ({', '.join(AFFINITY_OPERATORS)})", field_path)
        values = given.get("values")
        if values is None:  # only absence means none: {}, 0 or "" is a wrong type, refused below
            values = []
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise invalid(f"{field_path}.values must be a list of strings", f"{field_path}.values")
        if len(values) > list_items_max:
            raise invalid(f"{field_path}.values has more than {list_items_max} items", f"{field_path}.values")
        for text in values:
            check_label_value(text, f"{field_path}.values")
        if operator in ("In", "NotIn") and not values:
            raise invalid(f"{field_path}: operator {operator} needs values", f"{field_path}.values")
        if operator in ("Exists", "DoesNotExist") and values:
            raise invalid(f"{field_path}: operator {operator} takes no values", f"{field_path}.values")
        expressions.append({"key": key, "operator": operator, "values": sorted(set(values))})
    return expressions


def _check_tolerations(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("spec.tolerations must be a list", "spec.tolerations")
    if len(value) > list_items_max:
        raise invalid(f"spec.tolerations has more than {list_items_max} items", "spec.tolerations")
    tolerations = []
    for position, item in enumerate(value):
        field_path = f"spec.tolerations[{position}]"
        given = check_map(item, field_path, _toleration_fields)
        key = opt_str(given, "key", f"{field_path}.key") or ""
        if key:
            check_label_key(key, f"{field_path}.key")
        operator = opt_choice(given, "operator", f"{field_path}.operator", TOLERATION_OPERATORS) or "Equal"
        toleration_value = opt_str(given, "value", f"{field_path}.value") or ""
        check_label_value(toleration_value, f"{field_path}.value")
        if operator == "Equal" and not key:
            raise invalid(f"{field_path}: operator Equal needs a key", f"{field_path}.key")
        if operator == "Exists" and toleration_value:
            raise invalid(f"{field_path}: operator Exists takes no value", f"{field_path}.value")
        effect = opt_choice(given, "effect", f"{field_path}.effect", TAINT_EFFECTS) or ""
        toleration: dict[str, Any] = {"key": key, "operator": operator, "value": toleration_value, "effect": effect}
        seconds = opt_int(given, "tolerationSeconds", f"{field_path}.tolerationSeconds", 0, toleration_seconds_max)
        if seconds is not None:  # stored only when given: a toleration without it holds for ever
            if effect != NO_EXECUTE:
                raise invalid(
                    f"{field_path}: tolerationSeconds applies to a NoExecute taint; set effect NoExecute",
                    f"{field_path}.effect",
                )
            toleration["tolerationSeconds"] = seconds
        tolerations.append(toleration)
    return tolerations


def tolerated(tolerations: tuple[tuple[str, str, str, str], ...], key: str, value: str, effect: str) -> bool:
    """Kubernetes' rule: a toleration matches the taint (key, value, effect) when its effect is
    empty or the same, and it is `Exists` with no key or the taint's key, or `Equal` with the
    taint's key and value."""
    for toleration_key, operator, toleration_value, toleration_effect in tolerations:
        if toleration_effect and toleration_effect != effect:
            continue
        if operator == "Exists":
            if not toleration_key or toleration_key == key:
                return True
        elif toleration_key == key and toleration_value == value:
            return True
    return False


def toleration_ms(spec: dict[str, Any], key: str, effect: str, default_ms: int, value: str = "") -> int | None:
    """How long a stored pod spec tolerates the taint `key` (`value`) with `effect`, in
    milliseconds, by Kubernetes' rule for NoExecute taints (GetMatchingTolerations, then
    getMinTolerationTime): the first matching toleration decides, for ever (None) when it has
    no `tolerationSeconds`, else its seconds; no matching toleration, `default_ms` (for the
    unreachable taint Kubernetes' DefaultTolerationSeconds)."""
    for item in spec["tolerations"]:
        if tolerated(((item["key"], item["operator"], item["value"], item["effect"]),), key, value, effect):
            seconds = item.get("tolerationSeconds")
            return None if seconds is None else int(seconds) * 1000
    return default_ms


NOT_TOLERATED: Final = -1  # no_execute_ms: the pod tolerates one of the taints not at all


def no_execute_ms(spec: dict[str, Any], rows: list[list[str]]) -> int | None:
    """How long a stored pod spec may stay on a node with these NoExecute taints ([key, value,
    effect] rows), in milliseconds: the least over the taints of `toleration_ms` (each taint's
    first matching toleration); None when those all hold for ever; NOT_TOLERATED when a taint
    has no matching toleration (Kubernetes evicts such a pod at once: there is no default time
    for taints other than unreachable)."""
    least: int | None = None
    for key, value, effect in rows:
        tolerated_ms = toleration_ms(spec, key, effect, NOT_TOLERATED, value)
        if tolerated_ms == NOT_TOLERATED:
            return NOT_TOLERATED
        if tolerated_ms is not None:
            least = tolerated_ms if least is None else min(least, tolerated_ms)
    return least


def check_spec(value: Any) -> tuple[dict[str, Any], tuple[str, ...], bool]:
    """The spec as stored (every field filled in, requests zero until defaulted, priority zero
    until its class is resolved: priorities.resolve), the requests the pod gave itself (the
    others take the project's defaults), and whether it gave its priority."""
    given = check_map(value, "spec", _spec_fields)
    given_requests = given.get("requests")
    own_requests = (
        tuple(sorted(field for field, amount in given_requests.items() if amount is not None))
        if isinstance(given_requests, dict)
        else ()
    )
    spec = {
        "requests": check_requests(given.get("requests"), "spec.requests"),
        "nodeSelector": check_labels(given.get("nodeSelector"), "spec.nodeSelector"),
        "nodeAffinity": _check_affinity(given.get("nodeAffinity")),
        "tolerations": _check_tolerations(given.get("tolerations")),
        "priority": opt_int(given, "priority", "spec.priority", priority_min, priority_max) or 0,
        "schedulingPolicy": opt_choice(given, "schedulingPolicy", "spec.schedulingPolicy", POLICIES),
        "nodeName": None,
    }
    class_name = opt_str(given, "priorityClassName", "spec.priorityClassName")
    if class_name is not None:
        # Only when named, so that pods stored before classes existed keep their exact spec.
        spec["priorityClassName"] = check_name(class_name, "spec.priorityClassName")
    return spec, own_requests, given.get("priority") is not None


def check_body(
    body: dict[str, Any],
) -> tuple[str, str, dict[str, str], dict[str, Any], tuple[str, ...], bool, str | None]:
    """(name, namespace, labels, spec, the requests it gave, whether it gave its priority,
    planned node) of a pod.create body."""
    # `plan` is the proposing member's (its placement), which the HTTP layer refuses from a
    # client: the message names only what a client may give (QA, 2026-12-07).
    check_map(body, "", _body_fields, _client_body_fields)
    name = check_name(body.get("name"), "name")
    namespace = check_name(body.get("namespace", DEFAULT_NAMESPACE), "namespace")
    labels = check_labels(body.get("labels"), "labels")
    spec, own_requests, own_priority = check_spec(body.get("spec"))
    plan = check_map(body.get("plan"), "plan", ("nodeName",))
    planned = opt_str(plan, "nodeName", "plan.nodeName")
    if planned is not None:
        check_node_name(planned, "plan.nodeName")
    return name, namespace, labels, spec, own_requests, own_priority, planned


def load(view: ReadView, key: bytes) -> dict[str, Any] | None:
    raw = view.get(key)
    return None if raw is None else dict(loads(raw))


def pod_id(key: bytes) -> str:
    """org/project/namespace/name of a pod key, for messages and nominations."""
    return "/".join(keys.split_path(key, keys.POD))
