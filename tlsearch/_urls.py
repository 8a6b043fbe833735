"""SQLite and journal-file URLs from paths: escaped, and relative ones placed beside the study
file."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

__all__ = ["sqlite_url", "sqlite_beside", "journal_beside"]


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


def journal_beside(url: str, base_dir: Path) -> str:
    """``url`` with a relative journal path (``journal:///study.log``) resolved against
    ``base_dir``, as :func:`sqlite_beside` does for SQLite; ``journal:////abs/path`` and other
    URLs unchanged. The path is escaped in the URL it returns, as :func:`sqlite_url` escapes."""
    if not url.lower().startswith("journal:///"):
        return url
    try:
        u = make_url(url)
    except Exception:
        return url  # refused later with its own message
    db = u.database or ""
    if not db or u.host or u.query or Path(db).expanduser().is_absolute():
        return url
    return URL.create("journal", database=str((base_dir / db).resolve())).render_as_string()
