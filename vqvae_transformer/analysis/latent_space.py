"""Latent-space analyser: how the tokenizer's latent space is shaped, and how ready it is for a prior.

    python -m vqvae_transformer.analysis.latent_space --model_dir outputs/vqvae_transformer --output_dir latent \\
        [--data_dir DATA] [--max_samples N] [--seed S] [--judge]

Encodes the model's validation split (or every image of ``--data_dir``) and measures, from the data:

* the distribution of the pre-quantization latents per channel (moments, distance from N(0, 1), correlations);
* the structure of the codebook (code distances, usage, dead codes, perplexity, a 2-D PCA projection);
* the continuity of the latent space (decoded linear interpolations, stability of the tokens under small noise);
* the distribution of the reconstruction error per image (and in the judge's feature space with ``--judge``);
* one readiness score in [0, 1] with recommendations naming ``train_main.py`` flags.

It writes ``latent_report.json``, ``latent_report.md`` and figures under ``figures/`` (and, with ``--judge``, the
cached judge under ``judge/``, as validate_main.py does).

Both first stages of this project are *quantized*: :class:`~vqvae_transformer.models.first_stage.VQFirstStage`
quantizes the encoder + ``quant_conv`` output, :class:`~vqvae_transformer.models.first_stage.KLFirstStage` quantizes
the posterior mean, and the prior is trained on the tokens of either. So both get code indices and a codebook
analysis. A plain diffusers ``AutoencoderKL`` (no quantizer) can be analysed too, as a continuous latent space:
its indices are None and the codebook analysis says it does not apply.

In Python, call the steps one by one::

    analyzer = LatentSpaceAnalyzer.from_pretrained("outputs/vqvae_transformer")
    analyzer.collect_latent_representations(images)          # [N, C, R, R] in [-1, 1]
    analyzer.analyze_latent_distribution()
    analyzer.analyze_codebook_structure()
    analyzer.analyze_latent_continuity(num_pairs=8, steps=8)
    analyzer.analyze_reconstruction_error_distribution(judge=None)
    analyzer.readiness_report()                               # runs any step not run yet, with defaults
    analyzer.save_report("latent")
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import AutoencoderKL, VQModel
from scipy import stats

from ..atomic import write_json_atomic, write_text_atomic
from ..errors import UserInputError
from ..figures import to_unit
from ..layout import FIGURES_FOLDER
from ..models.first_stage import load_first_stage
from ..models.quantizer import code_statistics
from ..models.reconstruction import code_counts
from ..output_folder import prepare_output_folder
from .inputs import add_model_input_args, check_model_inputs, load_images, locate_first_stage

logger = logging.getLogger(__name__)

TOOL_NAME = "vqvae_transformer.analysis.latent_space"
REPORT_JSON = "latent_report.json"
REPORT_MD = "latent_report.md"
FIGURE_FILES = {
    "latent_distribution": "latent_distribution.png",
    "codebook_pca": "codebook_pca.png",
    "interpolation": "interpolation_strips.png",
    "reconstruction_error": "reconstruction_error_histogram.png",
    "readiness_radar": "readiness_radar.png",
}

# Readiness: weights of the sub-scores (renormalised over the sub-scores that apply; see readiness_report).
READINESS_WEIGHTS = {
    "codebook_usage": 0.25,
    "latent_normality": 0.10,
    "interpolation_smoothness": 0.20,
    "quantization_consistency": 0.15,
    "reconstruction_fidelity": 0.30,
}
PSNR_FLOOR_DB = 20.0  # reconstruction fidelity 0 at or below this PSNR
PSNR_CEIL_DB = 35.0  # ... and 1 at or above this one
RECOMMEND_BELOW = 0.6  # a sub-score below this gets a recommendation
PERCENTILES = (5, 25, 50, 75, 95)
MAX_DIMS_SHOWN = 16  # latent channels drawn in the distribution figure
MAX_STRIPS_SHOWN = 4  # interpolation pairs drawn in the strip figure


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def psnr_score(psnr_db: float) -> float:
    """PSNR mapped linearly onto [0, 1]: ``clip((psnr - 20 dB) / (35 dB - 20 dB), 0, 1)``."""
    if not math.isfinite(psnr_db):
        return 1.0 if psnr_db > 0 else 0.0
    return float(np.clip((psnr_db - PSNR_FLOOR_DB) / (PSNR_CEIL_DB - PSNR_FLOOR_DB), 0.0, 1.0))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of images in [0, 1] (``inf`` for a zero error)."""
    return float("inf") if mse <= 0 else float(10.0 * math.log10(1.0 / mse))


