"""generate_main.py end to end on a tiny saved pipeline: folder layout, byte-identical reruns, flag errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import torch

import generate_main
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_TEMPERATURE, VQVAETransformerPipeline
from vqvae_transformer.models.prior import build_prior, build_prior_config

REPO = Path(__file__).resolve().parents[1]
TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=16)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    vqvae = build_first_stage("vq", **TINY_VQ)
    vqvae.train()(torch.rand(4, 1, 16, 16) * 2 - 1)  # k-means init + one EMA update
    prior = build_prior(build_prior_config(32, 3, (8, 8), n_layer=1, n_embd=32, n_head=2, user_ids=[1, 2, 5]))
    folder = tmp_path_factory.mktemp("model")
    VQVAETransformerPipeline(vqvae=vqvae.eval(), prior=prior.eval()).save_pretrained(folder)
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def test_writes_user_folders_grid_and_info_and_reruns_byte_identically(model_dir, tmp_path):
    out = tmp_path / "generated"
    argv = ["--model_dir", str(model_dir), "--output_dir", str(out), "--samples_per_user", "3", "--seed", "4",
            "--batch_size", "4", "--device", "cpu"]
    assert generate_main.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == [".vqvae_transformer_manifest.json", "ID_1", "ID_2", "ID_5",
                                                     "generation_info.json", "grid.png"]
    for user in ("ID_1", "ID_2", "ID_5"):
        names = sorted(p.name for p in (out / user).iterdir())
        assert names == ["gen_0000.png", "gen_0001.png", "gen_0002.png"]
        with PIL.Image.open(out / user / "gen_0000.png") as image:
            assert image.mode == "L" and image.size == (16, 16)
    with PIL.Image.open(out / "grid.png") as grid:
        assert grid.mode == "L" and grid.height == 3 * 18 + 2  # 3 rows of 16 px + 2 px padding
    info = json.loads((out / "generation_info.json").read_text())
    assert info["user_ids"] == [1, 2, 5] and info["num_images"] == 9 and info["samples_per_user"] == 3
    assert info["sampling"]["seed"] == 4 and info["sampling"]["batch_size"] == 4
    # the measured defaults (README: guidance and temperature sweeps) reach the CLI and are recorded
    assert info["sampling"]["guidance_scale"] == DEFAULT_GUIDANCE_SCALE == 1.5
    assert info["sampling"]["temperature"] == DEFAULT_TEMPERATURE == 0.9
    assert info["model_dir"] == str(model_dir) and info["images_per_second"] > 0
    first = _files(out)

    (out / "ID_9").mkdir()  # folders of other users are left alone
    assert generate_main.main(argv) == 0  # re-running into its own folder needs no flag and gives the same bytes
    assert _files(out) == first
    assert (out / "ID_9").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".generated.tmp")]  # no staging left

    (out / "ID_1" / "stale.png").write_bytes(b"old")  # a file the tool did not write: refused, kept
    assert generate_main.main(argv) == 2
    assert (out / "ID_1" / "stale.png").read_bytes() == b"old"


def test_subset_of_users_and_other_seed(model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["--model_dir", str(model_dir), "--samples_per_user", "2", "--user_ids", "5", "1"]
    assert generate_main.main(common + ["--output_dir", str(a), "--seed", "0", "--guidance_scale", "2"]) == 0
    assert generate_main.main(common + ["--output_dir", str(b), "--seed", "1", "--guidance_scale", "2"]) == 0
    assert sorted(p.name for p in a.glob("ID_*")) == ["ID_1", "ID_5"]
    assert _files(a) != _files(b)
    assert json.loads((a / "generation_info.json").read_text())["user_ids"] == [5, 1]


@pytest.mark.parametrize("flags, expected", [
    (["--samples_per_user", "0"], "--samples_per_user must be a positive integer, got 0"),
    (["--user_ids", "4"], "unknown user id(s) [4]; this model knows [1, 2, 5]"),
    (["--temperature", "0"], "--temperature must be > 0, got 0.0"),
    (["--top_p", "1.5"], "--top_p must be in (0, 1]"),
    (["--user_ids", "2", "2"], "--user_ids lists [2] more than once"),
])
def test_bad_flags_exit_2_with_one_line(model_dir, tmp_path, capsys, flags, expected):
    code = generate_main.main(["--model_dir", str(model_dir), "--output_dir", str(tmp_path / "out")] + flags)
    assert code == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and expected in errors[0], errors
    assert not (tmp_path / "out").exists()


def test_missing_model_folder_exits_2_in_a_subprocess(tmp_path):
    missing = tmp_path / "no_model_here"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "generate_main.py", "--model_dir", str(missing), "--output_dir",
                             str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # exactly one line, no traceback
    assert str(missing) in result.stderr and "train_main.py" in result.stderr


def test_default_model_dir_missing_says_to_train(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no outputs/vqvae_transformer here
    assert generate_main.main([]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "outputs/vqvae_transformer" in errors[0] and "train_main.py" in errors[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error")
def test_cuda_without_gpu_is_an_error(model_dir, tmp_path, capsys):
    assert generate_main.main(["--model_dir", str(model_dir), "--device", "cuda"]) == 2
    assert "--device cuda" in _error_lines(capsys.readouterr().err)[0]


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_main.build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--model_dir", "--output_dir", "--samples_per_user", "--user_ids", "--temperature", "--top_k",
                 "--top_p", "--guidance_scale", "--batch_size", "--seed", "--device"):
        assert flag in text
