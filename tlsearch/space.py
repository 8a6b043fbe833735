"""The search space: study-file entries as Optuna distributions, and one trial's parameters.

Everything here is derived from the catalogue (:mod:`tlsearch.params`) and the study file.

* Fixed entries are not suggested (Optuna never sees them); they are stored with the study.
* **Conditional parameters**, the way Optuna's documentation builds conditional spaces. A
  parameter whose range depends on the backbone (``unfreeze_blocks``: a VGG16 has 5 blocks, a
  ResNet50 17) is one Optuna parameter *per backbone* (``unfreeze_blocks[resnet50]``) when several
  backbones are searched, each with its own range. One shared parameter would make TPE keep the
  first range it saw, so a deep optimum in the second backbone would never be proposed; and a
  value capped after sampling teaches the sampler a value that never ran. With one backbone the
  name stays ``unfreeze_blocks``.
* Parameters of a stage that does not run are not sampled: none of stage 2's when
  ``stage2_epochs`` is 0, and none of ``lr_stage2``, ``lr_decay``, ``unfreeze_every`` for a trial
  that unfreezes nothing.
* A parameter fixed at its ``off`` value (:class:`~tlsearch.params.Param`) is not shown on trials,
  and a study stored before a parameter existed compares as having it there: adding a parameter
  to the catalogue does not lock old studies out.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)

from tlsearch.config import Range, StudyConfig
from tlsearch.errors import UserError
from tlsearch.params import PARAMS, Param, TrialParams, params_for

__all__ = ["space_entries", "distributions", "fixed_values", "signature", "suggest", "used",
           "diff_signatures", "warm_start", "max_unfreeze_searched", "check_caps", "param_name",
           "fences"]

_INTS = {p.name for p in PARAMS.values() if p.kind == "int"}
#: a parameter sampled only when this other parameter's value is truthy (stage 2 runs), or when
#: each of these others' is (a tuple)
_REQUIRES: dict[str, str | tuple[str, ...]] = {
    "lr_stage2": "unfreeze_blocks", "lr_decay": "unfreeze_blocks",
    "unfreeze_every": "unfreeze_blocks", "domain_gamma": "domain_lambda_max",
    "domain_width": "domain_lambda_max",
    "domain_stage": ("domain_lambda_max", "unfreeze_blocks")}


def _needs(name: str) -> tuple[str, ...]:
    needs = _REQUIRES.get(name, ())
    return (needs,) if isinstance(needs, str) else needs


def _on(value: Any) -> bool:
    """Whether a parameter that others require is on: blocks unfrozen, adaptation not ``off``."""
    return bool(value) and value != "off"


def _numbers(values: list) -> list:
    """The numbers among a list of choices (``all`` and other words left out)."""
    return [v for v in values if not isinstance(v, str)]


def space_entries(cfg: StudyConfig, modality: str) -> dict[str, Any]:
    """Every parameter of this study (searched or fixed) as written in the study file."""
    entries: dict[str, Any] = {"backbone": [b.name for b in cfg.backbone_entries]}
    for p in _active(cfg, modality):
        entries[p.name] = getattr(cfg.search, p.name)
    if len(entries["backbone"]) == 1:
        entries["backbone"] = entries["backbone"][0]
    return entries


def _active(cfg: StudyConfig, modality: str) -> list[Param]:
    """The catalogue's parameters for this modality, less those of a stage that never runs."""
    no_stage2 = cfg.training.stage2_epochs == 0
    return [p for p in params_for(modality) if not (no_stage2 and p.stage == 2)]


def _distribution(name: str, spec: Any, cap: int | None = None) -> BaseDistribution | None:
    if isinstance(spec, Range):
        if name in _INTS:
            high = int(spec.high) if cap is None else min(int(spec.high), cap)
            return IntDistribution(int(spec.low), high, log=spec.log, step=int(spec.step or 1))
        return FloatDistribution(float(spec.low), float(spec.high), log=spec.log,
                                 step=None if spec.step is None else float(spec.step))
    if isinstance(spec, list):
        if len(spec) == 1:
            return None
        return CategoricalDistribution(spec)
    return None


def _backbones(cfg: StudyConfig) -> list[str]:
    return [b.name for b in cfg.backbone_entries]


def param_name(cfg: StudyConfig, name: str, backbone: str) -> str:
    """The Optuna name of parameter ``name`` for ``backbone``: per backbone when it depends on it
    and several backbones are searched."""
    if PARAMS[name].per_backbone and len(_backbones(cfg)) > 1:
        return f"{name}[{backbone}]"
    return name


