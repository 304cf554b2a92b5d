"""A pretrained model given as a path: a ``.gguf`` file (``checkpoints/gguf.py``) or a local Hugging Face
model dir (``checkpoints/hf.py``). The one place that tells the two apart (``is_gguf``) and loads either:
``load_pretrained(path) -> (model, params)`` and ``load_pretrained_tokenizer(path)`` (the transformers
tokenizer stored with the model). Used by ``config.init_from`` (``Task.pretrained_params``), the tasks
that take their architecture from a pretrained model, and ``data.text.load_tokenizer``.
"""

from __future__ import annotations

import os


def is_gguf(path: str) -> bool:
    """True for a ``.gguf`` file name; any other path is read as an HF model dir."""
    return str(path).endswith(".gguf")


def load_pretrained(path: str):
    """``(model, params)`` of a ``.gguf`` file or an HF dir (strict, as ``load_gguf_checkpoint`` /
    ``load_hf_checkpoint``)."""
    if is_gguf(path):
        from diffjax.checkpoints.gguf import load_gguf_checkpoint

        return load_gguf_checkpoint(path)
    from diffjax.checkpoints.hf import load_hf_checkpoint

    return load_hf_checkpoint(path)


def load_pretrained_tokenizer(path: str):
    """The transformers tokenizer of a ``.gguf`` file or an HF dir (``~`` expanded); ``FileNotFoundError``
    naming ``path`` when it is neither."""
    p = os.path.expanduser(path)
    if is_gguf(p):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"GGUF file {path!r} does not exist")
        from diffjax.checkpoints.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(p)
    if not os.path.isdir(p):
        raise FileNotFoundError(f"tokenizer {path!r} is neither a model directory nor a .gguf file")
    from diffjax.checkpoints.hf import load_tokenizer

    return load_tokenizer(p)
