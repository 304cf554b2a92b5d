"""Text OOD data (paper 000): ID train / held-out / test and every OOD set, packed for a BERT encoder.

Set specs are source strings of ``diffjax.data.text`` (``"tfds:glue/sst2"``, ``"embedded:hamlet"``,
``path.txt`` / ``path.jsonl``) with optional options after ``#``:
``"tfds:glue/mnli#split=validation_matched,field=premise"`` (``split``: tfds split, default
``"test"`` for tfds and ``"train"`` for files / embedded corpora; ``field``: the text field).
A set is tokenised without special tokens and packed ``[CLS] text [SEP]`` at the smallest
bucket that holds its longest example (truncated at the largest bucket, counted).

``read_inputs`` reads the user's inputs for ``score``: a ``.txt`` (one input a non-blank line, id =
line number) or a ``.jsonl`` (id = the record's ``id`` field when present, else the line number;
text = ``text_field``, else ``"text"`` / ``"target"`` / ``"sentence"``). Missing, empty or
unreadable inputs raise ``diffjax.errors.InputError`` naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time

import numpy as np

from diffjax.data.text import TextExamples, read_examples
from diffjax.data.text.cache import tokenize
from diffjax.data.text.files import read_inputs as read_text_inputs
from diffjax.data.text.packing import Packer, PackingFormat
from diffjax.errors import ConfigError, InputError
from diffjax.runtime import log


@dataclasses.dataclass
class PackedSet:
    """tokens / mask [N, L] (L = the set's bucket), labels [N] int32 (-1 unknown) or None, content ids [N]."""

    name: str
    tokens: np.ndarray
    mask: np.ndarray
    labels: np.ndarray | None
    ids: np.ndarray
    packer: Packer

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def inputs(self, n: int | None = None) -> dict:
        return {"tokens": self.tokens[:n], "mask": self.mask[:n]}


def length_groups(mask: np.ndarray, parts: int = 4, min_rows: int = 1) -> list[tuple[int, np.ndarray]]:
    """Rows of ``mask`` [N, L] grouped by the width they need: ``[(width, row indices)]``, width the smallest
    of ``L * k / parts`` (k = 1..parts, rounded up) that holds the row's last real token. A group of fewer
    than ``min_rows`` rows (the scoring chunk: a smaller batch is one more compiled shape) joins the next wider
    group, except the widest. Scores are padding-independent (per-position noise, masked attention), so a
    group scored at its width equals the full-width score; short sentences then cost a fraction of L."""
    n, length = mask.shape
    widths = sorted({-(-length * k // parts) for k in range(1, parts + 1)})
    last = np.where(mask.any(1), length - np.argmax(mask[:, ::-1], axis=1), 1)  # 1 + the last real position
    need = np.asarray(widths, np.int64)[np.searchsorted(widths, last)]  # the smallest width >= last
    groups, carried = [], np.zeros(0, np.int64)
    for w in widths:
        rows = np.concatenate([carried, np.flatnonzero(need == w)])
        if len(rows) >= max(1, int(min_rows)) or (w == widths[-1] and len(rows)):
            groups.append((w, np.sort(rows)))
            carried = np.zeros(0, np.int64)
        else:
            carried = rows
    return groups


def parse_spec(spec: str, *, default_split: str | None = None) -> tuple[str, dict]:
    """``"SOURCE#k=v,k=v"`` -> (source, {split, field}); unknown option keys raise."""
    source, _, opts = spec.partition("#")
    out = {}
    for kv in filter(None, opts.split(",")):
        k, _, v = kv.partition("=")
        if k not in ("split", "field"):
            raise ValueError(f"text set {spec!r}: unknown option {k!r}; use split=... and field=...")
        out[k] = v
    if "split" not in out:
        out["split"] = default_split or ("test" if source.startswith("tfds:") else "train")
    return source, out


def set_name(spec: str) -> str:
    source, _ = parse_spec(spec)
    if source.startswith(("tfds:", "embedded:")):
        return source.split(":", 1)[1]
    return os.path.splitext(os.path.basename(source))[0]


def content_ids(tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, L] -> [N] int32 hash of each row's masked-in token ids (the noise key of a sentence)."""
    out = np.empty(tokens.shape[0], np.int32)
    for i, (t, m) in enumerate(zip(tokens, mask)):
        h = hashlib.sha1(np.ascontiguousarray(t[m.astype(bool)], np.int32).tobytes()).digest()
        out[i] = int.from_bytes(h[:4], "little") & 0x7FFFFFFF
    return out


def pack_examples(name: str, examples: TextExamples, tok, buckets, labels=None) -> PackedSet:
    """Unconditional examples -> a ``PackedSet`` (one bucket for the whole set)."""
    tokenized = tokenize(TextExamples(examples.name, [""] * len(examples), list(examples.targets)), tok)
    packer = Packer(tokenized, PackingFormat.for_tokenizer(tok, "bert"), tuple(buckets))
    batch = packer.pack(np.arange(len(examples)))
    tokens, mask = batch["tokens"], batch["valid"]
    return PackedSet(name, tokens, mask, labels, content_ids(tokens, mask), packer)


def read_text(spec: str, *, max_examples: int | None = None, data_dir: str | None = None, label_field: str = "",
              split: str | None = None) -> TextExamples:
    """One set spec -> examples; with ``label_field`` each example's label is its ``prompt`` (not packed)."""
    source, opts = parse_spec(spec, default_split=split)
    try:
        return read_examples(source, split=opts["split"], data_dir=data_dir or None, prompt_field=label_field or None,
                             target_field=opts.get("field") or None, max_examples=max_examples)
    except (FileNotFoundError, UnicodeDecodeError, ValueError) as e:
        if os.path.splitext(source)[1].lower() in (".txt", ".jsonl", ".tsv"):
            raise InputError(f"text set {source!r}: {e}") from e
        raise


def subset(ex: TextExamples, idx) -> TextExamples:
    p, t = list(ex.prompts), list(ex.targets)
    return TextExamples(ex.name, [p[i] for i in idx], [t[i] for i in idx])


def pack_labelled(name: str, ex: TextExamples, tok, buckets, label_names: list | None) -> PackedSet:
    """Examples whose prompts are labels (``label_names`` given: mapped to ids, -1 unknown) -> ``PackedSet``."""
    labels = None
    if label_names is not None:
        index = {n: i for i, n in enumerate(label_names)}
        labels = np.asarray([index.get(p, -1) for p in ex.prompts], np.int32)
    return pack_examples(name, ex, tok, buckets, labels)


def id_splits(data, tok, buckets) -> tuple[dict, list]:
    """``config.task.data`` -> ({"train", "heldout", "test": PackedSet}, label names).

    ``id_train_split`` is read and shuffled (``seed``); a held-out or test split left "" is carved
    from it (``n_heldout`` / ``n_test`` examples, before the ``n_train`` training examples), a named
    one is read as given (first ``n_heldout`` / ``n_test`` examples).
    """
    cap = lambda n: int(n) or None  # noqa: E731
    read = lambda split, n=None: read_text(data.id, max_examples=n, data_dir=data.data_dir,  # noqa: E731
                                           label_field=data.label_field, split=split)
    pool = read(data.id_train_split)
    carved = {key: int(n) for key, split, n in (("heldout", data.id_heldout_split, data.n_heldout),
                                                  ("test", data.id_test_split, data.n_test)) if not split}
    if len(pool) < sum(carved.values()) + 1:
        counts = " + ".join(f"task.data.n_{k}={n}" for k, n in carved.items())
        raise ConfigError(f"the ID set {data.id!r} (split {data.id_train_split!r}) has {len(pool)} examples; {counts} "
                          f"carved from it and at least 1 to train on need {sum(carved.values()) + 1}: lower "
                          f"--config.task.data.n_heldout / n_test or use a larger ID set")
    order = list(np.random.default_rng([int(data.seed), 0]).permutation(len(pool)))
    parts = {}
    for key, split, n in (("heldout", data.id_heldout_split, data.n_heldout), ("test", data.id_test_split, data.n_test)):
        if split:
            parts[key] = read(split, cap(n))
        else:
            if not int(n):
                raise ValueError(f"data.n_{key} must be > 0 when data.id_{key}_split is '' (carved from the "
                                 f"shuffled {data.id_train_split!r})")
            parts[key], order = subset(pool, order[:int(n)]), order[int(n):]
    parts["train"] = subset(pool, order[:cap(data.n_train)])
    for key, part in parts.items():
        if not len(part):
            split = data.id_heldout_split if key == "heldout" else data.id_test_split
            raise ConfigError(f"the ID {key} split {split!r} of {data.id!r} holds no examples: set "
                              f"--config.task.data.id_{key}_split to a split with examples, or '' to carve "
                              f"task.data.n_{key} examples from {data.id_train_split!r}")
    names = sorted(set(parts["train"].prompts)) if data.label_field else None
    return {k: pack_labelled(k, v, tok, buckets, names) for k, v in parts.items()}, names or []


def all_sets(data, tok) -> tuple[dict, list]:
    """``config.task.data`` -> ({"heldout", "test", "train", "ood/<name>": PackedSet}, ID label names):
    ``id_splits`` and every set of ``data.ood`` and ``data.user_ood`` (``n_ood`` examples each)."""
    t0, buckets = time.time(), tuple(int(b) for b in data.buckets)
    sets, labels = id_splits(data, tok, buckets)
    for spec in tuple(data.ood) + tuple(data.user_ood):
        ex = read_text(spec, max_examples=int(data.n_ood) or None, data_dir=data.data_dir)
        s = pack_examples(set_name(spec), ex, tok, buckets)
        sets[f"ood/{s.name}"] = s
    log("text_ood: sets " + ", ".join(f"{k} {len(v)}x{v.tokens.shape[1]}" for k, v in sets.items())
        + f" ({time.time() - t0:.1f}s)")
    return sets, labels


def pack_texts(source: str, texts: list[str], tok, buckets) -> PackedSet:
    """A user's texts (read from ``source``) -> the ``PackedSet`` "inputs" that ``score`` scores."""
    return pack_examples("inputs", TextExamples(source, [""] * len(texts), texts), tok, tuple(int(b) for b in buckets))


def read_inputs(path: str, text_field: str = "") -> tuple[list, list[str]]:
    """A user's ``.txt`` / ``.jsonl`` inputs -> (ids, texts): ``diffjax.data.text.files.read_inputs``."""
    return read_text_inputs(path, text_field)
