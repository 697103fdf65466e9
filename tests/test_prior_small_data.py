"""Stage 2 on small data: augmented token grids, the data-size rule, the best-validation weights kept, and
early stopping on the validation loss."""

import argparse
import json

import pytest
import torch

from vqvae_transformer.data.augment import circular_time_shift
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.prior import build_prior, build_prior_config
from vqvae_transformer.training.loop import STATE_FILE, LoopConfig, plateaued, run_finished, run_training
from vqvae_transformer.training import presets
from vqvae_transformer.training.presets import SMALL_DATA_IMAGES_PER_USER, small_data_prior_settings
from vqvae_transformer.training.train_prior import BestWeights, encode_training_tokens, stage_settings
from vqvae_transformer.models.reconstruction import encode_tokens

TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=16)


def test_circular_time_shift_rolls_each_image_along_width_only():
    images = torch.arange(2 * 1 * 3 * 5, dtype=torch.float32).reshape(2, 1, 3, 5)
    out = circular_time_shift(images, torch.Generator().manual_seed(0))
    for b in range(2):
        matches = [s for s in range(5) if torch.equal(out[b], torch.roll(images[b], s, dims=-1))]
        assert len(matches) == 1  # a pure roll along time: rows (Doppler) untouched


def test_training_tokens_hold_the_plain_grids_then_shifted_ones():
    torch.manual_seed(0)
    model = build_first_stage("vq", **TINY_VQ).eval()
    images = torch.rand(6, 1, 16, 16) * 2 - 1
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    tokens, token_labels = encode_training_tokens(model, images, labels, time_shifts=2, seed=3)
    assert tokens.shape == (18, 8, 8) and token_labels.tolist() == labels.tolist() * 3
    assert torch.equal(tokens[:6], encode_tokens(model, images))
    assert not torch.equal(tokens[6:12], tokens[:6])  # the shifted rounds are new grids, not copies
    again, _ = encode_training_tokens(model, images, labels, time_shifts=2, seed=3)
    assert torch.equal(again, tokens)  # seeded
    plain, plain_labels = encode_training_tokens(model, images, labels, time_shifts=0, seed=3)
    assert plain.shape[0] == 6 and torch.equal(plain_labels, labels)


FULL_RULE = {"prior_time_shifts": 4, "prior_dropout": 0.1, "prior_eval_steps": 100, "prior_early_stopping": 3}


def test_small_data_rule_fills_only_what_the_preset_filled(monkeypatch):
    monkeypatch.setattr(presets, "SMALL_DATA_PRIOR", FULL_RULE)
    small = SMALL_DATA_IMAGES_PER_USER - 1
    settings, reason = small_data_prior_settings(small, given=set())
    assert settings == FULL_RULE and "small data" in reason
    settings, reason = small_data_prior_settings(small, given={"prior_dropout"})
    assert "prior_dropout" not in settings and "kept as given: prior_dropout" in reason
    settings, reason = small_data_prior_settings(small, given=set(FULL_RULE))  # every setting given: said so
    assert settings == {} and reason.endswith(": no setting changed; kept as given: " + ", ".join(sorted(FULL_RULE)))
    settings, _ = small_data_prior_settings(SMALL_DATA_IMAGES_PER_USER, given=set())
    assert settings == {}


