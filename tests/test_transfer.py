"""``--init_from``: weights carried from a trained model into a new run (unit level and one real train_main run)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from test_training import DATA, PRIOR, VQVAE, run
from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.models.prior import build_prior, build_prior_config, vocabulary_from_config
from vqvae_transformer.training.transfer import init_first_stage, init_prior

TINY = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
            codebook_dim=4, sample_size=16)


def _saved_first_stage(tmp_path, kind="vq", channels=1):
    torch.manual_seed(0)
    model = build_first_stage(kind, in_channels=channels, out_channels=channels, **TINY)
    model.train()(torch.rand(4, channels, 16, 16) * 2 - 1)  # codebook initialised, EMA buffers set
    model.save_pretrained(tmp_path / "src")
    return model.eval(), tmp_path / "src"


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_one_channel_tokenizer_inflated_to_colour_computes_the_same_on_grey_images(tmp_path, kind):
    source, folder = _saved_first_stage(tmp_path, kind)
    torch.manual_seed(1)
    target = build_first_stage(kind, in_channels=3, out_channels=3, **TINY)
    assert init_first_stage(target, folder) == len(source.state_dict())
    target.eval()
    grey = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        if kind == "vq":
            assert torch.equal(source.encode_to_tokens(grey), target.encode_to_tokens(grey.expand(-1, 3, -1, -1)))
            tokens = source.encode_to_tokens(grey)
            expected, colour = source.decode_tokens(tokens), target.decode_tokens(tokens)  # (B,1,H,W), (B,3,H,W)
        else:
            expected = source(grey).sample
            colour = target(grey.expand(-1, 3, -1, -1)).sample
    for c in range(3):
        torch.testing.assert_close(colour[:, c:c + 1], expected, atol=1e-5, rtol=1e-4)
    src_state = source.state_dict()
    for name, tensor in target.state_dict().items():  # the rest is copied as is, quantizer buffers included
        if name not in ("encoder.conv_in.weight", "decoder.conv_out.weight", "decoder.conv_out.bias"):
            assert torch.equal(tensor, src_state[name]), name


def test_another_architecture_or_kind_is_refused_in_one_line(tmp_path):
    _, folder = _saved_first_stage(tmp_path)
    wider = build_first_stage("vq", in_channels=1, out_channels=1, **{**TINY, "latent_channels": 16})
    with pytest.raises(UserInputError, match="quant_conv|encoder.conv_out"):
        init_first_stage(wider, folder)
    kl = build_first_stage("kl", in_channels=1, out_channels=1, **TINY)
    with pytest.raises(UserInputError, match="VQFirstStage, this run trains a KLFirstStage"):
        init_first_stage(kl, folder)


def _prior(num_users, seed, codebook=16):
    torch.manual_seed(seed)
    return build_prior(build_prior_config(codebook, num_users, (3, 3), n_layer=1, n_embd=32, n_head=4))


def test_prior_body_and_codes_are_copied_and_new_users_start_as_the_mean_user(tmp_path):
    source = _prior(num_users=3, seed=0)
    source.save_pretrained(tmp_path / "prior")
    target = _prior(num_users=5, seed=1)
    init_prior(target, tmp_path / "prior")
    old, new = vocabulary_from_config(source.config), vocabulary_from_config(target.config)
    src, dst = source.transformer.wte.weight, target.transformer.wte.weight  # (K + N + 1, n_embd)
    assert torch.equal(dst[:16], src[:16])  # the K code embeddings
    assert torch.equal(dst[new.null_token], src[old.null_token])
    mean_user = src[old.user_token(0):old.null_token].mean(0)
    for label in range(5):
        assert torch.equal(dst[new.user_token(label)], mean_user)
    assert torch.equal(target.lm_head.weight, dst)  # still tied
    src_state = source.state_dict()
    for name, tensor in target.state_dict().items():
        if name not in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(tensor, src_state[name]), name


def test_prior_over_another_codebook_is_refused(tmp_path):
    _prior(num_users=3, seed=0, codebook=16).save_pretrained(tmp_path / "prior")
    with pytest.raises(UserInputError, match="codebook size 16, this run 32"):
        init_prior(_prior(num_users=3, seed=0, codebook=32), tmp_path / "prior")


TINY_TRAINING = [*DATA, *VQVAE, *PRIOR, "--vqvae_steps", "4", "--prior_steps", "3"]


@pytest.fixture(scope="module")
def simulator_source(tmp_path_factory):
    """A tiny simulator model built through --init_from simulator's own path (cache folder, child process)."""
    from vqvae_transformer.training.transfer import build_simulator_model

    cache = tmp_path_factory.mktemp("cache")
    return cache, build_simulator_model("cpu", cache_dir=cache, extra_flags=TINY_TRAINING)


