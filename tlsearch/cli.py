"""The ``tlsearch`` command: a thin layer over the library, one module per subcommand.

``main(argv) -> int`` never exits by itself, so the tests call it in-process. A
:class:`~tlsearch.errors.UserError` becomes a message and exit code 2, with no traceback:
tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from tlsearch import __version__
from tlsearch.errors import ArtifactWriteError, TooManyFailures, UserError

__all__ = ["main"]

#: subcommand modules under tlsearch.commands; each has ``add_parser(sub)`` and ``run(args) -> int``
COMMANDS = ("run", "validate", "backbones", "cache", "export", "predict", "serve", "evaluate",
            "dashboard", "report", "split", "init", "storage-proxy")


#: commands that never touch a study: their start-up skips Optuna and the study schema
#: (``tlsearch predict``, as a serving job runs it, starts 0.9 s sooner on 2 cores)
NO_STUDY = ("predict", "serve")


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with ``only``, just that command's parser (each command module imports
    what it needs, and ``predict`` needs far less than ``run``)."""
    p = argparse.ArgumentParser(
        prog="tlsearch",
        description="Search the two-stage transfer-learning recipe with Optuna.",
    )
    p.add_argument("--version", action="version", version=f"tlsearch {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS if only is None else (only,):
        mod = importlib.import_module(f"tlsearch.commands.{name.replace('-', '_')}")
        mod.add_parser(sub).set_defaults(_handler=mod.run)
    return p


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _quiet_optuna() -> None:
    """tlsearch prints its own progress; Optuna's per-trial INFO lines and its experimental-feature
    notes (meant for library authors) would drown it. Done here, for the command only: importing
    tlsearch as a library changes no logging or warning settings."""
    import warnings

    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    command = words[0] if words and words[0] in COMMANDS else None
    if command not in NO_STUDY:
        _quiet_optuna()
    parser = _parser(command)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on bad usage; keep that code, but return it
        return int(e.code or 0)
    try:
        return int(args._handler(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (TooManyFailures, ArtifactWriteError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        # a --workers worker is stopped by its parent, which says this once for all of them;
        # one whose parent is gone says why it stopped
        worker = getattr(args, "worker_index", None)
        if worker is None:
            print("interrupted: finished trials are saved; run the same command again to resume",
                  file=sys.stderr)
        else:
            from tlsearch.runner.workers import parent_gone

            if parent_gone():
                print(f"worker {worker}: its parent process is gone; stopped (finished trials "
                      f"are saved)", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
