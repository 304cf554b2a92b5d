"""Generation metrics shared by the text tasks (papers 001 and 002): corpus BLEU, exact match,
SQuAD-style EM / F1, length accuracy. Host-side, on decoded strings.

* ``corpus_bleu(hypotheses, references)``: sacrebleu's corpus BLEU (13a tokenisation, exponential
  smoothing: sacrebleu's defaults, the number papers report as "SacreBLEU"), 0..100.
* ``exact_match(hypotheses, references, normalize=...)``: fraction of exact string matches after
  ``normalize`` ("strip": surrounding whitespace; "squad": lower-case, no punctuation, no articles,
  single spaces, as the SQuAD v1.1 evaluation script).
* ``token_f1(hypothesis, reference)``: SQuAD v1.1 bag-of-tokens F1 of one pair (normalised as
  "squad"); ``mean_token_f1`` averages it.
* ``length_accuracy(predicted, true)``: fraction of exactly predicted lengths, and the mean
  absolute error.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Sequence

import numpy as np

NORMALIZATIONS = ("none", "strip", "squad")


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not len(hypotheses):
        raise ValueError("no hypotheses to score")


def normalize_text(text: str, normalize: str = "strip") -> str:
    """``normalize`` in ("none", "strip", "squad"); see the module docstring."""
    if normalize == "none":
        return text
    if normalize == "strip":
        return text.strip()
    if normalize == "squad":
        text = text.lower()
        text = "".join(ch for ch in text if ch not in set(string.punctuation))
        text = re.sub(r"\b(a|an|the)\b", " ", text)
        return " ".join(text.split())
    raise ValueError(f"normalize={normalize!r}; expected one of {NORMALIZATIONS}")


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (0..100) of N hypotheses against one reference each (sacrebleu defaults)."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def exact_match(hypotheses: Sequence[str], references: Sequence[str], *, normalize: str = "strip") -> float:
    """Fraction (0..1) of hypotheses equal to their reference after ``normalize``."""
    _check_pairs(hypotheses, references)
    return float(np.mean([normalize_text(h, normalize) == normalize_text(r, normalize)
                          for h, r in zip(hypotheses, references)]))


def token_f1(hypothesis: str, reference: str) -> float:
    """SQuAD v1.1 F1 of one pair: harmonic mean of token precision and recall (bag of tokens)."""
    h = normalize_text(hypothesis, "squad").split()
    r = normalize_text(reference, "squad").split()
    if not h or not r:
        return float(h == r)
    common = sum((collections.Counter(h) & collections.Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(h), common / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_token_f1(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    _check_pairs(hypotheses, references)
    return float(np.mean([token_f1(h, r) for h, r in zip(hypotheses, references)]))


def length_accuracy(predicted: Sequence[int], true: Sequence[int]) -> dict:
    """``{"accuracy": fraction exactly right, "mae": mean |predicted - true|}`` (lengths in tokens)."""
    p, t = np.asarray(predicted), np.asarray(true)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"length_accuracy: shapes {p.shape} and {t.shape} (must match, non-empty)")
    return {"accuracy": float(np.mean(p == t)), "mae": float(np.mean(np.abs(p - t)))}


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
    """The usual table row: BLEU, exact match (strip), SQuAD EM and F1."""
    return {"bleu": corpus_bleu(hypotheses, references),
            "exact_match": exact_match(hypotheses, references),
            "squad_em": exact_match(hypotheses, references, normalize="squad"),
            "squad_f1": mean_token_f1(hypotheses, references),
            "num_examples": len(hypotheses)}
