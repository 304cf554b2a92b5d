"""``OODTask``: the evaluate -> threshold -> report, sweep and score sequence every OOD paper shares.

A paper's OOD task (a *binder*: ``tasks/dlsr.py`` for paper 003, ``tasks/text_ood.py`` for paper 000)
subclasses ``OODTask`` and supplies its sets and one scoring hook; this class turns them into the
artefacts, the same for every method:

* ``evaluate`` -> results.json (per OOD set AUROC / FPR95 / AUPR of every score, baseline and
  control), results_table.txt (also on stdout), roc.png, and threshold.json: the threshold of
  ``deploy_score`` accepting 95% of held-out ID (the set ``threshold_set``) at the table's t;
* ``sweep`` -> sweep.json / sweep.png: AUROC per t of a timestep grid, the best t, and the AUROCs at
  the deploy t (``at_score_t``; equal to the table's when the sweep scores the same examples and seeds);
* ``score`` -> one row per user input (id, score, OOD = score > threshold) and score.json.

A new OOD method is a binder that implements, besides the training trio of ``Task``
(``init_params``, ``loss_fn``, ``train_batches``) and ``@register_task`` /
``register_prepare_call(name)(ood_prepare_call(read_user_inputs))``:

1. ``build_sets() -> {key: set}``, read once (``sets()`` caches it): ``"train"`` (ID train: fits the
   model and the baselines, never scored), ``"test"`` (ID test: the table's ID side), ``"heldout"``
   when the threshold has its own held-out ID split (then ``threshold_set = "heldout"``), and
   ``"ood/<name>"`` per OOD set. A set is whatever ``score_set`` reads; ``len(set)`` = its examples.
2. ``score_set(params, key, s, ts, *, num_seeds, seed, stage, context, snapshots=None,
   max_examples=None, names=None) -> {score: [n_t, n_s, N]}``: the method's scores (higher = more
   OOD) of set ``s`` (named ``key``; ``"inputs"`` for the user's inputs) at the timesteps ``ts`` [n_t],
   with ``num_seeds`` fixed noise seeds ``fold_in(PRNGKey(seed), j)`` (``ood.sweep.seed_keys``), per
   example keys ``fold_in(seed key, example id)`` (``runtime.example_keys``), on ``context``'s mesh
   (``ood.sweep.sweep_chunked`` does all of this), for its first ``max_examples`` examples (None =
   all). ``stage``: ``"evaluate"``, ``"sweep"`` or ``"score"``; ``names``: the scores wanted (None =
   all); ``snapshots``: the trainer's ``{step: params}``. Entries named ``*_layers``
   (``[n_t, n_s, L, N]``) become per-layer AUROCs; entries outside ``score_names`` are not tabled.
3. ``read_user_inputs(task_config, inputs)`` (a staticmethod: ``prepare_call`` runs it before the
   model is built) and ``user_set(read, inputs) -> (row ids, set)``: the user's inputs for ``score``.
4. ``table_header(results) -> str | list[str]``: the table's first line(s).

The binder keeps its ``config.task`` as ``self.c``. Optional hooks (defaults in brackets):
``heldout_label()`` (threshold.json's ``heldout``; ["ID test (not trained on)"]),
``extra_scores(params, score_t, keys, context, snapshots) -> {set key: {name: [N]}}`` (baselines,
controls; names in ``baseline_names`` / ``control_names`` are tagged in the table; [none]),
``result_entries(params, point, table, snapshots)`` (extra results.json keys; [none]),
``operating_point(params, context, snapshots) -> {"score_t", ...}`` (the table's t and how it was
chosen; [``config.task.score_t``]), ``sweep_timesteps()`` [``config.task.sweep_ts``],
``sweep_entries(ts, grids)`` (extra sweep.json keys; [none]), ``sweep_score_t(ts, res)`` (the t of
``at_score_t``; [``config.task.score_t``]), ``at_score_t_notes``, ``per_layer_title`` and
``sweep_figure(ts, res, num_seeds) -> (curves, title, log_t)`` (sweep.png). ``score`` scores with
the t, seeds and score of threshold.json. tests/test_ood_task.py is a complete binder in ~40 lines.

``config.task`` fields read here: ``score_t``, ``sweep_ts``, ``num_seeds``, ``score_seed``,
``deploy_score``, ``sweep_num_seeds`` (0 = num_seeds), ``sweep_max_examples`` (0 = all).
"""

from __future__ import annotations

import os
import time

import jax

from diffjax.ood import deploy, metrics, report
from diffjax.tasks.base import Task


def _tabled(grid: dict, names) -> list[str]:
    """The names of ``grid`` the table and the sweep report: ``names``, or every entry but ``*_layers``."""
    return list(names) if names is not None else [n for n in grid if not n.endswith("_layers")]


