"""Variations of real recordings: the prior completes a kept prefix of a training image's codes
(``sample_tokens(prefix=)``, the pipeline's ``image``/``strength``, ``generate_main.py --strength``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import generate_main
from test_keep_attributed import USERS, _argv, model_dir  # noqa: F401  (model_dir is a fixture)
from vqvae_transformer.data.provenance import load_model_data
from vqvae_transformer.errors import UserInputError
from vqvae_transformer.inference.variations import TrainingSources
from vqvae_transformer.models.pipeline import VQVAETransformerPipeline
from vqvae_transformer.output_folder import MANIFEST_NAME
from vqvae_transformer.models.prior import build_prior, build_prior_config, grid_to_sequence, sample_tokens


@pytest.mark.parametrize("order", ["column", "row"])
@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_sample_tokens_keeps_the_prefix_and_writes_the_rest(order, guidance):
    torch.manual_seed(0)
    prior = build_prior(build_prior_config(16, 3, (4, 6), n_layer=1, n_embd=32, n_head=2, token_order=order))
    prefix = torch.randint(16, (5, 9))
    generators = [torch.Generator().manual_seed(i) for i in range(5)]
    grids = sample_tokens(prior, [0, 1, 2, 0, 1], prefix=prefix, guidance_scale=guidance, generator=generators)
    assert grids.shape == (5, 4, 6)
    sequences = grid_to_sequence(grids, order)  # (5, 24) in the prior's order
    assert torch.equal(sequences[:, :9], prefix)
    assert bool(((sequences >= 0) & (sequences < 16)).all())
    # the completion is conditioned on the prefix: near-greedy (the untrained prior's logits are almost flat)
    greedy = [sample_tokens(prior, [0, 1, 2, 0, 1], prefix=p, guidance_scale=guidance, temperature=1e-4,
                            generator=[torch.Generator().manual_seed(i) for i in range(5)])
              for p in (prefix, (prefix + 1) % 16)]
    assert not torch.equal(*(grid_to_sequence(g, order)[:, 9:] for g in greedy))


@pytest.mark.parametrize("bad", [torch.zeros(5, 0, dtype=torch.long), torch.zeros(5, 24, dtype=torch.long),
                                 torch.zeros(4, 3, dtype=torch.long), torch.full((5, 3), 16),
                                 torch.zeros(5, 3)])
def test_sample_tokens_refuses_a_bad_prefix(bad):
    prior = build_prior(build_prior_config(16, 3, (4, 6), n_layer=1, n_embd=32, n_head=2))
    with pytest.raises(ValueError, match="prefix"):
        sample_tokens(prior, [0, 1, 2, 0, 1], prefix=bad)


def test_the_pipeline_keeps_the_image_start_for_strength(model_dir):  # noqa: F811
    pipe = VQVAETransformerPipeline.from_pretrained(model_dir)
    data, train_idx, _ = load_model_data(model_dir)
    image = data.images[train_idx[:4]]  # (4, 1, 16, 16)
    h, w = pipe.prior.config.token_grid
    codes = pipe.vqvae.encode_to_tokens(image)  # (4, h, w)
    for strength, kept in ((0.5, w // 2), (0.75, round(0.25 * w)), (1.0, 0)):
        out = pipe(user_ids=[1, 2], num_images_per_user=2, image=image, strength=strength, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
        assert torch.equal(out[:, :, :kept], codes[:, :, :kept])  # column order: the first `kept` columns (time)
    plain = pipe(user_ids=[1, 2], num_images_per_user=2, output_type="latent",
                 generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(out, plain)  # strength 1 ignores the image: plain sampling, same draws


def test_the_pipeline_takes_pil_sources_as_a_training_folder_reads_them(model_dir):  # noqa: F811
    pipe = VQVAETransformerPipeline.from_pretrained(model_dir)
    data, train_idx, _ = load_model_data(model_dir)
    files = [data.paths[i] for i in train_idx[:4]]
    pil = [Image.open(f) for f in files]
    # one PIL image per requested image: the same tensor as training read from those files
    assert torch.equal(pipe._source_images(pil, 4, 2), data.images[train_idx[:4]])
    as_tensor = pipe(user_ids=[1, 2], num_images_per_user=2, image=data.images[train_idx[:4]], strength=0.5,
                     output_type="latent", generator=torch.Generator().manual_seed(0)).images
    as_pil = pipe(user_ids=[1, 2], num_images_per_user=2, image=pil, strength=0.5, output_type="latent",
                  generator=torch.Generator().manual_seed(0)).images
    assert torch.equal(as_pil, as_tensor)
    # one for all, one per user (repeated user-major), an RGB copy of a gray image read as gray
    one = pipe._source_images(pil[0], 4, 2)
    assert one.shape == (4, 1, 16, 16) and all(torch.equal(one[i], one[0]) for i in range(4))
    per_user = pipe._source_images(pil[:2], 4, 2)
    assert torch.equal(per_user[1], per_user[0]) and torch.equal(per_user[2], per_user[3])
    assert not torch.equal(per_user[0], per_user[2])
    assert torch.equal(pipe._source_images(pil[0].convert("RGB"), 1, 1), pipe._source_images(pil[0], 1, 1))
    with pytest.raises(UserInputError, match="got 3 images for 2 user"):
        pipe(user_ids=[1, 2], num_images_per_user=2, image=pil[:3], strength=0.5, output_type="latent")
    with pytest.raises(UserInputError, match="a PIL image or a list of PIL images, got list"):
        pipe(user_ids=[1, 2], num_images_per_user=2, image=["x.png"], strength=0.5, output_type="latent")


def test_a_colormap_pipeline_reads_pil_sources_through_its_colormap(tmp_path):
    from tests.test_pipeline import tiny_pipeline
    from vqvae_transformer.data import colormap as cm

    gray = tiny_pipeline(channels=1)
    pipe = VQVAETransformerPipeline(vqvae=gray.vqvae, prior=gray.prior, user_ids=gray.user_ids, colormap="jet")
    size = int(pipe.config.resolution)
    scalar = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)  # (R, R) in [0, 1]
    jet = Image.fromarray(np.round(cm.scalar_to_rgb(scalar, "jet") * 255).astype(np.uint8))
    back = pipe._source_images(jet, 1, 1)  # (1, 1, R, R) in the model's value_range
    low, high = pipe.config.value_range
    assert back.shape == (1, 1, size, size)
    error = ((back[0, 0] - low) / (high - low) - torch.from_numpy(scalar)).abs()  # jet's 8-bit colours: ~1 LUT step
    assert float(error.mean()) < 1.0 / 255 and float(error.max()) < 3.0 / 255


@pytest.mark.parametrize("kwargs, match", [
    (dict(strength=0.5), "needs an image"),
    (dict(strength=0.0, image=torch.zeros(4, 1, 16, 16)), r"in \(0, 1\]"),
    (dict(strength=1.5, image=torch.zeros(4, 1, 16, 16)), r"in \(0, 1\]"),
    (dict(strength=0.01, image=torch.zeros(4, 1, 16, 16)), "leaving nothing to write"),
    (dict(strength=0.5, image=torch.zeros(3, 1, 16, 16)), "shape"),
    (dict(strength=0.5, image=torch.zeros(4, 3, 16, 16)), "shape"),
])
def test_the_pipeline_refuses_bad_variation_arguments(model_dir, kwargs, match):  # noqa: F811
    pipe = VQVAETransformerPipeline.from_pretrained(model_dir)
    with pytest.raises(UserInputError, match=match):
        pipe(user_ids=[1, 2], num_images_per_user=2, output_type="latent", **kwargs)


def test_sources_come_from_the_training_split_of_the_intended_user(model_dir):  # noqa: F811
    sources = TrainingSources.for_model(model_dir)
    data, train_idx, val_idx = load_model_data(model_dir)
    requested = [1, 1, 2, 5, 5, 5]
    images, records = sources.draw(requested, seed=4)
    assert images.shape == (6, 1, 16, 16)
    train_files = {data.paths[i] for i in train_idx}
    for user, image, record in zip(requested, images, records):
        assert record["source"] in train_files and f"ID_{user}" in Path(record["source"]).parent.name
        original = data.images[data.paths.index(record["source"])]
        assert torch.equal(image, torch.roll(original, record["time_shift_px"], dims=-1))
    again, same = sources.draw(requested, seed=4)
    assert torch.equal(again, images) and same == records
    assert sources.draw(requested, seed=5)[1] != records


def test_generate_main_strength_writes_variations_and_records_their_sources(model_dir, tmp_path):  # noqa: F811
    argv = _argv(model_dir, tmp_path / "var", "--samples_per_user", "3", "--strength", "0.5")
    assert generate_main.main(argv) == 0
    info = json.loads((tmp_path / "var" / "generation_info.json").read_text())
    assert info["sampling"]["strength"] == 0.5
    block = info["variations"]
    assert block["strength"] == 0.5 and sorted(block["per_user"]) == sorted(str(u) for u in USERS)
    data, train_idx, _ = load_model_data(model_dir)
    train_files = {data.paths[i] for i in train_idx}
    for user in USERS:
        records = block["per_user"][str(user)]
        assert len(records) == 3 and all(r["source"] in train_files for r in records)
        assert len(list((tmp_path / "var" / f"ID_{user}").glob("gen_*.png"))) == 3
    assert generate_main.main(_argv(model_dir, tmp_path / "again", "--samples_per_user", "3", "--strength", "0.5")) == 0
    for user in USERS:
        for i in range(3):
            name = f"ID_{user}/gen_{i:04d}.png"
            assert (tmp_path / "var" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_strength_with_keep_attributed_maps_kept_images_to_their_draws(model_dir, tmp_path,  # noqa: F811
                                                                        monkeypatch):
    from vqvae_transformer.inference import generate as generate_module

    resolved, resolve = [], generate_module.resolve_model_folder
    monkeypatch.setattr(generate_module, "resolve_model_folder", lambda name: resolved.append(name) or resolve(name))
    argv = _argv(model_dir, tmp_path / "both", "--samples_per_user", "2", "--strength", "0.5", "--keep_attributed",
                 "--oversample", "2")
    assert generate_main.main(argv) == 0
    assert resolved == [str(model_dir)]  # the model folder (or Hub id) is resolved once, for the pipeline and the rest
    info = json.loads((tmp_path / "both" / "generation_info.json").read_text())
    for user in USERS:
        kept = info["attribution"]["per_user"][str(user)]["kept_candidates"]
        assert len(kept) == 2 and len(set(kept)) == 2 and all(0 <= j < 4 for j in kept)
        assert len(info["variations"]["per_user"][str(user)]) == 4


def test_skip_existing_keeps_the_provenance_of_kept_users(model_dir, tmp_path, monkeypatch):  # noqa: F811
    """A run interrupted after its first user and resumed with --skip_existing reports the same sources and
    attribution records as one uninterrupted run, the kept user's included (they live in the folder's manifest)."""
    flags = ("--samples_per_user", "2", "--strength", "0.5", "--keep_attributed", "--oversample", "2",
             "--batch_size", "4")  # 4 draws per user: one user per group
    assert generate_main.main(_argv(model_dir, tmp_path / "full", *flags)) == 0
    original, calls = VQVAETransformerPipeline.__call__, {"n": 0}

    def interrupted_second_group(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", interrupted_second_group)
    assert generate_main.main(_argv(model_dir, tmp_path / "part", *flags)) == 130
    monkeypatch.setattr(VQVAETransformerPipeline, "__call__", original)
    assert generate_main.main(_argv(model_dir, tmp_path / "part", *flags, "--skip_existing")) == 0
    full, part = (json.loads((tmp_path / name / "generation_info.json").read_text()) for name in ("full", "part"))
    assert part["skipped_user_ids"] == [USERS[0]] and part["generated_user_ids"] == list(USERS[1:])
    assert part["variations"] == full["variations"] and part["attribution"] == full["attribution"]
    assert sorted(part["variations"]["per_user"]) == sorted(str(u) for u in USERS)
    # a folder written before the manifest kept provenance: its users are regenerated, not reported without it
    manifest_path = tmp_path / "full" / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    del manifest["meta"]["provenance"]
    manifest_path.write_text(json.dumps(manifest))
    assert generate_main.main(_argv(model_dir, tmp_path / "full", *flags, "--skip_existing")) == 0
    again = json.loads((tmp_path / "full" / "generation_info.json").read_text())
    assert again["generated_user_ids"] == list(USERS) and again["variations"] == full["variations"]


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "-0.5"])
def test_a_bad_strength_is_one_line(model_dir, tmp_path, capsys, value):  # noqa: F811
    assert generate_main.main(_argv(model_dir, tmp_path / "out", "--strength", value)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--strength" in errors[0] and value in errors[0]
    assert not (tmp_path / "out" / "generation_info.json").exists()


def test_strength_needs_the_models_data_record(model_dir, tmp_path, capsys):  # noqa: F811
    bare = tmp_path / "bare"
    for file in model_dir.rglob("*"):
        if file.is_file() and file.name != "data_info.json":
            (bare / file.relative_to(model_dir)).parent.mkdir(parents=True, exist_ok=True)
            (bare / file.relative_to(model_dir)).write_bytes(file.read_bytes())
    assert generate_main.main(_argv(bare, tmp_path / "out", "--strength", "0.5")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data_info.json" in errors[0] and "--strength" in errors[0]


def test_strength_names_the_recorded_data_folder_when_it_has_moved(model_dir, tmp_path, capsys):  # noqa: F811
    """A model folder whose training images moved away: one line naming the recorded folder and the flag."""
    copy = Path(shutil.copytree(model_dir, tmp_path / "copy"))
    info = json.loads((copy / "data_info.json").read_text())
    gone = tmp_path / "moved_away"
    info["data_dir"] = str(gone)
    (copy / "data_info.json").write_text(json.dumps(info))
    assert generate_main.main(_argv(copy, tmp_path / "out", "--strength", "0.5")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(gone) in errors[0] and "--strength" in errors[0]
    assert not (tmp_path / "out" / "generation_info.json").exists()
