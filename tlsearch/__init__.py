"""tlsearch: search the two-stage transfer-learning recipe with Optuna.

A study file names the data, the candidate backbones and the search space; each trial trains a new
head on a frozen pretrained backbone, then unfreezes its top blocks at a lower learning rate.

The public surface is listed in ``__all__``: :func:`run` runs a study file, :func:`objective` hands
its objective to an Optuna study of your own, :func:`load` opens an exported model. Names that need
Optuna, TensorFlow or the study schema are imported on first use, so ``import tlsearch``,
``tlsearch validate`` and ``tlsearch backbones`` start without TensorFlow, and ``tlsearch.load``
without the schema. KerasTuner users: :mod:`tlsearch.keras_tuner`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlsearch._register import register_layers_with_keras
from tlsearch.errors import ConfigError, DataError, StorageError, TrialFailure, UserError

if TYPE_CHECKING:
    from tlsearch.config import StudyConfig, load_config, parse_config
    from tlsearch.params import TrialParams

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "StudyConfig",
    "load_config",
    "parse_config",
    "TrialParams",
    "run",
    "objective",
    "Objective",
    "Schedule",
    "run_trial",
    "load",
    "Predictor",
    "UserError",
    "ConfigError",
    "DataError",
    "StorageError",
    "TrialFailure",
]

register_layers_with_keras()  # a model.keras loads with `import tlsearch` and Keras alone

_LAZY = {
    # the study schema (pydantic, SQLAlchemy's URL parser): 0.6 s that `tlsearch predict` and
    # `tlsearch.load` do not need
    "StudyConfig": "tlsearch.config",
    "load_config": "tlsearch.config",
    "parse_config": "tlsearch.config",
    "TrialParams": "tlsearch.params",
    "run": "tlsearch.api",
    "objective": "tlsearch.api",
    "Objective": "tlsearch.api",
    "Schedule": "tlsearch.train.pipeline",
    "run_trial": "tlsearch.train.pipeline",
    "load": "tlsearch.export.predict",
    "Predictor": "tlsearch.export.predict",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tlsearch' has no attribute {name!r}")
