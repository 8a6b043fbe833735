"""Text data: CSV, Parquet and JSON Lines files with a text column and a label column.

The column names come from ``data.text_column`` and ``data.label_column``. Everything that would
make a trial fail later (a missing column, a file that is not UTF-8, empty texts, missing labels)
is reported here, before the first trial, naming the file and the column. Labels may be strings or
integers; they are kept as strings, and integer labels sort as numbers.

A missing label is refused with its row, whatever its spelling: empty, JSON ``null``, a Parquet
null, or one of the words in :data:`tlsearch.data.MISSING_LABELS` ("NaN", "NA", "None", "null",
...). CSV cells are read as written (pandas' own guessing is off) and this one rule decides, so a
CSV, a Parquet and a JSON Lines file of the same data give the same answer. A class literally named
"NA" is therefore refused too; rare, and a rename is cheap next to a silent class "nan".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tlsearch.data.formats import (MISSING_LABEL_NOTE, RawData, format_file_list,
                                   is_missing_label, register_format)
from tlsearch.errors import DataError

__all__ = ["load_csv", "load_parquet", "load_jsonl"]


def _read_csv(path: Path):
    import pandas as pd

    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{str(path)!r}: not UTF-8 text (byte {e.start}: {e.reason}); save the "
                        f"file as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{str(path)!r}: the file is empty") from None
    except (pd.errors.ParserError, OSError, ValueError) as e:
        raise DataError(f"{str(path)!r}: not a readable CSV file ({str(e).strip()})") from None


def _read_parquet(path: Path):
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{str(path)!r}: not a readable Parquet file ({str(e).strip()})") from None


def _read_jsonl(path: Path):
    import json

    import pandas as pd

    rows = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{str(path)!r}, line {lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{str(path)!r}, line {lineno}: expected a JSON object per "
                                    f"line, got {type(row).__name__}")
                rows.append(row)
    except UnicodeDecodeError as e:
        raise DataError(f"{str(path)!r}: not UTF-8 text (byte {e.start}: {e.reason}); save the "
                        f"file as UTF-8") from None
    except OSError as e:
        raise DataError(f"{str(path)!r}: cannot be read ({e.strerror})") from None
    if not rows:
        raise DataError(f"{str(path)!r}: the file is empty")
    return pd.DataFrame(rows)


def _is_missing(v) -> bool:
    """A missing cell (None, NaN, pandas' NA), as opposed to text that says "NA"."""
    if v is None or type(v).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(v, (float, np.floating)) and bool(np.isnan(v))


def _label_text(v) -> str:
    """Labels as strings; 1.0 from a float column becomes "1", as the user wrote it."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)).lower()
    return str(v).strip()


def frame_to_raw(df, cfg, path: Path) -> RawData:
    """Pick and check the text and label columns of a table read from ``path``."""
    columns = [str(c) for c in df.columns]
    for field, col in (("data.text_column", cfg.text_column), ("data.label_column", cfg.label_column)):
        if col not in columns:
            raise DataError(f"{str(path)!r}: no column {col!r} (`{field}`); the file has columns "
                            f"{columns}")
    if len(df) == 0:
        raise DataError(f"{str(path)!r}: no rows")
    texts, labels, problems = [], [], []
    for i, (t, y) in enumerate(zip(df[cfg.text_column].tolist(), df[cfg.label_column].tolist())):
        where = f"row {i + 1}"  # data rows counted from 1, a header excluded
        if _is_missing(t) or not isinstance(t, str) or not t.strip():
            problems.append(f"{where}: empty text in column {cfg.text_column!r}"
                            if _is_missing(t) or isinstance(t, str)
                            else f"{where}: column {cfg.text_column!r} holds "
                                 f"{type(t).__name__} {t!r}, not text")
            continue
        label = "" if _is_missing(y) else _label_text(y)
        if is_missing_label(y) or is_missing_label(label):
            shown = label or ("empty" if isinstance(y, str) else "NaN" if isinstance(y, float)
                              else "null")
            problems.append(f"{where}: missing label ({shown}) in column {cfg.label_column!r}")
            continue
        texts.append(t)
        labels.append(label)
    if problems:
        raise DataError(f"{len(problems)} of {len(df)} rows of {str(path)!r} cannot be used:\n"
                        + format_file_list(problems)
                        + f"\n  Remove or fill those rows (labels read as missing: "
                          f"{MISSING_LABEL_NOTE}).")
    x = np.empty(len(texts), dtype=object)
    x[:] = texts
    return RawData(x, labels, "text")


@register_format("csv", suffixes=(".csv", ".csv.gz", ".csv.bz2"))
def load_csv(cfg, path: Path, image_size: int) -> RawData:
    return frame_to_raw(_read_csv(path), cfg, path)


@register_format("parquet", suffixes=(".parquet", ".pq"))
def load_parquet(cfg, path: Path, image_size: int) -> RawData:
    return frame_to_raw(_read_parquet(path), cfg, path)


@register_format("jsonl", suffixes=(".jsonl", ".ndjson"))
def load_jsonl(cfg, path: Path, image_size: int) -> RawData:
    return frame_to_raw(_read_jsonl(path), cfg, path)
