"""First-stage models: token layout, save/load round trips, diffusers' forward conventions, stock diffusers
checkpoints converted, clear errors for foreign checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.models.autoencoders.vae import DecoderOutput
from safetensors.torch import load_file, save_file

from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.first_stage import (FORMAT_VERSION, FirstStageOutput, KLFirstStage, VQFirstStage,
                                                  build_first_stage, load_first_stage)

TINY = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
            codebook_dim=4, sample_size=16, layers_per_block=1)


def _trained_tiny(kind: str, channels: int = 1):
    torch.manual_seed(0)
    model = build_first_stage(kind, in_channels=channels, out_channels=channels, **TINY)
    model.train()(torch.rand(4, channels, 16, 16) * 2 - 1)  # k-means init + one EMA update
    return model.eval()


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_tokens_round_trip_to_the_forward_reconstruction(kind):
    model = _trained_tiny(kind)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(x)
    tokens = model.encode_to_tokens(x)
    assert tokens.shape == (3, 8, 8) and tokens.dtype == torch.long
    assert model.token_grid(16) == (8, 8)
    assert torch.equal(tokens, out.indices)
    assert torch.allclose(model.decode_tokens(tokens), out.sample, atol=1e-4)


def test_vqmodel_decode_with_lookup_uses_our_codebook():
    model = _trained_tiny("vq")
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    tokens = model.encode_to_tokens(x)
    via_diffusers = model.decode(tokens, force_not_quantize=True, shape=(2, 8, 8, 8)).sample
    assert torch.allclose(via_diffusers, model.decode_tokens(tokens), atol=1e-5)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_save_pretrained_round_trip_is_exact(kind, tmp_path):
    model = _trained_tiny(kind, channels=3)
    model.save_pretrained(tmp_path)
    loaded = load_first_stage(tmp_path).eval()
    assert type(loaded) is type(model)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert bool(loaded.quantize.initialized)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode_to_tokens(x), model.encode_to_tokens(x))


def test_bf16_loading_keeps_the_quantizer_in_float32(tmp_path):
    _trained_tiny("vq").save_pretrained(tmp_path)
    model = load_first_stage(tmp_path, torch_dtype=torch.bfloat16)
    assert model.encoder.conv_in.weight.dtype == torch.bfloat16
    assert model.quantize.embed.dtype == torch.float32 and model.quantize.cluster_size.dtype == torch.float32
    images = model.decode_tokens(model.encode_to_tokens(torch.rand(1, 1, 16, 16, dtype=torch.bfloat16)))
    assert images.shape == (1, 1, 16, 16)


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_forward_takes_diffusers_arguments_and_returns_decoder_output(kind):
    model = _trained_tiny(kind)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        out = model(sample=x)
        plain = model(x, return_dict=False)
    assert isinstance(out, DecoderOutput) and isinstance(out, FirstStageOutput)
    assert out.sample.shape == x.shape and out.commit_loss.dim() == 0 and out.kl_loss.dim() == 0
    assert out.indices.shape == (2, 8, 8)
    assert type(out)(dict(out)).keys() == out.keys()  # Accelerate rebuilds outputs this way under fp16/bf16
    if kind == "vq":  # as VQModel: (sample, commit_loss)
        assert isinstance(plain, tuple) and len(plain) == 2
        assert torch.equal(plain[0], out.sample) and torch.equal(plain[1], out.commit_loss)
    else:  # as AutoencoderKL: (sample,)
        assert isinstance(plain, tuple) and len(plain) == 1 and torch.equal(plain[0], out.sample)
        with torch.no_grad():
            drawn = model(x, sample_posterior=True, generator=torch.Generator().manual_seed(1)).sample
            again = model(x, True, True, torch.Generator().manual_seed(1)).sample  # AutoencoderKL's positional order
        assert torch.equal(drawn, again) and not torch.equal(drawn, out.sample)


STOCK = dict(in_channels=1, out_channels=1, block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
             up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4, sample_size=16)


def test_a_stock_vqmodel_loads_with_its_codebook(tmp_path):
    """A folder saved by diffusers' VQModel: our from_pretrained and load_first_stage convert it, the stock
    codebook becomes ours, and tokens and decodes are the stock model's."""
    torch.manual_seed(0)
    stock = VQModel(num_vq_embeddings=16, **STOCK).eval()
    stock.save_pretrained(tmp_path / "stock")
    model = VQFirstStage.from_pretrained(tmp_path / "stock")
    assert type(load_first_stage(tmp_path / "stock")) is VQFirstStage
    assert not model.training and bool(model.quantize.initialized)
    assert torch.equal(model.quantize.embed, stock.quantize.embedding.weight)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        latents = stock.encode(x).latents
        _, _, (_, _, stock_indices) = stock.quantize(latents)
        tokens = model.encode_to_tokens(x)
        assert torch.equal(tokens.flatten(), stock_indices.flatten())
        assert torch.allclose(model.decode_tokens(tokens), stock.decode(latents).sample, atol=1e-5)
    model.save_pretrained(tmp_path / "ours")  # from then on it is one of ours
    assert torch.equal(load_first_stage(tmp_path / "ours").encode_to_tokens(x), tokens)