def _jsonable(value: Any) -> Any:
    """Numbers as plain Python floats/ints, NaN and infinities as None (strict JSON), recursively."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


def _percentiles(values: np.ndarray) -> dict[str, float]:
    return {f"p{p}": float(np.percentile(values, p)) for p in PERCENTILES}


def _histogram(values: np.ndarray, bins: int) -> dict[str, list]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"counts": [], "bin_edges": []}
    counts, edges = np.histogram(finite, bins=max(1, min(bins, finite.size)))
    return {"counts": counts.tolist(), "bin_edges": edges.tolist()}


@dataclass
class LatentRepresentations:
    """What :meth:`LatentSpaceAnalyzer.collect_latent_representations` returns (all on the CPU, float32).

    Args:
        images: ``[N, C, R, R]`` the images, in [-1, 1].
        latents: ``[N, C_lat, h, w]`` pre-quantization latents (vq: encoder + ``quant_conv`` output; kl: the
            posterior mean).
        indices: ``[N, h, w]`` code indices (row-major), or None for a model without a quantizer.
        reconstructions: ``[N, C, R, R]`` decoded images in [-1, 1] (through the tokens when quantized).
        labels: ``[N]`` 0-based user labels, or None.
        paths: file path per image, or None.
    """

    images: torch.Tensor
    latents: torch.Tensor
    indices: torch.LongTensor | None
    reconstructions: torch.Tensor
    labels: torch.Tensor | None = None
    paths: list[str] | None = None


# ----------------------------------------------------------------------------------------------------------
# The analyser


class LatentSpaceAnalyzer:
    """Measurements of a first stage's latent space on a set of images.

    Args:
        model: a loaded first stage (:class:`VQFirstStage` or :class:`KLFirstStage`, e.g. from
            :func:`~vqvae_transformer.models.first_stage.load_first_stage`), or a plain diffusers
            ``AutoencoderKL`` (continuous latents, no codebook).
        batch_size: images encoded / decoded at once.
        seed: seeds every random choice (sub-samples, interpolation pairs, noise).

    The model is put in eval mode; nothing the analyser calls changes its weights or codebook statistics. Every
    ``analyze_*`` method stores its result in :attr:`results` under its aspect name and returns it.
    """

    def __init__(self, model, batch_size: int = 64, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        self.quantized = hasattr(model, "encode_to_tokens") and hasattr(model, "decode_tokens")
        if not self.quantized and not isinstance(model, AutoencoderKL):
            raise ValueError(f"{type(model).__name__} is not a first stage of this project nor a diffusers "
                             "AutoencoderKL; load it with vqvae_transformer.models.first_stage.load_first_stage")
        self.model = model.eval()
        self.kind = "vq" if isinstance(model, VQModel) else "kl"
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.representations: LatentRepresentations | None = None
        self.results: dict[str, dict] = {}
        self._figure_data: dict[str, Any] = {}

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> "LatentSpaceAnalyzer":
        """An analyser of the first stage saved in ``model_dir`` (a training output folder or its ``vqvae/``)."""
        return cls(load_first_stage(locate_first_stage(Path(model_dir))), **kwargs)

    # ------------------------------------------------------------------ model plumbing
    @property
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def _batched(self, fn, tensor: torch.Tensor) -> torch.Tensor:
        """``fn`` over ``tensor`` in chunks of ``batch_size`` on the model's device; results on the CPU."""
        chunks = [fn(tensor[i:i + self.batch_size].to(self._device)).cpu()
                  for i in range(0, tensor.shape[0], self.batch_size)]
        return torch.cat(chunks)

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, R, R]`` -> pre-quantization latents ``[B, C_lat, h, w]`` (float32)."""
        images = images.to(self._dtype)
        if isinstance(self.model, VQModel):  # encoder + quant_conv; VQModel.encode does not quantize
            return self.model.encode(images).latents.float()
        return self.model.encode(images).latent_dist.mode().float()  # posterior mean

    @torch.no_grad()
    def _indices(self, latents: torch.Tensor) -> torch.LongTensor:
        """Latents ``[B, C_lat, h, w]`` -> nearest-code indices ``[B, h, w]`` (no statistics change)."""
        return self.model.quantize.encode_indices(latents)

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Continuous latents ``[B, C_lat, h, w]`` -> images ``[B, C, R, R]`` in [-1, 1], quantized first when the
        model has a quantizer (what the prior's tokens would decode to)."""
        if self.quantized:
            out = self.model.decode_tokens(self._indices(latents))
        else:
            out = self.model.decode(latents.to(self._dtype)).sample
        return out.float().clamp(-1, 1)

    @torch.no_grad()
    def _decode_indices(self, indices: torch.LongTensor) -> torch.Tensor:
        return self.model.decode_tokens(indices).float().clamp(-1, 1)  # (B, C, R, R)

    def _require(self) -> LatentRepresentations:
        if self.representations is None:
            raise ValueError("no latents collected yet: call collect_latent_representations(images) first")
        return self.representations

    # ------------------------------------------------------------------ 1. collection
    @torch.no_grad()
    def collect_latent_representations(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                                       paths: Sequence[str] | None = None) -> LatentRepresentations:
        """Encode ``images`` and keep their latents, code indices and reconstructions for the analyses.

        Args:
            images: ``[N, C, R, R]`` in [-1, 1], ``C`` the model's input channels.
            labels: optional ``[N]`` 0-based user labels (kept for the report).
            paths: optional file path per image (named in the worst-reconstruction list).

        Returns:
            :class:`LatentRepresentations`; earlier results are discarded.

        Raises:
            ValueError: the images have the wrong shape or channels.
        """
        channels = int(self.model.config.in_channels)
        if images.dim() != 4 or images.shape[0] < 1 or images.shape[1] != channels:
            raise ValueError(f"images must have shape [N, {channels}, R, R] with N >= 1, got {tuple(images.shape)}")
        n = images.shape[0]
        if labels is not None and tuple(labels.shape) != (n,):
            raise ValueError(f"{n} images but labels of shape {tuple(labels.shape)}")
        if paths is not None and len(paths) != n:
            raise ValueError(f"{n} images but {len(paths)} paths")
        images = images.detach().float().cpu()
        latents = self._batched(self._encode, images)  # (N, C_lat, h, w)
        if self.quantized:
            indices = self._batched(self._indices, latents)  # (N, h, w)
            recon = self._batched(self._decode_indices, indices)  # (N, C, R, R)
        else:
            indices = None
            recon = self._batched(self._decode, latents)
        self.representations = LatentRepresentations(
            images=images, latents=latents, indices=indices, reconstructions=recon,
            labels=None if labels is None else labels.detach().cpu(), paths=None if paths is None else list(paths))
        self.results = {}
        self._figure_data = {}
        return self.representations

    # ------------------------------------------------------------------ 2. distribution
    def analyze_latent_distribution(self, max_values_per_dim: int = 20000) -> dict:
        """Per-channel statistics of the pre-quantization latents and their distance from a standard normal.

        Every spatial position of every image is one sample of the ``C_lat``-dimensional latent (at most
        ``max_values_per_dim`` positions, drawn with the analyser's seed).

        * ``mean``, ``std``, ``skew`` and ``kurtosis`` (``scipy.stats``; excess kurtosis, 0 for a normal) per channel.
        * ``ks_to_normal``: the Kolmogorov-Smirnov statistic (``scipy.stats.kstest`` against the exact N(0, 1) CDF)
          of each channel *after standardising it* (its own mean and std): the shape's distance from a Gaussian,
          in [0, 1].
        * ``wasserstein_to_normal``: ``scipy.stats.wasserstein_distance`` between the raw channel values and the
          N(0, 1) quantiles at ``(i + 0.5) / m`` (deterministic stand-ins for ``m`` normal samples): includes the
          scale and offset; ``wasserstein_to_normal_standardized`` the same after standardising.
        * ``correlation_mean_abs_offdiag``, ``correlation_max_abs_offdiag``: of the ``C_lat x C_lat`` Pearson
          correlation matrix (constant channels count as uncorrelated).
        * ``suggested_scaling_factor``: ``1 / std`` of all latent values (the rule diffusers' latent-diffusion
          models use), to bring the latents to unit variance for a diffusion prior.

        Sub-score ``latent_normality = 1 - mean over channels of ks_to_normal``.

        Returns:
            The dict above (lists per channel plus means), also stored in ``results["distribution"]``.
        """
        reps = self._require()
        if max_values_per_dim < 2:
            raise ValueError(f"max_values_per_dim must be at least 2, got {max_values_per_dim}")
        c = reps.latents.shape[1]
        z = reps.latents.permute(0, 2, 3, 1).reshape(-1, c).double().numpy()  # (N, C, h, w) -> (N*h*w, C)
        if z.shape[0] > max_values_per_dim:
            rows = np.random.default_rng(self.seed).choice(z.shape[0], max_values_per_dim, replace=False)
            z = z[np.sort(rows)]
        m = z.shape[0]
        mean, std = z.mean(axis=0), z.std(axis=0)  # (C,)
        safe_std = np.where(std > 0, std, 1.0)
        standardized = (z - mean) / safe_std  # (m, C)
        with np.errstate(all="ignore"):  # constant channels give NaN moments (reported as None)
            skew = stats.skew(z, axis=0)
            kurt = stats.kurtosis(z, axis=0)
        reference = stats.norm.ppf((np.arange(m) + 0.5) / m)  # (m,) N(0, 1) quantiles
        ks = np.array([stats.kstest(standardized[:, j], "norm").statistic for j in range(c)])
        w_raw = np.array([stats.wasserstein_distance(z[:, j], reference) for j in range(c)])
        w_std = np.array([stats.wasserstein_distance(standardized[:, j], reference) for j in range(c)])
        if c > 1:
            with np.errstate(all="ignore"):
                corr = np.nan_to_num(np.corrcoef(z, rowvar=False), nan=0.0)  # (C, C)
            off = np.abs(corr[~np.eye(c, dtype=bool)])
            corr_mean, corr_max = float(off.mean()), float(off.max())
        else:
            corr_mean = corr_max = 0.0
        overall_std = float(z.std())
        result = {
            "latent_channels": c, "values_per_dim": m, "token_grid": list(reps.latents.shape[2:]),
            "distance_measures": "ks_to_normal: Kolmogorov-Smirnov statistic of the standardised channel against "
                                 "N(0,1); wasserstein_to_normal: W1 of the raw channel against N(0,1) quantiles",
            "mean": mean.tolist(), "std": std.tolist(), "skew": skew.tolist(), "kurtosis": kurt.tolist(),
            "ks_to_normal": ks.tolist(), "wasserstein_to_normal": w_raw.tolist(),
            "wasserstein_to_normal_standardized": w_std.tolist(),
            "mean_abs_mean": float(np.abs(mean).mean()), "mean_std": float(std.mean()),
            "mean_abs_skew": float(np.nanmean(np.abs(skew))) if np.isfinite(skew).any() else None,
            "mean_excess_kurtosis": float(np.nanmean(kurt)) if np.isfinite(kurt).any() else None,
            "mean_ks_to_normal": float(ks.mean()), "mean_wasserstein_to_normal": float(w_raw.mean()),
            "mean_wasserstein_to_normal_standardized": float(w_std.mean()),
            "correlation_mean_abs_offdiag": corr_mean, "correlation_max_abs_offdiag": corr_max,
            "overall_std": overall_std,
            "suggested_scaling_factor": 1.0 / overall_std if overall_std > 0 else None,
            "score": float(np.clip(1.0 - ks.mean(), 0.0, 1.0)),
        }
        self._figure_data["latent_sample"] = z  # (m, C) for the histogram figure
        self.results["distribution"] = result
        return result

    # ------------------------------------------------------------------ 3. codebook
    @torch.no_grad()
    def analyze_codebook_structure(self) -> dict:
        """Geometry and usage of the codebook, in the quantizer's lookup space (``embed [K, d]``: after the
        ``codebook_dim`` projection and, with ``use_l2_norm``, on the unit sphere: where nearest codes are found).

        * ``nearest_neighbour_distance`` ``min`` / ``mean`` / ``std`` / ``max`` and ``cv`` (std / mean, the spread) of
          each code's distance to its nearest other code; ``mean_pairwise_distance`` over all pairs;
          ``near_duplicate_codes``: codes whose nearest neighbour is closer than 1 % of the mean pairwise distance.
        * ``codebook_usage``, ``codebook_perplexity``, ``normalized_entropy``, ``top_code_share`` and ``dead_codes``
          (never used) counted from the collected indices; ``restart_candidates``: codes whose EMA count is below
          the quantizer's ``dead_code_threshold`` (what training would restart next).
        * ``pca``: the share of variance of the first two principal components (numpy SVD of the centred codes).

        Sub-score ``codebook_usage = 0.5 * codebook_usage + 0.5 * normalized_entropy``.

        Returns:
            The dict above (``results["codebook"]``), or ``{"applicable": False, ...}`` for a model without a
            quantizer.
        """
        reps = self._require()
        if not self.quantized:
            result = {"applicable": False,
                      "reason": "this model has no quantizer (continuous latents): there is no codebook"}
            self.results["codebook"] = result
            return result
        quantizer = self.model.quantize
        embed = quantizer.embed.detach().float().cpu()  # (K, d)
        k, d = embed.shape
        counts = code_counts(reps.indices, k)  # (K,)
        usage = code_statistics(counts)
        nn_dist, mean_pairwise = _code_distances(embed)
        dead = torch.nonzero(counts == 0).flatten().tolist()
        threshold = float(getattr(quantizer, "dead_code_threshold", 0.0))
        restart = int((quantizer.cluster_size.detach().cpu() < threshold).sum())
        projection, explained = _pca_2d(embed.double().numpy())  # (K, 2), (2,)
        if nn_dist.size:
            nn_stats = {"min": float(nn_dist.min()), "mean": float(nn_dist.mean()), "std": float(nn_dist.std()),
                        "max": float(nn_dist.max()),
                        "cv": float(nn_dist.std() / nn_dist.mean()) if nn_dist.mean() > 0 else None}
            duplicates = int((nn_dist < 0.01 * mean_pairwise).sum()) if mean_pairwise > 0 else k
        else:
            nn_stats, duplicates = None, 0
        result = {
            "applicable": True, "codebook_size": k, "lookup_dim": d,
            "lookup_space": "unit sphere (l2-normalised)" if getattr(quantizer, "use_l2_norm", False)
            else "Euclidean",
            **usage, "dead_codes": len(dead), "dead_code_ids": dead,
            "restart_candidates": restart, "dead_code_threshold": threshold,
            "mean_pairwise_distance": mean_pairwise, "nearest_neighbour_distance": nn_stats,
            "near_duplicate_codes": duplicates,
            "pca": {"explained_variance_ratio": explained.tolist()},
            "score": float(np.clip(0.5 * usage["codebook_usage"] + 0.5 * usage["normalized_entropy"], 0.0, 1.0)),
        }
        self._figure_data["pca"] = (projection, counts.numpy())
        self.results["codebook"] = result
        return result

    # ------------------------------------------------------------------ 4. continuity
    @torch.no_grad()
    def interpolate(self, index_a: int, index_b: int, steps: int = 8) -> torch.Tensor:
        """Decoded linear interpolation between collected images ``index_a`` and ``index_b``.

        ``z_t = (1 - t) z_a + t z_b`` for ``t`` in ``linspace(0, 1, steps)`` in the continuous latent space, each
        ``z_t`` quantized (when the model has a quantizer) and decoded; ``t = 0`` and ``t = 1`` give exactly the
        endpoints' reconstructions.

        Returns:
            Frames ``[steps, C, R, R]`` in [-1, 1].
        """
        return self._batched(self._decode, self._latent_path(index_a, index_b, steps))  # (S, C, R, R)

    def _latent_path(self, index_a: int, index_b: int, steps: int) -> torch.Tensor:
        """``(1 - t) z_a + t z_b`` for ``t`` in ``linspace(0, 1, steps)``: ``[S, C_lat, h, w]`` (exact endpoints)."""
        reps = self._require()
        if steps < 2:
            raise ValueError(f"steps must be at least 2 (the two endpoints), got {steps}")
        t = torch.linspace(0.0, 1.0, steps)[:, None, None, None]  # (S, 1, 1, 1)
        za, zb = reps.latents[index_a][None], reps.latents[index_b][None]  # (1, C_lat, h, w)
        return (1 - t) * za + t * zb  # (S, C_lat, h, w)

    @torch.no_grad()
    def analyze_latent_continuity(self, num_pairs: int = 8, steps: int = 8, noise_scale: float = 0.05) -> dict:
        """Smoothness of decoded interpolations and stability of the tokens under small latent noise.

        *Smoothness.* For ``num_pairs`` random pairs of collected images (the analyser's seed), the ``steps``
        frames of :meth:`interpolate` (images in [0, 1]) give ``steps - 1`` consecutive differences
        ``d_i = RMS(frame_{i+1} - frame_i)``; a pair's variation is ``cv = std(d) / mean(d)`` (0 when all steps are
        equal, i.e. the decoded path is even; 0 when the endpoints decode alike). Sub-score
        ``interpolation_smoothness = 1 / (1 + mean cv over pairs)``.

        *Quantization consistency.* Gaussian noise of ``noise_scale`` times each latent channel's standard
        deviation is added to every collected latent. Reported: ``code_change_fraction`` (token positions whose
        code changes; quantized models only), and the decoded change ``decoded_change_rms`` / ``_psnr`` (noisy
        decode against the clean reconstruction, [0, 1] units). Sub-score ``quantization_consistency =
        1 - code_change_fraction`` for a quantized model, ``clip((decoded_change_psnr - 20) / 15, 0, 1)`` for a
        continuous one.

        Returns:
            The dict above (``results["continuity"]``).
        """
        reps = self._require()
        n = reps.latents.shape[0]
        if n < 2:
            raise ValueError(f"interpolation needs at least 2 images, got {n}")
        if num_pairs < 1 or steps < 2:
            raise ValueError(f"num_pairs must be >= 1 and steps >= 2, got {num_pairs}, {steps}")
        if not noise_scale > 0:
            raise ValueError(f"noise_scale must be positive (a fraction of the latent std, e.g. 0.05), got "
                             f"{noise_scale}")
        generator = torch.Generator().manual_seed(self.seed)
        pairs = [tuple(torch.randperm(n, generator=generator)[:2].tolist()) for _ in range(num_pairs)]
        pair_rows, strips = [], []
        for a, b in pairs:
            frames = self.interpolate(a, b, steps)  # (S, C, R, R)
            unit = to_unit(frames)
            diffs = (unit[1:] - unit[:-1]).pow(2).mean(dim=(1, 2, 3)).sqrt().double().numpy()  # (S-1,)
            cv = float(diffs.std() / diffs.mean()) if diffs.mean() > 0 else 0.0
            row = {"a": a, "b": b, "step_rms": diffs.tolist(), "cv": cv}
            if self.quantized:  # share of token positions that change between consecutive frames
                tokens = self._batched(self._indices, self._latent_path(a, b, steps))  # (S, h, w)
                row["token_change_per_step"] = (tokens[1:] != tokens[:-1]).float().mean(dim=(1, 2)).tolist()
            pair_rows.append(row)
            strips.append(frames)
        cvs = np.array([r["cv"] for r in pair_rows])
        smoothness = {"num_pairs": num_pairs, "steps": steps, "mean_cv": float(cvs.mean()),
                      "max_cv": float(cvs.max()), "score": float(1.0 / (1.0 + cvs.mean())), "pairs": pair_rows}

        std_c = reps.latents.std(dim=(0, 2, 3))  # (C_lat,)
        noise_gen = torch.Generator().manual_seed(self.seed + 1)
        noise = torch.randn(reps.latents.shape, generator=noise_gen) * (noise_scale * std_c)[None, :, None, None]
        noisy = reps.latents + noise  # (N, C_lat, h, w)
        decoded = self._batched(self._decode, noisy)  # (N, C, R, R)
        change_mse = (to_unit(decoded) - to_unit(reps.reconstructions)).pow(2).mean(dim=(1, 2, 3)).double()  # (N,)
        change_psnr = psnr_from_mse(float(change_mse.mean()))
        consistency = {"noise_scale": noise_scale, "noise": "Gaussian, noise_scale x per-channel latent std",
                       "decoded_change_rms": float(change_mse.sqrt().mean()), "decoded_change_psnr": change_psnr}
        if self.quantized:
            noisy_idx = self._batched(self._indices, noisy)  # (N, h, w)
            changed = float((noisy_idx != reps.indices).float().mean())
            consistency.update(code_change_fraction=changed, score=1.0 - changed)
        else:
            consistency.update(code_change_fraction=None, score=psnr_score(change_psnr))
        result = {"smoothness": smoothness, "consistency": consistency}
        self._figure_data["strips"] = (pairs, strips)
        self.results["continuity"] = result
        return result

    # ------------------------------------------------------------------ 5. reconstruction error
    @torch.no_grad()
    def analyze_reconstruction_error_distribution(self, judge=None, worst_k: int = 8, bins: int = 20) -> dict:
        """Per-image reconstruction error: pixel MSE and PSNR (images in [0, 1]), histograms, percentiles and
        the ``worst_k`` images; in the judge's feature space too when a judge is given.

        ``psnr`` is over all pixels pooled (as torchmetrics and the validation report compute it),
        ``psnr_per_image`` per image. With ``judge`` (a :class:`vqvae_transformer.models.judge.Judge`):
        ``feature_distance_mean`` (L2 between the penultimate features of each image and its reconstruction),
        ``feature_distance_relative`` (that over the mean distance of real features to their centroid) and
        ``label_agreement`` (share of images whose reconstruction the judge assigns to the same user).

        Sub-score ``reconstruction_fidelity = clip((psnr - 20 dB) / 15 dB, 0, 1)``.

        Returns:
            The dict above (``results["reconstruction"]``).
        """
        reps = self._require()
        if worst_k < 1 or bins < 1:
            raise ValueError(f"worst_k and bins must be positive, got {worst_k}, {bins}")
        mse = (to_unit(reps.images) - to_unit(reps.reconstructions)).pow(2).mean(dim=(1, 2, 3)).double().numpy()  # (N,)
        psnr = 10.0 * np.log10(1.0 / np.maximum(mse, 1e-10))  # (N,) dB, capped at 100 dB
        pooled = psnr_from_mse(float(mse.mean()))
        order = np.argsort(-mse, kind="stable")[:worst_k]
        worst = []
        for i in order.tolist():
            row = {"index": i, "mse": float(mse[i]), "psnr": float(psnr[i])}
            if reps.paths is not None:
                row["path"] = reps.paths[i]
            if reps.labels is not None:
                row["label"] = int(reps.labels[i])
            worst.append(row)
        result = {
            "num_images": int(mse.size), "psnr": pooled, "psnr_mean_per_image": float(psnr.mean()),
            "mse_mean": float(mse.mean()), "mse_percentiles": _percentiles(mse),
            "psnr_percentiles": _percentiles(psnr), "psnr_histogram": _histogram(psnr, bins),
            "mse_histogram": _histogram(mse, bins), "mse_per_image": mse.tolist(), "psnr_per_image": psnr.tolist(),
            "worst": worst, "judge": None, "score": psnr_score(pooled),
        }
        if judge is not None:
            result["judge"] = _judge_errors(judge, reps.images, reps.reconstructions)
        self._figure_data["reconstruction"] = (mse, psnr)
        self.results["reconstruction"] = result
        return result

    # ------------------------------------------------------------------ 6. readiness
    def readiness_report(self) -> dict:
        """One readiness score in [0, 1] for training a prior on this latent space, with its sub-scores and
        recommendations. Runs, with their defaults, the analyses not run yet.

        Sub-scores (each in [0, 1], defined in the method that measures it)::

            codebook_usage           = 0.5 * codebook_usage + 0.5 * normalized_entropy        (quantized only)
            latent_normality         = 1 - mean_c KS(standardised channel c, N(0, 1))
            interpolation_smoothness = 1 / (1 + mean over pairs of std(d) / mean(d))
            quantization_consistency = 1 - code_change_fraction
                                       (continuous model: clip((decoded_change_psnr_dB - 20) / 15, 0, 1))
            reconstruction_fidelity  = clip((PSNR_dB - 20) / 15, 0, 1)

        Score::

            readiness = sum_a w_a * s_a / sum_a w_a     over the sub-scores a that apply, with
            w = {codebook_usage: 0.25, latent_normality: 0.10, interpolation_smoothness: 0.20,
                 quantization_consistency: 0.15, reconstruction_fidelity: 0.30}

        (without a codebook the remaining weights are renormalised to sum to 1). A sub-score below 0.6 gets a
        recommendation naming ``train_main.py`` flags.

        Returns:
            ``{"score", "sub_scores", "weights", "formula", "recommendations"}`` (``results["readiness"]``).
        """
        self._require()
        if "distribution" not in self.results:
            self.analyze_latent_distribution()
        if "codebook" not in self.results:
            self.analyze_codebook_structure()
        if "continuity" not in self.results:
            self.analyze_latent_continuity()
        if "reconstruction" not in self.results:
            self.analyze_reconstruction_error_distribution()
        r = self.results
        sub = {}
        if r["codebook"].get("applicable"):
            sub["codebook_usage"] = r["codebook"]["score"]
        sub["latent_normality"] = r["distribution"]["score"]
        sub["interpolation_smoothness"] = r["continuity"]["smoothness"]["score"]
        sub["quantization_consistency"] = r["continuity"]["consistency"]["score"]
        sub["reconstruction_fidelity"] = r["reconstruction"]["score"]
        weights = {a: READINESS_WEIGHTS[a] / sum(READINESS_WEIGHTS[b] for b in sub) for a in sub}
        score = float(sum(weights[a] * sub[a] for a in sub))
        result = {
            "score": float(np.clip(score, 0.0, 1.0)), "sub_scores": sub, "weights": weights,
            "formula": "readiness = sum_a w_a * s_a / sum_a w_a over the sub-scores that apply; w = "
                       + ", ".join(f"{a}: {w}" for a, w in READINESS_WEIGHTS.items()),
            "recommend_below": RECOMMEND_BELOW,
            "recommendations": self._recommendations(sub),
        }
        self.results["readiness"] = result
        return result

    analyze_for_diffusion = readiness_report  # the name the issue uses

    def _recommendations(self, sub: dict[str, float]) -> list[dict]:
        """One recommendation per sub-score below :data:`RECOMMEND_BELOW`, with the model's current settings."""
        cfg = self.model.config
        get = lambda key: getattr(cfg, key, None) if not isinstance(cfg, dict) else cfg.get(key)  # noqa: E731
        r = self.results
        out = []

        def add(aspect: str, text: str) -> None:
            if sub.get(aspect, 1.0) < RECOMMEND_BELOW:
                out.append({"aspect": aspect, "sub_score": sub[aspect], "recommendation": text})

        if "codebook_usage" in sub:
            cb = r["codebook"]
            k = cb["codebook_size"]
            add("codebook_usage",
                f"only {cb['codebook_usage']:.1%} of {k} codes are used (normalised entropy "
                f"{cb['normalized_entropy']:.2f}, {cb['dead_codes']} dead): retrain with a higher "
                f"--dead_code_threshold (now {get('dead_code_threshold')}; codes whose EMA count per step falls below "
                f"it are restarted, so a higher value restarts more; near the mean code count it inflates usage "
                f"with near-identical codes), a low-dimensional l2-normalised lookup --codebook_dim 8 --use_l2_norm "
                f"(now {get('codebook_dim')}, l2 {get('use_l2_norm')}), --restart_sampling error, or a smaller "
                f"--codebook_size (e.g. {max(2, k // 2)}) if the data has few distinct patterns")
        dist = r["distribution"]
        scale = dist["suggested_scaling_factor"]
        add("latent_normality",
            f"the latent channels are far from Gaussian (mean KS {dist['mean_ks_to_normal']:.2f}, mean |skew| "
            f"{dist['mean_abs_skew'] if dist['mean_abs_skew'] is None else round(dist['mean_abs_skew'], 2)}): the "
            f"GPT-2 prior models tokens and does not need this, a continuous (diffusion) prior does: "
            + ("raise the KL first stage's kl_weight (a config entry; train_main.py has no flag for it)"
               if self.kind == "kl" else "train a KL first stage (--first_stage kl), whose KL term regularises "
               "the latents,")
            + f" and scale the latents by {'n/a' if scale is None else f'{scale:.4g}'} (1 / latent std) before "
            f"diffusion")
        smooth = r["continuity"]["smoothness"]
        add("interpolation_smoothness",
            f"decoded interpolations move unevenly (mean step variation {smooth['mean_cv']:.2f}): more latent "
            f"channels (--latent_channels, now {get('latent_channels')}), a larger --codebook_size (finer steps; "
            f"now {get('num_vq_embeddings')}) or a lower --commitment_beta (now {get('commitment_beta')}) loosen "
            f"the latents; more --vqvae_steps also help")
        cons = r["continuity"]["consistency"]
        if cons["code_change_fraction"] is not None:
            what = (f"{cons['code_change_fraction']:.1%} of the tokens change under latent noise of "
                    f"{cons['noise_scale']:g} x the latent std, so the encoder outputs lie near code boundaries")
        else:
            what = (f"noise of {cons['noise_scale']:g} x the latent std changes the decode to "
                    f"{cons['decoded_change_psnr']:.1f} dB")
        add("quantization_consistency",
            f"{what}: a higher --commitment_beta (now {get('commitment_beta')}) pulls encoder outputs onto their "
            f"codes; a smaller --codebook_dim (now {get('codebook_dim')}) or --codebook_size (now "
            f"{get('num_vq_embeddings')}) spaces the codes further apart")
        rec = r["reconstruction"]
        add("reconstruction_fidelity",
            f"reconstruction PSNR {rec['psnr']:.1f} dB (score 0 at {PSNR_FLOOR_DB:g} dB, 1 at {PSNR_CEIL_DB:g} dB): "
            f"train stage 1 longer (--vqvae_steps), wider (--block_out_channels) or with more --latent_channels "
            f"(now {get('latent_channels')}); --lpips on where its weights are available")
        return out

    # ------------------------------------------------------------------ outputs
    def report(self) -> dict:
        """Every result as a JSON-ready dict (the content of ``latent_report.json``); runs the readiness report
        (and with it any analysis not run yet) first."""
        reps = self._require()
        if "readiness" not in self.results:
            self.readiness_report()
        cfg = self.model.config
        model = {"class": type(self.model).__name__, "kind": self.kind, "quantized": self.quantized,
                 "resolution": int(reps.images.shape[-1]), "channels": int(reps.images.shape[1]),
                 "latent_channels": int(reps.latents.shape[1]), "token_grid": list(reps.latents.shape[2:]),
                 "codebook_size": getattr(cfg, "num_vq_embeddings", None) if self.quantized else None,
                 "scaling_factor": getattr(cfg, "scaling_factor", None)}
        return _jsonable({"model": model, "num_images": int(reps.images.shape[0]), "seed": self.seed,
                          "readiness": self.results["readiness"], **{k: v for k, v in self.results.items()
                                                                      if k != "readiness"}})

    def report_files(self) -> list[str]:
        """Relative paths :meth:`save_report` writes (register them in an output manifest before writing)."""
        figures = [f"{FIGURES_FOLDER}/{name}" for key, name in FIGURE_FILES.items()
                   if key != "codebook_pca" or self.quantized]
        return [REPORT_JSON, REPORT_MD] + figures

    def save_report(self, output_dir: str | Path, source: str | None = None) -> list[Path]:
        """Write ``latent_report.json``, ``latent_report.md`` and the figures into ``output_dir`` (atomically).

        Args:
            output_dir: the folder (created if missing).
            source: where the images came from, recorded in the report.

        Returns:
            The paths written.
        """
        output_dir = Path(output_dir)
        report = self.report()
        if source is not None:
            report["source"] = source
        report["figures"] = {}
        written = []
        for key, path in self._save_figures(output_dir / FIGURES_FOLDER).items():
            report["figures"][key] = f"{FIGURES_FOLDER}/{path.name}"
            written.append(path)
        written.append(write_json_atomic(output_dir / REPORT_JSON, report))
        written.append(write_text_atomic(output_dir / REPORT_MD, format_markdown(report)))
        return written

    def _save_figures(self, folder: Path) -> dict[str, Path]:
        from ..figures import image_grid, plt, save_figure

        r, data = self.results, self._figure_data
        paths = {}
        paths["latent_distribution"] = _distribution_figure(data["latent_sample"], r["distribution"],
                                                            folder / FIGURE_FILES["latent_distribution"],
                                                            plt, save_figure)
        if r["codebook"].get("applicable"):
            projection, counts = data["pca"]
            paths["codebook_pca"] = _pca_figure(projection, counts, r["codebook"],
                                                folder / FIGURE_FILES["codebook_pca"], plt, save_figure)
        pairs, strips = data["strips"]
        paths["interpolation"] = _strips_figure(pairs, strips, r["continuity"]["smoothness"],
                                                folder / FIGURE_FILES["interpolation"], plt, save_figure, image_grid)
        mse, psnr = data["reconstruction"]
        paths["reconstruction_error"] = _error_figure(mse, psnr, r["reconstruction"],
                                                      folder / FIGURE_FILES["reconstruction_error"], plt, save_figure)
        paths["readiness_radar"] = _radar_figure(r["readiness"], folder / FIGURE_FILES["readiness_radar"], plt,
                                                 save_figure)
        return paths


