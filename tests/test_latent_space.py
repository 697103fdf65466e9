"""The latent-space analyser: its latents are the model's own, its scores lie in [0, 1] and rank a collapsed
codebook below a used one, interpolations end on the endpoints' reconstructions, and its CLI writes the report."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from PIL import Image

from vqvae_transformer.analysis.latent_space import (FIGURE_FILES, READINESS_WEIGHTS, REPORT_JSON, REPORT_MD,
                                                     LatentSpaceAnalyzer, main)
from vqvae_transformer.cli import run_cli
from vqvae_transformer.data import load_image_folder, save_split, stratified_split
from vqvae_transformer.data.provenance import save_data_info
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.judge import Judge, JudgeNet

TINY = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
            codebook_dim=4, sample_size=16, layers_per_block=1)


def _images(n: int = 12, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images ``[n, 1, 16, 16]`` in [-1, 1] (blurred noise, so they are not all alike)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g)
    return torch.nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False) * 2 - 1


def _tiny(kind: str):
    torch.manual_seed(0)
    model = build_first_stage(kind, **TINY)
    model.train()(_images(16, seed=1))  # k-means init + one EMA update
    return model.eval()


@pytest.fixture(scope="module")
def models():
    return {"vq": _tiny("vq"), "kl": _tiny("kl")}


def _analyzer(model, n: int = 12) -> LatentSpaceAnalyzer:
    analyzer = LatentSpaceAnalyzer(model, batch_size=8, seed=0)
    analyzer.collect_latent_representations(_images(n))
    return analyzer


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_collected_latents_are_the_models_own(models, kind):
    model = models[kind]
    x = _images(12)
    reps = _analyzer(model).representations
    assert reps.latents.shape == (12, 8, 8, 8) and reps.indices.shape == (12, 8, 8)
    assert reps.reconstructions.shape == x.shape and torch.equal(reps.images, x)
    with torch.no_grad():
        expected = model.encode(x).latents if kind == "vq" else model.encode(x).latent_dist.mean
    assert torch.allclose(reps.latents, expected, atol=1e-5)
    assert torch.equal(reps.indices, model.encode_to_tokens(x))
    assert torch.allclose(reps.reconstructions, model.decode_tokens(reps.indices).clamp(-1, 1), atol=1e-5)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_sub_scores_lie_in_unit_interval_and_combine_by_the_formula(models, kind):
    analyzer = _analyzer(models[kind])
    dist = analyzer.analyze_latent_distribution()
    assert len(dist["mean"]) == 8 and len(dist["ks_to_normal"]) == 8
    assert 0 <= dist["correlation_mean_abs_offdiag"] <= dist["correlation_max_abs_offdiag"] <= 1 + 1e-9
    cont = analyzer.analyze_latent_continuity(num_pairs=3, steps=5)
    assert len(cont["smoothness"]["pairs"]) == 3 and len(cont["smoothness"]["pairs"][0]["step_rms"]) == 4
    assert 0 <= cont["consistency"]["code_change_fraction"] <= 1
    ready = analyzer.readiness_report()  # runs the two analyses not run yet
    assert set(ready["sub_scores"]) == set(READINESS_WEIGHTS)
    for value in list(ready["sub_scores"].values()) + [ready["score"]]:
        assert 0.0 <= value <= 1.0
    expected = sum(READINESS_WEIGHTS[a] * s for a, s in ready["sub_scores"].items()) / sum(READINESS_WEIGHTS.values())
    assert ready["score"] == pytest.approx(expected)
    assert analyzer.analyze_for_diffusion()["score"] == pytest.approx(ready["score"])
    rec = analyzer.results["reconstruction"]
    assert len(rec["psnr_per_image"]) == 12 and sum(rec["psnr_histogram"]["counts"]) == 12
    mse = np.array(rec["mse_per_image"])
    assert rec["worst"][0]["index"] == int(np.argmax(mse))
    assert rec["psnr"] == pytest.approx(10 * np.log10(1 / mse.mean()))


def test_collapsed_codebook_scores_lower_usage(models):
    used = _analyzer(models["vq"]).analyze_codebook_structure()
    collapsed_model = copy.deepcopy(models["vq"])
    with torch.no_grad():  # every code the same vector: every token lands on code 0
        collapsed_model.quantize.embed.copy_(collapsed_model.quantize.embed[:1].expand_as(
            collapsed_model.quantize.embed))
    collapsed_analyzer = _analyzer(collapsed_model)
    assert torch.all(collapsed_analyzer.representations.indices == 0)
    collapsed = collapsed_analyzer.analyze_codebook_structure()
    assert collapsed["used_codes"] == 1 and collapsed["dead_codes"] == 31
    assert collapsed["score"] == pytest.approx(0.5 / 32)
    assert used["used_codes"] > 1 and used["score"] > collapsed["score"]
    assert collapsed["near_duplicate_codes"] == 32 and collapsed["nearest_neighbour_distance"]["max"] == 0
    k = used["codebook_size"]
    embed = models["vq"].quantize.embed
    pairwise = torch.cdist(embed.double(), embed.double())
    assert used["mean_pairwise_distance"] == pytest.approx(float(pairwise.sum()) / (k * (k - 1)), rel=1e-6)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_interpolation_ends_on_the_endpoints_reconstructions(models, kind):
    analyzer = _analyzer(models[kind])
    frames = analyzer.interpolate(2, 7, steps=5)
    recon = analyzer.representations.reconstructions
    assert frames.shape == (5, 1, 16, 16)
    assert torch.allclose(frames[0], recon[2], atol=1e-5) and torch.allclose(frames[-1], recon[7], atol=1e-5)


def test_continuous_autoencoder_has_no_codebook():
    torch.manual_seed(0)
    model = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                          norm_num_groups=8, sample_size=16)
    analyzer = _analyzer(model)
    assert analyzer.representations.indices is None and analyzer.representations.latents.shape == (12, 4, 8, 8)
    assert analyzer.analyze_codebook_structure()["applicable"] is False
    frames = analyzer.interpolate(0, 1, steps=3)
    assert torch.allclose(frames[0], analyzer.representations.reconstructions[0], atol=1e-5)
    ready = analyzer.readiness_report()
    assert "codebook_usage" not in ready["sub_scores"] and sum(ready["weights"].values()) == pytest.approx(1.0)
    assert 0 <= ready["score"] <= 1 and analyzer.results["continuity"]["consistency"]["code_change_fraction"] is None


def test_judge_feature_errors(models):
    torch.manual_seed(0)
    judge = Judge(model=JudgeNet(1, 3).eval(), num_classes=3, channels=1, resolution=16, settings={},
                  train_seconds=0.0)
    rec = _analyzer(models["vq"]).analyze_reconstruction_error_distribution(judge=judge, worst_k=3)
    assert len(rec["worst"]) == 3
    assert rec["judge"]["feature_distance_mean"] >= 0 and 0 <= rec["judge"]["label_agreement"] <= 1


def test_analyses_need_collected_latents(models):
    with pytest.raises(ValueError, match="collect_latent_representations"):
        LatentSpaceAnalyzer(models["vq"]).analyze_latent_distribution()
    with pytest.raises(ValueError, match="shape"):
        LatentSpaceAnalyzer(models["vq"]).collect_latent_representations(torch.zeros(2, 3, 16, 16))


@pytest.fixture()
def model_and_data(tmp_path, models):
    models["vq"].save_pretrained(tmp_path / "model" / "vqvae")
    rng = np.random.default_rng(0)
    for uid in (1, 2):
        (tmp_path / "data" / f"ID_{uid}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                tmp_path / "data" / f"ID_{uid}" / f"{j}.png")
    return tmp_path


def test_cli_writes_the_report_and_figures(model_and_data):
    root = model_and_data
    out = root / "latent"
    argv = ["--model_dir", str(root / "model"), "--data_dir", str(root / "data"), "--output_dir", str(out),
            "--max_samples", "5", "--num_pairs", "2", "--steps", "4", "--seed", "3"]
    assert main(argv) == 0
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["num_images"] == 5 and report["seed"] == 3 and report["model"]["kind"] == "vq"
    assert 0 <= report["readiness"]["score"] <= 1
    assert set(report["figures"]) == set(FIGURE_FILES)
    for rel in report["figures"].values():
        assert (out / rel).read_bytes()[:4] == b"\x89PNG"
    markdown = (out / REPORT_MD).read_text()
    assert "# Latent-space analysis" in markdown and f"{report['readiness']['score']:.3f}" in markdown
    assert main(argv) == 0  # re-running into its own folder needs no flag


def test_cli_default_is_the_validation_split_with_judge(tmp_path, models):
    """A training-style folder (data_info.json, split.json, vqvae/ holding a kl first stage): the report covers
    exactly the validation images, and --judge adds the feature-level error."""
    data_dir = tmp_path / "data"
    rng = np.random.default_rng(1)
    for uid in (1, 2):
        (data_dir / f"ID_{uid}").mkdir(parents=True)
        for j in range(5):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(data_dir / f"ID_{uid}" / f"{j}.png")
    model_dir = tmp_path / "model"
    data = load_image_folder(data_dir, 16)
    train_idx, val_idx = stratified_split(data.labels, 0.4, 0)
    save_split(model_dir / "split.json", data, train_idx, val_idx, seed=0, val_fraction=0.4)
    save_data_info(model_dir, data, data_dir=data_dir, resolution=16, channels=1, num_users=None,
                   skip_bad_images=False)
    models["kl"].save_pretrained(model_dir / "vqvae")
    out = tmp_path / "latent"
    assert main(["--model_dir", str(model_dir), "--output_dir", str(out), "--num_pairs", "2", "--steps", "3",
                 "--judge", "--judge_epochs", "1"]) == 0
    report = json.loads((out / REPORT_JSON).read_text())
    assert report["model"]["kind"] == "kl" and report["num_images"] == len(val_idx)
    assert "validation split" in report["source"]
    worst = {w["path"] for w in report["reconstruction"]["worst"]}
    assert worst <= {data.paths[i] for i in val_idx}
    assert 0 <= report["reconstruction"]["judge"]["label_agreement"] <= 1
    assert (out / "judge").is_dir()


def test_bad_model_dir_is_one_line_and_exit_2(tmp_path, capsys):
    argv = ["--model_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")]
    assert run_cli(main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "does not exist" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()
    done = subprocess.run([sys.executable, "-m", "vqvae_transformer.analysis.latent_space", *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
