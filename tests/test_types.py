"""The package type-checks: public functions are annotated, and the checker agrees with them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def test_mypy_finds_no_errors():
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[test]')")
    r = subprocess.run([sys.executable, "-m", "mypy", "tlsearch"], cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_no_module_is_longer_than_400_lines():
    long = {p.relative_to(REPO).as_posix(): n for p in (REPO / "tlsearch").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long
