"""Shared plumbing for the command-line entry points: logging set-up, user errors and interruptions."""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Callable, Sequence

from .errors import UserInputError

EXIT_USER_ERROR = 2
EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class TrainingInterrupted(Exception):
    """A training loop stopped on SIGINT/SIGTERM after saving a checkpoint; ``run_cli`` prints one line.

    Attributes:
        signum: the signal that stopped it (its exit code is ``128 + signum``).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = int(signum)


class _Terminated(BaseException):
    """SIGTERM outside a training loop (start-up): unwinds like ``KeyboardInterrupt``."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once for a CLI run (time, level, logger name, message)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; user errors and interruptions become one line on stderr, never a traceback.

    * :class:`UserInputError`: ``error: ...``, exit code 2.
    * :class:`TrainingInterrupted` (the loop saved a checkpoint): its message, exit 130 (SIGINT) or 143 (SIGTERM).
    * Ctrl-C or SIGTERM outside a training loop (start-up): ``interrupted``, exit 130 or 143.

    Returns:
        The process exit code (``main``'s return value, 0 when it returns None).
    """
    previous = signal.getsignal(signal.SIGTERM)
    handle_term = previous in (signal.SIG_DFL, None)
    if handle_term:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        code = main(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except TrainingInterrupted as err:
        if _is_main_process():
            print(str(err), file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:
        if _is_main_process():
            print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except _Terminated:
        if _is_main_process():
            print("interrupted", file=sys.stderr)
        return EXIT_SIGTERM
    finally:
        if handle_term:
            signal.signal(signal.SIGTERM, previous)
    return 0 if code is None else int(code)
