"""Helpers shared by the benchmark scripts: a temporary work folder, ``--quick`` smoke settings, and running the
project's real CLIs as subprocesses with their output in a log."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
"""Where the CLIs (``train_main.py`` ...) are run from."""
STDERR_TAIL_LINES = 40
"""Lines of a failed subprocess's log printed to stderr."""


@contextmanager
def work_dir(prefix: str, keep: bool):
    """A temporary folder for a benchmark's models and images: removed afterwards, or kept (path printed)."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        if keep:
            print(f"temporary folders kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def parse_with_quick(parser: argparse.ArgumentParser, argv: list[str] | None, quick: dict) -> argparse.Namespace:
    """Parse ``argv``; with ``--quick``, parse again with ``quick`` as the defaults (flags given still win)."""
    args = parser.parse_args(argv)
    if getattr(args, "quick", False):
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def add_step_timing_args(parser: argparse.ArgumentParser, quick: dict, rounds_help: str) -> None:
    """The flags of the step-time benchmarks: alternating rounds of timed steps, tiny models, JSON and --quick."""
    parser.add_argument("--rounds", type=int, default=5, help=rounds_help)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each round")
    parser.add_argument("--tiny", action="store_true", help="tiny models (smoke test)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--quick", action="store_true", help=quick_help(quick))


def quick_help(quick: dict) -> str:
    """``--quick``'s help: the settings it uses."""
    settings = " ".join(f"--{key} {' '.join(map(str, v)) if isinstance(v, list) else repr(v) if isinstance(v, str) else v}"
                        for key, v in quick.items())
    return f"a smoke run of a minute or two (the tests run it): {settings}; flags given explicitly still win"


def run_script(command: list[str], log_path: Path, threads: int, ok_codes: tuple[int, ...] = (0,)) -> float:
    """Run ``python <command>`` in the repository root, output to ``log_path``; returns its wall seconds.

    Raises:
        subprocess.CalledProcessError: for an exit code outside ``ok_codes``, after printing the last lines of the log.
    """
    return run_script_status(command, log_path, threads, ok_codes)[0]


def run_script_status(command: list[str], log_path: Path, threads: int,
                      ok_codes: tuple[int, ...] = (0,)) -> tuple[float, int]:
    """:func:`run_script` that also returns the exit code: ``(wall seconds, exit code)``."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            done = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
            if done.returncode not in ok_codes:
                raise subprocess.CalledProcessError(done.returncode, done.args)
        except subprocess.CalledProcessError:
            log.flush()
            lines = log_path.read_text(errors="replace").split("\n")
            tail = [line.rsplit("\r", 1)[-1] for line in lines][-STDERR_TAIL_LINES:]  # last state of tqdm bars
            print(f"\n{command[0]} failed; last lines of {log_path}:\n" + "\n".join(tail), file=sys.stderr)
            raise
    return time.perf_counter() - start, done.returncode