class OODTask(Task):
    """Base of the OOD tasks: owns evaluate / sweep / threshold / score / report (module docstring)."""

    baseline_names: tuple[str, ...] = ()  # tagged "(baseline)" in the table, dashed in roc.png
    control_names: tuple[str, ...] = ()  # tagged "(baseline)" in the table
    score_names: tuple[str, ...] | None = None  # the tabled scores of a grid, in order; None = all but *_layers
    threshold_set = "test"  # the held-out ID set the threshold accepts 95% of
    threshold_in_results = False  # results.json also holds threshold.json's content
    _sets = None

    # -- the hooks a binder implements (module docstring) ---------------------------------------
    def build_sets(self) -> dict:
        raise NotImplementedError

    def score_set(self, params, key: str, s, ts, *, num_seeds: int, seed: int, stage: str, context,
                  snapshots=None, max_examples: int | None = None, names=None) -> dict:
        raise NotImplementedError

    def user_set(self, read, inputs: str) -> tuple:
        raise NotImplementedError

    def table_header(self, results: dict):
        raise NotImplementedError

    def heldout_label(self) -> str:
        return "ID test (not trained on)"

    def sweep_figure(self, ts, res: dict, num_seeds: int) -> tuple[dict, str, bool]:
        return report.sweep_curves(res), f"{self.name} AUROC vs t (mean of {num_seeds} noise seed(s))", False

    def extra_scores(self, params, score_t: int, keys, context, snapshots) -> dict:
        return {}

    def result_entries(self, params, point: dict, table: dict, snapshots) -> dict:
        return {}

    def operating_point(self, params, context, snapshots) -> dict:
        """``{"score_t": int, ...}``: the table's t (and whatever else results.json should say of it)."""
        return {"score_t": int(self.c.score_t)}

    def sweep_timesteps(self) -> list[int]:
        return [int(t) for t in self.c.sweep_ts]

    def sweep_entries(self, ts, grids: dict) -> dict:
        return {}

    def sweep_score_t(self, ts, res: dict) -> int:
        """The deploy t the sweep reports ``at_score_t`` for (default ``config.task.score_t``)."""
        return int(self.c.score_t)

    def at_score_t_notes(self, num_seeds: int, max_examples: int | None) -> dict:
        return {}

    def per_layer_title(self) -> str:
        return "per-layer AUROC:"

    # -- sets --------------------------------------------------------------------------------
    def sets(self) -> dict:
        """``{"train", "test", ("heldout"), "ood/<name>": set}``, built once (``build_sets``)."""
        if self._sets is None:
            self._sets = self.build_sets()
        return self._sets

    @property
    def ood_names(self) -> list[str]:
        return [k[4:] for k in self.sets() if k.startswith("ood/")]

    def scored_keys(self) -> list[str]:
        """Every set but ID train, in ``sets()`` order (held-out ID, ID test, the OOD sets)."""
        return [k for k in self.sets() if k != "train"]

    # -- evaluate ------------------------------------------------------------------------------
    def evaluate(self, params, rng, workdir, *, context, snapshots=None, step=None, **kwargs):
        """Scores every set at the operating point's t -> results.json (returned), results_table.txt,
        roc.png and threshold.json (module docstring)."""
        del rng, kwargs
        t0, c, sets = time.time(), self.c, self.sets()
        point = self.operating_point(params, context, snapshots)
        score_t = int(point["score_t"])
        score, layers = {}, {}
        for k in self.scored_keys():
            g = self.score_set(params, k, sets[k], [score_t], num_seeds=int(c.num_seeds), seed=int(c.score_seed),
                               stage="evaluate", context=context, snapshots=snapshots)
            score[k] = {n: report.seed_mean(g[n])[0] for n in _tabled(g, self.score_names)}  # [N]
            layers[k] = {n: report.seed_mean(v)[0] for n, v in g.items() if n.endswith("_layers")}  # [L, N]
        table_keys = ["test"] + [f"ood/{o}" for o in self.ood_names]
        for k, v in self.extra_scores(params, score_t, table_keys, context, snapshots).items():
            score[k].update(v)
        id_s, ood_s = score["test"], {o: score[f"ood/{o}"] for o in self.ood_names}
        table = report.results_table(id_s, ood_s)
        results = {"fpr95_convention": metrics.FPR95_CONVENTION, "score_t": score_t, "num_seeds": int(c.num_seeds),
                   "score_seed": int(c.score_seed), "metrics": table["metrics"], "average": table["average"],
                   **self.result_entries(params, point, table, snapshots),
                   "num_examples": {k: int(len(v)) for k, v in sets.items()}}
        if layers["test"]:
            results["per_layer"] = report.per_layer_auroc(layers["test"],
                                                          {o: layers[f"ood/{o}"] for o in self.ood_names})
        fitted = deploy.fitted_on(params, step)  # on every process (params may span hosts)
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            thr = deploy.save_threshold(workdir, score=c.deploy_score,
                                        heldout_id_scores=score[self.threshold_set][c.deploy_score],
                                        heldout=self.heldout_label(), score_t=score_t, num_seeds=int(c.num_seeds),
                                        score_seed=int(c.score_seed), **fitted)
            if self.threshold_in_results:
                results["threshold"] = thr
        results["eval_seconds"] = time.time() - t0
        text = report.format_table(results, self.table_header(results),
                                   baselines=self.baseline_names + self.control_names,
                                   per_layer=results.get("per_layer"), per_layer_title=self.per_layer_title())
        if jax.process_index() == 0:
            print(text, flush=True)
            with open(os.path.join(workdir, "results_table.txt"), "w") as f:
                f.write(text + "\n")
            report.plot_rocs(id_s, ood_s, os.path.join(workdir, "roc.png"), baselines=self.baseline_names)
        return results

    # -- sweep -------------------------------------------------------------------------------
    def sweep(self, params, rng, workdir, *, context, snapshots=None, **kwargs):
        """AUROC per t over ``sweep_timesteps()`` for every scored set -> sweep.json (returned), sweep.png.

        The sweep scores the first ``sweep_max_examples`` (0 = all) examples of each set with
        ``sweep_num_seeds`` (0 = ``num_seeds``) seeds of ``score_seed`` and the params ``evaluate``
        gets, so with the defaults its value at the deploy t is the table's."""
        del rng, kwargs
        t0, c, sets = time.time(), self.c, self.sets()
        ts = self.sweep_timesteps()
        num_seeds = int(c.sweep_num_seeds) or int(c.num_seeds)
        n = int(c.sweep_max_examples) or None
        grids = {k: self.score_set(params, k, sets[k], ts, num_seeds=num_seeds, seed=int(c.score_seed), stage="sweep",
                                   context=context, snapshots=snapshots, max_examples=n)
                 for k in self.scored_keys()}
        tabled = {k: {name: g[name] for name in _tabled(g, self.score_names)} for k, g in grids.items()}
        res = report.sweep_results(ts, tabled["test"], {o: tabled[f"ood/{o}"] for o in self.ood_names})
        res.update({"num_seeds": num_seeds, **self.sweep_entries(ts, grids), "sweep_seconds": time.time() - t0,
                    "num_examples_per_set": {k: int(next(iter(g.values())).shape[-1]) for k, g in grids.items()}})
        at = report.at_t(res, self.sweep_score_t(ts, res))
        if at is not None:  # the table's operating point
            at.update(self.at_score_t_notes(num_seeds, n))
            res["at_score_t"] = at
        if jax.process_index() == 0:
            os.makedirs(workdir, exist_ok=True)
            curves, title, log_t = self.sweep_figure(ts, res, num_seeds)
            report.plot_sweep(ts, curves, os.path.join(workdir, "sweep.png"), title=title, log_t=log_t)
            print(report.format_best_t(res), flush=True)
        return res

    # -- score -------------------------------------------------------------------------------
    def score(self, params, rng, workdir, *, context, inputs, output=None, snapshots=None, step=None,
              read_inputs=None, **kwargs):
        """One row per user input of ``inputs`` -> ``output`` (default in ``workdir``) with the saved
        threshold; the output path and the threshold's params are checked first (``deploy``).
        ``read_inputs``: the inputs as ``prepare_call`` read them before the model was built."""
        del rng, kwargs
        out = deploy.check_output(output or deploy.default_output(workdir), inputs)
        thr = deploy.load_threshold(workdir)
        deploy.check_fitted_on(thr, workdir, params=params, step=step)
        read = read_inputs if read_inputs is not None else self.read_user_inputs(self.c, inputs)
        ids, s = self.user_set(read, inputs)
        name = thr["score"]
        g = self.score_set(params, "inputs", s, [int(thr["score_t"])], num_seeds=int(thr["num_seeds"]),
                           seed=int(thr["score_seed"]), stage="score", context=context, snapshots=snapshots,
                           names=(name,))
        scores = report.seed_mean(g[name])[0]
        summary = {**deploy.write_rows(out, ids, scores, thr["threshold"], inputs=inputs), "score": name,
                   "score_t": int(thr["score_t"]), "inputs": os.path.abspath(inputs)}
        if jax.process_index() == 0:
            print(f"scored {summary['num_inputs']} inputs from {inputs}: {summary['num_ood']} flagged OOD ({name} > "
                  f"{thr['threshold']:.6g}, the threshold accepting 95% of {thr.get('heldout', 'held-out ID')}); "
                  f"rows in {summary['output']}", flush=True)
        return summary

    @staticmethod
    def read_user_inputs(task_config, inputs: str):
        raise NotImplementedError


def ood_prepare_call(read_user_inputs):
    """``prepare_call`` of an OOD task (``register_prepare_call(name)(ood_prepare_call(read))``): for
    ``score``, before the model is built, the output path (``deploy.check_output``), the inputs (read by
    ``read_user_inputs(task_config, inputs)``, passed on as ``read_inputs``) and ``threshold.json``
    (readable, complete) are checked."""

    def prepare_call(task_config, workdir: str, method: str, kwargs: dict) -> dict:
        if method != "score":
            return kwargs
        inputs = kwargs["inputs"]
        deploy.check_output(kwargs.get("output") or deploy.default_output(workdir), inputs)
        read = read_user_inputs(task_config, inputs)
        deploy.load_threshold(workdir)
        return {**kwargs, "read_inputs": read}

    return prepare_call

