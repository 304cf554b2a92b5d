"""tfds text data -> ``TextExamples`` through ``tfds.data_source`` (array_record; no TensorFlow).

Text features come back as ``bytes``; they are decoded as UTF-8. Field names are the dataset's
feature names, e.g. ``wmt14_translate/de-en`` has ``de`` and ``en``: ``prompt_field="de",
target_field="en"``.
"""

from __future__ import annotations

import hashlib
import os

from diffjax.data.text.examples import TextExamples, from_records
from diffjax.data.text.files import file_digest


def _how(name: str) -> str:
    return (f"Prepare it once where network is available: tfds build {name} --file_format=array_record "
            f"--data_dir=DIR, then pass data_dir=DIR. Data prepared as tfrecord needs TensorFlow "
            f"(pip install tensorflow) or a rebuild with --file_format=array_record.")


def open_source(name: str, split: str, data_dir: str | None):
    """``tfds.data_source(name, split=split, data_dir=data_dir)``; failures raise ``FileNotFoundError``."""
    import tensorflow_datasets as tfds

    if data_dir is not None and not os.path.isdir(os.path.expanduser(data_dir)):
        raise FileNotFoundError(f"tfds data_dir {data_dir!r} does not exist (dataset {name!r}). {_how(name)}")
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # tfds raises several types (AssertionError, DatasetNotFoundError, ...)
        raise FileNotFoundError(f"could not open tfds dataset {name!r} split {split!r} in data_dir {data_dir!r} "
                                f"as array_record ({type(e).__name__}: {e}). {_how(name)}") from e


def fingerprint(name: str, split: str, data_dir: str | None) -> str:
    """Identity of the prepared data: names and sha256 of the contents of the dataset's files."""
    import tensorflow_datasets as tfds

    try:
        d = tfds.builder(name, data_dir=data_dir).data_dir
        stats = sorted((f, file_digest(os.path.join(d, f))) for f in os.listdir(d)
                       if os.path.isfile(os.path.join(d, f)))
    except Exception as e:
        raise FileNotFoundError(f"tfds dataset {name!r} not found in data_dir {data_dir!r} ({e}). {_how(name)}") from e
    return hashlib.sha256(repr((d, stats)).encode()).hexdigest()


def read_tfds(name: str, split: str = "train", data_dir: str | None = None, *, prompt_field: str | None = None,
              target_field: str = "text") -> TextExamples:
    """All examples of ``split`` (tfds slicing such as ``"train[:1000]"`` works) in the source's order."""
    source = open_source(name, split, data_dir)
    n = len(source)
    if n == 0:
        raise ValueError(f"tfds dataset {name!r} split {split!r} in {data_dir!r} has no examples")
    records = source.__getitems__(list(range(n))) if hasattr(source, "__getitems__") else [source[i] for i in range(n)]
    return from_records(f"tfds:{name}:{split}", records, prompt_field=prompt_field, target_field=target_field)
