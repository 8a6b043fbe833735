"""Stop reasons: why a run of a study stopped, in words, what the summary ends with.

A run stops for one of a few reasons (:data:`REASONS`); the summary says which, how many trials
the study still lacks for its ``n_trials``, and that the same command resumes it. ``timeout``
only keeps new trials from starting (the running one finishes); ``hard_timeout`` also stops the
running trial, which is then recorded as PRUNED with the reason (:data:`HARD_TIMEOUT_NOTE
<tlsearch.search.deadlines.HARD_TIMEOUT_NOTE>`). The deadlines themselves are checked inside
trials, by the objective: :mod:`tlsearch.search.deadlines`.
"""

from __future__ import annotations

__all__ = ["REASONS", "with_stop_reason", "stop_lines", "pruning_lines"]

REASONS = {
    "n_trials": "n_trials reached",
    "timeout": "timeout reached (no new trial starts after it; the running one finished)",
    "hard_timeout": "hard_timeout reached (the running trial was stopped and recorded as pruned)",
    "failures": "too many trials failed in a row (training.max_consecutive_failures)",
    "interrupted": "interrupted",
    "recycle": "this worker ran its --recycle-after trials",
}

def with_stop_reason(summary: dict, reason: str, target: int | None) -> dict:
    """``summary`` with why the run stopped (``stopped``), the study's target and the trials it
    still lacks (``left``)."""
    states = summary.get("states", {})
    finished = states.get("COMPLETE", 0) + states.get("PRUNED", 0)
    left = None if target is None else max(0, target - finished)
    if left == 0 and reason in ("timeout", "hard_timeout"):
        reason = "n_trials"  # the last trial ended as time ran out: the target is what counts
    summary["stopped"] = reason
    summary["target"] = target
    summary["left"] = left
    summary["finished"] = finished
    return summary


def stop_lines(summary: dict, command: str) -> list[str]:
    """``stopped: ...`` and, when trials are left, how to resume."""
    reason = summary.get("stopped")
    if reason is None:
        return []
    left, target = summary.get("left"), summary.get("target")
    text = REASONS.get(reason, reason)
    if target is not None:
        finished = summary.get("finished", target)
        text += (f"; {left} of {target} trials left" if left else
                 f"; all {target} trials finished" if finished == target else
                 f"; the study holds {finished} finished trials (n_trials {target})")
    lines = [*pruning_lines(summary), f"stopped:   {text}"]
    if left or target is None:
        lines.append(f"resume:    run the same command again ({command}): finished trials are "
                     f"kept and the study goes on" + ("" if target is not None else
                                                     " for another `timeout`"))
    return lines


def pruning_lines(summary: dict) -> list[str]:
    """When the pruner stopped most finished trials: how many, the stage-2 seconds they had
    spent and then kept nothing of, and the study file's settings that loosen it."""
    p = summary.get("pruning") or {}
    pruned, finished = p.get("pruned", 0), p.get("finished", 0)
    if not finished or 2 * pruned <= finished:
        return []
    spent, total = p.get("pruned_stage2_seconds", 0.0), p.get("stage2_seconds", 0.0)
    share = f" ({spent / total:.0%} of all stage-2 training)" if total else ""
    return [f"pruned:    {pruned} of {finished} finished trials were pruned; they had spent "
            f"{spent:,.0f} s of stage-2 training{share} and kept nothing. To prune less, loosen "
            f"the study file's `pruner:` (a larger n_warmup_steps or n_startup_trials, "
            f"type: percentile with a higher percentile, or type: none)"]
