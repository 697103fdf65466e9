"""The DDPM pieces of benchmarks/bench_generators.py at tiny size (8 px, 2 users, a few steps): they train by wall
clock, return a model, and sample the requested users' images deterministically. The whole benchmark (real CLIs)
is not run here."""

import math

import PIL.Image
import pytest
import torch

from benchmarks.bench_generators import (build_ddpm_unet, build_parser, sample_ddpm, train_ddpm, validate_args,
                                         write_generated)

RESOLUTION, CHANNELS, USERS = 8, 1, 2
BLOCKS = (8, 16)  # two levels: 8 px, then 4 px with attention


@pytest.fixture(scope="module")
def tiny_data():
    """``[16, 1, 8, 8]`` images in [-1, 1] and ``[16]`` labels, user 1 brighter than user 0."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(USERS).repeat_interleave(8)
    images = (torch.rand(16, CHANNELS, RESOLUTION, RESOLUTION, generator=generator) * 0.5 - 0.75
              + labels[:, None, None, None] * 1.0).clamp(-1, 1)
    return images, labels


@pytest.fixture(scope="module")
def tiny_model(tiny_data):
    """A DDPM trained for 5 steps (the step cap stops it long before the clock)."""
    images, labels = tiny_data
    return train_ddpm(images, labels, USERS, seconds=60.0, batch_size=8, block_out_channels=BLOCKS, max_steps=5,
                      warmup_steps=2)


def test_build_ddpm_unet_has_a_null_class_and_checks_the_resolution():
    unet = build_ddpm_unet(RESOLUTION, CHANNELS, USERS, BLOCKS)
    assert unet.class_embedding.num_embeddings == USERS + 1  # users + the null class
    x = torch.randn(3, CHANNELS, RESOLUTION, RESOLUTION)
    assert unet(x, torch.tensor([0, 10, 999]), class_labels=torch.tensor([0, 1, USERS])).sample.shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        build_ddpm_unet(9, CHANNELS, USERS, BLOCKS)


def test_train_ddpm_stops_on_the_clock(tiny_data):
    images, labels = tiny_data
    unet, scheduler, stats = train_ddpm(images, labels, USERS, seconds=2.0, batch_size=8, block_out_channels=BLOCKS)
    assert stats["seconds"] >= 2.0 and stats["steps"] >= 1
    assert stats["images_seen"] == 8 * stats["steps"]
    assert math.isfinite(stats["first_loss"]) and math.isfinite(stats["final_loss"])
    assert not unet.training and scheduler.config.prediction_type == "epsilon"


def test_train_ddpm_step_cap_and_label_check(tiny_model, tiny_data):
    _, _, stats = tiny_model
    assert stats["steps"] == 5
    images, labels = tiny_data
    with pytest.raises(ValueError, match="labels"):
        train_ddpm(images, labels + 1, USERS, seconds=1.0, block_out_channels=BLOCKS)


@pytest.mark.parametrize("sampler, guidance", [("ddim", 1.5), ("ddim", 1.0), ("dpm", 1.5)])
def test_sample_ddpm_shape_range_and_determinism(tiny_model, sampler, guidance):
    unet, scheduler, _ = tiny_model
    wanted = torch.tensor([1, 0, 1])
    kwargs = dict(steps=2, guidance_scale=guidance, sampler=sampler, batch_size=2)  # 2 batches: [1, 0], [1]
    first = sample_ddpm(unet, scheduler, wanted, USERS, seed=3, **kwargs)
    assert first.shape == (3, CHANNELS, RESOLUTION, RESOLUTION)  # [N, C, R, R], in [0, 1]
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert torch.equal(first, sample_ddpm(unet, scheduler, wanted, USERS, seed=3, **kwargs))
    assert not torch.equal(first, sample_ddpm(unet, scheduler, wanted, USERS, seed=4, **kwargs))


def test_write_generated_uses_generate_mains_layout(tmp_path):
    pixels = torch.rand(3, 1, RESOLUTION, RESOLUTION)
    write_generated(pixels, torch.tensor([0, 0, 1]), [4, 7], tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        "ID_4/gen_0000.png", "ID_4/gen_0001.png", "ID_7/gen_0000.png"]
    with PIL.Image.open(tmp_path / "ID_7" / "gen_0000.png") as image:
        assert image.mode == "L" and image.size == (RESOLUTION, RESOLUTION)
    write_generated(pixels, torch.tensor([0, 1, 1]), [4, 7], tmp_path / "jet", colormap="jet")
    with PIL.Image.open(tmp_path / "jet" / "ID_7" / "gen_0001.png") as image:
        assert image.mode == "RGB"  # false-colour data is written back in its colormap


def test_validate_args_rejects_guidance_without_a_null_class():
    args = build_parser().parse_args(["--label_dropout", "0"])
    with pytest.raises(ValueError, match="null class"):
        validate_args(args)
    validate_args(build_parser().parse_args([]))


def test_step_budgets_default_to_the_bench_budget_and_zero_means_the_preset():
    from benchmarks.bench_generators import BENCH_STEPS

    args = build_parser().parse_args([])
    assert (args.vqvae_steps, args.prior_steps) == BENCH_STEPS
    validate_args(build_parser().parse_args(["--vqvae_steps", "0", "--prior_steps", "0"]))  # the preset's budget
    with pytest.raises(ValueError, match="--prior_steps must be >= 0"):
        validate_args(build_parser().parse_args(["--prior_steps", "-1"]))


def test_model_dir_must_be_a_trained_model(tmp_path):
    with pytest.raises(ValueError, match="has no training_summary.json"):
        validate_args(build_parser().parse_args(["--model_dir", str(tmp_path)]))
