"""Database URLs: SQLite and journal-file URLs from paths (escaped, relative ones placed beside
the study file), and any URL with its password masked for messages and logs.

Below every layer that shows or stores a URL (the study snapshot, tracking, the storage itself), so
none of them needs the storage code to hide a password."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.engine import URL, make_url

__all__ = ["sqlite_url", "sqlite_beside", "journal_beside", "redact_url"]


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


#: query parameters of a database URL that carry a password (libpq and drivers accept them)
_SECRET_QUERY_KEYS = {"password", "passwd", "pwd", "sslpassword", "passfile_password"}


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, for messages and logs."""
    if unencoded_at(url):  # an unencoded '@' in the password: mask all up to the last '@'
        scheme, rest = url.split("://", 1)
        user = re.split(r"[:@]", rest, maxsplit=1)[0]
        return f"{scheme}://{user}:***@{rest.split('?', 1)[0].rsplit('@', 1)[1]}"
    try:
        u = make_url(url)
        secret = {k: "***" for k in u.query if k.lower() in _SECRET_QUERY_KEYS}
        shown = u.update_query_dict(secret).render_as_string(hide_password=True)
        return shown.replace("%2A%2A%2A", "***")
    except Exception:
        # not a URL SQLAlchemy reads, but it may still carry a password: mask user:password@
        return re.sub(r"^([^:]*://[^:/@]*:).*@", r"\1***@", url)


def unencoded_at(url: str) -> bool:
    """True when the part before the query holds two '@' or more: one of them is in a user name
    or password, not URL-encoded, and where the password ends cannot be told."""
    return "://" in url and url.split("://", 1)[1].split("?", 1)[0].count("@") > 1
