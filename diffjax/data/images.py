"""Image sets for OOD detection: tfds (array_record, no TensorFlow) reader and small helpers.

An ``ImageSet`` holds ``images: [N, H, W, 3] uint8`` at the data's own resolution; resizing to the
encoder's resolution and normalisation happen inside the jitted feature extractor
(``diffjax.ood.features``), so large sets never exist in memory at 224x224 float.

The embedded demo sets (MNIST 5k, scikit-image / scikit-learn images) live in
``diffjax.data.demo_sets``; full-size data come from a local tfds ``data_dir`` via ``load_tfds``;
a user's own images via ``load_user_images``: a folder of image files (subfolders allowed, files
in sorted relative-path order, ids = those paths), a single image file, or a ``.npy`` array
``[N, H, W]`` / ``[N, H, W, 1|3|4]`` (ids = row numbers).

Every image array, whichever path it takes (``to_rgb_uint8`` and the ``.npy`` reader, the DLSR
feature function and ``extract_features``), goes through ONE check, ``check_images``: the layout
(``check_image_layout``: static, so it holds under ``jit`` too) and, for concrete float arrays, the
range [0, 1] (``check_float_range``). A 3-d array that reads two ways -- ``[H, W, C]`` / ``[C, H, W]``
one image or ``[N, H, W]`` grayscale images, e.g. ``(28, 28, 3)`` -- is refused with both readings
spelled out; the user says which by a reshape (``x[None]`` / ``x[..., None]``) or, for a ``.npy``
file, ``layout=`` (``"x.npy#layout=HWC"``). Image files are read at their bit depth: 16-bit PNG /
TIFF samples are scaled by 65535 (never clipped at 255); 32-bit integer images are refused.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A named set of images. images: [N, H, W, 3] uint8; labels: [N] int32 or None."""

    name: str
    images: np.ndarray
    labels: np.ndarray | None = None
    ids: tuple | None = None  # one id per image (e.g. file paths of a user folder); None = row numbers

    def __post_init__(self):
        im = self.images
        if im.ndim != 4 or im.shape[-1] != 3 or im.dtype != np.uint8:
            raise ValueError(f"ImageSet {self.name!r}: expected images [N, H, W, 3] uint8, got "
                             f"{im.shape} {im.dtype}; use to_rgb_uint8() first.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, n: int | None, seed: int | None = None) -> "ImageSet":
        """First ``n`` images (or a seeded random subset of ``n`` when ``seed`` is given)."""
        if n is None or n >= len(self):
            return self
        idx = np.arange(n) if seed is None else np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return ImageSet(self.name, self.images[idx], None if self.labels is None else self.labels[idx],
                        None if self.ids is None else tuple(self.ids[i] for i in idx))

    def row_ids(self) -> list:
        """One id per image: ``ids`` when set, else the row numbers 0..N-1."""
        return list(self.ids) if self.ids is not None else list(range(len(self)))


EXPECTED_LAYOUTS = ("[N, H, W, 3] RGB or [N, H, W] / [N, H, W, 1] grayscale (channels last), "
                    "uint8 0..255 or float in [0, 1]")


def check_image_layout(shape, dtype, *, name: str = "images") -> None:
    """Raises ``ValueError`` unless ``shape`` / ``dtype`` is one of the accepted layouts
    (``EXPECTED_LAYOUTS``); the message says what was received and how to convert it.

    Refused on purpose (they were silently misread before): channels-first ``[N, 3, H, W]``, RGBA
    ``[..., 4]``, integer types other than uint8 (uint16 scans, int32 labels-as-images), complex or
    object arrays. Static: works on tracers too (shape and dtype only)."""
    shape, dtype = tuple(shape), np.dtype(dtype)
    if len(shape) == 3:
        check_unambiguous(shape, name=name)
    hint = ""
    if len(shape) == 4 and shape[-1] not in (1, 3):
        if shape[1] in (1, 3):
            hint = f" It looks channels-first (NCHW): pass np.transpose({name}, (0, 2, 3, 1))."
        elif shape[-1] == 4:
            hint = f" RGBA: drop or composite the alpha channel first, e.g. {name}[..., :3]."
        raise ValueError(f"{name}: got shape {shape} {dtype}; expected {EXPECTED_LAYOUTS}.{hint}")
    if len(shape) not in (3, 4):
        raise ValueError(f"{name}: got shape {shape} {dtype}; expected {EXPECTED_LAYOUTS}.")
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating) and dtype != bool:
        raise ValueError(f"{name}: got dtype {dtype}; expected {EXPECTED_LAYOUTS}. Convert explicitly, e.g. "
                         f"uint16 scans: ({name} / 65535.0).astype(np.float32).")


