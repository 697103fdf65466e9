"""The validation metrics of docs/DESIGN.md §4, one small function each.

Feature space: every distance here (``domain_fid``, nearest neighbours, ``memorization_rate``,
``diversity_ratio``) is measured in the judge's penultimate-layer features (:func:`.judge.features`), with the
Euclidean (L2) distance. The judge's features are nearly invariant to circular time shifts, so a generated image
that is a shifted copy of a training image still counts as a copy.

Labels are 0-based (the judge's classes); mapping to public ids is the report's business.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import torch
from scipy import stats
from torchmetrics.image.fid import FrechetInceptionDistance

from ..perceptual import LPIPSUnavailableError, load_pretrained_lpips, lpips_status
from ..models.judge import DEFAULT_EPOCHS, Judge, JudgeFeatureExtractor, accuracy, predict, train_judge

logger = logging.getLogger(__name__)

MEMORIZATION_PERCENTILE = 1.0
"""Percentile of real-validation-to-training nearest distances below which a generated image counts as copied."""


# ----------------------------------------------------------------------------------------------------------
# Classification


def real_test_accuracy(judge: Judge, val_images: torch.Tensor, val_labels: torch.Tensor) -> float:
    """The judge's accuracy on the real validation images (``[N, C, R, R]`` in [-1, 1], labels ``[N]``)."""
    return accuracy(predict(judge, val_images), val_labels)


def gan_test_accuracy(judge: Judge, generated_images: torch.Tensor, intended_labels: torch.Tensor) -> float:
    """The judge's accuracy on generated images, each labelled by the user it was generated for.

    Args:
        judge: the judge trained on real training images.
        generated_images: ``[M, C, R, R]`` in [-1, 1].
        intended_labels: ``[M]`` 0-based label of the user each image was generated for.

    Returns:
        Share of generated images the judge assigns to their intended user.
    """
    return accuracy(predict(judge, generated_images), intended_labels)


def cas_accuracy(
    generated_images: torch.Tensor,
    generated_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    num_classes: int,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    **train_kwargs,
) -> tuple[float, Judge]:
    """Classification accuracy score: train a fresh judge-architecture classifier on generated images only,
    test it on the real validation images.

    Args:
        generated_images: ``[M, C, R, R]`` training images of the fresh classifier.
        generated_labels: ``[M]`` their intended users.
        val_images: ``[N, C, R, R]`` real validation images.
        val_labels: ``[N]`` their users.
        num_classes: number of users.
        epochs: training passes over the generated images.
        seed: training seed.
        train_kwargs: more arguments of :func:`.judge.train_judge` (batch size, lr, input size).

    Returns:
        ``(accuracy on the real validation images, the trained classifier)``.
    """
    classifier = train_judge(generated_images, generated_labels, num_classes, epochs=epochs, seed=seed,
                             **train_kwargs)
    return accuracy(predict(classifier, val_images), val_labels), classifier


def per_user_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy per label: entry ``k`` is the share of label-``k`` images predicted as ``k`` (None if it has none)."""
    result: list[float | None] = []
    for label in range(num_classes):
        mask = labels == label
        result.append(float((predicted[mask] == label).float().mean()) if bool(mask.any()) else None)
    return result


def confusion_matrix(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` int64 counts: row = true (intended) label, column = predicted label; sums to ``len(labels)``."""
    flat = labels.long() * num_classes + predicted.long()  # [N]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# ----------------------------------------------------------------------------------------------------------
# Texture


def neighbour_difference(images: torch.Tensor) -> tuple[float, float]:
    """Mean absolute difference between neighbouring pixels, ``(along frequency, along time)``.

    Args:
        images: ``[N, C, F, T]`` in [-1, 1] (rows are Doppler frequency, columns time), measured in [0, 1].

    A smooth (blurred) image set scores lower than the data it imitates; :func:`texture_ratio` compares the two.
    """
    unit = (images.float() + 1) / 2
    along_frequency = (unit[..., 1:, :] - unit[..., :-1, :]).abs().mean()
    along_time = (unit[..., :, 1:] - unit[..., :, :-1]).abs().mean()
    return float(along_frequency), float(along_time)


def texture_ratio(real_images: torch.Tensor, generated_images: torch.Tensor) -> tuple[float, float]:
    """:func:`neighbour_difference` of ``generated_images`` over that of ``real_images``, per axis (1: as rough
    as the data; below 1: smoother)."""
    real, fake = neighbour_difference(real_images), neighbour_difference(generated_images)
    return fake[0] / real[0], fake[1] / real[1]