def distributions(cfg: StudyConfig, modality: str,
                  caps: Mapping[str, int] | None = None) -> dict[str, BaseDistribution]:
    """The searched parameters as Optuna sees them. ``caps``: each backbone's block count (ranges
    of per-backbone parameters stop there); without it the study file's bounds are shown."""
    entries = space_entries(cfg, modality)
    out: dict[str, BaseDistribution] = {}
    for name, spec in entries.items():
        if name == "backbone":
            d = _distribution(name, spec)
            if d is not None:
                out[name] = d
            continue
        if PARAMS[name].per_backbone:
            for bb in _backbones(cfg):
                d = _distribution(name, spec, None if caps is None else caps.get(bb))
                if d is not None:
                    out[param_name(cfg, name, bb)] = d
            continue
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


def check_caps(cfg: StudyConfig, modality: str, caps: Mapping[str, int]) -> None:
    """Refuse a value that cannot run on some backbone (a fixed or listed ``unfreeze_blocks``
    above its block count, or a range starting above it), rather than clamp it silently."""
    for p in _active(cfg, modality):
        if not p.per_backbone:
            continue
        spec = getattr(cfg.search, p.name)
        for bb in _backbones(cfg):
            cap = caps.get(bb)
            if cap is None:
                continue  # nothing is unfrozen in this study
            if isinstance(spec, Range):
                bad = spec.low > cap
            elif isinstance(spec, list):
                bad = max(_numbers(spec), default=0) > cap
            else:
                bad = not isinstance(spec, str) and spec > cap  # `all` runs on any backbone
            if bad:
                raise UserError(
                    f"`search.{p.name}`: {spec!r} cannot run on backbone {bb!r}, which has "
                    f"{cap} blocks; use a range (its top is then capped per backbone) or values "
                    f"up to {cap}")


def signature(cfg: StudyConfig, modality: str,
              caps: Mapping[str, int] | None = None) -> dict[str, str]:
    """A comparable description of the space, stored with the study to detect edits."""
    sig = {n: distribution_to_json(d) for n, d in distributions(cfg, modality, caps).items()}
    sig.update({n: json.dumps({"fixed": v}) for n, v in fixed_values(cfg, modality).items()})
    return dict(sorted(sig.items()))


def _show(s: str | None) -> str:
    if s is None:
        return "-"
    d = json.loads(s)
    if "fixed" in d:
        return f"fixed {d['fixed']!r}"
    attrs = d.get("attributes", {})
    if "choices" in attrs:
        return f"one of {attrs['choices']}"
    log = ", log" if attrs.get("log") else ""
    return f"[{attrs.get('low')}, {attrs.get('high')}{log}]"


def _off(name: str) -> str | None:
    """The signature entry of a parameter fixed at its ``off`` value (what a study stored before
    the parameter existed did)."""
    p = PARAMS.get(name)
    return None if p is None or p.off is None else json.dumps({"fixed": p.off})


