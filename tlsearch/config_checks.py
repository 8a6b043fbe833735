"""Checks of a study file that need more than one field at once, or the catalogues (backbones,
parameters): run after the schema accepted the file, each problem as one line.

A numeric search parameter may also take the words its catalogue entry names
(``unfreeze_blocks: all``), fixed or among its choices; ``augmentation`` is a shorthand that
cannot be given with the transforms it stands for."""

from __future__ import annotations

import difflib
import math
from typing import Any

from tlsearch._schema import Range
from tlsearch.params import OBJECTIVES, PARAMS, ObjectiveParamsError, Param, objective_params

__all__ = ["semantic_problems", "search_problems", "numeric_bounds"]


def semantic_problems(cfg: Any) -> list[str]:
    """Checks that need the registry or more than one field at once."""
    from tlsearch.backbones import registry

    problems: list[str] = []
    if cfg.n_trials is None and cfg.timeout is None and cfg.hard_timeout is None:
        problems.append("`n_trials`: set `n_trials`, `timeout` or both: a study needs a budget")
    if cfg.timeout is not None and cfg.hard_timeout is not None and cfg.hard_timeout < cfg.timeout:
        problems.append(f"`hard_timeout`: `hard_timeout >= timeout` must hold (the hard limit "
                        f"stops the running trial after new ones stopped starting), but got "
                        f"hard_timeout={cfg.hard_timeout:g}, timeout={cfg.timeout:g}")
    if cfg.objective in OBJECTIVES:
        try:
            objective_params(OBJECTIVES[cfg.objective], cfg.objective_params)
        except ObjectiveParamsError as e:
            problems += e.problems
        except ValueError as e:
            problems.append(f"`objective_params`: {e}")
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
    problems += search_problems(cfg.search)
    problems += domain_problems(cfg)
    return problems


def _adapting(spec: Any) -> bool:
    """Whether a ``domain_adaptation.lambda_max`` entry can turn adaptation on."""
    values = spec if isinstance(spec, list) else [spec]
    return isinstance(spec, Range) or any(v != "off" for v in values)


def _through_backbone(spec: Any) -> bool:
    """Whether a ``domain_adaptation.stage`` entry can choose ``backbone``."""
    values = spec if isinstance(spec, list) else [spec]
    return "backbone" in values


