"""Search-space entries as a study file writes them, and their checks against the catalogue.

Every entry of ``search:`` takes one of three forms::

    dropout: 0.2                                 # fixed
    head_width: [64, 128, 256]                   # categorical choice
    lr_stage1: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range (int if both ends are ints)

A numeric parameter may also take the words its catalogue entry names (``unfreeze_blocks: all``),
fixed or among the choices. The checks here need nothing but the catalogue
(:mod:`tlsearch.params`), so :mod:`tlsearch.config` stays the schema of the whole file.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Union

from pydantic import BaseModel, ConfigDict, model_validator

from tlsearch.params import PARAMS, Param

__all__ = ["Range", "Scalar", "ParamSpec", "numeric_bounds", "search_problems"]


class Range(BaseModel):
    """A searched numeric range. Integer when both ends are integers and ``log`` allows it."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
    is_section: ClassVar[bool] = False  # a value of a parameter, not a section

    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"`low <= high` must hold, but got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs `low > 0`, but got low={self.low!r}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log: true` cannot be used together")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"`step` must be positive, but got {self.step!r}")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(
            self.low, bool
        ) and (self.step is None or isinstance(self.step, int))


Scalar = Union[bool, int, float, str]
#: A search-space entry: fixed value, list of choices, or a range.
ParamSpec = Union[Range, list[Scalar], Scalar]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def numeric_bounds(spec: Any, words: tuple[str, ...] = ()) -> tuple[float, float] | None:
    """(lowest, highest) number an entry can give, its ``words`` left aside; None when it gives
    something else than numbers (or only words)."""
    if isinstance(spec, Range):
        return float(spec.low), float(spec.high)
    values = spec if isinstance(spec, list) else [spec]
    numbers = [v for v in values if not (isinstance(v, str) and v in words)]
    if not numbers or not all(_is_number(v) for v in numbers):
        return None
    return float(min(numbers)), float(max(numbers))


def _only_words(spec: Any, p: Param) -> bool:
    values = spec if isinstance(spec, list) else [spec]
    return bool(p.words) and all(isinstance(v, str) and v in p.words for v in values)


def _choice_problems(p: Param, spec: Any) -> list[str]:
    if isinstance(spec, Range):
        return [f"`search.{p.name}`: expected one of {list(p.choices)} or a list of them, got a "
                f"range"]
    values = spec if isinstance(spec, list) else [spec]
    return [f"`search.{p.name}`: expected one of {list(p.choices)}, got {v!r}"
            for v in values if v not in p.choices]


def _numeric_problems(p: Param, spec: Any) -> list[str]:
    if _only_words(spec, p):
        return []
    b = numeric_bounds(spec, p.words)
    if b is None:
        also = f", or {' / '.join(p.words)}" if p.words else ""
        return [f"`search.{p.name}`: expected a number, a list of numbers or {{low, high}}{also}, "
                f"got {spec!r}"]
    problems = []
    lo = p.low if p.low is not None else -math.inf
    hi = p.high if p.high is not None else math.inf
    if b[0] < lo or b[1] > hi or (p.low_open and b[0] <= lo):
        shown_hi = "inf" if p.high is not None and p.high >= 10**6 else f"{hi:g}"
        problems.append(f"`search.{p.name}`: values must lie in {'(' if p.low_open else '['}"
                        f"{lo:g}, {shown_hi}], got {spec!r}")
    if p.kind == "int":
        values = [] if isinstance(spec, Range) else spec if isinstance(spec, list) else [spec]
        if isinstance(spec, Range) and not spec.is_int:
            problems.append(f"`search.{p.name}`: expected integer bounds, got {spec!r}")
        if any(_is_number(v) and not float(v).is_integer() for v in values):
            problems.append(f"`search.{p.name}`: expected integers, got {spec!r}")
    return problems


def search_problems(search: Any) -> list[str]:
    """Every problem of the ``search`` section against the catalogue, each naming its field."""
    problems: list[str] = []
    for p in PARAMS.values():
        spec = getattr(search, p.name)
        if isinstance(spec, list) and not spec:
            problems.append(f"`search.{p.name}`: an empty list of choices")
        elif p.kind == "choice":
            problems += _choice_problems(p, spec)
        else:
            problems += _numeric_problems(p, spec)
    b1, b2 = numeric_bounds(search.lr_stage1), numeric_bounds(search.lr_stage2)
    if b1 and b2 and b2[1] > b1[0]:
        problems.append(
            "`search.lr_stage2`: every stage-2 learning rate must be at most every stage-1 rate "
            f"(fine-tuning runs slower), but lr_stage2 reaches {b2[1]:g} while lr_stage1 starts "
            f"at {b1[0]:g}"
        )
    set_here: set[str] = getattr(search, "model_fields_set", set())
    if "augmentation" in set_here and numeric_bounds(search.augmentation) != (0.0, 0.0):
        both = sorted(set_here & {"flip", "rotation", "zoom", "translation"})
        if both:
            problems.append(
                f"`search.augmentation`: a shorthand for flip, rotation, zoom and translation, so "
                f"it cannot be given with {', '.join(both)}; give those (each searchable) and "
                f"leave `augmentation` out")
    return problems
