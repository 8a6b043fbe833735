"""Tiny exports built in a second (no study run) and a ``tlsearch serve`` process to talk to."""

from __future__ import annotations

import http.client
import io
import json
import re
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["circle", "square", "stripes"]
SIZE = 16


def _write_metadata(folder: Path, meta: dict) -> None:
    from tlsearch._hashing import sha256_file

    meta["files"] = {"model.keras": {"sha256": sha256_file(folder / "model.keras")}}
    (folder / "metadata.json").write_text(json.dumps(meta))


def tiny_image_export(folder: Path, *, threshold: float | None = None) -> Path:
    """An image export of a small untrained network; with ``threshold``, a screening rule
    (``square`` wherever its probability reaches it), as a sensitivity objective writes."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    decision: dict = {"rule": "argmax"}
    if threshold is not None:
        decision = {"rule": "threshold", "threshold": threshold, "positive": 1,
                    "positive_class": "square"}
    _write_metadata(folder, {
        "study": "tiny", "trial": 0, "objective": "val_loss", "modality": "image",
        "classes": CLASSES, "decision": decision, "metrics": {"val_loss": 1.0},
        "input": {"kind": "image", "name": "image", "shape": [None, SIZE, SIZE, 3],
                  "dtype": "float32", "image_size": SIZE}})
    return folder


def tiny_text_export(folder: Path) -> Path:
    """A text export: a string-in Keras model (its vocabulary inside, as a real text export has
    its tokenizer), made of Keras' own layers so any process loads it."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(shape=(), dtype="string")
    words = keras.layers.TextVectorization(output_mode="count",
                                           vocabulary=["good", "bad", "film", "long"])(inp)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(words))
    folder.mkdir(parents=True)
    model.save(folder / "model.keras")
    _write_metadata(folder, {"classes": ["neg", "pos"], "modality": "text",
                             "input": {"kind": "text", "name": "text", "shape": [None],
                                       "dtype": "string"}})
    return folder


def png(pixels: np.ndarray, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(width: int = 20000, height: int = 10000) -> bytes:
    """A few hundred bytes of PNG whose header says width x height (200 megapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


class ServerProcess:
    """``python -m tlsearch.cli serve EXPORT --port 0 ...`` until :meth:`stop`."""

    def __init__(self, export: Path, *args: str, env: dict | None = None,
                 timeout: float = 180) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tlsearch.cli", "serve", str(export),
                                      "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        self.port = 0
        deadline = time.monotonic() + timeout
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
            if time.monotonic() > deadline:
                break
        if not self.port:
            self.stop()
            raise AssertionError("the server did not start:\n" + "".join(self.lines)[-3000:])
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict | None = None) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, json.loads(r.read())
        finally:
            conn.close()

    def post_json(self, doc) -> tuple[int, dict]:
        return self.request("POST", "/predict", json.dumps(doc).encode(),
                            {"Content-Type": "application/json"})

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
