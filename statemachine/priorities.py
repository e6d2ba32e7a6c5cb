"""PriorityClass: named pod priorities owned by the platform, as in Kubernetes.

A class gives a name to a priority value (`spec.value`); a pod names it in
`spec.priorityClassName` and gets its value as `spec.priority` when it is created. At most one
class is the `globalDefault`, whose value (and name) a pod that names neither a class nor a
priority gets. Classes cannot be changed (delete and create again); deleting one leaves the
pods that used it with the priority they got, as Kubernetes does. Only platform admins write
classes; every principal reads them. Which priorities a tenant may use is capped by its
quota's `maxPriority` (quotas.py), checked against the value the pod ends up with.

A pod may still give `spec.priority` without a class (Allot's pods did before classes
existed); with a class, a priority it gives must equal the class's value.
"""

from __future__ import annotations

from typing import Any, Final

from statemachine import keys
from statemachine.classes import Unchangeable, create_unchangeable, require_platform_admin, update_unchangeable
from statemachine.codec import loads
from statemachine.context import Context
from statemachine.errors import NOT_FOUND, Rejected, invalid
from statemachine.fields import check_map, check_name, opt_bool, opt_int, opt_str
from statemachine.quotas import priority_min
from statemachine.view import ReadView

KIND: Final = "PriorityClass"

description_chars_max = 1024
class_value_max = 1_000_000_000  # Kubernetes' HighestUserDefinablePriority

_spec_fields: Final = ("value", "globalDefault", "description")


def check_spec(value: Any) -> dict[str, Any]:
    spec = check_map(value, "spec", _spec_fields)
    # As Kubernetes: values above a billion are kept for system classes, so that those (Allot
    # has none yet) can outrank every class a platform defines.
    priority = opt_int(spec, "value", "spec.value", priority_min, class_value_max)
    if priority is None:
        raise invalid(
            f"spec.value is required: the priority, an integer from {priority_min} to {class_value_max}", "spec.value"
        )
    return {
        "value": priority,
        "globalDefault": bool(opt_bool(spec, "globalDefault", "spec.globalDefault")),
        "description": opt_str(spec, "description", "spec.description", description_chars_max) or "",
    }


def load(view: ReadView, name: str) -> dict[str, Any] | None:
    raw = view.get(keys.priority_class_key(name))
    return None if raw is None else dict(loads(raw))


def default_name(view: ReadView) -> str | None:
    raw = view.get(keys.DEFAULT_PRIORITY_CLASS)
    return None if raw is None else raw.decode()


def resolve(view: ReadView, spec: dict[str, Any], own_priority: bool, stored: dict[str, Any] | None = None) -> None:
    """Fill a checked pod spec's priority from its class (or from the global default when it
    names neither a class nor a priority). Raises `invalid` for a class that does not exist or
    a priority that disagrees with the class's value.

    `stored` is the spec of the pod already stored under the name, if any. The same create
    again must still answer with that pod after classes change, so a create that names the
    class the pod got its priority from gets that priority (even if the class has been deleted
    or made again since), and one that names neither a class nor a priority gets the pod's
    priority when that came from a class (the default then) or was the plain default 0."""
    name = spec.get("priorityClassName")
    if name is None:
        if own_priority:
            return
        if stored is not None and (stored.get("priorityClassName") is not None or stored["priority"] == 0):
            spec["priority"] = stored["priority"]
            if stored.get("priorityClassName") is not None:
                spec["priorityClassName"] = stored["priorityClassName"]
            return
        name = default_name(view)
        if name is None:
            return
        spec["priorityClassName"] = name
    if (
        stored is not None
        and stored.get("priorityClassName") == name
        and (not own_priority or spec["priority"] == stored["priority"])
    ):
        value = stored["priority"]
    else:
        found = load(view, name)
        if found is None:
            raise invalid(
                f"spec.priorityClassName: there is no PriorityClass {name} (an admin creates them; "
                "list them with GET /v1/priorityclasses)",
                "spec.priorityClassName",
            )
        value = found["spec"]["value"]
    if own_priority and spec["priority"] != value:
        raise invalid(
            f"spec.priority {spec['priority']} disagrees with PriorityClass {name}'s value {value}: "
            "leave spec.priority out, it is taken from the class",
            "spec.priority",
        )
    spec["priority"] = value


_PRIORITY_CLASSES = Unchangeable(
    KIND,
    keys.priority_class_key,
    check_spec,
    "a PriorityClass's spec cannot be changed: delete it and create it again (pods keep the priority they got)",
    "globalDefault",
    keys.DEFAULT_PRIORITY_CLASS,
    "the global default",
    reserved_name_prefix="system-",  # Kubernetes' built-in classes' names
)


def create(ctx: Context, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    return create_unchangeable(ctx, body, _PRIORITY_CLASSES)


def update(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    return update_unchangeable(ctx, body, _PRIORITY_CLASSES)


def delete(ctx: Context, body: dict[str, Any]) -> dict[str, Any]:
    require_platform_admin(ctx.principal, "delete a PriorityClass")
    check_map(body, "", ("name",))
    name = check_name(body.get("name"), "name")
    existing = load(ctx.ov, name)
    if existing is None:
        raise Rejected(NOT_FOUND, f"PriorityClass {name} not found", {"kind": KIND, "name": name})
    if existing["spec"]["globalDefault"]:
        ctx.ov.delete(keys.DEFAULT_PRIORITY_CLASS)
    ctx.delete_object(keys.priority_class_key(name), KIND, existing)
    return existing
