"""The model's own tokenizer behind a small interface: ``TextTokenizer``.

``load_tokenizer(path)`` takes a local Hugging Face model dir (``AutoTokenizer.from_pretrained``)
or a ``.gguf`` file (the tokenizer stored in it, via ``AutoTokenizer.from_pretrained(dir,
gguf_file=name)``; needs the ``gguf`` package, not torch). Offline only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np

SPECIAL_NAMES = ("pad", "mask", "bos", "eos", "cls", "sep")


class TextTokenizer:
    """Wraps a transformers tokenizer.

    * ``encode(texts) -> list[list[int]]``: batch, **no special tokens added**.
    * ``decode(ids, skip_special_tokens=False) -> str``.
    * ``vocab_size``: number of ids (base vocabulary + added tokens).
    * ``pad_id, mask_id, bos_id, eos_id, cls_id, sep_id``: ints, ``None`` where the tokenizer has none.
    * ``fingerprint``: hex digest of the tokenizer's content (its serialised ``tokenizer.json``,
      or the vocabulary for slow tokenizers) and special ids; the key of the token cache.
    """

    def __init__(self, hf_tokenizer, name: str = ""):
        self.hf = hf_tokenizer
        self.name = name
        ids = {k: getattr(hf_tokenizer, f"{k}_token_id", None) for k in SPECIAL_NAMES}
        self.special_ids = {k: (None if v is None else int(v)) for k, v in ids.items()}
        self._fingerprint = None

    pad_id = property(lambda self: self.special_ids["pad"])
    mask_id = property(lambda self: self.special_ids["mask"])
    bos_id = property(lambda self: self.special_ids["bos"])
    eos_id = property(lambda self: self.special_ids["eos"])
    cls_id = property(lambda self: self.special_ids["cls"])
    sep_id = property(lambda self: self.special_ids["sep"])

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """``texts``: N strings -> N lists of token ids (no BOS/CLS/SEP/EOS added)."""
        texts = list(texts)
        if not texts:
            return []
        # verbose=False: no "longer than the model maximum" warning; packing truncates, and counts it
        return [list(x) for x in self.hf(texts, add_special_tokens=False, verbose=False)["input_ids"]]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Token ids ``[L]`` (list or array) -> string."""
        return self.hf.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=skip_special_tokens)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha256()
            backend = getattr(self.hf, "backend_tokenizer", None)
            if backend is not None:
                spec = json.loads(backend.to_str())
                for k in ("truncation", "padding"):  # call-time state that transformers sets per call
                    spec.pop(k, None)
                h.update(json.dumps(spec, sort_keys=True).encode())
            else:  # slow tokenizer: its vocabulary
                h.update(json.dumps(sorted(self.hf.get_vocab().items())).encode())
            h.update(json.dumps(self.special_ids, sort_keys=True).encode())
            h.update(type(self.hf).__name__.encode())
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def __repr__(self) -> str:
        return f"TextTokenizer({self.name!r}, vocab_size={self.vocab_size}, special={self.special_ids})"


def load_tokenizer(path: str) -> TextTokenizer:
    """A local HF model dir or a ``.gguf`` file -> ``TextTokenizer`` (``FileNotFoundError`` if absent).

    The transformers tokenizer itself comes from ``checkpoints.pretrained.load_pretrained_tokenizer``,
    the one place that loads tokenizers."""
    from diffjax.checkpoints.pretrained import load_pretrained_tokenizer

    return TextTokenizer(load_pretrained_tokenizer(path), name=path)
