"""The three peers of the benchmark, each searching the same space under the same wall-clock budget.

1. ``plain_optuna``: what the Optuna examples (``keras_integration.py``, ``tfkeras_integration.py``)
   show, extended by the stage-2 ``fit`` users add: the full network with the frozen backbone, one
   ``model.fit`` per stage, ``optuna_integration.KerasPruningCallback`` on ``val_accuracy``. It keeps
   the examples' trap: the second ``fit`` counts epochs from 0 again, Optuna ignores a second report
   at a step it already has, so stage 2 is never pruned (ANCHORS trap 1). Left in on purpose: it is
   what users run, and it only makes this peer slower, never less accurate.
2. ``keras_tuner``: KerasTuner Hyperband with a ``HyperModel`` whose ``fit`` runs the same two stages
   (stage 2 from ``initial_epoch = stage1_epochs``, so Hyperband's epoch budget spans both).
3. ``tlsearch``: ``tlsearch run`` on a study file written to a temporary folder, with a cold cache.

Each peer runs in its own process (``python benchmarks/peers.py PEER ...``), so one peer's TensorFlow
state cannot slow down or speed up another, and writes one JSON record: every trial with its
parameters, seconds, epochs and best validation accuracy, and when it finished. A trial still running
when the budget ends is stopped and does not count.

Each peer's *chosen model* is the best epoch of its best completed trial within the budget (by
validation accuracy), kept as each peer keeps it: the plain loop keeps the weights of the best epoch
so far in memory, KerasTuner its per-trial checkpoint of the best epoch, tlsearch its stored
weights. After the budget, that one model is evaluated on the held-out test images, which no peer
saw while choosing (``chosen`` in the record).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import common
from common import BudgetSpent, Settings

PEERS = ("plain_optuna", "keras_tuner", "tlsearch")


class _EpochClock:
    """Seconds of each epoch, by stage: what a trial spent training as opposed to around it."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def callback(self, stage: int):
        import keras

        clock = self

        class _Cb(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                clock.epochs.append({"stage": stage, "seconds": time.perf_counter() - self._t,
                                     "val_accuracy": float((logs or {}).get("val_accuracy", np.nan))})

        return _Cb()


def _trial_record(number, params, t_start, t0, clock: _EpochClock, state: str) -> dict:
    accs = [e["val_accuracy"] for e in clock.epochs if np.isfinite(e["val_accuracy"])]
    return {
        "number": number, "params": params, "state": state,
        "seconds": time.perf_counter() - t_start,
        "finished_at": time.perf_counter() - t0,
        "epochs": clock.epochs,
        "val_accuracy": max(accs) if accs else None,
        "stage1_only": int(params.get("unfreeze_blocks", 0)) == 0,
    }


# ---------------------------------------------------------------------------------------------


def _chosen(trials: list[dict], budget: float) -> dict | None:
    """The best completed trial within the budget, by its best validation accuracy."""
    done = [t for t in trials if t["state"] == "COMPLETE" and t["finished_at"] <= budget + 1e-6
            and t["val_accuracy"] is not None]
    return max(done, key=lambda t: t["val_accuracy"]) if done else None


def _keep_best_epoch(holder: dict):
    """The weights of this trial's best epoch so far (by validation accuracy), kept in memory."""
    import keras

    class _Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            acc = float((logs or {}).get("val_accuracy", np.nan))
            if np.isfinite(acc) and acc > holder.get("val_accuracy", -1.0):
                holder.update(val_accuracy=acc, weights=self.model.get_weights())

    return _Keep()


def run_plain_optuna(s: Settings, data: dict, budget: float, max_trials: int | None = None) -> dict:
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    trials: list[dict] = []
    best_weights: dict[int, list] = {}  # of the best trial so far only
    t0 = time.perf_counter()
    deadline = t0 + budget
    xy = dict(x=data["x_train"], y=data["y_train"], validation_data=(data["x_val"], data["y_val"]),
              batch_size=s.batch_size, verbose=0)

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        t_start = time.perf_counter()
        clock = _EpochClock()
        p = common.suggest_optuna(trial)
        state = "FAIL"
        kept: dict = {}
        try:
            keras.utils.set_random_seed(s.seed)
            model, bb = common.build_two_stage(p, s, len(data["class_names"]))
            common.compile_model(model, p["lr_stage1"])
            cbs = [common.deadline_callback(deadline), clock.callback(1), _keep_best_epoch(kept)]
            model.fit(epochs=s.stage1_epochs, callbacks=cbs + [KerasPruningCallback(trial, "val_accuracy")], **xy)
            if p["unfreeze_blocks"] > 0 and s.stage2_epochs > 0:
                common.unfreeze(bb, p["unfreeze_blocks"])
                common.compile_model(model, p["lr_stage2"])
                cbs[1] = clock.callback(2)
                # the examples' way: epochs restart at 0, so these reports are ignored (trap 1)
                model.fit(epochs=s.stage2_epochs, callbacks=cbs + [KerasPruningCallback(trial, "val_accuracy")], **xy)
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        finally:
            if state != "FAIL":
                trials.append(_trial_record(trial.number, p, t_start, t0, clock, state))
                best = _chosen(trials, budget)
                if state == "COMPLETE" and best is not None and best["number"] == trial.number:
                    best_weights.clear()
                    best_weights[trial.number] = kept["weights"]
        return max(e["val_accuracy"] for e in clock.epochs)

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=s.seed),
                                pruner=optuna.pruners.MedianPruner())
    try:
        study.optimize(objective, timeout=budget, n_trials=max_trials)
    except BudgetSpent:
        pass
    wall = time.perf_counter() - t0
    chosen = _chosen(trials, budget)
    if chosen is not None:
        model, _ = common.build_two_stage(chosen["params"], s, len(data["class_names"]))
        model.set_weights(best_weights[chosen["number"]])
        chosen = {**_summary(chosen), "test_accuracy": common.test_accuracy(model, data)}
    return {"trials": trials, "wall": wall, "chosen": chosen}


