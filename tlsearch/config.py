"""The study file: its schema, its defaults and its validation.

A study file is YAML. Everything is checked here, before any storage is opened, so a typo costs a
message and never a half-created study. Each problem names the dotted path of the field, the value
that was given and what was expected, with a "did you mean" for unknown keys.

Every search-space entry is written in one of three forms::

    dropout: 0.2                                 # fixed
    head_width: [64, 128, 256]                   # categorical choice
    lr_stage1: {low: 1.0e-4, high: 1.0e-2, log: true}   # a range (int if both ends are ints)
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import yaml
from pydantic import (Field, ValidationError, create_model, field_validator,
                      model_validator)

from tlsearch._messages import concerns, format_errors, unknown_keys, without_refused
from tlsearch._schema import ParamSpec, Range, Section
from tlsearch.config_checks import semantic_problems
from tlsearch._urls import journal_beside, sqlite_beside, sqlite_url
from tlsearch.errors import ConfigError
from tlsearch.params import DEFAULT_DOMAIN_CRITERION, DOMAIN_CRITERIA, DOMAIN_PARAMS, OBJECTIVES, PARAMS

#: the largest seed NumPy and scikit-learn accept (2**32 - 1)
SEED_MAX = 2**32 - 1

#: what a study's name may be: it names the database file, the artifact folder and the study in the
#: storage, so no path separators, no leading dot, no spaces or shell characters
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

__all__ = ["Range", "ParamSpec", "SamplerConfig", "PrunerConfig", "HeartbeatConfig", "DataConfig",
           "BackboneEntry", "TrainingConfig", "SearchConfig", "CacheConfig", "MLflowConfig",
           "TensorBoardConfig", "TrackingConfig", "FinalConfig", "StudyConfig", "load_config",
           "parse_config"]


class SamplerConfig(Section):
    """Which Optuna sampler proposes trials."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n_startup_trials: int = Field(5, ge=0, description="TPE: random trials before modelling")
    warm_start: bool = Field(True, description="first try the middle of the space")


class PrunerConfig(Section):
    """Which Optuna pruner stops unpromising trials. By default it judges each trial's running best
    from its first stage-2 epoch on, counting stage-2 epochs (see ``tlsearch.search.stage_pruning``)."""

    type: Literal["median", "hyperband", "successive_halving", "percentile", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="trials that fine-tuned to a stage-2 epoch "
                                  "before any trial is pruned there")
    n_warmup_steps: int = Field(1, ge=0, description="stage-2 epochs of each trial that are never "
                                "pruned (epochs from step 0 with prune_stage1 or no stage 2)")
    percentile: float = Field(25.0, gt=0, lt=100)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)
    prune_stage1: bool = Field(
        False, description="also prune during stage 1, on raw whole curves; by default no trial "
        "is pruned before its first stage-2 epoch, and stage-2 epochs are compared with stage-2 "
        "epochs")


class HeartbeatConfig(Section):
    """How a trial whose worker died is noticed (RDB storages): see Optuna's heartbeat."""

    interval: int = Field(30, ge=1, description="seconds between a running trial's heartbeats")
    grace_period: int = Field(90, ge=2, description="seconds without a heartbeat before FAIL")
    max_retry: int = Field(1, ge=0, description="how often a trial that died is tried again")

    @model_validator(mode="after")
    def _check(self) -> HeartbeatConfig:
        if self.grace_period <= self.interval:
            raise ValueError(
                f"`grace_period > interval` must hold, but got grace_period={self.grace_period}, "
                f"interval={self.interval}"
            )
        return self