# ----------------------------------------------------------------------------------------------------------
# Distribution distance


def domain_fid(judge: Judge, real_images: torch.Tensor, generated_images: torch.Tensor,
               batch_size: int = 256) -> float:
    """Fréchet distance between two image sets in the judge's feature space (torchmetrics FID).

    Args:
        judge: supplies the feature extractor (penultimate layer).
        real_images: ``[N, C, R, R]`` in [-1, 1], N ≥ 2.
        generated_images: ``[M, C, R, R]`` in [-1, 1], M ≥ 2.
        batch_size: images per feature-extraction batch.

    Returns:
        The distance, clipped at 0 (identical sets give 0; floating-point error can otherwise make it -1e-11).
    """
    if real_images.shape[0] < 2 or generated_images.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 images per set, got {real_images.shape[0]} and "
                         f"{generated_images.shape[0]}")
    metric = FrechetInceptionDistance(feature=JudgeFeatureExtractor(judge), normalize=True)
    for i in range(0, real_images.shape[0], batch_size):
        metric.update(real_images[i:i + batch_size].float(), real=True)
    for i in range(0, generated_images.shape[0], batch_size):
        metric.update(generated_images[i:i + batch_size].float(), real=False)
    return max(float(metric.compute()), 0.0)


def split_in_halves(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two disjoint index sets of equal size, stratified: each label gives ``floor(n/2)`` images to each half.

    Args:
        labels: ``[N]`` labels.
        seed: seed of the per-label shuffles.

    Returns:
        ``(indices_a, indices_b)``, equal-length int64 tensors.
    """
    generator = torch.Generator().manual_seed(int(seed))
    half_a, half_b = [], []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(members.numel(), generator=generator)]
        k = members.numel() // 2
        half_a.append(members[:k])
        half_b.append(members[k:2 * k])
    return torch.cat(half_a), torch.cat(half_b)


def domain_fid_real(judge: Judge, real_images: torch.Tensor, real_labels: torch.Tensor, seed: int = 0) -> float:
    """The floor of :func:`domain_fid`: the same distance between two disjoint, equal-size halves of real images.

    Each half holds half as many images as ``real_images``, so this floor carries more small-sample bias than
    ``domain_fid`` computed on the whole set; ``domain_fid / domain_fid_real`` below 1 is possible for a good
    generator.

    Args:
        judge: supplies the feature extractor.
        real_images: ``[N, C, R, R]`` real (validation) images.
        real_labels: ``[N]`` their users (the halves are stratified by user).
        seed: seed of the split into halves.

    Returns:
        The distance between the halves.
    """
    half_a, half_b = split_in_halves(real_labels, seed)
    return domain_fid(judge, real_images[half_a], real_images[half_b])


# ----------------------------------------------------------------------------------------------------------
# Nearest neighbours and memorization


def nearest_neighbours(queries: torch.Tensor, references: torch.Tensor,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """L2 distance from each query to its nearest reference, and that reference's index.

    Args:
        queries: ``[M, F]`` features.
        references: ``[N, F]`` features.
        chunk: queries per distance block.

    Returns:
        ``(distances [M], indices [M])``.
    """
    distances, indices = [], []
    for i in range(0, queries.shape[0], chunk):
        block = torch.cdist(queries[i:i + chunk].double(), references.double())  # [m, N]
        d, j = block.min(dim=1)
        distances.append(d)
        indices.append(j)
    return torch.cat(distances), torch.cat(indices)


@dataclasses.dataclass
class Memorization:
    """Result of :func:`memorization_rate`."""

    rate: float
    threshold: float  # the percentile of real validation-to-training nearest distances
    distances: torch.Tensor  # [M] generated-to-nearest-training distance
    neighbours: torch.Tensor  # [M] index (into the training set) of that nearest image
    flagged: torch.Tensor  # [M] bool, distance <= threshold


def memorization_rate(generated_features: torch.Tensor, train_features: torch.Tensor,
                      val_features: torch.Tensor, percentile: float = MEMORIZATION_PERCENTILE) -> Memorization:
    """Share of generated images whose nearest training image is as close as the closest real held-out images.

    The threshold is the ``percentile``-th percentile of the distances from each real validation image to its
    nearest training image, so about ``percentile`` % of fresh real images would be flagged; a generator that
    copies training images scores near 1. Distances are L2 in the feature space given (the judge's features).
    A generated image is flagged when its distance is at most the threshold (so exact copies count even when
    the threshold is 0).

    Args:
        generated_features: ``[M, F]``.
        train_features: ``[N, F]`` real training images.
        val_features: ``[V, F]`` real validation images (V ≥ 1).
        percentile: in (0, 100).

    Returns:
        A :class:`Memorization` with the rate, threshold and per-image distances and neighbours.
    """
    if not 0.0 < percentile < 100.0:
        raise ValueError(f"percentile={percentile} must be in (0, 100)")
    val_distances, _ = nearest_neighbours(val_features, train_features)  # [V]
    threshold = float(torch.quantile(val_distances, percentile / 100.0))
    distances, neighbours = nearest_neighbours(generated_features, train_features)  # [M]
    flagged = distances <= threshold
    rate = float(flagged.double().mean()) if flagged.numel() else math.nan
    return Memorization(rate=rate, threshold=threshold, distances=distances.float(), neighbours=neighbours,
                        flagged=flagged)


# ----------------------------------------------------------------------------------------------------------
# Diversity


def mean_pairwise_distance(feature_rows: torch.Tensor) -> float | None:
    """Mean L2 distance over the distinct pairs of rows of ``[n, F]`` (None when n < 2)."""
    n = feature_rows.shape[0]
    if n < 2:
        return None
    distances = torch.cdist(feature_rows.double(), feature_rows.double())  # [n, n]
    return float(distances.sum() / (n * (n - 1)))


def diversity_ratio(generated_features: torch.Tensor, generated_labels: torch.Tensor,
                    real_features: torch.Tensor, real_labels: torch.Tensor) -> tuple[float | None, dict[int, float]]:
    """How spread a user's generated images are against that user's real ones (1.0 = as diverse as real, 0 = one
    image repeated): the mean pairwise distance among a user's generated images, averaged over users, over the same
    among the real images.

    The ratio is of the averages over users, not an average of per-user ratios: with ~5 real images per user each
    user's real spread is a noisy denominator, and the mean of ratios is biased upward (Jensen). Measured in the
    judge's features of real training images split 10 vs 5 per user (the same distribution on both sides, so the
    right answer is 1), users'-shape data, 300 splits: the mean of per-user ratios gave 1.030 and 1.032 (two
    judges), the ratio of averages 1.004 (README, "Diversity").

    Args:
        generated_features: ``[M, F]``.
        generated_labels: ``[M]``.
        real_features: ``[N, F]`` (the real validation images: like the generated ones, unseen by the judge).
        real_labels: ``[N]``.

    Returns:
        ``(ratio, {label: that user's own ratio})``; users with fewer than 2 images on a side, or whose real
        images are all identical, are left out of both (ratio None when no user is left).
    """
    per_user: dict[int, float] = {}
    generated_sum = real_sum = 0.0
    for label in torch.unique(generated_labels).tolist():
        generated = mean_pairwise_distance(generated_features[generated_labels == label])
        real = mean_pairwise_distance(real_features[real_labels == label])
        if generated is None or real is None or real == 0.0:
            continue
        per_user[int(label)] = generated / real
        generated_sum += generated
        real_sum += real
    if not per_user:
        return None, per_user
    return generated_sum / real_sum, per_user


# ----------------------------------------------------------------------------------------------------------
# LPIPS


@torch.no_grad()
def lpips_distance(images_a: torch.Tensor, images_b: torch.Tensor, net: str = "alex",
                   batch_size: int = 32) -> tuple[float | None, str]:
    """Mean pretrained LPIPS between paired images, or None with the reason it cannot be measured.

    Args:
        images_a: ``[N, C, R, R]`` in [-1, 1] (1-channel images are repeated to 3 channels).
        images_b: ``[N, C, R, R]`` in [-1, 1], paired with ``images_a``.
        net: LPIPS backbone.
        batch_size: pairs per batch.

    Returns:
        ``(mean distance or None, reason)``; never a figure from a random backbone.
    """
    available, reason = lpips_status(net)
    if not available:
        return None, reason
    try:
        model = load_pretrained_lpips(net)
    except LPIPSUnavailableError as err:
        return None, str(err)
    total = 0.0
    for i in range(0, images_a.shape[0], batch_size):
        a = _three_channels(images_a[i:i + batch_size].float())
        b = _three_channels(images_b[i:i + batch_size].float())
        total += float(model(a, b).sum())
    return total / images_a.shape[0], reason


def _three_channels(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` -> ``[B, 3, H, W]`` (others unchanged)."""
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images



# ----------------------------------------------------------------------------------------------------------
# Uncertainty: bootstrap and Wilson intervals, kernel distance (issue 12)

CI_LEVEL = 0.95
N_RESAMPLES = 1000
"""Bootstrap resamples of the accuracy intervals (cheap: means of 0/1 vectors)."""
N_FID_RESAMPLES = 200
"""Bootstrap resamples of the FID-ratio interval (each needs two eigendecompositions of ``[F, F]`` matrices)."""
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
"""Largest KID subset (torchmetrics' default); smaller sets use half the smaller set so that subsets differ."""


@dataclasses.dataclass
class Interval:
    """A point estimate with its confidence interval."""

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    ci_level: float
    n_resamples: int  # 0 for closed-form (Wilson) intervals
    method: str

    def as_dict(self) -> dict:
        """``{"estimate", "ci_low", "ci_high", "ci_level", "n_resamples", "method"}`` (JSON-ready)."""
        return dataclasses.asdict(self)


def _percentiles(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile-bootstrap bounds of ``values`` ``[B]`` (NaN replicates dropped; None when none is left)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def stratified_resample(strata: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap index sets that keep each stratum's size: stratum ``s`` with ``n_s`` members gives ``n_s`` draws
    with replacement from its own members.

    Args:
        strata: ``[N]`` stratum (user) of each item.
        n_resamples: number of resamples B.
        rng: the random generator.

    Returns:
        ``[B, N]`` int64 indices into the items.
    """
    strata = np.asarray(strata)
    blocks = []
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)  # [n_s]
        blocks.append(members[rng.integers(0, members.size, (n_resamples, members.size))])  # [B, n_s]
    if not blocks:
        return np.zeros((n_resamples, 0), dtype=np.int64)
    return np.concatenate(blocks, axis=1)


def bootstrap_accuracy_ci(correct: torch.Tensor, strata: torch.Tensor, n_resamples: int = N_RESAMPLES,
                          seed: int = 0, level: float = CI_LEVEL) -> Interval:
    """Percentile-bootstrap interval of an accuracy (``gan_test_accuracy``, ``real_test_accuracy``,
    ``cas_accuracy``).

    Resampled: the test images, with replacement, within each user (stratified), so every resample has as many
    images of each user as the data. Nothing is retrained: for ``cas_accuracy`` the real test images the CAS
    classifier was tested on are resampled with its fixed predictions.

    Args:
        correct: ``[N]`` bool, whether each test image was classified right.
        strata: ``[N]`` its user.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
        level: confidence level.

    Returns:
        An :class:`Interval` around the plain accuracy (None bounds for empty input).
    """
    c = correct.detach().cpu().numpy().astype(np.float64)  # [N]
    if c.size == 0:
        return Interval(None, None, None, level, n_resamples, "stratified percentile bootstrap")
    idx = stratified_resample(strata.detach().cpu().numpy(), n_resamples, np.random.default_rng(seed))  # [B, N]
    low, high = _percentiles(c[idx].mean(axis=1), level)
    return Interval(float(c.mean()), low, high, level, n_resamples, "stratified percentile bootstrap")


def bootstrap_ratio_ci(num_correct: torch.Tensor, num_strata: torch.Tensor, den_correct: torch.Tensor,
                       den_strata: torch.Tensor, paired: bool, n_resamples: int = N_RESAMPLES, seed: int = 0,
                       level: float = CI_LEVEL) -> Interval:
    """Percentile-bootstrap interval of an accuracy ratio (``gan_test_ratio``, ``cas_ratio``).

    Resampled, per replicate, both accuracies at once, so the interval is that of the ratio itself:
    ``paired=True`` (``cas_ratio``: both classifiers tested on the same real validation images) draws one
    stratified index set and uses it for numerator and denominator; ``paired=False`` (``gan_test_ratio``: the
    numerator is on generated images, the denominator on real ones) draws a stratified index set for each.
    Replicates whose denominator is 0 are dropped.

    Args:
        num_correct: ``[M]`` bool, numerator's per-image correctness.
        num_strata: ``[M]`` users of those images.
        den_correct: ``[N]`` bool, denominator's per-image correctness (``N == M``, same images, when paired).
        den_strata: ``[N]`` users.
        paired: whether numerator and denominator are measured on the same images.
        n_resamples: bootstrap resamples.
        seed: seed of the resampling.
        level: confidence level.

    Returns:
        An :class:`Interval` around ``mean(num_correct) / mean(den_correct)`` (None when undefined).
    """
    method = f"{'paired' if paired else 'independent'} stratified percentile bootstrap of the ratio"
    num = num_correct.detach().cpu().numpy().astype(np.float64)  # [M]
    den = den_correct.detach().cpu().numpy().astype(np.float64)  # [N]
    if paired and num.shape != den.shape:
        raise ValueError(f"paired ratio needs the same images, got {num.shape} and {den.shape}")
    if num.size == 0 or den.size == 0 or den.mean() == 0:
        return Interval(None, None, None, level, n_resamples, method)
    rng = np.random.default_rng(seed)
    idx_den = stratified_resample(den_strata.detach().cpu().numpy(), n_resamples, rng)  # [B, N]
    idx_num = idx_den if paired else stratified_resample(num_strata.detach().cpu().numpy(), n_resamples, rng)
    den_b = den[idx_den].mean(axis=1)  # [B]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den_b > 0, num[idx_num].mean(axis=1) / den_b, np.nan)  # [B]
    low, high = _percentiles(ratios, level)
    return Interval(float(num.mean() / den.mean()), low, high, level, n_resamples, method)


def wilson_interval(successes: int, trials: int, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (for per-user accuracies over ~5 images).

    Args:
        successes: images classified right.
        trials: images tested.
        level: confidence level.

    Returns:
        ``(low, high)`` in [0, 1]; ``(None, None)`` when ``trials == 0``.
    """
    if trials <= 0:
        return None, None
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds: rounding gives 0.9999999999999999
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def bootstrap_diversity_ci(generated_features: torch.Tensor, generated_labels: torch.Tensor,
                           real_features: torch.Tensor, real_labels: torch.Tensor, seed: int = 0,
                           n_resamples: int = N_RESAMPLES, level: float = CI_LEVEL) -> Interval:
    """Percentile-bootstrap interval of :func:`diversity_ratio`.

    Each replicate resamples every user's generated and real images with replacement (stratified by user) and
    recomputes the ratio; a pair made of one image drawn twice is left out of a mean pairwise distance (its
    distance 0 would shrink the spread of small sets: a bootstrap of the pairs of distinct images).

    Returns:
        An :class:`Interval` around :func:`diversity_ratio` of the features (None when it is not measurable).
    """
    method = "stratified percentile bootstrap per user, pairs of distinct images"
    estimate, per_user = diversity_ratio(generated_features, generated_labels, real_features, real_labels)
    if estimate is None:
        return Interval(None, None, None, level, n_resamples, method)
    rng = np.random.default_rng(seed)
    sums = {"generated": np.zeros(n_resamples), "real": np.zeros(n_resamples)}
    for label in per_user:
        for side, feats, labels in (("generated", generated_features, generated_labels),
                                    ("real", real_features, real_labels)):
            rows = feats[labels == label].detach().cpu().double()  # [n, F]
            distances = torch.cdist(rows, rows).numpy()  # [n, n]
            idx = rng.integers(0, rows.shape[0], (n_resamples, rows.shape[0]))  # [B, n]
            pairs = distances[idx[:, :, None], idx[:, None, :]]  # [B, n, n]
            distinct = idx[:, :, None] != idx[:, None, :]  # [B, n, n]
            counts = distinct.sum(axis=(1, 2))
            spread = np.where(counts > 0, (pairs * distinct).sum(axis=(1, 2)) / np.maximum(counts, 1), np.nan)
            sums[side] += spread  # a replicate that drew one image n times stays NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = sums["generated"] / sums["real"]
    low, high = _percentiles(ratios[np.isfinite(ratios)], level)
    return Interval(float(estimate), low, high, level, n_resamples, method)


def frechet_distance_features(features_a: np.ndarray, features_b: np.ndarray) -> np.ndarray:
    """The Fréchet distance of :func:`domain_fid`, computed straight from features, for a batch of pairs.

    ``|mu_a - mu_b|² + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b))`` with unbiased covariances; the trace of the
    matrix square root is the sum of the square roots of the eigenvalues of ``S_a S_b`` (as torchmetrics).

    Args:
        features_a: ``[B, N, F]`` (or ``[N, F]``) feature sets, N ≥ 2.
        features_b: ``[B, M, F]`` (or ``[M, F]``), M ≥ 2.

    Returns:
        ``[B]`` distances clipped at 0 (a 0-d array for unbatched input).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(axis=-2), b.mean(axis=-2)  # [B, F]
    ca, cb = a - mu_a[..., None, :], b - mu_b[..., None, :]
    cov_a = np.swapaxes(ca, -1, -2) @ ca / (a.shape[-2] - 1)  # [B, F, F]
    cov_b = np.swapaxes(cb, -1, -2) @ cb / (b.shape[-2] - 1)
    eig = np.linalg.eigvals(cov_a @ cov_b)  # [B, F] complex; real, ≥ 0 up to rounding
    trace_sqrt = np.sqrt(np.clip(eig.real, 0.0, None)).sum(axis=-1)
    fid = ((mu_a - mu_b) ** 2).sum(-1) + np.trace(cov_a, axis1=-2, axis2=-1) + np.trace(cov_b, axis1=-2, axis2=-1) \
        - 2.0 * trace_sqrt
    return np.clip(fid, 0.0, None)


def bootstrap_fid_ratio_ci(generated_features: torch.Tensor, generated_labels: torch.Tensor,
                           real_features: torch.Tensor, real_labels: torch.Tensor, seed: int = 0,
                           n_resamples: int = N_FID_RESAMPLES, level: float = CI_LEVEL) -> Interval:
    """Percentile-bootstrap interval of ``fid_ratio = domain_fid / domain_fid_real``.

    Resampled, per replicate: the generated features (stratified by intended user) and each of the two fixed
    halves of the real features of :func:`domain_fid_real` (stratified by user, within the half, so a real image
    never lands in both halves). The replicate's numerator is the FID of the resampled generated set against the
    union of the resampled halves, its denominator the FID between the resampled halves. Duplicates bias FID
    replicates, so the replicates are shifted by ``median(replicates) - estimate`` before taking percentiles.

    Args:
        generated_features: ``[M, F]`` judge features of the generated images.
        generated_labels: ``[M]`` intended users.
        real_features: ``[N, F]`` judge features of the real validation images.
        real_labels: ``[N]`` their users.
        seed: seed of the halves (as :func:`domain_fid_real`) and of the resampling.
        n_resamples: bootstrap resamples.
        level: confidence level.

    Returns:
        An :class:`Interval` around the ratio computed on the features (None when a set has < 2 images).
    """
    method = ("stratified percentile bootstrap of generated features and of each real half, recentred on the "
              "estimate")
    half_a, half_b = split_in_halves(real_labels, seed)
    if generated_features.shape[0] < 2 or half_a.numel() < 2:
        return Interval(None, None, None, level, n_resamples, method)
    gen = generated_features.detach().cpu().double().numpy()  # [M, F]
    real = real_features.detach().cpu().double().numpy()  # [N, F]
    ia, ib = half_a.numpy(), half_b.numpy()
    real_y = real_labels.cpu().numpy()
    fid = frechet_distance_features(gen, real)
    floor = frechet_distance_features(real[ia], real[ib])
    estimate = float(fid / floor) if floor > 0 else None
    rng = np.random.default_rng(seed)
    g_idx = stratified_resample(generated_labels.cpu().numpy(), n_resamples, rng)  # [B, M]
    a_idx = ia[stratified_resample(real_y[ia], n_resamples, rng)]  # [B, N/2]
    b_idx = ib[stratified_resample(real_y[ib], n_resamples, rng)]
    ratios = np.empty(n_resamples)
    chunk = 50  # replicates per vectorised batch: [chunk, n, F] arrays stay small
    for s in range(0, n_resamples, chunk):
        ga, ra, rb = gen[g_idx[s:s + chunk]], real[a_idx[s:s + chunk]], real[b_idx[s:s + chunk]]
        num = frechet_distance_features(ga, np.concatenate([ra, rb], axis=1))
        den = frechet_distance_features(ra, rb)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios[s:s + chunk] = np.where(den > 0, num / den, np.nan)
    if estimate is not None and np.isfinite(ratios).any():
        # Duplicated images shrink a replicate's covariances, so FID replicates are biased; recentre them on the
        # estimate (median shift) and keep the percentile width.
        ratios = ratios - (np.nanmedian(ratios) - estimate)
    low, high = _percentiles(ratios, level)
    return Interval(estimate, low, high, level, n_resamples, method)


def kid_subsets(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = KID_SUBSETS,
                subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> np.ndarray:
    """Per-subset unbiased MMD² with the kernel ``k(x, y) = (x·y / d + 1)³`` (torchmetrics
    ``KernelInceptionDistance``'s estimator, computed on given features).

    Resampled: ``subsets`` times, ``subset_size`` rows of each set drawn without replacement (``subset_size`` is
    cut to half the smaller set, at least 2, so that subsets differ). Unbiased, so two samples of one
    distribution give about 0, sometimes < 0.

    Args:
        features_a: ``[N, d]`` features (N ≥ 2).
        features_b: ``[M, d]`` features (M ≥ 2).
        subsets: number of subsets S.
        subset_size: rows per subset and set.
        seed: seed of the subset draws.

    Returns:
        ``[S]`` MMD² values.
    """
    a, b = features_a.detach().cpu().double(), features_b.detach().cpu().double()
    m = _kid_subset_size(a.shape[0], b.shape[0], subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {a.shape[0]} and {b.shape[0]}")
    d = a.shape[1]
    generator = torch.Generator().manual_seed(int(seed))
    off = 1.0 / (m * (m - 1))
    values = np.empty(subsets)
    for s in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:m]]  # [m, d]
        y = b[torch.randperm(b.shape[0], generator=generator)[:m]]
        k_xx = (x @ x.T / d + 1) ** 3  # [m, m]
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        values[s] = float(off * (k_xx.sum() - k_xx.diagonal().sum()) + off * (k_yy.sum() - k_yy.diagonal().sum())
                          - 2.0 * k_xy.mean())
    return values


def kernel_distance(features_a: torch.Tensor, features_b: torch.Tensor, subsets: int = KID_SUBSETS,
                    subset_size: int = KID_SUBSET_SIZE, seed: int = 0,
                    level: float = CI_LEVEL) -> tuple[Interval, float]:
    """Kernel distance (``domain_kid``) between two feature sets: mean of :func:`kid_subsets`, with the percentile
    range of the per-subset values as interval and their standard deviation (torchmetrics' ``kid_std``).

    Resampled: exactly the random subsets of :func:`kid_subsets` (``n_resamples`` = ``subsets``).

    Args:
        features_a: ``[N, d]``.
        features_b: ``[M, d]``.
        subsets: number of subsets.
        subset_size: rows per subset.
        seed: seed of the subsets.
        level: confidence level.

    Returns:
        ``(Interval around the mean, std over subsets with ddof=0)``.
    """
    values = kid_subsets(features_a, features_b, subsets, subset_size, seed)  # [S]
    low, high = _percentiles(values, level)
    m = _kid_subset_size(features_a.shape[0], features_b.shape[0], subset_size)
    interval = Interval(float(values.mean()), low, high, level, subsets,
                        f"unbiased MMD², cubic polynomial kernel, {subsets} subsets of {m}")
    return interval, float(values.std())


def kernel_distance_real(real_features: torch.Tensor, real_labels: torch.Tensor, seed: int = 0,
                         subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
                         level: float = CI_LEVEL) -> tuple[Interval, float]:
    """The floor of :func:`kernel_distance` (``domain_kid_real``): the same distance between the two disjoint,
    stratified halves of the real features that :func:`domain_fid_real` uses (same ``seed``).

    Args:
        real_features: ``[N, d]`` real validation features.
        real_labels: ``[N]`` their users.
        seed: seed of the halves and of the subsets.
        subsets: number of subsets.
        subset_size: rows per subset.
        level: confidence level.

    Returns:
        ``(Interval, std over subsets)``.
    """
    half_a, half_b = split_in_halves(real_labels, seed)
    return kernel_distance(real_features[half_a], real_features[half_b], subsets, subset_size, seed, level)


def _kid_subset_size(n_a: int, n_b: int, subset_size: int) -> int:
    """Rows per KID subset: ``subset_size``, at most half the smaller set (at least 2, at most the set)."""
    smaller = min(n_a, n_b)
    return min(int(subset_size), smaller, max(2, smaller // 2))
