"""Bad input, table-driven: each case exits 2, names the culprit, and writes nothing to the storage.

A case is a function that spoils a fresh tiny study (its file, its data, or its storage) and returns
the extra command-line arguments, with the substring the message must contain. After the run, no
database file may exist, or the existing study must be exactly as it was.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from PIL import Image

from conftest import make_image_folder, write_study
from tlsearch.cli import main


def _edit(study: Path, **changes) -> None:
    raw = yaml.safe_load(study.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split("__")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is _DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    study.write_text(yaml.safe_dump(raw, sort_keys=False))


_DELETE = object()


def _first_image(root: Path) -> Path:
    return sorted((root / "images" / "circle").iterdir())[0]


# --- the study file -----------------------------------------------------------------------------

def unknown_key(d):
    _edit(d / "study.yaml", n_trails=5)
    return [], "did you mean `n_trials`?"


def unknown_nested_key(d):
    _edit(d / "study.yaml", search__lr_stage_1=0.01)
    return [], "did you mean `search.lr_stage1`?"


def low_above_high(d):
    _edit(d / "study.yaml", search__dropout={"low": 0.5, "high": 0.1})
    return [], "`low <= high` must hold, but got low=0.5, high=0.1"


def two_bad_ranges_at_once(d):
    """A bad log range and an out-of-bounds integer range are both reported, the second as the
    study file writes it (it came alone, once the first was fixed, as ``Range(low=-5, ...)``)."""
    _edit(d / "study.yaml", search__lr_stage1={"low": -1, "high": 0.01, "log": True},
          search__unfreeze_blocks={"low": -5, "high": 2})
    return [], ("a log range needs `low > 0`, but got low=-1\n"
                "  - `search.unfreeze_blocks`: values must lie in [0, inf], got {low: -5, high: 2}")


def log_range_from_zero(d):
    _edit(d / "study.yaml", search__lr_stage1={"low": 0.0, "high": 0.01, "log": True})
    return [], "a log range needs `low > 0`"


def unknown_backbone(d):
    _edit(d / "study.yaml", backbones=["tiny_cnm"])
    return [], "unknown backbone 'tiny_cnm'"


def wrong_type(d):
    _edit(d / "study.yaml", training__batch_size="big")
    return [], "`training.batch_size`"


def missing_data_path(d):
    _edit(d / "study.yaml", data__path="nowhere")
    return [], "nowhere' does not exist"


def negative_seed(d):
    _edit(d / "study.yaml", seed=-1)
    return [], "`seed`: Input should be greater than or equal to 0 (got -1)"


def seed_above_32_bits(d):
    _edit(d / "study.yaml", seed=2**32)
    return [], "`seed`: Input should be less than or equal to 4294967295"


def nan_dropout(d):
    _edit(d / "study.yaml", search__dropout=float("nan"))
    return [], "`search.dropout`: Input should be a finite number (got nan)"


def infinite_dropout_bound(d):
    _edit(d / "study.yaml", search__dropout={"low": 0.1, "high": float("inf")})
    return [], "`search.dropout.high`: Input should be a finite number (got inf)"


def name_with_a_slash(d):
    _edit(d / "study.yaml", name="pets/v2")
    return [], "`name`: expected letters, digits"


def union_noise(d):
    _edit(d / "study.yaml", search__head_width=[8, {"a": 1}])
    return [], "`search.head_width[1]`: expected true or false, an integer, a number or text"


def missing_budget_does_not_hide_a_bad_backbone(d):
    _edit(d / "study.yaml", n_trials=_DELETE, backbones=["tiny_cnm"])
    return [], "unknown backbone 'tiny_cnm'"


def lr_stage2_above_lr_stage1(d):
    _edit(d / "study.yaml", search__lr_stage2={"low": 1e-3, "high": 5e-2, "log": True})
    return [], "`search.lr_stage2`: every stage-2 learning rate must be at most"


def no_budget(d):
    _edit(d / "study.yaml", n_trials=_DELETE)
    return [], "set `n_trials`, `timeout` or both"


def grace_not_above_interval(d):
    _edit(d / "study.yaml", heartbeat={"interval": 10, "grace_period": 5})
    return [], "`grace_period > interval` must hold"


def split_out_of_range(d):
    _edit(d / "study.yaml", data__validation_split=1.5)
    return [], "`data.validation_split`"


def empty_choices(d):
    _edit(d / "study.yaml", search__head_width=[])
    return [], "`search.head_width`: an empty list of choices"


def unknown_objective(d):
    _edit(d / "study.yaml", objective="val_f1")
    return [], "`objective`"


def not_yaml(d):
    (d / "study.yaml").write_text("name: tiny\ndata: {path: images\n")
    return [], "not valid YAML"


def class_weight_for_an_unknown_class(d):
    _edit(d / "study.yaml", training__class_weight={"circle": 1.0, "triangle": 2.0})
    return [], "`training.class_weight`: unknown classes ['triangle']"


def specificity_above_one(d):
    """It passed the checks, created the study and failed its first trial with a traceback."""
    _edit(d / "study.yaml", objective="val_sens_at_spec",
          objective_params={"specificity": 1.5, "positive": "circle"})
    return [], "`objective_params.specificity`: expected a required specificity in (0, 1], got 1.5"


def negative_class_weight_for_the_objective(d):
    _edit(d / "study.yaml", objective="val_weighted_loss",
          objective_params={"class_weight": {"circle": -1, "square": 1}})
    return [], "`objective_params.class_weight`: expected `balanced`, a mapping of class"


def workers_zero(d):
    return ["--workers", "0"], "`--workers`: expected at least 1"


def workers_beyond_memory(d):
    """1,000 TensorFlow processes would all start at once and exhaust the machine."""
    return ["--workers", "1000"], "`--workers 1000`: about 1000 x"


# --- the data -----------------------------------------------------------------------------------

def corrupt_image(d):
    _first_image(d).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return [], "circle_000.png"


def truncated_image(d):
    p = _first_image(d)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return [], "circle_000.png: corrupt or truncated"


def empty_image(d):
    _first_image(d).write_bytes(b"")
    return [], "circle_000.png: empty file"


def unsupported_format(d):
    (d / "images" / "square" / "notes.txt").write_text("not an image")
    return [], "notes.txt: unsupported format .txt"


def empty_class_folder(d):
    (d / "images" / "triangle").mkdir()
    return [], "triangle: empty class folder"


def single_class(d):
    for c in ("square", "stripes"):
        for f in (d / "images" / c).iterdir():
            f.unlink()
        (d / "images" / c).rmdir()
    return [], "found a single class ['circle']"


def too_few_images(d):
    for c in ("circle", "square", "stripes"):
        for f in sorted((d / "images" / c).iterdir())[1:]:
            f.unlink()
    return [], "too few examples for a stratified"


def npz_with_wrong_keys(d):
    np.savez(d / "data.npz", images=np.zeros((12, 8, 8, 3), np.uint8), labels=np.zeros(12))
    _edit(d / "study.yaml", data__path="data.npz")
    return [], "expected arrays `x` and `y`"


def npz_labels_do_not_match(d):
    np.savez(d / "data.npz", x=np.zeros((12, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    _edit(d / "study.yaml", data__path="data.npz")
    return [], "12 images but 10 labels"


def not_an_npz(d):
    (d / "data.npz").write_bytes(b"PK\x03\x04 not really a zip")
    _edit(d / "study.yaml", data__path="data.npz")
    return [], "not a readable .npz file"


def data_file_of_unknown_format(d):
    (d / "data.xlsx").write_bytes(b"spreadsheet")
    _edit(d / "study.yaml", data__path="data.xlsx")
    return [], "cannot tell the format of"


def _npz_study(d: Path, x: np.ndarray, y: np.ndarray, **data) -> None:
    np.savez(d / "data.npz", x=x, y=y)
    _edit(d / "study.yaml", data__path="data.npz", **{f"data__{k}": v for k, v in data.items()})


def npz_floats_in_minus_one_to_one(d):
    _npz_study(d, np.linspace(-1, 1, 12 * 8 * 8 * 3, dtype=np.float32).reshape(12, 8, 8, 3),
               np.arange(12) % 2)
    return [], "array `x` is float32 with values from -1 to 1"


def npz_int16_beyond_255(d):
    _npz_study(d, (np.arange(12 * 8 * 8 * 3).reshape(12, 8, 8, 3) % 256 * 100).astype(np.int16),
               np.arange(12) % 2)
    return [], "array `x` is int16 with values from 0 to 25500"


def npz_values_outside_pixel_range(d):
    _npz_study(d, np.full((12, 8, 8, 3), 2.0, np.float32), np.arange(12) % 2, pixel_range=[-1, 1])
    return [], "values from 2 to 2, outside `data.pixel_range` [-1, 1]"


def held_out_set_is_the_training_data(d):
    _edit(d / "study.yaml", data__test="images")
    return [], "`data.test`: all 18 of its examples are also in the training or validation data (overlap"


def npz_with_no_examples(d):
    """Zero examples: said as such (it read "found a single class []")."""
    _npz_study(d, np.zeros((0, 8, 8, 3), np.uint8), np.zeros(0, np.int64))
    return [], "arrays `x` and `y` hold no examples (0 images)"


def dangling_symlink_in_a_class_folder(d):
    """A link whose target is gone is a file the user meant to give: named, not dropped silently."""
    (d / "images" / "circle" / "circle_999.png").symlink_to(d / "gone" / "circle_999.png")
    return [], "circle_999.png: a link to"


def npz_pixel_range_reversed(d):
    _npz_study(d, np.zeros((12, 8, 8, 3), np.float32), np.arange(12) % 2, pixel_range=[1, -1])
    return [], "`data.pixel_range`: expected [low, high] with low < high, got [1, -1]"


def pixel_range_for_an_image_folder(d):
    _edit(d / "study.yaml", data__pixel_range=[0, 65535])
    return [], "`data.pixel_range` applies to .npz arrays only"


def npz_nan_label(d):
    y = (np.arange(12) % 2).astype(np.float64)
    y[3] = np.nan
    _npz_study(d, np.zeros((12, 8, 8, 3), np.uint8), y)
    return [], "1 of 12 labels are missing: index 3 (nan)"


def npz_empty_string_label(d):
    y = np.array(["a", "b"] * 5 + ["", "a"])
    _npz_study(d, np.zeros((12, 8, 8, 3), np.uint8), y)
    return [], "index 10 (empty)"


def decompression_bomb(d):
    # the test lowers PIL's limit: 100 x 100 pixels trip it here, as 196 megapixels do by default
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(_first_image(d))
    return [], "circle_000.png: too large to decode safely"


def skip_bad_files_would_drop_a_class(d):
    for f in (d / "images" / "circle").iterdir():
        f.write_bytes(b"not an image")
    _edit(d / "study.yaml", data__skip_bad_files=True)
    return [], "class 'circle': none of its 6 files can be used"


def validation_class_differs_in_compatibility_form(d):
    (d / "images" / "stripes").rename(d / "images" / "fish")
    make_image_folder(d / "val", classes=("circle", "square", "\ufb01sh"), per_class=2, size=8)
    _edit(d / "study.yaml", data__validation="val")
    return [], "'\ufb01sh' (U+FB01 U+0073 U+0068) looks like training class 'fish' (U+0066 U+0069"


# --- text data ----------------------------------------------------------------------------------

def _text_study(d: Path, name: str, content: bytes) -> None:
    (d / name).write_bytes(content)
    _edit(d / "study.yaml", data__path=name, backbones=["tiny_bert"])


_ROWS = b"".join(b"a good film,pos\n" if i % 2 else b"a bad film,neg\n" for i in range(12))


def csv_without_text_column(d):
    _text_study(d, "reviews.csv", b"review,label\n" + _ROWS)
    return [], "no column 'text' (`data.text_column`); the file has columns"


def empty_csv(d):
    _text_study(d, "reviews.csv", b"")
    return [], "the file is empty"


def csv_with_an_empty_text(d):
    _text_study(d, "reviews.csv", b"text,label\n" + _ROWS + b",pos\n")
    return [], "row 13"


def csv_not_utf8(d):
    _text_study(d, "reviews.csv", b"text,label\n" + _ROWS + "caf\xe9 cr\xe8me,pos\n".encode("latin-1"))
    return [], "not UTF-8 text"


def csv_single_class(d):
    _text_study(d, "reviews.csv", b"text,label\n" + b"a good film,pos\n" * 12)
    return [], "found a single class ['pos']"


def jsonl_bad_line(d):
    _text_study(d, "reviews.jsonl", b'{"text": "fine", "label": "pos"}\n{"text": oops}\n')
    return [], "line 2: not valid JSON"


def text_data_with_image_backbone(d):
    (d / "reviews.csv").write_bytes(b"text,label\n" + _ROWS)
    _edit(d / "study.yaml", data__path="reviews.csv")
    return [], "the data is text but the backbones take image"


def _missing_label(fmt: str, spelling):
    """A text file whose 13th row's label is missing, written as ``spelling`` in format ``fmt``."""

    def case(d):
        rows = [{"text": "a good film", "label": "pos"} if i % 2 else
                {"text": "a bad film", "label": "neg"} for i in range(12)]
        rows.append({"text": "a fine film", "label": spelling})
        if fmt == "csv":
            body = "".join(f"{r['text']},{r['label']}\n" for r in rows)
            _text_study(d, "reviews.csv", ("text,label\n" + body).encode())
        elif fmt == "jsonl":
            import json
            body = "".join(json.dumps(r) + "\n" for r in rows)
            _text_study(d, "reviews.jsonl", body.encode())
        else:
            import pandas as pd
            pd.DataFrame(rows).to_parquet(d / "reviews.parquet")
            _edit(d / "study.yaml", data__path="reviews.parquet", backbones=["tiny_bert"])
        return [], "row 13: missing label"

    shown = "python_None" if spelling is None else spelling.replace("/", "_") or "empty"
    case.__name__ = f"{fmt}_label_{shown}"
    return case


