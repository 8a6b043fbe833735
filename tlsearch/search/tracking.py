"""Experiment tracking: every trial as an MLflow run and as TensorBoard event files, as it runs.

The study's database stays the record tlsearch reads back (export, report, resume); trackers are
where teams already look. The objective (:func:`tlsearch.search.study.make_objective`) tells
:class:`Listeners` when a trial starts, after each epoch and when it ends; each configured tracker
is one :class:`Listener`.

Both trackers are optional and imported only when the study file's ``tracking:`` names them.
Whether one can work (MLflow installed, its store reachable, the log folder writable) is checked
by :func:`check_tracking` before the study is created, so a typo costs a message, not a study. A
tracker that fails later (its server gone mid-study) is reported once and dropped: tracking must
never cost a trial.

Runs and folders are named by the Optuna study a trial belongs to, not by the study file: one
study file can drive several Optuna studies (``tlsearch.objective`` in studies of the user's,
a study deleted and created again under its name). Each study gets a random id once, stored on it
(``tlsearch.study_uid``, see :func:`study_uid`), and its trials are ``<study>-<id>-trial-<n>`` in
MLflow and ``log_dir/<study>-<id>/trial-NNNN/`` in TensorBoard.
"""

from __future__ import annotations

import math
import sys
import time
import uuid
import weakref
from pathlib import Path
from typing import Any, Callable

from tlsearch._urls import redact_url
from tlsearch.config import StudyConfig
from tlsearch.errors import UserError
from tlsearch.search.artifacts import ARTIFACT_ATTR
from tlsearch.search.attrs import ATTR

__all__ = ["Listener", "Listeners", "MLflowListener", "TensorBoardListener", "open_listeners",
           "check_tracking", "METRICS", "study_uid", "study_label"]

#: the per-epoch numbers sent to trackers (the stage goes along as a metric of its own)
METRICS = ("loss", "val_loss", "val_accuracy", "val_auc")


def _warn(message: str) -> None:
    print(message, file=sys.stderr)


#: ids already read, per study object (a study deleted and created again is a new object), so a
#: trial's every epoch does not ask the database again
_UIDS: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def study_uid(study: Any) -> str:
    """The Optuna study's own id: a random hex string stored on the study the first time it is
    asked for (``tlsearch.study_uid``), so every worker and every later run finds the same one.

    Optuna's numeric study id is private and, in SQLite, handed out again after a study is
    deleted; a study deleted and created again under its name must not write into the runs of
    the one before. Two workers that start a new study's first trials at the same moment may
    both write one; the last write stands and is what both read back, so at worst their first
    trials carry another id of the same study, never one of another study.
    """
    known = _UIDS.get(study)
    if known is not None:
        return known
    uid = study.user_attrs.get(ATTR["study_uid"])
    if not uid:
        study.set_user_attr(ATTR["study_uid"], uuid.uuid4().hex)
        uid = study.user_attrs[ATTR["study_uid"]]
    _UIDS[study] = str(uid)
    return str(uid)


def study_label(study: Any) -> str:
    """``<study name>-<first 8 hex digits of its id>``: what names its runs and folders."""
    return f"{study.study_name}-{study_uid(study)[:8]}"


def _key(trial: Any) -> tuple[str, int]:
    """A running trial's key in a listener: one listener may hear trials of several studies."""
    return study_uid(trial.study), trial.number


class Listener:
    """Receives one trial's events. ``state`` is COMPLETE, PRUNED or FAIL."""

    def on_trial_start(self, trial: Any, params: dict[str, Any]) -> None:
        pass

    def on_epoch(self, trial: Any, record: Any) -> None:
        pass

    def on_trial_end(self, trial: Any, state: str, value: float | None) -> None:
        pass


class Listeners:
    """The configured listeners, called in turn; one that raises is reported and dropped."""

    def __init__(self, listeners: list[Listener] | None = None,
                 warn: Callable[[str], None] = _warn) -> None:
        self.listeners = list(listeners or [])
        self.warn = warn

    def __bool__(self) -> bool:
        return bool(self.listeners)

    def _each(self, method: str, *args: Any) -> None:
        for listener in list(self.listeners):
            try:
                getattr(listener, method)(*args)
            except Exception as e:
                self.listeners.remove(listener)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                self.warn(f"warning: tracking with {type(listener).__name__} stopped ({first}); "
                          f"the study goes on without it")

    def trial_start(self, trial: Any, params: dict[str, Any]) -> None:
        self._each("on_trial_start", trial, params)

    def epoch(self, trial: Any, record: Any) -> None:
        self._each("on_epoch", trial, record)

    def trial_end(self, trial: Any, state: str, value: float | None) -> None:
        self._each("on_trial_end", trial, state, value)

    def wrap(self, objective: Callable[[Any], float]) -> Callable[[Any], float]:
        """``objective`` that also reports how each trial ended (pruned, failed or its value)."""
        if not self.listeners:
            return objective
        import optuna

        def tracked(trial: Any) -> float:
            try:
                value = objective(trial)
            except optuna.TrialPruned:
                self.trial_end(trial, "PRUNED", None)
                raise
            except BaseException:
                self.trial_end(trial, "FAIL", None)
                raise
            self.trial_end(trial, "COMPLETE", value)
            return value

        return tracked


