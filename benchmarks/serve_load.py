"""Benchmark (issue 23): ``tlsearch serve`` under load, beside a plain loop over the SavedModel.

Starts ``tlsearch serve EXPORT --port 0`` as a real process on the loopback interface and sends
``--requests`` POST /predict requests (each one image's bytes, the quickstart's 600 images in
turn) from ``--concurrency`` client threads, each on its own keep-alive connection. Reported:
latency p50/p99 and the mean, requests/s, errors (any status but 200, or a broken connection),
the server's start-up (to its "serving" line, and with ``--workers`` to every worker's "ready"),
its resident memory (psutil, all its processes, sampled every 50 ms: before, peak, after), the
batches it ran (``/health``; with ``--workers``, the worker that answered), and its memory after
a volley of bad requests (not an image, a 200-megapixel PNG header, wrong JSON, a wrong shape, a
body over the limit): bounded inputs must leave it where it was.

Beside it, in this process (loaded before the server starts, idle while it is loaded): the
plain loop, the same 600 files through the SavedModel's ``serve_image_bytes`` in batches of 64.
The requests go in ``--repeats`` rounds, each followed by a pass of the plain loop, so the two
take turns as the machine's load moves; each round's requests/s is compared with the pass after
it, and with a pass in batches of ``--concurrency`` images (the most a model call can get when
that many one-image requests are in flight). Last, one image at a time through the plain loop
(latency p50).

Bounded: loopback only, ``--requests`` at most 10,000, ``--timeout`` seconds for the whole load.

    python benchmarks/serve_load.py --requests 1000 --concurrency 8 --out serve-load.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import common

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "studies" / "data" / "fashion-sample"
HOST = "127.0.0.1"


class Server:
    """``tlsearch serve`` in a subprocess; its port read from the line it prints."""

    def __init__(self, export: Path, workers: int, extra: list[str]) -> None:
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlsearch.cli", "serve", str(export), "--host", HOST,
             "--port", "0", "--workers", str(workers), *extra],
            stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        self.port = 0
        for line in self.proc.stderr:
            m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            raise SystemExit(f"tlsearch serve did not start ({self.proc.wait()})")
        ready = 0
        while workers > 1 and ready < workers:  # every worker loaded, before any connection
            line = self.proc.stderr.readline()
            if not line:
                raise SystemExit(f"tlsearch serve exited ({self.proc.wait()})")
            ready += " ready (pid " in line
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain it
        while True:
            try:
                status, _ = request(self.port, "GET", "/health")
                if status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"tlsearch serve exited ({self.proc.returncode})")
            time.sleep(0.05)
        self.startup_s = time.perf_counter() - t0

    def rss_mb(self) -> float:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
            return sum(p.memory_info().rss for p in procs) / 2**20
        except psutil.Error:
            return 0.0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def connect(port: int) -> http.client.HTTPConnection:
    """A keep-alive connection with Nagle's algorithm off, as curl and most HTTP clients have
    it: ``http.client`` sends a request's head and body in two writes, and with Nagle on, the
    second waits for the server's delayed ACK (40 ms a request on Linux)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    conn.connect()
    assert conn.sock is not None
    conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return conn


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, conn: http.client.HTTPConnection | None = None
            ) -> tuple[int, bytes]:
    c = conn or connect(port)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        if conn is None:
            c.close()


