"""tlsearch serve: bounded inputs, batching, and a real server process answering real requests."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from serve_helpers import (CLASSES, SIZE, ServerProcess, png, png_bomb, tiny_image_export,
                           tiny_text_export)

pytest.importorskip("starlette", reason="tlsearch serve needs the `serve` extra")
pytest.importorskip("uvicorn", reason="tlsearch serve needs the `serve` extra")


# ------------------------------------------------------------------ inputs, without a server


def _status(fn, *args) -> tuple[int, str]:
    from tlsearch.serve.inputs import BadInput

    with pytest.raises(BadInput) as e:
        fn(*args)
    return e.value.status, e.value.message


def test_bad_bodies_are_refused_with_a_status_and_a_reason():
    from tlsearch.serve.inputs import Limits, decode_image_bytes, parse_json

    lim = Limits()
    assert _status(decode_image_bytes, b"hello", SIZE, lim)[0] == 415
    status, msg = _status(decode_image_bytes, png_bomb(8000, 4000), SIZE, lim)
    assert status == 413 and "32.0 megapixels" in msg and "--max-megapixels" in msg
    assert _status(decode_image_bytes, png_bomb(), SIZE, lim)[0] == 413  # PIL's own bomb check
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3))
    assert _status(decode_image_bytes, png(noise)[:200], SIZE, lim)[0] == 422  # truncated
    assert _status(parse_json, b'{"instances": [', "image", SIZE, lim)[0] == 400
    assert _status(parse_json, b"[" * 100_000, "image", SIZE, lim)[0] == 400  # too deep
    status, msg = _status(parse_json, b'{"texts": ["a"]}', "image", SIZE, lim)
    assert status == 422 and "'instances'" in msg
    status, msg = _status(parse_json, b'{"instances": [[[[1, 2]]]]}', "image", SIZE, lim)
    assert status == 422 and "instances[0]: shape [1, 1, 2]" in msg
    status, msg = _status(parse_json, b'{"instances": [[[1, 2], [3]]]}', "image", SIZE, lim)
    assert status == 422 and "rectangular" in msg
    assert _status(parse_json, b'{"instances": [[[300, 0, 0]]]}', "image", SIZE, lim)[0] == 422
    status, msg = _status(parse_json, b'{"texts": ["fine", "  "]}', "text", None, lim)
    assert status == 422 and "texts[1] is empty" in msg
    many = json.dumps({"texts": ["x"] * 65}).encode()
    assert _status(parse_json, many, "text", None, lim)[0] == 413


def test_json_instances_become_the_pixels_predict_makes_of_the_same_array():
    from tlsearch.modalities.image import image_array
    from tlsearch.serve.inputs import Limits, parse_json

    a = np.random.default_rng(0).integers(0, 256, (20, 24, 3))
    got = parse_json(json.dumps({"instances": [a.tolist()]}).encode(), "image", SIZE, Limits())
    np.testing.assert_array_equal(got[0], image_array(a, SIZE))
    assert got[0].shape == (SIZE, SIZE, 3)


# ------------------------------------------------------------------ batching, without a server


def test_requests_arriving_together_share_one_model_call_and_a_lone_one_does_not_wait():
    from tlsearch.serve.batching import MicroBatcher

    calls: list[list] = []

    def run(inputs: list) -> np.ndarray:
        calls.append(list(inputs))
        return np.array([[x, 10 * x] for x in inputs], dtype=np.float32)

    async def scenario() -> tuple:
        b = MicroBatcher(run, max_batch=8, max_wait=5.0)  # a long wait, used only if needed
        b.start()

        async def request(x: int, delay: float) -> np.ndarray:
            with b.arriving():
                await asyncio.sleep(delay)  # reading the body
            return await b.submit([x, x + 1])

        t0 = time.monotonic()
        pair = await asyncio.gather(request(1, 0.0), request(5, 0.05))
        lone = await request(7, 0.0)
        elapsed = time.monotonic() - t0
        await b.stop()
        return pair, lone, elapsed, b.stats

    pair, lone, elapsed, stats = asyncio.run(scenario())
    assert calls[0] == [1, 2, 5, 6]  # the first waited for the second, still arriving
    np.testing.assert_array_equal(pair[0], [[1, 10], [2, 20]])
    np.testing.assert_array_equal(pair[1], [[5, 50], [6, 60]])
    np.testing.assert_array_equal(lone, [[7, 70], [8, 80]])
    assert elapsed < 2.0  # nothing waited the 5 s
    assert (stats.batches, stats.requests, stats.most_requests_in_a_batch) == (2, 3, 2)


def test_a_full_batch_runs_at_once_and_the_rest_waits_for_the_next():
    from tlsearch.serve.batching import MicroBatcher

    calls: list[int] = []

    def run(inputs: list) -> np.ndarray:
        calls.append(len(inputs))
        return np.zeros((len(inputs), 1))

    async def scenario() -> None:
        b = MicroBatcher(run, max_batch=3, max_wait=0.01)
        b.start()
        await asyncio.gather(*(b.submit([i, i]) for i in range(3)))
        await b.stop()

    asyncio.run(scenario())
    assert sum(calls) == 6 and max(calls) <= 3


# ------------------------------------------------------------------ the command


def test_serve_refuses_a_bad_export_and_bad_options_before_listening(tmp_path, capsys):
    from tlsearch.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "no metadata.json" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--max-body-mb", "0"]) == 2
    assert "--max-body-mb" in capsys.readouterr().err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        export = tiny_image_export(tmp_path / "export")
        port = str(busy.getsockname()[1])
        assert main(["serve", str(export), "--port", port]) == 2
        assert f"--port {port}`: cannot listen there" in capsys.readouterr().err
    finally:
        busy.close()


def test_importing_tlsearch_and_its_command_line_leaves_the_web_stack_unloaded():
    code = ("import sys, tlsearch; from tlsearch.cli import _parser; _parser(); "
            "print(sorted(m for m in ('starlette', 'uvicorn') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


# ------------------------------------------------------------------ a real server process


@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    return tiny_image_export(tmp_path_factory.mktemp("serve") / "image", threshold=0.3)


def _send_together(port: int, bodies: list[bytes], meanwhile=None) -> list[dict]:
    """Requests whose bodies are all sent but their last byte, then every last byte at once: the
    server has all of them arriving when the first is complete. ``meanwhile()`` runs while they
    are all in flight."""
    socks = []
    for body in bodies:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                  b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:-1])
        socks.append(s)
    time.sleep(0.3)
    if meanwhile is not None:
        meanwhile()
    for s, body in zip(socks, bodies):
        s.sendall(body[-1:])
    out = []
    for s in socks:
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), data[:500]
        out.append(json.loads(payload))
    return out


def test_a_served_image_model_answers_predicts_refuses_and_batches(image_export, tmp_path):
    import tlsearch

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape).astype(np.uint8)
              for shape in ((SIZE, SIZE, 3), (40, 30, 3), (23, 57, 3))]
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(png(img))
    predictor = tlsearch.load(image_export)
    expected = predictor.predict(files)

    server = ServerProcess(image_export, "--batch-wait-ms", "3000", "--max-batch", "2",
                           "--max-concurrency", "2")
    try:
        status, health = server.request("GET", "/health")
        assert status == 200 and health["status"] == "ready"
        status, meta = server.request("GET", "/metadata")
        assert status == 200 and meta["classes"] == CLASSES
        assert meta["input"]["image_size"] == SIZE and meta["decision"]["rule"] == "threshold"

        # one image's bytes: the label and probabilities tlsearch.load gives, and the threshold
        for f, want in zip(files, expected):
            status, got = server.request("POST", "/predict", f.read_bytes())
            assert status == 200, got
            assert got["label"] == want["label"] and got["threshold"] == 0.3
            assert got["positive_class"] == "square"
            for c in CLASSES:
                assert abs(got["probabilities"][c] - want["probabilities"][c]) < 1e-6

        # JSON instances: arrays of any size, resized by the same function
        status, got = server.post_json({"instances": [img.tolist() for img in images]})
        assert status == 200, got
        assert [r["label"] for r in got["predictions"]] == [w["label"] for w in expected]
        np.testing.assert_allclose(
            [[r["probabilities"][c] for c in CLASSES] for r in got["predictions"]],
            predictor.predict_proba(images), atol=1e-6)

        # bad input: a 4xx JSON error that names the problem, and the server goes on
        bad = {
            "not an image": (b"GIF89a but not really", {}, 415, "not an image"),
            "a 200-megapixel header": (png_bomb(), {}, 413, "megapixels"),
            "wrong JSON": (b'{"instances": [', {"Content-Type": "application/json"}, 400,
                           "not valid JSON"),
            "texts for an image model": (b'{"texts": ["hi"]}',
                                         {"Content-Type": "application/json"}, 422, "instances"),
            "a wrong shape": (b'{"instances": [[[[1, 2]]]]}',
                              {"Content-Type": "application/json"}, 422, "shape [1, 1, 2]"),
            "an empty body": (b"", {}, 400, "empty"),
            "too large": (b"\0" * (17 * 2**20), {}, 413, "exceeds"),
        }
        for name, (body, headers, want_status, words) in bad.items():
            status, got = server.request("POST", "/predict", body, headers)
            assert status == want_status and words in got["error"], (name, status, got)
        status, got = server.request("GET", "/nowhere")
        assert status == 404 and "error" in got

        # answers are not held back by Nagle's algorithm (40 ms each on a keep-alive connection)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        took = []
        for _ in range(15):
            t0 = time.perf_counter()
            conn.request("GET", "/health")
            conn.getresponse().read()
            took.append(time.perf_counter() - t0)
        conn.close()
        assert sorted(took)[len(took) // 2] < 0.025, took

        # two requests arriving together: both answered right, in one model call; a third
        # while they are in flight is over --max-concurrency: 503 at once
        _, before = server.request("GET", "/health")
        busy: list = []
        pair = _send_together(server.port, [files[1].read_bytes(), files[2].read_bytes()],
                              lambda: busy.append(server.request("POST", "/predict",
                                                                 files[0].read_bytes())))
        assert busy[0][0] == 503 and "--max-concurrency" in busy[0][1]["error"]
        assert [r["label"] for r in pair] == [expected[1]["label"], expected[2]["label"]]
        _, after = server.request("GET", "/health")
        assert after["batching"]["requests"] - before["batching"]["requests"] == 2
        assert after["batching"]["batches"] - before["batching"]["batches"] == 1
        status, _ = server.request("POST", "/predict", files[0].read_bytes())
        assert status == 200
    finally:
        assert server.stop() in (0, -15)


@pytest.mark.slow  # a second server start: 10-20 s on 2 shared cores
def test_a_served_text_model_takes_texts_and_refuses_empty_ones(tmp_path):
    export = tiny_text_export(tmp_path / "text")
    import tlsearch

    texts = ["a good film", "bad, bad and long"]
    want = tlsearch.load(export).predict(texts)
    server = ServerProcess(export)
    try:
        status, got = server.post_json({"texts": texts})
        assert status == 200, got
        assert [r["label"] for r in got["predictions"]] == [w["label"] for w in want]
        for r, w in zip(got["predictions"], want):
            assert abs(r["probabilities"]["pos"] - w["probabilities"]["pos"]) < 1e-6
        assert "threshold" not in got
        status, got = server.post_json({"texts": ["fine", ""]})
        assert status == 422 and "texts[1] is empty" in got["error"]
        status, got = server.request("POST", "/predict", png(np.zeros((4, 4, 3))))
        assert status == 415 and "texts" in got["error"]
        status, got = server.post_json({"instances": [[[0, 0, 0]]]})
        assert status == 422 and "'texts'" in got["error"]
        status, _ = server.request("GET", "/health")
        assert status == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_two_workers_share_one_port_and_each_answers(image_export, tmp_path):
    server = ServerProcess(image_export, "--workers", "2")
    try:
        ready = time.monotonic() + 180
        while sum("ready" in line for line in server.lines) < 2 and time.monotonic() < ready:
            time.sleep(0.2)
        assert sum("ready" in line for line in server.lines) == 2, server.lines
        results = []

        def one() -> None:
            results.append(server.request("POST", "/predict", png(np.zeros((8, 8, 3))))[0])

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 8
    finally:
        assert server.stop() in (0, -15)
