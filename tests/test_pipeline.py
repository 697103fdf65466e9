"""The two-stage pipeline: save/load round trip, reproducible sampling, output formats, user-id errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import (FORMAT_VERSION, VQVAETransformerPipeline,
                                               VQVAETransformerPipelineOutput, chunk_seeds)
from vqvae_transformer.models.prior import build_prior, build_prior_config

TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=16)
USER_IDS = [1, 2, 5]


def tiny_pipeline(channels: int = 1, kind: str = "vq") -> VQVAETransformerPipeline:
    """A 16 px pipeline: first stage run once in train mode (codebook init), 1-layer prior, users 1, 2, 5."""
    torch.manual_seed(0)
    vqvae = build_first_stage(kind, in_channels=channels, out_channels=channels, **TINY_VQ)
    vqvae.train()(torch.rand(4, channels, 16, 16) * 2 - 1)  # k-means init + one EMA update
    prior = build_prior(build_prior_config(32, 3, (8, 8), n_layer=1, n_embd=32, n_head=2, user_ids=USER_IDS))
    pipe = VQVAETransformerPipeline(vqvae=vqvae.eval(), prior=prior.eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    pipe.save_pretrained(folder)
    return folder


def test_model_index_names_our_classes_and_facts(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "VQVAETransformerPipeline"
    assert index["vqvae"] == ["vqvae_transformer.models.first_stage", "VQFirstStage"]
    assert index["prior"] == ["transformers", "GPT2LMHeadModel"]
    assert index["user_ids"] == USER_IDS
    assert index["resolution"] == 16 and index["channels"] == 1
    assert index["value_range"] == [-1.0, 1.0] and index["format_version"] == FORMAT_VERSION
    assert (saved / "vqvae" / "config.json").is_file() and (saved / "prior" / "config.json").is_file()


def test_round_trip_keeps_weights_config_and_ids(pipe, saved):
    loaded = VQVAETransformerPipeline.from_pretrained(saved)
    assert not loaded.vqvae.training and not loaded.prior.training
    assert loaded.user_ids == USER_IDS
    for name in ("user_ids", "resolution", "channels", "value_range", "format_version"):
        assert loaded.config[name] == pipe.config[name], name
    for module in ("vqvae", "prior"):
        original, restored = getattr(pipe, module).state_dict(), getattr(loaded, module).state_dict()
        assert original.keys() == restored.keys()
        for key in original:
            assert torch.equal(original[key], restored[key]), f"{module}.{key}"
    assert loaded.prior.config.token_grid == [8, 8]
    loaded.set_progress_bar_config(disable=True)
    a = pipe(num_images_per_user=2, seed=3, output_type="pt").images
    b = loaded(num_images_per_user=2, seed=3, output_type="pt").images
    assert torch.equal(a, b)


def test_same_seed_same_images_other_seed_other_images(pipe):
    a = pipe(user_ids=[1, 5], num_images_per_user=3, seed=11, output_type="pt")
    b = pipe(user_ids=[1, 5], num_images_per_user=3, seed=11, output_type="pt")
    c = pipe(user_ids=[1, 5], num_images_per_user=3, seed=12, output_type="pt")
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert a.user_ids == [1, 1, 1, 5, 5, 5]
    # A generator seeds the run the same way twice.
    g1 = pipe(num_images_per_user=1, generator=torch.Generator().manual_seed(4), output_type="pt").images
    g2 = pipe(num_images_per_user=1, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(g1, g2)


def test_sampling_leaves_the_global_rng_alone(pipe):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    pipe(num_images_per_user=1, seed=0, output_type="pt")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_output_types_and_modes(channels, mode):
    pipe = tiny_pipeline(channels)
    out = pipe(num_images_per_user=2, seed=0)
    assert isinstance(out, VQVAETransformerPipelineOutput)
    assert len(out.images) == 6 and out.user_ids == [1, 1, 2, 2, 5, 5]
    assert all(image.mode == mode and image.size == (16, 16) for image in out.images)
    pt = pipe(num_images_per_user=2, seed=0, output_type="pt").images
    assert pt.shape == (6, channels, 16, 16) and pt.dtype == torch.float32
    assert float(pt.min()) >= 0.0 and float(pt.max()) <= 1.0
    arr = pipe(num_images_per_user=2, seed=0, output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.shape == (6, 16, 16, channels)
    pil_pixels = np.asarray(out.images[0], dtype=np.float32).reshape(16, 16, channels) / 255.0
    assert np.allclose(pil_pixels, arr[0], atol=1 / 255 + 1e-6)
    images, ids = pipe(user_ids=5, num_images_per_user=1, seed=0, return_dict=False)
    assert ids == [5] and len(images) == 1


def test_unknown_user_id_names_the_valid_ids(pipe):
    with pytest.raises(UserInputError, match=r"\[3\].*\[1, 2, 5\]"):
        pipe(user_ids=[1, 3])
    with pytest.raises(UserInputError, match="num_images_per_user"):
        pipe(num_images_per_user=0)
    with pytest.raises(UserInputError, match="temperature"):
        pipe(temperature=0.0)
    with pytest.raises(UserInputError, match="output_type"):
        pipe(output_type="jpeg")


def test_chunking_is_deterministic_and_documented(pipe):
    """Chunks get seeds derived from (seed, chunk index): the same seed and batch_size repeat exactly.

    A different batch_size gives different (equally valid) images: generate() draws each step for the whole chunk
    from one RNG stream (torch.multinomial over [B, V]), so a row's draws depend on its chunk. What stays the same
    is the layout (user order) and everything sampled in the first chunk when it holds the same rows.
    """
    a = pipe(num_images_per_user=3, seed=7, batch_size=4, output_type="pt")  # chunks of 4, 4, 1
    b = pipe(num_images_per_user=3, seed=7, batch_size=4, output_type="pt")
    assert torch.equal(a.images, b.images)
    whole = pipe(num_images_per_user=3, seed=7, batch_size=64, output_type="pt")
    assert whole.user_ids == a.user_ids == [1, 1, 1, 2, 2, 2, 5, 5, 5]
    assert whole.images.shape == a.images.shape
    seeds = chunk_seeds(7, 3)
    assert len(set(seeds)) == 3 and seeds[:1] == chunk_seeds(7, 1)  # chunk i's seed does not depend on the count


def test_guidance_scale_runs_and_changes_the_samples(pipe):
    plain = pipe(num_images_per_user=2, seed=5, output_type="pt").images
    guided = pipe(num_images_per_user=2, seed=5, guidance_scale=3.0, top_k=8, top_p=0.9, output_type="pt").images
    assert guided.shape == plain.shape
    assert not torch.equal(plain, guided)


def test_kl_first_stage_pipeline_round_trips(tmp_path):
    pipe = tiny_pipeline(kind="kl")
    pipe.save_pretrained(tmp_path)
    loaded = VQVAETransformerPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vqvae).__name__ == "KLFirstStage"
    assert torch.equal(pipe(seed=1, output_type="pt").images, loaded(seed=1, output_type="pt").images)


def test_loading_errors_are_one_line(saved, tmp_path):
    with pytest.raises(UserInputError, match="no model folder") as missing:
        VQVAETransformerPipeline.from_pretrained(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    with pytest.raises(UserInputError, match="model_index.json"):
        VQVAETransformerPipeline.from_pretrained(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    for part in ("vqvae", "prior"):
        (old / part).mkdir()
        for file in (saved / part).iterdir():
            (old / part / file.name).write_bytes(file.read_bytes())
    index = json.loads((saved / "model_index.json").read_text())
    (old / "model_index.json").write_text(json.dumps({**index, "format_version": 0}))
    with pytest.raises(UserInputError, match="format version 0"):
        VQVAETransformerPipeline.from_pretrained(old)


def test_push_to_hub_method_saves_a_card_and_calls_the_hub_entry_point(pipe, monkeypatch):
    from vqvae_transformer import hub

    seen = {}

    def fake_push(model_dir, repo_id, token=None, private=False, commit_message=""):
        folder = Path(model_dir)
        seen.update(repo_id=repo_id, private=private, files=sorted(str(p.relative_to(folder))
                                                                   for p in folder.rglob("*") if p.is_file()))
        return f"https://hub.example/{repo_id}/commit/abc"

    monkeypatch.setattr(hub, "push_to_hub", fake_push)
    url = pipe.push_to_hub("acme/tiny", private=True)
    assert url == "https://hub.example/acme/tiny/commit/abc"
    assert seen["repo_id"] == "acme/tiny" and seen["private"] is True
    assert {"README.md", "model_index.json", "vqvae/config.json", "prior/config.json"} <= set(seen["files"])