# ---------------------------------------------------------------------------------------------
# MLflow


class MLflowListener(Listener):
    """One MLflow run per trial: its parameters (the user's own ones too), per-epoch metrics with
    the stage as a metric, the value, the weights' SHA-256; the best trial so far tagged
    ``tlsearch.best=true``. Uses an :class:`mlflow.MlflowClient`, never the global active run,
    so a run the user has open is left alone."""

    def __init__(self, cfg: StudyConfig) -> None:
        assert cfg.tracking.mlflow is not None
        try:
            from mlflow import MlflowClient
        except ImportError:
            raise UserError("`tracking.mlflow`: MLflow is not installed; pip install "
                            "'tlsearch[mlflow]' (or remove `tracking.mlflow`)") from None
        import os

        uri = os.path.expandvars(cfg.tracking.mlflow.tracking_uri)
        self.experiment = cfg.tracking.mlflow.experiment or cfg.name
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    self.experiment_id = self.client.create_experiment(self.experiment)
                except Exception:  # another worker created it first
                    found = self.client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
            if found is not None:
                self.experiment_id = found.experiment_id
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
            raise UserError(f"`tracking.mlflow.tracking_uri`: MLflow cannot use "
                            f"{redact_url(uri)!r}: {first}") from None
        self.runs: dict[tuple[str, int], str] = {}
        self.logged: dict[tuple[str, int], set[str]] = {}
        self.stage: dict[tuple[str, int], int] = {}

    def on_trial_start(self, trial: Any, params: dict[str, Any]) -> None:
        study, key = trial.study, _key(trial)
        run = self.client.create_run(
            self.experiment_id, run_name=f"{study_label(study)}-trial-{trial.number}",
            tags={"tlsearch.study": study.study_name, "tlsearch.study_uid": key[0],
                  "tlsearch.trial": str(trial.number)})
        run_id = run.info.run_id
        self.runs[key] = run_id
        self._log_params(key, {**dict(trial.params), **params})
        trial.set_user_attr(ATTR["mlflow_run"], run_id)

    def _log_params(self, key: tuple[str, int], params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        done = self.logged.setdefault(key, set())
        new = {k: v for k, v in params.items() if k not in done}
        if new:
            self.client.log_batch(self.runs[key],
                                  params=[Param(k, str(v)) for k, v in new.items()])
            done.update(new)

    def on_epoch(self, trial: Any, record: Any) -> None:
        from mlflow.entities import Metric, RunTag

        key = _key(trial)
        run_id = self.runs.get(key)
        if run_id is None:
            return
        now = int(time.time() * 1000)
        values = {k: record.metrics.get(k) for k in METRICS}
        metrics = [Metric(k, float(v), now, record.step) for k, v in values.items()
                   if v is not None and math.isfinite(v)]
        metrics += [Metric("stage", float(record.stage), now, record.step),
                    Metric("epoch_seconds", float(record.seconds), now, record.step)]
        tags = []
        if self.stage.get(key) != record.stage:
            self.stage[key] = record.stage
            tags.append(RunTag(f"tlsearch.stage{record.stage}_first_step", str(record.step)))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_end(self, trial: Any, state: str, value: float | None) -> None:
        trial_key = _key(trial)
        run_id = self.runs.get(trial_key)
        if run_id is None:
            return
        attrs = trial.user_attrs
        self._log_params(trial_key, dict(trial.params))  # the user's own parameters too
        del self.runs[trial_key]
        self.logged.pop(trial_key, None)
        self.stage.pop(trial_key, None)
        tags = {"tlsearch.state": state}
        for key in ("best_step", "best_stage", "failure"):
            if ATTR[key] in attrs:
                tags[f"tlsearch.{key}"] = str(attrs[ATTR[key]])[:5000]
        artifact = attrs.get(ARTIFACT_ATTR) or {}
        for key in ("sha256", "size", "id"):
            if key in artifact:
                tags[f"tlsearch.artifact_{key}"] = str(artifact[key])
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)
        if value is not None and math.isfinite(value):
            self.client.log_metric(run_id, "value", float(value))
        self.client.set_terminated(run_id, "FAILED" if state == "FAIL" else "FINISHED")
        if state == "COMPLETE" and value is not None:
            self._tag_best(trial, run_id, float(value))

    def _tag_best(self, trial: Any, run_id: str, value: float) -> None:
        """Tag this run as the best if it beats every other complete trial of the study; the
        run of the previous best loses the tag."""
        study = trial.study
        if len(study.directions) != 1:
            return
        try:
            best = study.best_trial  # the others: this trial is not complete yet
        except ValueError:
            best = None
        maximize = study.direction.name == "MAXIMIZE"
        if best is not None and best.value is not None:
            if (value <= best.value) if maximize else (value >= best.value):
                self.client.set_tag(run_id, "tlsearch.best", "false")
                return
            previous = best.user_attrs.get(ATTR["mlflow_run"])
            if previous:
                self.client.set_tag(previous, "tlsearch.best", "false")
        self.client.set_tag(run_id, "tlsearch.best", "true")


