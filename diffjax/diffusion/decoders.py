"""The decoders of the text generation tasks, by name: one table, ``DECODERS``, name -> the sampler
(``diffusion/discrete_sampling.py``) and the config fields it takes. Both text tasks (``masked_lm``,
paper 002; ``ar2diff``, paper 001) pick their decoder here and their config validators draw the valid
names from it, so a typo'd ``decoder`` fails before anything trains.

* ``topk`` / ``ancestral`` / ``threshold`` / ``block``: absorbing (masked) diffusion, from [MASK]
  (``corruption="absorbing"``: they take ``mask_id``); ``unmask_sample(name, ...)`` runs one by name.
* ``refine``: paper 001's refinement from uniform random tokens (``corruption="uniform"``: they take
  ``vocab_size``).
* ``block`` takes ``cache = "none" | "prefix" | "dual"`` and ``cache_refresh = "block" | "step"``: Fast-dLLM's
  approximate K/V cache (``diffusion/cached_decoding.py``); a cache needs the task's ``CachedLogits``.
* ``ar``: left-to-right decoding by the model itself (a KV cache where the model has one); its sampler
  is the task's, since it needs the model (``sampler=None`` here; ``corruption="none"``).

``sampler_kwargs(name, fields)`` turns the config fields a decoder takes (those ``fields`` holds: a
typed task config, a ``config.task`` or any mapping) into its keyword arguments, with their Python types
(``num_steps`` an int: it fixes a scan length).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

from diffjax.diffusion import cached_decoding as cd
from diffjax.diffusion import discrete_sampling as ds

UNMASK_SCHEDULES = ("linear", "cosine")


@dataclasses.dataclass(frozen=True)
class Decoder:
    """``sampler(logits_fn, x_init [B, L] int, rng, **kwargs)`` (None: the model's own AR decoding), the
    config fields it takes (``options``) and the corruption it undoes ("absorbing", "uniform", "none")."""

    sampler: Optional[Callable]
    options: tuple[str, ...]
    corruption: str


_CHOICE = ("num_steps", "greedy", "temperature", "top_p")  # the token choice every absorbing decoder takes
DECODERS: dict[str, Decoder] = {
    "topk": Decoder(ds.topk_unmask_sample, _CHOICE + ("remask", "unmask_schedule"), "absorbing"),
    "ancestral": Decoder(ds.ancestral_unmask_sample, _CHOICE, "absorbing"),
    "threshold": Decoder(ds.threshold_unmask_sample, _CHOICE + ("threshold",), "absorbing"),
    "block": Decoder(cd.block_sample, _CHOICE + ("num_blocks", "block_inner", "cache", "cache_refresh"), "absorbing"),
    "refine": Decoder(ds.iterative_refinement_sample, ("num_steps", "temperature", "num_samples", "greedy"), "uniform"),
    "ar": Decoder(None, ("max_new_tokens",), "none"),
}
BLOCK_INNER = tuple(ds.BLOCK_INNER)  # the decoders ``block`` runs inside a block
CACHE_MODES = cd.CACHE_MODES  # ``cache``: the K/V cache of the decoders that proceed in blocks
CACHE_REFRESH = cd.CACHE_REFRESH  # ``cache_refresh``: when that cache is remade

_TYPES = {"num_steps": int, "num_blocks": int, "num_samples": int, "max_new_tokens": int, "temperature": float,
          "threshold": float, "greedy": bool, "remask": bool, "top_p": lambda v: float(v) or None}


def names(*corruptions: str) -> tuple[str, ...]:
    """The decoder names undoing one of ``corruptions`` (all when none given), in table order."""
    return tuple(n for n, d in DECODERS.items() if not corruptions or d.corruption in corruptions)


def cached() -> tuple[str, ...]:
    """The decoders that take a K/V cache (``cache`` among their options: those that proceed in blocks)."""
    return tuple(n for n, d in DECODERS.items() if "cache" in d.options)


def decoder(name: str) -> Decoder:
    """``DECODERS[name]``; an unknown name is a ``ValueError`` listing the valid ones."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder {name!r}; choose one of {sorted(DECODERS)}.")
    return DECODERS[name]


def sampler_kwargs(name: str, fields: Mapping) -> dict:
    """The keyword arguments of decoder ``name`` from the config ``fields`` it takes (a field ``fields``
    lacks keeps the sampler's default). ``block``: ``block_inner`` becomes ``inner``, with the inner
    decoder's own field (``threshold``; ``remask`` / ``unmask_schedule`` for topk). ``fields``: a mapping
    or a dataclass (a typed task config; its attributes)."""
    if dataclasses.is_dataclass(fields):
        fields = {f.name: getattr(fields, f.name) for f in dataclasses.fields(fields)}
    kw = {k: _TYPES.get(k, lambda v: v)(fields[k]) for k in decoder(name).options if k in fields}
    if name == "block" and "block_inner" in kw:
        inner = kw.pop("block_inner")
        kw["inner"] = inner
        if inner == "threshold" and "threshold" in fields:
            kw["threshold"] = float(fields["threshold"])
        if inner == "topk":
            kw.update({k: _TYPES.get(k, lambda v: v)(fields[k]) for k in ("remask", "unmask_schedule") if k in fields})
    return kw


def unmask_sample(name: str, logits_fn, x_init, rng, **kwargs):
    """Absorbing decoder ``name``: ``DECODERS[name].sampler(logits_fn, x_init, rng, **kwargs)``.

    Every absorbing decoder takes ``mask_id``, ``num_steps``, ``corruptible``, ``valid``, ``temperature``,
    ``greedy``, ``top_p``, ``return_history`` and ``return_scores`` (block decoding passes the token-choice
    ones to its inner decoder); see each one for its own options.
    """
    if decoder(name).corruption != "absorbing":
        raise ValueError(f"unknown decoder {name!r} for masked tokens; choose one of {sorted(names('absorbing'))}.")
    return DECODERS[name].sampler(logits_fn, x_init, rng, **kwargs)
