"""User-facing errors.

Anything a user can cause (a wrong path, an empty folder, a corrupt image, a model folder from another
version) raises :class:`UserInputError` with one line that names the offending value and what to do.
The command-line entry points turn it into that one line on stderr and exit code 2, without a traceback
(``--debug`` adds the traceback); see :func:`vqvae_transformer.cli.run_cli`.
"""

import signal


class UserInputError(ValueError):
    """A mistake the user can fix. The message is one line naming the offending value and the remedy.

    ``on_every_rank``: the error is raised on every process of a multi-process run at the same point (e.g. a
    NaN loss that the ranks agree on), so only the main process prints it.
    """

    on_every_rank = False


def require_folder(path, description: str, remedy: str) -> None:
    """Raise a one-line :class:`UserInputError` when ``path`` is not a folder: ``"<description> <path> is a file,
    not a folder; <remedy>"`` (or ``does not exist``)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise UserInputError(f"{description} {path} {what}; {remedy}")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``docker stop``, a scheduler) outside a training loop.

    A ``KeyboardInterrupt``, so every ``finally`` / ``except KeyboardInterrupt`` clean-up runs as for Ctrl-C;
    :func:`vqvae_transformer.cli.run_cli` prints one line and exits 143 (``128 + SIGTERM``) instead of 130.
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"signal {int(signum)}")
        self.signum = int(signum)
