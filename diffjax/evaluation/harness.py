"""A trained diffjax text run served to an evaluation harness, in plain Python types (no harness imported):
what ``evaluation/lm_eval.py`` hands lm-evaluation-harness's ``loglikelihood`` / ``loglikelihood_rolling`` /
``generate_until``.

    server = RunServer.from_workdir("workdirs/rdm_demo", mc_samples=32, seed=0)
    server.loglikelihood([("a shuffled headline", " the headline")])   # [(log-likelihood, is_greedy)]
    server.generate_until([("a shuffled headline", ["\\n"], 32)])       # ["the headline"]

* ``loglikelihood``: the run's ``likelihood_kind`` picks the estimator (``evaluation/likelihood.py``):
  "elbo" (masked diffusion: ``masked_lm``, ``ar2diff`` with ``objective="masked"``): LLaDA's Monte-Carlo ELBO
  over ``mc_samples`` draws per request, seeded by ``(seed, crc32(context, continuation))``, so a request's
  estimate does not depend on the other requests or the batching; "exact" (``ar2diff`` stage 1): the summed
  AR token log-probs. Every request becomes ``mc_samples + 1`` rows (the last: all of the continuation masked,
  for ``is_greedy``), or one row (AR), mapped over the mesh in global batches of ``batch_size`` through
  the run's ``RuntimeContext.map_batches`` (progress line with ETA on long lists).
* ``loglikelihood_rolling``: a text's ids in disjoint windows of half the row's content slots, each after
  the other half's worth of the tokens before it (``likelihood.rolling_windows``), summed.
* ``generate_until``: the run's decoder (``decoder=...`` among the ``load_run`` overrides picks another)
  over the packed contexts (``TextGenTask.pack_prompts`` / ``decode`` / ``texts``), cut at the first stop
  sequence and at ``max_gen_toks`` tokens.
* ``seed_spread``: the MC estimate of each request over several seeds and its standard error.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import jax
import numpy as np

from diffjax.errors import ConfigError
from diffjax.evaluation import likelihood as lik


def request_id(context: str, continuation: str) -> int:
    """A stable id of a (context, continuation) request (crc32 of both), seeding its MC draws."""
    return zlib.crc32(context.encode("utf-8") + b"\x00" + continuation.encode("utf-8"))


class RunServer:
    """See the module docstring. ``run``: an ``inference.Run`` of a ``TextGenTask``."""

    def __init__(self, run, *, mc_samples: int = 32, seed: int = 0, batch_size: int = 0):
        self.run, self.task = run, run.task
        self.kind = getattr(self.task, "likelihood_kind", "")
        if int(mc_samples) < 1:
            raise ConfigError(f"mc_samples={mc_samples} is invalid: expected an integer >= 1")
        self.mc_samples, self.seed = int(mc_samples), int(seed)
        self.batch_size = int(batch_size) or int(self.task.cfg.eval_batch_size)
        self.layout = self.task.likelihood_layout() if self.kind else None
        self.tok = self.task.tok
        self.params = run.params
        self.context = run.setup.context

    @classmethod
    def from_workdir(cls, workdir: str, *, mc_samples: int = 32, seed: int = 0, batch_size: int = 0, **overrides):
        """``inference.load_run(workdir, **{"task." + k: v})`` for each override (e.g. ``decoder="threshold"``)."""
        from diffjax.inference import load_run

        run = load_run(workdir, **{(k if "." in k else f"task.{k}"): v for k, v in overrides.items()})
        return cls(run, mc_samples=mc_samples, seed=seed, batch_size=batch_size)

    # ------------------------------------------------------------------ log-likelihoods
    def _require_likelihood(self) -> None:
        if not self.kind:
            raise ConfigError(f"this {self.task.name} run serves no log-likelihood: masked diffusion runs give the "
                              f"MC ELBO, AR runs the exact one (ar2diff: stage 1 or objective='masked', decoder arch)")

    def score_ids(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], ids: Sequence[int],
                  seed: int | None = None) -> list[tuple[float, bool]]:
        """(context ids, continuation ids) pairs and their request ids -> (log-likelihood, is_greedy) each."""
        self._require_likelihood()
        seed = self.seed if seed is None else int(seed)
        rows = lik.stack_rows([lik.pack_pair(c, r, self.layout) for c, r in pairs])
        n, L = rows["tokens"].shape
        if self.kind == "exact":
            program = self.task.log_prob_program()
            inputs = {k: rows[k] for k in ("tokens", "valid", "prompt_length")}
            inputs["masked"] = np.zeros((n, L), bool)
            out = self._map(program, inputs)
            return [(lik.ar_log_likelihood(out["log_probs"][i], rows["target"][i]),
                     lik.is_greedy(out["argmax"][i], rows["tokens"][i], rows["target"][i])) for i in range(n)]
        S = self.mc_samples
        draws = [lik.elbo_masks(rows["target"][i], S, seed, ids[i]) for i in range(n)]
        masked = np.concatenate([np.concatenate([m, rows["target"][i][None]]) for i, (m, _) in enumerate(draws)])
        inputs = {k: np.repeat(rows[k], S + 1, axis=0) for k in ("tokens", "valid", "prompt_length")}
        inputs["masked"] = masked
        out = self._map(self.task.log_prob_program(), inputs)
        res = []
        for i, (m, w) in enumerate(draws):
            a = i * (S + 1)
            res.append((lik.elbo_estimate(out["log_probs"][a:a + S], m, w),
                        lik.is_greedy(out["argmax"][a + S], rows["tokens"][i], rows["target"][i])))
        return res

    def _map(self, program, inputs: dict) -> dict:
        return self.context.map_batches(lambda b, i: program(self.params, b, i), inputs, batch_size=self.batch_size,
                                        progress="loglikelihood", unit="rows")

    def _encode(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tok.encode(list(texts)) if texts else []

    def loglikelihood(self, requests: Sequence[tuple[str, str]], seed: int | None = None) -> list[tuple[float, bool]]:
        """(context, continuation) strings -> (log-likelihood of the continuation, is_greedy) each."""
        contexts, conts = [c for c, _ in requests], [r for _, r in requests]
        pairs = list(zip(self._encode(contexts), self._encode(conts)))
        return self.score_ids(pairs, [request_id(c, r) for c, r in requests], seed)

    def content_slots(self) -> int:
        """Token slots of a row left for context + continuation (the row minus its special tokens)."""
        lay = self.layout
        return lay.length - sum(i is not None for i in (lay.start_id, lay.sep_id, lay.end_id))

    def loglikelihood_rolling(self, texts: Sequence[str], seed: int | None = None) -> list[float]:
        """Texts -> the log-likelihood of each (the sum over its ``rolling_windows``)."""
        self._require_likelihood()
        window = max(1, self.content_slots() // 2)
        pairs, ids, owner = [], [], []
        for t, (text, text_ids) in enumerate(zip(texts, self._encode(texts))):
            for j, pair in enumerate(lik.rolling_windows(text_ids, window, self.content_slots() - window)):
                pairs.append(pair)
                ids.append(request_id(text, str(j)))
                owner.append(t)
        scores = self.score_ids(pairs, ids, seed) if pairs else []
        total = np.zeros(len(texts))
        for t, (ll, _) in zip(owner, scores):
            total[t] += ll
        return total.tolist()

    def seed_spread(self, requests: Sequence[tuple[str, str]], seeds: Sequence[int]) -> dict:
        """The MC log-likelihood of each request under each of ``seeds`` -> ``{"per_request": [mc_standard_error
        dicts], "mean_stderr": the mean of their standard errors, "seeds": [...]}``."""
        per_seed = np.asarray([[ll for ll, _ in self.loglikelihood(requests, seed=s)] for s in seeds])  # [K, N]
        per = [lik.mc_standard_error(per_seed[:, i]) for i in range(per_seed.shape[1])]
        return {"per_request": per, "mean_stderr": float(np.mean([p["stderr"] for p in per])), "seeds": list(seeds),
                "mc_samples": self.mc_samples}

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: Sequence[tuple[str, Sequence[str], int]]) -> list[str]:
        """(context, stop sequences, max_gen_toks) -> the decoded continuation of each, cut at the first stop
        sequence, then at ``max_gen_toks`` tokens."""
        if not requests:
            return []
        inputs, _ = self.task.pack_prompts([c for c, _, _ in requests])
        out = self.task.decode(self.params, jax.random.PRNGKey(self.seed), inputs, self.context)
        texts = self.task.texts(inputs, out["tokens"])
        res = []
        for text, (_, until, max_toks) in zip(texts, requests):
            text = lik.truncate_at_stops(text, until)
            ids = self.tok.encode([text])[0]
            if max_toks and len(ids) > int(max_toks):
                text = self.tok.decode(ids[:int(max_toks)], skip_special_tokens=True)
            res.append(text)
        return res
