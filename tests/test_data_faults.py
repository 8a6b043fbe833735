"""Data that loads without an error but would be silently damaged, and faults of the disk.

High-bit-depth images must not clip to white, class names must not crash on Unicode, skipped
files must not take a class with them, and a cache or artifact folder that cannot be written must
either be harmless (the cache) or be reported with the folder named (the artifacts).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import struct
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from conftest import make_image_folder, write_study
from tlsearch.search.artifacts import AtomicFileSystemArtifactStore, probe_writable, upload_weights
from tlsearch.train.cache import FeatureCache
from tlsearch.cli import main
from tlsearch.config import DataConfig
from tlsearch.data import load_dataset
from tlsearch.data.images import decode_image, to_rgb8
from tlsearch.errors import ArtifactWriteError, UserError
from tlsearch.errors import InputError
from tlsearch.export.predict import Predictor
from tlsearch.modalities.image import image_array, image_file


def _load(tmp_path: Path, path: str, **data):
    cfg = DataConfig(path=path, validation_split=0.34, **data)
    return load_dataset(cfg, base_dir=tmp_path, image_size=8, seed=0)


def _png16(path: Path, values: np.ndarray, colour: bool) -> Path:
    """A 16-bit PNG written byte by byte (PIL cannot write 16-bit RGB)."""
    h, w = values.shape[:2]
    rows = b"".join(b"\0" + values[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, 2 if colour else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def _predictor(image_size: int) -> Predictor:
    """A predictor without a model: enough to exercise how it reads inputs."""
    from tlsearch import modalities

    p = Predictor.__new__(Predictor)
    p.image_size, p.modality, p.classes = image_size, "image", ["a", "b"]
    p.metadata = {"input": {"image_size": image_size}}
    p._kind = modalities.get("image")
    p.model = _FakeModel()
    return p


class _FakeModel:
    """Scores every image [0.25, 0.75], called as a Keras model is (one batch: eagerly; more:
    ``predict_on_batch``)."""

    def __call__(self, x, training=False):
        return np.tile([0.25, 0.75], (len(x), 1))

    def predict_on_batch(self, x):
        return self(x)


# --- 1. high bit depth -------------------------------------------------------------------------

@pytest.mark.parametrize("colour", [False, True], ids=["grey16", "rgb16"])
def test_mid_grey_16_bit_png_is_128_in_training_and_in_predict(tmp_path, colour):
    for c in ("dark", "light"):
        (tmp_path / "images" / c).mkdir(parents=True)
        for i in range(3):
            shape = (8, 8, 3) if colour else (8, 8)
            _png16(tmp_path / "images" / c / f"{i}.png",
                   np.full(shape, 32768 if c == "light" else 256, np.uint16), colour)
    data = _load(tmp_path, "images")
    light = data.class_names.index("light")
    x = np.concatenate([data.x_train[data.y_train == light], data.x_val[data.y_val == light]])
    assert x.dtype == np.uint8 and (x == 128).all()
    dark = np.concatenate([data.x_train[data.y_train != light], data.x_val[data.y_val != light]])
    assert (dark == 1).all()

    png = tmp_path / "images" / "light" / "0.png"
    p = _predictor(8)
    assert (image_file(png, 8) == 128).all()
    with Image.open(png) as im:
        assert (image_array(im, 8) == 128).all()  # a PIL image given to predict


def test_16_bit_scaling_matches_the_exported_models_png_decoder(tmp_path):
    """The SavedModel decodes PNG bytes with TensorFlow: training must see the same pixels."""
    tf = pytest.importorskip("tensorflow")
    ramp = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    path = _png16(tmp_path / "ramp.png", ramp, colour=False)
    ours = decode_image(path, 64)[..., 0]
    theirs = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False).numpy()
    assert (ours == theirs[..., 0]).all()


@pytest.mark.parametrize("mode, values, expected", [
    ("I;16", np.array([[0, 32768, 65535]], np.uint16), [0, 128, 255]),
    ("I", np.array([[0, 32768, 65535]], np.int32), [0, 128, 255]),
    ("F", np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
    ("F", np.array([[0.0, 127.6, 255.0]], np.float32), [0, 128, 255]),
])
def test_high_bit_depth_modes_scale_to_8_bits(mode, values, expected):
    im = Image.fromarray(values)
    assert im.mode == mode
    assert np.asarray(to_rgb8(im))[0, :, 0].tolist() == expected


@pytest.mark.parametrize("values, mode", [
    (np.array([[-1.0, 1.0]], np.float32), "F"),
    (np.array([[0, 70000]], np.int32), "I"),
])
def test_ambiguous_high_bit_depth_images_are_refused(values, mode):
    with pytest.raises(ValueError, match=f"{mode} pixels from"):
        to_rgb8(Image.fromarray(values))


# --- 2. npz pixel values -----------------------------------------------------------------------

@pytest.mark.parametrize("x, pixel_range, expected", [
    (np.full((12, 8, 8, 3), 200, np.uint8), None, 200),
    (np.full((12, 8, 8, 3), 0.5, np.float32), None, 128),       # 0..1
    (np.full((12, 8, 8, 3), 127.6, np.float64), None, 128),     # 0..255
    (np.full((12, 8, 8, 3), 77, np.int64), None, 77),           # integers in 0..255
    (np.full((12, 8, 8, 3), 0.0, np.float32), [-1, 1], 128),    # an explicit range
    (np.full((12, 8, 8, 3), 65535, np.uint16), [0, 65535], 255),
])
def test_npz_pixels_that_are_unambiguous_or_given_a_range(tmp_path, x, pixel_range, expected):
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(12) % 2)
    data = _load(tmp_path, "d.npz", pixel_range=pixel_range)
    assert data.x_train.dtype == np.uint8 and (data.x_train == expected).all()


# --- 3. missing labels -------------------------------------------------------------------------

def test_a_label_that_only_looks_missing_is_kept(tmp_path):
    rows = "".join(f"film {i},{'nano' if i % 2 else 'Nana'}\n" for i in range(12))
    (tmp_path / "t.csv").write_text("text,label\n" + rows)
    assert _load(tmp_path, "t.csv").class_names == ["Nana", "nano"]


# --- 4. Unicode class names --------------------------------------------------------------------

def test_digit_like_class_folders_load_and_sort(tmp_path):
    make_image_folder(tmp_path / "images", classes=("10", "2", "\u00b2", "\u0663"), per_class=3,
                      size=8)
    assert _load(tmp_path, "images").class_names == ["2", "10", "\u00b2", "\u0663"]


def test_class_names_are_nfc_across_training_and_validation(tmp_path):
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    assert nfc != nfd
    make_image_folder(tmp_path / "train", classes=(nfd, "tea"), per_class=3, size=8)
    make_image_folder(tmp_path / "val", classes=(nfc, "tea"), per_class=2, size=8)
    data = _load(tmp_path, "train", validation="val")
    assert data.class_names == [nfc, "tea"]
    assert sorted(set(data.y_val.tolist())) == [0, 1]


def test_folders_differing_only_in_normalisation_are_one_class(tmp_path):
    nfc, nfd = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")
    make_image_folder(tmp_path / "images", classes=(nfc, nfd, "tea"), per_class=3, size=8)
    data = _load(tmp_path, "images")
    assert data.class_names == [nfc, "tea"]
    assert np.bincount(np.concatenate([data.y_train, data.y_val])).tolist() == [6, 3]


# --- 5. decompression bombs --------------------------------------------------------------------

def test_decompression_bomb_is_skipped_when_asked_and_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4000)  # 100 x 100 is over twice the limit
    make_image_folder(tmp_path / "images", per_class=4, size=8)
    bomb = tmp_path / "images" / "circle" / "huge.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(bomb)
    data = _load(tmp_path, "images", skip_bad_files=True)
    assert len(data.skipped) == 1 and "huge.png: too large to decode safely" in data.skipped[0]
    assert len(data.y_train) + len(data.y_val) == 12

    p = _predictor(8)
    with pytest.raises(InputError, match="huge.png"):
        image_file(bomb, 8)
    rows = p.predict([bomb, tmp_path / "images" / "circle" / "circle_000.png"], skip_errors=True)
    assert "huge.png" in rows[0]["input"] and "too large" in rows[0]["error"]
    assert rows[1]["label"] == "b"


# --- 7. a validation set without some classes --------------------------------------------------

def test_val_auc_warns_about_classes_absent_from_validation(tmp_path):
    make_image_folder(tmp_path / "train", per_class=3, size=8)
    make_image_folder(tmp_path / "val", classes=("circle",), per_class=2, size=8)
    data = _load(tmp_path, "train", validation="val")
    (line,) = data.objective_warnings("val_auc")
    assert "\n" not in line and "['square', 'stripes']" in line and "val_auc" in line
    assert data.objective_warnings("val_loss") == []
    full = _load(tmp_path, "train", validation="train")
    assert full.objective_warnings("val_auc") == []


# --- 8, 10. artifacts --------------------------------------------------------------------------

@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_artifact_files_follow_the_umask(tmp_path, umask_022):
    store = AtomicFileSystemArtifactStore(tmp_path / "a")
    store.write("x.npz", io.BytesIO(b"weights"))
    assert stat.S_IMODE((tmp_path / "a" / "x.npz").stat().st_mode) == 0o644
    os.umask(0o077)
    store.write("y.npz", io.BytesIO(b"weights"))
    assert stat.S_IMODE((tmp_path / "a" / "y.npz").stat().st_mode) == 0o600


def test_probe_writable_leaves_nothing_behind(tmp_path):
    (tmp_path / "exists").mkdir()
    probe_writable(tmp_path / "exists")
    assert list((tmp_path / "exists").iterdir()) == []
    probe_writable(tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()  # the store creates it when it first writes


def test_probe_writable_names_a_folder_that_cannot_be_created(tmp_path):
    (tmp_path / "afile").write_text("in the way")
    with pytest.raises(UserError, match="artifacts folder '.*afile/arts' cannot be written"):
        probe_writable(tmp_path / "afile" / "arts")
    with pytest.raises(UserError, match="is not a folder"):
        probe_writable(tmp_path / "afile")
    with pytest.raises(UserError, match="artifacts folder '.*afile/arts' cannot be created"):
        AtomicFileSystemArtifactStore(tmp_path / "afile" / "arts")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_probe_writable_names_a_full_or_read_only_folder(tmp_path, monkeypatch, code):
    """Simulated: the tests may run as root, for whom a read-only folder is writable."""

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(UserError) as e:
        probe_writable(tmp_path / "arts")
    assert str(tmp_path / "arts") in str(e.value) and os.strerror(code) in str(e.value)
    assert not (tmp_path / "arts").exists()


def test_a_failed_artifact_write_raises_artifact_write_error(tmp_path, monkeypatch):
    store = AtomicFileSystemArtifactStore(tmp_path / "arts")

    def full(src, dst, *a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("shutil.copyfileobj", full)
    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ArtifactWriteError) as e:
        upload_weights(trial, store, {"head": [np.zeros(3)]}, step=1)
    message = str(e.value)
    assert str(tmp_path / "arts") in message and "No space left on device" in message
    assert "\n" not in message
    assert list((tmp_path / "arts").iterdir()) == []  # no partial file left


def test_a_disk_that_fills_mid_study_stops_it_with_one_line_and_no_traceback(tmp_path, monkeypatch,
                                                                              capfd):
    """The folder took the probe, then filled before a trial's weights were written: the trial
    fails with the reason and the run stops with one line. Optuna logged the error with its
    whole traceback beside it (found by the chaos run, benchmarks/chaos_run.py)."""
    make_image_folder(tmp_path / "images", per_class=4, size=8)
    study = write_study(tmp_path / "study.yaml", n_trials=2,
                        data={"validation_split": 0.34, "image_size": 8},
                        search={"unfreeze_blocks": 0, "head_width": 8})

    def full(src, dst, *a):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("shutil.copyfileobj", full)
    capfd.readouterr()
    assert main(["run", str(study)]) == ArtifactWriteError.exit_code
    got = capfd.readouterr()
    shown = got.out + got.err
    assert "Traceback" not in shown, shown
    assert shown.count("cannot write trial weights") == 1, shown
    (t,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}").trials
    assert t.state.name == "FAIL"
    assert "No space left on device" in t.user_attrs["tlsearch.failure"]


# --- 9. the feature cache ----------------------------------------------------------------------

def test_cache_write_failure_warns_once_and_carries_on(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "save", full)
    warnings = []
    cache = FeatureCache(tmp_path / "c", 1 << 30, warn=warnings.append)
    for key in ("a", "b", "c"):
        train, val = cache.get_or_compute(key, lambda: (np.ones(4), np.zeros(2)), key)
        assert train.tolist() == [1, 1, 1, 1]
    cache.put("d", (np.ones(1), np.ones(1)))
    assert len(warnings) == 1 and "No space left on device" in warnings[0]
    assert str(tmp_path / "c") in warnings[0]
    assert [p.name for p in (tmp_path / "c" / "features").iterdir()] == []  # no partial entries


def test_trial_completes_when_the_cache_folder_cannot_be_created(tmp_path, capsys):
    make_image_folder(tmp_path / "images", per_class=4, size=8)
    (tmp_path / "afile").write_text("in the way")
    study_file = write_study(tmp_path / "study.yaml", n_trials=1,
                             data={"validation_split": 0.34, "image_size": 8},
                             search={"unfreeze_blocks": 1, "head_width": 8},
                             cache={"dir": str(tmp_path / "afile" / "cache")})
    assert main(["run", str(study_file)]) == 0, capsys.readouterr().err
    shown = capsys.readouterr().out  # warnings, progress and summary share one stream
    assert shown.count("feature cache: cannot write") == 1, shown
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'tiny.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]


def test_test_data_that_is_the_training_data_is_refused_and_a_partial_overlap_counted(tmp_path):
    """``data.test`` pointing at the training folder gave "held-out" figures of training images.
    Overlap is found by content (the same image under another name is the same example)."""
    make_image_folder(tmp_path / "images", per_class=6, size=8)
    with pytest.raises(UserError, match=r"`data.test`: all 18 of its examples .*\(overlap"):
        _load(tmp_path, "images", test="images")
    # a test folder with 2 copies of training or validation images (renamed) and 4 new ones
    make_image_folder(tmp_path / "test", per_class=2, size=8, seed=7)
    for i, name in enumerate(["circle_000.png", "square_003.png"]):
        cls = name.split("_")[0]
        (tmp_path / "test" / cls / f"copy_{i}.png").write_bytes(
            (tmp_path / "images" / cls / name).read_bytes())
    ds = _load(tmp_path, "images", test="test")
    assert len(ds.y_test) == 8
    assert ds.warnings == [
        "warning: `data.test`: 2 of its 8 examples are also in the training or validation data "
        "(overlap: the same content); their test figures are not held out. Remove them from one "
        "of the two."]
    assert "8 held-out test images" in ds.summary()
    for f in (tmp_path / "test").rglob("copy_*.png"):
        f.unlink()
    assert _load(tmp_path, "images", test="test").warnings == []


def test_target_data_read_from_class_folders_says_so(tmp_path):
    """A labelled tree as ``data.target``: its labels were ignored without a word and the number
    of target examples never printed. It is read as one unlabelled pool, and the summary says so."""
    make_image_folder(tmp_path / "images", per_class=6, size=8)
    make_image_folder(tmp_path / "target", per_class=4, size=8, seed=3)
    ds = _load(tmp_path, "images", target="target")
    assert len(ds.x_target) == 12
    assert ("12 unlabelled target images (`data.target`): the images of its 3 sub-folders "
            "(circle, square, stripes) read as one unlabelled pool: folder names are not used as "
            "labels") in ds.summary()
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, f in enumerate(sorted((tmp_path / "target").rglob("*.png"))):
        (flat / f"t{i}.png").write_bytes(f.read_bytes())
    ds = _load(tmp_path, "images", target="flat")
    assert ds.summary().endswith("; 12 unlabelled target images (`data.target`)")
