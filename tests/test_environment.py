"""Environment check, set-up script and LPIPS access (check_environment.py, setup_environment.py, perceptual)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vqvae_transformer import environment, perceptual

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "check_environment.py"
SETUP = ROOT / "setup_environment.py"
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def run_script(*args: str, env_extra: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=cwd or ROOT, timeout=120)


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    """torch.hub.get_dir() → tmp_path/hub, with no checkpoints in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # undo any set_dir so TORCH_HOME decides
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    return tmp_path


# --- perceptual -------------------------------------------------------------------------------------------


def test_lpips_unavailable_names_the_missing_file(empty_torch_home):
    available, reason = perceptual.lpips_status()
    expected = empty_torch_home / "hub" / "checkpoints" / ALEXNET_FILE
    assert not available
    assert str(expected) in reason and "download.pytorch.org" in reason
    with pytest.raises(perceptual.LPIPSUnavailableError, match=ALEXNET_FILE):
        perceptual.load_pretrained_lpips()


def test_lpips_loads_from_a_local_backbone_file(empty_torch_home):
    import torchvision

    checkpoints = empty_torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    # Real format (keys, shapes), random values: proves the loading path; the figure means nothing.
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), checkpoints / ALEXNET_FILE)
    available, reason = perceptual.lpips_status()
    assert available, reason
    model = perceptual.load_pretrained_lpips()
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        same, different = model(x, x, normalize=True), model(x, 1 - x, normalize=True)
    assert torch.allclose(same, torch.zeros_like(same)) and torch.all(different > 0)


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="resnet"):
        perceptual.lpips_status("resnet")


# --- check_environment.py ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_report(tmp_path_factory):
    torch_home = tmp_path_factory.mktemp("torch_home")  # no LPIPS backbone in it, whatever this machine has
    result = run_script(str(CHECK), "--json", env_extra={"TORCH_HOME": str(torch_home)})
    return result


def test_check_environment_json_report(json_report):
    assert json_report.returncode == 0, json_report.stderr
    report = json.loads(json_report.stdout)  # nothing but JSON on stdout
    assert report["python"]["version"].count(".") == 2 and report["python"]["ok"]
    assert report["torch"]["version"] == torch.__version__
    assert isinstance(report["torch"]["cuda_available"], bool) and "mps_available" in report["torch"]
    packages = {p["name"]: p for p in report["packages"]}
    for name in ("torch", "diffusers", "transformers", "accelerate", "lpips"):
        assert packages[name]["status"] == "ok" and packages[name]["installed"]
    assert all(t["ok"] for t in report["smoke_tests"].values()) and len(report["smoke_tests"]) == 2
    assert report["lpips"]["available"] is False and ALEXNET_FILE in report["lpips"]["reason"]
    rec = report["recommendation"]
    assert rec["preset"] in ("cpu", "gpu")
    assert rec["batch_size"] is None if rec["preset"] == "cpu" else rec["batch_size"] > 0
    assert report["problems"] == [] and report["warnings"]  # LPIPS missing is a warning only