class DataConfig(Section):
    """Where the labelled examples are and how they are split."""

    format: str | None = Field(None, description="image_folder, npz, csv, parquet, jsonl; inferred")
    path: Path
    validation: Path | None = Field(None, description="explicit validation data, same format")
    test: Path | None = Field(None, description="held-out test data, same format: never used to "
                              "choose a trial; the chosen one is evaluated on it once")
    validation_split: float = Field(0.2, gt=0, lt=1)
    test_split: float | None = Field(
        None, gt=0, lt=1, description="a held-out test set split off `path` (stratified, seeded), "
        "as `test` would be given: never used to choose a trial")
    target: Path | None = Field(None, description="unlabelled data of the domain the model will "
                                "serve, in the format of `path` without labels (a folder of "
                                "images, a .npz with `x`, a table with the text column)")
    target_validation: Path | None = Field(
        None, description="labelled target data in the format of `path`: every trial is judged "
        "on it (it replaces the source validation split)")
    image_size: int = Field(224, ge=8, le=1024, description="images are resized to this square")
    text_column: str = "text"
    label_column: str = "label"
    skip_bad_files: bool = Field(False, description="skip unreadable files instead of stopping")
    pixel_range: tuple[float, float] | None = Field(
        None, description=".npz only: the values that become 0 and 255, e.g. [-1, 1] or [0, 65535]")

    @model_validator(mode="after")
    def _check_splits(self) -> DataConfig:
        if self.test_split is not None and self.test is not None:
            raise ValueError("give `test` (held-out files) or `test_split` (a share of `path`), "
                             "not both")
        if self.test_split is not None and self.validation is None and \
                self.test_split + self.validation_split >= 1:
            raise ValueError(f"`test_split + validation_split < 1` must hold (training needs the "
                             f"rest), but got test_split={self.test_split:g}, "
                             f"validation_split={self.validation_split:g}")
        return self


class BackboneEntry(Section):
    """One candidate backbone. ``name`` is a registered backbone, or a label for a Keras file."""

    name: str
    weights: str | None = Field(
        "default", description="'default', 'imagenet', a path to a weights file, or none"
    )
    path: Path | None = Field(None, description="a .keras file: the user's own pretrained network")
    preprocessing: str | None = Field(None, description="for a .keras file: how inputs are scaled")
    block_ends: str | None = Field(None, description="for a .keras file: regex of block outputs")


class TrainingConfig(Section):
    """The fixed parts of the two-stage schedule."""

    stage1_epochs: int = Field(5, ge=1, description="epochs with the backbone frozen")
    stage2_epochs: int = Field(5, ge=0, description="epochs with the top blocks unfrozen")
    batch_size: int = Field(32, ge=1)
    class_weight: Literal["auto"] | dict[str, float] | None = None
    max_consecutive_failures: int = Field(3, ge=1)
    keep_bn_frozen: bool = Field(
        True, description="BatchNorm stays frozen, in inference mode, in stage 2; false updates "
        "the unfrozen blocks' BatchNorm statistics (needed when training from scratch)")


def _default_spec(value: Any) -> Any:
    return Range(**value) if isinstance(value, dict) else value


if TYPE_CHECKING:
    class SearchConfig(Section):
        """The search space: one field per catalogue entry, each a ``ParamSpec``."""

        def __getattr__(self, name: str) -> Any: ...
else:
    #: The search space, one field per catalogue entry (:data:`tlsearch.params.PARAMS`). Each
    #: entry is fixed, a list of choices, or a range.
    SearchConfig = create_model(
        "SearchConfig", __base__=Section, __doc__="The search space: one field per parameter.",
        **{p.name: (ParamSpec, Field(_default_spec(p.default), description=p.help))
           for p in PARAMS.values()},
    )


class PrescreenConfig(Section):
    """Rank the candidate backbones on their frozen features before any training, and search only
    the best ``keep`` (LogME, You et al., ICML 2021: seconds per backbone on cached features)."""

    method: Literal["logme"] = "logme"
    keep: int = Field(ge=1, description="how many of the best-ranked backbones the search keeps")


class CacheConfig(Section):
    """The frozen-feature cache shared by every trial of a study, and by later runs."""

    enabled: bool = True
    dir: Path | None = Field(None, description="default: $TLSEARCH_CACHE_DIR or ~/.cache/tlsearch")
    max_gb: float = Field(5.0, gt=0)


