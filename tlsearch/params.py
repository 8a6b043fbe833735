"""The catalogue: every search parameter and every objective, described once.

The study-file schema (:mod:`tlsearch.config`), its bounds checks, the Optuna distributions and the
resume signature (:mod:`tlsearch.space`), a trial's :class:`TrialParams` and the report's labels are
all derived from :data:`PARAMS` and :data:`OBJECTIVES`. Adding a parameter is one :class:`Param`
here, its field on :class:`TrialParams`, and the code that uses it; adding an objective is one
:class:`Objective` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Literal, Mapping

from tlsearch import metrics as M
from tlsearch.metrics import Score

__all__ = ["PREPROCESSING_MODES", "POOLING_MODES", "Param", "PARAMS", "Objective", "OBJECTIVES",
           "TrialParams", "UNFREEZE_ALL", "params_for", "objective", "objective_params", "compute",
           "positive_index",
           "MODALITIES", "DOMAIN_PARAMS", "adapts", "adapts_backbone", "DOMAIN_CRITERIA",
           "DEFAULT_DOMAIN_CRITERION", "criterion_statement"]

#: the kinds of input a backbone takes; each has a :mod:`tlsearch.modalities` entry
MODALITIES = ("image", "text")

#: ``unfreeze_blocks: all``: every block of the backbone, and the layers in none (a text model's
#: embeddings), whatever its block count
UNFREEZE_ALL = "all"

#: image preprocessing mode -> what it does to RGB pixels in [0, 255] (see ``layers.Preprocess``)
PREPROCESSING_MODES = {
    "none": "passed through as float32 (the network scales its own inputs)",
    "unit": "x / 255",
    "tf": "x / 127.5 - 1 (Inception, MobileNetV2, Xception)",
    "caffe": "RGB to BGR, minus the ImageNet channel means (VGG, ResNet v1)",
    "torch": "(x / 255 - ImageNet mean) / ImageNet std",
    "lite": "(x - 127) / 128 (EfficientNet-Lite)",
}

#: text pooling mode -> what it does to the encoder's last hidden states (see ``layers.TextPooling``)
POOLING_MODES = {
    "cls": "the first token's vector ([CLS] for BERT, <s> for RoBERTa)",
    "mean": "the mean over real tokens (padding masked out), as sentence-transformers pools",
    "last": "the last real token's vector: a decoder (GPT-2) sees only the left context, so its "
            "last token is the one that has read the whole text",
}


@dataclass(frozen=True)
class Param:
    """One searchable parameter of a trial.

    ``low``/``high`` bound every value the study file may give (a fixed value, each choice, both
    ends of a range); ``choices`` lists the allowed values of a categorical text parameter.
    ``stage`` is the training stage that uses it (0: the whole trial), so a parameter of a stage
    that does not run is not sampled.
    """

    name: str
    default: Any
    help: str
    kind: Literal["int", "float", "choice"] = "float"
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    modalities: tuple[str, ...] = MODALITIES
    stage: int = 0
    #: the parameter's range depends on the backbone (capped by its number of blocks)
    per_backbone: bool = False
    #: words a numeric parameter also takes, fixed or among its choices (``unfreeze_blocks: all``)
    words: tuple[str, ...] = ()
    #: ``low`` itself is excluded (``lr_decay`` in (0, 1])
    low_open: bool = False
    #: the value at which the parameter changes nothing (None: every value matters). A trial
    #: whose study file leaves it there does not show it, and a study stored before the
    #: parameter existed reads as having it there.
    off: Any = None
    #: where the study file writes it under ``search`` when that is not its name
    #: (``domain_adaptation.lambda_max`` for ``domain_lambda_max``)
    path: str = ""

    @property
    def where(self) -> str:
        """Its dotted path in the study file, below ``search``."""
        return self.path or self.name


PARAMS: dict[str, Param] = {p.name: p for p in (
    Param("unfreeze_blocks", {"low": 0, "high": 3}, "top blocks of the backbone trained in stage 2 "
          "(0: pure feature extraction; `all`: every block and the embeddings or stem, each "
          "backbone its own count)", kind="int", low=0, high=10**6, stage=2, per_backbone=True,
          words=(UNFREEZE_ALL,)),
    Param("head_width", [64, 128, 256], "units of the head's hidden dense layer", kind="int",
          low=1, high=65536, stage=0),
    Param("dropout", {"low": 0.0, "high": 0.5}, "dropout rate before the head's output layer",
          low=0.0, high=0.95, stage=0),
    Param("lr_stage1", {"low": 1e-4, "high": 1e-2, "log": True}, "learning rate of stage 1 (head)",
          low=1e-9, high=10.0, stage=1),
    Param("lr_stage2", {"low": 1e-6, "high": 1e-4, "log": True}, "learning rate of stage 2 "
          "(fine-tuning), below every stage-1 rate", low=1e-9, high=10.0, stage=2),
    Param("lr_decay", 1.0, "layer-wise learning-rate decay in (0, 1]: the top block trains at "
          "lr_stage2, each block below at lr_decay times the one above (the head at lr_stage2)",
          low=0.0, high=1.0, low_open=True, stage=2, off=1.0),
    Param("unfreeze_every", 0, "gradual unfreezing: stage 2 starts with the top block and "
          "unfreezes one more every this many epochs (0: all at once)", kind="int", low=0, high=10**6,
          stage=2, off=0),
    Param("augmentation", 0.0, "shorthand in [0, 1] for flip: horizontal, rotation 0.1x, zoom "
          "0.2x, translation 0.1x; cannot be given with those", low=0.0, high=1.0,
          modalities=("image",), off=0.0),
    Param("flip", "none", "random flips: none (digits, text in images), horizontal, or both "
          "(horizontal and vertical: microscopy, satellite images)", kind="choice",
          choices=("none", "horizontal", "both"), modalities=("image",), off="none"),
    Param("rotation", 0.0, "largest random rotation, a fraction of a full turn (0.05 = 18 "
          "degrees)", low=0.0, high=0.5, modalities=("image",), off=0.0),
    Param("zoom", 0.0, "largest random zoom in or out, a fraction of the size", low=0.0, high=0.9,
          modalities=("image",), off=0.0),
    Param("translation", 0.0, "largest random shift, a fraction of the size", low=0.0, high=0.5,
          modalities=("image",), off=0.0),
    Param("contrast", 0.0, "random contrast: each image's contrast scaled by a factor in "
          "[1 - c, 1 + c]", low=0.0, high=1.0, modalities=("image",), off=0.0),
    Param("mixup", 0.0, "mixup's alpha: each batch blended with a shuffled copy of itself, images "
          "and labels, by a Beta(alpha, alpha) weight (0: off)", low=0.0, high=10.0,
          modalities=("image",), off=0.0),
    Param("domain_lambda_max", "off", "domain adaptation (DANN on cached features, stage 1; "
          "stage 2 too with domain_adaptation.stage: backbone): "
          "the strength the gradient reversal ramps up to; `off` trains the plain head, so "
          "[off, 0.1, 1.0] lets the search decide whether adaptation helps", low=0.0, high=100.0,
          stage=1, words=("off",), off="off", path="domain_adaptation.lambda_max"),
    Param("domain_gamma", 10.0, "domain adaptation: how fast lambda ramps up, "
          "lambda_max * (2 / (1 + exp(-gamma p)) - 1) over the stage's progress p",
          low=0.0, high=1000.0, low_open=True, stage=1, off=10.0, path="domain_adaptation.gamma"),
    Param("domain_width", 64, "domain adaptation: units of the domain classifier's hidden layer",
          kind="int", low=1, high=65536, stage=1, off=64, path="domain_adaptation.width"),
    Param("domain_stage", "head", "domain adaptation: where the reversed gradient goes; `head`: "
          "stage 1 only, into the head's hidden layer; `backbone`: stage 2 too, through the "
          "unfrozen top blocks (a trial with unfreeze_blocks > 0)", kind="choice",
          choices=("head", "backbone"), stage=2, off="head", path="domain_adaptation.stage"),
    Param("pooling", "cls", "how the encoder's hidden states become one vector", kind="choice",
          choices=tuple(POOLING_MODES), modalities=("text",)),
    Param("max_length", 128, "tokens per text (longer texts are truncated)", kind="int", low=8,
          high=4096, modalities=("text",)),
)}


#: the study file's ``search.domain_adaptation`` keys -> the catalogue's parameters
DOMAIN_PARAMS = {"lambda_max": "domain_lambda_max", "gamma": "domain_gamma",
                 "width": "domain_width", "stage": "domain_stage"}

#: the label-free criteria a study with ``data.target`` and no ``data.target_validation`` may be
#: judged by (``domain_selection``; all: lower is better; :mod:`tlsearch.train.dann_selection`
#: computes them): what each is, and the Spearman rank correlation of its ranking (low values
#: first) with target test accuracy measured on Fashion-MNIST -> Fashion-MNIST-M (BENCHMARKS.md,
#: "Choosing without target labels": one study of 30 trials, 90% bootstrap interval; None: not
#: measured)
DOMAIN_CRITERIA: dict[str, tuple[str, str | None]] = {
    "reverse_validation": ("reverse validation: a classifier trained on the target examples "
                           "labelled by the trial, scored on labelled source validation data",
                           "+0.51 (90% interval +0.28 to +0.66, 30 trials)"),
    "iwv": ("importance-weighted source validation loss, its weights estimated once on the frozen "
            "backbone's features", "-0.26 (90% interval -0.50 to +0.02, 30 trials)"),
    "entropy": ("mean entropy of the trial's predictions on held-out target examples",
                "+0.02 (90% interval -0.30 to +0.35, 30 trials)"),
    "info_max": ("information maximisation: prediction entropy on held-out target examples plus "
                 "how far their mean prediction is from uniform",
                 "+0.47 (90% interval +0.22 to +0.66, 30 trials)"),
    "bound_proxy": ("source validation error + max(0, 2 x held-out domain accuracy - 1)",
                    "+0.70 (90% interval +0.48 to +0.82, 30 trials; -0.06 in an earlier "
                    "16-trial study)"),
}
#: what a study without ``data.target_validation`` is judged by unless its file says otherwise
DEFAULT_DOMAIN_CRITERION = "reverse_validation"


def criterion_statement(criterion: str) -> str:
    """Which criterion chose a domain-adapted model and how far to trust it, in one sentence
    (the run's summary, the report and the model card say it)."""
    if criterion == "target_validation":
        return ("chosen on the labelled target data (`data.target_validation`): the objective "
                "measured on the domain the model serves")
    what, rho = DOMAIN_CRITERIA.get(criterion, (criterion, None))
    measured = "not measured" if rho is None else f"Spearman {rho}"
    return (f"chosen without target labels by {criterion} ({what}); how well it ranked trials "
            f"by target accuracy on the benchmark Fashion-MNIST -> Fashion-MNIST-M, not on this "
            f"study's data: {measured}. Label about 10 target examples per class and give them "
            f"as `data.target_validation` to choose on the target itself")


def adapts(params: TrialParams) -> bool:
    """Whether a trial trains with domain adaptation (``lambda_max`` is not ``off``)."""
    return params.domain_lambda_max != "off"


def adapts_backbone(params: TrialParams) -> bool:
    """Whether a trial adapts in stage 2 too, through the backbone's unfrozen top blocks: it
    adapts, ``domain_stage`` is ``backbone`` and it unfreezes blocks."""
    u = params.unfreeze_blocks
    return (adapts(params) and params.domain_stage == "backbone"
            and (u == UNFREEZE_ALL or int(u) > 0))


def params_for(modality: str) -> list[Param]:
    """The parameters a study of ``modality`` searches, in catalogue order."""
    return [p for p in PARAMS.values() if modality in p.modalities]


@dataclass(frozen=True)
class Objective:
    """One objective a study can optimise: what a trial is judged by.

    ``source`` says where the per-epoch value comes from: ``"keras"`` for a metric compiled into
    every model (``metric`` builds it; None for the loss), ``"callback"`` for the ones
    :class:`~tlsearch.train.validation.ValidationMetrics` computes from the validation predictions.
    ``compute(p, y, **params)`` gives the value from predictions (:mod:`tlsearch.metrics`), for the
    callback, the report and evaluation alike. ``threshold``: whether it also chooses a decision
    threshold (logged as ``<name>_threshold``) that predict applies. ``params`` holds its
    parameters and their defaults; ``binary`` marks screening objectives (one positive class).
    """

    name: str
    direction: Literal["minimize", "maximize"]
    label: str
    compute: Callable[..., Score]
    source: Literal["keras", "callback"] = "callback"
    metric: Callable[[], Any] | None = None
    threshold: bool = False
    params: Mapping[str, object] = field(default_factory=dict)
    binary: bool = False

    @property
    def needs_callback(self) -> bool:
        return self.source == "callback"

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


def _accuracy() -> Any:
    import keras

    return keras.metrics.CategoricalAccuracy(name="accuracy")


def _auc() -> Any:
    import keras

    return keras.metrics.AUC(name="auc")


def _plain(fn: Callable[..., float]) -> Callable[..., Score]:
    def compute(p: Any, y: Any, **params: Any) -> Score:
        return Score(fn(p, y, **params), math.nan)

    return compute


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("val_loss", "minimize", "validation loss (cross-entropy, unweighted)",
              _plain(M.weighted_crossentropy), source="keras"),
    Objective("val_accuracy", "maximize", "validation accuracy", _plain(M.accuracy),
              source="keras", metric=_accuracy),
    Objective("val_auc", "maximize", "validation ROC AUC as Keras computes it: for more than two "
              "classes a micro average (all class columns pooled, frequent classes dominate); "
              "val_macro_auc is the per-class average", _plain(M.pooled_auc), source="keras",
              metric=_auc),
    Objective("val_macro_auc", "maximize", "one-vs-rest ROC AUC averaged over classes (the binary "
              "AUC for two classes)", _plain(M.macro_auc)),
    Objective("val_macro_f1", "maximize", "F1 averaged over classes with equal weight",
              _plain(M.macro_f1)),
    Objective("val_balanced_accuracy", "maximize", "recall averaged over classes: each class "
              "counts equally however rare", _plain(M.balanced_accuracy)),
    Objective("val_sens_at_spec", "maximize", "sensitivity of the positive class at the threshold "
              "keeping specificity at or above the required value; the threshold is kept for "
              "predict", M.sensitivity_at_specificity, threshold=True,
              params={"specificity": 0.9, "positive": 1}, binary=True),
    Objective("val_spec_at_sens", "maximize", "specificity at the threshold keeping the positive "
              "class's sensitivity at or above the required value; the threshold is kept for "
              "predict", M.specificity_at_sensitivity, threshold=True,
              params={"sensitivity": 0.9, "positive": 1}, binary=True),
    Objective("val_weighted_loss", "minimize", "class-weighted mean cross-entropy on the "
              "validation data: the loss that matches training with class weights",
              _plain(M.weighted_crossentropy), params={"class_weight": "balanced"}),
)}


