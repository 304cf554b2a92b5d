"""The one reader of a user's line-based text files (``.txt`` / ``.tsv`` / ``.jsonl``): lines and JSONL records.

* ``file_lines(path)``: the non-blank lines with their **file line numbers** (1-based). Lines are split
  on ``"\\n"`` only, so a line's number is the one an editor or ``wc -l`` / ``sed -n Np`` gives; a
  ``"\\r\\n"`` line end is removed, and a lone ``"\\r"`` inside a line is kept as part of that line's
  text (it is not a line break).
* ``jsonl_records(path)``: ``(line number, dict)`` of every non-blank line; a line that is not valid
  JSON, or valid JSON that is not an object (a bare number, string, list, null), is refused.
* ``text_field(record, field, where=...)``: a field read as text must be a JSON **string**: a missing
  field, or a null / number / bool / list / object value, is refused (it was read as ``"None"``,
  ``"42"``, ... before).

Every refusal is a ``TextInputError``: a ``diffjax.ood.deploy.InputError`` (the one class for bad user
inputs, which the CLI prints as one ``error:`` line) that is also a ``ValueError`` (what these readers
raised before, for callers catching that), naming the file, the line and the field, and saying what
to change. Used by ``files`` (text data),
``instructions`` (instruction JSONL) and the text-OOD ``score`` inputs, so they read lines alike.
"""

from __future__ import annotations

import json
import os
from typing import Iterator

from diffjax.errors import InputError

_KINDS = {type(None): "null", bool: "a boolean", int: "a number", float: "a number", list: "a list",
          dict: "an object", str: "a string"}


class TextInputError(InputError, ValueError):
    """A user's text file (or a line / field of it) cannot be read as the data it should be."""


def input_error(msg: str) -> TextInputError:
    return TextInputError(msg)


def json_kind(value) -> str:
    """``null`` / ``a number`` / ``a list`` / ... of a decoded JSON value, for messages."""
    return _KINDS.get(type(value), type(value).__name__)


def _shown(value) -> str:
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= 40 else s[:37] + "..."


def file_lines(path: str, *, shown: str | None = None) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the non-blank lines of a UTF-8 file, split on ``"\\n"`` only (module
    docstring). Missing file or a line that is not UTF-8: ``InputError`` naming the file (and line)."""
    shown = path if shown is None else shown
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise input_error(f"{shown!r} does not exist or is not a file")
    with open(p, "rb") as f:  # binary: iteration splits on b"\n" only, never on a lone "\r"
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise input_error(f"{shown}:{n}: could not be read as UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                                  f"save the file as UTF-8") from e
            if n == 1 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark is not text
                line = line[1:]
            if line.endswith("\n"):
                line = line[:-1]
            if line.endswith("\r"):  # "\r\n" line end
                line = line[:-1]
            if line.strip():
                yield n, line


def jsonl_records(path: str, *, shown: str | None = None) -> list[tuple[int, dict]]:
    """``(line number, record)`` of every non-blank line of a JSONL file; each line must be a JSON object."""
    shown = path if shown is None else shown
    out = []
    for n, line in file_lines(path, shown=shown):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise input_error(f"{shown}:{n}: not valid JSON ({e.msg} at column {e.colno}); expected one JSON "
                              f"object a line, e.g. {{\"text\": \"...\"}}") from e
        if not isinstance(rec, dict):
            raise input_error(f"{shown}:{n}: expected a JSON object, got {json_kind(rec)} ({_shown(rec)}); write "
                              f"one object a line, e.g. {{\"text\": {_shown(rec if isinstance(rec, str) else str(rec))}}}")
        out.append((n, rec))
    return out


def text_field(record: dict, field: str, *, where: str,
               hint: str = "add it, or set prompt_field / target_field to the data's field names") -> str:
    """``record[field]``, which must exist and be a JSON string; ``where`` is ``"file:line"``."""
    if field not in record:
        raise input_error(f"{where}: no field {field!r} (the line has {sorted(record)}); {hint}")
    v = record[field]
    if not isinstance(v, str):
        raise input_error(f"{where}: field {field!r} is {json_kind(v)} ({_shown(v)}), expected a string; "
                          f"write the text as a JSON string (e.g. \"42\") or drop the line")
    return v


def id_field(record: dict, field: str, default: int, *, where: str):
    """An optional row id: a JSON string or integer (``default``, the line number, when absent)."""
    if field not in record:
        return default
    v = record[field]
    if isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise input_error(f"{where}: field {field!r} is {json_kind(v)} ({_shown(v)}), expected a string or an "
                      f"integer id; fix it or drop the field (the line number is the id then)")
