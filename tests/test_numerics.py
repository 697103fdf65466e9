"""Numerical faults: a NaN loss stops training in one line naming stage and step, keeps the last good checkpoint
and writes no final model; ``--mixed_precision bf16`` on CPU trains both stages of the tiny config without NaNs.

Everything runs in-process (no interpreter start-ups); Accelerate's process-wide state is reset around every test
by ``tests/conftest.py`` because tests create accelerators with different mixed-precision settings.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from safetensors.torch import load_file

from vqvae_transformer.cli import run_cli
from vqvae_transformer.training import main as train_main
from vqvae_transformer.training import train_prior, train_vqvae
from vqvae_transformer.training.loop import LoopConfig, NumericalFault, run_finished, run_training

DATA = ["--num_users", "3", "--simulated_per_user", "8", "--resolution", "32"]  # as tests/test_training.py
VQVAE = ["--block_out_channels", "8", "8", "16", "--latent_channels", "8", "--codebook_size", "32",
         "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off"]
PRIOR = ["--n_layer", "1", "--n_embd", "32", "--n_head", "2"]
FAULT_STEP = 3  # checkpoints every 2 steps: checkpoint-2 is the last good one


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def nan_at_call(original, call: int, snapshot: dict, checkpoint_dir: Path):
    """Wrap a step function so that its ``call``-th call returns a NaN loss (after hashing the last checkpoint)."""
    calls = [0]

    def step(self, model, batch, accelerator):
        calls[0] += 1
        loss, logs = original(self, model, batch, accelerator)
        if calls[0] == call:
            snapshot.update(digest(checkpoint_dir / f"checkpoint-{call - 1}"))
            loss = loss * float("nan")
        return loss, logs

    return step


def test_nan_loss_stops_the_loop_keeps_the_last_checkpoint_and_resume_takes_the_new_learning_rate(tmp_path):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randn(16, 1))
    checkpoints = tmp_path / "checkpoints" / "vqvae"
    cfg = dict(output_dir=tmp_path, checkpoint_dir=checkpoints, max_train_steps=6, batch_size=4,
               learning_rate=1e-2, lr_scheduler="constant", lr_warmup_steps=0, checkpointing_steps=2,
               eval_steps=6, tracker_name="vqvae", mixed_precision="bf16")
    snapshot: dict = {}

    def mse(_, model, batch, accelerator):
        return torch.nn.functional.mse_loss(model(batch[0]), batch[1]), {}

    faulty = nan_at_call(mse, FAULT_STEP, snapshot, checkpoints)
    step_fn = lambda model, batch, accelerator: faulty(None, model, batch, accelerator)  # noqa: E731
    with pytest.raises(NumericalFault) as fault:
        run_training(LoopConfig(**cfg), torch.nn.Linear(3, 1), data, step_fn)
    message = str(fault.value)
    assert "\n" not in message and f"stage vqvae stopped at step {FAULT_STEP} of 6" in message, message
    assert "--vqvae_learning_rate" in message and "--mixed_precision no" in message, message
    assert f"{checkpoints / 'checkpoint-2'} is kept" in message and "--resume_from_checkpoint latest" in message
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2"]  # no checkpoint-3, no temp folder
    assert digest(checkpoints / "checkpoint-2") == snapshot  # untouched by the fault
    assert all(torch.isfinite(t).all() for t in load_file(checkpoints / "checkpoint-2" / "model.safetensors").values())
    assert not run_finished(checkpoints)  # checkpoint-2 of a 6-step run: a resume must continue it

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    resumed = LoopConfig(**{**cfg, "learning_rate": 1e-3, "resume_from_checkpoint": "latest"})
    model, history, finished = run_training(resumed, torch.nn.Linear(3, 1), data,
                                           lambda m, b, a: mse(None, m, b, a))
    assert finished and history[-1]["step"] == 6 and run_finished(checkpoints)
    assert history[-1]["lr"] == pytest.approx(1e-3)  # the lowered learning rate, not the checkpoint's 1e-2
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("stage", ["vqvae", "prior"])
def test_nan_loss_in_the_cli_exits_2_with_one_line_and_no_final_model(stage, tmp_path, monkeypatch, capsys):
    step_class = train_vqvae.VQVAEStep if stage == "vqvae" else train_prior.PriorStep
    checkpoints = tmp_path / "checkpoints" / stage
    snapshot: dict = {}
    monkeypatch.setattr(step_class, "__call__", nan_at_call(step_class.__call__, FAULT_STEP, snapshot, checkpoints))
    code = run_cli(train_main.main, [*DATA, *VQVAE, *PRIOR, "--vqvae_steps", "4", "--prior_steps", "6",
                                     "--checkpointing_steps", "2", "--eval_steps", "6", "--output_dir", str(tmp_path)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    assert f"error: stage {stage} stopped at step {FAULT_STEP} of " in errors[0]
    assert f"--{stage}_learning_rate" in errors[0] and "--resume_from_checkpoint latest" in errors[0]
    assert sorted(p.name for p in checkpoints.iterdir() if p.name != "best") == ["checkpoint-2"]
    assert digest(checkpoints / "checkpoint-2") == snapshot
    assert not (tmp_path / stage).exists() and not (tmp_path / "model_index.json").exists()
    assert not (tmp_path / "training_summary.json").exists() or stage == "prior"  # stage 1's, written before
    if stage == "prior":
        assert (tmp_path / "vqvae" / "config.json").is_file()  # the finished stage 1 stays


def test_bf16_on_cpu_trains_both_stages_of_the_tiny_config_without_nans(tmp_path):
    code = run_cli(train_main.main, [*DATA, *VQVAE, *PRIOR, "--vqvae_steps", "4", "--prior_steps", "4",
                                     "--checkpointing_steps", "2", "--eval_steps", "2", "--mixed_precision", "bf16",
                                     "--output_dir", str(tmp_path)])
    assert code == 0  # a NaN/inf loss at any step would have stopped it (exit 2)
    summary = json.loads((tmp_path / "training_summary.json").read_text())
    assert summary["settings"]["mixed_precision"] == "bf16"
    finals = [*summary["vqvae"]["final"].values(), summary["prior"]["final_val_loss"]]
    for stage in ("vqvae", "prior"):
        state = json.loads((tmp_path / "checkpoints" / stage / "checkpoint-4" / "training_state.json").read_text())
        assert [entry["step"] for entry in state["history"]] == [2, 4]
        finals += [value for entry in state["history"] for value in entry.values()]
    assert all(math.isfinite(v) for v in finals if isinstance(v, (int, float))), finals
    for stage in ("vqvae", "prior"):
        weights = load_file(next((tmp_path / stage).glob("*.safetensors")))
        assert all(torch.isfinite(t.float()).all() for t in weights.values() if t.is_floating_point()), stage


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_auto_is_bf16_only_where_the_device_computes_it_natively(monkeypatch, native):
    from vqvae_transformer.training import loop

    monkeypatch.setattr(loop, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: native)
    for device in ("cpu", "cuda"):
        precision, reason = loop.resolve_mixed_precision("auto", torch.device(device))
        assert precision == ("bf16" if native else "no") and reason.startswith("--mixed_precision auto: ")
    assert loop.resolve_mixed_precision("auto", torch.device("mps"))[0] == "no"
    for given in ("no", "fp16", "bf16"):  # a given value is never replaced
        assert loop.resolve_mixed_precision(given, torch.device("cpu")) == (given, "as given")


def test_the_summary_records_the_precision_that_ran_and_the_flag(tmp_path):
    from vqvae_transformer.training.loop import cpu_has_native_bf16
    from vqvae_transformer.training.presets import CPU_PRESET

    assert CPU_PRESET["mixed_precision"] == "auto"
    code = run_cli(train_main.main, [*DATA, *VQVAE, *PRIOR, "--vqvae_steps", "2", "--prior_steps", "2",
                                     "--eval_steps", "2", "--output_dir", str(tmp_path)])
    assert code == 0
    settings = json.loads((tmp_path / "training_summary.json").read_text())["settings"]
    assert settings["mixed_precision_flag"] == "auto"
    assert settings["mixed_precision"] == ("bf16" if cpu_has_native_bf16() else "no")


def test_the_fused_optimizer_takes_the_same_steps_as_the_default_adamw_loop():
    from vqvae_transformer.training.loop import build_optimizer

    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 4) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], "cpu", learning_rate=1e-2, betas=(0.9, 0.99), weight_decay=0.01)
    plain = torch.optim.AdamW(models[1].parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=0.01)
    assert fused.defaults["fused"] and not build_optimizer(models[0], "mps", 1e-2, (0.9, 0.99), 0.0).defaults["fused"]
    for _ in range(5):
        x = torch.randn(16, 8)
        for model, optimizer in zip(models, (fused, plain)):
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