LAYOUTS = ("NHW", "HWC", "CHW")  # explicit readings of a 3-d array: N grayscale images / one image


def check_unambiguous(shape, *, name: str = "images", how: dict | None = None) -> None:
    """A 3-d ``shape`` that could be one image (``[H, W, C]`` with C in 1, 3, 4, or ``[C, H, W]`` with
    C = 3) as well as ``[N, H, W]`` grayscale images is refused, both readings spelled out (a single
    28x28x3 image was read as 28 grayscale images of 28x3 pixels before). ``how``: what the user does to
    pick each reading (``LAYOUTS`` -> text); default: the reshape of the array that says it."""
    how = how or {"NHW": f"pass {name}[..., None]", "HWC": f"pass {name}[None]",
                  "CHW": f"pass np.transpose({name}, (1, 2, 0))[None]"}
    a, b, c = shape
    readings = []
    if c in (1, 3, 4):
        readings.append(f"one {a}x{b} image with {c} channel{'s' if c > 1 else ''} last ([H, W, C]: {how['HWC']})")
    if a == 3:  # (4, H, W) stays 4 grayscale images: channels-first RGBA is too rare to refuse them for
        readings.append(f"one {b}x{c} image with {a} channels first ([C, H, W]: {how['CHW']})")
    if readings:
        raise ValueError(f"{name}: shape {tuple(shape)} reads two ways: {a} grayscale images of {b}x{c} pixels "
                         f"([N, H, W]: {how['NHW']}) or {' or '.join(readings)}; say which.")


def apply_layout(images: np.ndarray, layout: str | None, *, name: str = "images") -> np.ndarray:
    """A 3-d array read as ``layout`` (``LAYOUTS``) -> ``[N, H, W, C]``; ``None`` / ``"auto"``: unchanged."""
    if layout in (None, "", "auto"):
        return images
    if layout not in LAYOUTS:
        raise ValueError(f"{name}: unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)} "
                         f"(NHW: grayscale images; HWC / CHW: one image, channels last / first)")
    if np.ndim(images) != 3:
        raise ValueError(f"{name}: layout={layout!r} applies to 3-d arrays; got shape {np.shape(images)}")
    if layout == "NHW":
        return images[..., None]
    return (images if layout == "HWC" else np.transpose(images, (1, 2, 0)))[None]


def _is_tracer(x) -> bool:
    jax = sys.modules.get("jax")  # not imported here: data/ needs no jax
    return jax is not None and isinstance(x, jax.core.Tracer)


def check_float_range(images, *, name: str = "images") -> None:
    """Float images must lie in [0, 1] (0..255 floats were silently read as saturated before).
    numpy or concrete jax arrays (min / max on the device); a no-op on tracers (values unknown)."""
    dtype = np.dtype(images.dtype) if hasattr(images, "dtype") else np.asarray(images).dtype
    if not np.issubdtype(dtype, np.floating) or _is_tracer(images):
        return
    x = images if hasattr(images, "min") else np.asarray(images)
    if x.size:
        lo, hi = float(x.min()), float(x.max())  # NaN propagates through min / max
        if not (0.0 <= lo and hi <= 1.0):
            raise ValueError(f"{name}: float images must be finite and in [0, 1]; got min {lo:g}, max {hi:g}. "
                             f"Divide 0..255 data by 255 (or pass uint8).")


def check_images(images, *, name: str = "images") -> None:
    """THE check of an image array on every path: layout (``check_image_layout``) and, for concrete
    floats, the range [0, 1] (``check_float_range``); ``ValueError`` saying what to change."""
    dtype = images.dtype if hasattr(images, "dtype") else np.asarray(images).dtype
    check_image_layout(np.shape(images), dtype, name=name)
    check_float_range(images, name=name)


