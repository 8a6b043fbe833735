"""predict's fast path: readers in threads, one traced function, the same numbers as before."""

from __future__ import annotations

import numpy as np
import pytest

from serve_helpers import SIZE, png, tiny_image_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_image_export(tmp_path_factory.mktemp("speed") / "image")


def test_one_traced_function_serves_every_batch_size(export):
    import keras

    import tlsearch

    p = tlsearch.load(export)
    x = np.random.default_rng(0).integers(0, 256, (7, SIZE, SIZE, 3)).astype(np.float32)
    got = p.predict_proba(x, batch_size=3)  # batches of 3, 3 and 1
    assert p._forward is not None
    assert p._forward.experimental_get_tracing_count() == 1
    p.predict_proba(x[:5], batch_size=2)
    assert p._forward.experimental_get_tracing_count() == 1  # no retracing, ever
    eager = keras.saving.load_model(export / "model.keras")(x, training=False)
    np.testing.assert_allclose(got, np.asarray(eager), atol=1e-6)


def test_readers_keep_the_order_and_each_unreadable_file_in_its_place(export, tmp_path):
    import tlsearch

    rng = np.random.default_rng(2)
    for i in range(7):
        (tmp_path / f"{i:02d}.png").write_bytes(png(rng.integers(0, 256, (20 + i, 30, 3))))
    (tmp_path / "03b.png").write_bytes(b"\x89PNG not really")
    p = tlsearch.load(export)
    rows = p.predict([tmp_path], batch_size=2, skip_errors=True)
    names = sorted(str(f) for f in tmp_path.glob("*.png"))
    assert [r["input"] for r in rows] == names
    assert [i for i, r in enumerate(rows) if "error" in r] == [names.index(str(tmp_path / "03b.png"))]
    one_by_one = [p.predict([f])[0] for f in sorted(tmp_path.glob("*.png")) if f.name != "03b.png"]
    good = [r for r in rows if "error" not in r]
    assert [r["label"] for r in good] == [r["label"] for r in one_by_one]
    np.testing.assert_allclose([list(r["probabilities"].values()) for r in good],
                               [list(r["probabilities"].values()) for r in one_by_one], atol=1e-6)
    from tlsearch.errors import InputError

    with pytest.raises(InputError, match="03b.png"):
        p.predict([tmp_path], batch_size=2)


def test_readers_stay_a_few_batches_ahead(export, monkeypatch):
    """A million inputs never sit in memory at once: reading stops a few batches ahead."""
    import tlsearch
    import tlsearch.export.predict as predict

    reads = []
    real = predict._read
    monkeypatch.setattr(predict, "_read", lambda item: (reads.append(1), real(item))[1])
    x = np.zeros((60, SIZE, SIZE, 3), np.float32)
    rows = tlsearch.load(export).iter_predict(x, batch_size=4)
    next(rows)
    assert len(reads) <= (predict.READ_AHEAD + 1) * 4
    rows.close()


@pytest.mark.parametrize("shape", [(28, 28), (20, 20), (480, 640), (SIZE, SIZE), (97, 300)])
def test_the_traced_resize_gives_the_eager_pixels(shape):
    from tlsearch.data.images import _resize_one, resize_pixels

    a = np.random.default_rng(4).integers(0, 256, (*shape, 3)).astype(np.uint8)
    eager = np.asarray(resize_pixels(a[None], 96))[0].astype(np.uint8)
    np.testing.assert_array_equal(_resize_one(a, 96), eager)


@pytest.mark.slow  # a tiny_bert study and its export: about a minute on 2 cores
def test_a_text_export_traced_over_many_batches_gives_the_eager_numbers(tmp_path):
    """The tokenizer inside a real text export runs in the traced function too."""
    import tlsearch
    from conftest import write_study
    from test_text import _snippets
    from tlsearch.cli import main

    _snippets(48).to_csv(tmp_path / "reviews.csv", index=False)
    study = write_study(tmp_path / "text.yaml", name="reviews", n_trials=1,
                        data={"path": "reviews.csv", "image_size": 32}, backbones=["tiny_bert"],
                        training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": 1, "head_width": [8], "max_length": 16})
    assert main(["run", str(study)]) == 0
    assert main(["export", str(study), "--out", str(tmp_path / "export"), "--formats", ""]) == 0
    p = tlsearch.load(tmp_path / "export")
    texts = ["a great fun film", "dull and awful acting", "", "the plot was fine . yes"]
    traced = p.predict_proba(texts, batch_size=1)
    assert p._forward is not None and p._forward.experimental_get_tracing_count() == 1
    np.testing.assert_allclose(traced, p.predict_proba(texts, batch_size=64), atol=1e-5)


def test_small_images_resized_together_get_the_pixels_each_gets_alone(tmp_path):
    """Small files are kept as decoded and resized with the others of their size in the batch;
    large ones as they are read. Either way: the pixels of the one resize, image by image."""
    from PIL import Image

    from tlsearch.data.images import RESIZE_TOGETHER_PIXELS, decode_image, resize_pixels
    from tlsearch.modalities import get

    rng = np.random.default_rng(5)
    shapes = [(28, 28), (20, 31), (28, 28), (SIZE, SIZE), (300, 400), (20, 31)]
    files = []
    for i, shape in enumerate(shapes):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(rng.integers(0, 256, (*shape, 3))))
    read = [decode_image(f, SIZE, keep_small=True) for f in files]
    assert [r.shape[:2] for r in read] == [s if s[0] * s[1] <= RESIZE_TOGETHER_PIXELS
                                           else (SIZE, SIZE) for s in shapes]
    batch = get("image").collate(read, {"input": {"image_size": SIZE}})
    assert batch.shape == (len(files), SIZE, SIZE, 3) and batch.dtype == np.float32
    for got, f in zip(batch, files):
        with Image.open(f) as im:
            pixels = np.asarray(im.convert("RGB"))
        np.testing.assert_array_equal(got, np.asarray(resize_pixels(pixels[None], SIZE))[0])
