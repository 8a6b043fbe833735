"""tlsearch report: one offline HTML file whose plots draw in a real browser."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import make_image_folder, write_study
from tlsearch.cli import main

SECTIONS = ("Optimisation history", "Learning curves", "Parameter importances",
            "Parallel coordinates", "Backbones compared", "Gain of stage 2 over stage 1",
            "Feature extraction or fine-tuning?",
            "Best model on the validation data (optimistic: it chose the trial)")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    make_image_folder(root / "images")
    path = write_study(root / "study.yaml", n_trials=3,
                       search={"unfreeze_blocks": {"low": 0, "high": 2}})
    assert main(["run", str(path)]) == 0
    out = root / "out" / "report.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    return out


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which(
        "google-chrome")


def _chromium(*args: str, timeout: int = 90) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [_browser(), "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
            capture_output=True, text=True, timeout=timeout)


def test_report_is_one_offline_file_with_every_section(report):
    from plotly.offline import get_plotlyjs

    text = report.read_text(encoding="utf-8")
    assert text.count(get_plotlyjs()[:400]) == 1  # plotly.js embedded once
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched from a CDN
    assert len(text) < 1.3 * len(get_plotlyjs())
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in text
    assert 'class="note"' not in text  # with 3 trials and the data present, every plot is drawn
    assert "precision" in text and "macro average" in text


def test_report_degrades_with_a_single_trial(tmp_path):
    make_image_folder(tmp_path / "images", per_class=8)
    path = write_study(tmp_path / "one.yaml", name="one", n_trials=1,
                       search={"unfreeze_blocks": 0})
    assert main(["run", str(path)]) == 0
    out = tmp_path / "one.html"
    assert main(["report", str(path), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "Needs at least 2 complete trials; the study has 1." in text
    assert "No trial reached stage 2" in text
    assert "macro average" in text  # the confusion matrix still works


def test_report_without_a_study_is_a_clear_error(tmp_path, capsys):
    path = write_study(tmp_path / "none.yaml", name="never-run")
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2
    assert "tlsearch run" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(_browser() is None,
                    reason="headless Chromium is not installed (apt-get install chromium)")
def test_plots_draw_in_headless_chromium(report, tmp_path):
    from PIL import Image

    dom = _chromium("--dump-dom", report.as_uri()).stdout
    # every plotly div the file holds (some sections are tables, not plots)
    plot_ids = re.findall(r'id="(plot\d+)"', report.read_text(encoding="utf-8"))
    assert len(plot_ids) >= len(SECTIONS) - 1
    assert dom.count('class="plot-container plotly"') == len(plot_ids), dom[-2000:]
    assert dom.count('class="main-svg"') >= len(plot_ids)
    for pid in plot_ids:  # every plot's div got an SVG drawn into it
        div = dom.split(f'id="{pid}"', 1)[1].split('id="plot', 1)[0]
        assert "main-svg" in div, f"{pid} did not draw"
    shot = tmp_path / "report.png"
    _chromium(f"--screenshot={shot}", "--window-size=1400,4800", report.as_uri())
    img = Image.open(shot).convert("L")
    assert img.size == (1400, 4800)
    # drawn plots: plenty of non-background pixels across the page, not a blank or error page
    dark = sum(img.histogram()[:200])
    assert dark > 0.02 * img.size[0] * img.size[1]
