"""A SQLite database must take writes before a study starts: its folder must exist, the file (if
there is one) must not be read-only, and the folder must take SQLite's journal beside it.

Checked before anything is written, so a wrong path costs a message, not a traceback after the data
was read and the study half-created.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy.engine import make_url

from tlsearch.errors import StorageError

__all__ = ["check_sqlite_writable", "check_folder_takes_file"]


def check_folder_takes_file(path: Path, what: str, file_kind: str) -> None:
    """Refuse, naming it, a storage file (``what``: "SQLite database", "journal file") whose folder
    is missing or takes no file (a probe written and removed: the storage writes a journal or a
    lock beside it), or a folder in its place (``file_kind`` names what was expected)."""
    folder = path.parent
    if not folder.is_dir():
        raise StorageError(f"storage: the folder {str(folder)!r} of the {what} does not "
                           f"exist; create it, or give another path")
    if path.is_dir():
        raise StorageError(f"storage: {str(path)!r} is a folder, not a {file_kind}")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise StorageError(f"storage: cannot write in the folder {str(folder)!r} of the {what} "
                           f"({e.strerror or e})") from None


def check_sqlite_writable(url: str) -> None:
    """Refuse, naming the path, a SQLite database that cannot be created or written."""
    try:
        u = make_url(url)
    except Exception:
        return  # refused by check_url with its own message
    db = u.database or ""
    if u.get_backend_name() != "sqlite" or db in ("", ":memory:") or db.startswith("file:"):
        return
    path = Path(db)
    check_folder_takes_file(path, "SQLite database", "SQLite database file")
    if not path.exists():
        return
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                               isolation_level=None, timeout=60)
    except sqlite3.Error as e:
        raise StorageError(f"storage: cannot open the SQLite database {str(path)!r} ({e})") from None
    try:  # a write, rolled back: opening alone succeeds on a read-only file
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE _tlsearch_probe (x)")
        conn.execute("ROLLBACK")
    except sqlite3.DatabaseError as e:
        raise StorageError(f"storage: the SQLite database {str(path)!r} cannot be written ({e}); "
                           f"make it writable, or copy it and point `storage` at the copy"
                           ) from None
    finally:
        conn.close()
