"""The ASGI application of ``tlsearch serve``: ``/health``, ``/metadata`` and ``/predict``.

Starlette (with uvicorn as the server, :mod:`tlsearch.serve.server`): the toolkit FastAPI is
built on, maintained, and small. What a model server needs from it is routing, streamed request
bodies (a body over the limit is refused before it is read whole) and JSON responses; FastAPI's
request models and generated docs would add nothing for bodies that are image bytes.

The app holds one loaded :class:`~tlsearch.export.predict.Predictor`: it is created after the
model is loaded (and its first call traced), so a server answers ``/health`` only once it is ready.
Every error is a JSON object ``{"error": message}`` with a 4xx or 5xx status.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
from typing import Any, AsyncIterator

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tlsearch.export.predict import Predictor
from tlsearch.serve.batching import MicroBatcher
from tlsearch.serve.inputs import BadInput, Limits, decode_image_bytes, parse_json

__all__ = ["create_app", "describe"]

#: threads that decode request bodies (each holds at most one body's pixels at a time)
DECODERS = 2


def describe(predictor: Predictor, limits: Limits) -> dict[str, Any]:
    """``GET /metadata``: what the model takes and gives, and how it was chosen."""
    meta = predictor.metadata
    keep = ("study", "trial", "objective", "direction", "value", "best_step", "best_stage",
            "metrics", "decision", "created", "versions")
    out: dict[str, Any] = {"modality": predictor.modality, "classes": predictor.classes,
                           "input": meta.get("input", {}),
                           **{k: meta[k] for k in keep if k in meta}}
    body = ("a JSON object {\"texts\": [\"...\"]}" if predictor.modality == "text" else
            "one image's bytes (PNG, JPEG, GIF, BMP, WebP, TIFF), or a JSON object "
            "{\"instances\": [(H, W, 3) arrays of RGB pixels 0..255]} "
            "(Content-Type: application/json)")
    out["predict"] = {"body": body, "limits": limits.as_dict()}
    return out


def create_app(predictor: Predictor, *, limits: Limits = Limits(), max_batch: int = 32,
               max_wait: float = 0.005, max_concurrency: int = 32) -> Starlette:
    """The ASGI app serving ``predictor`` (already loaded). At most ``max_concurrency``
    predictions are in flight (each holding at most one body); more are answered 503 at once."""
    batcher = MicroBatcher(predictor.proba_batch, max_batch=max_batch, max_wait=max_wait)
    decoders = concurrent.futures.ThreadPoolExecutor(max_workers=DECODERS,
                                                     thread_name_prefix="tlsearch-decode")
    size = predictor.image_size
    rule = predictor.metadata.get("decision") or {}
    threshold = ({"threshold": rule["threshold"], "positive_class": rule.get("positive_class")}
                 if rule.get("rule") == "threshold" else {})
    info = describe(predictor, limits)
    inflight = [0]

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ready", "study": info.get("study"),
                             "trial": info.get("trial"), "pid": os.getpid(),
                             "batching": batcher.stats.as_dict()})

    async def metadata(request: Request) -> JSONResponse:
        return JSONResponse(info)

    async def predict(request: Request) -> JSONResponse:
        if inflight[0] >= max_concurrency:
            return _error(503, f"busy: {max_concurrency} predictions in flight "
                               f"(--max-concurrency); try again")
        inflight[0] += 1
        try:
            return await _predict(request)
        finally:
            inflight[0] -= 1

    async def _predict(request: Request) -> JSONResponse:
        loop = asyncio.get_running_loop()
        try:
            with batcher.arriving():
                body = await _read_body(request, limits.max_body_bytes)
                is_json = _is_json(request.headers.get("content-type", ""))
                if is_json:
                    inputs = await loop.run_in_executor(
                        decoders, parse_json, body, predictor.modality, size, limits)
                elif predictor.modality != "image":
                    raise BadInput(415, "a text model takes a JSON object {\"texts\": [...]} "
                                        "(Content-Type: application/json)")
                else:
                    assert size is not None
                    inputs = [await loop.run_in_executor(
                        decoders, decode_image_bytes, body, size, limits)]
        except BadInput as e:
            return _error(e.status, e.message)
        probs = await batcher.submit(inputs)
        rows = [{k: v for k, v in r.items() if k != "input"}
                for r in predictor.rows([""] * len(inputs), np.asarray(probs))]
        if is_json:
            return JSONResponse({"predictions": rows, **threshold})
        return JSONResponse({**rows[0], **threshold})

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail)

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"the model failed on this request: {type(exc).__name__}: {exc}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            decoders.shutdown(wait=False, cancel_futures=True)

    routes = [Route("/health", health, methods=["GET"]),
              Route("/metadata", metadata, methods=["GET"]),
              Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: http_error, 500: server_error})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes: by its
    Content-Length before reading, or by counting what streams in (chunked bodies)."""
    declared = request.headers.get("content-length")
    too_big = f"the body exceeds {limit} bytes (--max-body-mb)"
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BadInput(413, too_big + f": Content-Length is {int(declared)}")
        except ValueError:
            raise BadInput(400, f"Content-Length {declared!r} is not a number") from None
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise BadInput(413, too_big)
        chunks.append(chunk)
    if n == 0:
        raise BadInput(400, "the body is empty: send one image's bytes or a JSON object")
    return b"".join(chunks)
