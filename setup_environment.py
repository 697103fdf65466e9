"""Install vqvae_transformer's requirements and the package itself, then check the environment. Bare Python.

    python setup_environment.py                      # pip install -r requirements.txt, then pip install --no-deps -e .
    python setup_environment.py --venv .venv         # create .venv if missing, install into it
    python setup_environment.py --dry-run            # print the commands, run nothing
    python setup_environment.py --no-project         # the requirements only, not the package

Non-interactive and safe to re-run: an existing environment is reused, never deleted. Ends by running
check_environment.py with the target interpreter and returns its exit code (1 when pip fails).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

# Standard library only below this package import: torch and friends may not be installed yet.
from vqvae_transformer.cli import run_cli
from vqvae_transformer.setup_env import setup

HERE = Path(__file__).resolve().parent


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Install vqvae_transformer's requirements and check the result.")
    parser.add_argument("--requirements", type=Path, default=HERE / "requirements.txt",
                        help="requirements file (default: requirements.txt beside this script)")
    parser.add_argument("--venv", type=Path, default=None, metavar="DIR",
                        help="install into this virtual environment, created when missing (default: this interpreter)")
    parser.add_argument("--no-project", action="store_true",
                        help="install the requirements only, not this clone as the vqvae_transformer package")
    parser.add_argument("--dry-run", action="store_true", help="print the exact commands and run nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Install the requirements and the package, report CUDA, check; returns the process exit code."""
    args = parse_args(argv)
    return setup(args.requirements, HERE / "check_environment.py", venv_dir=args.venv, dry_run=args.dry_run,
                 project_dir=None if args.no_project else HERE)


if __name__ == "__main__":
    sys.exit(run_cli(main))
