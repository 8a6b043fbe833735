"""tlsearch backbones: list the registered backbones, those of installed packages included."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tlsearch.backbones import origin, specs


def add_parser(sub):
    return sub.add_parser("backbones", help="list the backbones a study file can name")


def run(args) -> int:
    rows = [(s, origin(s.name)) for s in specs()]
    # which package a backbone comes from, shown only when another package adds some
    plugins = any(o is not None for _, o in rows)
    t = Table(title="registered backbones")
    for col in ("name", "modality", "default weights", "input", "preprocessing", "about"):
        t.add_column(col)
    if plugins:
        t.add_column("package")
    for s, o in rows:
        size = f"{s.default_size} px" if s.modality == "image" else "tokens"
        cells = [s.name, s.modality, str(s.default_weights), size, s.preprocessing, s.description]
        if plugins:
            cells.append("tlsearch" if o is None else f"{o[0]} {o[1]}")
        t.add_row(*cells)
    out = Console()
    if not out.is_terminal:  # a pipe or a file: no terminal width to fit, so nothing is cut
        out = Console(width=1000)
    out.print(t)
    return 0
