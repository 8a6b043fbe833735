"""What the user watches while a study runs.

Four ways to show the same events (a trial starts, a stage, a batch, an epoch, frozen features
being computed, a trial ends):

* ``live``: on a terminal, a panel redrawn in place: the running trial's stage, epoch, batch and
  running metrics, the elapsed and estimated remaining time of the trial and of the study, and a
  bar while features are computed; one line per finished trial scrolls above it.
* ``plain``: anywhere else (a log file, CI, a pipe): one line per epoch (stage, epoch, metrics),
  one per finished trial, and during feature computation one when it starts and at most one a
  minute after; no control codes.
* ``json``: one JSON object a line per event (``"event": "trial_start" | "stage" | "epoch" |
  "features" | "trial_end"``), for programs.
* ``quiet``: nothing.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable

from rich.console import Console

from tlsearch.search.progress_view import (epoch_line, features_line, fmt, render_panel,
                                           seconds, trial_line)

__all__ = ["Progress", "MODES", "json_safe"]

MODES = ("auto", "live", "plain", "json", "quiet")

#: plain output shows feature computation at most this often (seconds)
FEATURE_LINE_EVERY = 60.0


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float as None, so that it is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


class Progress:
    """Receives the study's events and shows them (see the module's docstring for ``mode``).

    ``epochs`` is ``(stage1_epochs, stage2_epochs)``, for "epoch 2/4" and the time estimates;
    ``timeout`` (seconds) caps the study's estimate. ``live`` is kept for callers that only
    choose between the panel (True) and plain lines (False).
    """

    def __init__(self, console: Console | None = None, *, objective: str = "val_loss",
                 maximize: bool = False, live: bool | None = None, label: str = "",
                 mode: str = "auto", epochs: tuple[int, int] = (0, 0),
                 timeout: float | None = None, emit: Callable[[str], None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        self.console = console or Console()
        if mode == "auto":
            mode = ("live" if self.console.is_terminal else "plain") if live is None else \
                ("live" if live else "plain")
        self.mode = mode
        self.use_live = mode == "live"
        self.objective = objective
        self.maximize = maximize
        self.label = label  # which worker prints, when several share a stream
        self.epochs = epochs
        self.timeout = timeout
        self._emit_json = emit or (lambda line: (sys.stdout.write(line + "\n"), sys.stdout.flush()))
        #: what a trial's value is called when it is not the objective (a label-free criterion)
        self.value_label = objective
        self._live: Any = None
        self.total: int | None = None
        self.done = 0
        self.best: tuple[int, float] | None = None
        self.current: dict = {}
        self.features: dict | None = None
        self.trial_seconds: list[float] = []
        self.stage2_epoch_seconds: list[float] = []
        self._t0 = time.perf_counter()
        self._last_draw = 0.0
        self._last_feature_line = -math.inf

    # --- lifecycle
    def start(self, total: int | None, done: int, best: tuple[int, float] | None = None) -> None:
        self.total, self.done, self.best = total, done, best
        self._t0 = time.perf_counter()
        if self.use_live:
            from rich.live import Live

            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def message(self, text: str) -> None:
        if self.mode in ("live", "plain"):
            self.console.print(text, highlight=False, soft_wrap=True)

    # --- events
    def trial_start(self, number: int, params: dict) -> None:
        u = params.get("unfreeze_blocks", 0)
        runs2 = self.epochs[1] > 0 and (u == "all" or (isinstance(u, (int, float)) and u > 0))
        self.current = {"number": number, "params": params, "stage": 1, "step": None,
                        "epoch": 0, "metrics": {}, "running": {}, "batch": None, "steps": None,
                        "t": time.perf_counter(), "epoch_seconds": {1: [], 2: []},
                        "planned": {1: self.epochs[0], 2: self.epochs[1] if runs2 else 0}}
        self._json("trial_start", trial=number, params=params)
        self._refresh(force=True)

    def stage(self, stage: int) -> None:
        if not self.current:
            return
        self.current.update(stage=stage, epoch=0, batch=None, running={})
        self._json("stage", trial=self.current["number"], stage=stage)
        self._refresh(force=True)

    def batch(self, stage: int, batch: int, steps: int | None, logs: dict) -> None:
        """After a training batch: only the live panel shows it (at most 4 times a second)."""
        if self._live is None or not self.current:
            return
        now = time.perf_counter()
        if now - self._last_draw < 0.25:
            return
        running = {}
        for k, v in logs.items():
            try:
                running[k] = float(v)
            except (TypeError, ValueError):
                continue
        self.current.update(batch=batch, steps=steps, running=running)
        self._refresh()

    def epoch(self, record) -> None:
        c = self.current
        if not c:
            return
        stage = int(record.stage)
        c["epoch_seconds"].setdefault(stage, []).append(float(record.seconds))
        c.update(step=record.step, stage=stage, epoch=len(c["epoch_seconds"][stage]),
                 metrics=dict(record.metrics), batch=None, running={})
        if self.mode == "json":
            self._json("epoch", trial=c["number"], stage=stage, epoch=c["epoch"],
                       epochs=c["planned"].get(stage), step=record.step,
                       metrics=dict(record.metrics), seconds=round(float(record.seconds), 3),
                       trial_seconds_left=self.trial_left())
        elif self.mode == "plain":
            self.console.print(self._prefix() + epoch_line(self, record), highlight=False,
                               soft_wrap=True)
        self._refresh(force=True)

    def on_features(self, what: str, done: int, total: int, unit: str = "images") -> None:
        """Frozen outputs being computed: ``done`` of ``total`` rows."""
        now = time.perf_counter()
        if done == 0 or self.features is None or self.features.get("what") != what:
            self.features = {"what": what, "t": now, "total": total, "unit": unit}
        f = self.features
        f["done"] = done
        elapsed = now - f["t"]
        f["left"] = elapsed / done * (total - done) if done else None
        finished = done >= total
        # before the panel starts (a prescreen computes features first), as plain lines
        plain = self.mode == "plain" or (self.mode == "live" and self._live is None)
        if plain and not finished and (
                done == 0 or now - self._last_feature_line >= FEATURE_LINE_EVERY):
            self._last_feature_line = now
            self.console.print(self._prefix() + features_line(f), highlight=False,
                               soft_wrap=True)
        elif self.mode == "json" and (finished or done == 0
                                      or now - self._last_feature_line >= 1.0):
            self._last_feature_line = now
            self._json("features", what=what, done=done, total=total, unit=unit,
                       seconds_left=None if f["left"] is None else round(f["left"], 1))
        if finished:
            self.features = None
        self._refresh(force=finished or done == 0)

    def trial_end(self, number: int, state: str, value: float | None, note: str = "") -> None:
        self.done += 1
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            if self.best is None or (value > self.best[1] if self.maximize else value < self.best[1]):
                self.best = (number, value)
        secs = time.perf_counter() - self.current.get("t", time.perf_counter())
        self.trial_seconds.append(secs)
        self.stage2_epoch_seconds += self.current.get("epoch_seconds", {}).get(2, [])
        if self.mode == "json":
            self._json("trial_end", trial=number, state=state, value=value,
                       seconds=round(secs, 3), note=note or None,
                       best=None if self.best is None else {"trial": self.best[0],
                                                            "value": self.best[1]})
        elif self.mode in ("live", "plain"):
            line = self._prefix() + trial_line(self, number, state, value, secs, note)
            (self._live.console if self._live is not None else self.console).print(
                line, highlight=False, soft_wrap=True)
        self.current = {}
        self._refresh(force=True)

    # --- estimates
    def trial_left(self) -> float | None:
        """Seconds the running trial has left: this trial's epochs so far per stage, stage 2's
        from earlier trials when it has not started; None when nothing tells."""
        c = self.current
        if not c or not any(c["planned"].values()):  # no schedule given: nothing to tell
            return None
        left = 0.0
        for stage in (1, 2):
            planned = c["planned"].get(stage, 0)
            done = c["epoch_seconds"].get(stage, [])
            todo = planned - len(done)
            if todo <= 0:
                continue
            known = done or (self.stage2_epoch_seconds if stage == 2 else [])
            if not known:
                return None
            left += todo * sum(known) / len(known)
        return left

    def study_left(self) -> float | None:
        """Seconds until the study's target: the running trial's estimate, then the mean trial
        so far for each trial still to run, at most until ``timeout``; None when unknown."""
        if self.total is None or not self.trial_seconds:
            return None
        here = self.trial_left() if self.current else 0.0
        if here is None:
            return None
        todo = max(0, self.total - self.done - (1 if self.current else 0))
        est = here + todo * sum(self.trial_seconds) / len(self.trial_seconds)
        until = self.timeout_in()
        return est if until is None else min(est, until + here)

    def timeout_in(self) -> float | None:
        """Seconds until ``timeout`` (no new trial after it), or None without one."""
        if self.timeout is None:
            return None
        return max(0.0, self.timeout - (time.perf_counter() - self._t0))

    # --- drawing
    def _prefix(self) -> str:
        return f"{self.label}: " if self.label else ""

    def _json(self, event: str, **fields: Any) -> None:
        if self.mode != "json":
            return
        obj = {"event": event, **({"worker": self.label} if self.label else {}), **fields}
        self._emit_json(json.dumps(json_safe(obj)))

    def _refresh(self, force: bool = False) -> None:
        if self._live is None:
            return
        now = time.perf_counter()
        if force or now - self._last_draw >= 0.25:
            self._last_draw = now
            self._live.update(self._render())

    def _render(self):
        return render_panel(self, time.perf_counter() - self._t0)


# re-exported for callers that format numbers the way the display does
__all__ += ["fmt", "seconds"]
