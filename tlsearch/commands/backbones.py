"""tlsearch backbones: list the registered backbones."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tlsearch.backbones import specs


def add_parser(sub):
    return sub.add_parser("backbones", help="list the backbones a study file can name")


def run(args) -> int:
    t = Table(title="registered backbones")
    for col in ("name", "modality", "default weights", "input", "preprocessing", "about"):
        t.add_column(col)
    for s in specs():
        size = f"{s.default_size} px" if s.modality == "image" else "tokens"
        t.add_row(s.name, s.modality, str(s.default_weights), size, s.preprocessing, s.description)
    out = Console()
    if not out.is_terminal:  # a pipe or a file: no terminal width to fit, so nothing is cut
        out = Console(width=1000)
    out.print(t)
    return 0
