"""From a stored trial to production: the exporter, its formats, and the predictor that loads an
export (``tlsearch.load``)."""

from tlsearch.export.exporter import FORMATS, TOLERANCE, ExportResult, export_study, rebuild_model, select_trial
from tlsearch.export.predict import Predictor, load

__all__ = ["export_study", "rebuild_model", "select_trial", "ExportResult", "FORMATS", "TOLERANCE",
           "Predictor", "load"]
