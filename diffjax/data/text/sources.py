"""Source strings -> one ``TextSource`` interface: a cheap ``fingerprint()`` and ``read()`` ->
``TextExamples`` (``{prompt, target}`` strings).

A source string is one of

* ``"tfds:NAME"`` (e.g. ``"tfds:wmt14_translate/de-en"``): ``tfds.data_source`` on array_record
  data in ``data_dir``; ``split`` is passed to tfds (slices work);
* a path ending in ``.jsonl`` / ``.tsv`` / ``.txt`` (see ``files``);
* ``"embedded:NAME"``: an embedded corpus (``movie_reviews``, ``news_headlines``, ``hamlet``,
  ``debates``; see ``embedded``).

For files and embedded corpora ``split`` is ``"train"`` or a slice of it (``"train[:90%]"``),
taken in file order. ``max_examples`` keeps the first ``max_examples`` of the split.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

from diffjax.data.text import embedded, files, tfds_text
from diffjax.data.text.examples import TextExamples, split_slice


@dataclasses.dataclass(frozen=True)
class TextSource:
    """A parsed source string plus its options (see the module docstring). Build with ``parse_source``."""

    kind: str  # "tfds" | "jsonl" | "tsv" | "txt" | "embedded"
    location: str  # tfds name, file path or corpus name
    split: str = "train"
    data_dir: str | None = None
    prompt_field: str | None = None
    target_field: str | None = None
    max_examples: int | None = None

    @property
    def spec(self) -> str:
        return f"{self.kind}:{self.location}" if self.kind in ("tfds", "embedded") else self.location

    def fingerprint(self) -> str:
        """Hex digest identifying this data without parsing it: the source, split, fields and
        ``max_examples`` plus a sha256 of the file's bytes (tfds: of every file of the prepared
        dataset), so any edit changes it, even one that keeps the size and mtime (``cp -p``, ``rsync -t``)."""
        if self.kind == "tfds":
            content = tfds_text.fingerprint(self.location, self.split, self.data_dir)
        else:
            p = files.check_file(self.location) if self.kind != "embedded" else embedded.corpus_path(self.location)
            content = files.file_digest(p)
        key = repr((self.kind, self.location, self.split, self.prompt_field, self.target_field,
                    self.max_examples, content))
        return hashlib.sha256(key.encode()).hexdigest()

    def read(self) -> TextExamples:
        """Reads the examples (missing file: ``FileNotFoundError``; no examples: ``ValueError``)."""
        if self.kind == "tfds":
            ex = tfds_text.read_tfds(self.location, self.split, self.data_dir, prompt_field=self.prompt_field,
                                     target_field=self.target_field or "text")
        else:
            if self.kind == "jsonl":
                ex = files.read_jsonl(self.location, prompt_field=self.prompt_field or "prompt",
                                      target_field=self.target_field or "target")
            elif self.kind == "tsv":
                ex = files.read_tsv(self.location)
            elif self.kind == "txt":
                ex = files.read_txt(self.location)
            else:
                ex = embedded.read_embedded(self.location, prompt_field=self.prompt_field,
                                            target_field=self.target_field)
            s = split_slice(self.split, len(ex), source=self.spec)
            ex = TextExamples(ex.name, list(ex.prompts)[s], list(ex.targets)[s])
        if self.max_examples is not None:
            ex = TextExamples(ex.name, list(ex.prompts)[: self.max_examples], list(ex.targets)[: self.max_examples])
        if len(ex) == 0:
            raise ValueError(f"text source {self.spec!r} split {self.split!r} selects no examples")
        return ex


def parse_source(spec: str, *, split: str = "train", data_dir: str | None = None, prompt_field: str | None = None,
                 target_field: str | None = None, max_examples: int | None = None) -> TextSource:
    """``"tfds:NAME"`` / ``PATH.{jsonl,tsv,txt}`` / ``"embedded:NAME"`` -> ``TextSource``.

    Unknown forms raise ``ValueError`` listing the accepted ones; a missing file is reported by
    ``read()`` / ``fingerprint()`` (``FileNotFoundError`` naming it).
    """
    opts = dict(split=split, data_dir=data_dir, prompt_field=prompt_field, target_field=target_field,
                max_examples=max_examples)
    if spec.startswith("tfds:"):
        return TextSource("tfds", spec[len("tfds:"):], **opts)
    if spec.startswith("embedded:"):
        name = spec[len("embedded:"):]
        if name not in embedded.CORPORA:
            raise ValueError(f"unknown embedded corpus {name!r} in {spec!r}; known: "
                             f"{', '.join('embedded:' + n for n in sorted(embedded.CORPORA))}")
        return TextSource("embedded", name, **opts)
    ext = os.path.splitext(spec)[1].lower()
    if ext in files.FORMATS:
        if ext != ".jsonl" and (prompt_field or target_field):
            raise ValueError(f"{spec}: prompt_field / target_field apply to .jsonl, tfds and embedded sources only "
                             f"(.tsv is prompt<TAB>target, .txt is one target a line)")
        return TextSource(ext[1:], spec, **opts)
    raise ValueError(f"text source {spec!r} not understood; expected 'tfds:NAME', a path ending in "
                     f"{'/'.join(files.FORMATS)}, or 'embedded:NAME' ({', '.join(sorted(embedded.CORPORA))})")


def read_examples(spec: str, **options) -> TextExamples:
    """``parse_source(spec, **options).read()``."""
    return parse_source(spec, **options).read()