# ----------------------------------------------------------------------------------------------------------
# Measurements used by the analyser


def _code_distances(embed: torch.Tensor, chunk: int = 1024) -> tuple[np.ndarray, float]:
    """Nearest-other-code distance per code ``[K]`` and the mean distance over all pairs, from ``embed [K, d]``
    (row chunks, so large codebooks need no ``K x K`` matrix at once)."""
    k = embed.shape[0]
    if k < 2:
        return np.zeros(0), 0.0
    nearest, total = [], 0.0
    for start in range(0, k, chunk):
        block = torch.cdist(embed[start:start + chunk].double(), embed.double(),
                            compute_mode="donot_use_mm_for_euclid_dist")  # (k_chunk, K)
        rows = torch.arange(block.shape[0])
        block[rows, start + rows] = 0.0
        total += float(block.sum())
        block[rows, start + rows] = float("inf")
        nearest.append(block.min(dim=1).values)
    return torch.cat(nearest).numpy(), total / (k * (k - 1))


def _pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal coordinates ``[K, 2]`` of ``points [K, d]`` and their shares of the variance ``[2]``
    (numpy SVD of the centred points; zero columns where ``d`` or ``K`` allow fewer than two components)."""
    centred = points - points.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)  # vt: (min(K, d), d)
    comps = min(2, vt.shape[0])
    projection = np.zeros((points.shape[0], 2))
    projection[:, :comps] = centred @ vt[:comps].T
    variance = s ** 2
    explained = np.zeros(2)
    if variance.sum() > 0:
        explained[:comps] = variance[:comps] / variance.sum()
    return projection, explained


@torch.no_grad()
def _judge_errors(judge, images: torch.Tensor, reconstructions: torch.Tensor) -> dict:
    """Reconstruction error in the judge's feature space (see ``analyze_reconstruction_error_distribution``)."""
    from ..models.judge import features, predict

    if judge.channels != images.shape[1]:
        raise ValueError(f"the judge reads {judge.channels}-channel images, these have {images.shape[1]}")
    real = features(judge, images).double()  # (N, F)
    recon = features(judge, reconstructions).double()  # (N, F)
    distance = (real - recon).norm(dim=1)  # (N,)
    spread = float((real - real.mean(dim=0, keepdim=True)).norm(dim=1).mean())
    agreement = float((predict(judge, images) == predict(judge, reconstructions)).float().mean())
    return {"feature_distance_mean": float(distance.mean()), "feature_distance_percentiles":
            _percentiles(distance.numpy()), "real_feature_spread": spread,
            "feature_distance_relative": float(distance.mean()) / spread if spread > 0 else None,
            "label_agreement": agreement}


