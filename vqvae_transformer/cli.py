"""Shared plumbing for the command-line entry points: logging set-up and user-error handling."""

from __future__ import annotations

import logging
import sys
from typing import Callable, Sequence

from .errors import UserInputError

EXIT_USER_ERROR = 2


def setup_logging(level: int = logging.INFO) -> None:
    """Configure the root logger once for a CLI run (time, level, logger name, message)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`UserInputError` becomes one line on stderr and exit code 2.

    Returns:
        The process exit code (``main``'s return value, 0 when it returns None).
    """
    try:
        code = main(argv)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
