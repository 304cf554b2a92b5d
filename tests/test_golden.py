"""Golden values, nanodo-style: every task's tiny config trained through the real trainer, with its
first training step's loss and metrics and its end-of-run evaluation pinned to stored values
(``tests/golden/values.json``).

A refactor that drifts fails here. A deliberate change of behaviour updates the stored values in the
same commit, with the reason in the commit message::

    DIFFJAX_UPDATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden.py

Floats are compared at rtol 1e-5 (what survives another CPU's kernels; a changed key, order of
examples or formula moves them far more); strings, ints and keys exactly. Wall-clock fields are
dropped (``tests/golden/tiny_artifacts.TIMING``), and so are absolute paths of the run.
"""
from __future__ import annotations

import json
import math
import os

import pytest

from tests._config_util import REPO, set_fields
from tests.golden.tiny_artifacts import CACHE_FIELD, _normalise

GOLDEN = os.path.join(REPO, "tests", "golden", "values.json")
UPDATE = os.environ.get("DIFFJAX_UPDATE_GOLDEN") == "1"
RTOL = 1e-5

# task name -> (config, overrides). Each is the config's tiny variant as a user runs it, with every
# step logged (so step 1 is in metrics.jsonl) and caches inside the test's folder.
CASES = {
    "dlsr": ("dlsr_mnist_demo.py:tiny", {"train.log_every": 1}),
    "text_ood": ("text_ood_demo.py:tiny", {"train.log_every": 1}),
    "masked_lm": ("rdm_minilm_demo.py:tiny", {"train.log_every": 1}),
    "ar2diff": ("ar2diff_smollm2_demo.py:tiny", {"train.log_every": 1}),
    "ar2diff_masked": ("ar2diff_smollm2_demo.py:tiny,masked", {"train.log_every": 1}),
    "gaussian2d": ("gaussian2d.py:small", {"train.num_steps": 4, "train.log_every": 1, "train.checkpoint_every": 4}),
}


def _run(name: str, tmp_path, **extra) -> dict:
    from diffjax.cli import _load_config_file
    from diffjax.train import trainer
    from diffjax.train.metrics import read_metrics

    config_file, overrides = CASES[name]
    c = _load_config_file(f"{REPO}/configs/{config_file}")
    fields = dict(overrides, **extra)
    if name in CACHE_FIELD:
        fields[CACHE_FIELD[name]] = str(tmp_path / "cache")
    with c.unlocked():
        set_fields(c, fields)
    wd = str(tmp_path / "run")
    trainer.train(c, wd)
    rows = read_metrics(wd)
    first = next(r for r in rows if r["step"] == 1 and "loss" in r)
    with open(os.path.join(wd, "results.json")) as f:
        results = json.load(f)
    return _normalise({"first_step": first, "results": results}, str(tmp_path))


def _mismatches(want, got, where=""):
    if isinstance(want, dict) and isinstance(got, dict):
        out = [f"{where}/{k}: missing" for k in want if k not in got]
        out += [f"{where}/{k}: new key" for k in got if k not in want]
        for k in want:
            if k in got:
                out += _mismatches(want[k], got[k], f"{where}/{k}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [f"{where}: length {len(want)} -> {len(got)}"]
        return [m for i, (a, b) in enumerate(zip(want, got)) for m in _mismatches(a, b, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not isinstance(got, bool):
        same = (math.isnan(want) and math.isnan(got)) or math.isclose(want, got, rel_tol=RTOL, abs_tol=1e-7)
        return [] if same else [f"{where}: {want!r} -> {got!r}"]
    return [] if want == got else [f"{where}: {want!r} -> {got!r}"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_tiny_config_matches_golden_values(name, tmp_path):
    got = _run(name, tmp_path)
    stored = json.load(open(GOLDEN)) if os.path.exists(GOLDEN) else {}
    if UPDATE:
        stored[name] = got
        with open(GOLDEN, "w") as f:
            json.dump(stored, f, indent=1, sort_keys=True)
            f.write("\n")
        return
    assert name in stored, f"no golden values for {name!r}: run with DIFFJAX_UPDATE_GOLDEN=1 (see the docstring)"
    bad = _mismatches(stored[name], got)
    assert not bad, f"{name}: {len(bad)} value(s) moved from tests/golden/values.json:\n" + "\n".join(bad[:20])


def test_mismatch_finder_catches_drift():
    """The comparison itself can fail: a moved float, a renamed key, a changed string."""
    want = {"a": 1.0, "b": [1, "x"], "c": {"d": 0.5}}
    assert _mismatches(want, {"a": 1.0 + 1e-7, "b": [1, "x"], "c": {"d": 0.5}}) == []
    assert _mismatches(want, {"a": 1.001, "b": [1, "x"], "c": {"d": 0.5}}) == ["/a: 1.0 -> 1.001"]
    assert _mismatches(want, {"a": 1.0, "b": [1, "y"], "c": {"e": 0.5}}) == ["/b[1]: 'x' -> 'y'", "/c/d: missing",
                                                                             "/c/e: new key"]


def test_golden_values_catch_a_changed_seed(tmp_path):
    """The pinned values are sensitive: the same tiny run with another init / step seed moves them."""
    stored = json.load(open(GOLDEN))["gaussian2d"]
    assert _mismatches(stored, _run("gaussian2d", tmp_path, seed=1))