# ----------------------------------------------------------------------------------------------------------
# Figures (each drawn from the results it shows)


def _distribution_figure(sample: np.ndarray, dist: dict, path: Path, plt, save_figure) -> Path:
    """Histogram of each of the first 16 latent channels against the N(0, 1) density."""
    c = sample.shape[1]
    shown = min(c, MAX_DIMS_SHOWN)
    cols = min(4, shown)
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    for j in range(rows * cols):
        ax = axes[j // cols][j % cols]
        if j >= shown:
            ax.set_axis_off()
            continue
        values = sample[:, j]
        low, high = min(values.min(), -3.0), max(values.max(), 3.0)
        ax.hist(values, bins=40, density=True, color="tab:blue", alpha=0.7, label="latent")
        grid = np.linspace(low, high, 200)
        ax.plot(grid, stats.norm.pdf(grid), color="black", lw=1, label="N(0, 1)")
        if dist["std"][j] > 0:  # the channel's own normal fit: its shape against a Gaussian's
            ax.plot(grid, stats.norm.pdf(grid, dist["mean"][j], dist["std"][j]), color="tab:orange", lw=0.8,
                    ls="--", label="N(mean, std)")
        ax.set_title(f"channel {j}: mean {dist['mean'][j]:.2f}, std {dist['std'][j]:.2f}, "
                     f"KS {dist['ks_to_normal'][j]:.2f}", fontsize=7)
        ax.set_xlabel("latent value", fontsize=7)
        ax.set_ylabel("density", fontsize=7)
        ax.tick_params(labelsize=6)
        if j == 0:
            ax.legend(fontsize=6)
    fig.suptitle(f"pre-quantization latent values per channel ({shown} of {c} shown, {sample.shape[0]} positions); "
                 f"mean KS to N(0,1) of the standardised channels {dist['mean_ks_to_normal']:.3f}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _pca_figure(projection: np.ndarray, counts: np.ndarray, cb: dict, path: Path, plt, save_figure) -> Path:
    """Codes on their first two principal components, coloured by how often the images used them."""
    fig, ax = plt.subplots(figsize=(6, 5))
    used = counts > 0
    colour = np.log10(1 + counts.astype(float))
    if (~used).any():
        ax.scatter(projection[~used, 0], projection[~used, 1], marker="x", s=14, color="lightgrey",
                   label=f"unused ({int((~used).sum())})")
    scatter = ax.scatter(projection[used, 0], projection[used, 1], c=colour[used], cmap="viridis", s=16,
                         label=f"used ({int(used.sum())})")
    fig.colorbar(scatter, ax=ax, label="log10(1 + uses on these images)")
    explained = cb["pca"]["explained_variance_ratio"]
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of code variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of code variance)")
    ax.set_title(f"codebook ({cb['codebook_size']} codes, lookup dim {cb['lookup_dim']}, {cb['lookup_space']}): "
                 f"usage {cb['codebook_usage']:.1%}, perplexity {cb['codebook_perplexity']:.1f}", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def _strips_figure(pairs, strips, smooth: dict, path: Path, plt, save_figure, image_grid) -> Path:
    """The decoded interpolation frames of the first pairs, one row per pair."""
    shown = min(len(strips), MAX_STRIPS_SHOWN)
    steps = strips[0].shape[0]
    frames = torch.cat([to_unit(s) for s in strips[:shown]])  # (shown*S, C, R, R)
    grid = image_grid(frames, nrow=steps)
    side = frames.shape[-1] + 1  # make_grid's padding of 1
    fig, ax = plt.subplots(figsize=(0.9 * steps + 1.5, 0.9 * shown + 0.9))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([side * (i + 0.5) for i in range(steps)],
                  [f"{t:.2f}" for t in np.linspace(0.0, 1.0, steps)], fontsize=7)
    ax.set_yticks([side * (i + 0.5) for i in range(shown)],
                  [f"{a} -> {b} (cv {smooth['pairs'][i]['cv']:.2f})" for i, (a, b) in enumerate(pairs[:shown])],
                  fontsize=7)
    ax.set_xlabel("interpolation weight t (0: image a, 1: image b; quantized before decoding)")
    ax.set_ylabel("image a -> image b")
    ax.set_title(f"decoded linear latent interpolations; smoothness score {smooth['score']:.3f} "
                 f"(mean step variation {smooth['mean_cv']:.3f})", fontsize=9)
    return save_figure(fig, path)


def _error_figure(mse: np.ndarray, psnr: np.ndarray, rec: dict, path: Path, plt, save_figure) -> Path:
    """Histograms of the per-image PSNR (with percentiles) and MSE."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4))
    bins = max(1, min(20, psnr.size))
    left.hist(psnr, bins=bins, color="tab:blue")
    for name, value in rec["psnr_percentiles"].items():
        left.axvline(value, color="black", lw=0.8, ls="--")
        left.text(value, left.get_ylim()[1] * 0.95, name, fontsize=6, rotation=90, va="top")
    left.set_xlabel("PSNR per image (dB)")
    left.set_ylabel("images")
    left.set_title(f"reconstruction PSNR: pooled {rec['psnr']:.2f} dB over {rec['num_images']} images", fontsize=9)
    right.hist(mse, bins=bins, color="tab:red")
    right.set_xlabel("pixel MSE per image (images in [0, 1])")
    right.set_ylabel("images")
    right.set_title(f"reconstruction MSE: median {rec['mse_percentiles']['p50']:.4g}, "
                    f"p95 {rec['mse_percentiles']['p95']:.4g}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def _radar_figure(readiness: dict, path: Path, plt, save_figure) -> Path:
    """The sub-scores on a polar (radar) chart, radius 0..1."""
    names = list(readiness["sub_scores"])
    values = [readiness["sub_scores"][n] for n in names]
    angles = np.linspace(0, 2 * np.pi, len(names), endpoint=False).tolist()
    fig = plt.figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot(projection="polar")
    ax.plot(angles + angles[:1], values + values[:1], color="tab:blue", marker="o")
    ax.fill(angles + angles[:1], values + values[:1], color="tab:blue", alpha=0.2)
    ax.set_xticks(angles, [n.replace("_", "\n") for n in names], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_rlabel_position(math.degrees(np.pi / len(names)))  # radius labels between the first two axes
    ax.set_yticks([0.25, 0.5, 0.75, 1.0], ["0.25", "0.5", "0.75", "1"], fontsize=6)
    ax.set_title(f"readiness sub-scores (0 worst, 1 best); weighted score {readiness['score']:.3f}", fontsize=9)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _fmt(value, spec: str = ".4g") -> str:
    return "n/a" if value is None else format(value, spec)


def format_markdown(report: dict) -> str:
    """``latent_report.md`` from the report dict (:meth:`LatentSpaceAnalyzer.report` plus figures/source)."""
    m, ready = report["model"], report["readiness"]
    lines = ["# Latent-space analysis", "",
             f"Model: `{m['class']}` ({m['kind']}, {'quantized' if m['quantized'] else 'continuous'}), "
             f"{m['channels']} channel(s) at {m['resolution']} px, {m['latent_channels']} latent channels on a "
             f"{m['token_grid'][0]}x{m['token_grid'][1]} grid"
             + (f", {m['codebook_size']} codes" if m["codebook_size"] else "") + ".",
             f"Images: {report['num_images']}" + (f" ({report['source']})" if report.get("source") else "")
             + f"; seed {report['seed']}.", "",
             f"## Readiness: {ready['score']:.3f}", "",
             "| aspect | sub-score | weight |", "|---|---|---|"]
    lines += [f"| {a} | {s:.3f} | {ready['weights'][a]:.3f} |" for a, s in ready["sub_scores"].items()]
    lines += ["", f"`{ready['formula']}`", ""]
    if ready["recommendations"]:
        lines += ["### Recommendations", ""]
        lines += [f"- **{r['aspect']}** ({r['sub_score']:.2f}): {r['recommendation']}"
                  for r in ready["recommendations"]]
    else:
        lines += [f"No sub-score is below {ready['recommend_below']}: no recommendation."]
    d = report["distribution"]
    lines += ["", "## Latent distribution", "",
              f"- mean |mean| {_fmt(d['mean_abs_mean'])}, mean std {_fmt(d['mean_std'])}, mean |skew| "
              f"{_fmt(d['mean_abs_skew'])}, mean excess kurtosis {_fmt(d['mean_excess_kurtosis'])}",
              f"- mean KS to N(0,1) (standardised channels) {_fmt(d['mean_ks_to_normal'])}; mean Wasserstein-1 to "
              f"N(0,1) raw {_fmt(d['mean_wasserstein_to_normal'])}, standardised "
              f"{_fmt(d['mean_wasserstein_to_normal_standardized'])}",
              f"- inter-channel correlation: mean |off-diagonal| {_fmt(d['correlation_mean_abs_offdiag'])}, max "
              f"{_fmt(d['correlation_max_abs_offdiag'])}",
              f"- suggested scaling factor (1 / latent std) {_fmt(d['suggested_scaling_factor'])} (config: "
              f"{_fmt(m['scaling_factor'])})"]
    cb = report["codebook"]
    lines += ["", "## Codebook", ""]
    if cb.get("applicable"):
        nn = cb["nearest_neighbour_distance"] or {}
        lines += [f"- usage {cb['codebook_usage']:.1%} ({cb['used_codes']}/{cb['codebook_size']}), perplexity "
                  f"{cb['codebook_perplexity']:.1f}, normalised entropy {cb['normalized_entropy']:.3f}, top code share "
                  f"{cb['top_code_share']:.3f}, dead codes {cb['dead_codes']}, restart candidates "
                  f"{cb['restart_candidates']}",
                  f"- {cb['lookup_space']} lookup space of dim {cb['lookup_dim']}: mean pairwise distance "
                  f"{_fmt(cb['mean_pairwise_distance'])}; nearest-neighbour distance min {_fmt(nn.get('min'))}, mean "
                  f"{_fmt(nn.get('mean'))}, max {_fmt(nn.get('max'))}, spread (std/mean) {_fmt(nn.get('cv'))}; "
                  f"near-duplicate codes {cb['near_duplicate_codes']}"]
    else:
        lines += [f"Not applicable: {cb['reason']}."]
    sm, co = report["continuity"]["smoothness"], report["continuity"]["consistency"]
    lines += ["", "## Continuity", "",
              f"- {sm['num_pairs']} interpolations of {sm['steps']} steps: mean step variation (std/mean) "
              f"{sm['mean_cv']:.3f}, max {sm['max_cv']:.3f}",
              f"- noise {co['noise_scale']:g} x latent std: code change fraction {_fmt(co['code_change_fraction'])}, "
              f"decoded change RMS {_fmt(co['decoded_change_rms'])} ({_fmt(co['decoded_change_psnr'], '.2f')} dB)"]
    rec = report["reconstruction"]
    lines += ["", "## Reconstruction error", "",
              f"- PSNR {_fmt(rec['psnr'], '.2f')} dB pooled, {_fmt(rec['psnr_mean_per_image'], '.2f')} dB mean per "
              f"image; percentiles " + ", ".join(f"{k} {v:.2f}" for k, v in rec["psnr_percentiles"].items()),
              "- worst images: " + ", ".join(f"{w.get('path', '#' + str(w['index']))} ({w['psnr']:.2f} dB)"
                                             for w in rec["worst"])]
    if rec.get("judge"):
        j = rec["judge"]
        lines += [f"- judge features: mean distance {_fmt(j['feature_distance_mean'])} "
                  f"({_fmt(j['feature_distance_relative'])} of the real spread), label agreement "
                  f"{_fmt(j['label_agreement'], '.3f')}"]
    if report.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{key}]({rel})" for key, rel in report["figures"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags of ``python -m vqvae_transformer.analysis.latent_space``."""
    from ..cli import ArgumentParser, add_debug_flag
    from ..models.judge import DEFAULT_EPOCHS

    parser = ArgumentParser(description="Latent-space analysis of a trained tokenizer and its readiness for a prior.")
    add_model_input_args(parser, "analyse", "latent_analysis", "the report, figures/ or judge/")
    parser.add_argument("--max_samples", type=int, default=512,
                        help="analyse at most this many images, drawn with --seed (default: 512)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sub-samples, pairs, noise and judge")
    parser.add_argument("--num_pairs", type=int, default=8, help="interpolated image pairs (default: 8)")
    parser.add_argument("--steps", type=int, default=8, help="frames per interpolation, endpoints included "
                        "(default: 8)")
    parser.add_argument("--noise_scale", type=float, default=0.05,
                        help="latent noise of the consistency test, as a fraction of each channel's std (default: "
                             "0.05)")
    parser.add_argument("--worst_k", type=int, default=8, help="worst reconstructions listed (default: 8)")
    parser.add_argument("--judge", action="store_true",
                        help="also measure the reconstruction error in the judge's feature space (trains the judge "
                             "on the real training split, or reuses the one cached in OUTPUT_DIR/judge)")
    parser.add_argument("--judge_epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"training epochs of the judge (default: {DEFAULT_EPOCHS})")
    add_debug_flag(parser)
    return parser


def check_inputs(args: argparse.Namespace) -> Path:
    """Flag values, the model folder (complete, loadable, one model) and the data, before any work.

    Returns:
        The first-stage folder to load.

    Raises:
        UserInputError: one line naming the flag or file.
    """
    for flag in ("max_samples", "num_pairs", "worst_k", "judge_epochs"):
        value = getattr(args, flag)
        if value < 1:
            raise UserInputError(f"--{flag} must be a positive integer, got {value}")
    if args.max_samples < 2:
        raise UserInputError(f"--max_samples must be at least 2 (interpolation needs two images), got "
                             f"{args.max_samples}")
    if args.steps < 2:
        raise UserInputError(f"--steps must be at least 2 (the two endpoints), got {args.steps}")
    if not 0 < args.noise_scale < 10:
        raise UserInputError(f"--noise_scale must lie in (0, 10) (a fraction of the latent std, e.g. 0.05), got "
                             f"{args.noise_scale}")
    first_stage_dir = check_model_inputs(args)
    if args.judge:
        from ..validation.inputs import model_facts

        model_facts(args.model_dir)  # the judge needs the model's users (model_index.json or data_info.json)
    return first_stage_dir


def _train_judge(args: argparse.Namespace, out: Path):
    """The judge of ``--judge``, as validate_main.py gets it: trained on the real training split (the model's, or a
    seeded split of ``--data_dir``), cached in ``OUTPUT_DIR/judge``."""
    from ..validation.inputs import load_real_data, model_facts
    from ..validation.scores import train_or_load_judge

    model_dir = Path(args.model_dir)
    real = load_real_data(model_dir, model_facts(model_dir), args.data_dir, args.seed, 0.2)
    return train_or_load_judge(real, out, args.judge_epochs, args.seed, True)


def main(argv: Sequence[str] | None = None) -> int:
    """Encode, analyse, write ``latent_report.json``, ``latent_report.md`` and the figures; prints the headline."""
    from ..cli import setup_logging
    from ..validation.scores import JUDGE_DIR  # where the judge of --judge is cached

    setup_logging()
    args = build_parser().parse_args(argv)
    first_stage_dir = check_inputs(args)
    model_dir = Path(args.model_dir)
    folder = prepare_output_folder(args.output_dir, TOOL_NAME, overwrite=args.overwrite,
                                   reserved=[REPORT_JSON, REPORT_MD, FIGURES_FOLDER, JUDGE_DIR])
    out = folder.path
    model = load_first_stage(first_stage_dir).eval()
    data = load_images(model_dir, args.data_dir, model)
    if len(data) < 2:
        raise UserInputError(f"{data.source} has {len(data)} image(s); the analysis needs at least 2")
    keep = list(range(len(data)))
    if len(data) > args.max_samples:  # a seeded sub-sample, kept in file order
        generator = torch.Generator().manual_seed(args.seed)
        keep = sorted(torch.randperm(len(data), generator=generator)[:args.max_samples].tolist())
    source = data.source if args.data_dir else f"validation split of {model_dir}"
    analyzer = LatentSpaceAnalyzer(model, batch_size=args.batch_size, seed=args.seed)
    analyzer.collect_latent_representations(data.images[keep], data.labels[keep], [data.paths[i] for i in keep])
    try:
        judge = None
        if args.judge:  # the cached judge's files are listed once present (finally, below)
            judge = _train_judge(args, out)
        analyzer.analyze_latent_distribution()
        analyzer.analyze_codebook_structure()
        analyzer.analyze_latent_continuity(args.num_pairs, args.steps, args.noise_scale)
        analyzer.analyze_reconstruction_error_distribution(judge=judge, worst_k=args.worst_k)
        readiness = analyzer.readiness_report()
        folder.record(added=analyzer.report_files())  # registered before they appear
        analyzer.save_report(out, source=f"{source}, {len(keep)} of {len(data)} images")
    finally:  # what this run wrote is its own, even when it stopped half-way
        if out.is_dir():
            folder.record_present()
    subs = ", ".join(f"{k} {v:.2f}" for k, v in readiness["sub_scores"].items())
    print(f"readiness {readiness['score']:.3f} ({subs}); {len(readiness['recommendations'])} recommendation(s)")
    print(f"report: {out / REPORT_MD}")
    return 0


if __name__ == "__main__":
    from ..cli import run_cli

    sys.exit(run_cli(main))
