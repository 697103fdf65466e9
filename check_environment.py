"""Check that this environment can run vqvae_transformer; changes nothing.

    python check_environment.py               # readable report; exit 0 when the project can run, else 1
    python check_environment.py --json        # the same report as JSON on stdout
    python check_environment.py --requirements other-requirements.txt
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Sequence

from vqvae_transformer.cli import run_cli
from vqvae_transformer.environment import format_report, problems, run_checks, warnings_of
from vqvae_transformer.errors import UserInputError

DEFAULT_REQUIREMENTS = Path(__file__).resolve().parent / "requirements.txt"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(description="Check that this environment can run vqvae_transformer.")
    parser.add_argument("--json", action="store_true", help="write the report as JSON to stdout (nothing else)")
    parser.add_argument("--requirements", type=Path, default=DEFAULT_REQUIREMENTS,
                        help="requirements file to check against (default: requirements.txt beside this script)")
    args = parser.parse_args(argv)
    if not args.requirements.is_file():
        raise UserInputError(f"--requirements {args.requirements} is not a file")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the checks, print the report, list problems on stderr; 0 when the project can run, else 1."""
    args = parse_args(argv)
    # Libraries may print while being imported; keep stdout for the report alone.
    with contextlib.redirect_stdout(sys.stderr):
        report = run_checks(args.requirements)
    found = problems(report)
    if args.json:
        print(json.dumps({**report, "problems": found, "warnings": warnings_of(report)}, indent=2))
    else:
        print(format_report(report))
    for line in found:
        print(f"problem: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
