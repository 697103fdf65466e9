"""The codebook utilisation tool: its figures equal a direct recount of the token indices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqvae_transformer.analysis.codebook import codebook_report, distinctive_codes, main, per_user_counts
from vqvae_transformer.data import load_image_folder
from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.first_stage import build_first_stage, load_first_stage


def test_distinctive_codes_follow_the_rule():
    counts = np.array([[6, 2, 0, 3],    # user 0: code 0 (6 of 8), code 3 (3 of 4 but only 4 seen -> too rare)
                       [2, 5, 9, 1]])   # user 1: code 1 (5 of 7), code 2 (9 of 9)
    assert distinctive_codes(counts, min_count=5, min_share=0.5) == [[0], [1, 2]]


def test_per_user_counts_layout():
    tokens = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 2]]])  # (N=2, h=2, w=2)
    labels = torch.tensor([1, 0])
    counts = per_user_counts(tokens, labels, num_users=2, codebook_size=3)
    assert counts.tolist() == [[1, 0, 3], [1, 3, 0]]
    report = codebook_report(tokens, labels, [4, 9], 3, min_count=1, min_share=0.5)
    assert report["codebook_usage"] == 1.0 and report["per_user"]["9"]["used_codes"] == 2


@pytest.fixture()
def tiny_model_and_data(tmp_path):
    torch.manual_seed(0)
    model = build_first_stage("vq", block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8,
                              num_vq_embeddings=32, codebook_dim=4, sample_size=16)
    model.train()(torch.rand(8, 1, 16, 16) * 2 - 1)
    model.save_pretrained(tmp_path / "model" / "vqvae")
    rng = np.random.default_rng(0)
    for uid in (1, 2, 10):
        (tmp_path / "data" / f"ID_{uid}").mkdir(parents=True)
        for j in range(3):
            Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(
                tmp_path / "data" / f"ID_{uid}" / f"{j}.png")
    return tmp_path


def test_report_usage_equals_a_direct_recount(tiny_model_and_data):
    root = tiny_model_and_data
    out = root / "report"
    assert main(["--model_dir", str(root / "model"), "--data_dir", str(root / "data"), "--output_dir", str(out),
                 "--plot"]) == 0
    report = json.loads((out / "codebook_report.json").read_text())
    model = load_first_stage(root / "model" / "vqvae").eval()
    data = load_image_folder(root / "data", 16, channels=1)
    tokens = model.encode_to_tokens(data.images)
    used = torch.unique(tokens)
    assert report["used_codes"] == len(used)
    assert report["codebook_usage"] == pytest.approx(len(used) / 32)
    assert report["dead_code_ids"] == sorted(set(range(32)) - set(used.tolist()))
    assert set(report["per_user"]) == {"1", "2", "10"}
    assert report["per_user"]["10"]["used_codes"] == len(torch.unique(tokens[data.labels == 2]))
    assert (out / "codebook_usage_histogram.png").is_file() and (out / "codebook_user_heatmap.png").is_file()


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        main(["--model_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])


def test_output_folder_with_foreign_files_is_refused_unless_overwrite(tiny_model_and_data):
    root = tiny_model_and_data
    out = root / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["--model_dir", str(root / "model"), "--data_dir", str(root / "data"), "--output_dir", str(out)]
    with pytest.raises(UserInputError, match="notes.txt"):
        main(argv)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert main(argv + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "codebook_report.json").is_file()
    (out / "codebook_user_heatmap.png").write_bytes(b"yours")  # in the way of --plot: refused even so
    with pytest.raises(UserInputError, match="codebook_user_heatmap.png"):
        main(argv + ["--overwrite", "--plot"])
    assert (out / "codebook_user_heatmap.png").read_bytes() == b"yours"
