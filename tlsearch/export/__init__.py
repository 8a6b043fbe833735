"""From a stored trial to production: the exporter, its formats, and the predictor that loads an
export (``tlsearch.load``).

Names are imported on first use: loading an export for prediction needs neither Optuna nor the
study's storage, which the exporter imports (a third of a second of ``tlsearch.load``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_study", "write_export", "trial_record", "rebuild_model", "select_trial",
           "ExportResult", "FORMATS", "TOLERANCE", "Predictor", "load"]

_HOME = {"Predictor": "predict", "load": "predict"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'tlsearch.export' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"tlsearch.export.{_HOME.get(name, 'exporter')}"), name)