class MLflowConfig(Section):
    """An MLflow run per trial (``pip install 'tlsearch[mlflow]'``)."""

    tracking_uri: str = Field(description="http://host:5000, sqlite:///mlflow.db, databricks, ...")
    experiment: str | None = Field(None, description="default: the study's name")


class TensorBoardConfig(Section):
    """TensorBoard event files, one folder per trial."""

    log_dir: Path


class TrackingConfig(Section):
    """Experiment trackers that receive every trial as it runs, besides the study's database."""

    mlflow: MLflowConfig | None = None
    tensorboard: TensorBoardConfig | None = None


class FinalConfig(Section):
    """What ``tlsearch run`` does with the chosen trial once the search ends."""

    refit: bool = Field(False, description="train the best trial's configuration again on the "
                        "training and validation data together, for the epochs its best epoch "
                        "used, and keep it beside the trial (`tlsearch export` exports it)")


class StudyConfig(Section):
    """A whole study file."""

    name: str = Field(min_length=1)
    storage: str | None = Field(None, description="database URL; default: <name>.db beside the file")
    artifacts: Path | None = Field(None, description="artifact folder; default: <name>-artifacts")
    objective: str = Field("val_loss", description="what trials are judged by (see params.OBJECTIVES)")
    objective_params: dict[str, Any] | None = Field(
        None, description="the objective's parameters, e.g. {specificity: 0.95} for val_sens_at_spec")
    domain_selection: Literal[tuple(DOMAIN_CRITERIA)] = Field(  # type: ignore[valid-type]
        DEFAULT_DOMAIN_CRITERION, description="with `data.target` and no `data.target_validation`: the label-free "
        "criterion trials are judged by (lower is better): reverse_validation, iwv, entropy, "
        "info_max or bound_proxy (README, Domain adaptation)")
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds after which no new trial "
                                  "starts (a running trial finishes)")
    hard_timeout: float | None = Field(None, gt=0, description="seconds after which the running "
                                       "trial is stopped too, recorded as pruned")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    data: DataConfig
    backbones: list[Union[str, BackboneEntry]] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = Field(default_factory=SearchConfig)
    cache: CacheConfig = CacheConfig()
    prescreen: PrescreenConfig | None = None
    tracking: TrackingConfig = TrackingConfig()
    final: FinalConfig = FinalConfig()
    #: Folder of the study file; relative paths in the file are resolved against it.
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):
            raise ValueError("expected letters, digits, '.', '_' or '-' (at most 100, starting with "
                             "a letter or digit): the name is also a file name and a study name")
        return v

    @field_validator("backbones", mode="after")
    @classmethod
    def _normalise_backbones(cls, v: list[str | BackboneEntry]) -> list[BackboneEntry]:
        entries = [BackboneEntry(name=b) if isinstance(b, str) else b for b in v]
        seen: set[str] = set()
        for e in entries:
            if e.name in seen:
                raise ValueError(f"backbone {e.name!r} is listed twice")
            seen.add(e.name)
        return entries

    @field_validator("objective")
    @classmethod
    def _known_objective(cls, v: str) -> str:
        if v not in OBJECTIVES:
            hint = difflib.get_close_matches(v, list(OBJECTIVES), n=1, cutoff=0.5)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ValueError(f"expected one of {', '.join(map(repr, OBJECTIVES))}{tip}")
        return v

    @property
    def value_name(self) -> str:
        """What a trial's value is: the objective, or with ``data.target`` and no labelled target
        data the label-free criterion ``domain_selection`` (lower is better; train/dann_selection)."""
        if self.data.target is not None and self.data.target_validation is None:
            return self.domain_selection
        return self.objective

    @property
    def direction(self) -> str:
        return OBJECTIVES[self.objective].direction

    @property
    def backbone_entries(self) -> list[BackboneEntry]:
        return [b if isinstance(b, BackboneEntry) else BackboneEntry(name=b) for b in self.backbones]

    def resolve(self, p: Path | str) -> Path:
        p = Path(os.path.expanduser(str(p)))
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def storage_url(self) -> str:
        """The database URL: a relative SQLite or journal path lies beside the study file, as the
        data and the artifacts do; the default is ``<name>.db`` there, its path escaped in the URL."""
        if self.storage:
            url = sqlite_beside(os.path.expandvars(self.storage), self.base_dir)
            return journal_beside(url, self.base_dir)
        return sqlite_url(self.base_dir / (self.name + ".db"))

    @property
    def artifact_dir(self) -> Path:
        return self.resolve(self.artifacts or f"{self.name}-artifacts")

    @property
    def cache_dir(self) -> Path:
        if self.cache.dir is not None:
            return self.resolve(self.cache.dir)
        env = os.environ.get("TLSEARCH_CACHE_DIR")
        return Path(env) if env else Path.home() / ".cache" / "tlsearch"


