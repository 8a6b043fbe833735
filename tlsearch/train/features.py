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
from typing import Any, Callable

import numpy as np

from tlsearch.backbones import Backbone, build_backbone, resolve_weights
from tlsearch.backbones.frozen import FEATURE_VERSION, FrozenPart, frozen_part
from tlsearch.data import Dataset
from tlsearch.params import OBJECTIVES, TrialParams
from tlsearch.train.cache import MMAP_BYTES, FeatureCache, cache_key, check_rows, rows_differ
from tlsearch.train.rows import concat as _concat
from tlsearch.train.rows import pick as _pick
from tlsearch.train.rows import rows as _rows

__all__ = ["BackboneSource", "boundary_name", "Compiler", "FEATURE_VERSION"]

#: boundaries computed ahead of need are kept in memory up to this much in all; beyond it they are
#: filled in place on disk (up to half the cache's limit) and read back memory-mapped
_PREFETCH_BYTES = 1 << 30


class Compiler:
    """Compiles the models of one study's trials, and counts them: a trial that only reused
    pooled heads compiled nothing, and leaves nothing for :func:`clear_state` to free.

    A model built in mixed precision (the un-cached path on a GPU, :mod:`tlsearch.train.device`)
    gets a loss-scaling optimizer, and XLA when ``xla`` is on and its inputs have one shape (images;
    texts come in batches of their own lengths, each of which XLA would compile again)."""

    def __init__(self, xla: bool = False) -> None:
        self.since_clear = 0
        #: the optimizer class every model trains with (None: Adam)
        self.optimizer: type | None = None
        self.xla = xla

    def __call__(self, model: Any, lr: float, steps_per_execution: int = 1,
                 rates: dict[int, float] | None = None) -> None:
        """``rates``: ``id(variable) -> multiple of lr`` (layer-wise rates,
        :mod:`tlsearch.train.rates`); None trains every variable at ``lr``."""
        import keras

        from tlsearch.train.device import accelerated

        self.since_clear += 1
        cls = self.optimizer or keras.optimizers.Adam
        if rates:
            from tlsearch.train.rates import layerwise

            optimizer = layerwise(cls)(learning_rate=lr, scales=rates)
        else:
            optimizer = cls(learning_rate=lr)
        mixed = accelerated(model)
        if mixed:
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(),
            metrics=[o.metric() for o in OBJECTIVES.values() if o.metric is not None],
            # XLA made head training several times slower on CPU
            jit_compile=mixed and self.xla and not isinstance(model.input, dict),
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
        self._acceleration = None
        #: the backbone the read guard recomputes rows with (built once for several entries)
        self._checker: tuple[tuple[str, str], Backbone] | None = None
        #: called as ``on_features(what, rows done, rows in all, unit)`` while frozen outputs are
        #: computed (a progress display); it only watches
        self.on_features: Callable[[str, int, int, str], None] | None = None

    #: what the rows of the data are called in progress messages
    unit = "images"

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

    def predict_rows(self, model: Any, x: Any) -> list[np.ndarray]:
        """``model``'s outputs (a list, one per output) on the rows ``x`` of its inputs."""
        got = model.predict(x, batch_size=self.batch_size, verbose=0)
        return list(got) if isinstance(got, (list, tuple)) else [got]

    def batches(self, params: TrialParams, x_train: Any, x_val: Any, y_train: np.ndarray,
                y_val: np.ndarray, sample_weight: np.ndarray | None, batch_size: int,
                seed: int) -> Any:
        """(train pipeline, validation pipeline, callbacks the fit needs) where a modality batches
        its own way (text: by length), or None: Keras' shuffled batches of the arrays."""
        return None

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

    @property
    def acceleration(self):
        """Mixed precision and XLA for the un-cached path: on where there is a GPU."""
        if self._acceleration is None:
            from tlsearch.train.device import detect

            self._acceleration = detect()
            self.compiler.xla = self._acceleration.xla
        return self._acceleration

    @acceleration.setter
    def acceleration(self, value) -> None:
        self._acceleration = value
        self.compiler.xla = value.xla

    def build_uncached(self, name: str, params: TrialParams | None = None) -> Backbone:
        """A backbone for a trial that trains on raw inputs: built in mixed precision where the
        machine makes that pay (:attr:`acceleration`)."""
        from tlsearch.train.device import dtype_policy

        with dtype_policy(self.acceleration):
            return self.build(name, params)

    def max_unfreeze(self, name: str) -> int:
        if name not in self._max_unfreeze:
            bb = self.build(name)
            self._max_unfreeze[name] = bb.max_unfreeze
            del bb
        return self._max_unfreeze[name]

    def frozen_part(self, name: str, boundary: str, params: TrialParams | None,
                    data: str | None = None) -> FrozenPart:
        """What the frozen output ``boundary`` of backbone ``name`` is computed from: the
        declaration that the study's stored fingerprint reads too."""
        return frozen_part(self.entries[name], weights=self.weights(name)[1],
                           image_size=self.image_size, data=data or self.dataset.fingerprint,
                           seed=self.seed, output=boundary,
                           trial_options=self.key_options(params, boundary))

    def _key(self, name: str, boundary: str, params: TrialParams | None,
             data: str | None = None) -> str:
        return cache_key(**self.frozen_part(name, boundary, params, data).key_parts())

    def target_inputs(self, params: TrialParams | None):
        """The unlabelled target data as the backbone's model takes it (text: token arrays)."""
        assert self.dataset.x_target is not None, "the study has no `data.target`"
        return self.dataset.x_target

    def target_outputs(self, name: str, params: TrialParams | None = None, n_unfrozen: int = 0,
                       backbone: Backbone | None = None) -> np.ndarray:
        """The frozen backbone's outputs on the unlabelled target data (``data.target``): the
        pooled features (``n_unfrozen`` 0) or the activations at the freeze boundary below the
        top ``n_unfrozen`` blocks, computed once and cached exactly like the source's, under the
        source's key with the target's fingerprint in place of the data's."""
        assert self.cache is not None, "frozen outputs are served only with a cache"
        data = self.dataset

        def output(bb):
            return bb.model.output if n_unfrozen == 0 else bb.boundary_output(n_unfrozen)

        def compute():
            import keras

            bb = backbone or self.build(name, params)
            model = keras.Model(bb.model.input, output(bb))
            x = self.target_inputs(params)
            n, chunk = len(data.x_target), self.batch_size * 16
            parts = [self.predict_rows(model, _rows(x, a, min(a + chunk, n)))[0]
                     for a in range(0, n, chunk)]
            f = np.concatenate(parts).astype(np.float32)
            return f, np.zeros((0, *f.shape[1:]), np.float32)

        def check(arrays):
            return self.check_stored(arrays, (self.target_inputs(params), None), output, name,
                                     params, backbone)

        where = boundary_name(n_unfrozen)
        key = self._key(name, where, params, data="target:" + data.target_fingerprint)
        return self.cache.get_or_compute(key, compute, describe=f"{name} target {where}",
                                         check=check)[0]

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

            n_rows = (len(self.dataset.y_train), len(self.dataset.y_val))

            def nbytes(k):  # unknown (0) where the graph leaves a length open (text)
                dims = output(k).shape[1:]
                return 0 if None in dims else 4 * sum(n_rows) * math.prod(dims)

            wanted, staged, in_memory, on_disk = [n_unfrozen], set(), 0, 0
            if n_unfrozen > 0 and nbytes(n_unfrozen) > MMAP_BYTES \
                    and cache.can_stage(nbytes(n_unfrozen)):
                staged.add(n_unfrozen)  # large: written to disk as it is computed
            for k in range(self.prefetch_unfrozen + 1):
                if k == n_unfrozen or k > bb.max_unfreeze or (k > 0 and not bb.can_cut(k)):
                    continue
                if cache.contains(self._key(name, boundary_name(k), params)):
                    continue
                size = nbytes(k)
                if in_memory + size <= _PREFETCH_BYTES:
                    in_memory += size
                elif on_disk + size <= cache.max_bytes // 2 and cache.can_stage(size):
                    on_disk += size  # filled in place on disk, read back memory-mapped
                    staged.add(k)
                else:
                    continue
                wanted.append(k)
            model = keras.Model(bb.model.input, [output(k) for k in wanted])
            try:
                return self._predict_into(model, wanted, staged, n_rows, name, params)
            finally:
                cache.discard()

        def check(arrays):
            return self.check_stored(
                arrays, self.inputs(params),
                lambda bb: bb.model.output if n_unfrozen == 0 else bb.boundary_output(n_unfrozen),
                name, params, backbone)

        key = self._key(name, boundary_name(n_unfrozen), params)
        return cache.get_or_compute(key, compute, describe=f"{name} {boundary_name(n_unfrozen)}",
                                    check=check)

    def check_stored(self, arrays: tuple[np.ndarray, np.ndarray], inputs: tuple[Any, Any],
                     output: Callable[[Backbone], Any], name: str, params: TrialParams | None,
                     backbone: Backbone | None) -> str | None:
        """The read guard: recompute the first and last stored row of each split through the
        frozen backbone, in inference mode as the fill runs it, in one small batch, and say why
        they differ from the stored ones (None: they agree). It catches an entry that a key
        missing some input served to the wrong study."""
        import keras

        picked = [(np.asarray(stored[rows]), _pick(x, rows))
                  for stored, x in zip(arrays, inputs) if x is not None
                  for rows in [check_rows(len(stored))] if len(rows)]
        if not picked:
            return None
        if backbone is None:
            opts = self.options(params)
            if self._checker is None or self._checker[0] != (name, repr(opts)):
                self._checker = ((name, repr(opts)), self.build(name, params))
            backbone = self._checker[1]
        model = keras.Model(backbone.model.input, output(backbone))
        x = _concat([x for _, x in picked])
        stored = np.concatenate([s for s, _ in picked])
        return rows_differ(self.comparable(x, stored), self.comparable(x, self.recompute(model, x)))

    def recompute(self, model: Any, x: Any) -> np.ndarray:
        """``model``'s output on a few rows ``x`` for the read guard: one call, inference mode."""
        return np.asarray(model(x, training=False), np.float32)

    def comparable(self, x: Any, out: np.ndarray) -> np.ndarray:
        """The part of frozen outputs ``out`` of inputs ``x`` that means something (text: the
        real tokens' positions, not the padding's)."""
        return out

    def _predict_into(self, model: Any, wanted: list[int], staged: set[int],
                      n_rows: tuple[int, int], name: str, params: TrialParams | None):
        """One forward pass of the data through ``model`` (an output per boundary in ``wanted``),
        a chunk of rows at a time, each output written where it is kept: in memory, or in place
        on disk for ``staged`` boundaries. Stores every boundary but the first, and returns it.

        Chunks are a whole number of batches, so the batches, and the numbers, are those of one
        ``predict`` over all rows."""
        assert self.cache is not None
        cache = self.cache
        keys = [self._key(name, boundary_name(k), params) for k in wanted]
        out: list = []
        chunk = self.batch_size * 16
        what, total = f"{name} {boundary_name(wanted[0])}", sum(n_rows)
        if self.on_features is not None:
            self.on_features(what, 0, total, self.unit)
        for split, x in enumerate(self.inputs(params)):
            for a in range(0, n_rows[split], chunk):
                b = min(a + chunk, n_rows[split])
                got = self.predict_rows(model, _rows(x, a, b))
                if self.on_features is not None:
                    self.on_features(what, b + (n_rows[0] if split else 0), total, self.unit)
                if not out:  # the shapes are known now (a text boundary's length is the data's)
                    for k, key, part in zip(wanted, keys, got):
                        shapes = ((n_rows[0], *part.shape[1:]), (n_rows[1], *part.shape[1:]))
                        out.append(cache.stage(key, shapes, describe=f"{name} {boundary_name(k)}")
                                   if k in staged else
                                   tuple(np.empty(shape, np.float32) for shape in shapes))
                for dest, part in zip(out, got):
                    dest[split][a:b] = part
        for i, (k, key) in enumerate(zip(wanted, keys)):
            describe = f"{name} {boundary_name(k)}"
            if k in staged:
                out[i] = cache.commit(key, out[i])
            elif i > 0:
                cache.put(key, out[i], describe=describe)
        return out[0]
