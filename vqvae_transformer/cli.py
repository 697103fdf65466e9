"""Shared plumbing for the command-line entry points: logging set-up, user errors and interruptions.

Every CLI (``train_main.py``, ``generate_main.py``, ``validate_main.py``, ``python -m
vqvae_transformer.analysis.codebook``, ``python -m vqvae_transformer.data.simulate``) runs through :func:`run_cli`:

=====================================================  =========  ===============================================
what happened                                          exit code  stderr
=====================================================  =========  ===============================================
success                                                0          (logs only)
validate_main.py: a threshold failed                   1          the failed checks (logged)
a user mistake (:class:`UserInputError`, a bad flag)   2          ``error: <value> ... <what to do>``
a path the system refuses (not a folder, permission,   2          ``error: <path>: <reason> (<ERRNO>); <what to
read-only, no space left, ...: an ``OSError``)                    do>``
Ctrl-C (SIGINT)                                        130        ``interrupted`` (training: the checkpoint line)
SIGTERM (``docker stop``, schedulers)                  143        ``interrupted`` (training: the checkpoint line)
anything else (a bug)                                  1          the full traceback
=====================================================  =========  ===============================================

``--debug`` anywhere on the command line (every CLI) prints the traceback before the one line, with the same
exit code.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import sys
import traceback
from typing import Callable, Sequence

from .errors import Terminated, UserInputError

EXIT_USER_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
DEBUG_FLAG = "--debug"
DEBUG_HELP = "on an error, also print the full traceback (for bug reports)"

# errno -> what to do; these OSErrors are about a path the user gave, not bugs.
_PATH_ERRORS = {
    errno.ENOENT: "check the path (it does not exist)",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass a folder path",
    errno.EISDIR: "it is a folder where a file was expected: pass a file path or move the folder away",
    errno.EACCES: "give yourself access (chmod / chown) or choose another path",
    errno.EPERM: "give yourself access (chmod / chown) or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable disk",
    errno.ENOSPC: "the disk is full: free space (df -h) or choose an output folder on another disk; "
                  "files already finished are kept",
    errno.EDQUOT: "the disk quota is used up: free space or choose an output folder on another disk",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.ELOOP: "too many symbolic links: check the path",
    errno.EEXIST: "it already exists: move it away or choose another path",
    errno.ENOTEMPTY: "the folder is not empty: move it away or choose another path",
}


class TrainingInterrupted(Exception):
    """A training loop stopped on SIGINT/SIGTERM after saving a checkpoint; ``run_cli`` prints one line.

    Attributes:
        signum: the signal that stopped it (its exit code is ``128 + signum``).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)


_Terminated = Terminated  # former name


def _raise_terminated(signum, frame) -> None:
    raise Terminated(signum)


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _print_interrupted_and_exit(code: int) -> None:
    """``interrupted`` on stderr, then exit at once (nothing written yet needs cleaning up)."""
    sys.stdout.flush()
    print("interrupted", file=sys.stderr, flush=True)
    os._exit(code)


def _interrupted_hook(exc_type, exc, tb, _previous=sys.excepthook) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        _print_interrupted_and_exit(EXIT_SIGTERM if isinstance(exc, Terminated) else EXIT_SIGINT)
    _previous(exc_type, exc, tb)


def _exit_interrupted(signum, frame) -> None:
    """SIGINT while the libraries load: one line and exit 130 at once, without raising. A KeyboardInterrupt raised
    while a compiled extension initialises can abort the process instead (seen: pybind11's ``error_already_set``
    ends in ``terminate``, exit -6)."""
    _print_interrupted_and_exit(128 + signum)


