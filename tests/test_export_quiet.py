"""Converters that fail, or that a modality cannot have, take one line on the terminal each; what
they printed goes into metadata.json."""

from __future__ import annotations

import json
import logging
import os

from tlsearch.cli import main
from tlsearch.export import formats
from tlsearch.export.formats import Format

from conftest import write_study
from test_text import _snippets


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_text_export_says_one_line_per_unavailable_format(tmp_path, capfd):
    _snippets(48).to_csv(tmp_path / "reviews.csv", index=False)
    study = write_study(tmp_path / "study.yaml", name="tinytext", n_trials=1,
                        data={"path": "reviews.csv", "image_size": 32}, backbones=["tiny_bert"],
                        training={"stage1_epochs": 1, "stage2_epochs": 1, "batch_size": 12},
                        search={"unfreeze_blocks": 1, "head_width": [8], "max_length": 16})
    assert main(["run", str(study)]) == 0
    capfd.readouterr()
    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out)]) == 0
    got = capfd.readouterr()
    assert got.out == ""
    lines = _lines(got.err)
    assert [line.split()[0] for line in lines[1:-1]] == ["keras", "saved_model", "onnx", "litert"]
    assert lines[3].split(None, 1)[1] == "not available for text models (tokenizer ops)"
    assert lines[4].split(None, 1)[1] == "not available for text models (tokenizer ops)"
    assert len(got.err) < 600, got.err
    meta = json.loads((out / "metadata.json").read_text())
    for name in ("onnx", "litert"):
        assert meta["formats"][name]["status"] == "skipped"
        assert "RegexSplitWithOffsets" in meta["formats"][name]["details"]
    assert not (out / "model.onnx").exists() and not (out / "model.tflite").exists()


def _noisy_failure(model, modality, cfg, path, probe):
    os.write(2, b"E0000 converter: a very long C++ complaint\n" * 20)
    print("converter chatter on stdout")
    logging.getLogger("tf2onnx.tfonnx").error("Tensorflow op [X] is not supported")
    path.write_bytes(b"half a file")
    raise RuntimeError("could not convert op X\nand many more lines")


def test_failing_converter_is_one_line_and_details_in_metadata(tmp_path, image_folder, capfd,
                                                               monkeypatch):
    study = write_study(tmp_path / "study.yaml", n_trials=1,
                        search={"unfreeze_blocks": 0, "head_width": [8]})
    assert main(["run", str(study)]) == 0
    monkeypatch.setitem(formats.FORMATS, "onnx", Format("onnx", "model.onnx", _noisy_failure))
    capfd.readouterr()
    out = tmp_path / "export"
    assert main(["export", str(study), "--out", str(out), "--formats", "onnx"]) == 0
    got = capfd.readouterr()
    assert got.out == ""
    onnx = [line for line in _lines(got.err) if line.split()[0] == "onnx"]
    assert onnx == ["  onnx         conversion failed (RuntimeError; details in metadata.json)"]
    assert "complaint" not in got.err and "chatter" not in got.err and "op [X]" not in got.err
    meta = json.loads((out / "metadata.json").read_text())["formats"]["onnx"]
    assert meta["status"] == "skipped"
    assert meta["reason"] == "conversion failed: RuntimeError: could not convert op X"
    for said in ("a very long C++ complaint", "converter chatter", "op [X] is not supported",
                 "and many more lines"):
        assert said in meta["details"]
    assert not (out / "model.onnx").exists()
    # the terminal is the terminal again afterwards
    os.write(2, b"after\n")
    print("after")
    got = capfd.readouterr()
    assert got.err == "after\n" and got.out == "after\n"
