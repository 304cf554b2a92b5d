"""The Python API for a trained run, for notebooks: what ``python -m diffjax generate|score|eval`` do.

    run = diffjax.inference.load_run("workdirs/rdm_demo")      # config.json + latest checkpoint
    out = run.generate(prompts=["a shuffled headline"], show_steps=True)
    rows = run.score(inputs="my_texts.txt")
    res = run.evaluate()

``load_run(workdir, config=None, **overrides)`` reads the run's ``config.json`` (or takes a
ConfigDict), applies dotted ``overrides`` (``{"task.decoder": "threshold"}``, the same fields the
command line overrides), builds the task and the mesh and restores the latest checkpoint's (EMA)
params. Every call gets the run's ``RuntimeContext``, so it runs sharded as the CLI does, and
returns the same dict the CLI writes (nothing is written unless the task writes files into the
workdir, as the CLI does).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from diffjax.train import trainer
from diffjax.train.workdir import CONFIG_FILE


def _lists_to_tuples(x):
    if isinstance(x, dict):
        return {k: _lists_to_tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_lists_to_tuples(v) for v in x)
    return x


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The ``config.json`` of a run as a locked ConfigDict (JSON lists back to tuples)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir} is not a diffjax run directory (train it first).")
    with open(path) as f:
        config = ml_collections.ConfigDict(_lists_to_tuples(json.load(f)))
    config.lock()
    return config


def apply_overrides(config, overrides: dict) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted ``overrides`` set (an unknown field raises, naming it)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node:
                raise KeyError(f"unknown config field {key!r} (no {p!r})")
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config field {key!r}")
        node[leaf] = value
    config.lock()
    return config


@dataclasses.dataclass
class Run:
    """A trained run: its config, task, setup (mesh, context) and restored state."""

    workdir: str
    config: Any
    setup: trainer.Setup
    state: Any

    @property
    def task(self):
        return self.setup.task

    @property
    def params(self):
        return self.state.eval_params()

    def _call(self, method: str, **kwargs) -> dict:
        return trainer.call_task_method(self.setup, method, self.state, self.workdir, **kwargs)

    def evaluate(self) -> dict:
        return self._call("evaluate")

    def sweep(self) -> dict:
        return self._call("sweep")

    def generate(self, prompts: list[str] | None = None, *, show_steps: bool = False) -> dict:
        kwargs = {"show_steps": True} if show_steps else {}
        if prompts is not None:
            kwargs["prompts"] = list(prompts)
        return self._call("generate", **kwargs)

    def score(self, inputs: str, output: str | None = None) -> dict:
        return self._call("score", inputs=inputs, **({"output": output} if output else {}))


def load_run(workdir: str, config=None, **overrides) -> Run:
    """Loads a trained run (see the module docstring); ``overrides``: dotted field -> value."""
    workdir = os.path.abspath(workdir)
    config = read_run_config(workdir) if config is None else config
    if overrides:
        config = apply_overrides(config, overrides)
    setup, state = trainer.restore_latest(config, workdir)
    return Run(workdir=workdir, config=config, setup=setup, state=state)
