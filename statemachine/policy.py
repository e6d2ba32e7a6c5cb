"""Allocation policy shared by pools and classes: allowed prefix lengths, default, strategy."""

from __future__ import annotations

from typing import Any, Final

from statemachine.buddy import FIRST_FIT, STRATEGIES
from statemachine.errors import invalid
from statemachine.fields import check_map, opt_choice, opt_int

RECLAIM_DELETE: Final = "Delete"
RECLAIM_RETAIN: Final = "Retain"
RECLAIM_POLICIES: Final = (RECLAIM_DELETE, RECLAIM_RETAIN)

_allocation_fields: Final = ("minPrefixLength", "maxPrefixLength", "defaultPrefixLength", "strategy")


def check_allocation(value: Any, field_path: str, shortest: int, bits: int) -> dict[str, Any]:
    """Normalise an `allocation` map: every field filled in, shortest <= min <= default <= max <= bits.

    Defaults: any length the block allows, one address by default, first-fit.
    """
    spec = check_map(value, field_path, _allocation_fields)
    low = opt_int(spec, "minPrefixLength", f"{field_path}.minPrefixLength", shortest, bits)
    high = opt_int(spec, "maxPrefixLength", f"{field_path}.maxPrefixLength", shortest, bits)
    default = opt_int(spec, "defaultPrefixLength", f"{field_path}.defaultPrefixLength", shortest, bits)
    strategy = opt_choice(spec, "strategy", f"{field_path}.strategy", STRATEGIES) or FIRST_FIT
    given = {"minPrefixLength": low, "defaultPrefixLength": default, "maxPrefixLength": high}
    low = shortest if low is None else low
    high = bits if high is None else high
    if default is None:
        default = high
    if not low <= default <= high:
        # Name the values as given, and say which were filled in: a default the user never set
        # ("got 30 <= 20 <= 20") hides which two of their own values disagree.
        filled_in = {
            "minPrefixLength": "not given: the block's own length",
            "defaultPrefixLength": "not given: maxPrefixLength",
            "maxPrefixLength": "not given: a single address",
        }
        said = ", ".join(
            f"{name} {value}" + ("" if given[name] is not None else f" ({filled_in[name]})")
            for name, value in (("minPrefixLength", low), ("defaultPrefixLength", default), ("maxPrefixLength", high))
        )
        raise invalid(
            f"{field_path} needs minPrefixLength <= defaultPrefixLength <= maxPrefixLength; got {said}",
            field_path,
        )
    return {"minPrefixLength": low, "maxPrefixLength": high, "defaultPrefixLength": default, "strategy": strategy}


def check_length_allowed(length: int, allocation: dict[str, Any], what: str, field_path: str) -> None:
    low, high = allocation["minPrefixLength"], allocation["maxPrefixLength"]
    if not low <= length <= high:
        raise invalid(
            f"prefix length /{length} is outside the /{low}../{high} that {what} allows",
            field_path,
            minPrefixLength=low,
            maxPrefixLength=high,
        )
