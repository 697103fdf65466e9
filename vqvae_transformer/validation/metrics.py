"""The validation metrics of DESIGN.md §4, one small function each.

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

import torch
from torchmetrics.image.fid import FrechetInceptionDistance

from ..perceptual import LPIPSUnavailableError, load_pretrained_lpips, lpips_status
from .judge import DEFAULT_EPOCHS, Judge, JudgeFeatureExtractor, accuracy, predict, train_judge

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
    """Mean pairwise distance among a user's generated images over the same among that user's real images,
    averaged over users (1.0 = as diverse as real, 0 = one image repeated).

    Args:
        generated_features: ``[M, F]``.
        generated_labels: ``[M]``.
        real_features: ``[N, F]`` (the real validation images: like the generated ones, unseen by the judge).
        real_labels: ``[N]``.

    Returns:
        ``(mean ratio over users, {label: ratio})``; users with fewer than 2 images on a side, or whose real
        images are all identical, are left out (ratio None when no user is left).
    """
    per_user: dict[int, float] = {}
    for label in torch.unique(generated_labels).tolist():
        generated = mean_pairwise_distance(generated_features[generated_labels == label])
        real = mean_pairwise_distance(real_features[real_labels == label])
        if generated is None or real is None or real == 0.0:
            continue
        per_user[int(label)] = generated / real
    if not per_user:
        return None, per_user
    return sum(per_user.values()) / len(per_user), per_user


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

