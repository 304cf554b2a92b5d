"""Tokenise once, cache on disk: ``tokenize_cached(source, tokenizer, cache_dir=...)``.

Token arrays are ragged (``RaggedTokens``: flat ``ids [T] int32`` + ``offsets [N + 1] int64``),
one for the prompts and one for the targets, stored in ``cache_dir/tokens-<key>.npz``, where
``key`` hashes the data's fingerprint (``TextSource.fingerprint()``: source, split, fields and a
sha256 of the file's bytes -- its content, never its size or mtime; or a content hash of in-memory
``TextExamples``) and the tokenizer's (``TextTokenizer.fingerprint``). A rerun with the same data
and tokenizer loads the file and neither parses the text nor calls the tokenizer. Files are written
atomically (tmp + ``os.replace``), so concurrent processes at worst tokenise twice.

A cache file is validated on load (``read_token_cache``), as the weight readers validate theirs:
exactly the five arrays written here, each header's dtype and shape checked against the bytes the
zip member holds before anything is allocated, offsets that start at 0, never decrease and end at
the number of ids, prompts and targets of the same count, ids in ``[0, vocab_size)``. A file that
fails is refused with ``TokenCacheError`` naming it (delete it to tokenise again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import zipfile
from typing import Sequence

import numpy as np

from diffjax.data.text.examples import TextExamples
from diffjax.data.text.lines import TextInputError
from diffjax.data.text.sources import TextSource
from diffjax.data.text.tokenizer import TextTokenizer

CACHE_VERSION = 2  # 2: files keyed on a hash of their bytes (was size + mtime)


class TokenCacheError(TextInputError):
    """A token cache ``.npz`` that is not one this module wrote (truncated, crafted, inconsistent)."""


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


_ARRAYS = {"prompt_ids": "i4", "prompt_offsets": "i8", "target_ids": "i4", "target_offsets": "i8", "name": "U"}


def _member(zf: zipfile.ZipFile, name: str, file_size: int) -> np.ndarray:
    """One ``.npy`` member, its header checked against the member's size before reading the data."""
    info = zf.getinfo(name + ".npy")
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:  # np.savez stores, never deflates
        raise ValueError(f"member {info.filename!r} is compressed or larger than the file ({info.file_size} bytes)")
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
        kind = _ARRAYS[name]
        if dtype.hasobject or dtype.byteorder == ">" or (dtype.kind + str(dtype.itemsize) != kind and
                                                        not (kind == "U" and dtype.kind == "U")):
            raise ValueError(f"array {name!r} has dtype {dtype}; expected {np.dtype(kind) if kind != 'U' else 'str'}")
        if len(shape) != (0 if kind == "U" else 1) or fortran:
            raise ValueError(f"array {name!r} has shape {shape}; expected {'a scalar' if kind == 'U' else '1-d'}")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * dtype.itemsize
        if nbytes != info.file_size - f.tell():
            raise ValueError(f"array {name!r} declares {shape} {dtype} ({nbytes} bytes) but the file holds "
                             f"{info.file_size - f.tell()} bytes of data")
        data = f.read(nbytes)
        if len(data) != nbytes or f.read(1):
            raise ValueError(f"array {name!r}: {len(data)} of {nbytes} bytes of data")
    return np.frombuffer(bytearray(data), dtype).reshape(shape)


def _check_ragged(part: str, ids: np.ndarray, offsets: np.ndarray, vocab_size: int | None) -> None:
    if offsets.size == 0 or offsets[0] != 0:
        raise ValueError(f"{part}_offsets must start at 0 (got {offsets[:1].tolist()})")
    step = np.diff(offsets)
    if (step < 0).any():
        i = int(np.argmax(step < 0))
        raise ValueError(f"{part}_offsets decrease at example {i} ({int(offsets[i])} -> {int(offsets[i + 1])})")
    if offsets[-1] != ids.size:
        raise ValueError(f"{part}_offsets end at {int(offsets[-1])} but there are {ids.size} {part} ids")
    if ids.size and (int(ids.min()) < 0 or (vocab_size is not None and int(ids.max()) >= vocab_size)):
        bad = int(ids.min()) if int(ids.min()) < 0 else int(ids.max())
        raise ValueError(f"{part} token id {bad} is outside the tokenizer's vocabulary [0, {vocab_size})")


def read_token_cache(path: str, key: str = "", vocab_size: int | None = None) -> TokenizedExamples:
    """A token cache file -> ``TokenizedExamples``, validated (module docstring); ``TokenCacheError``
    naming the file otherwise. ``vocab_size``: the tokenizer's, bounding the ids (``None``: not checked)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = sorted(zf.namelist())
            if names != sorted(n + ".npy" for n in _ARRAYS):
                raise ValueError(f"it holds {names[:8]}; expected {sorted(n + '.npy' for n in _ARRAYS)}")
            a = {n: _member(zf, n, os.path.getsize(path)) for n in _ARRAYS}
        for part in ("prompt", "target"):
            _check_ragged(part, a[f"{part}_ids"], a[f"{part}_offsets"], vocab_size)
        if a["prompt_offsets"].size != a["target_offsets"].size:
            raise ValueError(f"{a['prompt_offsets'].size - 1} prompts but {a['target_offsets'].size - 1} targets")
    except Exception as e:  # noqa: BLE001  (zipfile / numpy header parsing raise many types)
        raise TokenCacheError(f"token cache {path} is not a valid cache file ({type(e).__name__}: {e}); it is "
                              f"corrupt or was not written by diffjax: delete it to tokenise again") from e
    return TokenizedExamples(RaggedTokens(a["prompt_ids"], a["prompt_offsets"]),
                             RaggedTokens(a["target_ids"], a["target_offsets"]), key, str(a["name"]))


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
        return read_token_cache(path, key, getattr(tokenizer, "vocab_size", None))
    examples = data.read() if isinstance(data, TextSource) else data
    tok = tokenize(examples, tokenizer, chunk_size=chunk_size, key=key)
    if path is not None:
        _save(path, tok)
    return tok