def quiet_interrupt_before_run_cli() -> None:
    """Make a Ctrl-C that reaches the top level (while a CLI imports its libraries, before :func:`run_cli` takes
    over) print ``interrupted`` and exit 130 instead of a traceback; every other exception keeps its traceback.

    Called first thing by the three scripts, and by the package itself under ``python -m vqvae_transformer.<tool>``.
    The exit is immediate (``os._exit``): at that point nothing has been written that would need cleaning up. Until
    :func:`run_cli` starts, SIGINT exits from its handler, so no KeyboardInterrupt can be raised inside a compiled
    extension's initialisation; ``run_cli`` restores Python's handler (training loops catch KeyboardInterrupt to
    save a checkpoint).
    """
    sys.excepthook = _interrupted_hook
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _exit_interrupted)


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once for a CLI run (time, level, logger name, message)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UserInputError` (one ``error:`` line, exit 2 through :func:`run_cli`) instead
    of printing the usage and exiting; ``--help`` still prints and exits 0."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserInputError(f"{message} (see --help)")


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    """List ``--debug`` in ``--help`` (:func:`run_cli` removes it from the command line before parsing)."""
    parser.add_argument(DEBUG_FLAG, action="store_true", help=DEBUG_HELP)


def split_debug_flag(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """``argv`` (``sys.argv[1:]`` when None) without ``--debug``, and whether it was there."""
    args = list(sys.argv[1:] if argv is None else argv)
    return [a for a in args if a != DEBUG_FLAG], DEBUG_FLAG in args


def describe_os_error(err: OSError) -> str | None:
    """One line for an ``OSError`` about a path (``<path>: <reason> (<ERRNO>); <what to do>``), else None."""
    advice = _PATH_ERRORS.get(err.errno)
    if advice is None:
        return None
    reason = err.strerror or os.strerror(err.errno)
    where = "" if err.filename is None else f"{os.fsdecode(err.filename)}"
    if err.filename2 is not None:
        where += f" -> {os.fsdecode(err.filename2)}"
    name = errno.errorcode.get(err.errno, str(err.errno))
    return f"{where + ': ' if where else ''}{reason} ({name}); {advice}"


def _one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


def _fail(message: str, code: int, debug: bool, main_only: bool = False) -> int:
    """Print ``message`` (after the traceback with ``--debug``) and return ``code``."""
    if main_only and not _is_main_process():
        return code
    if debug:
        traceback.print_exc()
    print(_one_line(message), file=sys.stderr)
    return code


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; user errors and interruptions become one line on stderr, never a traceback.

    * :class:`UserInputError` (a bad flag, a damaged model folder, ...): ``error: ...``, exit code 2.
    * ``OSError`` about a path (missing, not a folder, permission, read-only, disk full, ...): ``error: <path>:
      <reason> (<ERRNO>); <what to do>``, exit code 2. Other ``OSError`` s and every other exception are bugs:
      their traceback is shown.
    * :class:`TrainingInterrupted` (the loop saved a checkpoint): its message, exit 130 (SIGINT) or 143 (SIGTERM).
    * Ctrl-C or SIGTERM outside a training loop: ``interrupted``, exit 130 (SIGINT) or 143 (SIGTERM).

    ``--debug`` in ``argv`` (or ``sys.argv`` when ``argv`` is None) is removed before ``main`` sees it and adds
    the traceback before the one line.

    Returns:
        The process exit code (``main``'s return value, 0 when it returns None).
    """
    argv, debug = split_debug_flag(argv)
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:  # the libraries are loaded: Ctrl-C raises again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.getsignal(signal.SIGTERM)
    handle_term = previous in (signal.SIG_DFL, None)
    if handle_term:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = main(argv)
    except UserInputError as err:
        return _fail(f"error: {err}", EXIT_USER_ERROR, debug, main_only=err.on_every_rank)
    except OSError as err:
        message = describe_os_error(err)
        if message is None:
            raise
        return _fail(f"error: {message}", EXIT_USER_ERROR, debug)
    except TrainingInterrupted as err:
        return _fail(str(err), 128 + err.signum, debug, main_only=True)
    except Terminated as err:  # before KeyboardInterrupt: it is one
        return _fail("interrupted", 128 + err.signum, debug, main_only=True)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_SIGINT, debug, main_only=True)
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, previous)
    return 0 if code is None else int(code)
