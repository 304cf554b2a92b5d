"""One route for pretrained weights (issue 25 part 4): ``config.init_from`` gives the architecture as well
as the weights. ``checkpoints.pretrained.architecture_source`` follows WORKDIR chains to the model at
their root; ``build_task(..., init_from=)`` hands it to factories that take ``arch_source``; a typed
config refuses a removed field naming the new one."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest

from diffjax.checkpoints.pretrained import architecture_source, resolve_model_path, split_step
from diffjax.errors import ConfigError
from diffjax.tasks import base
from diffjax.tasks import fields as F


def _run(tmp_path, name, init_from):
    d = tmp_path / name
    (d / "checkpoints").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"init_from": init_from}))
    return str(d)


def test_architecture_source_follows_workdir_chains(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    s1 = _run(tmp_path, "s1", str(hf))
    s2 = _run(tmp_path, "s2", s1 + ":4")
    assert architecture_source("") is None
    assert architecture_source(str(hf)) == str(hf)
    assert architecture_source(s2) == str(hf) and architecture_source(s2 + ":7") == str(hf)
    assert architecture_source(_run(tmp_path, "scratch", "")) is None  # a fresh-init run at the root
    assert split_step("/a/b:12") == ("/a/b", 12) and split_step("/a/b") == ("/a/b", None)
    loop = _run(tmp_path, "loop", "")
    (tmp_path / "loop" / "config.json").write_text(json.dumps({"init_from": loop}))
    with pytest.raises(ValueError, match="loops"):
        architecture_source(loop)


def test_embedded_model_resolves_to_its_package_dir():
    path = resolve_model_path("embedded:minilm")
    assert os.path.isfile(os.path.join(path, "config.json"))
    with pytest.raises(FileNotFoundError, match="unknown embedded model; known: embedded:minilm"):
        resolve_model_path("embedded:nope")


@dataclasses.dataclass(frozen=True)
class _ToyConfig(F.TaskConfig):
    RENAMED = {"model_dir": "set config.init_from=DIR (it gives the architecture and the weights)"}
    name: str = F.field(F.choice("toy_route"), "toy_route")
    width: int = F.field(F.integer(1), 4)


@base.register_task("toy_route", config=_ToyConfig)
def _toy(cfg, arch_source=None):
    return ("built", cfg, arch_source)


def test_build_task_passes_arch_source_and_refuses_a_removed_field(tmp_path):
    import ml_collections

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    c = ml_collections.ConfigDict({"name": "toy_route", "width": 2})
    built = base.build_task(c, init_from=_run(tmp_path, "s1", str(hf)))
    assert built[1].width == 2 and built[2] == str(hf)
    assert base.build_task(c)[2] is None
    old = ml_collections.ConfigDict({"name": "toy_route", "model_dir": "/x"})
    with pytest.raises(ConfigError, match=r"^config.task.model_dir was removed: set config.init_from=DIR"):
        base.build_task(old)
