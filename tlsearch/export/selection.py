"""Greedy ensemble selection with replacement (Caruana, Niculescu-Mizil, Crew and Ksikes, ICML
2004), on the validation probabilities of a study's complete trials.

Start from an empty ensemble; at each of up to ``k`` steps add the candidate (any of them, one
already included too) whose addition gives the averaged probabilities the best validation
objective; keep the prefix of additions that scored best. A candidate added twice counts twice:
the weights are the counts over the additions kept. With ``k = 1`` the ensemble is the best single
candidate. Ties go to the candidate listed first (the caller lists the best trial first), and
between equal prefixes the shorter wins: fewer members cost less to serve.

The objective is the study's, computed by the catalogue (:func:`tlsearch.params.compute`), so a
screening objective chooses its threshold on the averaged probabilities as a trial does on its
own. The ensemble's value is measured on the examples that chose it, so it is optimistic, as a
best trial's value is; test figures say what it is worth.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from tlsearch.params import OBJECTIVES, compute

__all__ = ["EnsembleSelection", "greedy_selection"]


@dataclass(frozen=True)
class EnsembleSelection:
    """The additions kept (candidate indices, in the order chosen, repeats allowed), the
    objective of their averaged probabilities, and the objective after every addition made."""

    additions: tuple[int, ...]
    value: float
    values: tuple[float, ...]

    @property
    def counts(self) -> dict[int, int]:
        """Candidate index -> how many times it was added, in the order first chosen."""
        return dict(Counter(self.additions))

    @property
    def weights(self) -> dict[int, float]:
        """Candidate index -> its weight in the average (count / additions)."""
        n = len(self.additions)
        return {i: c / n for i, c in self.counts.items()}

    def average(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities: the weighted average of its members'."""
        out = np.zeros(np.shape(probs[self.additions[0]]), np.float64)
        for i, w in self.weights.items():
            out += w * np.asarray(probs[i], np.float64)
        return out


def greedy_selection(probs: Sequence[np.ndarray], y: np.ndarray, objective: str, k: int,
                     params: Mapping[str, object] | None = None) -> EnsembleSelection:
    """Choose up to ``k`` additions among ``probs`` (one ``(n, classes)`` array per candidate,
    on the same validation examples ``y``) by greedy selection with replacement."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if not probs:
        raise ValueError("no candidates to choose from")
    maximize = OBJECTIVES[objective].direction == "maximize"
    arrays = [np.asarray(p, np.float64) for p in probs]
    total = np.zeros_like(arrays[0])
    additions: list[int] = []
    values: list[float] = []
    for step in range(1, k + 1):
        best, best_value = -1, math.nan
        for i, p in enumerate(arrays):
            v = float(compute(objective, (total + p) / step, y, params).value)
            if not math.isfinite(v):
                continue
            if best < 0 or (v > best_value if maximize else v < best_value):
                best, best_value = i, v
        if best < 0:
            break
        additions.append(best)
        values.append(best_value)
        total += arrays[best]
    if not additions:
        raise ValueError(f"no candidate has a finite {objective} on these examples")
    pick = max if maximize else min
    kept = values.index(pick(values)) + 1  # the first (shortest) of equal best prefixes
    return EnsembleSelection(tuple(additions[:kept]), values[kept - 1], tuple(values))
