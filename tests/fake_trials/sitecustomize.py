"""Test hook for worker tests: cheap trials in real ``tlsearch run`` processes.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one.
A worker test puts this folder on ``PYTHONPATH`` and sets ``TLSEARCH_TEST_FAKE_TRIAL=<seconds>``;
every ``tlsearch run`` process it starts, the workers of ``--workers`` included, then runs the real
command, storage, claims, heartbeats and callbacks, but each trial's training is replaced by a sleep
of that many seconds spread over its epochs, and no backbone is ever built (TensorFlow is never
imported: a worker starts in about a second instead of seven). Nothing in the package knows of it.
"""

import os

if os.environ.get("TLSEARCH_TEST_FAKE_TRIAL"):
    import time

    import numpy as np

    import tlsearch.search.study as _study
    from tlsearch.train.features import BackboneSource
    from tlsearch.train.pipeline import EpochRecord, TrialResult

    _SECONDS = float(os.environ["TLSEARCH_TEST_FAKE_TRIAL"])

    def _fake_run_trial(params, schedule, data, source, on_epoch=None, on_stage=None,
                        stages=None, on_batch=None, **_):
        steps = schedule.stage1_epochs + schedule.stage2_epochs
        value = abs(np.log10(params.lr_stage1) + 2.5) + params.dropout
        history = []
        for step in range(steps):
            time.sleep(_SECONDS / steps)
            rec = EpochRecord(step=step, stage=1 if step < schedule.stage1_epochs else 2,
                              metrics=dict(loss=value, val_loss=value + 1.0 / (step + 1),
                                           val_accuracy=0.5, val_auc=0.5))
            history.append(rec)
            if on_epoch is not None:
                on_epoch(rec)
        best = history[-1]
        return TrialResult(value=best.val_loss, best_step=best.step, best_stage=best.stage,
                           history=history, weights={"clf_out": [np.zeros((2, 3), np.float32)]},
                           unfrozen_blocks=0, cached=True, seconds=_SECONDS)

    _study.run_trial = _fake_run_trial
    _study.clear_state = lambda source: None
    BackboneSource.max_unfreeze = lambda self, name: 3
