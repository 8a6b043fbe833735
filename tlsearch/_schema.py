"""The building blocks of the study-file schema: a section, and a searched range."""

from __future__ import annotations

from typing import ClassVar, Union

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = ["Section", "Range", "ParamSpec", "Scalar"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)
    #: a section of the study file, whose unknown keys are reported with a "did you mean"
    is_section: ClassVar[bool] = True


class Range(Section):
    """A searched numeric range. Integer when both ends are integers and ``log`` allows it."""

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
