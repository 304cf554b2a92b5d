"""DLSR's image sets (paper 003): ``config.task.data`` -> ID train, ID test and the OOD ``ImageSet``s.

``data.kind``: ``"mnist_demo"`` (``diffjax.data.demo_sets``: the embedded digits, offline),
``"tfds"`` (``data.id_name`` splits and ``data.ood`` specs ``"name[:split]"``) or ``"files"`` (the user's
own ID images: ``data.id_train`` / ``data.id_test``, folders or .npy arrays); the user's OOD sets of
``data.user_ood`` are added to any kind (``diffjax.data.images.load_user_images``).
"""

from __future__ import annotations

from diffjax.data.images import ImageSet, load_user_images


def load_sets(data, image_size: int | None = None) -> tuple[ImageSet, ImageSet, dict[str, ImageSet]]:
    """``config.task.data`` -> (ID train, ID test, {ood_name: ImageSet}), plus the user's own OOD
    sets of ``data.user_ood`` (folders / .npy, resized to ``user_image_size`` or ``image_size``)."""
    train, test, ood = _builtin_sets(data, image_size)
    size = int(data.user_image_size) or image_size
    for spec in data.user_ood:
        s = load_user_images(spec, resize_to=size)
        ood[s.name] = s
    return train, test, ood


def _builtin_sets(data, image_size):
    if data.kind == "files":  # the user's own ID images
        size = int(data.user_image_size) or image_size
        if not data.id_train or not data.id_test:
            raise ValueError("task.data.kind='files' needs task.data.id_train and task.data.id_test (image folders "
                             "or .npy arrays)")
        return (load_user_images(data.id_train, resize_to=size, name="id_train"),
                load_user_images(data.id_test, resize_to=size, name="id_test"), {})
    if data.kind == "mnist_demo":
        from diffjax.data.demo_sets import dlsr_mnist_demo_sets

        return dlsr_mnist_demo_sets(n_train=data.n_train, n_test=data.n_test, n_ood=data.n_ood, seed=data.seed,
                                    patch_size=data.patch_size)
    if data.kind == "tfds":
        from diffjax.data.images import load_tfds

        def one(spec, n, default_split):
            name, _, split = spec.partition(":")
            return load_tfds(name, split or default_split, data.data_dir or None, image_key=data.image_key,
                             max_examples=n or None, resize_to=data.resize_to or None, set_name=spec)

        train = one(f"{data.id_name}:{data.id_train_split}", data.n_train, "train")
        test = one(f"{data.id_name}:{data.id_test_split}", data.n_test, "test")
        ood = {spec.partition(":")[0]: one(spec, data.n_ood, "test") for spec in data.ood}
        return train, test, ood
    raise ValueError(f"unknown task.data.kind {data.kind!r}; expected 'mnist_demo', 'tfds' or 'files'")