MISSING_LABELS = [_missing_label("csv", s) for s in ("NA", "NaN", "", "None", "null", "N/A")] + [
    _missing_label("jsonl", None), _missing_label("jsonl", "NaN"),
    _missing_label("parquet", None), _missing_label("parquet", "null"),
]


# --- the storage --------------------------------------------------------------------------------

def malformed_url(d):
    return ["--storage", "postgres ql://nowhere"], "is not a database URL"


def postgres_scheme(d):
    """``postgres://`` (Heroku's and libpq's spelling) is no SQLAlchemy dialect: the refusal says
    what to write instead, not "Can't load plugin"."""
    return (["--storage", "postgres://user:secret@127.0.0.1/db"],
            "postgresql+psycopg://user@host/db (SQLAlchemy "
            "spells PostgreSQL 'postgresql', not 'postgres')")


def unreachable_postgres(d):
    return (["--storage", "postgresql+psycopg://user:secret@127.0.0.1:1/db"],
            "cannot open postgresql+psycopg://user:***@127.0.0.1:1/db")


def unset_port_variable(d):
    _edit(d / "study.yaml",
          storage="postgresql+psycopg://u:secret@127.0.0.1:${TLSEARCH_NEVER_SET_PORT}/db")
    return [], "the environment variable TLSEARCH_NEVER_SET_PORT is not set"


