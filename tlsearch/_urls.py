"""SQLite URLs from paths: escaped, and relative ones placed beside the study file."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

__all__ = ["sqlite_url", "sqlite_beside"]


def sqlite_url(path: Path) -> str:
    """``sqlite:///<absolute path>``, with the characters a URL gives a meaning (``?``, ``#``,
    ``%``, ...) escaped, so a folder named ``exp?v=1`` or ``a%20b`` is the folder it says."""
    return URL.create("sqlite", database=str(Path(path).resolve())).render_as_string()


def sqlite_beside(url: str, base_dir: Path) -> str:
    """``url`` with a relative SQLite path resolved against ``base_dir``; other URLs (and ones
    that are not URLs, refused later with their own message) unchanged."""
    try:
        u = make_url(url)
    except Exception:
        return url
    db = u.database or ""
    if u.get_backend_name() != "sqlite" or db in ("", ":memory:") or db.startswith("file:"):
        return url
    if Path(db).expanduser().is_absolute():
        return url
    return u.set(database=str((base_dir / db).resolve())).render_as_string(hide_password=False)
