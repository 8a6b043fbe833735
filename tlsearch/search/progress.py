"""What the user watches while a study runs: a live panel on a terminal, plain lines elsewhere."""

from __future__ import annotations

import math
import time

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

__all__ = ["Progress"]


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{digits}f}"


class Progress:
    """Receives the study's events and shows them.

    On a terminal: a panel with the running trial (backbone, stage, epoch, validation loss) and the
    best value so far, redrawn in place. Elsewhere (CI, a log file): one line per finished trial.
    """

    def __init__(self, console: Console | None = None, *, objective: str = "val_loss",
                 maximize: bool = False, live: bool | None = None, label: str = "") -> None:
        self.console = console or Console(stderr=True)
        self.objective = objective
        self.maximize = maximize
        self.use_live = self.console.is_terminal if live is None else live
        self.label = label  # which worker prints, when several share a terminal
        #: what a trial's value is called when it is not the objective (a label-free criterion)
        self.value_label = objective
        self._live: Live | None = None
        self.total: int | None = None
        self.done = 0
        self.best: tuple[int, float] | None = None
        self.current: dict = {}
        self.recent: list[str] = []
        self._t0 = time.perf_counter()

    # --- lifecycle
    def start(self, total: int | None, done: int, best: tuple[int, float] | None = None) -> None:
        self.total, self.done, self.best = total, done, best
        self._t0 = time.perf_counter()
        if self.use_live:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4,
                              transient=True)
            self._live.start()

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def message(self, text: str) -> None:
        self.console.print(text)

    # --- events
    def trial_start(self, number: int, params: dict) -> None:
        self.current = {"number": number, "params": params, "stage": 1, "step": None,
                        "val_loss": None, "value": None, "t": time.perf_counter()}
        self._refresh()

    def stage(self, stage: int) -> None:
        self.current["stage"] = stage
        self._refresh()

    def epoch(self, record) -> None:
        self.current.update(step=record.step, stage=record.stage, val_loss=record.val_loss,
                            value=record.value(self.objective))
        self._refresh()

    def trial_end(self, number: int, state: str, value: float | None, note: str = "") -> None:
        self.done += 1
        if state == "COMPLETE" and value is not None and math.isfinite(value):
            if self.best is None or (value > self.best[1] if self.maximize else value < self.best[1]):
                self.best = (number, value)
        secs = time.perf_counter() - self.current.get("t", time.perf_counter())
        p = self.current.get("params", {})
        line = (f"{self.label + ': ' if self.label else ''}trial {number:>3} {state:<8} {self.value_label}={_fmt(value)}  "
                f"{p.get('backbone', '')} unfreeze={p.get('unfreeze_blocks', '-')} "
                f"width={p.get('head_width', '-')} ({secs:.1f}s)"
                + (f"  {note}" if note else ""))
        if self.best:
            line += f"  best: #{self.best[0]} {_fmt(self.best[1])}"
        self.recent = (self.recent + [line])[-5:]
        if self._live is not None:
            self._live.console.print(line)
            self._refresh()
        else:
            self.console.print(line, highlight=False, soft_wrap=True)

    # --- drawing
    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _render(self):
        total = f"/{self.total}" if self.total else ""
        elapsed = time.perf_counter() - self._t0
        head = Text(f"tlsearch  trials {self.done}{total} finished  "
                    f"best {self.objective}: "
                    f"{_fmt(self.best[1]) + f' (trial {self.best[0]})' if self.best else '-'}  "
                    f"[{elapsed:.0f}s]", style="bold")
        t = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        cols = ["trial", "backbone", "stage", "step", "val_loss"]
        if self.objective != "val_loss":
            cols.append(self.objective)
        for col in cols:
            t.add_column(col)
        if self.current:
            c = self.current
            row = [str(c["number"]), str(c["params"].get("backbone", "")), str(c["stage"]),
                   "-" if c["step"] is None else str(c["step"]), _fmt(c["val_loss"])]
            if self.objective != "val_loss":
                row.append(_fmt(c["value"]))
            t.add_row(*row)
        return Group(head, t)
