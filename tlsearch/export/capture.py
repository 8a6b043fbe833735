"""Keep converters quiet: what they print goes into the export's metadata, not on the terminal.

tf2onnx logs through Python's logging, the LiteRT converter through C++ straight to file
descriptor 2, and both warn through :mod:`warnings`; a conversion that fails prints hundreds of
lines. :func:`captured` sends all of it, for the duration of one conversion, into a buffer whose
text :mod:`tlsearch.export.exporter` stores in ``metadata.json`` when the format fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

__all__ = ["Captured", "captured", "convert_quietly", "MAX_DETAILS"]

#: the most characters of a converter's output kept in metadata.json
MAX_DETAILS = 20_000


class Captured:
    """What a converter printed, logged and warned while :func:`captured` was open."""

    def __init__(self) -> None:
        self.text = ""

    def details(self, error: BaseException | None = None) -> str:
        """The captured output, the error last, cut to :data:`MAX_DETAILS` characters (the end
        kept: a converter's final lines say why it failed)."""
        text = self.text
        if error is not None:
            text += f"\n{type(error).__name__}: {error}"
        text = text.strip()
        return text if len(text) <= MAX_DETAILS else "...\n" + text[-MAX_DETAILS:]


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in
                                      list(logging.Logger.manager.loggerDict))]
    out: list[logging.StreamHandler] = []
    for lg in loggers:
        for h in getattr(lg, "handlers", []):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and h not in out:
                out.append(h)
    return out


def _swap(handler: logging.StreamHandler, stream):
    """Point ``handler`` at ``stream``; returns the stream it had. No flush of the old one (a
    handler left behind by a closed console may hold a closed file)."""
    with contextlib.suppress(Exception):
        handler.flush()
    handler.acquire()
    try:
        old, handler.stream = handler.stream, stream
    finally:
        handler.release()
    return old


@contextlib.contextmanager
def captured() -> Iterator[Captured]:
    """Everything written to file descriptors 1 and 2, ``sys.stdout``/``sys.stderr``, logging's
    stream handlers and :mod:`warnings` inside the block goes into the returned
    :class:`Captured` (its ``text`` is filled when the block ends)."""
    result = Captured()
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as buf:
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        saved = []
        for fd in (1, 2):
            try:
                saved.append((fd, os.dup(fd)))
                os.dup2(buf.fileno(), fd)
            except OSError:  # no such descriptor (an embedded interpreter): Python-level only
                pass
        handlers = _stream_handlers()
        streams = [_swap(h, buf) for h in handlers]
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = buf
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield result
        finally:
            buf.flush()
            sys.stdout, sys.stderr = old_out, old_err
            for h, s in zip(handlers, streams):
                _swap(h, s)
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            buf.seek(0)
            result.text = buf.read() + "".join(
                f"{w.category.__name__}: {w.message}\n" for w in caught)


def convert_quietly(fmt, model, modality, cfg, target, probe) -> dict:
    """Write optional format ``fmt`` with its converter's output captured. The result is the
    writer's, or ``{"skipped": reason, "line": what the terminal shows, "details": output}``
    when the modality cannot have it or the converter fails."""
    import shutil

    if fmt.name in modality.unavailable_formats:
        line, details = modality.unavailable_formats[fmt.name]
        return {"skipped": line, "line": line, "details": details}
    error: Exception | None = None
    with captured() as cap:
        try:
            result = fmt.write(model, modality, cfg, target, probe)
        except Exception as e:  # a converter that cannot handle this model: record, go on
            error = e
    if error is None:
        return result
    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else \
        target.unlink(missing_ok=True)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
    return {"skipped": f"conversion failed: {type(error).__name__}: {first}",
            "line": f"conversion failed ({type(error).__name__}; details in metadata.json)",
            "details": cap.details(error)}
