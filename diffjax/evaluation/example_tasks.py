"""Offline lm-evaluation-harness tasks built from the embedded Guardian headlines (the masked-LM demo's data,
``data/instructions.py``): task YAMLs over local JSONL files, written by ``write_example_tasks(out_dir)``
(``python -m diffjax.evaluation.lm_eval make-tasks --out DIR``); deterministic in ``seed``. No harness import.

* ``diffjax_headline_mc`` (``multiple_choice``, acc / acc_norm): the demo's unshuffle input (a held-out
  headline's words in a seeded random order) as context; the choices are the headline and ``num_decoys``
  other orders of the same words (seeded; never the true order nor the context's). The choices hold the same
  words, so only word order separates them: a model that learned English (or the task) beats chance
  (1 / (num_decoys + 1)).
* ``diffjax_headline_unshuffle`` (``generate_until``, exact_match): the same context, the headline as the
  target: the demo's training task on its test split, decoded by the run's decoder.
* ``diffjax_headline_ppl`` (``loglikelihood_rolling``, word / byte perplexity, bits per byte): the headlines.

Every task reads a local ``json`` dataset (``dataset_kwargs.data_files``); set ``HF_DATASETS_OFFLINE=1`` so
``datasets`` never looks for a hub copy.
"""

from __future__ import annotations

import json
import os

import numpy as np

from diffjax.data import instructions

TASKS = ("diffjax_headline_mc", "diffjax_headline_unshuffle", "diffjax_headline_ppl")

_COMMON = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
_YAML = {
    "diffjax_headline_mc": _COMMON + (
        "output_type: multiple_choice\ndoc_to_text: context\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "target_delimiter: \" \"\nmetric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"),
    "diffjax_headline_unshuffle": _COMMON + (
        "output_type: generate_until\ndoc_to_text: context\ndoc_to_target: target\ntarget_delimiter: \" \"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 32\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
        "    ignore_case: true\n    ignore_punctuation: false\n"),
    "diffjax_headline_ppl": _COMMON + (
        "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: text\n"
        "metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n"),
}


def headline_records(num_examples: int = 50, num_decoys: int = 3, seed: int = 0, max_words: int = 10) -> list[dict]:
    """The first ``num_examples`` held-out unshuffle records with ``num_decoys`` decoy orders each -> dicts with
    ``context``, ``target``, ``choices`` (the true one at ``label``, a seeded position) and ``text``."""
    out = []
    for k, rec in enumerate(instructions.task_records("unshuffle", "test", max_words=max_words, seed=seed)):
        if len(out) == num_examples:
            break
        words = rec["output"].split()
        seen = {rec["output"], rec["input"]}
        gen = np.random.default_rng([seed, 1, k])
        decoys = []
        for _ in range(200):  # headlines of >= 4 words have 24 orders: 3 decoys are always found
            cand = " ".join(words[j] for j in gen.permutation(len(words)))
            if cand not in seen:
                seen.add(cand)
                decoys.append(cand)
            if len(decoys) == num_decoys:
                break
        label = int(gen.integers(0, num_decoys + 1))
        choices = decoys[:label] + [rec["output"]] + decoys[label:]
        out.append({"context": rec["input"], "target": rec["output"], "choices": choices, "label": label,
                    "text": rec["output"]})
    return out


def write_example_tasks(out_dir: str, **kwargs) -> list[str]:
    """Writes ``headlines.jsonl`` and one ``TASK.yaml`` per task of ``TASKS`` into ``out_dir`` (its absolute path
    in the YAMLs); ``kwargs``: ``headline_records``'. Returns the YAML paths. A file already there is left as it
    is when it holds the same text, else ``FileExistsError`` (before anything is written)."""
    out_dir = os.path.abspath(out_dir)
    data = os.path.join(out_dir, "headlines.jsonl")
    files = {data: "".join(json.dumps(r) + "\n" for r in headline_records(**kwargs))}
    for name in TASKS:
        files[os.path.join(out_dir, f"{name}.yaml")] = f"task: {name}\n" + _YAML[name].format(data=json.dumps(data))
    for path, text in files.items():  # never overwrite a file that holds something else
        if os.path.exists(path):
            with open(path) as f:
                if f.read() != text:
                    raise FileExistsError(f"{path} exists and differs from the example task file; choose another "
                                          f"--out (or remove it).")
    os.makedirs(out_dir, exist_ok=True)
    for path, text in files.items():
        with open(path, "w") as f:
            f.write(text)
    return [p for p in files if p.endswith(".yaml")]
