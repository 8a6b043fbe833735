"""KerasTuner on tlsearch's recipe: a :class:`keras_tuner.HyperModel` made from a study file.

::

    import keras_tuner as kt
    from tlsearch.keras_tuner import TransferHyperModel

    hypermodel = TransferHyperModel.from_yaml("study.yaml")
    tuner = kt.Hyperband(hypermodel, objective="val_loss", max_epochs=10, directory="kt")
    tuner.search()                      # the data comes from the study file
    hypermodel.export(tuner, "best-model")

``build(hp)`` maps the study file's search space onto KerasTuner's ``hp`` through the same code
that maps it onto Optuna (:func:`tlsearch.space.suggest`), and ``fit(hp, model)`` runs the same two
stages with the same feature cache (:func:`tlsearch.train.pipeline.run_trial`), reporting every
epoch to the tuner's callbacks on one step count across both stages.

Hyperband gives a trial an epoch budget (``epochs``): its first ``stage1_epochs`` go to stage 1 and
the rest to stage 2, so ``max_epochs`` takes the place of ``stage1_epochs + stage2_epochs``. A
trial that Hyperband continues is trained again from the start for its whole budget rather than
resumed from ``initial_epoch`` (stage 1 runs on cached features, so this costs little; it keeps
one trial one run of the recipe). The objective must be one of tlsearch's objectives
(``val_loss``, ``val_accuracy``, ``val_auc``); the best epoch by it is the trial's, as in
``tlsearch run``. Callbacks hear each epoch once it ended; a request to stop training
(``model.stop_training``) is not honoured: the stages run their epochs.

Needs ``pip install 'tlsearch[tuner]'`` (KerasTuner and ``tensorboard``, without which KerasTuner
1.4 fails every trial).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, cast

try:
    import keras_tuner as kt
    from keras_tuner.src.engine.tuner_utils import SaveBestEpoch
except ImportError as e:  # pragma: no cover - depends on the installation
    raise ImportError("tlsearch.keras_tuner needs KerasTuner: pip install 'tlsearch[tuner]'") from e

from tlsearch import modalities, space
from tlsearch._hashing import sha256_file
from tlsearch.config import StudyConfig, load_config
from tlsearch.errors import TrialFailure, UserError
from tlsearch.params import OBJECTIVES, TrialParams

if TYPE_CHECKING:
    from tlsearch.search.study import StudyInputs

__all__ = ["TransferHyperModel"]

#: the files a trial leaves in its KerasTuner trial folder, besides KerasTuner's own
RECORD_FILE = "tlsearch-trial.json"
WEIGHTS_FILE = "tlsearch.weights.npz"
#: what ``tuner.search()`` may pass on to ``fit`` (the data and batch size come from the study file)
_FIT_KWARGS = {"callbacks", "epochs", "initial_epoch", "verbose"}


class _HpSuggest:
    """Optuna's ``suggest_*`` calls answered by KerasTuner's ``hp``, so that
    :func:`tlsearch.space.suggest` maps the space onto KerasTuner as it does onto Optuna.

    Parameters that depend on the backbone are declared per backbone (``unfreeze_blocks[vgg16]``)
    with that backbone's range, as in the Optuna study (:mod:`tlsearch.space`)."""

    def __init__(self, hp: Any, dists: dict) -> None:
        self.hp, self.dists = hp, dists

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self.hp.Choice(name, list(choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        d = self.dists[name]
        v = self.hp.Int(name, int(d.low), int(d.high), step=None if d.log else int(d.step),
                        sampling="log" if d.log else "linear")
        return int(min(max(v, low), high))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None,
                      log: bool = False) -> float:
        return float(self.hp.Float(name, low, high, step=step,
                                   sampling="log" if log else "linear"))


class TransferHyperModel(kt.HyperModel):
    """The study file's search space and two-stage training, as a KerasTuner hypermodel."""

    def __init__(self, cfg: StudyConfig, *, name: str | None = None, tunable: bool = True) -> None:
        if importlib.util.find_spec("tensorboard") is None:
            raise ImportError("KerasTuner 1.4 fails every trial without tensorboard: pip install "
                              "'tlsearch[tuner]'")
        if cfg.value_name != cfg.objective:
            raise UserError("`data.target` without `data.target_validation`: trials are judged by "
                            "a label-free criterion on their last epoch, which KerasTuner's "
                            "per-epoch objective cannot express; use `tlsearch run`, or give "
                            "labelled target data in `data.target_validation`")
        super().__init__(name=name or cfg.name, tunable=tunable)
        self.cfg = cfg
        self.modality = modalities.modality_of(cfg.backbone_entries).name
        self._prep: StudyInputs | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **kwargs: Any) -> TransferHyperModel:
        """The hypermodel of a study file."""
        return cls(load_config(path), **kwargs)

    @property
    def prepared(self) -> StudyInputs:
        """The checked data, the backbone source with its cache, the schedule (on first use; no
        study storage is opened: :func:`tlsearch.search.study.load_inputs`)."""
        if self._prep is None:
            from tlsearch.api import prepare_standalone

            self._prep = prepare_standalone(self.cfg)
        return self._prep

    def params(self, hp: Any) -> TrialParams:
        """The trial's parameters, declaring them on ``hp`` (fixed ones come from the file)."""
        prep = self.prepared
        hp_as_trial = cast(Any, _HpSuggest(hp, space.distributions(self.cfg, self.modality,
                                                                   prep.caps)))
        return space.suggest(hp_as_trial, self.cfg, self.modality, prep.caps)

    def build(self, hp: Any) -> Any:
        """The full model (pretrained backbone, new head) that ``fit`` leaves trained."""
        prep = self.prepared
        return prep.kind.build_model(self.cfg, self.params(hp), {}, prep.data.n_classes)

    def _schedule(self, epochs: int | None, savers: list) -> Any:
        schedule = self.prepared.schedule
        if savers:
            name = savers[0].objective.name
            if name not in OBJECTIVES:
                raise kt.errors.FatalValueError(
                    f"objective {name!r}: TransferHyperModel judges trials by one of "
                    f"{list(OBJECTIVES)}")
            if name != schedule.objective:  # the study's parameters are its objective's
                schedule = replace(schedule, objective=name, objective_params=None)
        if epochs is not None:
            first = min(int(epochs), schedule.stage1_epochs)
            schedule = replace(schedule, stage1_epochs=first, stage2_epochs=int(epochs) - first)
        return schedule

    def fit(self, hp: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        """Train the trial's two stages; return their History (one entry per global step)."""
        import keras

        from tlsearch.train.pipeline import METRIC_KEYS, clear_state, run_trial

        unknown = sorted(set(kwargs) - _FIT_KWARGS)
        if args or unknown:
            raise kt.errors.FatalValueError(
                f"TransferHyperModel trains on the study file's data with its `training:` "
                f"settings: call tuner.search() without data or fit arguments (got "
                f"{len(args)} positional, {unknown})")
        prep = self.prepared
        params = self.params(hp)
        callbacks = list(kwargs.get("callbacks") or [])
        savers = [c for c in callbacks if isinstance(c, SaveBestEpoch)]
        live = [c for c in callbacks if not isinstance(c, SaveBestEpoch)]
        schedule = self._schedule(kwargs.get("epochs"), savers)
        history: dict[str, list[float]] = {k: [] for k in METRIC_KEYS}
        for c in live:
            c.set_model(model)
            c.on_train_begin()

        def on_epoch(rec: Any) -> None:
            logs = {k: float(rec.metrics[k]) for k in METRIC_KEYS}
            for k, v in logs.items():
                history[k].append(v)
            for c in live:
                c.on_epoch_begin(rec.step)
                c.on_epoch_end(rec.step, dict(logs))

        try:
            result = run_trial(params, schedule, prep.data, prep.source, on_epoch)
        except TrialFailure as e:
            raise kt.errors.FailedTrialError(str(e)) from e
        finally:
            clear_state(prep.source)
        for c in live:
            c.on_train_end()
        trained = prep.kind.build_model(self.cfg, params, result.weights, prep.data.n_classes)
        model.set_weights(trained.get_weights())
        for saver in savers:  # KerasTuner's checkpoint: the best epoch's weights, whole model
            model.save_weights(saver.filepath)
            self._keep(Path(saver.filepath).parent, params, schedule, result)
        out = keras.callbacks.History()
        out.history = history
        return out

    def _keep(self, folder: Path, params: TrialParams, schedule: Any, result: Any) -> None:
        """The trial's weights as ``tlsearch run`` stores them, with what export needs."""
        from tlsearch.search.artifacts import save_weights

        weights = folder / WEIGHTS_FILE
        save_weights(result.weights, weights)
        relevant = set(space.space_entries(self.cfg, self.modality))
        record = {
            "params": asdict(params),
            "shown": {k: v for k, v in asdict(params).items() if k in relevant},
            "classes": list(self.prepared.data.class_names),
            "modality": self.modality,
            "objective": schedule.objective,
            "direction": OBJECTIVES[schedule.objective].direction,
            "value": result.value,
            "best_step": result.best_step,
            "best_stage": result.best_stage,
            "history": result.history_dicts(),
            "weights": {"file": WEIGHTS_FILE, "size": weights.stat().st_size,
                        "sha256": sha256_file(weights)},
        }
        (folder / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n")

    def export(self, tuner: Any, out_dir: str | Path, *, formats: tuple[str, ...] | None = None,
               force: bool = False, log: Callable[[str], None] = print) -> Any:
        """Write the tuner's best trial as ``tlsearch export`` would: the same folder, formats
        and ``metadata.json``, from the weights its ``fit`` kept (checked against their
        SHA-256). Returns :class:`tlsearch.export.ExportResult`."""
        from tlsearch.export.exporter import FORMATS, write_export
        from tlsearch.search.artifacts import load_weights

        best = tuner.oracle.get_best_trials(1)
        if not best:
            raise UserError("the tuner has no finished trial to export: run tuner.search() first")
        trial = best[0]
        folder = Path(tuner.get_trial_dir(trial.trial_id))
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"trial {trial.trial_id} of the tuner holds no tlsearch record "
                            f"({e}); was it searched with a TransferHyperModel?") from None
        path = folder / record["weights"]["file"]
        if (not path.is_file() or path.stat().st_size != record["weights"]["size"]
                or sha256_file(path) != record["weights"]["sha256"]):
            raise UserError(f"{str(path)!r}: the trial's weights are missing or damaged (size or "
                            f"SHA-256 differ from the record); refusing to export them")
        kind = modalities.get(record["modality"])
        model = kind.build_model(self.cfg, TrialParams.from_dict(record["params"]),
                                 load_weights(path.read_bytes()), len(record["classes"]))
        step = record["best_step"]
        at_best: dict = next((r for r in record["history"] if r["step"] == step), {})
        log(f"exporting best trial {trial.trial_id} of tuner project {tuner.project_name!r} "
            f"({record['objective']}={record['value']:.4g}) at its best epoch: step {step} "
            f"(stage {record['best_stage']})")
        meta = {
            "study": tuner.project_name, "trial": trial.trial_id, "value": record["value"],
            "objective": record["objective"], "direction": record["direction"],
            "best_step": step, "best_stage": record["best_stage"],
            "metrics": {k: at_best[k] for k in ("loss", *OBJECTIVES) if k in at_best},
            "params": record["shown"], "classes": record["classes"],
            "weights_artifact": {k: record["weights"][k] for k in ("size", "sha256")},
            "source": "keras_tuner",
        }
        return write_export(self.cfg, model, kind, out_dir, meta,
                            formats=FORMATS if formats is None else formats, force=force, log=log)
