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
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from tlsearch._messages import format_errors, unknown_keys
from tlsearch.errors import ConfigError
from tlsearch.params import OBJECTIVES, PARAMS

__all__ = ["Range", "ParamSpec", "SamplerConfig", "PrunerConfig", "HeartbeatConfig", "DataConfig",
           "BackboneEntry", "TrainingConfig", "SearchConfig", "CacheConfig", "MLflowConfig",
           "TensorBoardConfig", "TrackingConfig", "StudyConfig", "load_config", "parse_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
    #: a section of the study file, whose unknown keys are reported with a "did you mean"
    is_section: ClassVar[bool] = True


class Range(_Section):
    """A searched numeric range. Integer when both ends are integers and ``log`` allows it."""

    is_section: ClassVar[bool] = False  # a value of a parameter, not a section

    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if not self.low <= self.high:
            raise ValueError(f"`low <= high` must hold, but got low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs `low > 0`, but got low={self.low!r}")
        if self.log and self.step is not None:
            raise ValueError("`step` and `log: true` cannot be used together")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"`step` must be positive, but got {self.step!r}")
        return self

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(
            self.low, bool
        ) and (self.step is None or isinstance(self.step, int))


Scalar = Union[bool, int, float, str]
#: A search-space entry: fixed value, list of choices, or a range.
ParamSpec = Union[Range, list[Scalar], Scalar]


class SamplerConfig(_Section):
    """Which Optuna sampler proposes trials."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int | None = None
    n_startup_trials: int = Field(5, ge=0, description="TPE: random trials before modelling")
    warm_start: bool = Field(True, description="first try the middle of the space")


class PrunerConfig(_Section):
    """Which Optuna pruner stops unpromising trials, on one step count across both stages."""

    type: Literal["median", "hyperband", "successive_halving", "percentile", "none"] = "median"
    n_startup_trials: int = Field(3, ge=0, description="trials that are never pruned")
    n_warmup_steps: int = Field(2, ge=0, description="epochs of each trial that are never pruned")
    percentile: float = Field(25.0, gt=0, lt=100)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)


class HeartbeatConfig(_Section):
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


class DataConfig(_Section):
    """Where the labelled examples are and how they are split."""

    format: str | None = Field(None, description="image_folder, npz, csv, parquet, jsonl; inferred")
    path: Path
    validation: Path | None = Field(None, description="explicit validation data, same format")
    validation_split: float = Field(0.2, gt=0, lt=1)
    image_size: int = Field(224, ge=8, le=1024, description="images are resized to this square")
    text_column: str = "text"
    label_column: str = "label"
    skip_bad_files: bool = Field(False, description="skip unreadable files instead of stopping")
    pixel_range: tuple[float, float] | None = Field(
        None, description=".npz only: the values that become 0 and 255, e.g. [-1, 1] or [0, 65535]")


class BackboneEntry(_Section):
    """One candidate backbone. ``name`` is a registered backbone, or a label for a Keras file."""

    name: str
    weights: str | None = Field(
        "default", description="'default', 'imagenet', a path to a weights file, or none"
    )
    path: Path | None = Field(None, description="a .keras file: the user's own pretrained network")
    preprocessing: str | None = Field(None, description="for a .keras file: how inputs are scaled")
    block_ends: str | None = Field(None, description="for a .keras file: regex of block outputs")


class TrainingConfig(_Section):
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
    class SearchConfig(_Section):
        """The search space: one field per catalogue entry, each a ``ParamSpec``."""

        def __getattr__(self, name: str) -> Any: ...
else:
    #: The search space, one field per catalogue entry (:data:`tlsearch.params.PARAMS`). Each
    #: entry is fixed, a list of choices, or a range.
    SearchConfig = create_model(
        "SearchConfig", __base__=_Section, __doc__="The search space: one field per parameter.",
        **{p.name: (ParamSpec, Field(_default_spec(p.default), description=p.help))
           for p in PARAMS.values()},
    )


class CacheConfig(_Section):
    """The frozen-feature cache shared by every trial of a study, and by later runs."""

    enabled: bool = True
    dir: Path | None = Field(None, description="default: $TLSEARCH_CACHE_DIR or ~/.cache/tlsearch")
    max_gb: float = Field(5.0, gt=0)


class MLflowConfig(_Section):
    """An MLflow run per trial (``pip install 'tlsearch[mlflow]'``)."""

    tracking_uri: str = Field(description="http://host:5000, sqlite:///mlflow.db, databricks, ...")
    experiment: str | None = Field(None, description="default: the study's name")


class TensorBoardConfig(_Section):
    """TensorBoard event files, one folder per trial."""

    log_dir: Path


class TrackingConfig(_Section):
    """Experiment trackers that receive every trial as it runs, besides the study's database."""

    mlflow: MLflowConfig | None = None
    tensorboard: TensorBoardConfig | None = None


