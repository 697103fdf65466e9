"""Package metadata: pyproject.toml single-sources the version and mirrors requirements.txt (no network)."""

from __future__ import annotations

import importlib.metadata
import os
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


def test_pip_install_into_a_fresh_venv_then_import_from_another_folder(tmp_path):
    """``pip install <clone>`` (not editable) into a new virtual environment, then the README's import from a folder
    outside the clone. The dependencies are not downloaded again: a ``.pth`` file makes this environment's
    site-packages visible behind the new one (pip and setuptools included; a path listed in a ``.pth`` file is not a site directory, so this
    environment's own editable install of the project is not active there)."""
    import shutil
    import subprocess
    import sys
    import sysconfig
    import venv

    source = tmp_path / "source"  # a copy, so that pip's in-tree build writes nothing into the clone
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, _mkdir(source) / name)
    shutil.copytree(ROOT / "vqvae_transformer", source / "vqvae_transformer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env_dir = tmp_path / "fresh_env"
    venv.EnvBuilder(with_pip=False).create(env_dir)  # pip and setuptools (>= 69) come from this environment
    python = env_dir / "bin" / "python"
    fresh_site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (fresh_site / "_dependencies_of_the_test_run.pth").write_text("\n".join(sorted(ours)) + "\n")
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-build-isolation",
                              str(source)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

    elsewhere = _mkdir(tmp_path / "elsewhere")
    code = ("import importlib.metadata as m, vqvae_transformer as v\n"
            "from vqvae_transformer import VQVAETransformerPipeline\n"
            "print(v.__file__); print(m.version('vqvae_transformer')); print(VQVAETransformerPipeline.__name__)")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([python, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300, env=clean)
    assert result.returncode == 0, result.stderr[-3000:]
    where, version, name = result.stdout.split()
    assert Path(where).is_relative_to(fresh_site), where  # the installed copy, not the clone nor the editable one
    assert version == vqvae_transformer.__version__ and name == "VQVAETransformerPipeline"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
