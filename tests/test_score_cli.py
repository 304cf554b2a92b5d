"""`python -m diffjax score` on a trained DLSR detector (tiny config): an image folder as an extra OOD
set at eval time, the threshold saved in the workdir, one row per file of a scored folder, and one
clear error line for a missing, empty or unreadable input."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from diffjax import cli  # noqa: E402
from diffjax.tasks.base import build_task  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "dlsr_mnist_demo.py")


def _config():
    spec = importlib.util.spec_from_file_location("dlsr_demo_cfg_score", CONFIG)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.get_config("tiny")


def _image_folder(root, n=5, size=20, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    names = []
    for i in range(n):
        rel = f"img{i}.png" if i % 2 else f"sub/img{i}.png"
        Image.fromarray(rng.integers(0, 255, (size, size + i, 3), dtype=np.uint8)).save(os.path.join(root, rel))
        names.append(rel)
    with open(os.path.join(root, "notes.txt"), "w") as f:  # not an image: ignored
        f.write("x")
    return sorted(names)


@pytest.mark.slow
def test_folder_as_ood_set_then_score_rows_with_saved_threshold(tmp_path, capsys):
    from diffjax.train import trainer

    folder = str(tmp_path / "my_images")
    names = _image_folder(folder)
    c = _config()
    with c.unlocked():
        c.task.data.user_ood = (folder,)
    wd = str(tmp_path / "run")
    trainer.train(c, wd, task=build_task(c.task))  # eval at the end: table + threshold.json
    res = json.load(open(os.path.join(wd, "results.json")))
    assert "my_images" in res["metrics"] and res["num_examples"]["ood/my_images"] == 5
    thr = json.load(open(os.path.join(wd, "threshold.json")))
    assert thr["score"] == "mse" and thr["id_accepted"] == 0.95 and thr["heldout_accepted_fraction"] >= 0.95

    out = str(tmp_path / "rows.csv")
    args = ["diffjax", "score", f"--config={CONFIG}:tiny", f"--workdir={wd}"]
    assert cli.main(args + [f"--inputs={folder}", f"--output={out}"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert [r["id"] for r in rows] == names  # one row per image file, subfolders included
    for r in rows:
        assert int(r["ood"]) == (float(r["score"]) > thr["threshold"])
    summary = json.load(open(os.path.join(wd, "score.json")))
    assert summary["num_inputs"] == 5 and summary["threshold"] == thr["threshold"]
    # JSONL output and a .npy array
    np.save(tmp_path / "arr.npy", np.random.default_rng(1).integers(0, 255, (3, 28, 28), dtype=np.uint8))
    out2 = str(tmp_path / "rows.jsonl")
    # (3, 28, 28) reads two ways: refused naming both, then scored with the layout spelled out
    assert cli.main(args + [f"--inputs={tmp_path / 'arr.npy'}", f"--output={out2}"]) == 1
    err = capsys.readouterr().err
    assert "reads two ways" in err and "#layout=NHW" in err and not os.path.exists(out2)
    assert cli.main(args + [f"--inputs={tmp_path / 'arr.npy'}#layout=NHW", f"--output={out2}"]) == 0
    recs = [json.loads(line) for line in open(out2)]
    assert [r["id"] for r in recs] == [0, 1, 2] and all(isinstance(r["ood"], bool) for r in recs)

    # clear one-line errors naming the input
    capsys.readouterr()
    os.makedirs(tmp_path / "empty")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    for bad, why in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "holds no image files"),
                     (tmp_path / "bad.png", "could not be read")):
        assert cli.main(args + [f"--inputs={bad}"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(bad) in err[0] and why in err[0], err
