"""A model folder is one consistent model: stage-1 fingerprints and what a new stage 1 invalidates."""

import logging

import pytest

from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.fingerprint import (FINGERPRINT_FILE, check_model_folder, invalidate_dependents,
                                                  stage1_fingerprint, write_fingerprint)


def fake_model(folder, weights=b"stage one"):
    (folder / "vqvae").mkdir(parents=True)
    (folder / "vqvae" / "config.json").write_text("{}")
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    (folder / "prior").mkdir()
    (folder / "prior" / "config.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")
    return folder


def test_fingerprint_follows_the_weights(tmp_path):
    a, b = fake_model(tmp_path / "a"), fake_model(tmp_path / "b", weights=b"another stage one")
    assert stage1_fingerprint(a / "vqvae") == stage1_fingerprint(a / "vqvae")
    assert stage1_fingerprint(a / "vqvae") != stage1_fingerprint(b / "vqvae")


def test_a_prior_of_another_stage1_is_refused_in_one_line(tmp_path):
    folder = fake_model(tmp_path / "m")
    good = stage1_fingerprint(folder / "vqvae")
    write_fingerprint(folder, good)
    write_fingerprint(folder / "prior", good)
    check_model_folder(folder)  # consistent: no error
    (folder / "vqvae" / "diffusion_pytorch_model.safetensors").write_bytes(b"a new stage one")
    with pytest.raises(UserInputError) as err:
        check_model_folder(folder)
    assert "prior/" in str(err.value) and "\n" not in str(err.value)


def test_a_folder_without_fingerprints_loads_with_a_warning(tmp_path, caplog):
    folder = fake_model(tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        check_model_folder(folder)
    assert "no stage-1 fingerprint" in caplog.text


def test_a_new_stage1_removes_only_the_trainers_dependent_files(tmp_path):
    folder = fake_model(tmp_path / "m")
    write_fingerprint(folder / "prior", "x")
    write_fingerprint(folder, "x")
    (folder / "prior" / "my_notes.txt").write_text("the user's")
    (folder / "notes.md").write_text("the user's")
    removed = invalidate_dependents(folder)
    assert not (folder / "model_index.json").exists() and not (folder / FINGERPRINT_FILE).exists()
    assert not (folder / "prior" / "config.json").exists()
    assert (folder / "prior" / "my_notes.txt").read_text() == "the user's"
    assert (folder / "notes.md").read_text() == "the user's"
    assert (folder / "vqvae" / "config.json").is_file() and len(removed) == 4
