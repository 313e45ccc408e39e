"""Reading YAML that may be hostile: size caps, strict UTF-8, no duplicate keys, no alias bombs.

Every failure becomes a `FieldError` with a `yaml.*` rule id and a line; nothing
here raises for bad input. Timestamps stay strings, as they do when kubectl
turns YAML into JSON, so what we validate is what the API server would see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from controller.findings import FieldError

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000

_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


class _StrictLoader(_Base):  # type: ignore[valid-type,misc]
    """SafeLoader that refuses duplicate keys and keeps timestamps as strings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag.endswith(":str"):
                key: Any = key_node.value  # fast path: plain string keys
            else:
                key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a scalar", key_node.start_mark
                ) from None
            if duplicate:
                raise _DuplicateKey(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def _timestamp_as_string(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


_StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_string)


@dataclass(frozen=True)
class RawDocument:
    """One YAML document of a file, with its node tree kept for line lookups."""

    file: str
    index: int
    line: int
    data: Any
    node: yaml.Node

    def line_of(self, path: Sequence[str | int]) -> int:
        """1-based line of the deepest node along `path` that exists."""
        node = self.node
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return int(node.start_mark.line) + 1


def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return value  # type: ignore[no-any-return]
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and (
        0 <= part < len(node.value)
    ):
        return node.value[part]  # type: ignore[no-any-return]
    return None


class _TooLarge(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int], limit: int) -> int:
    """Node count after expanding every alias; raises _TooLarge past `limit`."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _TooLarge("an alias refers to a node that contains it (recursive document)")
    active.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, active, limit)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, active, limit)
            size += _expanded_size(v, memo, active, limit)
    active.discard(key)
    if size > limit:
        raise _TooLarge(
            f"the document expands to more than {limit} nodes (alias/anchor bomb?)"
        )
    memo[key] = size
    return size


def decode(raw: bytes, file: str) -> tuple[str | None, list[FieldError]]:
    """Strict UTF-8 (a BOM is allowed); the error names the byte offset and line."""
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        return None, [
            FieldError(
                rule="yaml.encoding",
                path="",
                message=f"not UTF-8: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
                file=file,
                line=line,
            )
        ]


def load_documents(
    text: str, file: str, *, max_nodes: int = MAX_EXPANDED_NODES
) -> tuple[list[RawDocument], list[FieldError]]:
    """Parse every document of a YAML stream; stop at the first syntax error."""
    docs: list[RawDocument] = []
    may_alias = "&" in text  # an alias needs an anchor; without one nothing can expand
    loader = _StrictLoader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            line = int(node.start_mark.line) + 1
            try:
                if may_alias:
                    _expanded_size(node, {}, set(), max_nodes)
            except _TooLarge as exc:
                return docs, [_err("yaml.too-complex", str(exc), file, line, index)]
            data = loader.construct_document(node)
            if data is not None:
                docs.append(RawDocument(file=file, index=index, line=line, data=data, node=node))
            index += 1
    except _DuplicateKey as exc:
        return docs, [_marked("yaml.duplicate-key", exc, file, index)]
    except yaml.MarkedYAMLError as exc:
        return docs, [_marked("yaml.syntax", exc, file, index)]
    except yaml.YAMLError as exc:
        return docs, [_err("yaml.syntax", str(exc), file, None, index)]
    except RecursionError:
        return docs, [_err("yaml.too-complex", "the document nests too deeply", file, None, index)]
    finally:
        loader.dispose()
    return docs, []


def _err(rule: str, message: str, file: str, line: int | None, index: int) -> FieldError:
    return FieldError(rule=rule, path="", message=message, file=file, line=line, document=index)


def _marked(rule: str, exc: yaml.MarkedYAMLError, file: str, index: int) -> FieldError:
    mark = exc.problem_mark or exc.context_mark
    line = int(mark.line) + 1 if mark is not None else None
    message = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
    return _err(rule, message, file, line, index)