def test_check_environment_text_report_and_failure(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# comment\ntorch>=999\nsurely-not-installed-package-xyz>=1.0\nnumpy>=1\n")
    result = run_script(str(CHECK), "--requirements", str(requirements))
    assert result.returncode == 1
    for section in ("Python", "torch / device", "Packages", "Smoke tests", "LPIPS", "Recommendation"):
        assert section in result.stdout
    assert "TOO OLD" in result.stdout and "MISSING" in result.stdout
    problem_lines = [line for line in result.stderr.splitlines() if line.startswith("problem:")]
    assert len(problem_lines) == 2
    assert any("torch" in line and "torch>=999" in line for line in problem_lines)
    assert any("surely-not-installed-package-xyz" in line for line in problem_lines)


def test_check_environment_rejects_missing_requirements_file(tmp_path):
    result = run_script(str(CHECK), "--requirements", str(tmp_path / "nope.txt"))
    assert result.returncode == 2 and "nope.txt" in result.stderr


def test_problems_names_missing_and_too_old_packages():
    report = {
        "python": {"version": "3.11.7", "minimum": "3.10", "ok": True},
        "packages": [
            {"requirement": "torch>=2.4", "name": "torch", "specifier": ">=2.4", "installed": "2.1.0",
             "status": "too_old"},
            {"requirement": "diffusers>=0.42", "name": "diffusers", "specifier": ">=0.42", "installed": None,
             "status": "missing"},
            {"requirement": "numpy>=1.26", "name": "numpy", "specifier": ">=1.26", "installed": "2.0.0",
             "status": "ok"},
        ],
        "smoke_tests": {"transformers_gpt2": {"ok": False, "error": "RuntimeError: boom"}},
        "lpips": {"available": False, "reason": "missing"},
    }
    lines = environment.problems(report)
    assert len(lines) == 3
    assert "torch" in lines[0] and "2.1.0" in lines[0] and "torch>=2.4" in lines[0]
    assert "diffusers" in lines[1] and "diffusers>=0.42" in lines[1]
    assert all("setup_environment.py" in line for line in lines[:2])
    assert "transformers_gpt2" in lines[2] and "boom" in lines[2]


@pytest.mark.parametrize("line, status", [
    ("torch>=0.1", "ok"), ("torch>=999", "too_old"), ("numpy<1", "incompatible"),
    ("surely-not-installed-package-xyz", "missing"), ("torch>>>1", "invalid_requirement"),
    ('pywin32; sys_platform == "nonexistent"', "not_applicable"),
])
def test_check_requirement_status(line, status):
    assert environment.check_requirement(line)["status"] == status


@pytest.mark.parametrize("info, preset, batch", [
    ({"cuda_available": False}, "cpu", None),  # keep the preset's per-stage batch sizes
    ({"cuda_available": True, "gpu_memory_gb": 8.0}, "gpu", 32),
    ({"cuda_available": True, "gpu_memory_gb": 24.0}, "gpu", 64),
    ({"cuda_available": True, "gpu_memory_gb": 79.2}, "gpu", 128),
])
def test_recommendation(info, preset, batch):
    rec = environment.recommend(info)
    assert (rec["preset"], rec["batch_size"]) == (preset, batch)


# --- setup_environment.py ---------------------------------------------------------------------------------


def test_setup_imports_nothing_heavy():
    code = "import sys, setup_environment; print(sorted({'torch', 'packaging', 'numpy'} & set(sys.modules)))"
    result = run_script("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_setup_dry_run_prints_pip_command():
    result = run_script(str(SETUP), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"{sys.executable} -m pip install -r {ROOT / 'requirements.txt'}" in result.stdout
    assert f"{sys.executable} -m pip install --no-deps -e {ROOT}" in result.stdout  # the package itself, editable
    assert "check_environment.py" in result.stdout


def test_setup_venv_dry_run_creates_nothing(tmp_path):
    venv = tmp_path / "env"
    result = run_script(str(SETUP), "--venv", str(venv), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"-m venv {venv}" in result.stdout
    assert f"{venv / 'bin' / 'python'} -m pip install -r" in result.stdout
    assert not venv.exists()


def test_setup_pip_failure_is_reported(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("torch>>>1\n")
    result = run_script(str(SETUP), "--requirements", str(bad))
    assert result.returncode != 0
    assert "Invalid requirement" in result.stderr + result.stdout  # pip's own error, streamed through
    assert result.stderr.strip().splitlines()[-1].startswith("error: install")


def test_setup_venv_creates_then_reuses(tmp_path):
    """A fresh venv with a pip-only requirements file: created, installed, checked (fails: no torch), reused."""
    venv, requirements = tmp_path / "env", tmp_path / "requirements.txt"
    requirements.write_text("pip\n")
    result = run_script(str(SETUP), "--venv", str(venv), "--requirements", str(requirements), "--no-project")
    assert (venv / "pyvenv.cfg").exists()
    assert result.returncode == 1  # the check's exit code: no torch in the new environment
    assert "No module named 'torch'" in result.stdout
    again = run_script(str(SETUP), "--venv", str(venv), "--requirements", str(requirements), "--dry-run")
    assert again.returncode == 0 and "-m venv" not in again.stdout


def test_setup_refuses_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "data.txt").write_text("keep me")
    result = run_script(str(SETUP), "--venv", str(tmp_path), "--dry-run")
    assert result.returncode == 2 and "not a virtual environment" in result.stderr
    assert (tmp_path / "data.txt").read_text() == "keep me"
