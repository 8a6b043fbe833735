"""Everything about a study's input that is checked before anything is written, and what a trial
needs assembled from it: the data, the backbones' weights and block counts, the objective's
parameters, the class weights, a writable artifact folder."""

from __future__ import annotations

import json

import numpy as np

from tlsearch import modalities, space
from tlsearch._urls import redact_url
from tlsearch.backbones import build_backbone, resolve_weights
from tlsearch.config import StudyConfig
from tlsearch.data import Dataset, load_dataset
from tlsearch.errors import UserError
from tlsearch.metrics import balanced_class_weights
from tlsearch.params import OBJECTIVES, objective_params, positive_index
from tlsearch.search.artifacts import probe_writable
from tlsearch.train.features import BackboneSource
from tlsearch.metrics import balanced_class_weights as class_weights

__all__ = ["prescreen", "prescreen_options", "config_snapshot", "check_inputs", "check_writable",
           "study_weights", "caps", "class_weight_map",
           "resolve_objective_params"]


def prescreen_options(cfg: StudyConfig, modality: str) -> list[dict]:
    """The choices a backbone's pooled features depend on, as the study can make them: for text,
    every ``pooling`` x ``max_length`` combination (a range of ``max_length``: its two ends, each
    costing a forward pass over the training texts); for images, one empty set of choices."""
    from tlsearch._schema import Range
    from tlsearch.params import PARAMS

    if modality != "text":
        return [{}]
    entries = space.space_entries(cfg, modality)
    choices = {}
    for name in ("pooling", "max_length"):
        spec = entries.get(name, PARAMS[name].default)
        if isinstance(spec, Range):
            values = sorted({int(spec.low), int(spec.high)})
        else:
            values = list(dict.fromkeys(spec if isinstance(spec, list) else [spec]))
        choices[name] = values
    return [{"pooling": p, "max_length": int(m)}
            for p in choices["pooling"] for m in choices["max_length"]]


def prescreen(cfg: StudyConfig, source: BackboneSource, data: Dataset,
              warn=print) -> tuple[StudyConfig, list[tuple[str, float]]]:
    """The study file with only the ``prescreen.keep`` best-ranked backbones, and the whole
    ranking (best first). Scored on the training examples' frozen pooled features only (never the
    validation labels), which the cached stage-1 trials reuse: the ranking costs the forward pass
    the study needs anyway, plus seconds. Deterministic, so every worker keeps the same ones.

    Where the pooled features depend on choices the study makes (text: pooling and
    ``max_length``, :func:`prescreen_options`), each backbone is scored with every choice and
    ranked by its best: a backbone is worth keeping if some recipe the study can try suits it."""
    from tlsearch.params import TrialParams
    from tlsearch.prescreen import METHODS, rank_backbones
    from tlsearch.train.cache import FeatureCache

    p = cfg.prescreen
    names = [e.name for e in cfg.backbone_entries]
    if p is None or len(names) <= p.keep:
        return cfg, []
    options = prescreen_options(cfg, data.modality)

    def best_features(name: str):
        scored, refused = [], None
        for opts in options:
            params = TrialParams(name, **opts) if opts else None
            try:
                f = source.frozen_outputs(name, 0, params)[0]
            except UserError as e:  # a choice this backbone refuses (a decoder's `cls` pooling)
                refused = e
                continue
            scored.append((METHODS[p.method](f, data.y_train), f))
        if not scored:
            assert refused is not None
            raise refused
        return max(scored, key=lambda r: r[0] if np.isfinite(r[0]) else -np.inf)[1]

    if source.cache is None:  # cache.enabled: false: features for the ranking only, in memory
        source.cache = FeatureCache(None, 1 << 62)
        try:
            feats = {n: (best_features(n), data.y_train) for n in names}
        finally:
            source.cache = None
    else:
        feats = {n: (best_features(n), data.y_train) for n in names}
    ranking = rank_backbones(feats, len(names), method=p.method)
    kept = {n for n, _ in ranking[:p.keep]}
    over = f", best of {len(options)} pooling x max_length choices" if len(options) > 1 else ""
    warn(f"  prescreen ({p.method}{over}): " + ", ".join(
        f"{n} {s:.4f}{'' if n in kept else ' (dropped)'}" for n, s in ranking))
    entries = [e for e in cfg.backbone_entries if e.name in kept]
    return cfg.model_copy(update={"backbones": entries}), ranking


def config_snapshot(cfg: StudyConfig) -> dict:
    snap = json.loads(cfg.model_dump_json(exclude={"base_dir"}))
    snap.pop("storage", None)  # may carry credentials
    mlflow = (snap.get("tracking") or {}).get("mlflow")
    if mlflow:
        mlflow["tracking_uri"] = redact_url(mlflow["tracking_uri"])
    return snap


