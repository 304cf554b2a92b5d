"""``[prompt ; target]`` packing into fixed-length int32 arrays, static length buckets, and
truncation that is counted and reported, never silent.

Layout of one example (``PackingFormat``; ``None`` ids are left out)::

    [start] prompt [sep] target [end] pad pad ...
    |--- prompt_length ---|-- target_length --|
    BERT:  [CLS] prompt [SEP] target [SEP]      Llama: <s> prompt target </s>

* ``sep`` is inserted only when the prompt is non-empty (unconditional BERT text is
  ``[CLS] target [SEP]``).
* The closing ``end`` token belongs to the target and **is corruptible**: a denoiser must learn
  where the target ends. ``start`` / ``sep`` belong to the prompt part and are not corruptible.
* Truncation policy (examples longer than the largest bucket ``L_max``): the special tokens are
  always kept; of the remaining budget ``b = L_max - n_special`` the target keeps
  ``min(len(target), max(b - len(prompt), b // 2))`` tokens, cut **from the right** (its
  beginning survives), and the prompt keeps the rest, cut **from the left** (the words next to the
  target survive). The closing ``end`` token is kept after a cut target.

Arrays of a packed batch (``B`` examples, bucket length ``L``):
  tokens [B, L] int32 (pad id after the example), corruptible [B, L] bool (target tokens + end),
  valid [B, L] bool (position < prompt_length + target_length), attention_mask [B, L] bool (the
  padding mask: True = a real token to attend to; equal to ``valid`` here, a separate field so a
  task may attend differently), segment_ids [B, L] int32 (0 prompt part / padding, 1 target part),
  prompt_length [B] int32, target_length [B] int32 (both counting their special tokens).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from diffjax.data.text.cache import TokenizedExamples
from diffjax.data.text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

FIELDS = ("tokens", "corruptible", "valid", "attention_mask", "segment_ids", "prompt_length", "target_length")


@dataclasses.dataclass(frozen=True)
class PackingFormat:
    """Special token ids of the layout (see module docstring); ``pad_id`` fills positions past the example."""

    pad_id: int
    start_id: int | None = None
    sep_id: int | None = None
    end_id: int | None = None

    @classmethod
    def for_tokenizer(cls, tok: TextTokenizer, style: str = "auto") -> "PackingFormat":
        """``style``: ``"bert"`` ([CLS] p [SEP] t [SEP]), ``"llama"`` (BOS p t EOS), ``"none"`` (p t) or
        ``"auto"`` (bert when the tokenizer has CLS and SEP, else llama). Pad falls back to EOS, then 0."""
        if style == "auto":
            style = "bert" if tok.cls_id is not None and tok.sep_id is not None else "llama"
        pad = next((i for i in (tok.pad_id, tok.eos_id, 0) if i is not None))
        if style == "bert":
            if tok.cls_id is None or tok.sep_id is None:
                raise ValueError(f"packing style 'bert' needs CLS and SEP ids; tokenizer has {tok.special_ids}")
            return cls(pad, tok.cls_id, tok.sep_id, tok.sep_id)
        if style == "llama":
            return cls(pad, tok.bos_id, None, tok.eos_id)
        if style == "none":
            return cls(pad)
        raise ValueError(f"unknown packing style {style!r}; expected auto, bert, llama or none")


@dataclasses.dataclass(frozen=True)
class TruncationStats:
    """How many examples / tokens the largest bucket ``max_length`` cut (tokens exclude specials)."""

    examples: int
    tokens: int
    max_length: int
    truncated_examples: int
    truncated_tokens: int
    prompt_tokens_cut: int
    target_tokens_cut: int

    def summary(self) -> str:
        return (f"truncated {self.truncated_examples}/{self.examples} examples "
                f"({self.truncated_tokens}/{self.tokens} tokens: {self.prompt_tokens_cut} of prompts from the left, "
                f"{self.target_tokens_cut} of targets from the right) to the largest bucket {self.max_length}")


def plan_lengths(prompt_lengths: np.ndarray, target_lengths: np.ndarray, fmt: PackingFormat, max_length: int):
    """Token counts kept after truncation to ``max_length`` (policy: module docstring).

    prompt_lengths, target_lengths: [N] raw counts (no specials) -> (keep_prompt [N], keep_target [N]) int64.
    """
    lp = np.asarray(prompt_lengths, np.int64)
    lt = np.asarray(target_lengths, np.int64)
    n_special = ((fmt.start_id is not None) + (fmt.end_id is not None)
                 + (fmt.sep_id is not None) * (lp > 0)).astype(np.int64)
    budget = max_length - n_special
    if np.any(budget < 2):
        raise ValueError(f"largest bucket {max_length} leaves fewer than 2 tokens after special tokens")
    over = lp + lt > budget
    keep_t = np.where(over, np.minimum(lt, np.maximum(budget - lp, budget // 2)), lt)
    keep_p = np.where(over, np.minimum(lp, budget - keep_t), lp)
    return keep_p, keep_t


def packed_lengths(keep_prompt: np.ndarray, keep_target: np.ndarray, fmt: PackingFormat):
    """(prompt_length [N], target_length [N]) in the packed layout, special tokens included."""
    p = keep_prompt + (fmt.start_id is not None) + (fmt.sep_id is not None) * (keep_prompt > 0)
    return p.astype(np.int64), (keep_target + (fmt.end_id is not None)).astype(np.int64)


def choose_bucket(lengths: np.ndarray, buckets: Sequence[int]) -> int:
    """The smallest bucket >= max(lengths) (``lengths`` already truncated to ``buckets[-1]``)."""
    m = int(np.max(lengths)) if len(lengths) else 0
    for b in buckets:
        if b >= m:
            return int(b)
    raise ValueError(f"length {m} exceeds the largest bucket {buckets[-1]} (truncate first)")


class Packer:
    """Packs examples of a ``TokenizedExamples`` into buckets; truncation planned once, at construction.

    ``buckets``: increasing static lengths, e.g. ``(32, 64, 128)``; examples longer than
    ``buckets[-1]`` are truncated, counted in ``stats`` and warned about once (one log line).
    ``total_length [N]``: each example's packed length (<= ``buckets[-1]``).
    """

    def __init__(self, tokenized: TokenizedExamples, fmt: PackingFormat, buckets: Sequence[int] = (32, 64, 128)):
        buckets = tuple(int(b) for b in buckets)
        if not buckets or list(buckets) != sorted(set(buckets)):
            raise ValueError(f"buckets must be strictly increasing lengths, got {buckets}")
        self.tokenized, self.fmt, self.buckets = tokenized, fmt, buckets
        lp, lt = tokenized.prompt.lengths, tokenized.target.lengths
        self.keep_prompt, self.keep_target = plan_lengths(lp, lt, fmt, buckets[-1])
        self.prompt_length, self.target_length = packed_lengths(self.keep_prompt, self.keep_target, fmt)
        self.total_length = self.prompt_length + self.target_length
        cut_p, cut_t = lp - self.keep_prompt, lt - self.keep_target
        self.stats = TruncationStats(
            examples=len(tokenized), tokens=int(lp.sum() + lt.sum()), max_length=buckets[-1],
            truncated_examples=int(np.count_nonzero(cut_p + cut_t)), truncated_tokens=int(cut_p.sum() + cut_t.sum()),
            prompt_tokens_cut=int(cut_p.sum()), target_tokens_cut=int(cut_t.sum()))
        if self.stats.truncated_examples:
            log.warning("text data %s: %s", tokenized.name or tokenized.key, self.stats.summary())

    def __len__(self) -> int:
        return len(self.tokenized)

    def bucket_for(self, indices: np.ndarray) -> int:
        """The bucket length for a batch of example ``indices`` (``-1`` = padding example, length 0)."""
        idx = np.asarray(indices)
        return choose_bucket(self.total_length[idx[idx >= 0]], self.buckets)

    def pack(self, indices: np.ndarray, length: int | None = None) -> dict:
        """Examples ``indices [B]`` (``-1``: an all-padding row) -> dict of arrays ``[B, length]`` / ``[B]``
        (fields: module docstring). ``length`` defaults to ``bucket_for(indices)``."""
        idx = np.asarray(indices, np.int64)
        length = self.bucket_for(idx) if length is None else int(length)
        b, f = len(idx), self.fmt
        tokens = np.full((b, length), f.pad_id, np.int32)
        corruptible = np.zeros((b, length), bool)
        segment = np.zeros((b, length), np.int32)
        pl = np.zeros(b, np.int32)
        tl = np.zeros(b, np.int32)
        prompt, target = self.tokenized.prompt, self.tokenized.target
        for r, i in enumerate(idx):
            if i < 0:
                continue
            kp, kt = int(self.keep_prompt[i]), int(self.keep_target[i])
            p_ids = prompt[i][len(prompt[i]) - kp:] if kp else prompt[i][:0]
            row = tokens[r]
            pos = 0
            if f.start_id is not None:
                row[pos] = f.start_id
                pos += 1
            row[pos:pos + kp] = p_ids
            pos += kp
            if f.sep_id is not None and kp > 0:
                row[pos] = f.sep_id
                pos += 1
            pl[r] = pos
            row[pos:pos + kt] = target[i][:kt]
            pos += kt
            if f.end_id is not None:
                row[pos] = f.end_id
                pos += 1
            if pos > length:
                raise ValueError(f"example {i} has packed length {pos} > bucket {length}")
            tl[r] = pos - pl[r]
            corruptible[r, pl[r]:pos] = True
            segment[r, pl[r]:pos] = 1
        valid = np.arange(length)[None, :] < (pl + tl)[:, None]
        return {"tokens": tokens, "corruptible": corruptible, "valid": valid, "attention_mask": valid.copy(),
                "segment_ids": segment, "prompt_length": pl, "target_length": tl}
