"""The two-stage pipeline: save/load round trip, reproducible sampling, output formats, user-id errors, diffusers
conventions (generator lists, output types, push_to_hub arguments)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DiffusionPipeline

from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models import pipeline as pipeline_module
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import (FORMAT_VERSION, SHIM_SOURCE, VQVAETransformerPipeline,
                                               VQVAETransformerPipelineOutput, image_seeds)
from vqvae_transformer.models.prior import build_prior, build_prior_config

TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=16)
USER_IDS = [1, 2, 5]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


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
    assert index["_class_name"] == ["pipeline", "VQVAETransformerPipeline"]  # diffusers' custom-pipeline form
    assert (saved / "pipeline.py").read_text() == SHIM_SOURCE
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
    a = pipe(num_images_per_user=2, generator=gen(3), output_type="pt").images
    b = loaded(num_images_per_user=2, generator=gen(3), output_type="pt").images
    assert torch.equal(a, b)


def test_same_seed_same_images_other_seed_other_images(pipe):
    a = pipe(user_ids=[1, 5], num_images_per_user=3, generator=gen(11), output_type="pt")
    b = pipe(user_ids=[1, 5], num_images_per_user=3, generator=gen(11), output_type="pt")
    c = pipe(user_ids=[1, 5], num_images_per_user=3, generator=gen(12), output_type="pt")
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
    pipe(num_images_per_user=1, generator=gen(0), output_type="pt")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_output_types_and_modes(channels, mode):
    """pil / np / pt / latent, all of the same samples: the latent grids decode to the pt images, which
    VaeImageProcessor turns into the np and pil outputs."""
    from diffusers.pipelines.pipeline_utils import ImagePipelineOutput

    pipe = tiny_pipeline(channels)
    out = pipe(num_images_per_user=2, generator=gen(0))
    assert isinstance(out, VQVAETransformerPipelineOutput) and isinstance(out, ImagePipelineOutput)
    assert len(out.images) == 6 and out.user_ids == [1, 1, 2, 2, 5, 5]
    assert all(isinstance(image, PIL.Image.Image) and image.mode == mode and image.size == (16, 16)
               for image in out.images)
    pt = pipe(num_images_per_user=2, generator=gen(0), output_type="pt").images
    assert pt.shape == (6, channels, 16, 16) and pt.dtype == torch.float32 and pt.device.type == "cpu"
    assert float(pt.min()) >= 0.0 and float(pt.max()) <= 1.0
    arr = pipe(num_images_per_user=2, generator=gen(0), output_type="np").images
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (6, 16, 16, channels)
    assert np.array_equal(arr, pt.permute(0, 2, 3, 1).numpy())
    pil_pixels = np.asarray(out.images[0], dtype=np.float32).reshape(16, 16, channels) / 255.0
    assert np.allclose(pil_pixels, arr[0], atol=1 / 255 + 1e-6)
    latent = pipe(num_images_per_user=2, generator=gen(0), output_type="latent")
    assert latent.user_ids == out.user_ids
    codes = latent.images
    assert codes.shape == (6, 8, 8) and codes.dtype == torch.long and codes.device.type == "cpu"
    assert int(codes.min()) >= 0 and int(codes.max()) < 32
    decoded = ((pipe.vqvae.decode_tokens(codes) + 1) / 2).clamp(0, 1)  # value_range [-1, 1] -> [0, 1]
    assert torch.allclose(decoded, pt, atol=1e-5)
    images, ids = pipe(user_ids=5, num_images_per_user=1, generator=gen(0), return_dict=False)
    assert ids == [5] and len(images) == 1


def test_unknown_user_id_names_the_valid_ids(pipe):
    with pytest.raises(UserInputError, match=r"\[3\].*\[1, 2, 5\]"):
        pipe(user_ids=[1, 3])
    with pytest.raises(UserInputError, match="num_images_per_user"):
        pipe(num_images_per_user=0)
    with pytest.raises(UserInputError, match="temperature"):
        pipe(temperature=0.0)
    with pytest.raises(ValueError, match=r"output_type must be one of \['pil', 'np', 'pt', 'latent'\], got 'jpeg'"):
        pipe(output_type="jpeg")


def test_batch_size_changes_neither_codes_nor_images(pipe):
    """Every image has its own generator (Gumbel-max sampling in one batched generate() call), so the sampled codes
    do not depend on batch_size; the decoded floats only by the rounding of batched convolutions."""
    a = pipe(num_images_per_user=2, generator=gen(7), batch_size=4, output_type="latent")  # chunks of 4, 2
    whole = pipe(num_images_per_user=2, generator=gen(7), batch_size=64, output_type="latent")
    assert torch.equal(a.images, whole.images)
    assert whole.user_ids == a.user_ids == [1, 1, 2, 2, 5, 5]
    pixels_4 = pipe(num_images_per_user=2, generator=gen(7), batch_size=4, output_type="pt").images
    pixels_64 = pipe(num_images_per_user=2, generator=gen(7), batch_size=64, output_type="pt").images
    assert torch.allclose(pixels_4, pixels_64, atol=1e-5)
    seeds = image_seeds(7, 3)
    assert len(set(seeds)) == 3 and seeds[:1] == image_seeds(7, 1)  # image i's seed does not depend on the count


def test_a_list_of_generators_seeds_each_image(pipe):
    """Image i is drawn from generator[i] alone: the same generators repeat the images; an image does not depend on
    the other images of the call; a list of the wrong length is a one-line ValueError."""
    gens = lambda seeds: [gen(s) for s in seeds]  # noqa: E731
    full = pipe(num_images_per_user=3, generator=gens(range(9)), batch_size=2, output_type="latent")
    again = pipe(num_images_per_user=3, generator=gens(range(9)), batch_size=5, output_type="latent")
    assert torch.equal(full.images, again.images)
    alone = pipe(user_ids=[2], num_images_per_user=3, generator=gens(range(3, 6)), output_type="latent").images
    assert torch.equal(full.images[3:6], alone)  # user 2's images are the 4th-6th of the full call
    swapped = pipe(user_ids=[2], num_images_per_user=3, generator=gens([5, 4, 3]), output_type="latent").images
    assert torch.equal(swapped, alone.flip(0))
    assert len({tuple(grid.flatten().tolist()) for grid in full.images}) == 9
    with pytest.raises(ValueError, match="list of 2 generators for 9 images") as wrong:
        pipe(num_images_per_user=3, generator=gens([0, 1]))
    assert "\n" not in str(wrong.value)
    with pytest.raises(ValueError, match="torch.Generator"):
        pipe(num_images_per_user=1, generator=[0, 1, 2])
    with pytest.raises(ValueError, match="torch.Generator"):
        pipe(num_images_per_user=1, generator=0)


def test_sampling_and_decoding_run_on_the_execution_device(pipe, monkeypatch):
    seen = []
    real = pipeline_module.sample_tokens

    def spy(*args, **kwargs):
        seen.append(kwargs["device"])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline_module, "sample_tokens", spy)
    pipe(num_images_per_user=1, generator=gen(0), output_type="latent")
    assert seen == [pipe._execution_device] and pipe._execution_device.type == "cpu"


def test_guidance_scale_runs_and_changes_the_samples(pipe):
    plain = pipe(num_images_per_user=2, generator=gen(5), output_type="pt").images
    guided = pipe(num_images_per_user=2, generator=gen(5), guidance_scale=3.0, top_k=8, top_p=0.9, output_type="pt").images
    assert guided.shape == plain.shape
    assert not torch.equal(plain, guided)


def test_kl_first_stage_pipeline_round_trips(tmp_path):
    pipe = tiny_pipeline(kind="kl")
    pipe.save_pretrained(tmp_path)
    loaded = VQVAETransformerPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vqvae).__name__ == "KLFirstStage"
    assert torch.equal(pipe(generator=gen(1), output_type="pt").images, loaded(generator=gen(1), output_type="pt").images)


def test_loading_errors_are_one_line(saved, tmp_path):
    with pytest.raises(UserInputError, match="no model folder") as missing:
        VQVAETransformerPipeline.from_pretrained(tmp_path / "nowhere")
    assert "\n" not in str(missing.value)
    with pytest.raises(UserInputError, match="model_index.json"):
        VQVAETransformerPipeline.from_pretrained(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    (old / "pipeline.py").write_text(SHIM_SOURCE)
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

    seen = []

    def fake_push(model_dir, repo_id, token=None, private=None, commit_message="", create_pr=False, subfolder=None):
        folder = Path(model_dir)
        seen.append(dict(repo_id=repo_id, private=private, token=token, create_pr=create_pr, subfolder=subfolder,
                         commit_message=commit_message,
                         files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())))
        return f"https://hub.example/{repo_id}/commit/abc"

    monkeypatch.setattr(hub, "push_to_hub", fake_push)
    url = pipe.push_to_hub("acme/tiny", private=True)
    assert url == "https://hub.example/acme/tiny/commit/abc"
    assert seen[0]["repo_id"] == "acme/tiny" and seen[0]["private"] is True and seen[0]["create_pr"] is False
    assert {"README.md", "model_index.json", "vqvae/config.json", "prior/config.json"} <= set(seen[0]["files"])
    assert "vqvae/diffusion_pytorch_model.safetensors" in seen[0]["files"]

    # DiffusionPipeline.push_to_hub's arguments, passed through (variant / safe_serialization to the save)
    pipe.push_to_hub("acme/tiny", commit_message="v2", token="hf_x", create_pr=True, safe_serialization=False,
                     variant="ema", subfolder="v2")
    call = seen[1]
    assert (call["create_pr"], call["subfolder"], call["token"], call["commit_message"]) == (True, "v2", "hf_x", "v2")
    assert "README.md" not in call["files"]  # no card for a subfolder, as diffusers
    assert "vqvae/diffusion_pytorch_model.ema.bin" in call["files"]  # (transformers 5 always writes safetensors)
    assert "prior/model.ema.safetensors" in call["files"] or "prior/pytorch_model.ema.bin" in call["files"]


def test_push_to_hub_signature_extends_diffusers():
    ours = list(inspect.signature(VQVAETransformerPipeline.push_to_hub).parameters.values())
    theirs = list(inspect.signature(DiffusionPipeline.push_to_hub).parameters.values())
    assert [(p.name, p.default) for p in ours[:len(theirs)]] == [(p.name, p.default) for p in theirs]


# --- loading the way diffusers / transformers users load ----------------------------------------------------

GENERIC_LOAD = """
import sys, torch, diffusers, transformers
from vqvae_transformer import VQVAETransformerPipeline
folder = sys.argv[1]
ours = VQVAETransformerPipeline.from_pretrained(folder)
generic = diffusers.DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
assert type(generic) is VQVAETransformerPipeline, type(generic)
for pipe in (ours, generic):
    pipe.set_progress_bar_config(disable=True)
