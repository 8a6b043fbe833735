"""The search space: study-file entries as Optuna distributions, and one trial's parameters.

Fixed entries are not suggested (Optuna never sees them); they are stored with the study. The upper
bound of ``unfreeze_blocks`` is capped per backbone by how many blocks it has, so one range serves a
VGG16 (5 blocks) and a ResNet50 (17) alike.
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from tlsearch.config import Range, StudyConfig
from tlsearch.params import PARAMS, TrialParams, params_for

__all__ = ["space_entries", "distributions", "fixed_values", "signature", "suggest",
           "diff_signatures", "warm_start", "max_unfreeze_searched"]

_INTS = {p.name for p in PARAMS.values() if p.kind == "int"}


def space_entries(cfg: StudyConfig, modality: str) -> dict[str, Any]:
    """Every parameter of this study (searched or fixed) as written in the study file."""
    entries: dict[str, Any] = {"backbone": [b.name for b in cfg.backbone_entries]}
    for p in params_for(modality):
        entries[p.name] = getattr(cfg.search, p.name)
    if len(entries["backbone"]) == 1:
        entries["backbone"] = entries["backbone"][0]
    return entries


def _distribution(name: str, spec: Any) -> BaseDistribution | None:
    if isinstance(spec, Range):
        if name in _INTS:
            return IntDistribution(int(spec.low), int(spec.high), log=spec.log,
                                   step=int(spec.step or 1))
        return FloatDistribution(float(spec.low), float(spec.high), log=spec.log,
                                 step=None if spec.step is None else float(spec.step))
    if isinstance(spec, list):
        if len(spec) == 1:
            return None
        return CategoricalDistribution(spec)
    return None


def distributions(cfg: StudyConfig, modality: str) -> dict[str, BaseDistribution]:
    """The searched parameters as Optuna will see them (unfreeze_blocks before per-backbone caps)."""
    out = {}
    for name, spec in space_entries(cfg, modality).items():
        d = _distribution(name, spec)
        if d is not None:
            out[name] = d
    return out


def fixed_values(cfg: StudyConfig, modality: str) -> dict[str, Any]:
    out = {}
    for name, spec in space_entries(cfg, modality).items():
        if _distribution(name, spec) is None:
            out[name] = spec[0] if isinstance(spec, list) else spec
    return out


def signature(cfg: StudyConfig, modality: str) -> dict[str, str]:
    """A comparable description of the space, stored with the study to detect edits."""
    sig = {n: distribution_to_json(d) for n, d in distributions(cfg, modality).items()}
    sig.update({n: json.dumps({"fixed": v}) for n, v in fixed_values(cfg, modality).items()})
    return dict(sorted(sig.items()))


def _show(s: str) -> str:
    d = json.loads(s)
    if "fixed" in d:
        return f"fixed {d['fixed']!r}"
    attrs = d.get("attributes", {})
    if "choices" in attrs:
        return f"one of {attrs['choices']}"
    log = ", log" if attrs.get("log") else ""
    return f"[{attrs.get('low')}, {attrs.get('high')}{log}]"


def diff_signatures(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Human-readable lines for what changed between two signatures."""
    lines = []
    for name in sorted(set(stored) | set(current)):
        a, b = stored.get(name), current.get(name)
        if a == b:
            continue
        if a is None:
            lines.append(f"{name}: new in the study file ({_show(b)})")
        elif b is None:
            lines.append(f"{name}: removed from the study file (was {_show(a)})")
        else:
            lines.append(f"{name}: was {_show(a)}, now {_show(b)}")
    return lines


def suggest(trial: optuna.Trial, cfg: StudyConfig, modality: str,
            max_unfreeze: Callable[[str], int]) -> TrialParams:
    """Ask the trial for every searched parameter; fixed ones come from the study file."""
    values = dict(fixed_values(cfg, modality))
    dists = distributions(cfg, modality)
    if "backbone" in dists:
        values["backbone"] = trial.suggest_categorical("backbone", dists.pop("backbone").choices)
    cap = max_unfreeze(values["backbone"])
    for name, d in dists.items():
        if name == "unfreeze_blocks" and isinstance(d, IntDistribution):
            high = min(d.high, cap)
            low = min(d.low, high)
            values[name] = trial.suggest_int(name, low, high, step=d.step, log=d.log)
        elif isinstance(d, IntDistribution):
            values[name] = trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        elif isinstance(d, FloatDistribution):
            values[name] = trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        else:
            values[name] = trial.suggest_categorical(name, d.choices)
    if "unfreeze_blocks" in values:
        values["unfreeze_blocks"] = min(int(values["unfreeze_blocks"]), cap)
    for name in _INTS & values.keys():
        values[name] = int(values[name])
    return TrialParams(**values)


def warm_start(cfg: StudyConfig, modality: str) -> dict[str, Any]:
    """A sensible first trial: the middle of each range (geometric for log ranges), the middle
    choice of each list, and the fewest unfrozen blocks. Users ask to see the default recipe
    before the sampler explores."""
    out: dict[str, Any] = {}
    for name, d in distributions(cfg, modality).items():
        if isinstance(d, CategoricalDistribution):
            out[name] = d.choices[(len(d.choices) - 1) // 2] if name != "backbone" else d.choices[0]
        elif name == "unfreeze_blocks":
            out[name] = d.low
        elif d.log:
            v = math.sqrt(d.low * d.high)
            out[name] = int(round(v)) if isinstance(d, IntDistribution) else v
        else:
            v = (d.low + d.high) / 2
            out[name] = int(round(v)) if isinstance(d, IntDistribution) else v
    return out


def max_unfreeze_searched(cfg: StudyConfig) -> int:
    """The most blocks any trial of this study may unfreeze (0 when only heads are trained)."""
    spec = cfg.search.unfreeze_blocks
    if isinstance(spec, Range):
        return int(spec.high)
    if isinstance(spec, list):
        return int(max(spec)) if spec else 0
    return int(spec)
