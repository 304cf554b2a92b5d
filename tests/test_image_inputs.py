"""Issue 17 item 4: the image paths accept the layouts users have (NHWC uint8, float in [0, 1],
grayscale [N, H, W] / [N, H, W, 1]) by converting them explicitly, and refuse the rest naming what
was received and what is expected (no silent NCHW resize, RGBA, uint16 or 0..255-float misreads)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.data.images import to_rgb_uint8
from diffjax.ood import features

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
GREY = RNG.integers(0, 256, size=(2, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("images, message", [
    (np.transpose(RGB, (0, 3, 1, 2)), "looks channels-first \\(NCHW\\)"),
    (np.concatenate([RGB, RGB[..., :1]], -1), "RGBA"),
    (RGB.astype(np.uint16) * 257, "got dtype uint16"),
    (RGB.astype(np.float32), "float images must be finite and in \\[0, 1\\]; got min 0, max 255"),
    (RGB[None], "got shape \\(1, 2, 8, 8, 3\\)"),
])
def test_refused_layouts_name_what_was_received(images, message):
    with pytest.raises(ValueError, match=message):
        to_rgb_uint8(images)
    with pytest.raises(ValueError, match=message):
        features.extract_features(lambda x: jnp.zeros((x.shape[0], 2)), images, batch_size=2, progress=False)


def test_accepted_layouts_convert_explicitly():
    np.testing.assert_array_equal(to_rgb_uint8(RGB), RGB)
    np.testing.assert_array_equal(to_rgb_uint8(RGB / 255.0), RGB)  # float in [0, 1]
    np.testing.assert_array_equal(to_rgb_uint8(GREY), np.repeat(GREY[..., None], 3, -1))
    np.testing.assert_array_equal(to_rgb_uint8(GREY[..., None]), np.repeat(GREY[..., None], 3, -1))
    np.testing.assert_array_equal(to_rgb_uint8(RGB.astype(np.uint16) * 257, max_value=65535), RGB)
    np.testing.assert_array_equal(to_rgb_uint8(RGB.astype(np.float32), max_value=255.0), RGB)
    # the jitted feature path: uint8, float [0, 1] and grayscale give the same normalised input
    pre = jax.jit(lambda x: features.preprocess(x, 8))
    ref = pre(jnp.asarray(RGB))
    np.testing.assert_allclose(pre(jnp.asarray(RGB / 255.0, jnp.float32)), ref, atol=1e-6)
    grey_rgb = np.repeat(GREY[..., None], 3, -1)
    np.testing.assert_allclose(pre(jnp.asarray(GREY)), pre(jnp.asarray(grey_rgb)), atol=1e-6)
    np.testing.assert_allclose(pre(jnp.asarray(GREY[..., None])), pre(jnp.asarray(grey_rgb)), atol=1e-6)
    with pytest.raises(ValueError, match="NCHW"):
        pre(jnp.asarray(np.transpose(RGB, (0, 3, 1, 2))))


# ------------------------------------------------------------------ issue 24, items 3 and 4
ONE_HWC = RNG.integers(0, 256, size=(28, 28, 3), dtype=np.uint8)


@pytest.mark.parametrize("shape, readings", [
    ((28, 28, 3), ["28 grayscale images of 28x3 pixels", "one 28x28 image with 3 channels last"]),
    ((32, 32, 1), ["32 grayscale images of 32x1 pixels", "one 32x32 image with 1 channel last"]),
    ((16, 16, 4), ["16 grayscale images of 16x4 pixels", "one 16x16 image with 4 channels last"]),
    ((3, 28, 28), ["3 grayscale images of 28x28 pixels", "one 28x28 image with 3 channels first"]),
])
def test_ambiguous_3d_arrays_are_refused_with_both_readings(shape, readings, tmp_path):
    """Issue 24 item 3: one unbatched HWC image was read as 28 grayscale images, silently."""
    from diffjax.data.images import load_user_images
    from diffjax.errors import InputError

    for x in (RNG.integers(0, 256, size=shape, dtype=np.uint8), RNG.random(shape)):
        for path in ("to_rgb_uint8", "preprocess", "feature_fn", "extract_features"):
            with pytest.raises(ValueError, match=r"reads two ways") as e:
                if path == "to_rgb_uint8":
                    to_rgb_uint8(x)
                elif path == "preprocess":
                    features.preprocess(jnp.asarray(x), 8)
                elif path == "feature_fn":
                    features.make_feature_fn(lambda z: [z], image_size=8)(jnp.asarray(x))
                else:
                    features.extract_features(lambda z: jnp.zeros((z.shape[0], 2)), x, batch_size=2, progress=False)
            assert all(r in str(e.value) for r in readings), str(e.value)
        np.save(tmp_path / "one.npy", x)
        with pytest.raises(InputError, match=r"one.npy.*reads two ways.*give the path as '.*one.npy#layout=") as e:
            load_user_images(str(tmp_path / "one.npy"))
        assert all(r in str(e.value) for r in readings), str(e.value)
    # an explicit layout decides, in the library and for a file
    if shape[-1] == 3:
        np.save(tmp_path / "one.npy", ONE_HWC)
        np.testing.assert_array_equal(to_rgb_uint8(ONE_HWC, layout="HWC"), ONE_HWC[None])
        s = load_user_images(str(tmp_path / "one.npy") + "#layout=HWC")
        assert s.images.shape == (1, 28, 28, 3) and s.ids == (0,)
        np.testing.assert_array_equal(s.images[0], ONE_HWC)
        assert len(load_user_images(str(tmp_path / "one.npy"), layout="NHW")) == 28
        np.save(tmp_path / "chw.npy", np.transpose(ONE_HWC, (2, 0, 1)))
        np.testing.assert_array_equal(load_user_images(str(tmp_path / "chw.npy") + "#layout=CHW").images[0], ONE_HWC)
        with pytest.raises(InputError, match="unknown layout 'HWCX'"):
            load_user_images(str(tmp_path / "one.npy") + "#layout=HWCX")
    # unambiguous 3-d arrays still read as grayscale batches
    assert to_rgb_uint8(RNG.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)).shape == (5, 28, 28, 3)


def test_feature_fn_refuses_0_255_floats_like_the_npy_path(tmp_path):
    """Issue 24 item 3: make_feature_fn read float 0..255 images as 0..1 (features off by up to 2.99)."""
    from diffjax.data.images import load_user_images
    from diffjax.errors import InputError

    fn = features.make_feature_fn(lambda z: [z], image_size=8)
    ref = np.asarray(fn(jnp.asarray(RGB)))
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(RGB / 255.0, jnp.float32))), ref, atol=1e-5)
    msg = r"float images must be finite and in \[0, 1\]; got min 0, max 255"
    for x in (RGB.astype(np.float32), jnp.asarray(RGB, jnp.float32)):
        with pytest.raises(ValueError, match=msg):
            fn(x)
    with pytest.raises(ValueError, match=r"got min nan"):
        fn(jnp.full((1, 8, 8, 3), jnp.nan))
    np.save(tmp_path / "f.npy", RGB.astype(np.float32))
    with pytest.raises(InputError, match=msg):  # the same check on the CLI's .npy path
        load_user_images(str(tmp_path / "f.npy"))


def test_16_bit_images_are_read_at_their_bit_depth(tmp_path):
    """Issue 24 item 4: a 16-bit grayscale PNG went through convert("RGB") and 99% of it clipped to 255."""
    from PIL import Image

    from diffjax.data.images import load_user_images
    from diffjax.errors import InputError

    g16 = (np.arange(16 * 20).reshape(16, 20) * 200).astype(np.uint16)  # 0 .. 63800
    want = np.repeat(np.round(g16 * (255.0 / 65535)).astype(np.uint8)[..., None], 3, -1)
    d = tmp_path / "imgs"
    d.mkdir()
    for ext in ("png", "tif"):
        Image.fromarray(g16).save(d / f"g16.{ext}")
        s = load_user_images(str(d / f"g16.{ext}"))
        np.testing.assert_array_equal(s.images[0], want)
    s = load_user_images(str(d))  # a folder reads them the same way
    assert s.ids == ("g16.png", "g16.tif")
    np.testing.assert_array_equal(s.images, np.stack([want, want]))
    # the same scaling as the explicit uint16 .npy conversion
    np.testing.assert_array_equal(s.images[0], to_rgb_uint8(g16[None], max_value=65535)[0])
    Image.fromarray(g16.astype(np.int32) * 1000).save(tmp_path / "g32.tif")
    with pytest.raises(InputError, match="g32.tif.*32-bit integer image.*save it as an 8- or 16-bit image"):
        load_user_images(str(tmp_path / "g32.tif"))
    Image.fromarray((g16 / 65535.0).astype(np.float32)).save(tmp_path / "f01.tif")
    assert load_user_images(str(tmp_path / "f01.tif")).images.shape == (1, 16, 20, 3)
    Image.fromarray(g16.astype(np.float32)).save(tmp_path / "f255.tif")
    with pytest.raises(InputError, match=r"f255.tif.*float image.*\[0, 1\]"):
        load_user_images(str(tmp_path / "f255.tif"))
