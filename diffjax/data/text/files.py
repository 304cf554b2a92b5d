"""Local text files -> ``TextExamples``: ``.jsonl``, ``.tsv``, ``.txt``.

* ``.jsonl``: one JSON object a line; ``prompt_field`` (default ``"prompt"``; ``None`` or absent
  from every record: unconditional) and ``target_field`` (default ``"target"``) name the fields.
* ``.tsv``: ``prompt<TAB>target`` a line, or a single column = target (prompt ``""``). No header;
  a target containing tabs keeps them (split at the first tab only).
* ``.txt``: one example a line, the whole line is the target.

Blank lines are skipped everywhere. A missing file raises ``FileNotFoundError``, a file with no
examples ``ValueError``, both naming the file.
"""

from __future__ import annotations

import json
import os

from diffjax.data.text.examples import TextExamples, from_records

FORMATS = (".jsonl", ".tsv", ".txt")


def check_file(path: str) -> str:
    """Expanded path of an existing regular file, else ``FileNotFoundError`` naming it."""
    p = os.path.expanduser(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"text data file {path!r} does not exist (expected a {'/'.join(FORMATS)} file)")
    return p


def _lines(path: str):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield n, line


def _nonempty(ex: TextExamples, path: str) -> TextExamples:
    if len(ex) == 0:
        raise ValueError(f"text data file {path!r} holds no examples (it is empty or blank)")
    return ex


def read_jsonl(path: str, *, prompt_field: str | None = "prompt", target_field: str = "target") -> TextExamples:
    """``.jsonl`` -> examples (see module docstring). A bad JSON line raises ``ValueError`` with its number."""
    p = check_file(path)
    records = []
    for n, line in _lines(p):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); expected one object per line") from e
    if prompt_field is not None and records and all(prompt_field not in r for r in records):
        if prompt_field == "prompt":  # the default name and no record has it: unconditional data
            prompt_field = None
    return _nonempty(from_records(path, records, prompt_field=prompt_field, target_field=target_field), path)


def read_tsv(path: str) -> TextExamples:
    """``.tsv`` -> examples: ``prompt<TAB>target`` or one column (= target)."""
    p = check_file(path)
    prompts, targets = [], []
    for _, line in _lines(p):
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
    targets = [line for _, line in _lines(p)]
    return _nonempty(TextExamples(path, [""] * len(targets), targets), path)