same = torch.equal(ours(generator=torch.Generator().manual_seed(4), output_type="pt").images,
                   generic(generator=torch.Generator().manual_seed(4), output_type="pt").images)
vqvae = diffusers.AutoModel.from_pretrained(folder, subfolder="vqvae")
prior = transformers.AutoModelForCausalLM.from_pretrained(folder, subfolder="prior")
vq_same = all(torch.equal(a, b) for a, b in zip(vqvae.state_dict().values(), ours.vqvae.state_dict().values()))
prior_same = all(torch.equal(a, b) for a, b in zip(prior.state_dict().values(), ours.prior.state_dict().values()))
print("generic-load", same, type(vqvae).__name__, vq_same, type(prior).__name__, prior_same)
try:
    diffusers.DiffusionPipeline.from_pretrained(folder)
except ValueError as err:
    print("untrusted:", "trust_remote_code" in str(err))
"""


def run_outside_the_clone(code: str, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from ``cwd`` (not the clone), so only the installed package is found."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_") and k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**clean, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(cwd / "hf_home"),
                               **env})


def test_diffusers_and_transformers_generic_loaders_give_the_same_model(saved, tmp_path):
    """DiffusionPipeline / AutoModel / AutoModelForCausalLM load the saved folder in a fresh process (installed
    package, run from outside the clone) and generate what VQVAETransformerPipeline.from_pretrained generates."""
    result = run_outside_the_clone(GENERIC_LOAD, str(saved), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generic-load True VQFirstStage True GPT2LMHeadModel True" in result.stdout, result.stdout
    assert "untrusted: True" in result.stdout  # diffusers itself refuses the shim without trust_remote_code


def test_a_foreign_pipeline_py_is_refused(saved, tmp_path):
    folder = tmp_path / "tampered"
    for file in saved.rglob("*"):
        if file.is_file():
            (folder / file.relative_to(saved)).parent.mkdir(parents=True, exist_ok=True)
            (folder / file.relative_to(saved)).write_bytes(file.read_bytes())
    (folder / "pipeline.py").write_text(SHIM_SOURCE + "\nprint('surprise')\n")
    with pytest.raises(UserInputError, match="not the loader shim") as refused:
        VQVAETransformerPipeline.from_pretrained(folder)
    assert "\n" not in str(refused.value)


def test_folders_saved_before_the_shim_still_load(pipe, saved, tmp_path):
    folder = tmp_path / "pre_shim"
    for part in ("vqvae", "prior"):
        (folder / part).mkdir(parents=True)
        for file in (saved / part).iterdir():
            (folder / part / file.name).write_bytes(file.read_bytes())
    index = json.loads((saved / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "VQVAETransformerPipeline"}))
    loaded = VQVAETransformerPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(pipe(generator=gen(2), output_type="pt").images, loaded(generator=gen(2), output_type="pt").images)


def test_save_pretrained_refuses_push_to_hub(pipe, tmp_path):
    with pytest.raises(UserInputError, match="push_to_hub"):
        pipe.save_pretrained(tmp_path, push_to_hub=True)
