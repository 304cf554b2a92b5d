"""Issue 17 items 5-6: workdir lock, overwrite only after a successful restore, torn metrics lines,
a corrupt latest checkpoint (named, with the intact step to resume from), config values checked."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffjax import cli
from diffjax.checkpoints.orbax import CheckpointCorruptError, CheckpointMismatchError
from diffjax.train import trainer
from diffjax.train.metrics import read_metrics
from diffjax.train.validate import ConfigError
from diffjax.train.workdir import WorkdirLocked
from tests._config_util import REPO, small_config


def cfg(**kw):
    base = {"train.num_steps": 4, "train.checkpoint_every": 2, "train.keep": 5, "train.eval_at_end": False,
            "train.log_every": 2}
    return small_config(**{**base, **kw})


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_second_trainer_on_a_workdir_is_refused_naming_the_holder(tmp_path):
    wd = tmp_path / "wd"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from diffjax.train.workdir import WorkdirLock\n"
         f"with WorkdirLock({str(wd)!r}):\n    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLocked, match=f"in use by another trainer \\(pid {holder.pid} on "):
            trainer.train(cfg(), str(wd))
        assert not (wd / "config.json").exists()  # refused before anything was written
    finally:
        holder.kill()
        holder.wait()
    trainer.train(cfg(**{"train.num_steps": 2}), str(wd))  # the OS released the killed holder's lock


def test_failed_overwrite_leaves_config_json_byte_identical(tmp_path):
    wd = str(tmp_path)
    trainer.train(cfg(), wd)
    before = open(os.path.join(wd, "config.json"), "rb").read()
    with pytest.raises(CheckpointMismatchError, match="params/hidden_0/kernel"):
        trainer.train(cfg(**{"task.model.hidden": 16, "overwrite": True}), wd)
    assert open(os.path.join(wd, "config.json"), "rb").read() == before
    trainer.train(cfg(**{"optimizer.learning_rate": 1e-4, "overwrite": True, "train.num_steps": 6}), wd)
    assert json.load(open(os.path.join(wd, "config.json")))["optimizer"]["learning_rate"] == 1e-4


def test_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path, capsys):
    wd = str(tmp_path)
    trainer.train(cfg(), wd)
    with open(os.path.join(wd, "metrics.jsonl"), "a") as f:
        f.write('{"step": 5, "loss": 0.')  # a crash mid-write
    assert [r["step"] for r in read_metrics(wd)] == [2, 4]
    assert "dropped a torn last line" in capsys.readouterr().err
    trainer.train(cfg(**{"train.num_steps": 6}), wd)  # resume rewrites the file cleanly
    assert [r["step"] for r in read_metrics(wd)] == [2, 4, 6]


def test_corrupt_latest_checkpoint_names_step_and_resume_flag(tmp_path):
    wd = str(tmp_path / "wd")
    trainer.train(cfg(), wd)  # checkpoints 2 and 4
    for root, _, files in os.walk(os.path.join(wd, "checkpoints", "4")):
        for name in files:
            if name != "commit_success.txt":
                with open(os.path.join(root, name), "wb") as f:
                    f.write(b"\x00garbage")
    with pytest.raises(CheckpointCorruptError) as e:
        trainer.train(cfg(**{"train.num_steps": 6}), wd)
    msg = str(e.value)
    assert f"checkpoint step 4 ({wd}/checkpoints/4) is corrupt" in msg
    assert "--config.train.resume_step=2" in msg
    state = trainer.train(cfg(**{"train.num_steps": 6, "train.resume_step": 2}), wd)
    aside = os.listdir(os.path.join(wd, "checkpoints_set_aside"))
    assert len(aside) == 1 and aside[0].startswith("4-")  # moved, not deleted
    straight = trainer.train(cfg(**{"train.num_steps": 6}), str(tmp_path / "straight"))
    for a, b in zip(leaves(state), leaves(straight)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint 3 .*checkpoints on disk: \\[2, 4, 6\\]"):
        trainer.train(cfg(**{"train.num_steps": 6, "train.resume_step": 3}), wd)


@pytest.mark.parametrize("field, value, expected", [
    ("train.num_steps", 0, "an integer >= 1"),
    ("train.global_batch_size", 0, "an integer >= 1"),
    ("train.accumulate_steps", 3, "a divisor of train.global_batch_size=32"),
    ("train.checkpoint_every", -5, "an integer >= 0"),
    ("optimizer.learning_rate", 0.0, "a finite number in (0.0, inf)"),
    ("optimizer.learning_rate", float("nan"), "a finite number"),
    ("ema_decay", 1.0, "[0.0, 1.0)"),
    ("mesh_shape", (0, 1), "two integers (data, model)"),
])
def test_config_values_are_checked_before_anything_runs(tmp_path, field, value, expected):
    with pytest.raises(ConfigError) as e:
        trainer.train(cfg(**{field: value}), str(tmp_path))
    assert f"config.{field}=" in str(e.value) and expected in str(e.value)
    assert not os.listdir(tmp_path)  # nothing written


def test_cli_reports_config_and_lock_errors_in_one_line(tmp_path, capsys):
    code = cli.main(["diffjax", "train", "--config=configs/gaussian2d.py:small", f"--workdir={tmp_path}",
                     "--config.train.num_steps=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: ConfigError: config.train.num_steps=0")
