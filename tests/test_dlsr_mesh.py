"""DLSR on the mesh: the frozen EfficientNet's features, z_0, the scores and the table's AUROCs on a (4, 1) and a
(2, 2) mesh of the 4 fake CPU devices equal the 1-device ones, the extraction program is fed global batches really
sharded over "data", and encoder.dtype='bfloat16' runs the encoder in bf16 (params cast, BN statistics fp32)."""
import dataclasses

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

pytest.importorskip("mlxtend")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from diffjax.errors import ConfigError  # noqa: E402
from diffjax.ood import image_encoder  # noqa: E402
from diffjax.ood.features import split_layers  # noqa: E402
from diffjax.runtime import RuntimeContext  # noqa: E402
from diffjax.tasks.base import build_task  # noqa: E402
from diffjax.tasks.dlsr import DLSRTask  # noqa: E402
from tests._config_util import REPO, set_fields  # noqa: E402

MESHES = {"1": (1, 1), "4x1": (4, 1), "2x2": (2, 2)}


@dataclasses.dataclass(frozen=True)
class SpyContext(RuntimeContext):
    """A ``RuntimeContext`` that records the first leaf of every global batch ``map_batches`` feeds to ``fn``."""

    fed: list = dataclasses.field(default_factory=list, compare=False)

    def map_batches(self, fn, inputs, **kwargs):
        def spy(batch, index):
            self.fed.append(jax.tree_util.tree_leaves(batch)[0])
            return fn(batch, index)

        return super().map_batches(spy, inputs, **kwargs)


def _context(name: str) -> SpyContext:
    shape = MESHES[name]
    devices = np.asarray(jax.devices()[:shape[0] * shape[1]], dtype=object).reshape(shape)
    return SpyContext(Mesh(devices, ("data", "model")))


def _config(**fields):
    from diffjax.cli import _load_config_file

    c = _load_config_file(f"{REPO}/configs/dlsr_mnist_demo.py:tiny")
    with c.unlocked():
        # 12 divides neither the 64 train nor the 32 test / OOD images: every set ends in a padded batch
        set_fields(c, {"task.encoder.batch_size": 12, "task.score_chunk": 12, **fields})
    return c


@pytest.fixture(scope="module")
def base():
    """The tiny DLSR task with its sets read and its encoder built once (shared by every mesh below)."""
    task = build_task(_config().task)
    task.sets()
    task._encoder = image_encoder.feature_extractor(task.c.encoder)
    return task


def _fresh(base):
    """A task with ``base``'s sets, encoder and jitted functions but no features computed yet."""
    task = DLSRTask(base.c)
    task._sets, task._encoder, task._fns = base._sets, base._encoder, base._fns
    return task