def unclosed_ipv6_host(d):
    return (["--storage", "postgresql+psycopg://u:secret@[::1/db"],
            "cannot read its host and port")


def unencoded_at_in_password(d):
    return (["--storage", "postgresql+psycopg://postgres:secret@secret2@127.0.0.1/db"],
            "postgres:***@127.0.0.1/db': the user name or password holds an unencoded '@'; "
            "URL-encode it")


def sqlite_in_a_missing_folder(d):
    return (["--storage", f"sqlite:///{d / 'nowhere' / 'tiny.db'}"],
            f"the folder '{d / 'nowhere'}' of the SQLite database does not exist")


def sqlite_path_is_a_folder(d):
    (d / "db").mkdir()
    return ["--storage", f"sqlite:///{d / 'db'}"], "is a folder, not a SQLite database file"


def _existing_study(d) -> None:
    """The tiny study as created by an earlier run, with one finished trial."""
    from tlsearch.config import load_config
    from tlsearch.runner.prepare import prepare

    prep = prepare(load_config(d / "study.yaml"), warn=lambda *a: None)
    prep.study.add_trial(optuna.trial.create_trial(value=1.0, params={}, distributions={}))


def changed_search_space(d):
    _existing_study(d)
    _edit(d / "study.yaml", search__head_width=[8, 16, 32])
    return [], "head_width: was one of [8, 16], now one of [8, 16, 32]"