def test_a_stock_autoencoderkl_loads_and_gets_its_codebook_by_kmeans(tmp_path):
    torch.manual_seed(0)
    stock = AutoencoderKL(**STOCK).eval()
    stock.save_pretrained(tmp_path)
    model = load_first_stage(tmp_path, num_vq_embeddings=16, codebook_dim=4)  # config overrides as keywords
    assert type(model) is KLFirstStage and model.config.num_vq_embeddings == 16
    assert torch.equal(model.encoder.conv_in.weight, stock.encoder.conv_in.weight)
    assert not bool(model.quantize.initialized)  # AutoencoderKL has no codebook: k-means on the first batch
    model.train()(torch.rand(4, 1, 16, 16) * 2 - 1)
    assert bool(model.quantize.initialized)


def test_a_stock_checkpoint_in_the_wrong_class_is_a_one_line_error(tmp_path):
    AutoencoderKL(**STOCK).save_pretrained(tmp_path / "kl")
    with pytest.raises(UserInputError, match="AutoencoderKL; load it with KLFirstStage.from_pretrained") as wrong:
        VQFirstStage.from_pretrained(tmp_path / "kl")
    assert "\n" not in str(wrong.value)
    VQModel(num_vq_embeddings=16, **STOCK).save_pretrained(tmp_path / "vq")
    with pytest.raises(UserInputError, match="VQModel; load it with VQFirstStage"):
        KLFirstStage.from_pretrained(tmp_path / "vq")


def test_loading_another_format_version_is_a_clear_error(tmp_path):
    _trained_tiny("vq").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="format version"):
        load_first_stage(tmp_path)


def test_missing_weights_are_an_error_not_a_silent_reinitialisation(tmp_path):
    _trained_tiny("vq").save_pretrained(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["quantize.embed"]
    save_file(state, weights)
    with pytest.raises(UserInputError, match="quantize.embed"):
        load_first_stage(tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="config.json"):
        load_first_stage(tmp_path / "nope")


def test_unknown_kind_and_bad_tokens_raise():
    with pytest.raises(ValueError, match="first stage"):
        build_first_stage("gan")
    model = _trained_tiny("vq")
    with pytest.raises(ValueError, match="token ids"):
        model.decode_tokens(torch.full((1, 8, 8), 32))


@pytest.mark.parametrize("kind", ["vq", "kl"])
def test_narrow_blocks_get_a_valid_group_norm_and_the_cpu_preset_grid(kind):
    """The CPU preset's 16-32-64 blocks: GroupNorm groups default to <= the narrowest block, 64 px -> 16x16."""
    from vqvae_transformer.training.presets import CPU_PRESET

    blocks = CPU_PRESET["block_out_channels"]
    model = build_first_stage(kind, block_out_channels=blocks, latent_channels=8, num_vq_embeddings=32,
                              codebook_dim=4, sample_size=CPU_PRESET["resolution"])
    assert model.config.norm_num_groups == min(32, *blocks)
    assert model.token_grid(CPU_PRESET["resolution"]) == (16, 16)
    explicit = build_first_stage(kind, block_out_channels=(8, 16), norm_num_groups=4, latent_channels=8,
                                 num_vq_embeddings=32, codebook_dim=4, sample_size=16)
    assert explicit.config.norm_num_groups == 4