def _summary(t: dict) -> dict:
    return {"number": t["number"], "params": t["params"], "val_accuracy": t["val_accuracy"]}


# ---------------------------------------------------------------------------------------------


def run_keras_tuner(s: Settings, data: dict, budget: float, max_trials: int | None = None) -> dict:
    import keras
    import keras_tuner as kt

    class KTBudgetSpent(BudgetSpent, kt.errors.FatalError):
        """Fatal to KerasTuner, so that the search stops instead of counting a failed trial."""

    trials: list[dict] = []
    t0 = time.perf_counter()
    deadline = t0 + budget
    n_classes = len(data["class_names"])

    class TwoStage(kt.HyperModel):
        def build(self, hp):
            p = common.suggest_keras_tuner(hp)
            keras.utils.set_random_seed(s.seed)
            model, bb = common.build_two_stage(p, s, n_classes)
            model._bench = (bb, p)
            common.compile_model(model, p["lr_stage1"])
            return model

        def fit(self, hp, model, *args, epochs=1, initial_epoch=0, callbacks=(), **kwargs):
            bb, p = model._bench
            clock = tuner.clock
            cbs = [*callbacks, deadline_cb, None]
            merged: dict[str, list] = {}

            def run(stage, end, start):
                cbs[-1] = clock.callback(stage)
                h = model.fit(*args, epochs=end, initial_epoch=start, callbacks=cbs, **kwargs)
                for k, v in h.history.items():
                    merged.setdefault(k, []).extend(v)

            e1 = s.stage1_epochs
            if initial_epoch < e1:
                run(1, min(epochs, e1), initial_epoch)
            if epochs > e1 and p["unfreeze_blocks"] > 0:
                common.unfreeze(bb, p["unfreeze_blocks"])
                common.compile_model(model, p["lr_stage2"])
                run(2, epochs, max(initial_epoch, e1))
            if not merged:  # a stage-1-only model promoted past stage 1: nothing more to train
                loss, acc = model.evaluate(*kwargs.get("validation_data", ()), verbose=0)
                return {"val_accuracy": float(acc), "val_loss": float(loss)}
            h = keras.callbacks.History()
            h.history = merged
            return h

    deadline_cb = _deadline_kt(deadline, KTBudgetSpent)

    class Tuner(kt.Hyperband):
        def on_trial_begin(self, trial):
            self.clock = _EpochClock()
            self._t_start = time.perf_counter()
            super().on_trial_begin(trial)

        def on_trial_end(self, trial):
            super().on_trial_end(trial)
            params = {k: trial.hyperparameters.values[k] for k in common.SPACE}
            rec = _trial_record(len(trials), params, self._t_start, t0, self.clock, "COMPLETE")
            rec["hyperband_epochs"] = trial.hyperparameters.values.get("tuner/epochs")
            rec["kt_trial_id"] = trial.trial_id
            trials.append(rec)
            if max_trials is not None and len(trials) >= max_trials:
                raise KTBudgetSpent()

    with tempfile.TemporaryDirectory() as tmp:
        tuner = Tuner(TwoStage(), objective="val_accuracy",
                      max_epochs=s.stage1_epochs + s.stage2_epochs, factor=3,
                      hyperband_iterations=1000, seed=s.seed, directory=tmp, project_name="kt",
                      overwrite=True, max_consecutive_failed_trials=3)
        try:
            tuner.search(data["x_train"], data["y_train"], batch_size=s.batch_size, verbose=0,
                         validation_data=(data["x_val"], data["y_val"]))
        except KTBudgetSpent:
            pass
        wall = time.perf_counter() - t0
        chosen = _chosen(trials, budget)
        if chosen is not None:  # its checkpoint: the best epoch, as KerasTuner keeps it
            model = tuner.load_model(tuner.oracle.trials[chosen["kt_trial_id"]])
            chosen = {**_summary(chosen), "test_accuracy": common.test_accuracy(model, data)}
    return {"trials": trials, "wall": wall, "chosen": chosen}


