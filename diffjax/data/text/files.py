"""Local text files -> ``TextExamples``: ``.jsonl``, ``.tsv``, ``.txt``.

* ``.jsonl``: one JSON object a line; ``prompt_field`` (default ``"prompt"``; ``None`` or absent
  from every record: unconditional) and ``target_field`` (default ``"target"``) name the fields.
* ``.tsv``: ``prompt<TAB>target`` a line, or a single column = target (prompt ``""``). No header;
  a target containing tabs keeps them (split at the first tab only).
* ``.txt``: one example a line, the whole line is the target.

Lines are read by ``lines.file_lines`` (split on ``"\n"`` only: a lone ``"\r"`` stays in its line)
and JSONL records by ``lines.jsonl_records`` / ``lines.text_field`` (a value that is not a JSON
string, or a line that is not an object, is refused naming the file, line and field). Blank lines
are skipped everywhere. A missing file raises ``FileNotFoundError``, a file with no examples
``ValueError``, both naming the file; bad content ``InputError`` (``lines``).
"""

from __future__ import annotations

import hashlib
import os

from diffjax.data.text.examples import TextExamples
from diffjax.data.text.lines import file_lines, id_field, input_error, jsonl_records, text_field

FORMATS = (".jsonl", ".tsv", ".txt")


def check_file(path: str) -> str:
    """Expanded path of an existing regular file, else ``FileNotFoundError`` naming it."""
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"text data file {path!r} does not exist (expected a {'/'.join(FORMATS)} file)")
    return p


def file_digest(path: str) -> str:
    """sha256 hex digest of a file's bytes (the token cache's content key; cheap next to tokenising)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _nonempty(ex: TextExamples, path: str) -> TextExamples:
    if len(ex) == 0:
        raise ValueError(f"text data file {path!r} holds no examples (it is empty or blank)")
    return ex


def read_jsonl(path: str, *, prompt_field: str | None = "prompt", target_field: str = "target") -> TextExamples:
    """``.jsonl`` -> examples (see module docstring); bad lines raise ``InputError`` naming file and line."""
    p = check_file(path)
    records = jsonl_records(p, shown=path)
    if prompt_field is not None and records and all(prompt_field not in r for _, r in records):
        if prompt_field == "prompt":  # the default name and no record has it: unconditional data
            prompt_field = None
    prompts, targets = [], []
    for n, r in records:
        where = f"{path}:{n}"
        prompts.append("" if prompt_field is None else text_field(r, prompt_field, where=where))
        targets.append(text_field(r, target_field, where=where))
    return _nonempty(TextExamples(path, prompts, targets), path)


def read_tsv(path: str) -> TextExamples:
    """``.tsv`` -> examples: ``prompt<TAB>target`` or one column (= target)."""
    p = check_file(path)
    prompts, targets = [], []
    for _, line in file_lines(p, shown=path):
        if "\t" in line:
            a, b = line.split("\t", 1)
        else:
            a, b = "", line
        prompts.append(a)
        targets.append(b)
    return _nonempty(TextExamples(path, prompts, targets), path)


def read_txt(path: str) -> TextExamples:
    """``.txt`` -> examples: each non-blank line is one target (prompt ``""``)."""
    p = check_file(path)
    targets = [line for _, line in file_lines(p, shown=path)]
    return _nonempty(TextExamples(path, [""] * len(targets), targets), path)


INPUT_TEXT_FIELDS = ("text", "target", "sentence")


def read_inputs(path: str, text_field_name: str = "") -> tuple[list, list[str]]:
    """A user's inputs to score -> ``(ids, texts)``: a ``.txt`` (one text a non-blank line, id = its file
    line number) or a ``.jsonl`` (id = the record's ``id`` field, a string or integer, else the line
    number; text = ``text_field_name``, else the first of ``INPUT_TEXT_FIELDS`` present, a JSON string).
    Missing, empty or unreadable inputs raise ``InputError`` naming the file (and line, field)."""
    p = os.path.expanduser(path)
    if not os.path.exists(p):
        raise input_error(f"input {path!r} does not exist (expected a .txt file, one text a line, or a .jsonl file)")
    ext = os.path.splitext(p)[1].lower()
    if os.path.isdir(p) or ext not in (".txt", ".jsonl"):
        raise input_error(f"input {path!r} is not a .txt or .jsonl file; text OOD scores one text a line (.txt) "
                          f"or one JSON object a line (.jsonl)")
    ids, texts = [], []
    if ext == ".txt":
        for n, line in file_lines(p, shown=path):
            ids.append(n)
            texts.append(line)
    else:
        for n, rec in jsonl_records(p, shown=path):
            where = f"{path}:{n}"
            field = text_field_name or next((k for k in INPUT_TEXT_FIELDS if k in rec), None)
            if field is None:
                raise input_error(f"{where}: no text field {'/'.join(INPUT_TEXT_FIELDS)!r} (the line has "
                                  f"{sorted(rec)}); name the field with the task's score_text_field")
            texts.append(text_field(rec, field, where=where, hint="add it, or name the data's text field with the "
                                                                  "task's score_text_field"))
            ids.append(id_field(rec, "id", n, where=where))
    if not texts:
        raise input_error(f"input {path!r} holds no texts (it is empty or blank)")
    return ids, texts
