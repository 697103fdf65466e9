"""bench_identity_filter on a tiny model trained by the real CLI: one validated folder for the unranked candidates
and one per ranking asked, all scored with the same judge, and a repeated ranking refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num_users", "3", "--simulated_per_user", "8", "--resolution", "32", "--block_out_channels", "8", "8", "16",
        "--latent_channels", "8", "--codebook_size", "32", "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off",
        "--vqvae_steps", "4", "--prior_steps", "4", "--n_layer", "1", "--n_embd", "32", "--n_head", "2",
        "--eval_steps", "4"]


def _run(*args: str, tmp: Path, ok: bool = True) -> subprocess.CompletedProcess:
    # TMPDIR: the benchmark's kept work folder lands in the test's own temporary folder.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "TMPDIR": str(tmp)}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_one_folder_per_ranking_scored_by_one_judge(tmp_path):
    model = tmp_path / "model"
    _run("train_main.py", *TINY, "--output_dir", str(model), tmp=tmp_path)
    done = _run("-m", "benchmarks.bench_identity_filter", "--model_dir", str(model), "--samples_per_user", "2",
                "--oversample", "2", "--rank", "ratio", "likelihood", "--keep_dir", "--threads", "1", tmp=tmp_path)
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("images "))
    table = lines[header + 1:header + 4]
    assert [line.split()[0] for line in table] == ["no", "ratio", "likelihood"]
    real = float(next(line for line in lines if line.startswith("real images:")).split()[5])
    for line in table:  # gan-test, its ratio, CAS, its ratio, FID ratio, diversity: all measured
        values = [float(v) for v in line.split()[-6:]]
        assert values[1] == pytest.approx(values[0] / real, abs=2e-3)
        assert values[3] == pytest.approx(values[2] / real, abs=2e-3)
    assert "attributes" not in done.stdout  # the posterior's N + 1 passes were not asked for
    work = Path(next(line.split()[-1] for line in done.stdout.splitlines() if "kept in" in line))
    assert work.parent == tmp_path
    for name in ("no_filter", "ratio", "likelihood"):
        assert sorted(p.name for p in (work / name).iterdir()) == ["ID_1", "ID_2", "ID_3"]
        assert all(len(list(p.iterdir())) == 2 for p in (work / name).iterdir())
    # The first folder trained the judge; the others reused it.
    assert "Reusing the judge" not in (work / "no_filter.log").read_text()
    assert all("Reusing the judge" in (work / f"{n}.log").read_text() for n in ("ratio", "likelihood"))


def test_a_repeated_ranking_is_one_usage_line(tmp_path):
    done = _run("-m", "benchmarks.bench_identity_filter", "--model_dir", str(tmp_path), "--rank", "ratio", "ratio",
                tmp=tmp_path, ok=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--rank names a ranking twice (ratio ratio)" in done.stderr.strip().splitlines()[-1]
