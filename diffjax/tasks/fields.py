"""Config fields checked before anything runs (design.md conventions 1 and 10).

``ConfigError`` (``diffjax.errors``) is the one error of a config field outside its valid range: one
line naming the field, its value, the valid range and the flag to change. The trainer's fields are
checked by ``diffjax.train.validate.validate_config``. Each task declares its ``config.task`` fields
as a typed config: a frozen dataclass on ``TaskConfig`` with one ``field(check, default, doc)`` per
field (the ``Check`` builders below: ``integer``, ``number``, ``choice``, ...), cross-field rules in
``check()``, and ``RENAMED`` for removed fields; ``register_task(name, config=...)`` builds it once
(``from_config``) before any data, tokenizer or weights load, and before a checkpoint is restored
(``eval`` / ``sweep`` / ``generate`` / ``score`` with ``--config.task.x=...`` overrides).
``check_fields`` checks a table of ``(field, Check)`` rows on a ConfigDict (the older route, still
open to a task outside diffjax via ``register_task(name, validate=...)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, NamedTuple

import numpy as np

from diffjax.errors import ConfigError  # noqa: F401 (raised here; importers use F.ConfigError)


class Check(NamedTuple):
    """``ok(value) -> bool`` and the valid range in words (``expected``)."""

    ok: Callable[[Any], bool]
    expected: str


def require(ok: bool, field: str, value, expected: str) -> None:
    """Raises ``ConfigError`` naming ``config.<field>``, ``value`` and the ``expected`` range unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{field}={value!r} is invalid: expected {expected} (--config.{field}=...)")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return (isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
            and math.isfinite(float(v)))


def integer(low: int | None = None, high: int | None = None, what: str = "") -> Check:
    """An integer in [low, high] (either bound may be None)."""
    if low is not None and high is not None:
        text = f"an integer in [{low}, {high}]"
    elif low is not None:
        text = f"an integer >= {low}"
    elif high is not None:
        text = f"an integer <= {high}"
    else:
        text = "an integer"
    return Check(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high),
                 text + (f" ({what})" if what else ""))


def number(low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False,
           what: str = "") -> Check:
    """A finite number in the interval from ``low`` to ``high`` (open ends as given; inf is always open)."""
    high_open = high_open or math.isinf(high)
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    return Check(lambda v: _is_number(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high),
                 f"a finite number in {lo}{low}, {high}{hi}" + (f" ({what})" if what else ""))


def boolean() -> Check:
    return Check(lambda v: isinstance(v, (bool, np.bool_)), "True or False")


def text(nonempty: bool = False, what: str = "") -> Check:
    return Check(lambda v: isinstance(v, str) and (bool(v.strip()) or not nonempty),
                 ("a non-empty string" if nonempty else "a string") + (f" ({what})" if what else ""))


def choice(*options) -> Check:
    return Check(lambda v: isinstance(v, str) and v in options, "one of " + ", ".join(repr(o) for o in options))


def texts(options=None, nonempty: bool = False) -> Check:
    """A tuple / list of strings (each one of ``options`` when given)."""
    def ok(v):
        return (isinstance(v, (tuple, list)) and (len(v) > 0 or not nonempty)
                and all(isinstance(s, str) and s and (options is None or s in options) for s in v))
    what = "a tuple of non-empty strings" if options is None else "a tuple of names from " + ", ".join(map(repr, options))
    return Check(ok, ("a non-empty " + what[2:]) if nonempty else what)


def lengths(low: int, what: str = "") -> Check:
    """A non-empty tuple of strictly increasing integers >= ``low`` (static sequence lengths)."""
    def ok(v):
        return (isinstance(v, (tuple, list)) and len(v) > 0 and all(_is_int(b) and b >= low for b in v)
                and list(v) == sorted(set(v)))
    return Check(ok, f"a non-empty tuple of strictly increasing integers >= {low}" + (f" ({what})" if what else ""))


def timesteps(num_steps: int, nonempty: bool = True) -> Check:
    """A tuple of diffusion timesteps in [1, num_steps]."""
    def ok(v):
        return (isinstance(v, (tuple, list)) and (len(v) > 0 or not nonempty)
                and all(_is_int(t) and 1 <= t <= num_steps for t in v))
    return Check(ok, f"a {'non-empty ' if nonempty else ''}tuple of integer timesteps in [1, {num_steps}]")


def _model_value(v) -> bool:
    if isinstance(v, (bool, np.bool_, str)) or v is None:
        return True
    if isinstance(v, (tuple, list)):
        return all(_model_value(x) for x in v)
    return _is_number(v) and v >= 0


