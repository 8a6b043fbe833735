"""From a stored trial to production: the exporter, its formats, and the predictor that loads an
export (``tlsearch.load``)."""

from tlsearch.export.exporter import (FORMATS, TOLERANCE, ExportResult, export_study, rebuild_model,
                                     select_trial, trial_record, write_export)
from tlsearch.export.predict import Predictor, load

__all__ = ["export_study", "write_export", "trial_record", "rebuild_model", "select_trial",
           "ExportResult", "FORMATS", "TOLERANCE", "Predictor", "load"]
