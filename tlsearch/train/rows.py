"""Rows of a model's inputs: an array of images, or a dict of token arrays (text)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["rows", "pick", "concat"]


def rows(x: Any, a: int, b: int) -> Any:
    """Rows ``a:b`` of an input."""
    return {k: v[a:b] for k, v in x.items()} if isinstance(x, dict) else x[a:b]


def pick(x: Any, index: np.ndarray) -> Any:
    """The rows at ``index`` of an input."""
    return {k: v[index] for k, v in x.items()} if isinstance(x, dict) else x[index]


def concat(parts: list) -> Any:
    """Several inputs' rows as one input."""
    if isinstance(parts[0], dict):
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)