def to_rgb_uint8(images: np.ndarray, max_value: float | None = None, *, layout: str | None = None) -> np.ndarray:
    """Grey [N, H, W] / [N, H, W, 1] or RGB [N, H, W, 3] -> [N, H, W, 3] uint8, explicitly.

    uint8 passes through; floats (and bool) must lie in [0, 1] unless ``max_value`` names the value
    that maps to 255 (e.g. ``max_value=255.0`` for 0..255 floats, 16 for sklearn digits, 65535 for
    uint16). Other layouts (NCHW, RGBA, other integer types without ``max_value``) are refused with a
    message saying what was received and what is expected (``check_image_layout``). A 3-d array that
    reads two ways (``check_unambiguous``) needs ``layout`` (``LAYOUTS``) or a reshape.
    """
    x = apply_layout(np.asarray(images), layout)
    if max_value is None:
        check_images(x)
    elif x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating):
        check_image_layout(x.shape, x.dtype)
    else:
        check_image_layout(x.shape, np.uint8)  # shape check only: integer data with an explicit max_value
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.dtype == np.uint8 and max_value is None:
        return x
    if max_value is None:
        max_value = 1.0
    return np.clip(np.round(x.astype(np.float64) * (255.0 / max_value)), 0, 255).astype(np.uint8)


def resize_uint8(images: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resizes [N, H, W, 3] uint8 images to ``size`` (int or (h, w)) with PIL bilinear + antialias."""
    from PIL import Image

    h, w = (size, size) if isinstance(size, int) else size
    if images.shape[1:3] == (h, w):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images])


def load_tfds(name: str, split: str, data_dir: str | None, *, image_key: str = "image",
              label_key: str | None = "label", max_examples: int | None = None,
              resize_to: int | None = None, set_name: str | None = None) -> ImageSet:
    """Reads a tfds image dataset prepared in **array_record** format (no TensorFlow needed).

    Uses ``tfds.data_source(name, split=split, data_dir=data_dir, download=False)``. Images of
    varying size (or any size when ``resize_to`` is given) are resized to ``resize_to``.
    Returns the first ``max_examples`` examples of ``split`` (tfds slicing, e.g. "test[:5000]", works too).
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a runtime pin
        raise ImportError("load_tfds needs tensorflow-datasets (pip install -r requirements.txt)") from e
    how = (f"Prepare it once where network is available:\n"
           f"  tfds build {name} --file_format=array_record --data_dir=DIR\n"
           f"then copy DIR here and pass --config.task.data_dir=DIR. Data prepared as tfrecord needs "
           f"TensorFlow to read (pip install tensorflow) or a rebuild with --file_format=array_record.")
    if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)):
        raise FileNotFoundError(f"tfds data_dir {data_dir!r} does not exist (dataset {name!r}). {how}")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError, ...)
        raise FileNotFoundError(f"could not open tfds dataset {name!r} split {split!r} in data_dir "
                                f"{data_dir!r} as array_record ({type(e).__name__}: {e}). {how}") from e
    n = len(source) if max_examples is None else min(len(source), max_examples)
    images, labels = [], []
    for i in range(n):
        ex = source[i]
        im = to_rgb_uint8(np.asarray(ex[image_key])[None])
        if resize_to is not None:
            im = resize_uint8(im, resize_to)
        images.append(im[0])
        if label_key is not None and label_key in ex:
            labels.append(int(np.asarray(ex[label_key]).reshape(-1)[0]))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"tfds {name!r} images have several sizes {sorted(shapes)[:4]}...; pass resize_to.")
    return ImageSet(set_name or f"{name}:{split}", np.stack(images),
                    np.asarray(labels, np.int32) if len(labels) == n else None)


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _input_error(msg: str):
    from diffjax.errors import InputError  # the one error class for bad user inputs

    return InputError(msg)


