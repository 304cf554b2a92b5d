"""Instruction / derived-task data for paper 002's instruction finetuning: ``{prompt, target}`` examples
built by templates, from local FLAN-style JSONL or from the embedded corpora.

* ``read_instruction_jsonl(path, template, target_field)``: one JSON object a line; the prompt is
  ``template.format(**record)`` (e.g. FLAN 2022's ``"{inputs}"`` with ``target_field="targets"``,
  or ``"Instruction: {instruction} Input: {input}"`` with ``"output"``); a record lacking a field of the
  template, or whose field is not a JSON string (null, a number, a list), raises one ``InputError``
  naming the file, the line and the field (lines read by ``diffjax.data.text.lines``).
* ``embedded_tasks(names, split, template)``: a small multi-task instruction set with checkable
  answers, made from the embedded corpora (``diffjax.data.text.embedded``), every record
  ``{"task", "instruction", "input", "output"}``:

  ============  =================  ==================================================================
  task          corpus             instruction -> output
  ============  =================  ==================================================================
  unshuffle     news_headlines     the words of a headline in a seeded random order -> the headline
  reverse       news_headlines     a headline -> its words in reverse order
  sentiment     movie_reviews      a fresh / rotten review snippet -> "fresh" or "rotten"
  first_words   news_headlines     a headline -> its first three words
  copy          news_headlines     a headline -> the same headline (held out: zero-shot)
  ============  =================  ==================================================================

  Headlines are those of 4..``max_words`` words. Splits: ``"train"`` = examples with
  ``index % 10 != 0``, ``"test"`` = ``index % 10 == 0`` (per task, in corpus order), so the
  held-out headlines of every task are the same ones and never seen in training.

Returns ``(TextExamples, task_names [N])``; nothing here imports the trainer or the tasks.
"""

from __future__ import annotations

import re
import string

import numpy as np

from diffjax.data.text.embedded import read_embedded
from diffjax.data.text.examples import TextExamples
from diffjax.data.text.files import check_file
from diffjax.data.text.lines import input_error, jsonl_records, text_field

INSTRUCTIONS = {
    "unshuffle": "Put the words in the right order:",
    "reverse": "Write the words in reverse order:",
    "sentiment": "Is this review fresh or rotten?",
    "first_words": "Write the first three words:",
    "copy": "Repeat the text:",
}
TASKS = tuple(INSTRUCTIONS)
DEFAULT_TEMPLATE = "{instruction} {input}"


def _headlines(max_words: int) -> list[list[str]]:
    out = []
    for t in read_embedded("news_headlines").targets:
        words = t.split()
        if 4 <= len(words) <= max_words:
            out.append(words)
    return out


def _split(n: int, split: str) -> np.ndarray:
    idx = np.arange(n)
    if split == "train":
        return idx[idx % 10 != 0]
    if split == "test":
        return idx[idx % 10 == 0]
    raise ValueError(f"instruction data splits are 'train' and 'test'; got {split!r}")


def task_records(task: str, split: str = "train", *, max_words: int = 10, seed: int = 0) -> list[dict]:
    """The records of one embedded task (module docstring)."""
    if task not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction task {task!r}; known: {', '.join(TASKS)}")
    recs = []
    if task == "sentiment":
        ex = read_embedded("movie_reviews", prompt_field="category")
        pairs = [(p, t) for p, t in zip(ex.prompts, ex.targets) if p in ("fresh", "rotten") and len(t.split()) <= 3 * max_words]
        for i in _split(len(pairs), split):
            recs.append({"input": pairs[i][1], "output": pairs[i][0]})
    else:
        heads = _headlines(max_words)
        for i in _split(len(heads), split):
            words = heads[i]
            if task == "unshuffle":
                perm = np.random.default_rng([seed, int(i)]).permutation(len(words))
                if (perm == np.arange(len(words))).all():
                    perm = np.roll(perm, 1)
                inp, out = " ".join(words[j] for j in perm), " ".join(words)
            elif task == "reverse":
                inp, out = " ".join(words), " ".join(words[::-1])
            elif task == "first_words":
                inp, out = " ".join(words), " ".join(words[:3])
            else:  # copy
                inp = out = " ".join(words)
            recs.append({"input": inp, "output": out})
    for r in recs:
        r.update(task=task, instruction=INSTRUCTIONS[task])
    return recs


def template_fields(template: str) -> list[str]:
    return [f for _, f, _, _ in string.Formatter().parse(template) if f]


def apply_template(records: list[dict], template: str, target_field: str, *, source: str) -> TextExamples:
    """Records -> ``TextExamples`` with prompt ``template.format(**record)``, target ``record[target_field]``."""
    need = set(template_fields(template)) | {target_field}
    prompts, targets = [], []
    for n, r in enumerate(records):
        missing = sorted(need - set(r))
        if missing:
            raise ValueError(f"{source}: record {n} lacks {missing} (it has {sorted(r)}); set prompt_template / "
                             f"target_field to the data's field names")
        prompts.append(re.sub(r"\s+", " ", template.format(**r)).strip())
        targets.append(str(r[target_field]))
    return TextExamples(source, prompts, targets)


def embedded_tasks(names, split: str = "train", *, template: str = DEFAULT_TEMPLATE, max_words: int = 10,
                   max_per_task: int | None = None, seed: int = 0) -> tuple[TextExamples, list[str]]:
    """Several embedded tasks together (each capped at ``max_per_task``), in task order."""
    records = []
    for name in names:
        recs = task_records(name, split, max_words=max_words, seed=seed)
        records += recs[:max_per_task] if max_per_task else recs
    ex = apply_template(records, template, "output", source=f"instructions:{'+'.join(names)}[{split}]")
    return ex, [r["task"] for r in records]


def read_instruction_jsonl(path: str, *, template: str = "{inputs}", target_field: str = "targets",
                           task_field: str = "task") -> tuple[TextExamples, list[str]]:
    """FLAN-style JSONL -> ``(TextExamples, task names)`` (task = ``record[task_field]`` or ``"all"``)."""
    p = check_file(path)
    records, tasks = [], []
    need = sorted(set(template_fields(template)) | {target_field})
    for n, r in jsonl_records(p, shown=path):
        where = f"{path}:{n}"
        missing = [f for f in need if f not in r]
        if missing:
            raise input_error(f"{where}: the line lacks {missing} (it has {sorted(r)}); set prompt_template / "
                              f"target_field to the data's field names")
        records.append({f: text_field(r, f, where=where) for f in need})
        tasks.append(text_field(r, task_field, where=where) if task_field in r else "all")
    if not records:
        raise ValueError(f"{path} holds no records")
    return apply_template(records, template, target_field, source=path), tasks


def balanced_indices(tasks: list[str], max_examples: int) -> np.ndarray:
    """Sorted indices of at most ``max_examples`` examples, taking the tasks in turn (each task's first
    examples, in order), so a cap on the evaluation set keeps every task: a large task listed first
    (the embedded set's sentiment) would otherwise fill it. One task: ``arange(min(n, max_examples))``."""
    by_task: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    order = [ids[k] for k in range(max((len(v) for v in by_task.values()), default=0))
             for ids in by_task.values() if k < len(ids)]
    return np.sort(np.asarray(order[:max(int(max_examples), 0)], np.int64))
