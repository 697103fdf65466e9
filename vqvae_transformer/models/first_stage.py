"""First stage (tokenizer): a diffusers ``VQModel`` or ``AutoencoderKL`` backbone fitted with our EMA quantizer.

Both classes turn images ``[B, C, R, R]`` in [-1, 1] into a row-major grid of code indices ``[B, h, w]`` and back,
save with ``save_pretrained`` (config.json + safetensors, quantizer buffers included) and load with
``from_pretrained`` or :func:`load_first_stage`, which checks the class and format version first.

``forward`` takes diffusers' arguments and returns diffusers' output type: :class:`FirstStageOutput` is a
``DecoderOutput`` (``sample``, ``commit_loss``) with our ``indices`` and ``kl_loss``; ``return_dict=False`` gives
what the stock class gives, ``(sample, commit_loss)`` for :class:`VQFirstStage` (as ``VQModel``) and ``(sample,)``
for :class:`KLFirstStage` (as ``AutoencoderKL``).

A folder saved by a stock diffusers ``VQModel`` / ``AutoencoderKL`` loads into :class:`VQFirstStage` /
:class:`KLFirstStage` with the same ``from_pretrained`` (or :func:`load_first_stage`): the backbone weights are
taken as they are; a ``VQModel``'s codebook ``quantize.embedding.weight`` becomes our EMA codebook (full-width,
Euclidean lookup, so the codes are the stock model's codes), and an ``AutoencoderKL``, which has no codebook, gets
a fresh one that k-means initialises on the first training batch (fine-tune before use). Config overrides (e.g.
``num_vq_embeddings=512``) go as keyword arguments, as for any diffusers model.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, VQModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (module-level name needed by pipelines, §7)

from ..errors import UserInputError
from . import defaults as D
from .quantizer import EMAVectorQuantizer

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1

DEFAULT_BLOCKS = D.BLOCK_OUT_CHANNELS


@dataclass
class FirstStageOutput(DecoderOutput):
    """Output of a first-stage forward pass: diffusers' ``DecoderOutput`` plus our two fields.

    Args:
        sample: reconstruction ``[B, C, R, R]``.
        commit_loss: scalar commitment loss of the quantizer (both backbones).
        indices: code indices ``[B, h, w]``.
        kl_loss: scalar KL term, already scaled by ``kl_weight`` (zero for the VQ backbone).
    """

    # Defaults so that ``type(out)({...})`` works: Accelerate rebuilds outputs that way under fp16/bf16.
    sample: torch.Tensor
    commit_loss: torch.Tensor = None
    indices: torch.LongTensor = None
    kl_loss: torch.Tensor = None


def _block_types(n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ("DownEncoderBlock2D",) * n, ("UpDecoderBlock2D",) * n


def _quantizer_from_config(cfg, channels: int) -> EMAVectorQuantizer:
    return EMAVectorQuantizer(
        n_e=cfg.num_vq_embeddings, vq_embed_dim=channels, beta=cfg.commitment_beta, decay=cfg.ema_decay,
        codebook_dim=cfg.codebook_dim, use_l2_norm=cfg.use_l2_norm, dead_code_threshold=cfg.dead_code_threshold,
        kmeans_init=cfg.kmeans_init, sane_index_shape=True, restart_sampling=cfg.restart_sampling,
    )


def downsample_factor(block_out_channels) -> int:
    """Image side over token-grid side for an encoder with these blocks (every block but the last halves the side)."""
    return 2 ** (len(block_out_channels) - 1)


class FirstStageMixin:
    """Token-level API shared by both backbones. Subclasses define ``_latents`` and ``_decode_quantized``."""

    quantize: EMAVectorQuantizer

    @property
    def downsample_factor(self) -> int:
        return downsample_factor(self.config.block_out_channels)

    def token_grid(self, resolution: int) -> tuple[int, int]:
        """``(h, w)`` of the token grid for square images of side ``resolution``."""
        side = resolution // self.downsample_factor
        return side, side

    def _reconstruct(self, sample: torch.Tensor, **latent_kwargs) -> FirstStageOutput:
        """Encode, quantize (updating the EMA codebook in training mode) and decode ``sample [B, C, R, R]``."""
        latents, kl_loss = self._latents(sample, with_kl=True, **latent_kwargs)  # (B, C_lat, h, w)
        quant, commit_loss, (_, _, indices) = self.quantize(latents)
        recon = self._decode_quantized(quant)
        return FirstStageOutput(sample=recon, commit_loss=commit_loss, indices=indices, kl_loss=kl_loss)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """``ModelMixin.from_pretrained``, which also converts a stock ``VQModel`` / ``AutoencoderKL`` folder.

        A folder of this class loads as usual. A stock folder (``_class_name`` ``VQModel`` for
        :class:`VQFirstStage`, ``AutoencoderKL`` for :class:`KLFirstStage`) is converted (module docstring);
        keyword arguments that name config entries override the stock config.

        Raises:
            UserInputError: the folder holds the other stock class (or another model), naming the class to use.
        """
        class_name = _config_class_name(pretrained_model_name_or_path, kwargs)
        if class_name in _STOCK_CLASSES:
            return _from_stock(cls, class_name, pretrained_model_name_or_path, kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

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
        down_block_types: tuple[str, ...] = _block_types(len(D.BLOCK_OUT_CHANNELS))[0],
        up_block_types: tuple[str, ...] = _block_types(len(D.BLOCK_OUT_CHANNELS))[1],
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCKS,
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = D.LATENT_CHANNELS,
        sample_size: int = D.RESOLUTION,
        num_vq_embeddings: int = D.CODEBOOK_SIZE,
        norm_num_groups: int = D.NORM_NUM_GROUPS,
        vq_embed_dim: int | None = None,
        scaling_factor: float = 0.18215,
        norm_type: str = "group",
        mid_block_add_attention: bool = True,
        lookup_from_codebook: bool = True,
        force_upcast: bool = False,
        commitment_beta: float = D.COMMITMENT_BETA,
        ema_decay: float = D.EMA_DECAY,
        codebook_dim: int | None = D.CODEBOOK_DIM,
        use_l2_norm: bool = D.USE_L2_NORM,
        dead_code_threshold: float = D.DEAD_CODE_THRESHOLD,
        kmeans_init: bool = True,
        restart_sampling: str = D.RESTART_SAMPLING,
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

    def forward(self, sample: torch.Tensor, return_dict: bool = True) -> FirstStageOutput | tuple:
        """``VQModel.forward``: reconstruct ``sample [B, C, R, R]`` through the quantizer.

        Returns:
            :class:`FirstStageOutput`, or ``(sample, commit_loss)`` with ``return_dict=False`` (as ``VQModel``).
        """
        out = self._reconstruct(sample)
        if not return_dict:
            return out.sample, out.commit_loss
        return out

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
        down_block_types: tuple[str, ...] = _block_types(len(D.BLOCK_OUT_CHANNELS))[0],
        up_block_types: tuple[str, ...] = _block_types(len(D.BLOCK_OUT_CHANNELS))[1],
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCKS,
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = D.LATENT_CHANNELS,
        norm_num_groups: int = D.NORM_NUM_GROUPS,
        sample_size: int = D.RESOLUTION,
        scaling_factor: float = 0.18215,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = False,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        num_vq_embeddings: int = D.CODEBOOK_SIZE,
        commitment_beta: float = D.COMMITMENT_BETA,
        ema_decay: float = D.EMA_DECAY,
        codebook_dim: int | None = D.CODEBOOK_DIM,
        use_l2_norm: bool = D.USE_L2_NORM,
        dead_code_threshold: float = D.DEAD_CODE_THRESHOLD,
        kmeans_init: bool = True,
        restart_sampling: str = D.RESTART_SAMPLING,
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

    def forward(self, sample: torch.Tensor, sample_posterior: bool = False, return_dict: bool = True,
                generator: torch.Generator | None = None) -> FirstStageOutput | tuple:
        """``AutoencoderKL.forward``: reconstruct ``sample [B, C, R, R]`` through the quantizer.

        Args:
            sample: images ``[B, C, R, R]`` in [-1, 1].
            sample_posterior: quantize a draw of the posterior instead of its mode.
            return_dict: return a :class:`FirstStageOutput` (else a tuple, as ``AutoencoderKL``).
            generator: the ``torch.Generator`` of that draw.

        Returns:
            :class:`FirstStageOutput`, or ``(sample,)`` with ``return_dict=False`` (as ``AutoencoderKL``).
        """
        out = self._reconstruct(sample, sample_posterior=sample_posterior, generator=generator)
        if not return_dict:
            return (out.sample,)
        return out

    def _latents(self, images: torch.Tensor, with_kl: bool, sample_posterior: bool = False,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.encode(images).latent_dist
        kl = posterior.kl().mean() * self.config.kl_weight if with_kl else torch.zeros((), device=images.device)
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return latents, kl  # (B, latent_channels, h, w)

    def _decode_quantized(self, quant: torch.Tensor) -> torch.Tensor:
        return self.decode(quant).sample


FIRST_STAGE_CLASSES = {"vq": VQFirstStage, "kl": KLFirstStage}
# Stock diffusers classes whose folders load into ours: stock ``_class_name`` -> (stock class, our class).
_STOCK_CLASSES = {"VQModel": (VQModel, VQFirstStage), "AutoencoderKL": (AutoencoderKL, KLFirstStage)}
# from_pretrained arguments that say where config.json is (the rest are about weights and dtypes).
_CONFIG_LOCATION_KWARGS = ("cache_dir", "force_download", "proxies", "local_files_only", "token", "revision",
                           "subfolder")


def _config_class_name(path: str | os.PathLike, kwargs: dict) -> str | None:
    """``_class_name`` of the config ``from_pretrained(path, **kwargs)`` would read; None if it cannot be read."""
    try:
        config = VQModel.load_config(path, **{k: kwargs[k] for k in _CONFIG_LOCATION_KWARGS if k in kwargs})
    except (OSError, ValueError):  # let from_pretrained report a missing or broken folder in its own words
        return None
    return config.get("_class_name")


def _from_stock(cls, class_name: str, path: str | os.PathLike, kwargs: dict):
    """Load a stock ``VQModel`` / ``AutoencoderKL`` folder into ``cls`` (module docstring)."""
    stock_cls, target = _STOCK_CLASSES[class_name]
    if not issubclass(cls, target):
        raise UserInputError(f"{os.fspath(path)} holds a stock diffusers {class_name}; load it with "
                             f"{target.__name__}.from_pretrained (or load_first_stage), not {cls.__name__}")
    kwargs = dict(kwargs)
    output_loading_info = kwargs.pop("output_loading_info", False)
    torch_dtype = kwargs.pop("torch_dtype", None)
    params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in params}
    stock = stock_cls.from_pretrained(path, **kwargs)  # diffusers' own loading (local or Hub), float32
    config = {k: v for k, v in stock.config.items() if k in params}
    ignored = sorted(k for k in stock.config if not k.startswith("_") and k not in params)
    if stock_cls is VQModel:  # full-width Euclidean lookup: the stock codebook's own metric
        config.update(codebook_dim=None, use_l2_norm=False)
    model = cls(**{**config, **overrides})
    state = stock.state_dict()
    codebook = state.pop("quantize.embedding.weight", None)  # (K, vq_embed_dim); VQModel only
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shape mismatches
        missing, unexpected = [str(err).strip().splitlines()[-1].strip()], []
    missing = [k for k in missing if not k.startswith("quantize.")]  # our quantizer is set below
    if missing or unexpected:
        details = "; ".join(f"{kind}: {list(keys)[:3]}" for kind, keys in (("missing", missing),
                                                                          ("unexpected", unexpected)) if keys)
        raise UserInputError(f"the stock {class_name} in {os.fspath(path)} does not map onto {cls.__name__} "
                             f"({details}{'; ignored config: ' + str(ignored) if ignored else ''}); load it with "
                             f"diffusers.{class_name} or train a first stage with train_main.py")
    quantizer = model.quantize
    if (codebook is not None and tuple(codebook.shape) == tuple(quantizer.embed.shape)
            and isinstance(quantizer.project_in, torch.nn.Identity) and not quantizer.use_l2_norm):
        with torch.no_grad():
            quantizer.embed.copy_(codebook)
            quantizer.embed_sum.copy_(codebook * quantizer.cluster_size[:, None])
            quantizer.initialized.fill_(True)
    else:
        logger.warning("%s: the stock %s has no codebook %s can use; k-means initialises it on the first training "
                       "batch, so fine-tune the model before encoding with it", os.fspath(path), class_name,
                       cls.__name__)
    if torch_dtype is not None:  # as from_pretrained(torch_dtype=...) does: _keep_in_fp32_modules stay float32
        for name, child in model.named_children():
            if name not in cls._keep_in_fp32_modules:
                child.to(torch_dtype)
    model.register_to_config(_name_or_path=os.fspath(path))
    model.eval()
    if output_loading_info:
        return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    return model


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

    A stock diffusers ``VQModel`` / ``AutoencoderKL`` folder is converted (module docstring).

    Raises:
        UserInputError: the folder is missing, holds another class, or another format version.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise UserInputError(f"no first-stage model at {path} (config.json missing); train one with train_main.py")
    config = json.loads(config_file.read_text())
    class_name = config.get("_class_name")
    if class_name in _STOCK_CLASSES:  # a stock diffusers folder: converted (module docstring)
        return _STOCK_CLASSES[class_name][1].from_pretrained(path, **kwargs)
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
