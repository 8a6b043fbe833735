"""The study's backbones and their frozen outputs, computed once and served from the cache.

A :class:`BackboneSource` belongs to one study: it resolves each backbone's weights once (a
content hash of a large file is not free), builds backbones on demand, and computes the outputs of
their frozen part (the pooled features, or the activations at a freeze boundary) through
:class:`~tlsearch.train.cache.FeatureCache`. Text studies use a subclass
(:class:`tlsearch.modalities.text.TextBackboneSource`) that tokenizes first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from tlsearch.backbones import Backbone, build_backbone, resolve_weights
from tlsearch.data import Dataset
from tlsearch.params import OBJECTIVES, TrialParams
from tlsearch.train.cache import FeatureCache, cache_key

__all__ = ["BackboneSource", "boundary_name", "Compiler", "FEATURE_VERSION"]

FEATURE_VERSION = 1  # bump when the way frozen outputs are computed changes
_PREFETCH_BYTES = 1 << 30  # boundaries computed ahead of need, at most this much in all


class Compiler:
    """Compiles the models of one study's trials, and counts them: a trial that only reused
    pooled heads compiled nothing, and leaves nothing for :func:`clear_state` to free."""

    def __init__(self) -> None:
        self.since_clear = 0

    def __call__(self, model: Any, lr: float, steps_per_execution: int = 1) -> None:
        import keras

        self.since_clear += 1
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=lr),
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[o.metric() for o in OBJECTIVES.values() if o.metric is not None],
            jit_compile=False,  # XLA made head training several times slower on CPU
            steps_per_execution=steps_per_execution,
        )

    def pooled(self, model: Any, lr: float) -> None:
        """A head on features takes microseconds per step: run 16 steps per call into
        TensorFlow. Same batches in the same order, so the same numbers; only Python's cost goes."""
        self(model, lr, steps_per_execution=16)


def boundary_name(n_unfrozen: int) -> str:
    return "pooled" if n_unfrozen == 0 else f"below-top-{n_unfrozen}"


class BackboneSource:
    """Builds the study's backbones and serves their frozen outputs from the feature cache.

    ``cache`` None runs every trial through the whole network (``cache.enabled: false``).
    """

    def __init__(self, entries: dict, data: Dataset | None, image_size: int,
                 cache: FeatureCache | None, *, seed: int = 0, base_dir: Path | None = None,
                 batch_size: int = 64, prefetch_unfrozen: int = 0) -> None:
        self.entries = entries
        self.data = data
        self.image_size = image_size
        self.cache = cache
        self.seed = seed
        self.base_dir = base_dir
        self.batch_size = batch_size
        #: boundaries (1..this many unfrozen blocks) computed in the same forward pass as the first
        #: frozen output a backbone needs: one pass per image instead of one per boundary
        self.prefetch_unfrozen = prefetch_unfrozen
        self.compiler = Compiler()
        self._max_unfreeze: dict[str, int] = {}
        self._weights: dict[str, tuple[str | None, str]] = {}
        self._heads = None
        self._tops = None

    @property
    def heads(self):
        """Traced head-on-features models, reset for each cached stage-1 trial instead of rebuilt."""
        if self._heads is None:
            from tlsearch.train.heads import HeadPool

            self._heads = HeadPool(self.compiler.pooled)
        return self._heads

    @property
    def tops(self):
        """Traced stage-2 models on freeze boundaries, reset for each cached stage-2 trial."""
        if self._tops is None:
            from tlsearch.train.pool import TopPool

            self._tops = TopPool(self.build, self.compiler)
        return self._tops

    def weights(self, name: str) -> tuple[str | None, str]:
        """(resolved weights, fingerprint) of backbone ``name``, resolved once per study."""
        if name not in self._weights:
            self._weights[name] = resolve_weights(self.entries[name], self.base_dir)
        return self._weights[name]

    def options(self, params: TrialParams | None) -> dict:
        """Build options that change what a backbone computes (text backbones use them)."""
        return {}

    def key_options(self, params: TrialParams | None, boundary: str) -> dict:
        """The options that the frozen outputs at ``boundary`` depend on (part of the cache key)."""
        return self.options(params)

    def inputs(self, params: TrialParams | None):
        """(train, validation) inputs of the backbone's model: the data itself for images, token
        arrays for text."""
        return self.dataset.x_train, self.dataset.x_val

    @property
    def dataset(self) -> Dataset:
        """The study's data (an export's source has none and never computes features)."""
        assert self.data is not None, "this source serves no data"
        return self.data

    def build(self, name: str, params: TrialParams | None = None) -> Backbone:
        return build_backbone(self.entries[name], self.image_size, seed=self.seed,
                              base_dir=self.base_dir, options=self.options(params),
                              weights=self.weights(name))

    def max_unfreeze(self, name: str) -> int:
        if name not in self._max_unfreeze:
            bb = self.build(name)
            self._max_unfreeze[name] = bb.max_unfreeze
            del bb
        return self._max_unfreeze[name]

    def _key(self, name: str, boundary: str, params: TrialParams | None) -> str:
        import keras

        _, fingerprint = self.weights(name)
        if fingerprint == "random":
            fingerprint = f"random:seed={self.seed}"
        return cache_key(backbone=name, weights=fingerprint, size=self.image_size,
                         data=self.dataset.fingerprint, boundary=boundary,
                         options=self.key_options(params, boundary), keras=keras.__version__,
                         version=FEATURE_VERSION)

    def frozen_outputs(self, name: str, n_unfrozen: int, params: TrialParams | None = None,
                       backbone: Backbone | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs of the frozen part for train and validation inputs, computed once and cached.

        ``n_unfrozen == 0``: the pooled features. Otherwise the activations at the freeze boundary.
        """
        assert self.cache is not None, "frozen outputs are served only with a cache"
        cache = self.cache

        def compute():
            import keras

            bb = backbone or self.build(name, params)

            def output(k):
                return bb.model.output if k == 0 else bb.boundary_output(k)

            n_images = len(self.dataset.x_train) + len(self.dataset.x_val)
            wanted, extra_bytes = [n_unfrozen], 0
            for k in range(self.prefetch_unfrozen + 1):
                if k == n_unfrozen or k > bb.max_unfreeze or (k > 0 and not bb.can_cut(k)):
                    continue
                if cache.contains(self._key(name, boundary_name(k), params)):
                    continue
                size = 4 * n_images * math.prod(int(d) for d in output(k).shape[1:])
                if extra_bytes + size > _PREFETCH_BYTES:
                    break
                wanted.append(k)
                extra_bytes += size
            outputs = [output(k) for k in wanted]
            model = keras.Model(bb.model.input, outputs)  # a dict of token arrays for text
            per_split = []
            for x in self.inputs(params):
                got = model.predict(x, batch_size=self.batch_size, verbose=0)
                got = got if len(wanted) > 1 else [got]
                per_split.append([np.asarray(a, dtype=np.float32) for a in got])
            for i, k in enumerate(wanted[1:], start=1):
                cache.put(self._key(name, boundary_name(k), params),
                          (per_split[0][i], per_split[1][i]), describe=f"{name} {boundary_name(k)}")
            return per_split[0][0], per_split[1][0]

        key = self._key(name, boundary_name(n_unfrozen), params)
        return cache.get_or_compute(key, compute, describe=f"{name} {boundary_name(n_unfrozen)}")
