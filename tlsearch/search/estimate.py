"""What a study will cost on this machine, before it runs: a few batches timed per unfreeze depth.

A trial's cost is mostly predictable from a few batches. The frozen features are computed once
per study (one forward pass of the train and validation data through each backbone, every
searched boundary in the same pass); a trial then trains its head on cached features for
``stage1_epochs`` and its top ``n`` blocks on the cached activations at their boundary for
``stage2_epochs``. So :func:`estimate` times, per backbone:

* the forward pass on a few batches, scaled to the data: the feature computation;
* one epoch of the head on features of the right width (the same pooled, traced model trials use);
* per reachable depth, a few training and validation batches of the top-``n`` model on boundary
  activations (the pooled stage-2 model trials use), scaled to the data; and what the first trial
  at a depth adds once (building the model and tracing its training step).

``all`` (and a study without a cache) runs the whole network every epoch, and is timed so.
Depths that are not timed (``depths=`` limits how many are) are interpolated between timed ones.
:mod:`tlsearch.search.estimate_text` words the result.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tlsearch.config import Range, StudyConfig
from tlsearch.params import UNFREEZE_ALL, TrialParams
from tlsearch.train.stages import blocks_to_unfreeze

__all__ = ["DepthRow", "Estimate", "estimate", "reachable_depths"]


@dataclass
class DepthRow:
    """Expected seconds of one trial of ``backbone`` that unfreezes ``depth`` blocks."""

    backbone: str
    depth: int | str  # a block count, or "all"
    stage1_s: float
    stage2_s: float
    #: added once, by the first trial at this depth (the model built, its training step traced)
    first_s: float = 0.0
    timed: bool = True  # False: interpolated between timed depths

    @property
    def trial_s(self) -> float:
        return self.stage1_s + self.stage2_s


@dataclass
class Estimate:
    rows: list[DepthRow]
    #: per backbone: seconds to compute the frozen features of the train and validation data
    features_s: dict[str, float]
    n_train: int
    n_val: int
    timeout: float | None = None
    n_trials: int | None = None
    notes: list[str] = field(default_factory=list)

    def trials_in_timeout(self) -> tuple[int, int] | None:
        """(fewest, most) trials that start within ``timeout`` after the features: all at the
        costliest depth, or all at the cheapest."""
        if not self.timeout or not self.rows:
            return None
        left = max(0.0, self.timeout - sum(self.features_s.values()))
        fast = min(r.trial_s for r in self.rows)
        slow = max(r.trial_s for r in self.rows)
        return math.ceil(left / slow) if left else 0, math.ceil(left / fast) if left else 0


def _choices(spec: Any) -> list:
    if isinstance(spec, Range):
        return list(range(int(spec.low), int(spec.high) + 1))
    return list(spec) if isinstance(spec, list) else [spec]


def reachable_depths(cfg: StudyConfig, cap: int) -> list[int | str]:
    """The unfreeze depths trials of a backbone with ``cap`` blocks can run: the searched numbers
    capped at ``cap``, and ``all`` where it is a choice; only 0 without stage 2."""
    if cfg.training.stage2_epochs == 0:
        return [0]
    values = _choices(cfg.search.unfreeze_blocks)
    ints = sorted({blocks_to_unfreeze(v, cap) for v in values if not isinstance(v, str)})
    return [*ints, *([UNFREEZE_ALL] if UNFREEZE_ALL in values else [])]


def _largest(spec: Any, default: Any) -> Any:
    """The costliest value of a searched parameter (the largest width or length)."""
    values = [v for v in _choices(spec) if not isinstance(v, str)] if spec is not None else []
    return max(values) if values else default


def _params(cfg: StudyConfig, name: str) -> TrialParams:
    s = cfg.search
    pooling = _choices(getattr(s, "pooling", None) or "cls")[0]
    return TrialParams(backbone=name, head_width=int(_largest(s.head_width, 128)),
                       max_length=int(_largest(getattr(s, "max_length", None), 128)),
                       pooling=str(pooling))


def _rows(x: Any, n: int) -> Any:
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class _Timer:
    """Times one backbone of a study on a sample of its training data."""

    def __init__(self, cfg: StudyConfig, source: Any, name: str, batches: int) -> None:
        self.cfg, self.source, self.name = cfg, source, name
        self.params = _params(cfg, name)
        data = source.dataset
        self.n_train, self.n_val = len(data.y_train), len(data.y_val)
        self.n_classes = data.n_classes
        self.bs = int(cfg.training.batch_size)
        self.k = max(1, min(batches, math.ceil(self.n_train / self.bs)))
        x_tr, _ = source.inputs(self.params)
        self.rows = min(self.n_train, self.k * self.bs)  # the last batch may be short
        self.sample = _rows(x_tr, self.rows)
        rng = np.random.default_rng(0)
        self.y = np.eye(self.n_classes, dtype=np.float32)[
            rng.integers(0, self.n_classes, self.rows)]
        source.weights(name)  # resolved once per study, before any trial
        t = time.perf_counter()
        self.backbone = source.build(name, self.params)
        #: what building the backbone costs: the first trial at each depth builds its own
        self.build_s = time.perf_counter() - t

    def steps(self, n: int) -> int:
        return math.ceil(n / self.bs)

    def features(self) -> float:
        """Seconds for the frozen forward pass over the train and validation data."""
        import keras

        model = keras.Model(self.backbone.model.input, self.backbone.model.output)
        self.source.predict_rows(model, _rows(self.sample, 2))  # traced
        t = _timed(lambda: self.source.predict_rows(model, self.sample))
        per_row = t / self.rows
        self.dim = int(self.backbone.model.output.shape[-1])
        return per_row * (self.n_train + self.n_val)

    def _fit_costs(self, model: Any, x: Any, y: np.ndarray, xv: Any, yv: np.ndarray,
                   epochs: int, repeats: int = 1) -> tuple[float, float, float]:
        """(the first fit's extra cost: tracing, the fixed cost of a fit call, one more epoch) of
        ``model`` on ``x`` with validation ``xv``: fits of 1, 1 and ``epochs`` epochs, as a
        trial's fit runs all of a stage's epochs in one call; the fastest of ``repeats`` (other
        processes only ever add time)."""
        def fit(n: int) -> float:
            return _timed(lambda: model.fit(x, y, validation_data=(xv, yv), batch_size=self.bs,
                                            epochs=n, shuffle=False, verbose=0))

        epochs = max(2, epochs)
        first = fit(1)
        one = min(fit(1) for _ in range(repeats))
        many = min(fit(epochs) for _ in range(repeats))
        epoch = max(0.0, (many - one) / (epochs - 1))  # a busy machine may make it negative
        return max(0.0, first - one), max(0.0, one - epoch), epoch

    def stage1(self) -> float:
        """The head's ``stage1_epochs`` on features (train and validation), scaled to the data."""
        from tlsearch.train.heads import HeadPool

        n_tr, n_va = min(self.n_train, 4096), min(self.n_val, 4096)
        rng = np.random.default_rng(0)
        f_tr = rng.standard_normal((n_tr, self.dim)).astype(np.float32)
        f_va = rng.standard_normal((n_va, self.dim)).astype(np.float32)
        y_tr = np.eye(self.n_classes, dtype=np.float32)[rng.integers(0, self.n_classes, n_tr)]
        y_va = np.eye(self.n_classes, dtype=np.float32)[rng.integers(0, self.n_classes, n_va)]
        head = HeadPool(self.source.compiler.pooled).get(
            self.dim, self.params.head_width, self.n_classes, self.cfg.seed, 0.2, 1e-3)
        epochs = int(self.cfg.training.stage1_epochs)  # cheap on features: all of them timed
        _, fixed, epoch = self._fit_costs(head.model, f_tr, y_tr, f_va, y_va, epochs, repeats=2)
        scale = (self.n_train + self.n_val) / (n_tr + n_va)
        return fixed + epoch * scale * int(self.cfg.training.stage1_epochs)

    def _stage2(self, model: Any, x: Any, built_s: float) -> tuple[float, float]:
        """(stage-2 seconds, first-use seconds) of ``model`` (compiled) on inputs ``x``: ``k``
        training batches, and validation batches in the data's proportion."""
        kv = max(1, min(self.k, round(self.k * self.n_val / max(1, self.n_train))))
        trace, fixed, epoch = self._fit_costs(model, x, self.y, _rows(x, kv * self.bs),
                                              self.y[:kv * self.bs], 2)
        per_epoch = epoch * self.steps(self.n_train) / self.k
        return fixed + per_epoch * int(self.cfg.training.stage2_epochs), built_s + trace

    def stage2_cached(self, n: int) -> tuple[float, float] | None:
        """Top ``n`` blocks on boundary activations, through the pooled model trials use (cut
        from the one backbone built here; a study builds one per depth: :attr:`build_s`)."""
        import keras

        from tlsearch.train.pool import PooledStage2, PooledTop

        if not self.backbone.can_cut(n):
            return None
        t0 = time.perf_counter()
        top = PooledTop(self.backbone, n, self.cfg.training.keep_bn_frozen)
        cut = keras.Model(self.backbone.model.input, self.backbone.boundary_output(n))
        t_cut = time.perf_counter()
        x = self.source.predict_rows(cut, self.sample)[0]
        t_cut = time.perf_counter() - t_cut  # the boundary is cached in a real study
        pooled = PooledStage2(top, self.params.head_width, self.n_classes, self.source.compiler)
        built = self.build_s + time.perf_counter() - t0 - t_cut
        try:
            return self._stage2(pooled.model, x, built)
        finally:
            self.backbone.freeze(0)

    def stage2_full(self, n: int, stem: bool) -> tuple[float, float]:
        """The whole network, its top ``n`` blocks (and the stem) trainable."""
        from tlsearch.train.heads import Head, assemble_model

        t0 = time.perf_counter()
        backbone = self.source.build(self.name, self.params)
        head = Head(self.params.head_width, 0.2, self.n_classes, self.cfg.seed)
        model = assemble_model(backbone, head)
        backbone.freeze(n, keep_bn_frozen=self.cfg.training.keep_bn_frozen, stem=stem)
        self.source.compiler(model, 1e-5)
        return self._stage2(model, self.sample, time.perf_counter() - t0)


def _spread(depths: list, limit: int | None) -> set:
    """Which of ``depths`` to time: all, or ``limit`` spread evenly, the ends always."""
    if limit is None or len(depths) <= limit:
        return set(depths)
    idx = np.linspace(0, len(depths) - 1, max(2, limit)).round().astype(int)
    return {depths[i] for i in idx}


def _monotone(rows: list[DepthRow]) -> None:
    """Unfreezing more blocks never costs less: where a busy machine timed a deeper depth
    cheaper than a shallower one, both get their mean (isotonic regression, pooling adjacent
    violators), on stage 2 and on the first-use cost alike."""
    for attr in ("stage2_s", "first_s"):
        blocks: list[list] = []  # [sum, count, rows]
        for r in rows:
            blocks.append([getattr(r, attr), 1, [r]])
            while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
                s, c, rs = blocks.pop()
                blocks[-1][0] += s
                blocks[-1][1] += c
                blocks[-1][2] += rs
        for s, c, rs in blocks:
            for r in rs:
                setattr(r, attr, s / c)


def _interpolate(rows: list[DepthRow]) -> None:
    timed = [r for r in rows if r.timed and isinstance(r.depth, int)]
    _monotone([r for r in timed if r.depth != 0])
    for r in rows:
        if r.timed or not isinstance(r.depth, int):
            continue
        lo = max((t for t in timed if t.depth <= r.depth), key=lambda t: t.depth)  # type: ignore
        hi = min((t for t in timed if t.depth >= r.depth), key=lambda t: t.depth)  # type: ignore
        w = 0.0 if hi.depth == lo.depth else \
            (r.depth - lo.depth) / (int(hi.depth) - int(lo.depth))  # type: ignore[operator]
        r.stage2_s = lo.stage2_s + w * (hi.stage2_s - lo.stage2_s)
        r.first_s = lo.first_s + w * (hi.first_s - lo.first_s)


def estimate(cfg: StudyConfig, *, batches: int = 3, depths: int | None = None,
             prep: Any = None) -> Estimate:
    """Time each backbone of ``cfg`` on this machine. ``depths``: how many depths per backbone
    to time (the rest interpolated; None: every one). ``prep``: (modality, data) already loaded."""
    import tensorflow as tf

    from tlsearch.search.inputs import check_inputs

    modality, data = prep if prep is not None else check_inputs(cfg)
    level = tf.get_logger().level
    tf.get_logger().setLevel("ERROR")  # each depth's model traces its own predict: no warnings
    try:
        return _estimate(cfg, modality, data, batches, depths)
    finally:
        tf.get_logger().setLevel(level)


def _estimate(cfg: StudyConfig, modality: str, data: Any, batches: int,
              depths: int | None) -> Estimate:
    from tlsearch import modalities

    source = modalities.get(modality).make_source(cfg, data, None)
    rows: list[DepthRow] = []
    features: dict[str, float] = {}
    notes = []
    for entry in cfg.backbone_entries:
        t = _Timer(cfg, source, entry.name, batches)
        forward = t.features()
        features[entry.name] = forward if cfg.cache.enabled else 0.0
        s1 = t.stage1()
        if not cfg.cache.enabled:  # every epoch runs the frozen backbone too
            s1 += forward * int(cfg.training.stage1_epochs)
        wanted = reachable_depths(cfg, t.backbone.max_unfreeze)
        ints = [d for d in wanted if isinstance(d, int)]
        to_time = _spread(ints, depths)
        for d in wanted:
            if d == 0:
                rows.append(DepthRow(entry.name, 0, s1, 0.0))
                continue
            if d not in to_time and d != UNFREEZE_ALL:
                rows.append(DepthRow(entry.name, d, s1, 0.0, timed=False))
                continue
            got = None
            if d != UNFREEZE_ALL and cfg.cache.enabled:
                got = t.stage2_cached(int(d))
            if got is None:
                stem = d == UNFREEZE_ALL
                got = t.stage2_full(t.backbone.max_unfreeze if stem else int(d), stem)
            rows.append(DepthRow(entry.name, d, s1, got[0], got[1]))
        _interpolate([r for r in rows if r.backbone == entry.name])
    if any(_augments(cfg)):
        notes.append("trials that augment their images run through the whole network every "
                     "epoch: several times these figures")
    return Estimate(rows, features, len(data.y_train), len(data.y_val), cfg.timeout,
                    cfg.n_trials, notes)


def _augments(cfg: StudyConfig):
    for name in ("augmentation", "rotation", "zoom", "translation", "contrast", "mixup"):
        spec = getattr(cfg.search, name, None)
        yield spec is not None and any(not isinstance(v, str) and float(v) > 0
                                       for v in _choices(spec))
    flip = getattr(cfg.search, "flip", None)
    yield flip is not None and any(v != "none" for v in _choices(flip))
