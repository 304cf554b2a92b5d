"""``TextExamples``: the one in-memory form of a text data set, ``{prompt, target}`` string pairs.

Every reader (``files``, ``embedded``, ``tfds_text``) returns one. ``prompt`` is ``""`` for
unconditional text. Also the split-slicing rule shared by the non-tfds readers.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator, Sequence


@dataclasses.dataclass(frozen=True)
class TextExamples:
    """``N`` examples: ``prompts[i]`` / ``targets[i]`` are strings (``prompts[i] == ""``: unconditional).

    Indexing gives ``{"prompt": str, "target": str}``; iteration yields those dicts in order.
    """

    name: str
    prompts: Sequence[str]
    targets: Sequence[str]

    def __post_init__(self):
        if len(self.prompts) != len(self.targets):
            raise ValueError(f"{self.name}: {len(self.prompts)} prompts but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict:
        return {"prompt": self.prompts[i], "target": self.targets[i]}

    def __iter__(self) -> Iterator[dict]:
        for p, t in zip(self.prompts, self.targets):
            yield {"prompt": p, "target": t}

    @property
    def conditional(self) -> bool:
        """True when any prompt is non-empty."""
        return any(self.prompts)


_SLICE = re.compile(r"^\s*(\w+)\s*(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?\s*$")


def split_slice(split: str, n: int, *, source: str) -> slice:
    """A tfds-style split string -> the slice of ``n`` examples it selects (file order, no shuffle).

    Local files and embedded corpora have one split, ``"train"``; ``"train[:90%]"``,
    ``"train[90%:]"``, ``"train[:100]"``, ``"train[-50:]"`` select part of it (percent bounds round
    as tfds' ``"closest"`` rounding does: ``round(n * p / 100)``).
    """
    m = _SLICE.match(split or "train")
    if m is None or m.group(1) != "train":
        raise ValueError(f"{source}: unknown split {split!r}; local files and embedded corpora have the one "
                         f"split 'train' (slices like 'train[:90%]', 'train[90%:]', 'train[:100]' work)")

    def bound(s):
        if s is None:
            return None
        if s.endswith("%"):
            return int(round(n * int(s[:-1]) / 100))
        return int(s)

    return slice(bound(m.group(2)), bound(m.group(3)))


def from_records(name: str, records: Sequence[dict], *, prompt_field: str | None,
                 target_field: str) -> TextExamples:
    """Dict records -> ``TextExamples`` (``prompt_field=None``: unconditional, every prompt ``""``).

    A record missing a field raises one ``ValueError`` naming the record and the fields it has.
    Values that are not strings (numbers, bytes) are converted (bytes as UTF-8).
    """
    prompts, targets = [], []
    for i, r in enumerate(records):
        for f in (prompt_field, target_field):
            if f is not None and f not in r:
                raise ValueError(f"{name}: record {i} has no field {f!r} (it has {sorted(r)}); "
                                 f"set prompt_field / target_field to the data's field names")
        prompts.append("" if prompt_field is None else as_text(r[prompt_field]))
        targets.append(as_text(r[target_field]))
    return TextExamples(name, prompts, targets)


def as_text(v) -> str:
    """str / bytes (UTF-8) / numpy scalar or 0-d array / number -> str."""
    if isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8")
    if hasattr(v, "item") and getattr(v, "shape", ()) == ():
        return as_text(v.item())
    return str(v)
