"""bench_tokenizer_fidelity on a tiny stage 1 trained by the real CLI: one row per (stage-1 state, judge seed), the
saved model scored like its last checkpoint (the same weights), the ratio being the FID over its floor."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--num_users", "3", "--simulated_per_user", "8", "--resolution", "32", "--block_out_channels", "8", "8", "16",
        "--latent_channels", "8", "--codebook_size", "32", "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off"]


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_scores_every_kept_checkpoint_and_the_saved_model_with_each_judge(tmp_path):
    model = tmp_path / "model"
    _run("train_main.py", *TINY, "--skip_prior", "--vqvae_steps", "4", "--checkpointing_steps", "2",
         "--eval_steps", "4", "--output_dir", str(model))
    out = tmp_path / "rows.json"
    done = _run("-m", "benchmarks.bench_tokenizer_fidelity", "--model_dirs", str(model), "--judge_seeds", "0", "1",
                "--judge_epochs", "1", "--checkpoints", "--json", str(out))
    rows = json.loads(out.read_text())
    states = sorted({r["state"] for r in rows})
    assert states == ["checkpoint-2", "checkpoint-4", "final"]
    assert len(rows) == 3 * 2 and {r["judge_seed"] for r in rows} == {0, 1}
    by = {(r["state"], r["judge_seed"]): r for r in rows}
    for seed in (0, 1):
        last, final = by[("checkpoint-4", seed)], by[("final", seed)]
        assert all(math.isclose(last[k], final[k], rel_tol=1e-6) for k in ("PSNR dB", "recon FID", "ratio"))
        # The floor and the judge on real images depend on the judge alone: one value per judge.
        assert len({by[(state, seed)]["floor"] for state in states}) == 1
        assert len({by[(state, seed)]["judge on real"] for state in states}) == 1
    for r in rows:
        assert 0 <= r["judge on recon"] <= 1 and 0 <= r["judge on real"] <= 1 and r["PSNR dB"] > 0
        assert r["floor"] > 0 and math.isclose(r["ratio"], r["recon FID"] / r["floor"])
        assert f"| {r['state']} | {r['judge_seed']} | {r['PSNR dB']:.2f} |" in done.stdout
