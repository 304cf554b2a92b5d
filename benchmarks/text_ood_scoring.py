"""Text OOD scoring throughput (paper 000): sentences/s at 1 and 16 timesteps, diffjax (JAX, one
jitted vmapped sweep) vs a PyTorch implementation of the same scoring loop with the same weights
(transformers' BertModel fed ``inputs_embeds``, the same timestep MLP and x0 head, L_d + L_c).

The denoiser is the real all-MiniLM-L6-v2 encoder with a freshly initialised timestep MLP, timestep
projection (random here, zero in training's init, so that the parity covers it) and x0 head (weights
copied to torch), scored as the demo config does (x_0 rescaled to unit per-dimension std, v-prediction,
rounding logits tied in the noising space), sentences of the embedded movie reviews packed to 32 tokens. Both
sides score the same noised inputs (the JAX noise is passed to torch) and the scores are checked
to agree before timing. Prints the machine (``benchmarks/_machine.py``) and one JSON line, and writes
benchmarks/results/text_ood_scoring.json (``--json`` / ``--out``) with the machine block. Torch gets as
many threads as XLA:CPU uses (``os.sched_getaffinity``) unless ``--threads`` says otherwise; when JAX runs
on a GPU, torch runs on CUDA if available, else the torch side is skipped (JAX timings only).

    python benchmarks/text_ood_scoring.py [--n 64] [--batch 16] [--seeds 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _machine  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: the cores XLA:CPU uses, os.sched_getaffinity)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", "--out", dest="json", default=_machine.default_json_path("text_ood_scoring"))
    args = ap.parse_args()

    import torch
    from transformers import BertModel

    from diffjax.data.text import TextExamples, load_tokenizer, read_examples
    from diffjax.diffusion.schedules import gaussian_schedule
    from diffjax.ood import sweep as sweep_lib
    from diffjax.data import text_ood_sets as tdata
    from diffjax.ood import text_scores as tm
    from diffjax.checkpoints.pretrained import resolve_model_path
    from diffjax.checkpoints.hf import load_hf_checkpoint

    info = _machine.machine_info()
    threads = args.threads or info["xla_cpu_threads"]
    torch.set_num_threads(threads)
    info = _machine.machine_info(import_torch=True)
    dev, torch_note = "cpu", None
    if info["jax_backend"] == "gpu":
        if torch.cuda.is_available():
            dev = "cuda"
            _machine.torch_cuda_fp32_like_jax()  # float32 matmuls in TF32 as XLA:GPU does by default
        else:
            torch_note = "JAX runs on the GPU but torch has no CUDA here: torch side skipped"
    _machine.print_machine(info)
    print(f"torch: {dev}, {threads} thread(s) (= XLA:CPU's {info['xla_cpu_threads']}"
          f"{', --threads' if args.threads else ''})" + (f"; note: {torch_note}" if torch_note else ""), flush=True)
    path = resolve_model_path("embedded:minilm")
    tok = load_tokenizer(path)
    ex = read_examples("embedded:movie_reviews", max_examples=args.n)
    s = tdata.pack_examples("bench", TextExamples("b", [""] * len(ex), list(ex.targets)), tok, (32,))
    enc_model, enc = load_hf_checkpoint(path, mlm_head=False, use_pooler=False, ignore_unexpected=[r"(^|\.)pooler\."])
    model = tm.TextDenoiser(enc_model.config, time_mult=4)
    d = enc_model.config.hidden_size
    fresh = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, d)), jnp.ones((1,), jnp.int32), jnp.ones((1, 4), bool))
    params = {**fresh["params"], "encoder": enc}
    params["time_proj"] = {"kernel": 0.02 * jax.random.normal(jax.random.PRNGKey(1), (d, d)), "bias": jnp.zeros((d,))}
    sched = gaussian_schedule("linear", 1000)
    x0_std, prediction = 1.0, "v"  # configs/text_ood_demo.py
    score_fn = tm.make_score_fn(model, sched, x0_std=x0_std, prediction=prediction, row_batch=8)
    fn = sweep_lib.make_score_sweep(score_fn, t_batch_size=1)
    keys = sweep_lib.seed_keys(0, args.seeds)
    inputs = s.inputs()

    # torch reference with the same weights
    hf = BertModel.from_pretrained(path, add_pooling_layer=False).eval().to(dev)
    tp = {k: torch.tensor(np.asarray(v), device=dev) for k, v in
          {"w0": params["time_mlp"]["dense_0"]["kernel"], "b0": params["time_mlp"]["dense_0"]["bias"],
           "w1": params["time_mlp"]["dense_1"]["kernel"], "b1": params["time_mlp"]["dense_1"]["bias"],
           "wp": params["time_proj"]["kernel"], "bp": params["time_proj"]["bias"],
           "wx": params["x0_head"]["kernel"], "bx": params["x0_head"]["bias"]}.items()}
    scale = float(tm.embedding_scale(tm.embedding_matrix(params), x0_std))
    k = float(tm.rounding_logit_scale(params))
    abar = torch.tensor(np.asarray(sched.alpha_bars), dtype=torch.float64, device=dev)
    E = hf.embeddings.word_embeddings.weight
    half = d // 2
    freqs = torch.exp(-np.log(10000.0) * torch.arange(half, dtype=torch.float32, device=dev) / half)

    @torch.no_grad()
    def torch_scores(tokens, mask, t, noise):  # [B, L], [B, L], [B], [B, L, D] -> L_d + L_c [B]
        x0 = E[tokens] * scale
        a = abar[t].float()[:, None, None]
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        args_ = t.float()[:, None] * freqs[None]
        temb = torch.cat([torch.cos(args_), torch.sin(args_)], -1)
        cond = (torch.nn.functional.silu(temb @ tp["w0"] + tp["b0"]) @ tp["w1"] + tp["b1"]) @ tp["wp"] + tp["bp"]
        # BertEmbeddings adds position + token type to inputs_embeds, then LayerNorm; diffjax adds cond
        # before that LayerNorm: feed inputs_embeds + cond (the sum is the same).
        h = hf(inputs_embeds=x_t / scale + cond[:, None, :], attention_mask=mask.long()).last_hidden_state
        v_hat = h @ tp["wx"] + tp["bx"]
        x0_hat = a.sqrt() * x_t - (1 - a).sqrt() * v_hat
        m = mask.float()
        n = m.sum(1).clamp(min=1)
        ld = (((x0_hat - x0) ** 2).sum(-1) * m).sum(1) / n / scale ** 2  # the paper's units (x_0 = E[w])
        logits = k * scale * (x0_hat @ E.T)  # k (x0_hat) (s E)^T
        nll = torch.logsumexp(logits, -1) - logits.gather(-1, tokens[..., None])[..., 0]
        return ld + (nll * m).sum(1) / n

    def jax_run(ts):
        out = sweep_lib.sweep_chunked(fn, params, inputs, ts, keys, chunk=args.batch, ids=s.ids)
        return out["ld_lc"]

    def noise_of(ids, L):
        def one(k, i):
            return tm.position_noise(jax.random.fold_in(k, i), L, d)
        return np.asarray(jax.vmap(lambda i: one(keys[0], i))(jnp.asarray(ids)))

    noise = torch.tensor(noise_of(s.ids, inputs["tokens"].shape[1]), device=dev)
    toks, msk = torch.tensor(inputs["tokens"], device=dev).long(), torch.tensor(inputs["mask"], device=dev)

    def torch_run(ts):
        out = []
        for t in ts:  # the same loop: every t, every batch (one noise draw: seed 0)
            for b in range(0, args.n, args.batch):
                sl = slice(b, b + args.batch)
                out.append(torch_scores(toks[sl], msk[sl], torch.full((toks[sl].shape[0],), int(t), device=dev),
                                        noise[sl]))
        return torch.cat(out).reshape(len(ts), -1).cpu()  # .cpu() waits for CUDA

    # parity at t = 200 (seed 0)
    j = jax_run([200])[0, 0]
    err = None
    if torch_note is None:
        tr = torch_run([200])[0].numpy()
        err = float(np.max(np.abs(j - tr) / np.abs(tr)))
    res = {"n_sentences": args.n, "batch": args.batch, "seeds": args.seeds, "length": int(inputs["tokens"].shape[1]),
           "torch_threads": threads, "torch_device": dev, "torch_note": torch_note, "max_rel_diff_jax_vs_torch": err,
           "backend": jax.default_backend()}
    for n_t in (1, 16):
        ts = list(np.linspace(50, 1000, n_t).astype(int)) if n_t > 1 else [200]
        jax_run(ts)  # compile
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            jax_run(ts)
        tj = (time.perf_counter() - t0) / args.repeats
        if torch_note is not None:
            res[f"t{n_t}"] = {"jax_sentences_per_s": args.n * args.seeds / tj, "scores_per_sentence": n_t * args.seeds}
            continue
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            torch_run(ts)
        tt = (time.perf_counter() - t0) / args.repeats * args.seeds  # torch loop ran 1 seed
        res[f"t{n_t}"] = {"jax_sentences_per_s": args.n * args.seeds / tj, "torch_sentences_per_s": args.n * args.seeds / tt,
                          "jax_over_torch": tt / tj, "scores_per_sentence": n_t * args.seeds}
    print(json.dumps(res))
    _machine.write_json(args.json, {"benchmark": "text_ood_scoring", **res}, info)


if __name__ == "__main__":
    main()