def domain_problems(cfg: Any) -> list[str]:
    """Domain adaptation needs unlabelled target data, cached features and pixels that stay put;
    without labelled target data a trial is judged by a label-free proxy on its last epoch, which
    a stage 2 on source labels alone and other objectives would not match: stage 2 runs there
    only in trials that adapt through the backbone (``domain_adaptation.stage: backbone``)."""
    d, s = cfg.data, cfg.search
    problems: list[str] = []
    on = _adapting(s.domain_lambda_max)
    if on and d.target is None:
        problems.append("`search.domain_adaptation`: adaptation needs unlabelled target data: set "
                        "`data.target` (in the format of `data.path`, without labels)")
    if d.target_validation is not None and d.target is None:
        problems.append("`data.target_validation`: labelled target data is used with `data.target`"
                        "; set `data.target` too")
    if d.target_validation is not None and d.validation is not None:
        problems.append("`data.target_validation`: with labelled target data every trial is judged "
                        "on it, so `data.validation` would go unused; give one of them")
    if "domain_selection" in cfg.model_fields_set and (d.target is None
                                                       or d.target_validation is not None):
        problems.append("`domain_selection`: the label-free criterion judges a study with "
                        "`data.target` and no `data.target_validation`; "
                        + ("with labelled target data every trial is judged on it: leave "
                           "`domain_selection` out" if d.target is not None else
                           "set `data.target`, or leave `domain_selection` out"))
    if d.target is None:
        return problems
    if cfg.final.refit:
        problems.append("`final.refit`: a refit trains on the source data alone, and a study with "
                        "`data.target` chose its trial by how it serves the target domain; leave "
                        "`final.refit` out")
    if not cfg.cache.enabled:
        problems.append("`cache.enabled`: domain adaptation trains, and judges trials, on cached "
                        "frozen features; set it to true")
    for name in ("augmentation", "flip", "rotation", "zoom", "translation", "contrast", "mixup"):
        spec = getattr(s, name)
        if spec != PARAMS[name].off and spec != [PARAMS[name].off]:
            problems.append(f"`search.{name}`: augmentation changes the pixels every epoch and "
                            f"cannot be combined with `data.target`: domain adaptation trains, "
                            f"and trials are judged, on cached features; leave `search.{name}` out")
    if on and cfg.objective not in ("val_loss", "val_accuracy"):
        problems.append(f"`objective`: an adapted head reports val_loss and val_accuracy; "
                        f"{cfg.objective} is not available with domain adaptation")
    if d.target_validation is None:
        if cfg.training.stage2_epochs and not (on and _through_backbone(s.domain_stage)):
            problems.append("`training.stage2_epochs`: without `data.target_validation` a trial is "
                            "judged by a label-free criterion on its last epoch, and a plain stage "
                            "2 fine-tunes on source labels alone, undoing the adaptation unseen; "
                            "set stage2_epochs: 0, or adapt through the backbone in stage 2 "
                            "(`search.domain_adaptation.stage: backbone`, or [head, backbone] to "
                            "search it; then only such trials run stage 2), or give labelled "
                            "target data in `data.target_validation`")
        if cfg.objective != "val_loss":
            problems.append(f"`objective`: without `data.target_validation` each epoch reports "
                            f"the source validation loss and trials are judged by a label-free "
                            f"risk proxy (lower is better), not by {cfg.objective}; use val_loss "
                            f"or give `data.target_validation`")
        if "type" in cfg.pruner.model_fields_set and cfg.pruner.type != "none":
            problems.append(f"`pruner.type`: without `data.target_validation` trials are judged "
                            f"by {cfg.domain_selection} on their last epoch, but a pruner judges the source "
                            f"validation loss each epoch reports, and would remove the adapted "
                            f"trials first; got {cfg.pruner.type!r}: set `pruner: {{type: none}}` "
                            f"or leave `pruner` out (then nothing is pruned), or give labelled "
                            f"target data in `data.target_validation`")
    return problems


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
        return [f"`search.{p.where}`: expected one of {list(p.choices)} or a list of them, got a "
                f"range"]
    values = spec if isinstance(spec, list) else [spec]
    return [f"`search.{p.where}`: expected one of {list(p.choices)}, got {v!r}"
            for v in values if v not in p.choices]


def shown(spec: Any) -> str:
    """A search entry as the study file writes it: ``{low: -5, high: 2}``, not a Python repr."""
    if isinstance(spec, Range):
        parts = [f"low: {spec.low!r}", f"high: {spec.high!r}"]
        parts += ["log: true"] if spec.log else []
        parts += [f"step: {spec.step!r}"] if spec.step is not None else []
        return "{" + ", ".join(parts) + "}"
    return repr(spec)


def _numeric_problems(p: Param, spec: Any) -> list[str]:
    if _only_words(spec, p):
        return []
    b = numeric_bounds(spec, p.words)
    if b is None:
        also = f", or {' / '.join(p.words)}" if p.words else ""
        return [f"`search.{p.where}`: expected a number, a list of numbers or {{low, high}}{also}, "
                f"got {spec!r}"]
    problems = []
    lo = p.low if p.low is not None else -math.inf
    hi = p.high if p.high is not None else math.inf
    if b[0] < lo or b[1] > hi or (p.low_open and b[0] <= lo):
        shown_hi = "inf" if p.high is not None and p.high >= 10**6 else f"{hi:g}"
        problems.append(f"`search.{p.where}`: values must lie in {'(' if p.low_open else '['}"
                        f"{lo:g}, {shown_hi}], got {shown(spec)}")
    if p.kind == "int":
        values = [] if isinstance(spec, Range) else spec if isinstance(spec, list) else [spec]
        if isinstance(spec, Range) and not spec.is_int:
            problems.append(f"`search.{p.where}`: expected integer bounds, got {shown(spec)}")
        if any(_is_number(v) and not float(v).is_integer() for v in values):
            problems.append(f"`search.{p.where}`: expected integers, got {spec!r}")
    return problems


def search_problems(search: Any) -> list[str]:
    """Every problem of the ``search`` section against the catalogue, each naming its field."""
    problems: list[str] = []
    for p in PARAMS.values():
        spec = getattr(search, p.name)
        if isinstance(spec, list) and not spec:
            problems.append(f"`search.{p.where}`: an empty list of choices")
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
