"""AR2Diff data (papers.md 001): small derived tasks with a checkable answer, from any text source.

A stage's data is a source string (``diffjax.data.text``: ``embedded:NAME``, ``tfds:NAME``, a
.jsonl/.tsv/.txt file) plus an optional ``derive`` rule that rewrites each ``{prompt, target}``:

* ``""``: the examples as they are (e.g. tfds ``wmt14_translate/de-en``, ``squad`` with its fields);
* ``"split_half"``: prefix-LM pretraining text: prompt = the first half of the target's words,
  target = the rest (paper 001's stage-2 corpus, C4-like in the paper, embedded text here);
* ``"last_words:K"``: an extractive task with a checkable answer: prompt =
  ``"<text>\\nLast K words:"``, target = the last K words of the text (texts of K + 2 .. ``max_words``
  words are kept, so the answer is always a strict part of the prompt).
* ``"first_words:K"``: the same with the first K words.

Derived examples are written once to ``cache_dir/ar2diff_<hash>.jsonl`` (rewritten only when the
content changes, so the token cache of ``diffjax.data.text`` stays valid) with a disjoint
train / eval split: eval = the last ``eval_examples`` examples, train = the others.
"""

from __future__ import annotations

import hashlib
import json
import os

from diffjax.data.text import TextExamples, read_examples

DERIVE_KINDS = ("", "split_half", "last_words", "first_words")


def _words_rule(kind: str) -> tuple[str, int]:
    name, _, k = kind.partition(":")
    if name not in DERIVE_KINDS:
        raise ValueError(f"derive={kind!r}: expected one of '', 'split_half', 'last_words:K', 'first_words:K'")
    if name in ("last_words", "first_words"):
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"derive={kind!r}: {name} needs a word count, e.g. '{name}:3'")
        return name, int(k)
    return name, 0


def derive(examples: TextExamples, kind: str, *, max_words: int = 10) -> TextExamples:
    """Applies the ``derive`` rule (module docstring) to every example; examples it cannot use are dropped."""
    name, k = _words_rule(kind)
    if not name:
        return examples
    prompts, targets = [], []
    for text in examples.targets:
        words = " ".join(text.split()).split(" ")
        if name == "split_half":
            if len(words) < 2:
                continue
            half = len(words) // 2
            prompts.append(" ".join(words[:half]))
            targets.append(" ".join(words[half:]))
            continue
        if not k + 2 <= len(words) <= max_words:
            continue
        what = "Last" if name == "last_words" else "First"
        prompts.append(f"{' '.join(words)}\n{what} {k} words:")
        targets.append(" ".join(words[-k:] if name == "last_words" else words[:k]))
    if not targets:
        raise ValueError(f"derive={kind!r} kept no example of {examples.name} (max_words={max_words})")
    return TextExamples(f"{examples.name}|{kind}", prompts, targets)


def _write_jsonl(path: str, ex: TextExamples) -> None:
    lines = "".join(json.dumps({"prompt": p, "target": t}) + "\n" for p, t in zip(ex.prompts, ex.targets))
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == lines:
                return  # unchanged: keep the mtime (the token cache is keyed on it)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(lines)
    os.replace(path + ".tmp", path)


def prepare_split(source: str, derive_kind: str, *, cache_dir: str, eval_examples: int, max_examples: int = 0,
                  max_words: int = 10, prompt_field: str | None = None, target_field: str | None = None,
                  data_dir: str | None = None, split: str = "train") -> tuple[str, str]:
    """``(train .jsonl path, eval .jsonl path)`` of a (derived) source, disjoint (module docstring).

    ``max_examples`` > 0 keeps the first ``max_examples`` derived examples before the split.
    """
    ex = read_examples(source, split=split, data_dir=data_dir, prompt_field=prompt_field or None,
                       target_field=target_field or None)
    ex = derive(ex, derive_kind, max_words=max_words)
    n = len(ex) if not max_examples else min(len(ex), int(max_examples))
    if n <= eval_examples:
        raise ValueError(f"{source} (derive={derive_kind!r}) has {n} examples; need more than "
                         f"eval_examples={eval_examples}")
    key = hashlib.sha256(repr((source, split, derive_kind, n, eval_examples, max_words, prompt_field,
                               target_field)).encode()).hexdigest()[:16]
    os.makedirs(cache_dir, exist_ok=True)
    paths = []
    for part, sl in (("train", slice(0, n - eval_examples)), ("eval", slice(n - eval_examples, n))):
        path = os.path.join(cache_dir, f"ar2diff_{key}_{part}.jsonl")
        _write_jsonl(path, TextExamples(ex.name, list(ex.prompts)[sl], list(ex.targets)[sl]))
        paths.append(path)
    return paths[0], paths[1]
