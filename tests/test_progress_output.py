"""What `tlsearch run` shows without a terminal: a plain line per epoch (stage, metrics), feature
progress, the summary on the same stream with why the study stopped; `--json` and `--quiet`."""

from __future__ import annotations

import io
import json
import re

import optuna
import pytest
from rich.console import Console

from tests.conftest import make_image_folder, write_study
from tlsearch.cli import main
from tlsearch.search.progress import Progress

ANSI = re.compile(r"\x1b\[|\x1b\]")


@pytest.fixture
def study(tmp_path):
    make_image_folder(tmp_path / "images", per_class=8)
    return write_study(tmp_path / "study.yaml", n_trials=2, objective="val_accuracy",
                       search={"unfreeze_blocks": 1, "head_width": 8})


def test_plain_output_one_stream(study, capsys):
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr().out
    assert not ANSI.search(out)
    epochs = [l for l in out.splitlines() if re.match(r"trial \d+ stage \d", l)]
    assert len(epochs) == 2 * 4                        # 2 trials x (2 + 2) epochs
    assert sum("stage 1 (head) epoch" in l for l in epochs) == 4
    assert sum("stage 2 (fine-tune) epoch" in l for l in epochs) == 4
    assert all(re.search(r"val_loss=\d\.\d{4} val_accuracy=\d\.\d{4}", l) for l in epochs)
    assert "epoch 2/2" in epochs[1] and "left" in epochs[1]
    assert re.search(r"computing features: tiny_cnn \S+ 0 / \d+ images", out)
    # the summary follows on the same stream, says why it stopped, and names val_accuracy once
    assert "stopped:   n_trials reached; all 2 trials finished" in out
    table = [l for l in out.splitlines() if "│" in l and "val_accuracy" in l]
    assert len(table) == 1
    assert out.index("best trial") > out.index(epochs[-1])


