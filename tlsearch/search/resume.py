"""A study's fingerprint (what its stored trials computed), and refusing to resume or export when
the study file changed it.

A study's trials are comparable only if every one of them computed the same thing: the same
objective and direction, schedule, input size, BatchNorm policy, class weights, backbone weights,
preprocessing, cut points and data. All of that is stored with the study when it is created
(:func:`study_fingerprint`) next to the search space's signature, and a run or an export whose study file
says otherwise is refused, naming each changed field with its old and new value. What only
changes how the search proceeds (``n_trials``, ``timeout``, sampler, pruner, workers, caches)
may change freely.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import optuna

from tlsearch import space
from tlsearch.backbones.frozen import frozen_part
from tlsearch.config import StudyConfig
from tlsearch.errors import SpaceChangedError
from tlsearch.search.attrs import ATTR

__all__ = ["study_fingerprint", "check_resume", "check_export", "NEW_STUDY"]

NEW_STUDY = ("Give the study a new `name` (or another `storage`) to start a new study, or undo "
             "the change to resume this one.")

#: the parts of a study's fingerprint that need its data to be known (not checked by export)
_DATA_FIELDS = ("data", "classes", "data.target")  # not re-read by export
#: the fingerprint's format: 2 takes every backbone's fields from :class:`FrozenPart
#: <tlsearch.backbones.frozen.FrozenPart>`; one without it (1) recorded fewer fields (the key
#: keeps its first name, ``meaning.version``, as stored in users' databases)
VERSION_KEY, VERSION = "meaning.version", 2


def study_fingerprint(cfg: StudyConfig, weights: Mapping[str, str], *, data: str | None = None,
            classes: list[str] | None = None) -> dict[str, Any]:
    """Everything that changes what a trial computes, as plain JSON values.

    ``weights`` maps each backbone to its weights fingerprint (a content hash for files, the name
    for hub presets); ``data`` is the data's fingerprint. What each backbone's frozen part
    computes from is :func:`~tlsearch.backbones.frozen.frozen_part`, the declaration the feature
    cache's key is made of.
    """
    t = cfg.training
    out: dict[str, Any] = {
        VERSION_KEY: VERSION,
        "objective": cfg.objective,
        "direction": cfg.direction,
        "objective_params": cfg.objective_params or {},
        "training.stage1_epochs": t.stage1_epochs,
        "training.stage2_epochs": t.stage2_epochs,
        "training.batch_size": t.batch_size,
        "training.keep_bn_frozen": t.keep_bn_frozen,
        "training.class_weight": t.class_weight,
        "data.image_size": cfg.data.image_size,
    }
    for e in cfg.backbone_entries:
        out.update(frozen_part(e, weights=weights.get(e.name), image_size=cfg.data.image_size,
                               data=data, seed=cfg.seed).fingerprint(e.name))
    if cfg.value_name != cfg.objective:  # judged by a label-free criterion
        out["domain_selection"] = cfg.domain_selection
    if classes is not None:
        out["classes"] = classes
    return json.loads(json.dumps(out, default=str))


def _comparable(stored: Mapping[str, Any], now: Mapping[str, Any],
                cfg: StudyConfig) -> tuple[Mapping[str, Any], set[str]]:
    """(stored fingerprint, keys to compare with ``now``). One stored in format 1 recorded, per
    backbone, its weights, and for a ``.keras`` file its preprocessing and block_ends as written
    (unset: None); the fields format 2 added are not held against such a study."""
    if "domain_selection" in now and "domain_selection" not in stored:
        # a label-free study stored before the setting existed was judged by bound_proxy
        stored = {**stored, "domain_selection": "bound_proxy"}
    if stored.get(VERSION_KEY) is not None:
        return stored, set(stored) | set(now)
    old = dict(stored)
    keys = set(stored) | {k for k in now if not k.startswith("backbones.")} - {VERSION_KEY,
                                                                              "data.resize"}
    for e in cfg.backbone_entries:
        keys.add(f"backbones.{e.name}.weights")
        if e.path is not None:
            for f, unset in (("preprocessing", "none"), ("block_ends", "")):
                k = f"backbones.{e.name}.{f}"
                keys.add(k)
                if old.get(k, unset) is None:
                    old[k] = unset  # what the builder reads an unset field as
    return old, keys


def _changes(stored: Mapping[str, Any], now: Mapping[str, Any], keys: set[str]) -> list[str]:
    lines = []
    for k in sorted(keys):
        if stored.get(k) != now.get(k):
            lines.append(f"{k}: was {_show(stored.get(k))}, now {_show(now.get(k))}")
    return lines


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 80 else text[:77] + "..."


def check_resume(study: optuna.Study, cfg: StudyConfig, signature: dict[str, str],
                 now: dict[str, Any]) -> None:
    """Refuse to add trials to a stored study whose search space or fingerprint differ from the
    study file's. A study stored before fingerprints were kept gets today's."""
    lines: list[str] = []
    stored_sig = study.user_attrs.get(ATTR["space"])
    if stored_sig is not None and stored_sig != signature:
        lines += space.diff_signatures(stored_sig, signature)
    stored = study.user_attrs.get(ATTR["fingerprint"])
    if stored is None:
        legacy = {"classes": study.user_attrs.get(ATTR["classes"]),
                  "data": study.user_attrs.get(ATTR["data"])}
        lines += _changes(legacy, now, {k for k, v in legacy.items() if v is not None})
        if not lines:
            study.set_user_attr(ATTR["fingerprint"], now)
    else:
        stored, keys = _comparable(stored, now, cfg)
        lines += _changes(stored, now, keys)
    if lines:
        shown = "\n".join(f"  - {line}" for line in lines)
        raise SpaceChangedError(
            f"study {cfg.name!r} was created from a different study file, so its trials would not "
            f"be comparable with new ones:\n{shown}\n{NEW_STUDY}")


def check_export(study: optuna.Study, cfg: StudyConfig, now: dict[str, Any]) -> None:
    """Refuse to rebuild a stored trial from a study file that changed what it computed (another
    image size, preprocessing, or backbone weights than the trial was trained with)."""
    stored = study.user_attrs.get(ATTR["fingerprint"])
    if stored is None:
        return  # stored before fingerprints were kept: the weights' shapes are still checked
    stored, keys = _comparable(stored, now, cfg)
    lines = _changes(stored, now, keys - set(_DATA_FIELDS))
    if lines:
        shown = "\n".join(f"  - {line}" for line in lines)
        raise SpaceChangedError(
            f"the study file no longer describes how study {cfg.name!r} was trained, so its "
            f"trials cannot be rebuilt from it:\n{shown}\nUndo the change (or use the study "
            f"file the study was run with).")
