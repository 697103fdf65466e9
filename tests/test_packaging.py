"""Package metadata: pyproject.toml single-sources the version and mirrors requirements.txt (no network)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import vqvae_transformer

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _section(path: Path, title: str) -> list[str]:
    """Requirement lines under ``# <title>`` in a requirements file, up to the next comment heading."""
    lines, inside = [], False
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            inside = line.lstrip("# ").startswith(title)
        elif line and inside and not line.startswith("-"):
            lines.append(line)
    return lines


def test_version_is_single_sourced_from_the_package():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "vqvae_transformer.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", vqvae_transformer.__version__)


def test_installed_metadata_matches_when_installed():
    try:
        installed = importlib.metadata.version("vqvae_transformer")
    except importlib.metadata.PackageNotFoundError:
        return  # running from a plain checkout: nothing installed to compare
    assert installed == vqvae_transformer.__version__


def test_dependencies_mirror_the_requirements_files():
    project = PYPROJECT["project"]
    assert project["name"] == "vqvae_transformer"
    assert project["dependencies"] == _section(ROOT / "requirements.txt", "Runtime")
    assert project["optional-dependencies"]["test"] == _section(ROOT / "requirements.txt", "Tests")
    assert project["optional-dependencies"]["bench"] == _section(ROOT / "requirements-bench.txt", "Benchmark")
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["vqvae_transformer*"]


def test_package_import_is_cheap_and_exports_the_pipeline_lazily():
    import subprocess
    import sys

    code = ("import sys, vqvae_transformer as v; heavy = {'torch', 'diffusers'} & set(sys.modules); "
            "assert not heavy, heavy; assert 'VQVAETransformerPipeline' in dir(v); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
