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