def _deadline_kt(deadline: float, exc: type):
    import keras

    class _Deadline(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if time.perf_counter() > deadline:
                raise exc()

    return _Deadline()


# ---------------------------------------------------------------------------------------------


def tlsearch_study_file(s: Settings, data: dict, folder: Path, *, budget: float | None = None,
                        n_trials: int | None = None, search: dict | None = None,
                        backbones: list | None = None, name: str = "bench") -> Path:
    """Write the data (npz) and a study file for it into ``folder``; returns the study file."""
    import yaml

    train, val = common.write_npz(data, folder / "data.npz")
    study = {
        "name": name, "storage": f"sqlite:///{folder / (name + '.db')}",
        "artifacts": str(folder / f"{name}-artifacts"),
        "objective": "val_accuracy", "seed": s.seed,
        "data": {"path": str(train), "validation": str(val), "image_size": s.image_size},
        "backbones": backbones or [common.BACKBONE],
        "training": {"stage1_epochs": s.stage1_epochs, "stage2_epochs": s.stage2_epochs,
                     "batch_size": s.batch_size},
        "search": search or common.tlsearch_space(),
        "cache": {"dir": str(folder / "cache")},
    }
    if budget is not None:
        study["timeout"] = float(budget)
    if n_trials is not None:
        study["n_trials"] = int(n_trials)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def tlsearch_trials(storage_url: str, name: str, t_begin: float, t0_wall: float) -> list[dict]:
    """Trial records read back from the study's storage, in the same shape as the other peers'."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage_url)
    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name not in ("COMPLETE", "PRUNED") or t.datetime_complete is None:
            continue
        hist = t.user_attrs.get("tlsearch.history", [])
        params = t.user_attrs.get("tlsearch.params", t.params)
        accs = [h["val_accuracy"] for h in hist if h.get("val_accuracy") is not None]
        end = t.datetime_complete.timestamp() - t0_wall
        out.append({
            "number": t.number, "params": params, "state": t.state.name,
            "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),
            "finished_at": end - t_begin,
            "epochs": [{"stage": h["stage"], "seconds": h["seconds"],
                        "val_accuracy": h["val_accuracy"]} for h in hist],
            "val_accuracy": max(accs) if accs else None,
            "stage1_only": int(params.get("unfreeze_blocks", 0)) == 0,
            "cached": t.user_attrs.get("tlsearch.cached"),
        })
    return out


def forward_seconds(s: Settings, data: dict, batch_size: int = 64) -> float:
    """One forward pass of every training and validation image through the backbone (warm)."""
    bb = common.build_backbone(s)
    bb.model.predict(data["x_train"][:batch_size], batch_size=batch_size, verbose=0)  # trace
    t = time.perf_counter()
    for x in (data["x_train"], data["x_val"]):
        bb.model.predict(x, batch_size=batch_size, verbose=0)
    return time.perf_counter() - t


def run_tlsearch(s: Settings, data: dict, budget: float, max_trials: int | None = None) -> dict:
    import contextlib
    import io

    from tlsearch.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = tlsearch_study_file(s, data, folder, budget=budget, n_trials=max_trials)
        log = io.StringIO()
        t0, t0_wall = time.perf_counter(), time.time()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            rc = main(["run", str(path)])
        wall = time.perf_counter() - t0
        if rc != 0:
            raise SystemExit(f"tlsearch run failed ({rc}):\n{log.getvalue()[-3000:]}")
        trials = tlsearch_trials(f"sqlite:///{folder / 'bench.db'}", "bench", 0.0, t0_wall)
        chosen = _chosen(trials, budget)
        if chosen is not None:  # a trial that started in time may end after the budget: not it
            chosen = {**_summary(chosen),
                      "test_accuracy": _tlsearch_test_accuracy(path, chosen["number"], data)}
    return {"trials": trials, "wall": wall, "forward_seconds": forward_seconds(s, data),
            "chosen": chosen}


def _tlsearch_test_accuracy(study_file: Path, number: int, data: dict, split: str = "test"
                            ) -> float:
    """Trial ``number`` rebuilt from its stored weights (best epoch), on the ``split`` images
    (the held-out test images unless told otherwise)."""
    from tlsearch.config import load_config
    from tlsearch.export.evaluate import evaluate_trial
    from tlsearch.export.exporter import select_trial
    from tlsearch.runner.prepare import load_study

    cfg = load_config(study_file)
    study = load_study(cfg)
    got = evaluate_trial(cfg, study, select_trial(study, number), data[f"x_{split}"],
                         study_labels(study, data, data[f"y_{split}"]))
    return float(got["accuracy"])


def study_labels(study, data: dict, y):
    """``y`` (indices into the data's ``class_names``) as indices into the study's classes: a
    study orders its classes by name, not by the order of the data set's label ids."""
    import numpy as np

    from tlsearch.search.attrs import ATTR

    classes = list(study.user_attrs[ATTR["classes"]])
    names = [str(n) for n in data["class_names"]]
    return np.array([classes.index(names[int(i)]) for i in y])


RUNNERS = {"plain_optuna": run_plain_optuna, "keras_tuner": run_keras_tuner, "tlsearch": run_tlsearch}


def run_peer(peer: str, s: Settings, budget: float, max_trials: int | None = None) -> dict:
    data = common.load_data(s)
    rss0 = common.rss_mb()
    result = RUNNERS[peer](s, data, budget, max_trials)
    result.update(peer=peer, budget_seconds=budget, max_trials=max_trials, settings=s.to_dict(),
                  data_source=data["source"], rss_start_mb=rss0, rss_end_mb=common.rss_mb())
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run one peer of the benchmark; writes one JSON record.")
    ap.add_argument("peer", choices=PEERS)
    ap.add_argument("--budget-seconds", type=float, required=True)
    ap.add_argument("--max-trials", type=int, default=None)
    ap.add_argument("--settings", default="{}", help="JSON overrides of common.Settings")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    s = common.settings_from(json.loads(a.settings))
    result = run_peer(a.peer, s, a.budget_seconds, a.max_trials)
    a.out.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
