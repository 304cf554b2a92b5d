"""DLSR task end to end through the trainer on a few images (random-weight encoder, 32 px)."""
import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from diffjax.tasks.base import build_task  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg="tiny"):
    spec = importlib.util.spec_from_file_location("dlsr_demo_cfg", os.path.join(ROOT, "configs", "dlsr_mnist_demo.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.get_config(arg)


def test_train_batches_resumable_and_process_consistent():
    c = _config()
    with c.unlocked():
        c.task.encoder.weights = "random"
    task = build_task(c.task)
    task._raw["train"] = np.arange(64 * 512, dtype=np.float32).reshape(64, 512)  # no encoder needed
    run = task.train_batches(0, global_batch_size=24)
    first = [next(run)["features"][:, 0] for _ in range(6)]  # 144 examples = 2.25 epochs
    resumed = task.train_batches(4, global_batch_size=24)
    np.testing.assert_array_equal(next(resumed)["features"][:, 0], first[4])
    halves = [next(task.train_batches(5, global_batch_size=24, process_index=i, process_count=2))["features"][:, 0]
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(halves), first[5])
    # each epoch is a permutation: the first 64 examples are all distinct
    assert len(set(np.concatenate(first)[:64].tolist())) == 64


def test_tiny_end_to_end_through_trainer(tmp_path, capsys):
    from diffjax.train import trainer

    c = _config()
    wd = str(tmp_path / "run")
    task = build_task(c.task)
    trainer.train(c, wd, task=task)  # eval_at_end -> results.json
    trainer.run_task_method(c, wd, "sweep", task=task)
    out = capsys.readouterr()
    assert "ID-95% convention" in out.out + out.err
    res = json.load(open(os.path.join(wd, "results.json")))
    oods = ["mnist_5-9", "natural_patches", "sklearn_digits"]
    assert sorted(res["metrics"]) == sorted(oods)
    for o in oods:
        for score in ("mse", "mfsim", "lr_mse", "lr_mfsim", "mahalanobis", "knn"):
            m = res["metrics"][o][score]
            assert 0.0 <= m["auroc"] <= 1.0 and 0.0 <= m["fpr95"] <= 1.0, (o, score, m)
        assert len(res["per_layer"][o]["mse_layers"]) == 5
    assert "over 2 fixed noise seed(s)" in open(os.path.join(wd, "results_table.txt")).read()
    sw = json.load(open(os.path.join(wd, "sweep.json")))
    assert sw["ts"] == [1, 5, 10] and sw["num_seeds"] == res["num_seeds"] == 2
    assert len(sw["auroc"]["natural_patches"]["mse"]) == 3 and "lr_mfsim" in sw["auroc"]["natural_patches"]
    # the sweep at the table's t (same examples, seeds, params, chunk) reproduces the table exactly
    at = sw["at_score_t"]
    assert at["t"] == res["score_t"] == 10 and at["same_examples_and_seeds_as_evaluate"]
    for o in oods:
        for score in ("mse", "mfsim", "lr_mse", "lr_mfsim"):
            assert at["auroc"][o][score] == res["metrics"][o][score]["auroc"], (o, score)
            assert sw["auroc"][o][score][2] == res["metrics"][o][score]["auroc"], (o, score)
    for png in ("roc.png", "sweep.png"):
        with open(os.path.join(wd, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_load_tfds_array_record_without_tensorflow(tmp_path):
    """A tiny tfds dataset prepared as array_record (PNG bytes, no TF) reads back exactly; missing data
    gives an error that says how to prepare it."""
    import io

    tfds = pytest.importorskip("tensorflow_datasets")
    from PIL import Image

    from diffjax.data.images import load_tfds

    rng = np.random.default_rng(0)
    originals = rng.integers(0, 256, (6, 8, 8, 3)).astype(np.uint8)

    class TinyImages(tfds.core.GeneratorBasedBuilder):
        # a one-part module name: tfds then skips its package-resource lookup of the builder's code
        # path (that lookup needs `importlib_resources`, which is not installed here)
        __module__ = "tiny_images_builder"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(num_classes=6)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, im in enumerate(originals):
                buf = io.BytesIO()
                Image.fromarray(im).save(buf, format="PNG")
                yield i, {"image": buf.getvalue(), "label": i}

    TinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    s = load_tfds("tiny_images", "train", str(tmp_path))
    assert s.images.shape == (6, 8, 8, 3) and sorted(s.labels.tolist()) == list(range(6))
    for im, label in zip(s.images, s.labels):  # tfds shuffles the order; the label is the index
        np.testing.assert_array_equal(im, originals[label])
    with pytest.raises(FileNotFoundError, match="tfds build cifar10 --file_format=array_record"):
        load_tfds("cifar10", "test", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="--config.task.data_dir"):
        load_tfds("cifar10", "test", str(tmp_path))


def test_dataset_statistics_live_in_params_and_get_no_gradient(tmp_path):
    import jax
    import jax.numpy as jnp

    c = _config()
    with c.unlocked():
        c.task.feature_cache_dir = str(tmp_path)
    probe = build_task(c.task)  # same encoder + data config -> same cache files
    raw = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 512)).astype(np.float32)
    np.save(probe._cache_path("train"), raw)
    with c.unlocked():
        c.task.normalize = "dataset"
    task = build_task(c.task)  # fits the stats from the cached ID train features, no encoder run
    params = task.init_params(jax.random.PRNGKey(0))
    np.testing.assert_allclose(params["stats"]["mean"], raw.mean(0), rtol=1e-5)
    z = np.asarray(task.normalize(jnp.asarray(raw), params))
    np.testing.assert_allclose(z.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(z.std(0), 1.0, atol=1e-3)
    grads = jax.grad(lambda p: task.loss_fn(p, {"features": jnp.asarray(raw[:8])}, jax.random.PRNGKey(1))[0])(params)
    assert not np.any(np.asarray(grads["stats"]["mean"])) and not np.any(np.asarray(grads["stats"]["std"]))
    assert np.any(np.asarray(grads["lfdn"]["output"]["kernel"]))