def load(port: int, bodies: list[bytes], n: int, concurrency: int, timeout: float) -> dict:
    """``n`` requests from ``concurrency`` threads: every latency (s), the errors, the wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(n))
    deadline = time.perf_counter() + timeout

    def client() -> None:
        conn = connect(port)
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            t0 = time.perf_counter()
            try:
                status, text = request(port, "POST", "/predict", bodies[i % len(bodies)],
                                       conn=conn)
                ok = status == 200 and "label" in json.loads(text)
                reason = f"{status}: {text[:200]!r}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, reason = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = connect(port)
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if not ok:
                    errors.append(reason)
        conn.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies_s": latencies, "errors": errors, "wall_s": time.perf_counter() - t0}


def summary(rounds: list[dict]) -> dict:
    """Latency percentiles over every request of every round, and each round's rate."""
    ms = sorted(x * 1000 for r in rounds for x in r["latencies_s"])
    errors = [e for r in rounds for e in r["errors"]]
    return {"requests": len(ms), "errors": len(errors), "error_examples": errors[:5],
            "requests_per_s": [round(len(r["latencies_s"]) / r["wall_s"], 1) for r in rounds],
            "latency_ms": {"p50": round(ms[len(ms) // 2], 1),
                           "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 1),
                           "mean": round(statistics.fmean(ms), 1), "max": round(ms[-1], 1)}}


def bad_requests() -> list[tuple[bytes, dict]]:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 10000, 8, 2, 0,
                                                               0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    js = {"Content-Type": "application/json"}
    return [(b"not an image at all", {}), (bomb, {}), (b'{"instances": [', js),
            (b'{"instances": [[[[1, 2]]]]}', js), (b"\0" * (17 * 2**20), {})]


class PlainLoop:
    """The same files through the SavedModel's ``serve_image_bytes``, loaded once in this
    process (idle while the server is loaded)."""

    def __init__(self, export: Path, files: list[Path]) -> None:
        from tlsearch._quiet import import_tensorflow_quietly

        self.tf = import_tensorflow_quietly(lean=True)
        self.saved = self.tf.saved_model.load(str(export / "serving" / "1"))
        self.data = [f.read_bytes() for f in files]
        self.saved.serve_image_bytes(self.tf.constant(self.data[:1]))

    def batches(self, size: int = 64) -> float:
        """Images/s over every file, in batches of ``size``."""
        t0 = time.perf_counter()
        for i in range(0, len(self.data), size):
            self.saved.serve_image_bytes(
                self.tf.constant(self.data[i:i + size]))["probabilities"].numpy()
        return round(len(self.data) / (time.perf_counter() - t0), 1)

    def one_at_a_time_ms(self, n: int = 200) -> float:
        took = []
        for d in self.data[:n]:
            t0 = time.perf_counter()
            self.saved.serve_image_bytes(self.tf.constant([d]))["probabilities"].numpy()
            took.append((time.perf_counter() - t0) * 1000)
        return round(statistics.median(took), 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--export", type=Path, help="an export folder (default: make one)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--server-args", default="",
                   help="more options for tlsearch serve, e.g. '--batch-wait-ms 20'")
    p.add_argument("--timeout", type=float, default=600, help="seconds for the whole load")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds: the requests are sent in this many parts, each followed by a "
                        "pass of the plain loop")
    p.add_argument("--out", type=Path, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if not 1 <= args.requests <= 10_000 or not 1 <= args.concurrency <= 64:
        raise SystemExit("--requests must be 1..10000 and --concurrency 1..64")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with tempfile.TemporaryDirectory() as tmp:
        if args.export is None:
            from predict_throughput import _export

            args.export = _export(Path(tmp))
        return _measure(args)


def _measure(args) -> int:
    files = sorted(f for f in IMAGES.rglob("*.png"))
    bodies = [f.read_bytes() for f in files]
    plain = PlainLoop(args.export, files)
    server = Server(args.export, args.workers, args.server_args.split())
    samples: list[float] = []
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            samples.append(server.rss_mb())
            time.sleep(0.05)

    rounds, plain_rates, plain_small = [], [], []
    try:
        before = server.rss_mb()
        sampler = threading.Thread(target=sample)
        sampler.start()
        for i in range(args.repeats):  # the load and the plain loop take turns
            share = args.requests // args.repeats + (i < args.requests % args.repeats)
            rounds.append(load(server.port, bodies, share, args.concurrency,
                               args.timeout / args.repeats))
            plain_rates.append(plain.batches())
            plain_small.append(plain.batches(args.concurrency))
        sampling.set()
        sampler.join()
        after = server.rss_mb()
        status, health = request(server.port, "GET", "/health")
        bad = []
        for _ in range(10):
            for body, headers in bad_requests():
                status, text = request(server.port, "POST", "/predict", body, headers)
                bad.append(status)
        after_bad = server.rss_mb()
        status, _ = request(server.port, "POST", "/predict", bodies[0])
        result = summary(rounds)
        result.update({
            "workers": args.workers, "concurrency": args.concurrency,
            "server_args": args.server_args,
            "startup_s": round(server.startup_s, 2),
            "rss_mb": {"before": round(before, 1), "peak": round(max(samples, default=after), 1),
                       "after": round(after, 1), "after_bad_requests": round(after_bad, 1)},
            "bad_requests": {"sent": len(bad), "statuses": sorted(set(bad)),
                             "served_after": status == 200},
            "batching": json.loads(health)["batching"],
        })
    finally:
        server.stop()
    ratios = [round(r / p, 3) for r, p in zip(result["requests_per_s"], plain_rates)]
    small = [round(r / p, 3) for r, p in zip(result["requests_per_s"], plain_small)]
    result["plain_loop"] = {"batches_of_64_images_per_s": plain_rates,
                            f"batches_of_{args.concurrency}_images_per_s": plain_small,
                            "one_image_latency_ms_p50": plain.one_at_a_time_ms()}
    result["requests_per_s_vs_plain_loop"] = ratios
    result["requests_per_s_vs_plain_loop_median"] = statistics.median(ratios)
    result["requests_per_s_vs_plain_loop_at_concurrency_batches"] = small
    result["requests_per_s_vs_plain_loop_at_concurrency_batches_median"] = statistics.median(small)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    common.report(result, args.out)
    lat = result["latency_ms"]
    print(f"\n{result['requests']} requests at concurrency {args.concurrency}: p50 {lat['p50']} ms, "
          f"p99 {lat['p99']} ms, {result['errors']} errors; requests/s by round "
          f"{result['requests_per_s']} against the plain loop's images/s {plain_rates} "
          f"(median ratio {result['requests_per_s_vs_plain_loop_median']:.2f}; against its "
          f"batches of {args.concurrency}, "
          f"{result['requests_per_s_vs_plain_loop_at_concurrency_batches_median']:.2f})",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
