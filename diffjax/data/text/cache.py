"""Tokenise once, cache on disk: ``tokenize_cached(source, tokenizer, cache_dir=...)``.

Token arrays are ragged (``RaggedTokens``: flat ``ids [T] int32`` + ``offsets [N + 1] int64``),
one for the prompts and one for the targets, stored in ``cache_dir/tokens-<key>.npz``, where
``key`` hashes the data's fingerprint (``TextSource.fingerprint()``: source, split, fields,
file size + mtime; or a content hash of in-memory ``TextExamples``) and the tokenizer's
(``TextTokenizer.fingerprint``). A rerun with the same data and tokenizer loads the file and
neither reads the text nor calls the tokenizer. Files are written atomically (tmp + ``os.replace``),
so concurrent processes at worst tokenise twice; an unreadable cache file is re-made.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from typing import Sequence

import numpy as np

from diffjax.data.text.examples import TextExamples
from diffjax.data.text.sources import TextSource
from diffjax.data.text.tokenizer import TextTokenizer

log = logging.getLogger(__name__)
CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class RaggedTokens:
    """``N`` token sequences: example ``i`` is ``ids[offsets[i]:offsets[i + 1]]``.

    ids: [T] int32; offsets: [N + 1] int64 (``offsets[0] == 0``, ``offsets[-1] == T``).
    """

    ids: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_lists(cls, seqs: Sequence[Sequence[int]]) -> "RaggedTokens":
        lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
        offsets = np.zeros(len(seqs) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.fromiter((t for s in seqs for t in s), np.int32, int(offsets[-1]))
        return cls(ids, offsets)

    @property
    def lengths(self) -> np.ndarray:
        """[N] int64."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


@dataclasses.dataclass(frozen=True)
class TokenizedExamples:
    """Prompt and target token ids of ``N`` examples (no special tokens), and the cache key."""

    prompt: RaggedTokens
    target: RaggedTokens
    key: str
    name: str = ""

    def __len__(self) -> int:
        return len(self.target)


def examples_fingerprint(ex: TextExamples) -> str:
    """Content hash of in-memory examples."""
    h = hashlib.sha256()
    for p, t in zip(ex.prompts, ex.targets):
        h.update(p.encode())
        h.update(b"\x00")
        h.update(t.encode())
        h.update(b"\x01")
    return h.hexdigest()


def cache_key(data_fingerprint: str, tokenizer_fingerprint: str) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}|{data_fingerprint}|{tokenizer_fingerprint}".encode()).hexdigest()[:32]


def _encode(texts: Sequence[str], tokenizer: TextTokenizer, chunk_size: int) -> RaggedTokens:
    out: list[list[int]] = []
    for i in range(0, len(texts), chunk_size):
        out.extend(tokenizer.encode(texts[i:i + chunk_size]))
    return RaggedTokens.from_lists(out)


def tokenize(examples: TextExamples, tokenizer: TextTokenizer, *, chunk_size: int = 1024, key: str = "") -> TokenizedExamples:
    """Tokenises prompts and targets (no caching). Empty prompts are not sent to the tokenizer."""
    prompts = list(examples.prompts)
    if any(prompts):
        prompt = _encode(prompts, tokenizer, chunk_size)
    else:
        prompt = RaggedTokens(np.zeros(0, np.int32), np.zeros(len(prompts) + 1, np.int64))
    return TokenizedExamples(prompt, _encode(list(examples.targets), tokenizer, chunk_size), key, examples.name)


def _save(path: str, tok: TokenizedExamples) -> None:
    d = os.path.dirname(path)
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, prompt_ids=tok.prompt.ids, prompt_offsets=tok.prompt.offsets, target_ids=tok.target.ids,
                     target_offsets=tok.target.offsets, name=np.asarray(tok.name))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _load(path: str, key: str) -> TokenizedExamples | None:
    try:
        with np.load(path) as z:
            return TokenizedExamples(RaggedTokens(z["prompt_ids"], z["prompt_offsets"]),
                                     RaggedTokens(z["target_ids"], z["target_offsets"]), key, str(z["name"]))
    except Exception as e:  # truncated / foreign file: re-make it
        log.warning("token cache %s unreadable (%s); tokenising again", path, e)
        return None


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(os.path.expanduser(cache_dir), f"tokens-{key}.npz")


def tokenize_cached(data: TextSource | TextExamples, tokenizer: TextTokenizer, *, cache_dir: str | None,
                    chunk_size: int = 1024) -> TokenizedExamples:
    """Token ids of ``data`` from ``cache_dir`` if present, else tokenised and stored there.

    ``data``: a ``TextSource`` (fingerprinted without reading it; read only on a cache miss) or
    in-memory ``TextExamples`` (content-hashed). ``cache_dir=None``: tokenise, store nothing.
    """
    if isinstance(data, TextSource):
        key = cache_key(data.fingerprint(), tokenizer.fingerprint)
    else:
        key = cache_key(examples_fingerprint(data), tokenizer.fingerprint)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and os.path.isfile(path):
        hit = _load(path, key)
        if hit is not None:
            return hit
    examples = data.read() if isinstance(data, TextSource) else data
    tok = tokenize(examples, tokenizer, chunk_size=chunk_size, key=key)
    if path is not None:
        _save(path, tok)
    return tok