class StudyConfig(_Section):
    """A whole study file."""

    name: str = Field(min_length=1)
    storage: str | None = Field(None, description="database URL; default: <name>.db beside the file")
    artifacts: Path | None = Field(None, description="artifact folder; default: <name>-artifacts")
    objective: str = Field("val_loss", description="what trials are judged by (see params.OBJECTIVES)")
    n_trials: int | None = Field(None, ge=1)
    timeout: float | None = Field(None, gt=0, description="seconds")
    seed: int = 0
    sampler: SamplerConfig = SamplerConfig()
    pruner: PrunerConfig = PrunerConfig()
    heartbeat: HeartbeatConfig = HeartbeatConfig()
    data: DataConfig
    backbones: list[Union[str, BackboneEntry]] = Field(min_length=1)
    training: TrainingConfig = TrainingConfig()
    search: SearchConfig = Field(default_factory=SearchConfig)
    cache: CacheConfig = CacheConfig()
    tracking: TrackingConfig = TrackingConfig()
    #: Folder of the study file; relative paths in the file are resolved against it.
    base_dir: Path = Field(Path("."), exclude=True)

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

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        if self.n_trials is None and self.timeout is None:
            raise ValueError("set `n_trials`, `timeout` or both: a study needs a budget")
        return self

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
        if self.storage:
            return os.path.expandvars(self.storage)
        return f"sqlite:///{(self.base_dir / (self.name + '.db')).resolve()}"

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


def _semantic_problems(cfg: StudyConfig) -> list[str]:
    """Checks that need the registry or more than one field at once."""
    from tlsearch.backbones import registry

    problems: list[str] = []
    for i, entry in enumerate(cfg.backbone_entries):
        if entry.path is not None:
            if not str(entry.path).endswith(".keras"):
                problems.append(
                    f"`backbones[{i}].path`: expected a .keras file, got {str(entry.path)!r}"
                )
            if entry.preprocessing is not None and entry.preprocessing not in registry.PREPROCESSING:
                problems.append(
                    f"`backbones[{i}].preprocessing`: expected one of "
                    f"{sorted(registry.PREPROCESSING)}, got {entry.preprocessing!r}"
                )
            continue
        if entry.name not in registry.names():
            hint = difflib.get_close_matches(entry.name, registry.names(), n=1, cutoff=0.5)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            problems.append(
                f"`backbones[{i}].name`: unknown backbone {entry.name!r} "
                f"(run `tlsearch backbones` for the list){tip}"
            )
    s = cfg.search

    def bounds(spec: Any) -> tuple[float, float] | None:
        if isinstance(spec, Range):
            return float(spec.low), float(spec.high)
        if isinstance(spec, list):
            if not spec:
                return None
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in spec):
                return float(min(spec)), float(max(spec))
            return None
        if isinstance(spec, (int, float)) and not isinstance(spec, bool):
            return float(spec), float(spec)
        return None

    for p in PARAMS.values():
        spec = getattr(s, p.name)
        if isinstance(spec, list) and not spec:
            problems.append(f"`search.{p.name}`: an empty list of choices")
            continue
        if p.kind == "choice":
            values = spec if isinstance(spec, list) else [spec]
            if isinstance(spec, Range):
                problems.append(f"`search.{p.name}`: expected one of {list(p.choices)} or a list "
                                f"of them, got a range")
                continue
            for v in values:
                if v not in p.choices:
                    problems.append(f"`search.{p.name}`: expected one of {list(p.choices)}, "
                                    f"got {v!r}")
            continue
        b = bounds(spec)
        if b is None:
            problems.append(
                f"`search.{p.name}`: expected a number, a list of numbers or {{low, high}}, "
                f"got {spec!r}"
            )
            continue
        lo = p.low if p.low is not None else -math.inf
        hi = p.high if p.high is not None else math.inf
        if b[0] < lo or b[1] > hi:
            shown_hi = "inf" if p.high is not None and p.high >= 10**6 else f"{hi:g}"
            problems.append(f"`search.{p.name}`: values must lie in [{lo:g}, {shown_hi}], "
                            f"got {spec!r}")
        if p.kind == "int":
            values = spec if isinstance(spec, list) else [spec] if not isinstance(spec, Range) else []
            if isinstance(spec, Range) and not spec.is_int:
                problems.append(f"`search.{p.name}`: expected integer bounds, got {spec!r}")
            if any(not float(v).is_integer() for v in values):
                problems.append(f"`search.{p.name}`: expected integers, got {spec!r}")
    b1, b2 = bounds(s.lr_stage1), bounds(s.lr_stage2)
    if b1 and b2 and b2[1] > b1[0]:
        problems.append(
            "`search.lr_stage2`: every stage-2 learning rate must be at most every stage-1 rate "
            f"(fine-tuning runs slower), but lr_stage2 reaches {b2[1]:g} while lr_stage1 starts "
            f"at {b1[0]:g}"
        )
    return problems


def parse_config(raw: Any, *, source: str = "<study>", base_dir: Path | None = None) -> StudyConfig:
    """Validate a study given as a mapping. Raises :class:`ConfigError` listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"expected a mapping of settings at the top level, got {raw!r}"])
    problems = unknown_keys(StudyConfig, raw, "")
    cfg = None
    try:
        cfg = StudyConfig.model_validate({**raw, "base_dir": base_dir or Path(".")})
    except ValidationError as e:
        problems += format_errors(e)
    if cfg is not None and not problems:
        problems += _semantic_problems(cfg)
    if problems:
        raise ConfigError(source, problems)
    assert cfg is not None
    return cfg


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