def test_stage_settings_follow_the_images_per_user(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "SMALL_DATA_PRIOR", FULL_RULE)
    cfg = LoopConfig(output_dir=tmp_path, checkpoint_dir=tmp_path / "c", max_train_steps=1000, batch_size=4,
                     learning_rate=1e-3, eval_steps=700)
    args = argparse.Namespace(prior_time_shifts=0, prior_dropout=0.0, prior_early_stopping=0,
                              preset_filled=["prior_time_shifts", "prior_dropout", "eval_steps",
                                             "prior_early_stopping"])
    few = torch.arange(3).repeat_interleave(10)  # 10 images per user
    new_args, new_cfg, _ = stage_settings(args, cfg, few)
    assert new_args.prior_time_shifts == FULL_RULE["prior_time_shifts"]
    assert new_args.prior_dropout == FULL_RULE["prior_dropout"]
    assert new_cfg.eval_steps == FULL_RULE["prior_eval_steps"]
    assert new_cfg.early_stopping_patience == new_args.prior_early_stopping == FULL_RULE["prior_early_stopping"]
    assert args.prior_time_shifts == 0 and cfg.eval_steps == 700  # the caller's objects are untouched
    many = torch.arange(3).repeat_interleave(SMALL_DATA_IMAGES_PER_USER)
    same_args, same_cfg, _ = stage_settings(args, cfg, many)
    assert same_args.prior_time_shifts == 0 and same_cfg.eval_steps == 700 and same_cfg.early_stopping_patience == 0
    given = argparse.Namespace(prior_time_shifts=1, prior_dropout=0.0, prior_early_stopping=5,
                               preset_filled=["prior_dropout"])
    given_args, given_cfg, _ = stage_settings(given, cfg, few)
    assert given_args.prior_time_shifts == 1 and given_cfg.eval_steps == 700 and given_args.prior_dropout == 0.1
    assert given_cfg.early_stopping_patience == 5  # a given flag wins


def test_a_preset_s_own_small_data_rule_sets_batch_steps_and_warm_up(tmp_path, monkeypatch):
    monkeypatch.setattr(presets, "SMALL_DATA_PRIOR", FULL_RULE)
    monkeypatch.setattr(presets, "SMALL_DATA_PRIOR_BY_PRESET",
                        {"cpu": {"prior_batch_size": 2, "prior_steps": 400, "prior_eval_steps": 40}, "gpu": {}})
    cfg = LoopConfig(output_dir=tmp_path, checkpoint_dir=tmp_path / "c", max_train_steps=200, batch_size=4,
                     learning_rate=1e-3, eval_steps=100, lr_warmup_steps=10, tracker_config={"prior_steps": 200})
    filled = ["prior_time_shifts", "prior_dropout", "eval_steps", "prior_early_stopping", "prior_batch_size",
              "prior_steps"]
    few = torch.arange(3).repeat_interleave(10)
    args = argparse.Namespace(prior_time_shifts=0, prior_dropout=0.0, prior_early_stopping=0, prior_batch_size=4,
                              prior_steps=200, lr_warmup_steps=None, preset_filled=filled, preset_name="cpu")
    new_args, new_cfg, reason = stage_settings(args, cfg, few)
    assert (new_args.prior_batch_size, new_args.prior_steps) == (2, 400)
    assert (new_cfg.batch_size, new_cfg.max_train_steps, new_cfg.eval_steps) == (2, 400, 40)
    assert new_cfg.lr_warmup_steps == 20  # 5 % of the steps, as loop_config does
    assert new_cfg.tracker_config["prior_steps"] == 400  # trackers record the steps run
    assert "prior_batch_size=2" in reason and "prior_steps=400" in reason
    assert new_args.prior_time_shifts == FULL_RULE["prior_time_shifts"]  # the common rule applies too
    assert (cfg.batch_size, cfg.max_train_steps, args.prior_steps) == (4, 200, 200)  # the caller's are untouched
    given_warmup = argparse.Namespace(**{**vars(args), "lr_warmup_steps": 7})
    assert stage_settings(given_warmup, cfg, few)[1].lr_warmup_steps == 7
    given_steps = argparse.Namespace(**{**vars(args), "preset_filled": [f for f in filled if f != "prior_steps"]})
    kept_args, kept_cfg, reason = stage_settings(given_steps, cfg, few)
    assert (kept_cfg.batch_size, kept_cfg.max_train_steps, kept_args.prior_steps) == (2, 200, 200)
    assert "kept as given: " in reason and "prior_steps" in reason.split("kept as given: ")[1]
    by_epochs = argparse.Namespace(**{**vars(args), "prior_epochs": 3.0})  # steps follow the epochs given
    assert stage_settings(by_epochs, cfg, few)[1].max_train_steps == 200
    gpu = argparse.Namespace(**{**vars(args), "preset_name": "gpu"})
    gpu_args, gpu_cfg, _ = stage_settings(gpu, cfg, few)
    assert (gpu_cfg.batch_size, gpu_cfg.max_train_steps, gpu_cfg.eval_steps) == (4, 200, FULL_RULE["prior_eval_steps"])
    many = torch.arange(3).repeat_interleave(SMALL_DATA_IMAGES_PER_USER)
    assert stage_settings(args, cfg, many)[1] == cfg  # not small: nothing changes


