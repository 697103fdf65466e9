"""Colormap-aware images: detection, inversion within a stated error, and folder loading as one channel."""

from __future__ import annotations

import numpy as np
import torch
import pytest
from PIL import Image

from vqvae_transformer.data import colormap as cm
from vqvae_transformer.data.folder import clear_image_cache, load_image_folder
from vqvae_transformer.errors import UserInputError


def _spectrogram_like(seed: int, size: int = 96) -> np.ndarray:
    """A smooth scalar field in [0, 1] with sharp-ish structure, like a micro-Doppler image."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    field = 0.5 + 0.4 * np.sin(2 * np.pi * (x * rng.uniform(1, 3) + y * rng.uniform(0.5, 2)))
    field *= np.exp(-((y - 0.5) ** 2) / 0.08)
    return np.clip(field + rng.normal(0, 0.02, field.shape), 0, 1)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.round(rgb * 255).astype(np.uint8)


def test_scalar_round_trip_through_jet_is_within_a_stated_error():
    scalar = np.linspace(0, 1, 1001)
    rgb = _to_uint8(cm.scalar_to_rgb(scalar, "jet"))
    back = cm.rgb_to_scalar(rgb[None], "jet")[0]
    error = np.abs(back - scalar)
    # matplotlib's jet has 256 entries, and scalars 0.11-0.125 (and 0.875-0.89) all map to one pure colour:
    # those flat ends bound the worst case; elsewhere the error is under one curve step.
    assert error.max() <= 0.016
    assert error.mean() <= 1.0 / 255


@pytest.mark.parametrize("name", ["jet", "viridis", "turbo"])
def test_detection_finds_the_colormap_and_rejects_gray_and_noise(name):
    images = [_to_uint8(cm.scalar_to_rgb(_spectrogram_like(seed), name)) for seed in range(4)]
    fit = cm.detect_colormap(images)
    assert fit is not None and fit.name == name and fit.mean_error < 2.0
    gray = [np.repeat(_to_uint8(_spectrogram_like(0))[..., None], 3, axis=2)]
    assert cm.detect_colormap(gray) is None
    noise = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    assert cm.detect_colormap(noise) is None
    # A near-gray colour photo lies close to one short stretch of some map (cividis): not a spectrogram.
    grayish = np.clip(_spectrogram_like(1)[..., None] * 40 + 110 + np.array([0, 3, -3]), 0, 255).astype(np.uint8)
    assert cm.detect_colormap([grayish]) is None


def test_unknown_colormap_name_is_one_line_error():
    with pytest.raises(UserInputError, match="--colormap 'parula'"):
        cm.check_colormap_name("parula")


def _write_jet_folder(root, users=2, per_user=3):
    scalars = {}
    for user in range(1, users + 1):
        folder = root / f"ID_{user}"
        folder.mkdir(parents=True)
        for i in range(per_user):
            scalar = _spectrogram_like(10 * user + i)
            image = Image.fromarray(_to_uint8(cm.scalar_to_rgb(scalar, "jet")))
            if i % 2:
                image.quantize(256).save(folder / f"s{i}.png")  # palette PNG
            else:
                image.save(folder / f"s{i}.jpg", quality=90)
            scalars[str(folder / (f"s{i}.png" if i % 2 else f"s{i}.jpg"))] = scalar
    return scalars


def test_jet_folder_loads_as_one_channel_scalar(tmp_path):
    clear_image_cache()
    scalars = _write_jet_folder(tmp_path)
    assert load_image_folder(tmp_path, 32).colormap is None  # off by default (measured: see colormap.py)
    data = load_image_folder(tmp_path, 32, colormap="auto")
    assert data.channels == 1 and data.colormap == "jet"
    assert data.colormap_fit["name"] == "jet" and data.colormap_fit["accepted"]
    # The loaded scalar matches the one that was coloured (same resize), within JPEG/palette error.
    for image, path in zip(data.images, data.paths):
        expected = np.asarray(Image.fromarray(scalars[path].astype(np.float32)).resize((32, 32), Image.BICUBIC))
        loaded = (image[0].numpy() + 1) / 2
        assert np.abs(loaded - np.clip(expected, 0, 1)).mean() < 0.03, path
    rgb = load_image_folder(tmp_path, 32, colormap="none")
    assert rgb.channels == 3 and rgb.colormap is None
    forced = load_image_folder(tmp_path, 32, channels=3)
    assert forced.channels == 3 and forced.colormap is None


def test_gray_folder_is_unchanged_by_auto(tmp_path):
    clear_image_cache()
    folder = tmp_path / "ID_1"
    folder.mkdir()
    Image.fromarray(_to_uint8(_spectrogram_like(0))).save(folder / "a.png")
    data = load_image_folder(tmp_path, 32, colormap="auto")
    assert data.channels == 1 and data.colormap is None and data.colormap_fit is None


def test_colormap_pipeline_returns_images_in_the_colormap_and_saves_it(tmp_path):
    from tests.test_pipeline import tiny_pipeline
    from vqvae_transformer.models.pipeline import VQVAETransformerPipeline

    gray = tiny_pipeline(channels=1)
    pipe = VQVAETransformerPipeline(vqvae=gray.vqvae, prior=gray.prior, user_ids=gray.user_ids, colormap="jet")
    assert pipe.output_channels == 3
    scalar = gray(user_ids=[1], num_images_per_user=2, generator=torch.Generator().manual_seed(0),
                  output_type="np").images  # (2, R, R, 1) in [0, 1]
    rgb = pipe(user_ids=[1], num_images_per_user=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images  # (2, R, R, 3)
    assert rgb.shape == scalar.shape[:3] + (3,)
    assert np.abs(rgb - cm.scalar_to_rgb(scalar[..., 0], "jet")).max() < 1e-5
    # Inverting the written colours gives back the scalar (what validation reads), within one LUT step.
    back = cm.rgb_to_scalar(np.round(rgb * 255).astype(np.uint8), "jet")
    assert np.abs(back - scalar[..., 0]).mean() < 2.0 / 255
    pipe.save_pretrained(tmp_path / "m")
    assert VQVAETransformerPipeline.from_pretrained(tmp_path / "m").config.colormap == "jet"
    with pytest.raises(ValueError, match="colormap"):
        VQVAETransformerPipeline(vqvae=gray.vqvae, prior=gray.prior, colormap="parula")


def test_jet_data_end_to_end_trains_one_channel_and_writes_jet_images(tmp_path):
    """train_main on jet images models one channel, records the colormap; generate_main writes jet RGB PNGs;
    validate_main reads them back through the same colormap."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, timeout=600)
        return result

    data, model, gen = tmp_path / "data", tmp_path / "model", tmp_path / "gen"
    made = run("-m", "vqvae_transformer.data.simulate", "--num_users", "3", "--samples_per_user", "6",
               "--resolution", "48", "--colormap", "jet", "--output_dir", str(data))
    assert made.returncode == 0, made.stderr[-2000:]
    trained = run("train_main.py", "--data_dir", str(data), "--colormap", "auto", "--resolution", "32",
                  "--output_dir", str(model),
                  "--block_out_channels", "8", "8", "16", "--latent_channels", "8", "--codebook_size", "32",
                  "--codebook_dim", "4", "--batch_size", "8", "--lpips", "off", "--n_layer", "1", "--n_embd", "32",
                  "--n_head", "2", "--vqvae_steps", "3", "--prior_steps", "3", "--eval_steps", "3")
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "lie on the 'jet' colormap" in trained.stderr
    info = json.loads((model / "data_info.json").read_text())
    assert info["colormap"] == "jet" and info["channels"] == 1 and info["colormap_fit"]["accepted"]
    assert json.loads((model / "model_index.json").read_text())["colormap"] == "jet"
    generated = run("generate_main.py", "--model_dir", str(model), "--output_dir", str(gen),
                    "--samples_per_user", "2")
    assert generated.returncode == 0, generated.stderr[-2000:]
    image = Image.open(next((gen / "ID_1").glob("*.png")))
    assert image.mode == "RGB"
    on_curve = cm.fit_colormap(np.asarray(image).reshape(-1, 3), "jet")
    assert on_curve.mean_error < 3.0  # written in the colormap (8-bit rounding), not as gray or free RGB
    validated = run("validate_main.py", "--model_dir", str(model), "--generated_data_dir", str(gen),
                    "--output_dir", str(tmp_path / "val"), "--judge_epochs", "2")
    assert validated.returncode in (0, 1), validated.stderr[-2000:]  # 1: thresholds fail at this size
    assert (tmp_path / "val" / "validation_report.json").is_file()
