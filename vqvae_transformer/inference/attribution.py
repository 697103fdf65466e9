"""Keep the generated images a real-trained judge attributes to their intended user (``--keep_attributed``).

``generate_main.py --keep_attributed [--oversample F]`` draws ``ceil(F x N)`` candidates per user, writes them
into the run's staging folder exactly as the final images are written, reads them back the way validation reads
generated images (the model's resolution, channels and colormap), and keeps per user the ``N`` candidates to which
the judge gives the highest probability of the intended user. The judge is the project's user classifier
(:mod:`vqvae_transformer.models.judge`) trained on the model's own **real training split** (never its validation
split), with the run's seed.

Per user the record gives the candidates drawn, how many of them the judge attributes to the intended user (its
arg-max; the *acceptance rate*), how many of the kept ones are attributed (``kept_attributed``; fewer than ``N``
means a larger ``--oversample`` would help) and the judge's probability of the intended user over the kept ones.

A judge of the same architecture, trained on the same real images, also scores ``validate_main.py``'s gan-test: on
selected samples gan-test is therefore not an independent measure (the validation report says so); CAS and
``benchmarks/bench_augmentation.py`` (classifiers tested on held-out real images) are.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import torch

from ..data import SpectrogramData, load_image_folder
from ..data.provenance import load_model_training_split
from ..errors import UserInputError
from ..models.judge import Judge, logits, train_judge

logger = logging.getLogger(__name__)

DEFAULT_OVERSAMPLE = 3.0
"""Candidates drawn per kept image by default (``--oversample``)."""
METHOD = "judge trained on the model's real training split"


def candidates_per_user(num_images: int, oversample: float) -> int:
    """Candidates to draw per user for ``num_images`` kept ones (``ceil(num_images x oversample)``)."""
    if not (math.isfinite(oversample) and oversample >= 1.0):
        raise ValueError(f"oversample must be a finite number >= 1, got {oversample!r}")
    return int(math.ceil(num_images * oversample))


class JudgeAttribution:
    """A judge trained on a model's real training split, and how to read candidates the way it was trained.

    Args:
        judge: the trained judge.
        data: the model's real data (its resolution, channels, colormap and id map are used to read candidates).
    """

    def __init__(self, judge: Judge, data: SpectrogramData):
        self.judge = judge
        self.data = data

    @classmethod
    def for_model(cls, model_dir: str | Path, seed: int) -> "JudgeAttribution":
        """Train the judge on ``model_dir``'s real training split (its ``data_info.json`` and split file).

        Raises:
            UserInputError: the model folder does not say where its training data is (e.g. a Hub download).
        """
        data, train_idx = load_model_training_split(model_dir, "--keep_attributed")
        if len(train_idx) < 2:
            raise UserInputError(f"--keep_attributed: {model_dir} was trained on {len(train_idx)} image(s); the "
                                 "judge needs at least 2")
        logger.info("--keep_attributed: training the judge on the model's %d real training images (seed %d)",
                    len(train_idx), seed)
        judge = train_judge(data.images[train_idx], data.labels[train_idx], data.num_users, seed=seed)
        return cls(judge, data)

    def intended_probabilities(self, folder: Path) -> tuple[list[str], list[int], torch.Tensor, torch.Tensor]:
        """Read ``folder/ID_<k>/*.png`` as validation reads generated images and score them.

        Returns:
            ``(paths, public user ids, probability of the intended user [M], attributed [M] bool)``.
        """
        candidates = load_image_folder(folder, self.data.resolution, colormap=self.data.colormap or "none")
        if candidates.channels != self.data.channels:
            raise UserInputError(f"generated images have {candidates.channels} channel(s) but the model's data has "
                                 f"{self.data.channels}; --keep_attributed needs the model's own data")
        ids = [int(candidates.user_ids[int(label)]) for label in candidates.labels]
        intended = torch.tensor([self.data.id_to_label(user_id) for user_id in ids], dtype=torch.long)
        probabilities = logits(self.judge, candidates.images).softmax(dim=1)  # [M, users]
        p_intended = probabilities.gather(1, intended[:, None]).squeeze(1)  # [M]
        attributed = probabilities.argmax(dim=1) == intended  # [M]
        return list(candidates.paths), ids, p_intended, attributed

    def keep_best(self, staging: Path, user_ids: Sequence[int], keep: int) -> dict[int, dict]:
        """In ``staging/ID_<k>/``, keep the ``keep`` candidates with the highest probability of user ``k``,
        renamed ``gen_0000.png`` … in that order; delete the others (the staging folder is this run's own).

        Returns:
            ``{user id: record}`` with ``candidates``, ``attributed``, ``acceptance_rate``, ``kept``,
            ``kept_attributed``, ``kept_min_probability``, ``kept_mean_probability`` and ``kept_candidates`` (the
            draw index, 0-based, of each kept image ``gen_0000.png`` …).
        """
        paths, ids, p_intended, attributed = self.intended_probabilities(staging)
        records: dict[int, dict] = {}
        for user_id in user_ids:
            members = [i for i, k in enumerate(ids) if k == user_id]
            if len(members) < keep:
                raise RuntimeError(f"ID_{user_id}: {len(members)} candidates for {keep} images")
            scores = p_intended[members]
            order = torch.argsort(scores, descending=True, stable=True)[:keep].tolist()
            kept = [members[j] for j in order]
            folder = staging / f"ID_{user_id}"
            for rank, index in enumerate(kept):  # two passes: no kept file is overwritten before it moves
                os.replace(paths[index], folder / f".kept_{rank:04d}.png")
            for index in members:
                Path(paths[index]).unlink(missing_ok=True)
            for rank in range(keep):
                os.replace(folder / f".kept_{rank:04d}.png", folder / f"gen_{rank:04d}.png")
            kept_p = p_intended[kept]
            records[int(user_id)] = {
                "candidates": len(members), "attributed": int(attributed[members].sum()),
                "acceptance_rate": int(attributed[members].sum()) / len(members), "kept": keep,
                "kept_attributed": int(attributed[kept].sum()),
                "kept_min_probability": float(kept_p.min()), "kept_mean_probability": float(kept_p.mean()),
                "kept_candidates": order}
        return records


def summarize(records: dict[int, dict], oversample: float) -> dict:
    """The ``attribution`` block of ``generation_info.json``: method, oversampling, overall and per-user figures."""
    candidates = sum(r["candidates"] for r in records.values())
    attributed = sum(r["attributed"] for r in records.values())
    kept = sum(r["kept"] for r in records.values())
    kept_attributed = sum(r["kept_attributed"] for r in records.values())
    return {"method": METHOD, "oversample": oversample, "candidates": candidates,
            "acceptance_rate": attributed / candidates if candidates else None,
            "kept": kept, "kept_attributed_rate": kept_attributed / kept if kept else None,
            "per_user": {str(k): records[k] for k in sorted(records)}}
