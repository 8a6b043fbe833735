"""``MODEL_CARD.md``: an export's metadata.json in the sections people know from model hubs.

The card is written from ``metadata.json`` alone (:func:`model_card`), so every number in it is
one of metadata.json's, and a card can be written again for any export. Its limitations are those
the study knows of: a small validation set (wide error bars), a domain-adapted model chosen
without target labels, classes with few examples, a trial at a fence of the search space, a test
set that judged several trials or shares examples with training, figures without a test set.

The card is documentation, not part of what the predictor acts on: it is not in metadata.json's
list of checked files, so its readers may add to it (metadata.json itself is sealed).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from tlsearch.params import DOMAIN_CRITERIA, criterion_statement

__all__ = ["CARD_FILE", "model_card", "limitations", "SMALL_VALIDATION", "FEW_EXAMPLES"]

CARD_FILE = "MODEL_CARD.md"
#: fewer validation examples than this: the card calls the validation set small
SMALL_VALIDATION = 100
#: fewer training examples of a class than this: the card names the class
FEW_EXAMPLES = 20
#: the normal quantile of a two-sided 95% interval
Z95 = 1.96


def _num(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _pm(value: Any, se: Any, name: str = "") -> str:
    """``value ± se`` (and its 95% interval) where the standard error is known. Every figure is
    at least 0, and all but a loss at most 1: the interval is cut there."""
    if not isinstance(value, (int, float)):
        return _num(value)
    if not isinstance(se, (int, float)) or not math.isfinite(se):
        return f"{value:.4f}"
    low, high = max(0.0, value - Z95 * se), value + Z95 * se
    if "loss" not in name:
        high = min(1.0, high)
    return f"{value:.4f} ± {se:.4f} (standard error; 95% interval {low:.4f} to {high:.4f})"


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(_num(c) for c in r) + " |" for r in rows]


def _details(m: Mapping[str, Any]) -> list[str]:
    params = m.get("params") or {}
    versions = m.get("versions") or {}
    classes = m.get("classes") or []
    formats = [k for k, v in (m.get("formats") or {}).items() if v.get("status") == "ok"]
    lines = ["## Model details", "",
             f"- {str(m.get('modality', 'image')).capitalize()} classifier into {len(classes)} "
             f"classes: {', '.join(f'`{c}`' for c in classes)} (the model's outputs, in this order)",
             f"- Backbone `{params.get('backbone', '?')}`: "
             + ("a head trained on the frozen backbone, then its top "
                f"{params['unfreeze_blocks']} block{'s' if params['unfreeze_blocks'] != 1 else ''} "
                "fine-tuned with it"
                if params.get("unfreeze_blocks") else "a head trained on the frozen backbone")
             + "; the recipe below",
             f"- Trial #{m.get('trial')} of study `{m.get('study')}`, at its best epoch: step "
             f"{m.get('best_step')} (stage {m.get('best_stage')})",
             f"- Exported {m.get('created', '?')} by tlsearch {versions.get('tlsearch', '?')} "
             f"(Keras {versions.get('keras', '?')}, TensorFlow {versions.get('tensorflow', '?')})",
             f"- Formats: {', '.join(formats) or 'none'}", ""]
    return lines + _table(["parameter", "value"], [[f"`{k}`", v] for k, v in params.items()])


def _intended_use(m: Mapping[str, Any]) -> list[str]:
    classes = m.get("classes") or []
    given = m.get("input") or {}
    what = (f"RGB pictures (pixels 0..255, resized to {given.get('image_size')} px inside "
            f"`tlsearch.load` and the SavedModel)" if given.get("kind") == "image"
            else "raw UTF-8 texts (tokenized inside the model)")
    return ["## Intended use", "",
            f"Sorting {what} into the {len(classes)} classes above, for inputs like those of the "
            f"training data below.",
            "",
            f"Not for inputs of other kinds or other classes: the model always answers one of its "
            f"{len(classes)} classes, with a probability that does not say the input was unlike "
            f"its training data."]


def _data(m: Mapping[str, Any]) -> list[str]:
    d = m.get("data") or {}
    lines = ["## Training data", ""]
    if not d:
        return lines + ["Not recorded (an export written outside a study)."]
    for name, path in (d.get("paths") or {}).items():
        lines.append(f"- `data.{name}`: `{path}` (as the study file gives it)")
    lines.append(f"- Fingerprint: `{d.get('fingerprint')}`")
    split = d.get("split") or {}
    if split.get("method") == "given":
        lines.append(f"- Validation: the examples of `{split.get('field')}`")
    elif split:
        lines.append(f"- Validation: a stratified random {_num(split.get('validation_split'))} "
                     f"of `data.path` (seed {split.get('seed')})")
    for key in ("not_read", "changed", "test_overlap"):
        if d.get(key):
            lines.append(f"- {d[key]}")
    counts = d.get("class_counts") or {}
    if counts:
        splits = list(counts)
        lines += ["", *_table(["class", *splits], [[f"`{c}`", *(counts[s].get(c, 0) for s in splits)]
                                                  for c in (m.get("classes") or [])]),
                  "| all | " + " | ".join(str((d.get("examples") or {}).get(s)) for s in splits)
                  + " |"]
    if (d.get("examples") or {}).get("target") is not None:
        lines += ["", f"Unlabelled target-domain examples: {d['examples']['target']}"]
    criterion = (m.get("domain_adaptation") or {}).get("criterion")
    if criterion:
        lines += ["", f"How the model was chosen: {criterion_statement(criterion)}."]
    return lines


def _evaluation(m: Mapping[str, Any]) -> list[str]:
    d = m.get("data") or {}
    n_val = (d.get("examples") or {}).get("validation")
    objective = str(m.get("objective"))
    lines = ["## Evaluation", "",
             f"- Validation ({n_val if n_val is not None else 'an unknown number of'} examples, "
             f"the data the trial was chosen on): `{objective}` = "
             f"{_pm(m.get('value'), m.get('value_se'), objective)}"]
    metrics = {k: v for k, v in (m.get("metrics") or {}).items() if isinstance(v, (int, float))}
    lines += [f"  - `{k}` = {_num(v)}" for k, v in metrics.items()
              if k.startswith("val_") and k != objective]
    trained = [f"`{k}` = {_num(v)}" for k, v in metrics.items() if not k.startswith("val_")]
    if trained:
        lines.append(f"- On the training data at that epoch: {', '.join(trained)}")
    rule = m.get("decision") or {}
    if rule.get("rule") == "threshold":
        lines.append(f"- Decision rule: `{rule.get('positive_class')}` when its probability is at "
                     f"least {_num(rule.get('threshold'))} (chosen on validation), otherwise the "
                     f"most probable other class")
    else:
        lines.append("- Decision rule: the most probable class")
    if m.get("objective_params"):
        lines.append(f"- Objective parameters: `{m['objective_params']}`")
    test = m.get("test")
    if not test:
        return lines + ["- Held-out test set: none"]
    se = test.get("se") or {}
    lines += [f"- Held-out test set ({test.get('n')} examples, never used to choose):",
              f"  - accuracy = {_pm(test.get('accuracy'), se.get('accuracy'), 'accuracy')}",
              f"  - loss = {_pm(test.get('loss'), se.get('loss'), 'loss')}",
              f"  - macro F1 = {_num(test.get('macro_f1'))}, macro AUC = "
              f"{_num(test.get('macro_auc'))}"]
    key = str(m.get("objective", "")).removeprefix("val_")
    if key in test and key not in ("accuracy", "loss"):
        lines.append(f"  - {key} = {_pm(test[key], se.get(key), key)}")
    point = test.get("operating_point")
    if point:
        lines.append(f"  - at the stored rule: sensitivity {_num(point.get('sensitivity'))}, "
                     f"specificity {_num(point.get('specificity'))}; requirement "
                     f"{'met' if point.get('requirement_met') else 'NOT met'}")
    per = test.get("per_class") or {}
    if per:
        lines += ["", *_table(["class", "precision", "recall", "F1", "support"],
                              [[f"`{c}`", v["precision"], v["recall"], v["f1"], v["support"]]
                               for c, v in per.items()])]
    return lines


def limitations(m: Mapping[str, Any]) -> list[str]:
    """One sentence per limitation the export's metadata shows."""
    d = m.get("data") or {}
    out = []
    n_val = (d.get("examples") or {}).get("validation")
    if isinstance(n_val, int) and n_val < SMALL_VALIDATION:
        se = m.get("value_se")
        width = f" (± {Z95 * se:.4f} at 95%)" if isinstance(se, (int, float)) else ""
        out.append(f"The validation set is small ({n_val} examples): the validation figures have "
                   f"wide error bars{width}, and trials that differ by less were not told apart.")
    criterion = (m.get("domain_adaptation") or {}).get("criterion")
    if criterion in DOMAIN_CRITERIA:
        rho = DOMAIN_CRITERIA[criterion][1]
        out.append(f"The model was adapted to a target domain and chosen without target labels "
                   f"(by {criterion}, a proxy whose ranking of trials agreed with their target "
                   f"accuracy "
                   + ("to an unmeasured degree" if rho is None else f"at Spearman {rho}")
                   + " on the benchmark Fashion-MNIST -> Fashion-MNIST-M, not on this data). "
                   "Its accuracy on the target domain "
                   "was never measured: measure it on labelled target data (`tlsearch evaluate`) "
                   "before relying on it there, and label about 10 target examples per class "
                   "(`data.target_validation`) to choose on them.")
    few = {c: n for c, n in ((d.get("class_counts") or {}).get("train") or {}).items()
           if n < FEW_EXAMPLES}
    if few:
        shown = ", ".join(f"`{c}` ({n})" for c, n in few.items())
        out.append(f"Classes with few training examples: {shown}; their figures are the least "
                   f"certain.")
    for line in m.get("fences") or []:
        out.append(f"The trial sits at a fence of the search space: {line}; a better model may "
                   f"lie beyond it.")
    test = m.get("test")
    if not test:
        out.append("No held-out test set: the validation figures are those of the best of many "
                   "trials on the same data, and so optimistic.")
    else:
        if len(m.get("judged_trials") or []) > 1:
            out.append(f"The test set has judged {len(m['judged_trials'])} trials: it is no "
                       f"longer fully held out, and its figures are optimistic.")
        point = test.get("operating_point") or {}
        if point and not point.get("requirement_met", True):
            out.append("The decision rule does not meet the study's requirement on the test set.")
    for key in ("test_overlap", "changed", "not_read"):
        if d.get(key):
            out.append(f"Data: {d[key]}.")
    return out


