"""Kubernetes label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`,
joined by commas (all must hold)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from statemachine.errors import invalid
from statemachine.fields import check_label_key, check_label_value

selector_chars_max = 4096
_set_pattern: Final = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "exists":
            return present
        if self.operator == "!exists":
            return not present
        if self.operator in ("=", "in"):
            return present and labels[self.key] in self.values
        # "!=" and "notin" match objects without the key, as in Kubernetes.
        return not present or labels[self.key] not in self.values


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_selector(text: str) -> tuple[Requirement, ...]:
    field_path = "labelSelector"
    if len(text) > selector_chars_max:
        raise invalid(f"labelSelector is longer than {selector_chars_max} characters", field_path)
    requirements = []
    for raw in _split_top_level(text):
        part = raw.strip()
        if not part:
            if text.strip():
                raise invalid(f"labelSelector {text!r} has an empty requirement", field_path)
            continue
        set_match = _set_pattern.match(part)
        if set_match:
            key, operator, inner = set_match.groups()
            if not inner.strip():
                raise invalid(f"labelSelector {part!r} lists no values", field_path)
            values = tuple(value.strip() for value in inner.split(","))
            for value in values:
                check_label_value(value, field_path)
            requirement = Requirement(key, operator, values)
        elif "!=" in part:
            key, value = (item.strip() for item in part.split("!=", 1))
            check_label_value(value, field_path)
            requirement = Requirement(key, "!=", (value,))
        elif "=" in part:
            key, value = (item.strip() for item in part.replace("==", "=", 1).split("=", 1))
            check_label_value(value, field_path)
            requirement = Requirement(key, "=", (value,))
        elif re.match(r"^\S+\s+(in|notin)\s*\(", part):  # a set with its ")" missing
            raise invalid(f"labelSelector {part!r} opens a value list with '(' but never closes it", field_path)
        elif part.startswith("!"):
            requirement = Requirement(part[1:].strip(), "!exists")
        else:
            requirement = Requirement(part, "exists")
        check_label_key(requirement.key, field_path)
        requirements.append(requirement)
    return tuple(requirements)


def matches(requirements: tuple[Requirement, ...], labels: dict[str, str]) -> bool:
    return all(requirement.matches(labels) for requirement in requirements)
