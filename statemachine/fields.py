"""Checking request bodies: names, labels, typed fields. Every failure names the field to fix."""

from __future__ import annotations

import re
from typing import Any, Final

from statemachine.errors import invalid

name_chars_max = 63
# Node names are DNS-1123 subdomains, as Kubernetes' are (`ip-10-0-0-1.ec2.internal`), but of at
# most 240 characters, not 253: the index of a node's pods (keys.pod_on_node_key) holds the
# node's name and a pod's full name (org, project, namespace, name: 255 bytes) in one LMDB key,
# and LMDB keys hold at most 511 bytes.
node_name_chars_max = 240
labels_max = 64
label_key_chars_max = 253
label_value_chars_max = 63
list_items_max = 64
resource_version_digits_max = 18  # as the HTTP layer's query integers: fits a signed 64-bit integer

_name_pattern: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_label_name_pattern: Final = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
# A DNS-1123 subdomain: dot-separated DNS labels, as Kubernetes requires of a label key's prefix.
_label_prefix_pattern: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_shown_chars_max = 80  # of a refused value, echoed in its message


def shown(value: str) -> str:
    """A refused string as a message quotes it: whole when short, else its start and its length
    (a message must not echo a 600-character name back)."""
    if len(value) <= _shown_chars_max:
        return repr(value)
    return f"{value[:_shown_chars_max]!r}... ({len(value)} characters)"


def check_name(value: Any, field_path: str) -> str:
    """A DNS-1123 label, as Kubernetes names are: lowercase letters, digits and '-'."""
    if not isinstance(value, str):
        raise invalid(f"{field_path} must be a string", field_path)
    if not value or len(value) > name_chars_max or not _name_pattern.fullmatch(value):
        raise invalid(
            f"{field_path} {shown(value)} must be 1-{name_chars_max} lowercase letters, digits or '-', "
            "starting and ending with a letter or digit",
            field_path,
        )
    return value


def check_node_name(value: Any, field_path: str) -> str:
    """A node's name: a DNS-1123 subdomain of at most `node_name_chars_max` characters."""
    if not isinstance(value, str):
        raise invalid(f"{field_path} must be a string", field_path)
    if not value or len(value) > node_name_chars_max or not _label_prefix_pattern.fullmatch(value):
        raise invalid(
            f"{field_path} {shown(value)} must be 1-{node_name_chars_max} characters: lowercase letters, digits, "
            "'-' and '.', each dot-separated part starting and ending with a letter or digit",
            field_path,
        )
    return value


_label_name_rule = (
    "1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"  # Kubernetes' rule
)


def check_label_key(key: str, field_path: str) -> None:
    """`[prefix/]name`, as Kubernetes checks label keys, saying which part breaks which rule."""
    prefix, slash, name = key.partition("/")
    if not slash:
        prefix, name = "", key
    why = ""
    if slash and not prefix:
        why = "a '/' must follow a prefix (a DNS subdomain such as example.com)"
    elif slash and (len(prefix) > label_key_chars_max or _label_prefix_pattern.fullmatch(prefix) is None):
        why = (
            f"its prefix {shown(prefix)} must be a DNS subdomain of at most {label_key_chars_max} characters: "
            "lowercase letters, digits, '-' and '.', each dot-separated part starting and ending with a letter "
            "or digit"
        )
    elif not name or len(name) > 63 or _label_name_pattern.fullmatch(name) is None:
        why = f"its name {shown(name)} must be {_label_name_rule}" + (" (one '/' at most)" if "/" in name else "")
    if why:
        raise invalid(f"label key {shown(key)} is not a valid Kubernetes label key: {why}", field_path)


def check_label_value(value: str, field_path: str) -> None:
    if len(value) > label_value_chars_max or _label_name_pattern.fullmatch(value) is None:
        raise invalid(
            f"label value {shown(value)} is not a valid Kubernetes label value: it must be empty or {_label_name_rule}",
            field_path,
        )


def check_labels(value: Any, field_path: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"{field_path} must be a map of strings", field_path)
    if len(value) > labels_max:
        raise invalid(f"{field_path} has {len(value)} labels; at most {labels_max} are allowed", field_path)
    for key, item in value.items():
        if not isinstance(key, str):
            raise invalid(f"{field_path} keys must be strings", field_path)
        if not isinstance(item, str):
            raise invalid(f"{field_path}.{key} must be a string", f"{field_path}.{key}")
        check_label_key(key, f"{field_path}.{key}")
        check_label_value(item, f"{field_path}.{key}")
    return dict(sorted(value.items()))


def check_map(
    value: Any, field_path: str, allowed: tuple[str, ...], named: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """A map whose keys are all in allowed. Unknown fields are refused, never ignored, with the
    allowed ones named (`named` instead, when some are not the caller's to give)."""
    if value is None:
        return {}
    where = field_path or "body"
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object", where)
    for key in value:
        if key not in allowed:
            raise invalid(
                f"{where} has unknown field {key!r}; allowed: {', '.join(allowed if named is None else named)}",
                f"{field_path}.{key}" if field_path else key,
            )
    return value


def opt_str(obj: dict[str, Any], key: str, field_path: str, chars_max: int = 256) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{field_path} must be a string", field_path)
    if len(value) > chars_max:
        raise invalid(f"{field_path} is longer than {chars_max} characters", field_path)
    return value


def opt_int(obj: dict[str, Any], key: str, field_path: str, low: int, high: int) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(f"{field_path} must be an integer", field_path)
    if not low <= value <= high:
        raise invalid(f"{field_path} must be between {low} and {high}, not {value}", field_path)
    return value


def opt_bool(obj: dict[str, Any], key: str, field_path: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise invalid(f"{field_path} must be true or false", field_path)
    return value


def opt_choice(obj: dict[str, Any], key: str, field_path: str, choices: tuple[str, ...]) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if value not in choices:
        raise invalid(f"{field_path} must be one of {', '.join(choices)}, not {value!r}", field_path)
    return str(value)


def opt_str_list(obj: dict[str, Any], key: str, field_path: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise invalid(f"{field_path} must be a list of strings", field_path)
    if len(value) > list_items_max:
        raise invalid(f"{field_path} has {len(value)} items; at most {list_items_max} are allowed", field_path)
    if len(set(value)) != len(value):
        raise invalid(f"{field_path} lists an item twice", field_path)
    return list(value)


def check_resource_version(value: Any, field_path: str, subject: str) -> int | None:
    """A resourceVersion the caller read `subject` (a node, the claim, ...) at: a positive
    integer, or its decimal string (Kubernetes clients send strings)."""
    if value is None:
        return None
    # As written by the server: "0171" is not 171 (Kubernetes compares resourceVersions as strings).
    if (
        isinstance(value, str)
        and 0 < len(value) <= resource_version_digits_max
        and value.isascii()
        and value.isdigit()
        and value[0] != "0"
    ):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 10**resource_version_digits_max:
        given = (
            shown(value)
            if isinstance(value, str)
            else str(value)
            if isinstance(value, int) and not isinstance(value, bool)
            else f"a {type(value).__name__}"
        )
        raise invalid(
            f"{field_path} must be the resourceVersion {subject} was read at (a positive integer of at most "
            f"{resource_version_digits_max} digits, or its decimal string), not {given}",
            field_path,
        )
    return value