def test_features_equal_on_every_mesh_and_the_extraction_input_is_sharded(base):
    images = base.sets()["test"].images  # [32, 28, 28, 3] uint8
    ref = base.extract(images, "test", _context("1"))
    assert ref.shape == (32, 512) and ref.dtype == np.float32 and np.all(np.isfinite(ref))
    for name in ("4x1", "2x2"):
        ctx = _context(name)
        got = base.extract(images, "test", ctx)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=name)
        fed = [x for x in ctx.fed if x.ndim == 4]  # the image batches given to the extraction program
        assert len(fed) == 3, name  # 12 + 12 + 8 (padded to 12)
        data = ctx.data_size
        for x in fed:
            assert x.dtype == np.uint8 and x.shape == (12,) + images.shape[1:]
            assert x.sharding.spec == P("data") and len(x.sharding.device_set) == 4
            # each device holds 12 / data images; the data axis' devices hold different ones
            assert {s.data.shape[0] for s in x.addressable_shards} == {12 // data}
            assert len({repr(s.index) for s in x.addressable_shards}) == data


def test_scores_and_auroc_equal_on_every_mesh(base, tmp_path):
    params = base.init_params(jax.random.PRNGKey(0))
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))  # a non-trivial denoiser (its output layer is 0)
    params = jax.tree_util.tree_unflatten(tree, [np.asarray(x) + 0.1 * np.asarray(jax.random.normal(k, x.shape))
                                                 for x, k in zip(leaves, keys)])
    out = {}
    for name in MESHES:
        task, ctx = _fresh(base), _context(name)
        res = task.evaluate(params, None, str(tmp_path / name), context=ctx)
        grid = task.score_set(params, "ood/mnist_5-9", task.sets()["ood/mnist_5-9"], [5], num_seeds=2, seed=0,
                              stage="evaluate", context=ctx)
        out[name] = (res, grid, task.z0("test", params, ctx))
        assert res["feature_dtype"] == "float32"
    ref_res, ref_grid, ref_z0 = out["1"]
    aurocs = [m["auroc"] for o in ref_res["metrics"].values() for m in o.values()]
    assert len(set(np.round(aurocs, 4))) > 3  # the scores separate the sets: not a trivial table
    for name in ("4x1", "2x2"):
        res, grid, z0 = out[name]
        np.testing.assert_allclose(z0, ref_z0, rtol=1e-5, atol=1e-5, err_msg=name)
        assert sorted(grid) == sorted(ref_grid)
        for k in grid:
            np.testing.assert_allclose(grid[k], ref_grid[k], rtol=1e-5, atol=1e-5, err_msg=f"{name} {k}")
        for o, scores in ref_res["metrics"].items():
            for s, m in scores.items():
                for metric, v in m.items():
                    assert res["metrics"][o][s][metric] == pytest.approx(v, rel=1e-5, abs=1e-5), (name, o, s, metric)


def test_bf16_features(base):
    """encoder.dtype='bfloat16': params bf16, BN statistics fp32, features fp32 and close to the fp32 ones."""
    c = _config(**{"task.encoder.dtype": "bfloat16"}).task
    bf = build_task(c)
    bf._sets = base._sets
    enc = image_encoder.feature_extractor(bf.c.encoder)
    dtypes = {col: {np.dtype(x.dtype) for x in jax.tree_util.tree_leaves(v)} for col, v in enc.variables.items()}
    assert dtypes == {"params": {np.dtype(jax.numpy.bfloat16)}, "batch_stats": {np.dtype(np.float32)}}
    bf._encoder = enc
    images = base.sets()["test"].images
    ctx = _context("4x1")
    got, ref = bf.extract(images, "test", ctx), base.extract(images, "test", ctx)
    assert got.dtype == np.float32
    for layer, (a, b) in enumerate(zip(split_layers(got, bf.dims), split_layers(ref, bf.dims))):
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)  # per image and stage
        assert 0 < rel.max() < 0.1, (layer, rel.max())  # bf16 through 16 blocks: ~0.3-3% here, never equal
    with pytest.raises(ConfigError, match=r"task\.encoder\.dtype='float16'.*'float32', 'bfloat16'"):
        build_task(_config(**{"task.encoder.dtype": "float16"}).task)


def test_baselines_on_the_mesh_match_numpy():
    """Mahalanobis / kNN of 13 queries in global batches of 4 on a (2, 2) mesh = the numpy brute force."""
    from diffjax.ood import baselines

    rng = np.random.default_rng(0)
    train, x = rng.normal(size=(20, 6)).astype(np.float32), rng.normal(size=(13, 6)).astype(np.float32)
    ctx = _context("2x2")
    fit = baselines.fit_mahalanobis(train)
    d = x.astype(np.float64) - fit["mean"]
    np.testing.assert_allclose(baselines.mahalanobis_scores(fit, x, chunk=4, context=ctx),
                               np.einsum("nd,de,ne->n", d, fit["precision"].astype(np.float64), d), rtol=1e-5)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    dist = np.linalg.norm(unit(x)[:, None] - unit(train)[None], axis=-1)  # [13, 20]
    np.testing.assert_allclose(baselines.knn_score(train, x, k=3, chunk=4, context=ctx), np.sort(dist, 1)[:, 2],
                               rtol=1e-5, atol=1e-6)
    assert len([b for b in ctx.fed if b.shape == (4, 6)]) == 8  # 4 batches of each, sharded (13 -> 16 rows)