def test_train_main_init_from_takes_the_source_architecture_and_fine_tunes_it(tmp_path, simulator_source):
    source = simulator_source[1]
    target = tmp_path / "users_model"
    # other persons (seed 1), fewer of them, colour channels, no architecture flags: all taken from the source
    result = run(["train_main.py", "--num_users", "2", "--simulated_per_user", "8", "--seed", "1", "--channels", "3",
                  "--batch_size", "8", "--lpips", "off", "--vqvae_steps", "2", "--prior_steps", "2",
                  "--init_from", str(source), "--output_dir", str(target)])
    assert "stage 1 starts from" in result.stderr and "stage 2 starts from" in result.stderr
    assert "2 new user tokens" in result.stderr
    src_cfg = json.loads((source / "vqvae" / "config.json").read_text())
    cfg = json.loads((target / "vqvae" / "config.json").read_text())
    for key in ("block_out_channels", "latent_channels", "num_vq_embeddings", "codebook_dim", "sample_size"):
        assert cfg[key] == src_cfg[key], key
    assert cfg["in_channels"] == 3 and src_cfg["in_channels"] == 1
    prior_cfg = json.loads((target / "prior" / "config.json").read_text())
    assert (prior_cfg["n_layer"], prior_cfg["n_embd"], prior_cfg["num_users"]) == (1, 32, 2)
    summary = json.loads((target / "training_summary.json").read_text())
    assert summary["settings"]["init_from"] == str(source) and summary["vqvae"]["steps"] == 2
    # fine-tuned, not copied: two steps moved the weights away from the source's
    moved = load_file(target / "vqvae" / "diffusion_pytorch_model.safetensors")["decoder.conv_in.weight"]
    assert not torch.equal(moved, load_file(source / "vqvae" / "diffusion_pytorch_model.safetensors")[
        "decoder.conv_in.weight"])


def test_init_from_a_missing_folder_is_one_line(tmp_path):
    result = run(["train_main.py", "--init_from", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")],
                 check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " INFO " not in line]
    assert len(errors) == 1 and errors[0].startswith("error:") and "nowhere" in errors[0], result.stderr


def test_a_failed_simulator_build_leaves_nothing_in_the_cache(tmp_path):
    from vqvae_transformer.training.transfer import build_simulator_model

    with pytest.raises(UserInputError, match="training the simulator model failed"):
        build_simulator_model("cpu", cache_dir=tmp_path, extra_flags=[*TINY_TRAINING, "--vqvae_steps", "0"])
    assert not any((tmp_path / "pretrained").iterdir())  # no half-built model, no staging folder left


def test_simulator_source_is_trained_once_into_the_cache_then_reused(simulator_source, caplog):
    from vqvae_transformer.training.transfer import build_simulator_model, simulator_model_dir

    cache, folder = simulator_source
    assert folder == simulator_model_dir("cpu", cache) and (folder / "model_index.json").is_file()
    assert sorted(p.name for p in (cache / "pretrained").iterdir()) == [folder.name]
    stamp = (folder / "model_index.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert build_simulator_model("cpu", cache_dir=cache, extra_flags=["--not_a_flag"]) == folder  # not rebuilt
    assert "using the model cached" in caplog.text and (folder / "model_index.json").stat().st_mtime_ns == stamp
