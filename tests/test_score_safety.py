"""Issue 24 items 1, 2, 9, 10, 11: `score` never overwrites a user's file, refuses a threshold fitted on
other params, checks its paths before the model is built; unreadable prompts files and threshold.json
give one `error:` line naming the file; long loops print progress with an ETA (one helper)."""
import csv
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from diffjax import cli, runtime
from diffjax.ood import deploy
from diffjax.errors import InputError
from diffjax.ood.deploy import ThresholdError
from diffjax.train import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLSR = os.path.join(ROOT, "configs", "dlsr_mnist_demo.py")
TEXT = os.path.join(ROOT, "configs", "text_ood_demo.py")
GAUSS = os.path.join(ROOT, "configs", "gaussian2d.py")


def _config(path, arg, **overrides):
    spec = importlib.util.spec_from_file_location(f"cfg_{os.path.basename(path)}_{arg}", path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    c = m.get_config(arg)
    with c.unlocked():
        for k, v in overrides.items():
            node = c
            *parents, leaf = k.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = v
    return c


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _rows_file(path, n=3):
    return deploy.write_rows(str(path), list(range(n)), np.arange(n, dtype=np.float64), 1.0)


# ----------------------------------------------------------------------------------------------
# Item 1: the output is never a user's file

def test_output_that_is_the_input_or_a_user_file_is_refused_and_left_byte_identical(tmp_path):
    texts = tmp_path / "x.jsonl"
    texts.write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "dir.csv").mkdir()
    os.symlink(texts, tmp_path / "link.jsonl")
    os.link(texts, tmp_path / "hard.jsonl")
    user_csv = tmp_path / "mine.csv"
    user_csv.write_text("id,label\n1,cat\n")
    near = tmp_path / "near.csv"  # the right header, but not score rows
    near.write_text("id,score,ood\n1,high,yes\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    before = {p: p.read_bytes() for p in (texts, user_csv, near, empty)}
    for out, inp, why in (
            (texts, texts, "is the input"),
            (str(texts).replace(str(tmp_path), str(tmp_path / "sub" / "..")), texts, "is the input"),
            (tmp_path / "link.jsonl", texts, "is the input"),
            (tmp_path / "hard.jsonl", texts, "is the input"),
            (user_csv, texts, "not a previous score output"),
            (near, texts, "not a previous score output"),
            (empty, texts, "not a previous score output"),
            (tmp_path / "sub", texts, "a file name ending in"),
            (tmp_path / "dir.csv", texts, "is a folder"),
            (tmp_path / "s.txt", texts, "a file name ending in .csv or .jsonl"),
            (user_csv / "s.csv", texts, "is a file, not a folder")):
        with pytest.raises(InputError, match=why) as e:
            deploy.check_output(str(out), str(inp))
        assert str(out) in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(InputError, match=why):  # and at write time, nothing is written
            deploy.write_rows(str(out), [0], np.zeros(1), 1.0, inputs=str(inp))
    assert {p: p.read_bytes() for p in before} == before


def test_previous_score_output_is_replaced_atomically(tmp_path):
    for ext in (".csv", ".jsonl"):
        out = tmp_path / f"rows{ext}"
        _rows_file(out, 3)
        assert deploy.is_score_output(str(out))
        stray = tmp_path / f"rows{ext}.tmp"  # a user's file where the old code wrote its temporary
        stray.write_text("keep me")
        summary = deploy.write_rows(str(out), ["a", "b"], np.array([0.5, 2.0]), 1.0, inputs=str(tmp_path / "in.txt"))
        assert summary["num_inputs"] == 2 and summary["num_ood"] == 1
        assert stray.read_text() == "keep me"
        assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no temporaries left
    assert list(csv.reader(open(tmp_path / "rows.csv"))) == [["id", "score", "ood"], ["a", "0.5", "0"], ["b", "2.0", "1"]]
    assert [json.loads(line)["ood"] for line in open(tmp_path / "rows.jsonl")] == [False, True]


# ----------------------------------------------------------------------------------------------
# Items 9, 10 and 2 (old files) through the CLI: refused before anything is built or restored

@pytest.fixture
def no_build(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was built / restored before the paths were checked")

    monkeypatch.setattr(trainer, "restore_latest", refuse)
    monkeypatch.setattr(trainer, "build", refuse)


def _threshold(wd, **fields):
    os.makedirs(wd, exist_ok=True)
    rec = {"score": "mse", "threshold": 1.0, "score_t": 1, "num_seeds": 1, "score_seed": 0,
           "params_step": 4, "params_fingerprint": "0" * 32, **fields}
    with open(os.path.join(wd, "threshold.json"), "w") as f:
        json.dump({k: v for k, v in rec.items() if v is not None}, f)


def test_score_paths_and_formats_are_checked_before_the_model_is_built(tmp_path, capsys, no_build):
    wd = str(tmp_path / "run")
    _threshold(wd)
    dlsr = ["diffjax", "score", f"--config={DLSR}:tiny", f"--workdir={wd}"]
    text = ["diffjax", "score", f"--config={TEXT}:tiny", f"--workdir={wd}"]
    np.save(tmp_path / "imgs.npy", np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "notes.md").write_text("hello\n")
    texts = tmp_path / "x.jsonl"
    texts.write_text('{"text": "a"}\n')
    mine = tmp_path / "mine.csv"
    mine.write_text("id,label\n1,cat\n")
    cases = [
        (dlsr + [f"--inputs={tmp_path / 'missing'}"], "missing", "does not exist"),
        (dlsr + [f"--inputs={tmp_path / 'notes.md'}"], "notes.md", "neither a folder"),
        (dlsr + [f"--inputs={tmp_path / 'imgs.npy'}", f"--output={tmp_path / 's.txt'}"], "s.txt", ".csv or .jsonl"),
        (dlsr + [f"--inputs={tmp_path / 'imgs.npy'}", f"--output={mine}"], "mine.csv", "not a previous score output"),
        (dlsr + [f"--inputs={tmp_path}", f"--output={tmp_path}"], str(tmp_path), ".csv or .jsonl"),
        (text + [f"--inputs={tmp_path / 'missing.txt'}"], "missing.txt", "does not exist"),
        (text + [f"--inputs={tmp_path / 'notes.md'}"], "notes.md", ".txt or .jsonl"),
        (text + [f"--inputs={texts}", f"--output={texts}"], "x.jsonl", "is the input"),
    ]
    for args, named, why in cases:
        assert cli.main(args) == 1, args
        line = _one_error_line(capsys)
        assert named in line and why in line, line
    assert texts.read_text() == '{"text": "a"}\n' and mine.read_text() == "id,label\n1,cat\n"


def test_bad_threshold_json_and_jsonl_lines_are_one_error_line(tmp_path, capsys, no_build):
    wd = str(tmp_path / "run")
    os.makedirs(wd)
    texts = tmp_path / "x.txt"
    texts.write_text("one\ntwo\n")
    args = ["diffjax", "score", f"--config={TEXT}:tiny", f"--workdir={wd}", f"--inputs={texts}"]
    path = os.path.join(wd, "threshold.json")
    for content, why in (('{"score": "ld_lc", "thresh', "not valid JSON"), ("[1, 2]", "expected an object"),
                         ("\xff\xfe".encode("latin-1"), "not valid JSON"),
                         ('{"score": "ld_lc", "threshold": null, "score_t": 1, "num_seeds": 1, "score_seed": 0}',
                          "field 'threshold'")):
        with open(path, "wb") as f:
            f.write(content if isinstance(content, bytes) else content.encode())
        assert cli.main(args) == 1
        line = _one_error_line(capsys)
        assert "ThresholdError" in line and path in line and why in line and "python -m diffjax eval" in line, line
    # written before threshold.json recorded its params: rerun eval
    _threshold(wd, params_step=None, params_fingerprint=None)
    assert cli.main(args) == 1
    line = _one_error_line(capsys)
    assert "does not record the training step" in line and f"python -m diffjax eval --config=... --workdir={wd}" in line
    # a .jsonl input line that is a bare number / string: the file and the line named
    _threshold(wd)
    bad = tmp_path / "bad.jsonl"
    for content in ('{"text": "fine"}\n5\n', '{"text": "fine"}\n"just a string"\n'):
        bad.write_text(content)
        assert cli.main(args[:-1] + [f"--inputs={bad}"]) == 1
        line = _one_error_line(capsys)
        assert f"{bad}:2" in line, line


def test_prompts_file_that_is_not_utf8_is_one_error_line(tmp_path, capsys):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    args = ["diffjax", "generate", f"--config={GAUSS}:small", f"--workdir={tmp_path / 'run'}",
            f"--prompts_file={bad}"]
    assert cli.main(args) == 2
    line = _one_error_line(capsys)
    assert f"{bad}:1" in line and "UTF-8" in line, line
    crlf = tmp_path / "crlf.txt"  # Windows line ends are not part of the prompt
    crlf.write_bytes(b"first\r\nsecond\r\n")
    assert cli.parse_command(args[:-1] + [f"--prompts_file={crlf}"])[3]["prompts"] == ["first", "second"]


# ----------------------------------------------------------------------------------------------
# Item 11: one progress helper, rate-limited, stderr, process 0

def test_progress_lines_rate_limited_on_stderr_process_0_only(capsys, monkeypatch):
    p = runtime.Progress.loop(100, "score", unit="inputs")
    p.update(10)  # less than PROGRESS_EVERY_S of work: silent
    p.update(100)  # nothing was printed: the end of a short loop stays silent too
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(runtime, "PROGRESS_EVERY_S", 0.0)
    p = runtime.Progress.loop(100, "score", unit="inputs")
    p.update(40)
    p.update(100)
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 2
    assert err.splitlines()[0].startswith("score: 40/100 inputs | ") and "inputs/s | ETA " in err
    runtime.Progress.loop(100, "score", active=False).update(100)
    assert capsys.readouterr() == ("", "")
    # the trainer's line is the same helper
    assert runtime.Progress(0, 3000, active=False).line(300, {"loss": 0.41}, 85.1) == \
        "step 300/3000 loss 0.41 | 85.1 steps/s | ETA 0:00:32"
    ctx = runtime.RuntimeContext.local()
    ctx.map_batches(lambda b, i: b, np.zeros((8, 2), np.float32), batch_size=4, progress="generate")
    err = capsys.readouterr().err
    assert "generate: 4/8 examples" in err and "generate: 8/8 examples" in err and "ETA" in err


def test_generate_prints_progress_with_eta(tmp_path, capsys, monkeypatch):
    wd = str(tmp_path / "run")
    c = _config(GAUSS, "small", **{"train.num_steps": 2, "train.eval_at_end": False, "task.eval_num_samples": 64})
    trainer.train(c, wd)
    monkeypatch.setattr(runtime, "PROGRESS_EVERY_S", 0.0)
    capsys.readouterr()
    trainer.run_task_method(c, wd, "generate")
    assert "/64 examples |" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------
# Item 2 (+ 1, 11 end to end): the threshold's params, on a trained tiny DLSR run

@pytest.fixture(scope="module")
def dlsr_run(tmp_path_factory):
    pytest.importorskip("sklearn")
    from diffjax.tasks.base import build_task

    root = tmp_path_factory.mktemp("dlsr_run")
    c = _config(DLSR, "tiny")
    task = build_task(c.task)
    wd = str(root / "run")
    trainer.train(c, wd, task=task)  # eval at the end writes threshold.json
    np.save(root / "imgs.npy", np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8))
    return c, task, wd, root


def test_threshold_refused_for_other_params_naming_both_steps(dlsr_run, capsys, monkeypatch):
    c, task, wd, root = dlsr_run
    thr = json.load(open(os.path.join(wd, "threshold.json")))
    assert thr["params_step"] == 4 and len(thr["params_fingerprint"]) == 32
    inputs, out = str(root / "imgs.npy"), str(root / "rows.csv")
    monkeypatch.setattr(runtime, "PROGRESS_EVERY_S", 0.0)
    res = trainer.run_task_method(c, wd, "score", task=task, inputs=inputs, output=out)
    assert res["num_inputs"] == 5 and deploy.is_score_output(out)
    err = capsys.readouterr().err
    assert "score: features: 5/5 images |" in err and "scoring: 5/5 examples |" in err  # item 11
    trainer.run_task_method(c, wd, "score", task=task, inputs=inputs, output=out)  # a previous output: replaced

    # trained further without a new eval (or a run killed before its final eval): refused
    c6 = _config(DLSR, "tiny", **{"train.num_steps": 6, "train.eval_at_end": False, "overwrite": True})
    trainer.train(c6, wd, task=task)
    before = open(out, "rb").read()
    with pytest.raises(ThresholdError) as e:
        trainer.run_task_method(c6, wd, "score", task=task, inputs=inputs, output=out)
    msg = str(e.value)
    assert "training step 4" in msg and "checkpoint is step 6" in msg
    assert f"python -m diffjax eval --config=... --workdir={wd}" in msg and "\n" not in msg
    assert open(out, "rb").read() == before

    # eval refits on the restored params: score works again
    trainer.run_task_method(c6, wd, "evaluate", task=task)
    assert json.load(open(os.path.join(wd, "threshold.json")))["params_step"] == 6
    trainer.run_task_method(c6, wd, "score", task=task, inputs=inputs, output=out)

    # same step, other params (retrained from scratch with another seed): the fingerprint refuses it
    import shutil

    shutil.rmtree(os.path.join(wd, "checkpoints"))
    shutil.rmtree(os.path.join(wd, "snapshots"), ignore_errors=True)
    c6b = _config(DLSR, "tiny", **{"train.num_steps": 6, "train.eval_at_end": False, "overwrite": True, "seed": 7})
    trainer.train(c6b, wd, task=task)
    with pytest.raises(ThresholdError, match="training step 6 .*checkpoint is step 6"):
        trainer.run_task_method(c6b, wd, "score", task=task, inputs=inputs, output=out)