def changed_classes(d):
    _existing_study(d)
    make_image_folder(d / "images", classes=("circle", "square", "stripes", "zigzag"), per_class=6,
                      size=8)
    return [], "classes: was [\"circle\", \"square\", \"stripes\"], now"


CASES = [
    unknown_key, unknown_nested_key, low_above_high, log_range_from_zero, unknown_backbone,
    wrong_type, missing_data_path, lr_stage2_above_lr_stage1, no_budget, grace_not_above_interval,
    split_out_of_range, empty_choices, unknown_objective, not_yaml,
    class_weight_for_an_unknown_class, specificity_above_one,
    negative_class_weight_for_the_objective, workers_zero, workers_beyond_memory,
    corrupt_image, truncated_image, empty_image, unsupported_format, empty_class_folder,
    single_class, too_few_images, npz_with_wrong_keys, npz_labels_do_not_match, not_an_npz,
    data_file_of_unknown_format,
    npz_floats_in_minus_one_to_one, npz_int16_beyond_255, npz_values_outside_pixel_range,
    npz_pixel_range_reversed, npz_with_no_examples, dangling_symlink_in_a_class_folder,
    held_out_set_is_the_training_data,
    pixel_range_for_an_image_folder, npz_nan_label,
    npz_empty_string_label, decompression_bomb, skip_bad_files_would_drop_a_class,
    validation_class_differs_in_compatibility_form,
    csv_without_text_column, empty_csv, csv_with_an_empty_text, csv_not_utf8, csv_single_class,
    jsonl_bad_line, text_data_with_image_backbone, *MISSING_LABELS,
    malformed_url, postgres_scheme, two_bad_ranges_at_once, unreachable_postgres, changed_search_space, changed_classes,
    negative_seed, seed_above_32_bits, nan_dropout, infinite_dropout_bound, name_with_a_slash,
    union_noise, missing_budget_does_not_hide_a_bad_backbone, unset_port_variable,
    unclosed_ipv6_host, unencoded_at_in_password, sqlite_in_a_missing_folder,
    sqlite_path_is_a_folder,
]


def _snapshot(db: Path):
    if not db.exists():
        return None
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    return [(t.number, t.state) for t in study.get_trials()], dict(study.user_attrs)


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_bad_input(tmp_path, case, capsys, monkeypatch):
    # PIL refuses images above twice this many pixels as decompression bombs; lowered so that a
    # 100 x 100 image is one (the fixture's images are 8 x 8)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)
    make_image_folder(tmp_path / "images", per_class=6, size=8)
    write_study(tmp_path / "study.yaml", data={"path": "images", "validation_split": 0.34,
                                               "image_size": 8})
    args, culprit = case(tmp_path)
    db = tmp_path / "tiny.db"
    before = _snapshot(db)
    capsys.readouterr()

    code = main(["run", str(tmp_path / "study.yaml"), *args])

    out = capsys.readouterr()
    message = out.err + out.out
    assert code == 2, message
    assert culprit in message, message
    assert "Traceback" not in message and "secret" not in message
    assert _snapshot(db) == before  # no database created, or the existing study untouched
    if before is None:
        assert not (tmp_path / "tiny-artifacts").exists()
