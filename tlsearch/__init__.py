"""tlsearch: search the two-stage transfer-learning recipe with Optuna.

A study file names the data, the candidate backbones and the search space; each trial trains a new
head on a frozen pretrained backbone, then unfreezes its top blocks at a lower learning rate.
"""

from __future__ import annotations

__version__ = "0.1.0"

from tlsearch.config import StudyConfig, load_config, parse_config
from tlsearch.errors import ConfigError, DataError, StorageError, TrialFailure, UserError
from tlsearch.pipeline import Schedule, TrialParams, run_trial
from tlsearch.predict import Predictor, load

__all__ = [
    "__version__",
    "StudyConfig",
    "load_config",
    "parse_config",
    "TrialParams",
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
