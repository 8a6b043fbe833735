"""A :class:`~tlsearch.starter.recipe.Recipe` as YAML text, each reason a comment above its key.

PyYAML drops comments, so the file is written line by line: mappings of mappings as blocks,
everything smaller in flow style (``{low: 0, high: 3}``), each value through ``yaml.safe_dump``
so it reads back as written.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

from tlsearch.starter.recipe import Recipe

__all__ = ["render"]

_WIDTH = 100


def _flow(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, _WIDTH - len(indent) - 2)]


def _block(mapping: dict[str, Any], why: dict[str, str], prefix: str, indent: str) -> list[str]:
    lines: list[str] = []
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        lines += _comment(why[dotted], indent) if dotted in why else []
        if isinstance(value, dict) and prefix == "" and key not in ("sampler", "pruner"):
            lines.append(f"{indent}{key}:")
            lines += _block(value, why, f"{dotted}.", indent + "  ")
        else:
            lines.append(f"{indent}{key}: {_flow(value)}")
    # choices made by leaving a key out (no test split, say) are said where the key would be
    for dotted, text in why.items():
        rest = dotted[len(prefix):]
        if dotted.startswith(prefix) and "." not in rest and rest not in mapping and prefix:
            lines += _comment(f"{rest}: not set; {text}", indent)
    return lines


def render(recipe: Recipe) -> str:
    """The study file: the header, then every key with its reason above it."""
    out = [line for h in recipe.header for line in _comment(h, "")] + [""]
    for key, value in recipe.study.items():
        chunk = _block({key: value}, recipe.why, "", "")
        if isinstance(value, dict) and key not in ("sampler", "pruner"):
            out.append("")
        out += chunk
    out += [""] + [line for f in recipe.footer for line in _comment(f, "")]
    return "\n".join(out).rstrip() + "\n"
