"""Install the requirements and the project into this interpreter or a virtual environment, then check.

Standard library only, so it runs on a bare Python before anything is installed. Non-interactive and
idempotent: an existing virtual environment is reused, never deleted; ``pip install -r`` on a satisfied
environment changes nothing, and ``pip install --no-deps -e PROJECT`` (the clone, described by its
``pyproject.toml``) only refreshes the editable link. Used by ``setup_environment.py``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError

EXIT_FAILED = 1
# Printed by the target interpreter: which torch it got and whether it sees a CUDA GPU.
CUDA_PROBE = (
    'import torch; ok = torch.cuda.is_available(); print("torch", torch.__version__, "| CUDA available:", ok, '
    '"| GPU 0:" if ok else "", torch.cuda.get_device_name(0) if ok else "")'
)


@dataclass(frozen=True)
class Step:
    """One command of the set-up; ``required`` steps stop the set-up when they fail."""

    description: str
    command: list[str]
    required: bool = True


def venv_python(venv_dir: Path) -> Path:
    """The interpreter inside virtual environment ``venv_dir`` (POSIX ``bin/python``, Windows ``Scripts``)."""
    if os.name == "nt":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def needs_venv_creation(venv_dir: Path) -> bool:
    """Whether ``venv_dir`` must be created; an existing environment is reused and never deleted.

    Raises:
        UserInputError: ``venv_dir`` is a file, a broken environment, or a non-empty folder that is not one.
    """
    if not venv_dir.exists():
        return True
    if not venv_dir.is_dir():
        raise UserInputError(f"--venv {venv_dir} exists and is not a folder; choose another path")
    if venv_python(venv_dir).exists():
        return False
    if (venv_dir / "pyvenv.cfg").exists():
        raise UserInputError(
            f"--venv {venv_dir} is a virtual environment without {venv_python(venv_dir)}; repair it with "
            f"`{Path(sys.executable).name} -m venv --upgrade {venv_dir}` or choose another path"
        )
    if any(venv_dir.iterdir()):
        raise UserInputError(f"--venv {venv_dir} is a non-empty folder that is not a virtual environment; "
                             "choose another path")
    return True


def plan_steps(requirements: Path, check_script: Path, venv_dir: Path | None = None,
               project_dir: Path | None = None) -> list[Step]:
    """The commands the set-up runs, in order.

    Args:
        requirements: requirements file for ``pip install -r``.
        check_script: ``check_environment.py``, run last with the target interpreter.
        venv_dir: install into this virtual environment (created when missing) instead of ``sys.executable``.
        project_dir: the clone (holding ``pyproject.toml``) to install editable without dependencies, so
            ``import vqvae_transformer`` works from any folder; None skips that step.

    Returns:
        Steps: [create venv], pip install -r, [pip install --no-deps -e project], CUDA report, environment check.
    """
    steps = []
    python = sys.executable
    if venv_dir is not None:
        if needs_venv_creation(venv_dir):
            steps.append(Step(f"create virtual environment {venv_dir}", [sys.executable, "-m", "venv", str(venv_dir)]))
        python = str(venv_python(venv_dir))
    steps.append(Step(f"install {requirements}", [python, "-m", "pip", "install", "-r", str(requirements)]))
    if project_dir is not None:
        steps.append(Step(f"install the project {project_dir} (editable)",
                          [python, "-m", "pip", "install", "--no-deps", "-e", str(project_dir)]))
    steps.append(Step("report torch and CUDA", [python, "-c", CUDA_PROBE], required=False))
    steps.append(Step("check the environment",
                      [python, str(check_script), "--requirements", str(requirements)], required=False))
    return steps


def print_plan(steps: list[Step]) -> None:
    """Print the exact commands, one per line, without running them (``--dry-run``)."""
    print("dry run: these commands would run, in order:")
    for step in steps:
        print(f"  # {step.description}\n  {shlex.join(step.command)}")


def run_steps(steps: list[Step]) -> int:
    """Run the steps with their output streaming through; returns the last step's (the check's) exit code.

    A failing required step (venv creation, pip) stops the set-up with a one-line summary on stderr and
    exit code 1; the CUDA report only warns.
    """
    code = 0
    for step in steps:
        print(f"==> {step.description}: {shlex.join(step.command)}", flush=True)
        code = subprocess.run(step.command, check=False).returncode
        if code != 0 and step.required:
            print(f"error: {step.description} failed with exit code {code} (see the output above): "
                  f"{shlex.join(step.command)}", file=sys.stderr)
            return EXIT_FAILED
        if code != 0 and step is not steps[-1]:
            print(f"warning: {step.description} failed with exit code {code}", file=sys.stderr, flush=True)
    return code


def setup(requirements: Path, check_script: Path, venv_dir: Path | None = None, dry_run: bool = False,
          project_dir: Path | None = None) -> int:
    """Install ``requirements`` and ``project_dir`` (into ``venv_dir`` when given), report CUDA, run the check.

    Returns:
        0 when everything installed and the check passed; the check's exit code, or 1 when pip failed.

    Raises:
        UserInputError: the requirements file is missing, ``project_dir`` has no ``pyproject.toml`` or
            ``venv_dir`` cannot be used.
    """
    if not requirements.is_file():
        raise UserInputError(f"--requirements {requirements} is not a file")
    if project_dir is not None and not (project_dir / "pyproject.toml").is_file():
        raise UserInputError(f"{project_dir} holds no pyproject.toml; run setup_environment.py from a full clone")
    steps = plan_steps(requirements.resolve(), check_script, venv_dir, project_dir)
    if dry_run:
        print_plan(steps)
        return 0
    return run_steps(steps)
