"""First stage (tokenizer): a diffusers ``VQModel`` or ``AutoencoderKL`` backbone fitted with our EMA quantizer.

Both classes turn images ``[B, C, R, R]`` in [-1, 1] into a row-major grid of code indices ``[B, h, w]`` and back,
save with ``save_pretrained`` (config.json + safetensors, quantizer buffers included) and load with
``from_pretrained`` or :func:`load_first_stage`, which checks the class and format version first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (module-level name needed by pipelines, §7)
from diffusers.utils import BaseOutput

from ..errors import UserInputError
from .quantizer import EMAVectorQuantizer

FORMAT_VERSION = 1

DEFAULT_BLOCKS = (32, 64, 64, 128)


@dataclass
class FirstStageOutput(BaseOutput):
    """Output of a first-stage forward pass.

    Args:
        sample: reconstruction ``[B, C, R, R]``.
        commit_loss: scalar commitment loss of the quantizer.
        indices: code indices ``[B, h, w]``.
        kl_loss: scalar KL term (zero for the VQ backbone).
    """

    sample: torch.Tensor
    commit_loss: torch.Tensor
    indices: torch.LongTensor
    kl_loss: torch.Tensor


def _block_types(n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("DownEncoderBlock2D",) * n, ("UpDecoderBlock2D",) * n


def _quantizer_from_config(cfg, channels: int) -> EMAVectorQuantizer:
    return EMAVectorQuantizer(
        n_e=cfg.num_vq_embeddings, vq_embed_dim=channels, beta=cfg.commitment_beta, decay=cfg.ema_decay,
        codebook_dim=cfg.codebook_dim, use_l2_norm=cfg.use_l2_norm, dead_code_threshold=cfg.dead_code_threshold,
        kmeans_init=cfg.kmeans_init, sane_index_shape=True, restart_sampling=cfg.restart_sampling,
    )


class FirstStageMixin:
    """Token-level API shared by both backbones. Subclasses define ``_latents`` and ``_decode_quantized``."""

    quantize: EMAVectorQuantizer

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def token_grid(self, resolution: int) -> tuple[int, int]:
        """``(h, w)`` of the token grid for square images of side ``resolution``."""
        side = resolution // self.downsample_factor
        return side, side

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> FirstStageOutput | tuple:
        """Encode, quantize (updating the EMA codebook in training mode) and decode ``sample [B, C, R, R]``."""
        latents, kl_loss = self._latents(sample, with_kl=True)  # (B, C_lat, h, w)
        quant, commit_loss, (_, _, indices) = self.quantize(latents)
        recon = self._decode_quantized(quant)
        if not return_dict:
            return recon, commit_loss, indices, kl_loss
        return FirstStageOutput(sample=recon, commit_loss=commit_loss, indices=indices, kl_loss=kl_loss)

    @torch.no_grad()
    def encode_to_tokens(self, images: torch.Tensor) -> torch.LongTensor:
        """Images ``[B, C, R, R]`` in [-1, 1] -> code indices ``[B, h, w]`` (row-major); no statistics change."""
        latents, _ = self._latents(images, with_kl=False)
        return self.quantize.encode_indices(latents)

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.LongTensor) -> torch.Tensor:
        """Code indices ``[B, h, w]`` -> images ``[B, C, R, R]`` (roughly in [-1, 1])."""
        if tokens.dim() != 3:
            raise ValueError(f"tokens must have shape [B, h, w], got {tuple(tokens.shape)}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.config.num_vq_embeddings:
            raise ValueError(f"token ids must lie in [0, {self.config.num_vq_embeddings}), got "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        b, h, w = tokens.shape
        quant = self.quantize.get_codebook_entry(tokens, shape=(b, h, w, self.quantize.vq_embed_dim))
        return self._decode_quantized(quant.to(self.dtype))


class VQFirstStage(FirstStageMixin, VQModel):
    """diffusers ``VQModel`` with :class:`EMAVectorQuantizer` in place of the stock quantizer.

    Args: those of ``VQModel`` plus ``commitment_beta``, ``ema_decay``, ``codebook_dim``, ``use_l2_norm``,
    ``dead_code_threshold``, ``kmeans_init`` (see :class:`EMAVectorQuantizer`) and ``format_version``.
    """

    _keep_in_fp32_modules = ["quantize"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        down_block_types: tuple[str, ...] = _block_types(4)[0],
        up_block_types: tuple[str, ...] = _block_types(4)[1],
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCKS,
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 64,
        sample_size: int = 64,
        num_vq_embeddings: int = 1024,
        norm_num_groups: int = 32,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = True,
        force_upcast: bool = False,
        commitment_beta: float = 0.25,
        ema_decay: float = 0.8,
        codebook_dim: int | None = 8,
        use_l2_norm: bool = True,
        dead_code_threshold: float = 1.0,
        kmeans_init: bool = True,
        restart_sampling: str = "error",
        format_version: int = FORMAT_VERSION,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
            sample_size=sample_size, num_vq_embeddings=num_vq_embeddings, norm_num_groups=norm_num_groups,
            vq_embed_dim=vq_embed_dim, scaling_factor=scaling_factor, norm_type=norm_type,
            mid_block_add_attention=mid_block_add_attention, lookup_from_codebook=lookup_from_codebook,
            force_upcast=force_upcast,
        )
        self.quantize = _quantizer_from_config(self.config, vq_embed_dim or latent_channels)

    def _latents(self, images: torch.Tensor, with_kl: bool) -> tuple[torch.Tensor, torch.Tensor]:
        latents = self.encode(images).latents  # (B, vq_embed_dim, h, w), not yet quantized
        return latents, torch.zeros((), device=images.device)

    def _decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        # VQModel.decode(h, force_not_quantize=True) would look h up as indices (lookup_from_codebook=True);
        # here quant is already quantized, so run the tail of VQModel.decode directly.
        spatial = quant if self.config.norm_type == "spatial" else None
        return self.decoder(self.post_quant_conv(quant), spatial)


class KLFirstStage(FirstStageMixin, AutoencoderKL):
    """diffusers ``AutoencoderKL`` whose posterior mean is quantized by :class:`EMAVectorQuantizer`.

    ``AutoencoderKL.decode`` never calls a quantizer, so this class places it on ``posterior.mode()`` itself;
    ``kl_weight`` scales the KL term returned by ``forward`` (a light regulariser of the latent scale).
    """

    _keep_in_fp32_modules = ["quantize"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        down_block_types: tuple[str, ...] = _block_types(4)[0],
        up_block_types: tuple[str, ...] = _block_types(4)[1],
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCKS,
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 64,
        norm_num_groups: int = 32,
        sample_size: int = 64,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = False,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        num_vq_embeddings: int = 1024,
        commitment_beta: float = 0.25,
        ema_decay: float = 0.8,
        codebook_dim: int | None = 8,
        use_l2_norm: bool = True,
        dead_code_threshold: float = 1.0,
        kmeans_init: bool = True,
        restart_sampling: str = "error",
        kl_weight: float = 1e-6,
        format_version: int = FORMAT_VERSION,
    ):
        super().__init__(
            in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
            up_block_types=up_block_types, block_out_channels=block_out_channels,
            layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
            norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
            shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
            force_upcast=force_upcast, use_quant_conv=use_quant_conv, use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        self.quantize = _quantizer_from_config(self.config, latent_channels)

    def _latents(self, images: torch.Tensor, with_kl: bool) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.encode(images).latent_dist
        kl = posterior.kl().mean() * self.config.kl_weight if with_kl else torch.zeros((), device=images.device)
        return posterior.mode(), kl  # (B, latent_channels, h, w)

    def _decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decode(quant).sample


FIRST_STAGE_CLASSES = {"vq": VQFirstStage, "kl": KLFirstStage}


def build_first_stage(kind: str, **config) -> VQFirstStage | KLFirstStage:
    """Build a fresh first stage. ``kind`` is ``"vq"`` or ``"kl"``; ``config`` goes to the class constructor."""
    if kind not in FIRST_STAGE_CLASSES:
        raise ValueError(f"first stage must be one of {sorted(FIRST_STAGE_CLASSES)}, got {kind!r}")
    cls = FIRST_STAGE_CLASSES[kind]
    if "block_out_channels" in config:
        down, up = _block_types(len(config["block_out_channels"]))
        config.setdefault("down_block_types", down)
        config.setdefault("up_block_types", up)
        # GroupNorm needs groups <= channels: narrow blocks (16 channels) get one group per channel
        config.setdefault("norm_num_groups", min(32, *config["block_out_channels"]))
    return cls(**config)


def load_first_stage(path: str | Path, **kwargs) -> VQFirstStage | KLFirstStage:
    """Load a saved first stage, checking its class and format version before touching the weights.

    Raises:
        UserInputError: the folder is missing, holds another class, or another format version.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"no first-stage model at {path} (config.json missing); train one with train_main.py")
    config = json.loads(config_file.read_text())
    class_name = config.get("_class_name")
    by_name = {cls.__name__: cls for cls in FIRST_STAGE_CLASSES.values()}
    if class_name not in by_name:
        raise UserInputError(f"{path} holds a {class_name!r}, not one of {sorted(by_name)}; "
                             "point to a first stage saved by this project")
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise UserInputError(f"{path} was saved with format version {version}, this code reads version "
                             f"{FORMAT_VERSION}; retrain it or use the matching release of vqvae_transformer")
    model, info = by_name[class_name].from_pretrained(path, output_loading_info=True, **kwargs)
    bad = {kind: keys for kind, keys in info.items() if keys and kind in ("missing_keys", "unexpected_keys",
                                                                          "mismatched_keys")}
    if bad:
        details = "; ".join(f"{kind}: {list(keys)[:5]}" for kind, keys in bad.items())
        raise UserInputError(f"the weights in {path} do not match {class_name} ({details}); "
                             "the folder is damaged or from another version, retrain or re-download it")
    return model
