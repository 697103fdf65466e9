"""The first-stage, generator, README-commands, CPU-precision and prior-heads benchmarks end to end with ``--quick``
(the real CLIs, 3 tiny users; tiny models for the precision and heads ones): every row of the table is printed and the
JSON holds a figure in every column that applies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(module: str, tmp_path: Path, *extra: str) -> tuple[str, dict]:
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-m", module, "--quick", "--json", str(out), *extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_bench_first_stage_quick(tmp_path):
    stdout, record = _run("benchmarks.bench_first_stage", tmp_path, "--kinds", "vq", "kl", "plain", "vq_adv")
    assert set(record["rows"]) == {"vq", "kl", "plain", "vq_adv"}
    for kind, row in record["rows"].items():
        assert f"| {kind} |" in stdout
        for column in ("PSNR dB", "SSIM", "judge on recon", "recon FID", "texture f", "texture t", "readiness",
                       "s/step"):
            assert row[column] is not None and row[column] == row[column], (kind, column)  # measured, not NaN
        assert (row["usage"] is None) == (kind == "plain")  # the plain VAE has no codebook
        assert 0 < row["texture f"] < 10 and 0 < row["texture t"] < 10
    assert record["rows"]["vq_adv"]["PSNR dB"] != record["rows"]["vq"]["PSNR dB"]  # another model: the term ran
    assert 0 <= record["real_accuracy"] <= 1


def test_bench_generators_quick(tmp_path):
    stdout, record = _run("benchmarks.bench_generators", tmp_path)
    assert record["settings"]["ddpm_seconds"] == 20.0 and record["settings"]["num_users"] == 3  # --quick's values
    names = [row["name"] for row in record["rows"]]
    assert len(names) == 2 and names[0].startswith("ours") and names[1].startswith("DDPM")
    for row in record["rows"]:
        assert row["images"] == 3 * 2 and row["images_per_s"] > 0
        for key in ("gan_test_accuracy", "domain_fid", "fid_ratio", "diversity_ratio", "memorization_rate"):
            assert row[key] is not None, (row["name"], key)
        assert row["name"].split(" ")[0] in stdout
    ours, ddpm = record["rows"]
    assert abs(ddpm["train_s"] - 20.0) < 15  # the DDPM trained for --ddpm_seconds of wall clock


def test_bench_readme_commands_quick(tmp_path):
    stdout, record = _run("benchmarks.bench_readme_commands", tmp_path)
    rows = record["rows"]
    assert [(r["seed"], r["strength"]) for r in rows] == [(0, 1.0), (0, 0.5)]  # --quick: one seed, two variants
    for row in rows:
        assert row["train_seconds"] > 0 and row["prior_steps"] == 20 and row["train_images"] > 0
        assert row["passed"] == (not row["failed"])
        for name in ("real_test_accuracy", "gan_test_ratio", "cas_ratio", "fid_ratio", "diversity_ratio"):
            assert row[name] is not None and row[name] == row[name], name  # measured, not NaN
        for name in ("fid_ratio", "diversity_ratio"):
            low, high = row[f"{name}_ci"]
            assert low is not None and low <= high, name
    assert set(record["summary"]) == {"s1_t0.9_g1.5_p1", "s0.5_t0.9_g1.5_p1"}
    assert record["summary"]["s1_t0.9_g1.5_p1"]["passed"] == int(rows[0]["passed"])
    assert "| 0 | 1 | 0.9 | 1.5 | 1 |" in stdout and "| 0 | 0.5 | 0.9 | 1.5 | 1 |" in stdout


def test_bench_cpu_precision_quick(tmp_path):
    stdout, record = _run("benchmarks.bench_cpu_precision", tmp_path)
    assert set(record["stages"]) == {"stage 1", "prior"} and isinstance(record["native_bf16"], bool)
    for stage, row in record["stages"].items():
        assert all(len(row["rounds"][v]) == 1 for v in ("before", "fp32", "bf16"))  # --quick: one round each
        assert row["fp32"] > 0 and row["bf16"] > 0 and abs(row["speedup"] - row["fp32"] / row["bf16"]) < 1e-9
        assert row["before"] > 0 and abs(row["changes_speedup"] - row["before"] / row["fp32"]) < 1e-9
        assert f"| {stage} | {row['before']:.3f} | {row['fp32']:.3f} | {row['bf16']:.3f} |" in stdout


def test_bench_prior_heads_quick(tmp_path):
    stdout, record = _run("benchmarks.bench_prior_heads", tmp_path)
    assert record["heads"] == [2, 1] and set(record["batches"]) == {"2"}
    row = record["batches"]["2"]
    assert row["2"]["ratio"] == 1.0 and len(row["1"]["rounds"]) == 1  # --quick: one round; ratios to the first
    assert row["1"]["seconds"] > 0 and abs(row["1"]["ratio"] - row["2"]["seconds"] / row["1"]["seconds"]) < 1e-9
    assert f"| 2 | {row['2']['seconds']:.3f} | {row['1']['seconds']:.3f} | {row['1']['ratio']:.2f} |" in stdout


def test_readme_commands_variants_name_every_setting_and_refuse_a_bad_top_p():
    from benchmarks.bench_readme_commands import build_parser, validate_args, variant_tag

    variant = {"strength": 1.0, "temperature": 0.9, "guidance_scale": 1.5, "top_p": 0.75}
    assert variant_tag(variant) == "s1_t0.9_g1.5_p0.75"  # top-p and temperature no longer share a letter
    for bad in ("0", "1.5"):
        with pytest.raises(SystemExit, match=f"--top_ps {float(bad)}"):
            validate_args(build_parser().parse_args(["--top_ps", bad]))


def test_cpu_precision_before_variant_is_the_former_activation_and_optimizer_on_the_same_weights():
    import argparse

    import torch

    from benchmarks.bench_cpu_precision import make_optimizer, stage_setups
    from vqvae_transformer.models.defaults import PRIOR_ACTIVATION

    models, _, _ = stage_setups(argparse.Namespace(tiny=True, channels=1))["prior"]
    assert models["before"].config.activation_function == "gelu_new"
    assert models["now"].config.activation_function == PRIOR_ACTIVATION
    before, now = models["before"].state_dict(), models["now"].state_dict()
    assert before.keys() == now.keys() and all(torch.equal(before[k], now[k]) for k in now)
    assert not make_optimizer(models["now"], "before").defaults["fused"]
    assert make_optimizer(models["now"], "fp32").defaults["fused"]


def test_run_script_status_returns_the_exit_code_and_refuses_codes_outside_ok_codes(tmp_path):
    from benchmarks.common import run_script_status

    seconds, code = run_script_status(["-c", "import sys; print('hi'); sys.exit(1)"], tmp_path / "a.log", 1,
                                      ok_codes=(0, 1))
    assert code == 1 and seconds > 0 and "hi" in (tmp_path / "a.log").read_text()
    assert run_script_status(["-c", "pass"], tmp_path / "b.log", 1)[1] == 0
    with pytest.raises(subprocess.CalledProcessError):
        run_script_status(["-c", "import sys; sys.exit(1)"], tmp_path / "c.log", 1)


@pytest.mark.parametrize("heads, message", [("5", "--heads 5 does not divide the prior's width 16"),
                                            ("2 2", "--heads 2 2 repeats a value")])
def test_bench_prior_heads_refuses_bad_head_counts_in_one_line(heads, message, capsys):
    from benchmarks.bench_prior_heads import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--heads", *heads.split()])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_prior_heads_times_the_presets_token_grid():
    import argparse

    from benchmarks.bench_prior_heads import build_runs
    from vqvae_transformer.models.first_stage import build_first_stage
    from vqvae_transformer.training.presets import CPU_PRESET

    runs, grid, codebook_size = build_runs(argparse.Namespace(heads=[CPU_PRESET["n_head"]], tiny=False))
    first_stage = build_first_stage("vq", block_out_channels=CPU_PRESET["block_out_channels"],
                                    latent_channels=CPU_PRESET["latent_channels"],
                                    num_vq_embeddings=CPU_PRESET["codebook_size"],
                                    codebook_dim=CPU_PRESET["codebook_dim"], sample_size=CPU_PRESET["resolution"])
    assert grid == first_stage.token_grid(CPU_PRESET["resolution"]) and codebook_size == CPU_PRESET["codebook_size"]
    prior = runs[CPU_PRESET["n_head"]][0]
    assert prior.config.n_positions >= grid[0] * grid[1] + 1  # the user token, then one position per code
