"""From a data folder to the text of a study file: the steps of ``tlsearch init``, in order.

The recipe is made three times, cheapest first: a draft that names the backbones (to count their
blocks), one with the depth range those counts allow (to time it), and the last with the budget
the timing gives. The text written is parsed back as a study file before it is returned: a file
that ``tlsearch validate`` would refuse is a bug here, never the user's problem.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable

import yaml

from tlsearch.config import StudyConfig, parse_config
from tlsearch.data import Dataset
from tlsearch.errors import UserError
from tlsearch.starter.recipe import (Recipe, Timing, choose_backbones, choose_image_size,
                                     make_recipe)
from tlsearch.starter.render import render
from tlsearch.starter.survey import DataSurvey, read, survey

__all__ = ["plan"]


def _default_size(names: list[str]) -> int:
    from tlsearch.backbones import get

    sizes = []
    for name in names:
        try:
            sizes.append(get(name).default_size)
        except KeyError as e:
            raise UserError(f"`--backbones`: {e.args[0]} (run `tlsearch backbones` for the "
                            f"list)") from None
    return min(sizes)


def _parse(recipe: Recipe, out_dir: Path) -> StudyConfig:
    return parse_config(recipe.study, source="the study file being written", base_dir=out_dir)


def _caps(cfg: StudyConfig, data: Dataset) -> dict[str, int]:
    from tlsearch import modalities

    source = modalities.get(data.modality).make_source(cfg, data, None)
    return {e.name: source.max_unfreeze(e.name) for e in cfg.backbone_entries}


def _timing(cfg: StudyConfig, data: Dataset) -> Timing:
    import keras

    from tlsearch.search.estimate import estimate

    try:
        est = estimate(cfg, batches=2, depths=2, prep=(data.modality, data))
    finally:
        keras.backend.clear_session(free_memory=True)
    trials = [r.trial_s for r in est.rows]
    return Timing(features=sum(est.features_s.values()), cheapest=min(trials),
                  costliest=max(trials), mean=sum(trials) / len(trials))


def plan(data: Path | str, out: Path, *, backbones: list[str] | None = None,
         minutes: float = 60.0, timed: bool = True, text_column: str | None = None,
         label_column: str | None = None,
         log: Callable[[str], None] = lambda m: None) -> tuple[str, DataSurvey]:
    """The text of a study file for ``data``, to be written at ``out``; and what was measured."""
    from tlsearch._quiet import import_tensorflow_quietly

    s = survey(data, text_column=text_column, label_column=label_column)
    names, names_why = choose_backbones(s, backbones)
    size, size_why = choose_image_size(s, _default_size(names)) if s.modality == "image" \
        else (0, "")
    log(f"reading {s.path} ({s.fmt}) ...")
    import_tensorflow_quietly()
    ds = read(s, size or 32)
    out_dir = out.parent
    choose = partial(make_recipe, s, out_dir=out_dir, backbones=names, backbones_why=names_why,
                     image_size=size, image_size_why=size_why, minutes=minutes)
    caps = _caps(_parse(choose(), out_dir), ds)
    recipe = choose(caps=caps)
    timing = None
    if timed:
        log("timing a few batches on this machine (--no-estimate skips it) ...")
        try:
            timing = _timing(_parse(recipe, out_dir), ds)
        except Exception as e:  # noqa: BLE001 - without a timing the budget is a count
            log(f"the estimate failed ({type(e).__name__}: {e}); the budget is a trial count")
        recipe = choose(caps=caps, timing=timing)
    text = render(recipe)
    parse_config(yaml.safe_load(text), source=str(out), base_dir=out_dir)
    return text, s
