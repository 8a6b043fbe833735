"""The report's "Beyond the best trial" section: the best trial beside its refit on all the
labelled data and the latest exported ensemble, on validation and, where the study has
``data.test``, on the held-out test set with its standard error.

It reads only what the study keeps (``tlsearch.test``, ``tlsearch.refits``, ``tlsearch.ensemble``):
nothing is rebuilt or predicted here, so the report stays fast. The section is left out when the
study has neither a refit nor an ensemble.
"""

from __future__ import annotations

import math
from typing import Any

from tlsearch.report.parts import Section, table
from tlsearch.search.attrs import ATTR

__all__ = ["beyond_section", "accuracy_se"]


def accuracy_se(accuracy: float, n: int) -> float:
    """The binomial standard error of an accuracy measured on ``n`` examples."""
    return math.sqrt(accuracy * (1.0 - accuracy) / n) if n > 1 else math.nan


def _test(result: dict[str, Any] | None) -> tuple[str, str]:
    if not result:
        return "not evaluated", ""
    acc, n = float(result["accuracy"]), int(result["n"])
    return f"{acc:.4f} ± {accuracy_se(acc, n):.4f} (n={n})", f"{float(result['loss']):.4f}"


def _value(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def beyond_section(study: Any, cfg: Any) -> Section | None:
    """The best trial, its refit and the stored ensemble side by side; None when the study has
    neither a refit nor an ensemble."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    refit = (study.user_attrs.get(ATTR["refits"]) or {}).get(str(best.number))
    ensemble = study.user_attrs.get(ATTR["ensemble"])
    if not refit and not ensemble:
        return None
    test = study.user_attrs.get(ATTR["test"]) or {}
    obj = cfg.objective
    rows = [(f"best trial #{best.number}", _value(best.value),
             *_test(test if test.get("trial") == best.number else None),
             "1x", f"trained on the training split; best epoch step "
                   f"{best.user_attrs.get(ATTR['best_step'])}")]
    if refit:
        rows.append((f"refit of trial #{best.number}", "none (trained on it)",
                     *_test(refit.get("test")), "1x",
                     f"{refit['examples']} examples (training + validation), "
                     f"{refit['stage1_epochs']} + {refit['stage2_epochs']} epochs, "
                     f"{refit['seconds']:.0f} s"))
    if ensemble:
        members = ", ".join(f"#{m['trial']} ({m['weight']:.2f})" for m in ensemble["members"])
        cost = (ensemble.get("inference_cost") or {}).get("relative_to_best_trial")
        if ensemble.get("refit"):
            name, value = (f"ensemble of {len(ensemble['members'])} refit members "
                           f"(K={ensemble['k']})", "none (trained on it)")
        else:
            name, value = (f"ensemble of {len(ensemble['members'])} (K={ensemble['k']})",
                           f"{_value(ensemble['value'])} (optimistic)")
        rows.append((name, value, *_test(ensemble.get("test")),
                     f"{cost}x" if cost else "—", f"members (weight): {members}"))
    s = Section("Beyond the best trial: refit and ensemble")
    s.intro = (f"Validation {obj} chose every row, so only the test column is held out "
               f"(± one binomial standard error). A refit trains the best trial's configuration "
               f"again on the validation examples too, so it has no validation figure; an "
               f"ensemble averages the probabilities of trials chosen greedily on validation "
               f"(Caruana et al. 2004). Inference cost is measured time per example relative to "
               f"the best trial.")
    if not cfg.data.test:
        s.note = "No `data.test`: without held-out data, refit and ensemble cannot be judged."
    s.html = table(["model", f"validation {obj}", "test accuracy", "test loss",
                    "inference cost", "what"], rows, numeric=False)
    return s
