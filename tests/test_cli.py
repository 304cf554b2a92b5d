"""The `python -m diffjax` CLI: flag parsing, typo'd overrides, and train -> eval -> generate end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from diffjax import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "gaussian2d.py")


def test_parse_overrides_and_types(tmp_path):
    command, config, workdir = cli.parse_args(
        ["diffjax", "train", "--config=configs/gaussian2d.py:small", f"--workdir={tmp_path}",
         "--config.train.num_steps=7", "--config.mesh_shape=(2,2)", "--config.optimizer.learning_rate=0.5",
         "--config.distributed.coordinator_address=localhost:1234"])
    assert command == "train" and workdir == str(tmp_path)
    assert config.train.num_steps == 7 and tuple(config.mesh_shape) == (2, 2)
    assert config.optimizer.learning_rate == 0.5 and config.distributed.coordinator_address == "localhost:1234"
    assert config.task.model.hidden == 32  # ":small" reached get_config
    with pytest.raises(AttributeError):  # locked: no new fields
        config.train.new_field = 1


@pytest.mark.parametrize("override, nearest, under", [
    ("--config.train.num_stpes=3", "--config.train.num_steps", "under train: accumulate_steps"),
    ("--config.task.model.hiden=3", "--config.task.model.hidden", "under task.model: depth, hidden"),
    ("--config.ema_decy=0.5", "--config.ema_decay", "at the top level"),
    ("--config.optimiser.learning_rate=1", "--config.optimizer.learning_rate", "at the top level"),
])
def test_config_typo_names_nearest_field(override, nearest, under, capsys):
    argv = ["diffjax", "train", f"--config={CONFIG}:small", "--workdir=/nonexistent/never", override]
    with pytest.raises(cli.UsageError) as e:
        cli.parse_args(argv)
    assert f"unknown config field {override.split('=')[0]}" in str(e.value)
    assert f"Did you mean {nearest}?" in str(e.value) and under in str(e.value)
    assert cli.main(argv) == 2
    assert "Did you mean" in capsys.readouterr().err
    assert not os.path.exists("/nonexistent/never")


def test_usage_errors():
    with pytest.raises(cli.UsageError, match="did you mean 'train'"):
        cli.parse_args(["diffjax", "trian", f"--config={CONFIG}", "--workdir=x"])
    with pytest.raises(cli.UsageError, match="--config is required"):
        cli.parse_args(["diffjax", "eval", "--workdir=x"])
    with pytest.raises(cli.UsageError, match="config file 'configs/nope.py' not found"):
        cli.parse_args(["diffjax", "train", "--config=configs/nope.py", "--workdir=x"])
    with pytest.raises(cli.UsageError, match="--workdir is required"):
        cli.parse_args(["diffjax", "train", f"--config={CONFIG}"])
    command, config, workdir = cli.parse_args(["diffjax", "demo"])  # defaults: configs/demo.py, workdirs/demo
    assert command == "demo" and workdir == "workdirs/demo" and config.task.name


def test_typo_in_subprocess_fails_fast():
    out = subprocess.run([sys.executable, "-m", "diffjax", "train", "--config=configs/gaussian2d.py",
                          "--workdir=/nonexistent/never", "--config.train.global_bach_size=8"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Did you mean --config.train.global_batch_size?" in out.stderr
    assert "Traceback" not in out.stderr


def test_train_eval_generate_end_to_end(tmp_path):
    base = [f"--config={CONFIG}:small", f"--workdir={tmp_path}", "--config.train.num_steps=20",
            "--config.task.eval_num_samples=128"]
    assert cli.main(["diffjax", "train", *base]) == 0
    results = json.load(open(tmp_path / "results.json"))
    assert {"mmd2", "mmd2_data_vs_data", "sample_mean", "sample_cov", "modes_hit"} <= set(results)
    os.remove(tmp_path / "results.json")
    assert cli.main(["diffjax", "eval", *base]) == 0
    again = json.load(open(tmp_path / "results.json"))
    assert again["mmd2"] == pytest.approx(results["mmd2"], rel=1e-6)  # same checkpoint, same eval rng
    assert os.path.exists(tmp_path / "samples.png")
    assert cli.main(["diffjax", "generate", *base]) == 0
    assert json.load(open(tmp_path / "generate.json"))["num_samples"] == 128
    assert cli.main(["diffjax", "sweep", *base]) == 2  # gaussian2d has no sweep: a clean error


def test_user_errors_are_one_line_messages(tmp_path, capsys):
    base = [f"--config={CONFIG}:small", f"--workdir={tmp_path}", "--config.train.num_steps=2"]
    assert cli.main(["diffjax", "train", *base]) == 0
    capsys.readouterr()
    # The same workdir with a different config: refused with the differing field, no traceback.
    assert cli.main(["diffjax", "train", *base, "--config.optimizer.learning_rate=0.5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: WorkdirConfigMismatch:") and "optimizer.learning_rate" in err
    assert "Traceback" not in err


def test_generate_and_score_options(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("first prompt\n\nsecond prompt\n")
    base = ["diffjax", "--config=configs/gaussian2d.py:small", f"--workdir={tmp_path}"]
    cmd, _, _, kw = cli.parse_command(base[:1] + ["generate"] + base[1:] + [
        "--prompt=hello there", f"--prompts_file={prompts}", "--show_steps"])
    assert cmd == "generate" and kw == {"prompts": ["hello there", "first prompt", "second prompt"], "show_steps": True}
    cmd, _, _, kw = cli.parse_command(base[:1] + ["score"] + base[1:] + ["--inputs=some/dir", "--output=x.csv"])
    assert cmd == "score" and kw == {"inputs": "some/dir", "output": "x.csv"}
    with pytest.raises(cli.UsageError, match="score needs --inputs"):
        cli.parse_command(base[:1] + ["score"] + base[1:])
    with pytest.raises(cli.UsageError, match="belong to 'generate'"):
        cli.parse_command(base[:1] + ["train"] + base[1:] + ["--prompt=x"])
    with pytest.raises(cli.UsageError, match="no such file"):
        cli.parse_command(base[:1] + ["generate"] + base[1:] + ["--prompts_file=/nonexistent/p.txt"])
    # gaussian2d has no score: one clear line, exit 2
    assert cli.main(base[:1] + ["score"] + base[1:] + ["--inputs=x"]) in (1, 2)


def test_python_api_matches_the_cli(tmp_path):
    """diffjax.inference.load_run: the notebook API gives what `generate` / `eval` write."""
    from diffjax import inference

    wd = tmp_path / "run"
    assert cli.main(["diffjax", "train", "--config=configs/gaussian2d.py:small", f"--workdir={wd}",
                     "--config.train.num_steps=4", "--config.train.eval_at_end=False",
                     "--config.task.eval_num_samples=16"]) == 0
    assert cli.main(["diffjax", "generate", "--config=configs/gaussian2d.py:small", f"--workdir={wd}",
                     "--config.train.num_steps=4", "--config.train.eval_at_end=False",
                     "--config.task.eval_num_samples=16"]) == 0
    cli_samples = np.load(wd / "samples.npy")
    run = inference.load_run(str(wd))
    assert run.config.train.num_steps == 4 and tuple(run.config.mesh_shape) == (-1, 1)
    run.generate()
    np.testing.assert_array_equal(np.load(wd / "samples.npy"), cli_samples)
    assert inference.load_run(str(wd), **{"task.eval_num_samples": 8}).generate()["num_samples"] == 8
    with pytest.raises(KeyError, match="unknown config field 'task.nope'"):
        inference.load_run(str(wd), **{"task.nope": 1})
    with pytest.raises(FileNotFoundError, match="not a diffjax run directory"):
        inference.load_run(str(tmp_path / "empty"))