def test_the_first_settings_line_marks_prior_steps_the_preset_filled():
    """Stage 2 may replace preset-filled prior steps (above): the run's first line must not present them as final."""
    from vqvae_transformer.training.main import settings_line

    args = argparse.Namespace(resolution=64, codebook_size=1024, vqvae_steps=2800, n_layer=4, n_embd=192,
                              prior_steps=1300, preset_filled=["prior_steps", "vqvae_steps"])
    line = settings_line(args, "cpu", "cpu")
    assert line.startswith("preset cpu: 64 px, K=1024, stage 1 2800 steps, prior 4x192 1300 steps (the preset's")
    assert "adapts them to small data" in line and line.endswith("device cpu")
    given = argparse.Namespace(**{**vars(args), "preset_filled": ["vqvae_steps"]})
    assert settings_line(given, "cpu", "cpu").endswith("prior 4x192 1300 steps, device cpu")  # a flag: final
    reused = argparse.Namespace(**{**vars(args), "skip_vqvae": True})
    assert "stage 1 reused (--skip_vqvae), prior 4x192 1300 steps" in settings_line(reused, "cpu", "cpu")
    alone = argparse.Namespace(**{**vars(args), "skip_prior": True})
    assert "stage 1 2800 steps, prior skipped (--skip_prior), device cpu" in settings_line(alone, "cpu", "cpu")


def test_the_real_cpu_small_data_rule_trains_smaller_steps_on_about_the_same_sequences():
    cpu, rule = presets.CPU_PRESET, presets.small_data_rule("cpu")
    assert rule["prior_batch_size"] < cpu["prior_batch_size"]
    sequences, preset_sequences = (s["prior_steps"] * s["prior_batch_size"] for s in (rule, cpu))
    assert 0.8 * preset_sequences <= sequences <= preset_sequences  # no longer than the preset's budget
    # evaluations as often in training sequences as the common rule's at the preset's batch
    assert rule["prior_eval_steps"] * rule["prior_batch_size"] == \
        presets.SMALL_DATA_PRIOR["prior_eval_steps"] * cpu["prior_batch_size"]
    assert presets.small_data_rule("gpu") == presets.small_data_rule(None) == presets.SMALL_DATA_PRIOR


def test_the_real_small_data_rule_stops_early_and_augments_without_dropout():
    rule, cpu = presets.SMALL_DATA_PRIOR, presets.CPU_PRESET
    assert rule["prior_early_stopping"] > 0 and cpu["prior_early_stopping"] == 0
    assert rule["prior_time_shifts"] > 0
    assert "prior_dropout" not in rule and cpu["prior_dropout"] == 0.0  # underfits in its budget: no dropout
    assert "prior_attention_dropout" not in rule and cpu["prior_attention_dropout"] == 0.0  # the slow one stays off


def test_attention_dropout_is_separate_from_residual_and_embedding_dropout():
    config = build_prior_config(32, 3, (4, 4), n_layer=1, n_embd=16, n_head=2, dropout=0.1, attention_dropout=0.0)
    assert (config.resid_pdrop, config.embd_pdrop, config.attn_pdrop) == (0.1, 0.1, 0.0)
    same = build_prior_config(32, 3, (4, 4), n_layer=1, n_embd=16, n_head=2, dropout=0.2)
    assert same.attn_pdrop == same.resid_pdrop == 0.2  # not given: one dropout for all three, as before
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        build_prior_config(32, 3, (4, 4), n_layer=1, n_embd=16, n_head=2, attention_dropout=1.0)