def check_inputs(cfg: StudyConfig) -> tuple[str, Dataset]:
    """Everything about the user's input that can be checked without a database."""
    modality = modalities.modality_of(cfg.backbone_entries).name
    for entry in cfg.backbone_entries:
        resolve_weights(entry, cfg.base_dir)  # raises UserError for a missing file
        if entry.path is not None:
            # a user's Keras file is loaded (in safe mode) now: refused before the study exists,
            # not in its first trial
            build_backbone(entry, cfg.data.image_size, seed=cfg.seed, base_dir=cfg.base_dir)
    data = load_dataset(cfg.data, base_dir=cfg.base_dir, image_size=cfg.data.image_size,
                        seed=cfg.seed)
    if data.modality != modality:
        raise UserError(f"`data`: the data is {data.modality} but the backbones take {modality}")
    return modality, data


def check_writable(cfg: StudyConfig) -> None:
    """The artifact folder takes a file (a probe written and removed): trained weights that
    cannot be kept would waste every trial."""
    probe_writable(cfg.artifact_dir)


def study_weights(cfg: StudyConfig, source: BackboneSource) -> dict[str, str]:
    """Each backbone's weights fingerprint, as the study's fingerprint records it."""
    out = {}
    for e in cfg.backbone_entries:
        fp = source.weights(e.name)[1]
        out[e.name] = f"random:seed={cfg.seed}" if fp == "random" else fp
    return out


def caps(cfg: StudyConfig, source: BackboneSource) -> dict[str, int]:
    """Each backbone's block count, when the study unfreezes any (building each backbone once)."""
    if space.max_unfreeze_searched(cfg) == 0:
        return {}
    return {e.name: source.max_unfreeze(e.name) for e in cfg.backbone_entries}


def resolve_objective_params(cfg: StudyConfig, data: Dataset) -> dict[str, object]:
    """The objective's parameters as trials are judged by them: a screening objective's
    ``positive`` as the class's index (the study file may name the class or give its index),
    and ``val_weighted_loss``'s class weights as one weight per class: ``objective_params.
    class_weight`` where given, else the study's ``training.class_weight`` (the weights training
    uses, ``auto`` included), else ``balanced`` on the training labels. UserError names the
    field."""
    obj = OBJECTIVES[cfg.objective]
    given = dict(cfg.objective_params or {})
    params = objective_params(obj, given)
    if obj.binary:
        try:
            params["positive"] = positive_index(params["positive"], data.class_names)
        except ValueError as e:
            raise UserError(f"`objective_params.positive`: {e}") from None
        if data.n_classes > 2 and "positive" not in given:
            raise UserError(f"`objective`: {cfg.objective} judges one positive class against the "
                            f"rest; with {data.n_classes} classes, name it: objective_params: "
                            f"{{positive: <one of {data.class_names}>}}")
    if "class_weight" in obj.params:
        params["class_weight"] = _objective_class_weights(cfg, data, given.get("class_weight"))
    return params


def _objective_class_weights(cfg: StudyConfig, data: Dataset, given: object) -> list[float]:
    k = data.n_classes
    if given is None:
        by_index = class_weight_map(cfg, data)
        if by_index is not None:
            return [float(by_index.get(c, 1.0)) for c in range(k)]
        given = "balanced"
    if given in ("balanced", "auto"):
        cw = balanced_class_weights(data.y_train, k)
        return [float(cw.get(c, 0.0)) for c in range(k)]
    if isinstance(given, dict):
        out = [1.0] * k
        for key, w in given.items():
            try:
                out[positive_index(key, data.class_names)] = float(w)
            except ValueError as e:
                raise UserError(f"`objective_params.class_weight.{key}`: {e} and a number "
                                f"weight, got {w!r}") from None
        return out
    if isinstance(given, (list, tuple)) and len(given) == k:
        return [float(w) for w in given]
    raise UserError(f"`objective_params.class_weight`: expected `balanced`, a mapping of class "
                    f"to weight or {k} weights, got {given!r}")


def class_weight_map(cfg: StudyConfig, data: Dataset) -> dict[int, float] | None:
    cw = cfg.training.class_weight
    if cw == "auto":
        return class_weights(data.y_train, data.n_classes)
    if isinstance(cw, dict):
        unknown = sorted(set(cw) - set(data.class_names))
        if unknown:
            raise UserError(f"`training.class_weight`: unknown classes {unknown}; the classes are "
                            f"{data.class_names}")
        return {data.class_names.index(k): float(v) for k, v in cw.items()}
    return None
