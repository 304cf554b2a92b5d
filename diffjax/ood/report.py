"""OOD reporting shared by every OOD task (image: paper 003 DLSR; text: paper 000): the results
table, ``roc.png`` and the AUROC-vs-t ``sweep.png``.

Scores are "higher = more OOD" (``diffjax.ood.metrics``). A task hands in plain dicts of numpy
arrays, keyed by score name (its own scores and its baselines alike):

* ``id_scores``:  ``{score: [N_id]}`` (ID test), ``ood_scores``: ``{ood_set: {score: [N_ood]}}``;
* per-layer scores (optional): ``{score: [L, N]}``, reported as AUROC per layer;
* sweeps: ``{score: [n_t, n_s, N]}`` grids from ``diffjax.ood.sweep`` (seed axis averaged here).

``results_table`` / ``sweep_results`` return JSON-able dicts (the task's ``results.json`` /
``sweep.json`` entries); ``format_table`` is the readable stdout table, naming the FPR95
convention (threshold at 95% of ID accepted). matplotlib (Agg) is imported only by the plots.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from diffjax.ood import metrics

METRIC_NAMES = ("auroc", "fpr95", "aupr_in", "aupr_out")


# ----------------------------------------------------------------------------------------------
# The results table


def results_table(id_scores: Mapping[str, np.ndarray],
                  ood_scores: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """Per OOD set and score: ``metrics.ood_metrics(id, ood)``, plus the mean over OOD sets.

    Args:
      id_scores: ``{score: [N_id]}``; ood_scores: ``{ood_set: {score: [N_ood]}}`` (every score of
        ``id_scores`` must be present for every set; table order = ``id_scores`` order).
    Returns: ``{"metrics": {ood_set: {score: {auroc, fpr95, aupr_in, aupr_out}}},
      "average": {score: {metric: float mean over OOD sets}}}`` (JSON-able).
    """
    names = list(id_scores)
    table = {o: {n: metrics.ood_metrics(id_scores[n], per[n]) for n in names} for o, per in ood_scores.items()}
    average = {n: {m: float(np.mean([table[o][n][m] for o in table])) for m in METRIC_NAMES} for n in names}
    return {"metrics": table, "average": average}


def per_layer_auroc(id_scores: Mapping[str, np.ndarray],
                    ood_scores: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """``{score: [L, N_id]}``, ``{ood_set: {score: [L, N_ood]}}`` -> ``{ood_set: {score: [L AUROCs]}}``."""
    return {o: {n: [metrics.ood_metrics(v[l], per[n][l])["auroc"] for l in range(np.shape(v)[0])]
                for n, v in id_scores.items()} for o, per in ood_scores.items()}


def format_table(results: Mapping, header: str | Sequence[str] = (), *, baselines: Sequence[str] = (),
                 per_layer: Mapping | None = None, per_layer_title: str = "per-layer AUROC:") -> str:
    """The readable table: header line(s), the conventions, one row per (OOD set, score), then the
    averages over OOD sets, then (optional) one line of per-layer AUROCs per (OOD set, score).

    ``results``: a ``results_table`` dict; scores named in ``baselines`` are tagged "(baseline)".
    """
    head = [header] if isinstance(header, str) else list(header)
    lines = head + ["OOD = positive, higher score = more OOD.", metrics.FPR95_CONVENTION + ".",
                    f"{'OOD set':<18} {'score':<24} {'AUROC':>7} {'FPR95':>7} {'AUPR-In':>8} {'AUPR-Out':>9}"]
    names = list(results["average"])
    for o, per in list(results["metrics"].items()) + [("average", results["average"])]:
        lines.append("-" * 77)
        for n in names:
            m = per[n]
            tag = " (baseline)" if n in baselines else ""
            lines.append(f"{o:<18} {n + tag:<24} {m['auroc']:7.4f} {m['fpr95']:7.4f} {m['aupr_in']:8.4f} "
                         f"{m['aupr_out']:9.4f}")
    if per_layer:
        lines.append("-" * 77)
        lines.append(per_layer_title)
        for o, per in per_layer.items():
            for n, vals in per.items():
                lines.append(f"  {o:<16} {n:<24} " + " ".join(f"{v:.3f}" for v in vals))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The timestep sweep


def seed_mean(scores_grid: np.ndarray) -> np.ndarray:
    """Average over the seed axis: [n_t, n_s, ...] -> [n_t, ...] (float32, summed in seed order,
    so a task's table and its sweep average identically)."""
    x = np.asarray(scores_grid, np.float32)
    acc = x[:, 0].copy()
    for s in range(1, x.shape[1]):
        acc += x[:, s]
    return acc / np.float32(x.shape[1])


def sweep_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> np.ndarray:
    """[n_t, n_s, N_id], [n_t, n_s, N_ood] -> AUROC per t [n_t] of the seed-averaged scores.

    Each t goes through ``metrics.ood_metrics``, the function the results table uses (a vmapped
    AUROC reduces its float32 mean in another order: 1e-7 apart), so equal scores give equal AUROCs.
    """
    id_m, ood_m = seed_mean(id_scores), seed_mean(ood_scores)
    return np.array([metrics.ood_metrics(a, b)["auroc"] for a, b in zip(id_m, ood_m)], np.float64)


def sweep_results(ts: Sequence[int], id_grids: Mapping[str, np.ndarray],
                  ood_grids: Mapping[str, Mapping[str, np.ndarray]]) -> dict:
    """AUROC per t for every (OOD set, score) and the best t.

    Args:
      ts: the swept timesteps [n_t]; id_grids: ``{score: [n_t, n_s, N_id]}``;
      ood_grids: ``{ood_set: {score: [n_t, n_s, N_ood]}}``.
    Returns: ``{"ts": [n_t], "auroc": {ood_set: {score: [n_t floats]}},
      "best_t": {ood_set: {score: {"t", "auroc"}}}}`` (JSON-able; ``plot_sweep`` draws ``auroc``).
    """
    ts = [int(t) for t in ts]
    res = {"ts": ts, "auroc": {}, "best_t": {}}
    for o, per in ood_grids.items():
        res["auroc"][o], res["best_t"][o] = {}, {}
        for n, grid in id_grids.items():
            a = sweep_auroc(grid, per[n])
            res["auroc"][o][n] = [float(x) for x in a]
            res["best_t"][o][n] = {"t": ts[int(np.argmax(a))], "auroc": float(np.max(a))}
    return res


def at_t(sweep: Mapping, t: int) -> dict | None:
    """The sweep's AUROCs at one t: ``{"t", "auroc": {ood_set: {score: float}}}``; None if t was not swept."""
    if int(t) not in sweep["ts"]:
        return None
    i = list(sweep["ts"]).index(int(t))
    return {"t": int(t), "auroc": {o: {n: v[i] for n, v in d.items()} for o, d in sweep["auroc"].items()}}


def format_best_t(sweep: Mapping) -> str:
    """One line: the best t and its AUROC per OOD set and score."""
    return "sweep: best t per OOD set and score: " + "; ".join(
        f"{o}/{n}: t={v['t']} AUROC={v['auroc']:.4f}" for o, d in sweep["best_t"].items() for n, v in d.items())


# ----------------------------------------------------------------------------------------------
# Plots (matplotlib, imported lazily)


def figure(nrows: int = 1, ncols: int = 1, *, figsize, **subplots_kw):
    """``(matplotlib Figure, axes)`` made without pyplot: no global backend switch and no figure registry, so
    writing a PNG leaves a notebook's inline plots alone; ``fig.savefig(path)`` renders it (nothing to close)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **subplots_kw)


def plot_rocs(id_scores: Mapping[str, np.ndarray], ood_scores: Mapping[str, Mapping[str, np.ndarray]],
              path: str, *, baselines: Sequence[str] = (), id_label: str = "ID test") -> None:
    """ROC curves (fraction of ID flagged vs fraction of OOD flagged) -> PNG at ``path``: one panel
    per OOD set, one curve per score of ``id_scores`` (dashed for ``baselines``), AUROC in the legend."""
    fig, axes = figure(1, len(ood_scores), figsize=(4.2 * len(ood_scores), 4), squeeze=False)
    for ax, (o, per) in zip(axes[0], ood_scores.items()):
        for n, s_id in id_scores.items():
            fpr, tpr = metrics.roc_curve(s_id, per[n])
            auc = metrics.ood_metrics(s_id, per[n])["auroc"]
            ax.plot(fpr, tpr, lw=1.2, ls="--" if n in baselines else "-", label=f"{n} ({auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", lw=0.6)
        ax.set_title(f"{id_label} vs {o}", fontsize=9)
        ax.set_xlabel("ID flagged (FPR)")
        ax.set_ylabel("OOD flagged (TPR)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def sweep_curves(sweep: Mapping, id_label: str = "ID test") -> dict:
    """``sweep_results`` dict -> ``{f"{id_label} vs {ood_set}": {score: [n_t]}}`` (one panel per OOD set)."""
    return {f"{id_label} vs {o}": dict(d) for o, d in sweep["auroc"].items()}


def plot_sweep(ts: Sequence[int], curves: Mapping, path: str, title: str = "", log_t: bool = False) -> None:
    """AUROC vs t -> PNG at ``path``. ``curves``: {label: [n_t]} (one panel) or
    {panel: {label: [n_t]}} (one panel each, e.g. one per OOD set: ``sweep_curves``). ``log_t``: a log
    t axis (for grids spaced in log SNR, t >= 1)."""
    panels = curves if all(isinstance(v, Mapping) for v in curves.values()) else {"": curves}
    fig, axes = figure(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 4.2), squeeze=False)
    for ax, (name, panel) in zip(axes[0], panels.items()):
        for label, y in panel.items():
            ax.plot(list(ts), np.asarray(y), marker="o", ms=2.5, lw=1.2, label=label)
        if log_t:
            ax.set_xscale("log")
        ax.set_xlabel("timestep t" + (" (log scale)" if log_t else ""))
        ax.set_ylabel("AUROC (OOD positive)")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "OOD score AUROC vs noise timestep", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
