"""Generation metrics shared by the text tasks (papers 001 and 002): corpus BLEU, exact match,
SQuAD-style EM / F1, length accuracy. Host-side, on decoded strings.

* ``corpus_bleu(hypotheses, references, tokenizer="13a", lowercase=False)``: sacrebleu's corpus BLEU
  (exponential smoothing; 13a tokenisation and case kept are sacrebleu's defaults, the number papers
  report as "SacreBLEU"), 0..100. ``lowercase=True`` lower-cases hypotheses and references first, as
  paper 002's authors do (yegcjs/DiffusionLLM ``DiscreteDiffusionGenerator.decode`` then
  ``sacrebleu.corpus_bleu(..., tokenize="13a")``). Every BLEU a task writes carries its convention,
  ``bleu_convention(tokenizer, lowercase) = {"tokenizer": ..., "lowercase": ...}``.
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
BLEU_TOKENIZERS = ("13a", "intl", "zh", "char", "none")  # sacrebleu tokenizers that need no extra package


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


def bleu_convention(tokenizer: str = "13a", lowercase: bool = False) -> dict:
    """The convention stored next to a BLEU: ``{"tokenizer": sacrebleu tokenizer, "lowercase": bool}``."""
    if tokenizer not in BLEU_TOKENIZERS:
        raise ValueError(f"BLEU tokenizer {tokenizer!r}; expected one of {BLEU_TOKENIZERS}")
    return {"tokenizer": str(tokenizer), "lowercase": bool(lowercase)}


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], *, tokenizer: str = "13a",
                lowercase: bool = False) -> float:
    """Corpus BLEU (0..100) of N hypotheses against one reference each: sacrebleu with ``tokenizer``,
    after lower-casing both sides if ``lowercase`` (paper 002's convention: "13a", lowercase)."""
    import sacrebleu

    _check_pairs(hypotheses, references)
    bleu_convention(tokenizer, lowercase)
    hyps, refs = list(hypotheses), list(references)
    if lowercase:
        hyps, refs = [h.lower() for h in hyps], [r.lower() for r in refs]
    return float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenizer).score)


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


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str], *, bleu_tokenizer: str = "13a",
                       bleu_lowercase: bool = False) -> dict:
    """The usual table row: BLEU with its ``bleu_convention``, exact match (strip), SQuAD EM and F1."""
    return {"bleu": corpus_bleu(hypotheses, references, tokenizer=bleu_tokenizer, lowercase=bleu_lowercase),
            "bleu_convention": bleu_convention(bleu_tokenizer, bleu_lowercase),
            "exact_match": exact_match(hypotheses, references),
            "squad_em": exact_match(hypotheses, references, normalize="squad"),
            "squad_f1": mean_token_f1(hypotheses, references),
            "num_examples": len(hypotheses)}
