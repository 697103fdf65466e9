"""End-to-end runs of the real training CLIs on 3 simulated users with tiny settings: outputs, resume, errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]

DATA = ["--num_users", "3", "--simulated_per_user", "8", "--resolution", "32"]
VQVAE = ["--block_out_channels", "8", "8", "16", "--latent_channels", "8", "--codebook_size", "32",
         "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off"]
PRIOR = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2"]
ADVERSARIAL = ["--adversarial_weight", "0.5", "--adversarial_start", "0.3"]  # from step 2 of 6 (step 1 of 4)


def run(args: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=os.environ.copy(), **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(next(path.glob("*.safetensors")))


def test_stage1_resume_after_interruption_equals_an_uninterrupted_run(tmp_path):
    # With the adversarial term from step 2: the discriminator and its optimiser are restored with the checkpoint.
    common = ["-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE, "--vqvae_steps", "6",
              "--checkpointing_steps", "2", "--eval_steps", "3", *ADVERSARIAL]
    run([*common, "--output_dir", str(tmp_path / "full")])
    cut = tmp_path / "cut"
    run([*common, "--output_dir", str(cut), "--stop_after_steps", "vqvae:3"])  # dies after step 3, last ckpt at 2
    assert not (cut / "vqvae").exists()
    assert sorted(p.name for p in (cut / "checkpoints" / "vqvae").iterdir()) == ["checkpoint-2"]
    saved = cut / "checkpoints" / "vqvae" / "checkpoint-2"
    assert (saved / "model_1.safetensors").is_file() and (saved / "optimizer_1.bin").is_file()  # the discriminator
    resumed = run([*common, "--output_dir", str(cut), "--resume_from_checkpoint", "latest"])
    assert "at step 2" in resumed.stderr
    full, again = weights(tmp_path / "full" / "vqvae"), weights(cut / "vqvae")
    assert full.keys() == again.keys()
    for key in full:
        assert torch.equal(full[key], again[key]), key
    summary = json.loads((cut / "stage1_summary.json").read_text())
    assert summary["steps"] == 6 and summary["final"]["codebook_usage"] > 0
    assert 0 < summary["seconds"] < 600  # the stage's wall time (not shadowed by the adversarial start step)
    for figure in ("vqvae_reconstructions.png", "vqvae_codebook_usage.png", "vqvae_curves.png"):
        assert (cut / "figures" / figure).is_file()


def test_stage1_survives_a_real_kill(tmp_path):
    args = ["-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE, "--vqvae_steps", "60",
            "--checkpointing_steps", "2", "--eval_steps", "60", "--output_dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "checkpoints" / "vqvae"
    deadline = time.time() + 300
    while time.time() < deadline and not (checkpoints / "checkpoint-2").is_dir() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in checkpoints.iterdir() if p.name.startswith("checkpoint-"))
    if killed_at == 60:
        pytest.skip("the run finished before it could be killed")
    resumed = run([*args, "--resume_from_checkpoint", "latest"])
    assert f"at step {killed_at}" in resumed.stderr
    assert json.loads((tmp_path / "stage1_summary.json").read_text())["steps"] == 60
    assert not list(checkpoints.glob(".*.tmp"))


def test_train_then_generate_end_to_end_with_resume_in_stage2(tmp_path):
    out = tmp_path / "model"
    common = ["train_main.py", *DATA, *VQVAE, *PRIOR, "--vqvae_steps", "4", "--prior_steps", "6",
              "--checkpointing_steps", "2", "--eval_steps", "3", "--output_dir", str(out)]
    first = run([*common, "--stop_after_steps", "prior:3"])  # stage 1 completes, stage 2 dies at step 3
    assert any("using the CPU preset" in line for line in first.stderr.splitlines()[:3])
    assert (out / "vqvae" / "config.json").is_file() and not (out / "prior").exists()
    stage1_weights = weights(out / "vqvae")

    second = run([*common, "--resume_from_checkpoint", "latest"])
    assert "stage 1: reusing" in second.stderr
    assert "at step 2" in second.stderr  # stage 2 continued from its checkpoint
    assert all(torch.equal(stage1_weights[k], v) for k, v in weights(out / "vqvae").items())  # not retrained

    for name in ("model_index.json", "prior/config.json", "vqvae/config.json", "split.json", "data_info.json",
                 "training_summary.json", "README.md", "sample_grid.png", "figures/prior_samples.png"):
        assert (out / name).is_file(), name
    assert "prior validation loss" in (out / "README.md").read_text()
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["vqvae"]["final"]["codebook_usage"] > 0 and summary["prior"]["final_val_loss"] > 0
    assert isinstance(summary["prior"]["final_user_token_gain"], float)
    assert summary["data"]["user_ids"] == [1, 2, 3]
    assert json.loads((out / "prior" / "config.json").read_text())["token_order"] == "column"  # the preset's

    gen = tmp_path / "generated"
    for target in (gen, tmp_path / "again"):
        run(["generate_main.py", "--model_dir", str(out), "--output_dir", str(target), "--samples_per_user", "2",
             "--seed", "3"])
    for user in (1, 2, 3):
        files = sorted((gen / f"ID_{user}").glob("*.png"))
        assert len(files) == 2
        for f in files:
            assert f.read_bytes() == (tmp_path / "again" / f"ID_{user}" / f.name).read_bytes()
    assert (gen / "grid.png").is_file() and (gen / "generation_info.json").is_file()


def test_val_fraction_zero_trains_on_every_image(tmp_path):
    result = run(["-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE, "--vqvae_steps", "2",
                  "--val_fraction", "0", "--output_dir", str(tmp_path)])
    assert "measured on the training images" in result.stderr
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["train"]) == 24 and split["val"] == []  # all 3 users x 8 images train
    assert (tmp_path / "vqvae" / "config.json").is_file()


def test_two_cpu_processes_train_with_one_codebook(tmp_path):
    # With the adversarial term from step 1: the DDP-wrapped discriminator trains and resumes on both ranks.
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    with socket.socket() as sock:  # a free port for the rendezvous (a fixed one may be taken)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(port)]
    result = subprocess.run([*torchrun, "-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE,
                             "--vqvae_steps", "4", "--checkpointing_steps", "1", "--checkpoints_total_limit", "10",
                             "--eval_steps", "2", *ADVERSARIAL, "--output_dir", str(tmp_path)], cwd=REPO,
                            capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MULTI_CPU, 2 process(es)" in result.stderr
    assert (tmp_path / "vqvae" / "config.json").is_file()
    checkpoints = tmp_path / "checkpoints" / "vqvae"
    assert sorted(p.name for p in checkpoints.iterdir()) == [f"checkpoint-{i}" for i in (1, 2, 3, 4)]
    for folder in checkpoints.iterdir():  # every rank's state landed in the renamed folder
        assert (folder / "random_states_0.pkl").is_file() and (folder / "random_states_1.pkl").is_file(), folder
        assert (folder / "model_1.safetensors").is_file(), folder  # the discriminator
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        torchrun[-1] = str(sock.getsockname()[1])
    resumed = subprocess.run([*torchrun, "-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE,
                              "--vqvae_steps", "4", "--checkpointing_steps", "1", "--eval_steps", "2", *ADVERSARIAL,
                              "--resume_from_checkpoint", str(checkpoints / "checkpoint-2"),
                              "--output_dir", str(tmp_path / "resumed")], cwd=REPO, capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    full, again = weights(tmp_path / "vqvae"), weights(tmp_path / "resumed" / "vqvae")
    assert all(torch.equal(full[k], again[k]) for k in full)


def test_sigterm_saves_a_checkpoint_and_exits_143_with_one_line(tmp_path):
    args = ["-m", "vqvae_transformer.training.train_vqvae", *DATA, *VQVAE, "--vqvae_steps", "400",
            "--checkpointing_steps", "1000", "--eval_steps", "2", "--output_dir", str(tmp_path)]
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "figures" / "vqvae_curves.png").is_file() \
            and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and "--resume_from_checkpoint latest" in last, last
    step = int(last.split("interrupted at step ")[1].split()[0])
    assert (tmp_path / "checkpoints" / "vqvae" / f"checkpoint-{step}").is_dir()
    resumed = run([*args[:args.index("400")], str(step + 1), *args[args.index("400") + 1:],
                   "--resume_from_checkpoint", "latest"])
    assert f"at step {step}" in resumed.stderr
    assert (tmp_path / "vqvae" / "config.json").is_file()


def test_bad_flags_exit_2_with_one_line(tmp_path, capsys):
    from vqvae_transformer.cli import run_cli
    from vqvae_transformer.training.main import main

    cases = [
        (["--n_embd", "30", "--n_head", "4"], "--n_embd 30"),
        (["--data_dir", str(tmp_path / "missing")], "missing"),
        (["--vqvae_steps", "0"], "--vqvae_steps"),
        (["--push_to_hub"], "--hub_model_id"),
        (["--no_such_flag"], "no_such_flag"),
        (["--val_fraction", "1"], "--val_fraction"),
        (["--adversarial_weight", "-1"], "--adversarial_weight"),
        (["--adversarial_start", "1"], "--adversarial_start"),
    ]
    for extra, needle in cases:  # in-process: the same run_cli boundary train_main.py uses, one import
        code = run_cli(main, ["--output_dir", str(tmp_path / "o"), *extra])
        stderr = capsys.readouterr().err
        assert code == 2, (extra, stderr[-2000:])
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and needle in last, (extra, last)
        assert "Traceback" not in stderr
    # The script itself, once: same line and exit code from a fresh process.
    result = run(["train_main.py", "--output_dir", str(tmp_path / "o"), "--vqvae_steps", "0"], check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error: ")


def test_killed_retrain_into_a_finished_folder_resumes_the_new_run(tmp_path):
    """A finished model, re-trained (new seed) and cut in stage 1, then resumed: the new run continues (its
    checkpoint, then a fresh stage 2), it does not fall back to the old finished model."""
    out = tmp_path / "model"
    common = ["train_main.py", *DATA, *VQVAE, *PRIOR, "--vqvae_steps", "4", "--prior_steps", "3",
              "--checkpointing_steps", "2", "--eval_steps", "4", "--output_dir", str(out)]
    run([*common, "--seed", "0"])
    old_prior = weights(out / "prior")
    run([*common, "--seed", "1", "--stop_after_steps", "vqvae:3"])  # the re-train dies after step 3 of stage 1
    resumed = run([*common, "--seed", "1", "--resume_from_checkpoint", "latest"])
    assert "stage 1: reusing" not in resumed.stderr and "stage 2: reusing" not in resumed.stderr
    assert "at step 2" in resumed.stderr  # stage 1 continued from the new run's checkpoint-2
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["settings"]["seed"] == 1 and summary["prior"]["finished"]
    new_prior = weights(out / "prior")
    assert any(not torch.equal(old_prior[k], v) for k, v in new_prior.items())  # stage 2 trained again