# ---------------------------------------------------------------------------------------------
# Validation with messages a user can act on


def parse_config(raw: Any, *, source: str = "<study>", base_dir: Path | None = None) -> StudyConfig:
    """Validate a study given as a mapping. Raises :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of settings at the top level, got {raw!r}"])
    raw, problems = _flatten_domain(raw)
    problems += unknown_keys(StudyConfig, raw, "")
    base = {"base_dir": base_dir or Path(".")}
    cfg: StudyConfig | None = None
    try:
        cfg = StudyConfig.model_validate({**raw, **base})
        problems += semantic_problems(cfg)
    except ValidationError as e:
        problems += format_errors(e)
        # the rest of the file is still checked: a wrong field must not hide a wrong backbone
        bad, partial = without_refused(raw, e, set(StudyConfig.model_fields))
        stand_in = {"name": "x", "data": {"path": "."}, "backbones": ["tiny_cnn"]}
        try:
            rest = StudyConfig.model_validate({**{k: stand_in[k] for k in bad & set(stand_in)},
                                               **partial, **base})
        except ValidationError:
            rest = None
        if rest is not None:
            problems += [p for p in semantic_problems(rest) if not concerns(p, bad)]
    if problems:
        raise ConfigError(source, problems)
    assert cfg is not None
    return cfg


def _off_word(value: Any) -> Any:
    """YAML reads a bare ``off`` as false: here it is the word ``off``."""
    if isinstance(value, list):
        return [_off_word(v) for v in value]
    return "off" if value is False else value


def _flatten_domain(raw: dict) -> tuple[dict, list[str]]:
    """``search.domain_adaptation: {lambda_max, gamma, width}`` as the catalogue's flat
    parameters (``domain_lambda_max`` ...); unknown keys reported by their path."""
    search = raw.get("search")
    if not isinstance(search, dict) or "domain_adaptation" not in search:
        return raw, []
    search = dict(search)
    section = search.pop("domain_adaptation")
    if section is None:
        return {**raw, "search": search}, []
    if not isinstance(section, dict):
        return raw, [f"`search.domain_adaptation`: expected a mapping with keys "
                     f"{', '.join(DOMAIN_PARAMS)}, got {section!r}"]
    problems = []
    for key, value in section.items():
        if key not in DOMAIN_PARAMS:
            hint = difflib.get_close_matches(str(key), list(DOMAIN_PARAMS), n=1, cutoff=0.5)
            tip = f"; did you mean `{hint[0]}`?" if hint else ""
            problems.append(f"`search.domain_adaptation.{key}`: unknown key (expected one of: "
                            f"{', '.join(DOMAIN_PARAMS)}){tip}")
        else:
            search[DOMAIN_PARAMS[key]] = _off_word(value) if key == "lambda_max" else value
    if "lambda_max" not in section and not problems:
        problems.append("`search.domain_adaptation.lambda_max`: required: a fixed value, a range, "
                        "or a list of choices that may include `off`")
    return {**raw, "search": search}, problems


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a study file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["the study file does not exist"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["the file is not UTF-8 text"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(str(path), [f"not valid YAML{where}: {getattr(e, 'problem', e)}"]) from None
    return parse_config(raw, source=str(path), base_dir=path.resolve().parent)