_MAPPING = Check(lambda v: v is None or (hasattr(v, "items") and all(_model_value(x) for x in v.values())),
                 "a ConfigDict of model fields (or empty)")


def mapping() -> Check:
    """A ConfigDict of model overrides: each value a non-negative integer / finite number (sizes, ids,
    rates), a bool, a string or None (``check_fields`` names the offending key)."""
    return _MAPPING


_MODEL_VALUE = Check(_model_value, "a non-negative integer or finite number (a model size, token id or rate), "
                                   "a bool or a string")


def get(cfg, field: str, default=None):
    """``cfg.a.b`` for ``field="a.b"``; ``default`` when a part is missing."""
    node = cfg
    for part in field.split("."):
        try:
            node = node[part]
        except (KeyError, AttributeError, TypeError):
            return default
    return node


_MISSING = object()


def check_fields(cfg, table, prefix: str = "task") -> None:
    """Checks each ``(field, Check)`` row of ``table`` on ``cfg`` (``config.<prefix>``), in order.
    A field the config does not hold is skipped (the task reads it where used)."""
    for field, check in table:
        value = get(cfg, field, _MISSING)
        if value is not _MISSING:
            check_value(check, value, f"{prefix}.{field}")


def check_value(check: Check, value, field: str) -> None:
    """``require(check.ok(value), field, ...)``; a ``mapping()`` names its offending key (``field.key``)."""
    if check is _MAPPING and hasattr(value, "items"):
        for key, v in value.items():
            require(_model_value(v), f"{field}.{key}", v, _MODEL_VALUE.expected)
    require(check.ok(value), field, value, check.expected)


# ----------------------------------------------------------------------------- typed task configs


def field(check: Check, default: Any = None, doc: str = "", *, nested: type | None = None):
    """One field of a ``TaskConfig``: its ``Check``, its default (``None`` = required) and a line of docs.
    ``nested=SubConfig`` (a ``TaskConfig`` subclass) reads a sub-ConfigDict into that class."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc, "nested": nested})


def _frozen(value):
    """ConfigDict values -> immutable Python values (lists -> tuples)."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    return value


class TaskConfig:
    """Base of a task's typed config (levanter-style): a ``@dataclasses.dataclass(frozen=True)``
    subclass with one attribute per ``config.task`` field, each declared with ``field(check, default,
    doc)``. ``from_config(config.task)`` builds it once and validates it at construction, before any
    data, tokenizer or weights load: a field missing from the class (a typo, a field of an old
    release) or a value outside its range raises ``ConfigError`` with the field, the value and the
    valid choices. Cross-field rules go in ``check(self)``. The ml_collections config files and
    ``--config.task.x=...`` overrides stay as they are; the task reads ``cfg.x`` as before.

    ``RENAMED``: ``{old field: what replaces it}``; an old config that still sets one fails with one
    line naming the new field."""

    RENAMED: dict = {}

    @classmethod
    def from_config(cls, c, prefix: str = "task"):
        known = {f.name: f for f in dataclasses.fields(cls)}
        given = dict(c.items()) if c is not None else {}
        for key in given:
            if key in cls.RENAMED:
                raise ConfigError(f"config.{prefix}.{key} was removed: {cls.RENAMED[key]}")
            if key not in known:
                near = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {prefix}.{near[0]}?" if near else ""
                raise ConfigError(f"config.{prefix}.{key} is not a field of the {cls.__name__}: valid fields are "
                                  f"{', '.join(sorted(known))}{hint}")
        values = {}
        for name, f in known.items():
            meta = f.metadata
            if name not in given:
                if f.default is None and meta.get("check") is not None and not meta["check"].ok(None):
                    raise ConfigError(f"config.{prefix}.{name} is missing: expected {meta['check'].expected}")
                values[name] = f.default
                continue
            value = given[name]
            if meta.get("nested") is not None:
                values[name] = meta["nested"].from_config(value, prefix=f"{prefix}.{name}")
                continue
            if meta.get("check") is not None:
                check_value(meta["check"], value, f"{prefix}.{name}")
            values[name] = _frozen(value)
        out = cls(**values)
        out.check()
        return out

    def check(self) -> None:
        """Cross-field rules (``require(...)``); default: none."""

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """``(field, valid range, doc)`` rows: the schema a user reads."""
        def valid(meta) -> str:
            if meta.get("check") is not None:
                return meta["check"].expected
            return meta["nested"].__name__ if meta.get("nested") is not None else "see check()"

        return [(f.name, valid(f.metadata), f.metadata.get("doc", "")) for f in dataclasses.fields(cls)]
