"""generate_main.py --keep_attributed on a tiny pipeline whose model folder records a small real data set: the kept
images are exactly the best-attributed of the candidates an unfiltered run draws, the per-user acceptance rates are
recorded, validate_main's report flags the selection, and misuse is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate_main
from vqvae_transformer.data import load_image_folder, save_split, stratified_split
from vqvae_transformer.data.provenance import save_data_info
from vqvae_transformer.inference.attribution import JudgeAttribution, candidates_per_user
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.models.prior import build_prior, build_prior_config
from vqvae_transformer.validation.inputs import generated_selection
from vqvae_transformer.validation.markdown import _selection_lines

SIZE, USERS, PER_USER = 16, (1, 2, 5), 8
TINY_VQ = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
               codebook_dim=4, sample_size=SIZE)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny pipeline plus data_info.json and split.json over ``ID_1, ID_2, ID_5`` (a bright band per user)."""
    root = tmp_path_factory.mktemp("attributed")
    rng = np.random.default_rng(0)
    for user in USERS:
        (root / "data" / f"ID_{user}").mkdir(parents=True)
        for i in range(PER_USER):
            pixels = rng.normal(40, 25, (SIZE, SIZE))
            pixels[(3 * user) % SIZE:(3 * user) % SIZE + 2, :] += 170
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="L").save(root / "data" / f"ID_{user}" / f"{i}.png")
    data = load_image_folder(root / "data", SIZE)
    model = root / "model"
    train_idx, val_idx = stratified_split(data.labels, 0.25, 0)
    save_split(model / "split.json", data, train_idx, val_idx, seed=0, val_fraction=0.25)
    save_data_info(model, data, data_dir=root / "data", resolution=SIZE, channels=1, num_users=None,
                   skip_bad_images=False)
    torch.manual_seed(0)
    vqvae = build_first_stage("vq", **TINY_VQ)
    vqvae.train()(data.images[:8])  # k-means init + one EMA update
    prior = build_prior(build_prior_config(32, 3, (8, 8), n_layer=1, n_embd=32, n_head=2, user_ids=list(USERS)))
    VQVAETransformerPipeline(vqvae=vqvae.eval(), prior=prior.eval()).save_pretrained(model)
    return model


def _argv(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--model_dir", str(model_dir), "--output_dir", str(out), "--seed", "3", "--batch_size", "64",
            "--device", "cpu", *extra]


def test_keeps_the_best_attributed_candidates_and_records_acceptance(model_dir, tmp_path):
    kept, oversample = 2, 2.5
    draws = candidates_per_user(kept, oversample)  # 5
    assert generate_main.main(_argv(model_dir, tmp_path / "all", "--samples_per_user", str(draws))) == 0
    assert generate_main.main(_argv(model_dir, tmp_path / "kept", "--samples_per_user", str(kept),
                                    "--keep_attributed", "--oversample", str(oversample))) == 0
    # the unfiltered run with samples_per_user = draws samples exactly the candidates of the filtered run
    judge = JudgeAttribution.for_model(model_dir, seed=3)
    paths, ids, p_intended, attributed = judge.intended_probabilities(tmp_path / "all")
    info = json.loads((tmp_path / "kept" / "generation_info.json").read_text())
    block = info["attribution"]
    assert block["oversample"] == oversample and block["candidates"] == draws * len(USERS)
    for user in USERS:
        members = [i for i, k in enumerate(ids) if k == user]
        best = sorted(members, key=lambda i: -float(p_intended[i]))[:kept]
        for rank, index in enumerate(best):
            assert (tmp_path / "kept" / f"ID_{user}" / f"gen_{rank:04d}.png").read_bytes() == \
                Path(paths[index]).read_bytes()
        assert sorted(p.name for p in (tmp_path / "kept" / f"ID_{user}").iterdir()) == ["gen_0000.png", "gen_0001.png"]
        record = block["per_user"][str(user)]
        assert record["candidates"] == draws and record["kept"] == kept
        assert record["attributed"] == int(attributed[members].sum())
        assert record["acceptance_rate"] == pytest.approx(record["attributed"] / draws)
        assert record["kept_attributed"] == int(attributed[best].sum())
    assert block["acceptance_rate"] == pytest.approx(sum(int(attributed[i]) for i in range(len(ids))) / len(ids))
    assert info["samples_per_user"] == kept and info["num_images"] == kept * len(USERS)
    # validation reads the selection and says gan-test is not independent; plain samples carry none
    selection = generated_selection(tmp_path / "kept")
    assert selection["oversample"] == oversample and "judge" in selection["method"]
    assert "not an independent measure" in " ".join(_selection_lines(selection))
    assert generated_selection(tmp_path / "all") is None and _selection_lines(None) == []


def test_skip_existing_keeps_a_filtered_run_and_refuses_other_settings(model_dir, tmp_path, capsys):
    argv = _argv(model_dir, tmp_path / "kept", "--samples_per_user", "2", "--keep_attributed")
    assert generate_main.main(argv) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "kept" / "ID_1").iterdir()}
    assert generate_main.main(argv + ["--skip_existing"]) == 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "kept" / "ID_1").iterdir()} == before
    assert generate_main.main(_argv(model_dir, tmp_path / "kept", "--samples_per_user", "2",
                                    "--skip_existing")) == 2  # unfiltered settings differ from the recorded ones
    assert "keep_attributed" in capsys.readouterr().err


@pytest.mark.parametrize("extra, expected", [
    (["--oversample", "2"], "only applies with --keep_attributed"),
    (["--keep_attributed", "--oversample", "0.5"], "--oversample must be a finite number >= 1"),
    (["--keep_attributed", "--oversample", "nan"], "--oversample must be a finite number >= 1"),
])
def test_bad_attribution_flags_are_one_line(model_dir, tmp_path, capsys, extra, expected):
    assert generate_main.main(_argv(model_dir, tmp_path / "out", *extra)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_model_without_its_data_record_is_one_line(model_dir, tmp_path, capsys):
    bare = tmp_path / "bare"
    for file in model_dir.rglob("*"):
        if file.is_file() and file.name not in ("data_info.json", "split.json"):
            (bare / file.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (bare / file.relative_to(model_dir)).write_bytes(file.read_bytes())
    assert generate_main.main(_argv(bare, tmp_path / "out", "--keep_attributed")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data_info.json" in errors[0] and "--keep_attributed" in errors[0]