def objective(name: str) -> Objective:
    """The catalogue entry, with the known names in the error."""
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(f"unknown objective {name!r}; expected one of {list(OBJECTIVES)}") from None


def objective_params(obj: Objective, params: Mapping[str, object] | None) -> dict[str, object]:
    """The objective's parameters: its defaults, overridden by ``params`` (unknown names refused)."""
    given = dict(params or {})
    unknown = set(given) - set(obj.params)
    if unknown:
        raise ValueError(f"objective {obj.name!r} takes no parameter {sorted(unknown)}; "
                         f"it takes {sorted(obj.params) or 'none'}")
    problems = [f"`objective_params.{k}`: {why}" for k, v in given.items()
                if (why := _param_problem(k, v))]
    if problems:
        raise ObjectiveParamsError(problems)
    return {**obj.params, **given}


class ObjectiveParamsError(ValueError):
    """Objective parameters out of range: one problem a line, each naming its field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _param_problem(name: str, v: object) -> str | None:
    """What is wrong with one objective parameter's value, or None: checked before the study is
    created (a specificity of 1.5 failed the first trial with Optuna's traceback). ``positive``
    is checked against the classes once the data is read (:func:`positive_index`)."""
    def number(x: object) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if name in ("specificity", "sensitivity"):
        if not (number(v) and 0.0 < float(v) <= 1.0):  # type: ignore[arg-type]
            return f"expected a required {name} in (0, 1], got {v!r}"
    elif name == "class_weight":
        weights = list(v.values()) if isinstance(v, Mapping) else v if isinstance(v, list) \
            else None
        if v in ("balanced", "auto"):
            return None
        if weights is None or not all(number(w) and float(w) >= 0 for w in weights) \
                or not any(float(w) > 0 for w in weights):
            return (f"expected `balanced`, a mapping of class to weight or a list of weights, "
                    f"each a number >= 0 and not all 0, got {v!r}")
    return None


def positive_index(value: object, classes: list[str]) -> int:
    """``objective_params.positive`` as a class index: the class's name, or its index (the form
    study files written before names were accepted use). ValueError names the classes."""
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(classes):
        return value
    raise ValueError(f"expected a class name in {classes} or its index in 0..{len(classes) - 1}, "
                     f"got {value!r}")


def compute(name: str, p: Any, y: Any, params: Mapping[str, object] | None = None) -> Score:
    """Any catalogue objective from predictions: ``Score(value, threshold)`` (threshold NaN for
    the objectives that choose none)."""
    obj = objective(name)
    return obj.compute(p, y, **objective_params(obj, params))


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space: plain values, whoever chose them (one field per
    :data:`PARAMS` entry, plus the backbone)."""

    backbone: str
    unfreeze_blocks: int | str = 0  # or UNFREEZE_ALL
    head_width: int = 128
    dropout: float = 0.2
    lr_stage1: float = 1e-3
    lr_stage2: float = 1e-5
    lr_decay: float = 1.0
    unfreeze_every: int = 0
    augmentation: float = 0.0
    flip: str = "none"
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    mixup: float = 0.0
    domain_lambda_max: float | str = "off"
    domain_gamma: float = 10.0
    domain_width: int = 64
    domain_stage: str = "head"
    pooling: str = "cls"
    max_length: int = 128

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialParams:
        """From stored values; names the catalogue no longer has are refused, missing ones default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown trial parameters {unknown}")
        return cls(**values)
