"""Checks of a study file that need more than one field at once, or the catalogues (backbones,
parameters): run after the schema accepted the file, each problem as one line."""

from __future__ import annotations

import difflib
import math
from typing import Any

from tlsearch._schema import Range
from tlsearch.params import PARAMS

__all__ = ["semantic_problems"]


def semantic_problems(cfg: Any) -> list[str]:
    """Checks that need the registry or more than one field at once."""
    from tlsearch.backbones import registry

    problems: list[str] = []
    for i, entry in enumerate(cfg.backbone_entries):
        if entry.path is not None:
            if not str(entry.path).endswith(".keras"):
                problems.append(
                    f"`backbones[{i}].path`: expected a .keras file, got {str(entry.path)!r}"
                )
            if entry.preprocessing is not None and entry.preprocessing not in registry.PREPROCESSING:
                problems.append(
                    f"`backbones[{i}].preprocessing`: expected one of "
                    f"{sorted(registry.PREPROCESSING)}, got {entry.preprocessing!r}"
                )
            continue
        if entry.name not in registry.names():
            hint = difflib.get_close_matches(entry.name, registry.names(), n=1, cutoff=0.5)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(
                f"`backbones[{i}].name`: unknown backbone {entry.name!r} "
                f"(run `tlsearch backbones` for the list){tip}"
            )
    s = cfg.search

    def bounds(spec: Any) -> tuple[float, float] | None:
        if isinstance(spec, Range):
            return float(spec.low), float(spec.high)
        if isinstance(spec, list):
            if not spec:
                return None
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
                return float(min(spec)), float(max(spec))
            return None
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return float(spec), float(spec)
        return None

    for p in PARAMS.values():
        spec = getattr(s, p.name)
        if isinstance(spec, list) and not spec:
            problems.append(f"`search.{p.name}`: an empty list of choices")
            continue
        if p.kind == "choice":
            values = spec if isinstance(spec, list) else [spec]
            if isinstance(spec, Range):
                problems.append(f"`search.{p.name}`: expected one of {list(p.choices)} or a list "
                                f"of them, got a range")
                continue
            for v in values:
                if v not in p.choices:
                    problems.append(f"`search.{p.name}`: expected one of {list(p.choices)}, "
                                    f"got {v!r}")
            continue
        b = bounds(spec)
        if b is None:
            problems.append(
                f"`search.{p.name}`: expected a number, a list of numbers or {{low, high}}, "
                f"got {spec!r}"
            )
            continue
        lo = p.low if p.low is not None else -math.inf
        hi = p.high if p.high is not None else math.inf
        if b[0] < lo or b[1] > hi:
            shown_hi = "inf" if p.high is not None and p.high >= 10**6 else f"{hi:g}"
            problems.append(f"`search.{p.name}`: values must lie in [{lo:g}, {shown_hi}], "
                            f"got {spec!r}")
        if p.kind == "int":
            values = spec if isinstance(spec, list) else [spec] if not isinstance(spec, Range) else []
            if isinstance(spec, Range) and not spec.is_int:
                problems.append(f"`search.{p.name}`: expected integer bounds, got {spec!r}")
            if any(not float(v).is_integer() for v in values):
                problems.append(f"`search.{p.name}`: expected integers, got {spec!r}")
    b1, b2 = bounds(s.lr_stage1), bounds(s.lr_stage2)
    if b1 and b2 and b2[1] > b1[0]:
        problems.append(
            "`search.lr_stage2`: every stage-2 learning rate must be at most every stage-1 rate "
            f"(fine-tuning runs slower), but lr_stage2 reaches {b2[1]:g} while lr_stage1 starts "
            f"at {b1[0]:g}"
        )
    return problems
