"""Turns a raw YAML document into a typed resource, or into field errors.

Typing is strict and goes through JSON, as `kubectl apply` does: a string where
a number belongs, or an unknown field, is refused (the API server's strict
field validation), never coerced.
"""

from __future__ import annotations

import copy
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from controller.api.v1alpha1 import API_VERSION, GROUP, KINDS, Resource
from controller.findings import FieldError, ObjectRef
from controller.yamlio import RawDocument

_PYDANTIC_RULES = {
    "extra_forbidden": "schema.unknown-field",
    "missing": "schema.required",
    "literal_error": "schema.enum",
    "enum": "schema.enum",
    "string_pattern_mismatch": "schema.pattern",
    "too_short": "schema.length",
    "too_long": "schema.length",
    "string_too_short": "schema.length",
    "string_too_long": "schema.length",
    "greater_than_equal": "schema.range",
    "less_than_equal": "schema.range",
    "greater_than": "schema.range",
    "less_than": "schema.range",
}


@dataclass(frozen=True)
class Loaded:
    """A typed resource and the document it came from."""

    resource: Resource
    doc: RawDocument | None

    @property
    def ref(self) -> ObjectRef:
        return ref_of(self.resource)

    @property
    def key(self) -> tuple[str, str, str]:
        r = self.resource
        return (r.kind, r.metadata.namespace or "", r.metadata.name)


def ref_of(resource: Resource) -> ObjectRef:
    return ObjectRef(resource.kind, resource.metadata.namespace or "", resource.metadata.name)


def format_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_path(path: str) -> list[str | int]:
    """Inverse of format_path, for line lookups ('spec.weights[1].weight')."""
    parts: list[str | int] = []
    for chunk in path.replace("]", "").split("."):
        if not chunk:
            continue
        name, *indices = chunk.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indices if i.isdigit())
    return parts


def _doc_ref(data: dict[str, Any]) -> ObjectRef:
    meta = data.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    return ObjectRef(
        str(data.get("kind", "")), str(meta.get("namespace") or ""), str(meta.get("name") or "")
    )


@dataclass(frozen=True)
class ParseResult:
    loaded: Loaded | None
    errors: list[FieldError]
    foreign: bool = False  # a document of another API group: not ours to judge


def parse_document(doc: RawDocument, *, require_namespace: bool = True) -> ParseResult:
    """A YAML document from a file: errors carry its file, line and document index."""
    return parse_data(doc.data, doc, file=doc.file, document=doc.index,
                      line_of=lambda path: doc.line_of(parse_path(path)),
                      require_namespace=require_namespace)


def parse_body(body: dict[str, Any]) -> ParseResult:
    """An object as the API server holds it (no file, no lines). The spec is read strictly;
    the status leniently: a CRD newer than this operator may hold status fields it does
    not know (Helm never upgrades CRDs), and those are ignored, never a reason to drop the
    object. A status that still does not fit is left out (nothing plans from it)."""
    status = body.get("status")
    result = parse_data({k: v for k, v in body.items() if k != "status"}, None,
                        file="<cluster>", document=None, line_of=lambda _: None,
                        require_namespace=True)
    if result.loaded is None or not isinstance(status, dict) or not status:
        return result
    resource = result.loaded.resource
    read = _lenient(type(resource).model_fields["status"].annotation, status)
    return ParseResult(Loaded(resource.model_copy(update={"status": read}), None), [])


def _lenient(annotation: Any, data: dict[str, Any]) -> Any:
    """`data` as the status class of `annotation` (`XStatus | None`), its unknown fields
    dropped; None where it does not fit otherwise."""
    cls = next(a for a in typing.get_args(annotation) if a is not type(None))
    for _ in range(2):
        try:
            return cls.model_validate_json(json.dumps(data), strict=True)
        except (ValidationError, TypeError, ValueError, RecursionError) as exc:
            unknown = [e["loc"] for e in exc.errors(include_url=False)
                       if e["type"] == "extra_forbidden"] \
                if isinstance(exc, ValidationError) else []
            if not unknown:
                return None
            data = copy.deepcopy(data)
            for loc in unknown:
                _drop(data, loc)
    return None


def _drop(data: Any, loc: tuple[str | int, ...]) -> None:
    for part in loc[:-1]:
        data = data[part]
    del data[loc[-1]]


def parse_data(
    data: Any,
    doc: RawDocument | None,
    *,
    file: str,
    document: int | None,
    line_of: Callable[[str], int | None],
    require_namespace: bool,
) -> ParseResult:
    def err(rule: str, path: str, message: str, ref: ObjectRef | None = None) -> FieldError:
        return FieldError(
            rule=rule,
            path=path,
            message=message,
            obj=ref or ObjectRef(),
            file=file,
            line=line_of(path),
            document=document,
        )

    if not isinstance(data, dict):
        what = "a list" if isinstance(data, list) else f"a {type(data).__name__} scalar"
        return ParseResult(None, [err("yaml.not-a-mapping", "", f"a resource must be a "
                                      f"mapping with apiVersion and kind, got {what}")])
    ref = _doc_ref(data)
    api_version, kind = data.get("apiVersion"), data.get("kind")
    if api_version is None and kind is None:
        return ParseResult(None, [], foreign=True)  # not a Kubernetes object (values, config)
    if isinstance(api_version, str) and api_version.split("/", 1)[0] != GROUP:
        return ParseResult(None, [], foreign=True)  # another API group: not ours to judge
    if not isinstance(api_version, str) or not api_version:
        return ParseResult(None, [err("schema.api-version", "apiVersion",
                                      "apiVersion is required", ref)])
    if not isinstance(kind, str) or not kind:
        return ParseResult(None, [err("schema.kind", "kind", "kind is required", ref)])
    if api_version != API_VERSION:
        return ParseResult(None, [err("schema.api-version", "apiVersion",
                                      f"unknown API version {api_version!r}; this cadml "
                                      f"serves {API_VERSION}", ref)])
    cls = KINDS.get(kind)
    if cls is None:
        return ParseResult(None, [err("schema.kind", "kind",
                                      f"unknown kind {kind!r} in {API_VERSION}; known kinds: "
                                      f"{', '.join(KINDS)}", ref)])
    try:
        payload = json.dumps(data, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return ParseResult(None, [err("schema.type", "", f"not representable as JSON: {exc}",
                                      ref)])
    except RecursionError:
        return ParseResult(None, [err("yaml.too-complex", "", "the document nests too deeply",
                                      ref)])
    try:
        resource = cls.model_validate_json(payload, strict=True)
    except ValidationError as exc:
        errors = []
        for e in exc.errors(include_url=False):
            path = format_path(list(e["loc"]))
            rule = _PYDANTIC_RULES.get(e["type"], "schema.type")
            if rule == "schema.unknown-field":
                message = "unknown field (not in the schema)"
            elif rule in ("schema.required",):
                message = "required field is missing"
            else:
                shown = repr(e.get("input"))
                message = f"{e['msg']} (got {shown[:80]})"
            errors.append(err(rule, path, message, ref))
        return ParseResult(None, errors)
    if require_namespace and not resource.metadata.namespace:
        return ParseResult(None, [err("meta.namespace-required", "metadata.namespace",
                                      "metadata.namespace is required: the namespace is the "
                                      "tenant", ref)])
    return ParseResult(Loaded(resource, doc), [])


__all__ = ["Loaded", "ParseResult", "parse_body", "parse_data", "parse_document"]