def _open_image(path: str, shown: str) -> np.ndarray:
    """One image file -> [H, W, 3] uint8, read at its bit depth: 16-bit samples (PNG / TIFF ``I;16``
    modes; a PNG opened as ``I``) are scaled by 65535, float (``F``) images must lie in [0, 1], other
    32-bit integer images are refused; 8-bit modes go through ``convert("RGB")``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, fmt = im.mode, im.format
            a = np.asarray(im) if mode in ("I", "F") or mode.startswith("I;16") else np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise _input_error(f"image file {shown!r} could not be read as an image ({type(e).__name__}: {e})") from e
    if mode.startswith("I;16") or (mode == "I" and fmt == "PNG" and a.size and 0 <= a.min() and a.max() <= 65535):
        return to_rgb_uint8(a.astype(np.float64)[None, ..., None], max_value=65535.0)[0]
    if mode == "I":
        raise _input_error(f"image file {shown!r} is a 32-bit integer image (samples {a.min()}..{a.max()}) whose "
                           f"white level is unknown; save it as an 8- or 16-bit image")
    if mode == "F":
        try:
            return to_rgb_uint8(a[None, ..., None])[0]
        except ValueError as e:
            raise _input_error(f"image file {shown!r} is a 32-bit float image: {e}") from e
    return a


def split_layout(path: str) -> tuple[str, str | None]:
    """``"x.npy#layout=HWC"`` -> ``("x.npy", "HWC")``; a path without the option -> ``(path, None)``."""
    head, sep, opt = path.rpartition("#layout=")
    if sep and head and opt in LAYOUTS + ("auto",):
        return head, opt
    if sep and head:
        raise _input_error(f"image input {path!r}: unknown layout {opt!r}; expected #layout= one of "
                           f"{', '.join(LAYOUTS)} (NHW: grayscale images; HWC / CHW: one image, channels last / first)")
    return path, None


def load_user_images(path: str, *, resize_to: int | None = None, name: str | None = None,
                     layout: str | None = None) -> ImageSet:
    """A user's images -> ``ImageSet`` with ``ids``: a folder (image files at any depth, sorted by
    relative path; other files ignored), one image file, or a ``.npy`` array (uint8 0-255 or float
    in [0, 1]; ``to_rgb_uint8``). Images are resized to ``resize_to`` (needed when sizes differ).

    A 3-d ``.npy`` that reads two ways (``check_unambiguous``: ``(28, 28, 3)`` is one image or 28
    grayscale ones) is refused unless ``layout`` (``LAYOUTS``), or the path's ``#layout=`` suffix
    (``"x.npy#layout=HWC"``), says which. A missing path, a folder without image files, an empty
    array or an unreadable file raises ``diffjax.errors.InputError`` naming it.
    """
    path, suffix_layout = split_layout(path)
    layout = layout if layout not in (None, "", "auto") else suffix_layout
    p = os.path.expanduser(path)
    name = name or os.path.basename(os.path.normpath(path)) or path
    if not os.path.exists(p):
        raise _input_error(f"image input {path!r} does not exist (expected a folder of image files, an image "
                           f"file or a .npy array)")
    if layout not in (None, "", "auto") and not p.lower().endswith(".npy"):
        raise _input_error(f"image input {path!r}: a layout ({layout!r}) applies to .npy arrays only")
    if os.path.isdir(p):
        files = sorted(os.path.relpath(os.path.join(d, f), p) for d, _, fs in os.walk(p) for f in fs
                       if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS)
        if not files:
            raise _input_error(f"image folder {path!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)}, "
                               f"subfolders included)")
        images = [_open_image(os.path.join(p, f), os.path.join(path, f)) for f in files]
        ids = tuple(f.replace(os.sep, "/") for f in files)
    elif p.lower().endswith(".npy"):
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as e:  # truncated / not an .npy / object array
            raise _input_error(f"image array {path!r} could not be read ({type(e).__name__}: {e})") from e
        if arr.size == 0 or arr.ndim not in (3, 4):
            raise _input_error(f"image array {path!r} has shape {arr.shape}; expected a non-empty [N, H, W] or "
                               f"[N, H, W, 1|3|4] array")
        try:
            if arr.ndim == 3 and layout in (None, "", "auto"):
                check_unambiguous(arr.shape, name=f"image array {path!r}", how={
                    r: f"give the path as '{path}#layout={r}'" for r in LAYOUTS})
            rgb = to_rgb_uint8(arr, layout=layout)
        except ValueError as e:
            if str(e).startswith("image array"):
                raise _input_error(str(e)) from e
            raise _input_error(f"image array {path!r}: {e}") from e
        images, ids = list(rgb), tuple(range(len(rgb)))
    elif os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS:
        images, ids = [_open_image(p, path)], (os.path.basename(p),)
    else:
        raise _input_error(f"image input {path!r} is neither a folder, an image file "
                           f"({', '.join(IMAGE_EXTENSIONS)}) nor a .npy array")
    if resize_to:
        images = [resize_uint8(im[None], int(resize_to))[0] for im in images]
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise _input_error(f"images in {path!r} have several sizes {sorted(shapes)[:4]}; set a resize size "
                           f"(resize_to) so they can be stacked")
    return ImageSet(name, np.stack(images).astype(np.uint8), None, ids)
