"""Source string + tokenizer -> ``TextBatcher`` in one call (read, tokenise with cache, pack, batch)."""

from __future__ import annotations

from typing import Sequence

from diffjax.data.text.batches import TextBatcher
from diffjax.data.text.cache import tokenize_cached
from diffjax.data.text.packing import Packer, PackingFormat
from diffjax.data.text.sources import parse_source
from diffjax.data.text.tokenizer import TextTokenizer, load_tokenizer


def load_text_batcher(source: str, tokenizer: TextTokenizer | str, *, split: str = "train",
                      data_dir: str | None = None, prompt_field: str | None = None,
                      target_field: str | None = None, max_examples: int | None = None,
                      cache_dir: str | None = None, buckets: Sequence[int] = (32, 64, 128),
                      style: str | PackingFormat = "auto", seed: int = 0) -> TextBatcher:
    """``parse_source`` -> ``tokenize_cached`` -> ``Packer`` -> ``TextBatcher``.

    ``tokenizer``: a ``TextTokenizer`` or a path for ``load_tokenizer`` (HF dir / .gguf file);
    ``style``: a ``PackingFormat`` or a ``PackingFormat.for_tokenizer`` style name.
    """
    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    src = parse_source(source, split=split, data_dir=data_dir, prompt_field=prompt_field,
                       target_field=target_field, max_examples=max_examples)
    tokenized = tokenize_cached(src, tok, cache_dir=cache_dir)
    fmt = style if isinstance(style, PackingFormat) else PackingFormat.for_tokenizer(tok, style)
    return TextBatcher(Packer(tokenized, fmt, buckets), seed=seed)