@pytest.mark.parametrize("losses, patience, expected", [
    ([4.6, 4.2, 4.0, 4.05, 4.17, 4.35], 3, True),   # the users'-shape curve: best 3 evaluations ago
    ([4.6, 4.2, 4.0, 4.05, 4.17], 3, False),
    ([4.6, 4.2, 4.0, 4.05, 3.9, 4.1], 3, False),     # a new best inside the window
    ([4.0, 4.0, 4.0, 4.0], 3, True),                 # equal is not lower
    ([4.6, 4.7], 1, True), ([4.6], 1, False), ([4.6, 4.7, 4.8], 0, False),
])
def test_plateaued_counts_evaluations_since_the_lowest_loss(losses, patience, expected):
    history = [{"step": 100 * (i + 1), "loss": 1.0, "val_loss": v} for i, v in enumerate(losses)]
    history.insert(1, {"step": 150, "loss": 1.0})  # an entry without a validation loss does not count
    assert plateaued(history, patience) is expected


def _scripted_run(tmp_path, losses, max_steps, patience, resume=None):
    """run_training on a tiny linear model whose evaluation returns ``losses`` in turn (every 2 steps)."""
    calls = []

    def eval_fn(model, step, history):
        calls.append(step)
        return {"loss": losses[len(calls) - 1]}

    def step_fn(model, batch, accelerator):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x), y), {}

    cfg = LoopConfig(output_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt", max_train_steps=max_steps, batch_size=2,
                     learning_rate=1e-2, eval_steps=2, checkpointing_steps=100, early_stopping_patience=patience,
                     resume_from_checkpoint=resume, lr_warmup_steps=1)
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
    model, history, finished = run_training(cfg, torch.nn.Linear(3, 1), data, step_fn, eval_fn)
    return history, finished, calls


def test_training_stops_after_patience_evaluations_and_a_resume_trains_no_more(tmp_path):
    losses = [3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 1.0, 1.0]  # best at the 2nd evaluation (step 4)
    history, finished, calls = _scripted_run(tmp_path, losses, max_steps=16, patience=3)
    assert finished and calls == [2, 4, 6, 8, 10] and history[-1]["step"] == 10  # stopped 3 evaluations later
    assert run_finished(tmp_path / "ckpt")
    state = json.loads((tmp_path / "ckpt" / "checkpoint-10" / STATE_FILE).read_text())
    assert state["stopped_early"] is True and state["step"] == 10
    again, finished, calls = _scripted_run(tmp_path, losses, max_steps=16, patience=3, resume="latest")
    assert finished and calls == [] and [h["step"] for h in again] == [2, 4, 6, 8, 10]
    full, finished, calls = _scripted_run(tmp_path / "off", losses, max_steps=16, patience=0)
    assert finished and calls == [2, 4, 6, 8, 10, 12, 14, 16]  # patience 0 never stops


def test_best_weights_keep_the_lowest_loss_and_restore_it(tmp_path):
    torch.manual_seed(0)
    prior = build_prior(build_prior_config(16, 2, (2, 2), n_layer=1, n_embd=16, n_head=2))
    best = BestWeights(tmp_path)
    best.update(prior, step=10, loss=2.0)
    saved = {k: v.clone() for k, v in prior.state_dict().items()}
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(1.0)
    best.update(prior, step=20, loss=2.5)  # worse: not kept
    assert BestWeights(tmp_path).best == {"step": 10, "val_loss": 2.0}  # read back, as after a resume
    record = BestWeights(tmp_path).restore(prior, last_step=20)
    assert record["step"] == 10
    for key, value in prior.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert prior.lm_head.weight.data_ptr() == prior.transformer.wte.weight.data_ptr()  # still tied
