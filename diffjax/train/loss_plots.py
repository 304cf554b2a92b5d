"""Loss curves of several runs, e.g. the AR2Diff stages and comparison arms (``loss.png``, ``train/pipeline.py``) from their ``metrics.jsonl``: training loss per step
(left) and the held-out loss of in-training evaluations, ``eval/heldout_loss`` (right)."""

from __future__ import annotations

from diffjax.train.metrics import read_metrics


def curves(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` (the last row of a step wins, as on resume)."""
    pts = {int(r["step"]): float(r[key]) for r in rows if key in r}
    steps = sorted(pts)
    return steps, [pts[s] for s in steps]


def plot_runs(runs: dict[str, str], out_path: str) -> str:
    """``runs``: {label: workdir} -> ``out_path`` (PNG) with train loss and held-out loss vs step."""
    from diffjax.ood.report import figure

    fig, (a, b) = figure(1, 2, figsize=(11, 4))
    for label, wd in runs.items():
        rows = read_metrics(wd)
        s, v = curves(rows, "loss")
        if s:
            a.plot(s, v, label=label)
        s, v = curves(rows, "eval/heldout_loss")
        if s:
            b.plot(s, v, marker="o", label=label)
    a.set(title="training loss", xlabel="step", ylabel="loss")
    b.set(title="held-out loss (in-training evals)", xlabel="step", ylabel="loss")
    for ax in (a, b):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    return out_path
