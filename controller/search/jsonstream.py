"""JSON written a list entry at a time: the bytes of `json.dumps(obj, indent=N)` without
the whole string (a manifest of a million drawings is hundreds of MiB of text).

`dump` takes a dict whose values may be `Lazy` iterables (a manifest's `files` and
`skipped`, produced row by row); each entry is encoded on its own and written through a
buffered file, so memory holds one entry, not the list nor the text.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

SCALARS = (str, int, float, bool, type(None))
_CONSTANTS = {True: "true", False: "false", None: "null"}
_ascii = json.encoder.encode_basestring_ascii  # what json.dumps uses for str (C)


class Lazy:
    """A list value whose entries come from an iterable, read once, while writing."""

    def __init__(self, entries: Iterable[Any]) -> None:
        self.entries = entries

    def __iter__(self) -> Iterator[Any]:
        return iter(self.entries)


def _scalar(value: Any) -> str:
    """A scalar as json.dumps writes it, without json.dumps' per-call cost."""
    kind = type(value)  # the exact types first: a manifest has millions of them
    if kind is str:
        return _ascii(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return int.__repr__(value)
    if isinstance(value, str):
        return _ascii(value)
    if value is True or value is False or value is None:
        return _CONSTANTS[value]
    if isinstance(value, int):
        return int.__repr__(value)
    return json.dumps(value)  # a float: repr, or NaN / Infinity


@functools.lru_cache(maxsize=256)
def _key(key: str) -> str:
    """A dict key as json.dumps writes it (manifest entries repeat a few keys)."""
    return _ascii(key)


def _entry(value: Any, indent: int, pad: str) -> str:
    """Purely computational: `value` as json.dumps(value, indent=indent) writes it nested
    under `pad`. Flat dicts of scalars (manifest entries) take the C encoder per field."""
    if type(value) is dict and value and all(
            type(k) is str and isinstance(v, SCALARS) for k, v in value.items()):
        inner = pad + " " * indent
        fields = f",\n{inner}".join([f"{_key(k)}: {_scalar(v)}" for k, v in value.items()])
        return f"{{\n{inner}{fields}\n{pad}}}"
    # ensure_ascii escapes every newline inside strings: each "\n" is between tokens
    return json.dumps(value, indent=indent).replace("\n", "\n" + pad)


def chunks(obj: dict[str, Any], indent: int) -> Iterator[str]:
    """Purely computational: the text of json.dumps(obj, indent=indent), a piece at a time
    (a piece per list entry for `Lazy` values)."""
    if not obj:
        yield "{}"
        return
    pad, inner = " " * indent, " " * (2 * indent)
    yield "{"
    for n, (key, value) in enumerate(obj.items()):
        yield f"{',' if n else ''}\n{pad}{json.dumps(key)}: "
        if not isinstance(value, Lazy):
            yield _entry(value, indent, pad)
            continue
        empty = True
        for entry in value:
            yield f"{'[' if empty else ','}\n{inner}{_entry(entry, indent, inner)}"
            empty = False
        yield "[]" if empty else f"\n{pad}]"
    yield "\n}"


def dump(obj: dict[str, Any], fh: IO[str], indent: int) -> None:
    """Write json.dumps(obj, indent=indent) to the text file `fh`, entry by entry."""
    for piece in chunks(obj, indent):
        fh.write(piece)
