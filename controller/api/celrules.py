"""The CEL rules attached to the resource models, read back out of their JSON Schema.

Used by the Python mirrors (same ids and messages) and by the tests that evaluate
the very expressions the API server runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from controller.api.v1alpha1 import KINDS

_ID = re.compile(r"^\[([a-z0-9.-]+)\] (.*)$", re.S)


@dataclass(frozen=True)
class CelRule:
    kind: str
    rule_id: str
    expression: str
    message: str
    location: tuple[str, ...]  # document path of the object the rule is attached to
    field_path: str  # the rule's fieldPath ('.weights'), '' when absent
    transition: bool

    @property
    def error_path(self) -> str:
        return ".".join(self.location) + self.field_path


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    while True:
        if "$ref" in node:
            node = defs[node["$ref"].rsplit("/", 1)[-1]]
        elif "anyOf" in node:
            node = next(b for b in node["anyOf"] if b != {"type": "null"})
        else:
            return node


def _walk(
    kind: str, node: dict[str, Any], defs: dict[str, Any], loc: tuple[str, ...]
) -> list[CelRule]:
    node = _resolve(node, defs)
    found = []
    for entry in node.get("x-kubernetes-validations", []):
        match = _ID.match(entry["message"])
        if not match:
            raise ValueError(f"CEL rule without an id: {entry['message']!r}")
        found.append(
            CelRule(
                kind=kind,
                rule_id=match.group(1),
                expression=entry["rule"],
                message=match.group(2),
                location=loc,
                field_path=entry.get("fieldPath", ""),
                transition=bool(entry.get("x-cadml-transition")),
            )
        )
    for name, sub in node.get("properties", {}).items():
        found.extend(_walk(kind, sub, defs, (*loc, name)))
    if "items" in node:
        found.extend(_walk(kind, node["items"], defs, (*loc, "*")))
    return found


@cache
def cel_rules(kind: str) -> tuple[CelRule, ...]:
    schema = KINDS[kind].model_json_schema(by_alias=True)
    return tuple(_walk(kind, schema, schema.get("$defs", {}), ()))


@cache
def rule_by_id(rule_id: str) -> CelRule:
    for kind in KINDS:
        for rule in cel_rules(kind):
            if rule.rule_id == rule_id:
                return rule
    raise KeyError(rule_id)
