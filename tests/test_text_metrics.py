"""Generation metrics against sacrebleu and hand-computed SQuAD cases."""

import numpy as np
import pytest

from diffjax.evaluation import text_metrics as tm


def test_bleu_matches_sacrebleu_and_bounds():
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp = ["the cat sat on the mat", "a dog ran home", "hello world"]
    ref = ["the cat sat on a mat", "a dog ran home", "goodbye world"]
    assert tm.corpus_bleu(hyp, ref) == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref]).score)
    assert tm.corpus_bleu(ref, ref) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        tm.corpus_bleu(["a", "b"], ["a"])


def test_bleu_conventions_match_sacrebleu_and_the_authors():
    """lowercase=True is paper 002's convention (yegcjs/DiffusionLLM: decode(...).lower() on both sides, then
    sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a")); the convention is written next to the BLEU."""
    sacrebleu = pytest.importorskip("sacrebleu")
    hyp = ["The Cat sat on the mat.", "A dog RAN home", "Hello, World"]
    ref = ["the cat sat on a mat.", "a dog ran home", "Goodbye, world"]
    authors = sacrebleu.corpus_bleu([h.lower() for h in hyp], [[r.lower() for r in ref]], tokenize="13a").score
    assert tm.corpus_bleu(hyp, ref, lowercase=True) == pytest.approx(authors)
    assert tm.corpus_bleu(hyp, ref, lowercase=True) == pytest.approx(
        sacrebleu.corpus_bleu(hyp, [ref], lowercase=True, tokenize="13a").score)
    cased = tm.corpus_bleu(hyp, ref)
    assert cased == pytest.approx(sacrebleu.corpus_bleu(hyp, [ref], tokenize="13a").score) and cased < authors
    assert tm.corpus_bleu(hyp, ref, tokenizer="char") == pytest.approx(
        sacrebleu.corpus_bleu(hyp, [ref], tokenize="char").score)
    row = tm.generation_metrics(hyp, ref, bleu_lowercase=True)
    assert row["bleu"] == pytest.approx(authors)
    assert row["bleu_convention"] == {"tokenizer": "13a", "lowercase": True}
    assert tm.generation_metrics(hyp, ref)["bleu_convention"] == {"tokenizer": "13a", "lowercase": False}
    with pytest.raises(ValueError, match="BLEU tokenizer"):
        tm.corpus_bleu(hyp, ref, tokenizer="13b")


def test_exact_match_and_squad_f1():
    assert tm.exact_match([" Paris ", "Rome"], ["Paris", "rome"]) == 0.5
    assert tm.exact_match(["The Paris!", "Rome"], ["paris", "rome"], normalize="squad") == 1.0
    # SQuAD: "the big red dog" vs "a red dog": tokens [big, red, dog] vs [red, dog]: P=2/3, R=1 -> F1=0.8
    assert tm.token_f1("the big red dog", "a red dog") == pytest.approx(0.8)
    assert tm.token_f1("cat", "dog") == 0.0 and tm.token_f1("", "") == 1.0
    assert tm.mean_token_f1(["red dog", "cat"], ["red dog", "dog"]) == pytest.approx(0.5)


def test_length_accuracy_and_row():
    assert tm.length_accuracy([3, 4, 5], [3, 5, 5]) == {"accuracy": pytest.approx(2 / 3), "mae": pytest.approx(1 / 3)}
    row = tm.generation_metrics(["a b c d"], ["a b c d"])
    assert row["exact_match"] == 1.0 and row["bleu"] == pytest.approx(100.0) and row["num_examples"] == 1
    with pytest.raises(ValueError):
        tm.length_accuracy([], [])
    assert np.isfinite(tm.corpus_bleu(["x"], ["y"]))