def test_json_lines(study, capsys):
    assert main(["run", str(study), "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(l) for l in lines]                 # every line parses
    kinds = [e["event"] for e in events]
    assert kinds.count("trial_start") == 2 and kinds.count("trial_end") == 2
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 8 and {e["stage"] for e in epochs} == {1, 2}
    assert all("val_accuracy" in e["metrics"] for e in epochs)
    assert any(e["event"] == "features" for e in events)
    assert kinds[-1] == "summary"
    s = events[-1]
    assert s["stopped"] == "n_trials" and s["left"] == 0 and s["best"]["number"] in (0, 1)


def test_quiet_prints_only_the_summary(study, capsys):
    assert main(["run", str(study), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "(head) epoch" not in out and "computing features" not in out
    assert "tlsearch study" not in out and "checking the data" not in out
    assert "best trial" in out and "stopped:" in out


def test_timeout_ending_says_how_to_resume(tmp_path, capsys):
    make_image_folder(tmp_path / "images", per_class=8)
    study = write_study(tmp_path / "study.yaml", n_trials=3, timeout=1e-6)
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr().out
    assert "stopped:   timeout reached" in out and "3 of 3 trials left" in out
    assert f"run the same command again (tlsearch run {study})" in out


def test_hard_timeout_stops_running_trial_as_pruned(tmp_path, capsys, monkeypatch):
    from tlsearch.search import deadlines

    make_image_folder(tmp_path / "images", per_class=8)
    study = write_study(tmp_path / "study.yaml", n_trials=3, hard_timeout=1e-6)
    calls = []
    real = deadlines.Deadlines.may_start

    def first_may_start(self):  # let one trial start after the limit has passed
        calls.append(1)
        return None if len(calls) == 1 else real(self)

    monkeypatch.setattr(deadlines.Deadlines, "may_start", first_may_start)
    assert main(["run", str(study)]) == 0
    out = capsys.readouterr().out
    trials = optuna.load_study(study_name="tiny",
                               storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    assert [t.state.name for t in trials] == ["PRUNED"]
    assert trials[0].user_attrs["tlsearch.stopped"] == "stopped by hard_timeout"
    assert "stage 1 (head) epoch" not in out           # stopped after its first batch
    assert "stopped:   hard_timeout reached" in out and "2 of 3 trials left" in out


def test_hard_timeout_below_timeout_is_refused(tmp_path, capsys):
    make_image_folder(tmp_path / "images", per_class=8)
    study = write_study(tmp_path / "study.yaml", timeout=60, hard_timeout=30)
    assert main(["run", str(study)]) == 2
    err = capsys.readouterr().err
    assert "hard_timeout >= timeout" in err and "hard_timeout=30" in err
    assert not (tmp_path / "tiny.db").exists()


def test_feature_lines_at_most_once_a_minute():
    buf = io.StringIO()
    p = Progress(Console(file=buf, width=200), mode="plain", epochs=(2, 2))
    for done in range(0, 4001, 400):
        p.on_features("resnet50 pooled", done, 4000)
    assert buf.getvalue().count("computing features") == 1
    assert "0 / 4,000 images" in buf.getvalue()
    p.on_features("resnet50 pooled", 0, 4000)
    p._last_feature_line -= 61
    p.features["t"] -= 10                                  # 10 s for 3,200 images: 2.5 s left
    p.on_features("resnet50 pooled", 3200, 4000)
    assert "computing features: resnet50 pooled 3,200 / 4,000 images, 2.5 s left" in buf.getvalue()


def test_live_panel_shows_stage_epoch_batch_and_features():
    from types import SimpleNamespace

    from tlsearch.search.progress_view import render_panel

    buf = io.StringIO()
    p = Progress(Console(file=buf, width=200, force_terminal=True), mode="live", epochs=(2, 2))
    p.start(3, 0)
    p.trial_start(0, {"backbone": "tiny_cnn", "unfreeze_blocks": 1})
    p.epoch(SimpleNamespace(step=0, stage=1, seconds=1.0, metrics={"loss": 1.0, "val_loss": 0.9}))
    p.stage(2)
    p._last_draw = -1.0
    p.batch(2, 3, 10, {"loss": 0.75, "accuracy": 0.5})
    p.on_features("tiny_cnn below-top-1", 12, 24)
    shown = Console(file=io.StringIO(), width=200)
    with shown.capture() as cap:
        shown.print(render_panel(p, 5.0))
    p.close()
    text = cap.get()
    assert "2 (fine-tune)" in text and "0/2" in text and "3/10" in text and "loss=0.7500" in text
    assert "computing features: tiny_cnn below-top-1 12 / 24 images" in text
    assert p.trial_left() is None                     # no stage-2 epoch timed yet


@pytest.mark.parametrize("error, code, reason", [
    (KeyboardInterrupt, 130, "stopped:   interrupted; 2 of 2 trials left"),
    (None, 1, "stopped:   too many trials failed in a row"),
])
def test_interrupted_or_failing_run_still_ends_with_the_summary(study, capsys, monkeypatch,
                                                                  error, code, reason):
    from tlsearch.errors import NonFiniteLoss

    def broken(*a, **k):
        raise (error or NonFiniteLoss)("the loss became nan at step 0")

    monkeypatch.setattr("tlsearch.search.study.run_trial", broken)
    assert main(["run", str(study)]) == code
    out = capsys.readouterr().out
    assert reason in out and "resume:    run the same command again" in out


def test_no_schedule_no_time_left_claimed():
    """Progress built without the study's epochs (a library caller) must not claim '~0.0 s left'."""
    from types import SimpleNamespace

    p = Progress(Console(file=io.StringIO(), width=200), mode="plain")
    p.start(None, 0)
    p.trial_start(0, {"backbone": "tiny_cnn", "unfreeze_blocks": 0})
    p.epoch(SimpleNamespace(step=0, stage=1, seconds=1.0, metrics={"loss": 1.0}))
    assert p.trial_left() is None
    p.close()


def test_a_study_holding_more_than_n_trials_says_how_many(tmp_path, capsys):
    """Run with n_trials 2, then again with --n-trials 1: the study holds 2 finished trials, and
    the last line said "all 1 trials finished"."""
    make_image_folder(tmp_path / "images", per_class=8)
    study = write_study(tmp_path / "study.yaml", n_trials=2,
                        training={"stage1_epochs": 1, "stage2_epochs": 0, "batch_size": 8})
    assert main(["run", str(study)]) == 0
    assert "all 2 trials finished" in capsys.readouterr().out
    assert main(["run", str(study), "--n-trials", "1"]) == 0
    out = capsys.readouterr().out
    assert "the study holds 2 finished trials (n_trials 1)" in out and "all 1 trials" not in out