def diff_signatures(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    """Human-readable lines for what changed between two signatures."""
    lines = []
    for name in sorted(set(stored) | set(current)):
        a, b = stored.get(name, _off(name)), current.get(name, _off(name))
        if a == b:
            continue
        if a is None:
            lines.append(f"{name}: new in the study file ({_show(b)})")
        elif b is None:
            lines.append(f"{name}: removed from the study file (was {_show(a)})")
        else:
            lines.append(f"{name}: was {_show(a)}, now {_show(b)}")
    return lines


def _suggest(trial: optuna.Trial, name: str, d: BaseDistribution) -> Any:
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    assert isinstance(d, CategoricalDistribution)
    return trial.suggest_categorical(name, d.choices)


def suggest(trial: optuna.Trial, cfg: StudyConfig, modality: str,
            caps: Mapping[str, int]) -> TrialParams:
    """Ask the trial for every searched parameter that this trial uses; fixed ones come from the
    study file, unused ones keep their defaults."""
    values = dict(fixed_values(cfg, modality))
    dists = distributions(cfg, modality, caps)
    if "backbone" in dists:
        values["backbone"] = _suggest(trial, "backbone", dists["backbone"])
    backbone = values["backbone"]
    for p in _active(cfg, modality):
        name = param_name(cfg, p.name, backbone)
        if name not in dists:
            continue
        if not all(_on(values.get(needs, True)) for needs in _needs(p.name)):
            values.pop(p.name, None)  # its stage does not run: neither sampled nor shown
            continue
        values[p.name] = _suggest(trial, name, dists[name])
    for name in _INTS & values.keys():
        if not isinstance(values[name], str):  # `unfreeze_blocks: all` stays a word
            values[name] = int(values[name])
    for name in _REQUIRES:
        if not all(_on(values.get(needs, 0)) for needs in _needs(name)):
            values.pop(name, None)
    return TrialParams(**values)


def used(params: TrialParams, cfg: StudyConfig, modality: str) -> dict[str, Any]:
    """The parameters a trial really used (what is stored on it and shown to the user)."""
    searched = {n.split("[", 1)[0] for n in distributions(cfg, modality)}
    names = {"backbone", *(p.name for p in _active(cfg, modality)
                           if p.name in searched or p.off is None
                           or getattr(params, p.name) != p.off)}
    for name in _REQUIRES:
        if not all(_on(getattr(params, needs)) for needs in _needs(name)):
            names.discard(name)
    return {k: v for k, v in vars(params).items() if k in names}


def warm_start(cfg: StudyConfig, modality: str, caps: Mapping[str, int] | None = None
               ) -> dict[str, Any]:
    """A sensible first trial: the first backbone, the middle of each range (geometric for log
    ranges), the middle choice of each list, and the fewest unfrozen blocks. Users ask to see the
    default recipe before the sampler explores."""
    out: dict[str, Any] = {}
    dists = distributions(cfg, modality, caps)
    backbone = _backbones(cfg)[0]
    for name, d in dists.items():
        base = name.split("[", 1)[0]
        if base != name and name != param_name(cfg, base, backbone):
            continue  # another backbone's conditional parameter
        if isinstance(d, CategoricalDistribution):
            out[name] = d.choices[(len(d.choices) - 1) // 2] if name != "backbone" else d.choices[0]
        elif base == "unfreeze_blocks":
            assert isinstance(d, IntDistribution)
            out[name] = d.low
        elif isinstance(d, (IntDistribution, FloatDistribution)):
            v = math.sqrt(d.low * d.high) if d.log else (d.low + d.high) / 2
            out[name] = int(round(v)) if isinstance(d, IntDistribution) else v
    if out.get(param_name(cfg, "unfreeze_blocks", backbone)) == 0:
        for name in _REQUIRES:  # the warm start trains no block: no stage 2
            if "unfreeze_blocks" in _needs(name):
                out.pop(name, None)
    if out.get("domain_lambda_max") == "off":
        for name in ("domain_gamma", "domain_width", "domain_stage"):
            out.pop(name, None)
    return out


def max_unfreeze_searched(cfg: StudyConfig) -> int:
    """The most blocks any trial of this study may unfreeze as a number (0 when only heads are
    trained). ``all`` is left out: it trains the embeddings or stem too, so it never runs on
    cached activations."""
    if cfg.training.stage2_epochs == 0:
        return 0
    spec = cfg.search.unfreeze_blocks
    if isinstance(spec, Range):
        return int(spec.high)
    if isinstance(spec, list):
        return int(max(_numbers(spec), default=0))
    return 0 if isinstance(spec, str) else int(spec)



def fences(params: Mapping[str, Any], cfg: StudyConfig, modality: str,
           caps: Mapping[str, int] | None = None) -> list[str]:
    """The parameters of a (best) trial that sit at the edge of their searched range: the bound
    itself for integers, the outer 5% of the range otherwise (on the log scale for log ranges).
    The search could not go past them, so the optimum may lie beyond: widen the range."""
    out = []
    backbone = params.get("backbone", _backbones(cfg)[0])
    dists = distributions(cfg, modality, caps)
    for name, value in params.items():
        d = dists.get(param_name(cfg, name, backbone)) if name in PARAMS else None
        if not isinstance(d, (IntDistribution, FloatDistribution)) or d.low == d.high:
            continue
        if isinstance(d, IntDistribution):
            low_edge, high_edge = value <= d.low, value >= d.high
        else:
            f = (lambda v: math.log(v)) if d.log else (lambda v: v)
            span = f(d.high) - f(d.low)
            pos = (f(value) - f(d.low)) / span
            low_edge, high_edge = pos <= 0.05, pos >= 0.95
        if (high_edge and name == "unfreeze_blocks" and caps is not None
                and d.high == caps.get(backbone)):
            continue  # all of the backbone's blocks: full fine-tuning, no fence to widen
        spec = PARAMS[name]
        if high_edge and spec.high is not None and d.high >= spec.high:
            continue  # the range already reaches the highest value the parameter takes
        if low_edge and spec.low is not None and d.low <= spec.low:
            continue  # nothing below the range: dropout 0.0, the smallest width
        if high_edge:
            out.append(f"best {name}={_fmt(value)} is the top of {_fmt(d.low)}..{_fmt(d.high)}: "
                       f"widen the range")
        elif low_edge and not (name == "unfreeze_blocks" and value == 0):
            out.append(f"best {name}={_fmt(value)} is the bottom of {_fmt(d.low)}..{_fmt(d.high)}: "
                       f"widen the range")
    return out


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