# ---------------------------------------------------------------------------------------------
# TensorBoard


def _summary_metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    md = summary_pb2.SummaryMetadata()
    md.plugin_data.plugin_name = plugin
    md.data_class = (summary_pb2.DATA_CLASS_SCALAR if plugin == "scalars"
                     else summary_pb2.DATA_CLASS_TENSOR)
    return md


class TensorBoardListener(Listener):
    """``log_dir/<study>-<id>/trial-NNNN/``: each metric per global step, the stage as a scalar,
    and a text note at the step where each stage starts. Written with TensorFlow's own summary ops, so
    workers need no ``tensorboard`` package; viewing the logs does (``tensorboard --logdir``)."""

    def __init__(self, cfg: StudyConfig) -> None:
        assert cfg.tracking.tensorboard is not None
        self.root = cfg.resolve(cfg.tracking.tensorboard.log_dir)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"`tracking.tensorboard.log_dir`: {str(self.root)!r} cannot be "
                            f"created ({e.strerror or e})") from None
        self.writers: dict[tuple[str, int], Any] = {}
        self.stage: dict[tuple[str, int], int] = {}

    def folder(self, trial: Any) -> Path:
        """The trial's folder: under its study's (name and id), so studies never share one."""
        return self.root / study_label(trial.study) / f"trial-{trial.number:04d}"

    def _write(self, key: tuple[str, int], fn: Callable[[], None]) -> None:
        writer = self.writers.get(key)
        if writer is not None:
            with writer.as_default():
                fn()

    def on_trial_start(self, trial: Any, params: dict[str, Any]) -> None:
        import tensorflow as tf

        key = _key(trial)
        self.writers[key] = tf.summary.create_file_writer(str(self.folder(trial)))
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        self._write(key, lambda: self._text("trial", f"trial {trial.number}: {shown}", 0))

    def _text(self, tag: str, text: str, step: int) -> None:
        import tensorflow as tf

        tf.summary.write(tag, tf.constant(text), step=step, metadata=_summary_metadata("text"))

    def on_epoch(self, trial: Any, record: Any) -> None:
        import tensorflow as tf

        def write() -> None:
            md = _summary_metadata("scalars")
            for k in METRICS:
                v = record.metrics.get(k)
                if v is not None and math.isfinite(v):
                    tf.summary.write(k, tf.constant(float(v)), step=record.step, metadata=md)
            tf.summary.write("stage", tf.constant(float(record.stage)), step=record.step,
                             metadata=md)
            if self.stage.get(key) != record.stage:
                self._text("stage_boundary", f"stage {record.stage} starts at step {record.step}",
                           record.step)

        key = _key(trial)
        self._write(key, write)
        self.stage[key] = record.stage

    def on_trial_end(self, trial: Any, state: str, value: float | None) -> None:
        key = _key(trial)
        shown = "" if value is None else f" value={value:.6g}"
        self._write(key, lambda: self._text("result", f"{state}{shown}", 0))
        writer = self.writers.pop(key, None)
        self.stage.pop(key, None)
        if writer is not None:
            writer.close()


def open_listeners(cfg: StudyConfig, warn: Callable[[str], None] = _warn) -> Listeners:
    """The trackers the study file's ``tracking:`` names (none: an empty, free :class:`Listeners`)."""
    out: list[Listener] = []
    if cfg.tracking.mlflow is not None:
        out.append(MLflowListener(cfg))
    if cfg.tracking.tensorboard is not None:
        out.append(TensorBoardListener(cfg))
    return Listeners(out, warn)


def check_tracking(cfg: StudyConfig) -> None:
    """Raise :class:`~tlsearch.errors.UserError` now if a configured tracker cannot work."""
    open_listeners(cfg)
