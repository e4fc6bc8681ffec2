"""Streaming JSON: JSON lines, or the elements of one top-level JSON array, read in chunks
so a 500 MB file never sits in memory. Each element comes with its line number; invalid
UTF-8 and syntax errors are reported with their place, never as a raw traceback."""

from __future__ import annotations

import codecs
import json
import os
from collections.abc import Iterator

from gumbel_jax.data.validation import DataError

_CHUNK = 1 << 20
_DECODER = json.JSONDecoder()


class BadElement:
    """An element that could not be read; ``reason`` says why."""

    def __init__(self, reason: str):
        self.reason = reason


def _has_surrogates(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_surrogates(k) or _has_surrogates(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return False


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """``(line number, object or BadElement)`` for each non-blank line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, BadElement(f"invalid UTF-8 at byte {error.start} of the line")
                continue
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                yield number, BadElement(f"invalid JSON: {error.msg} (column {error.colno})")


def iter_json_array(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """``(line number, element or BadElement)`` for each element of a top-level array.

    A syntax error or a file cut short stops the stream with a ``DataError`` naming the line,
    after every complete element before it has been yielded.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    with open(path, "rb") as handle:
        buffer, position, line, eof = "", 0, 1, False

        def refill():
            nonlocal buffer, position, eof
            chunk = handle.read(_CHUNK)
            eof = not chunk
            buffer = buffer[position:] + decoder.decode(chunk, final=eof)
            position = 0

        def skip(chars: str) -> str | None:
            nonlocal position, line
            while True:
                while position < len(buffer) and buffer[position] in chars:
                    line += buffer[position] == "\n"
                    position += 1
                if position < len(buffer):
                    return buffer[position]
                if eof:
                    return None
                refill()

        refill()
        if skip(" \t\r\n") != "[":
            raise DataError(f"{path}, line {line}: expected a JSON array ('[')")
        position += 1
        index = 0
        while True:
            ch = skip(" \t\r\n")
            if ch == "]":
                return
            if ch is None:
                raise DataError(f"{path}: truncated JSON: the file ends inside the array "
                                f"after {index} complete records (line {line})")
            if index and ch != ",":
                raise DataError(f"{path}, line {line}: invalid JSON: expected ',' or ']' "
                                f"after record {index}")
            if index:
                position += 1
                skip(" \t\r\n")
            while True:
                try:
                    element, end = _DECODER.raw_decode(buffer, position)
                    break
                except json.JSONDecodeError as error:
                    if eof:
                        where = line + buffer.count("\n", position, error.pos)
                        raise DataError(
                            f"{path}, line {where}: truncated or invalid JSON in record "
                            f"{index + 1} ({error.msg}); {index} complete records before "
                            "it were read") from None
                    refill()
            start_line = line
            line += buffer.count("\n", position, end)
            position = end
            index += 1
            if _has_surrogates(element):
                yield start_line, BadElement("invalid UTF-8 in the record")
            else:
                yield start_line, element


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[int, object]]:
    """JSON array or JSON lines, decided by the first non-blank byte."""
    with open(path, "rb") as handle:
        head = handle.read(4096).lstrip()
    if not head:
        raise DataError(f"{path}: the file is empty")
    return iter_json_array(path) if head[:1] == b"[" else iter_json_lines(path)