def _how_to_use(m: Mapping[str, Any], folder: str) -> list[str]:
    import shlex

    example = "picture.jpg" if (m.get("input") or {}).get("kind") == "image" else "texts.txt"
    q = shlex.quote(folder)
    return ["## How to use", "",
            "```bash",
            f"tlsearch predict {q} {example}    # label and probability per input",
            f"tlsearch evaluate {q} LABELLED_DATA    # the figures above, on other data",
            f"docker run --rm -p 8501:8501 -v \"$PWD/{folder}/serving:/models/model\" "
            f"-e MODEL_NAME=model tensorflow/serving    # TensorFlow Serving",
            "```", "",
            "```python",
            "import tlsearch",
            "",
            f"model = tlsearch.load(\"{folder}\")   # checks every file and metadata.json",
            f"model.predict([\"{example}\"])",
            "```", "",
            "`metadata.json` holds everything above as data; it and the model files are checked "
            "(SHA-256) whenever the export is loaded, and an edited one is refused. This card is "
            "not checked: add to it freely."]


def model_card(metadata: Mapping[str, Any], folder: str = "model") -> str:
    """The text of ``MODEL_CARD.md`` for an export folder named ``folder``."""
    title = f"# {metadata.get('study')}: trial #{metadata.get('trial')}"
    limits = limitations(metadata)
    parts = [[title, "", "Written by `tlsearch export` from `metadata.json`."],
             _details(metadata), _intended_use(metadata), _data(metadata), _evaluation(metadata),
             ["## Limitations", "", *([f"- {x}" for x in limits] or ["- None the study knows of."])],
             _how_to_use(metadata, folder)]
    return "\n\n".join("\n".join(p) for p in parts) + "\n"
