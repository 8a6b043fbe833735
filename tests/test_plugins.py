"""A backbone from another package, as README.md shows it: installed with pip, listed by
``tlsearch backbones`` and searched in a study, in fresh processes that know it only through its
entry point.

The package's two files are the README's own blocks, so the README cannot go stale.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_image_folder, write_study

README = (REPO / "README.md").read_text()


def readme_block(first_line: str) -> str:
    """The README code block whose first line is ``first_line``."""
    blocks = [body for body in re.findall(r"^```\w*\n(.*?)^```", README, re.S | re.M)
              if body.splitlines()[0] == first_line]
    assert len(blocks) == 1, f"README.md has {len(blocks)} blocks starting {first_line!r}"
    return blocks[0]


def _run(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args[2:]} failed:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_the_readme_backbone_package_installs_lists_and_runs_in_a_study(tmp_path):
    package = tmp_path / "tlsearch-small-cnn"
    package.mkdir()
    (package / "pyproject.toml").write_text(readme_block("# pyproject.toml"))
    (package / "tlsearch_small_cnn.py").write_text(readme_block("# tlsearch_small_cnn.py"))
    site = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
          "--no-index", "--no-cache-dir", "--disable-pip-version-check", "--quiet",
          "--target", str(site), str(package)], dict(os.environ), tmp_path)
    assert (site / "tlsearch_small_cnn.py").is_file()

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    listed = _run([sys.executable, "-m", "tlsearch.cli", "backbones"], env, tmp_path)
    row = next((line for line in listed.stdout.splitlines() if "│ small_cnn " in line), None)
    assert row is not None, listed.stdout
    assert "an example of a backbone package" in row and "image" in row
    assert "tlsearch-small-cnn 0.1.0" in row  # the package it comes from
    tiny = next(line for line in listed.stdout.splitlines() if "│ tiny_cnn " in line)
    assert "│ tlsearch " in tiny  # the built-in ones are still there, tlsearch's own
    assert "Warning" not in listed.stderr, listed.stderr

    make_image_folder(tmp_path / "images", per_class=8)
    study = write_study(tmp_path / "study.yaml", name="plugin", n_trials=1,
                        backbones=["small_cnn"],
                        training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 8},
                        search={"unfreeze_blocks": {"low": 0, "high": 1}, "head_width": [8]})
    _run([sys.executable, "-m", "tlsearch.cli", "run", str(study)], env, tmp_path)

    import optuna

    trials = optuna.load_study(study_name="plugin",
                               storage=f"sqlite:///{tmp_path / 'plugin.db'}").trials
    assert [t.state.name for t in trials] == ["COMPLETE"]
    assert trials[0].user_attrs["tlsearch.params"]["backbone"] == "small_cnn"
