"""The cost estimate in words: the table ``tlsearch validate --estimate`` prints, and the one line
``tlsearch run`` starts a new study with (:mod:`tlsearch.search.estimate` does the timing)."""

from __future__ import annotations

from typing import Any

from tlsearch.config import StudyConfig
from tlsearch.search.estimate import Estimate, estimate

__all__ = ["format_estimate", "estimate_line", "startup_line"]


def _secs(s: float) -> str:
    if s < 10:
        return f"{s:.1f} s"
    if s < 120:
        return f"{s:.0f} s"
    return f"{s / 60:.1f} min"


def format_estimate(est: Estimate) -> list[str]:
    """The estimate as lines of text: features, a row per depth, what fits in the timeout."""
    lines = [f"cost estimate on this machine ({est.n_train} training, {est.n_val} validation "
             f"examples; timed on a few batches):"]
    for name, s in est.features_s.items():
        lines.append(f"  {name}: frozen features once per study: {_secs(s)}")
    lines.append(f"  {'backbone':<22} {'unfreeze':>8} {'stage 1':>9} {'stage 2':>9} "
                 f"{'trial':>9} {'first at depth':>15}")
    for r in est.rows:
        mark = "" if r.timed else " ~"
        lines.append(f"  {r.backbone:<22} {str(r.depth):>8} {_secs(r.stage1_s):>9} "
                     f"{_secs(r.stage2_s):>9} {_secs(r.trial_s):>9} "
                     f"{'+' + _secs(r.first_s) if r.depth != 0 else '':>15}{mark}")
    if any(not r.timed for r in est.rows):
        lines.append("  ~ interpolated between the depths timed")
    fit = est.trials_in_timeout()
    if fit is not None:
        lines.append(f"  timeout {est.timeout:g} s: about {fit[0]} trials (all at the costliest "
                     f"depth) to {fit[1]} (all at the cheapest) start in it")
    if est.n_trials and est.rows:
        lo = min(r.trial_s for r in est.rows) * est.n_trials
        hi = max(r.trial_s for r in est.rows) * est.n_trials
        lines.append(f"  {est.n_trials} trials: {_secs(lo)} to {_secs(hi)} after the features")
    lines += [f"  note: {n}" for n in est.notes]
    return lines


def estimate_line(est: Estimate) -> str:
    """One line for the start of a run: features, the range of trial times, the study's total."""
    trial = [r.trial_s for r in est.rows]
    feats = sum(est.features_s.values())
    text = f"estimate: features {_secs(feats)}, a trial {_secs(min(trial))}"
    if max(trial) > 1.5 * min(trial):
        deepest = max(est.rows, key=lambda r: r.trial_s)
        text += f" (head only) to {_secs(max(trial))} ({deepest.depth} blocks)"
    if est.n_trials:
        text += (f"; {est.n_trials} trials {_secs(min(trial) * est.n_trials)} to "
                 f"{_secs(max(trial) * est.n_trials)}")
    fit = est.trials_in_timeout()
    if fit is not None:
        text += f"; {fit[0]}-{fit[1]} trials start within the timeout"
    return text


def startup_line(cfg: StudyConfig, prep: Any) -> str:
    """The line ``tlsearch run`` prints before a new study's first trial: a quick estimate (one
    batch, the shallowest and deepest depths timed). ``TLSEARCH_NO_ESTIMATE=1`` skips it."""
    import os

    if os.environ.get("TLSEARCH_NO_ESTIMATE", "") not in ("", "0"):
        return "estimate: skipped (TLSEARCH_NO_ESTIMATE)"
    import keras

    try:
        est = estimate(cfg, batches=1, depths=2, prep=(prep.modality, prep.data))
    except Exception as e:  # an estimate never stops a study; the trials report real errors
        return f"estimate: not available ({type(e).__name__}: {e})"
    finally:
        keras.backend.clear_session(free_memory=True)
    return estimate_line(est)
