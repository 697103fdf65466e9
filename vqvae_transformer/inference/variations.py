"""Variations of the model's own training recordings (``generate_main.py --strength S``).

Each generated image starts from a real recording of its user, drawn from the model's **real training split**
(never its validation split) and rolled circularly along time by a random amount (the augmentation stage 1
trains with, :mod:`vqvae_transformer.data.augment`). The first stage encodes it, the first
``round((1 - S) x w)`` token columns (the start of the recording, in time order) are kept, and the prior writes
the rest for the intended user (:meth:`~vqvae_transformer.models.pipeline.VQVAETransformerPipeline.__call__`'s
``image`` and ``strength``). ``S = 1`` is plain sampling.

Which recording and shift each image started from goes into ``generation_info.json`` (``variations``), so a
user can keep variations of recordings they later hold out for testing out of their training set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import SpectrogramData
from ..data.provenance import load_model_training_split
from ..errors import UserInputError

logger = logging.getLogger(__name__)

SOURCE = "the model's real training split"
_SEED_TAG = 0x7A41  # keeps the source draws apart from the sampling seeds derived from the same run seed


class TrainingSources:
    """The real training recordings of a model, by user, to start variations from.

    Args:
        data: the model's real data (the representation its first stage encodes).
        train_indices: indices into ``data`` of the model's training split.
    """

    def __init__(self, data: SpectrogramData, train_indices: Sequence[int]):
        self.data = data
        self.by_user: dict[int, list[int]] = {}
        for index in train_indices:
            user_id = int(data.user_ids[int(data.labels[index])])
            self.by_user.setdefault(user_id, []).append(int(index))

    @classmethod
    def for_model(cls, model_dir: str | Path, flag: str = "--strength") -> "TrainingSources":
        """Reload ``model_dir``'s training data and split (its ``data_info.json`` and split file).

        Raises:
            UserInputError: the folder does not say where its training data is (e.g. a Hub download).
        """
        data, train_idx = load_model_training_split(model_dir, flag)
        logger.info("%s: variations of the model's %d real training images", flag, len(train_idx))
        return cls(data, train_idx)

    def check_users(self, user_ids: Sequence[int]) -> None:
        """Raise a one-line error naming the users without a training recording."""
        missing = [k for k in user_ids if not self.by_user.get(int(k))]
        if missing:
            raise UserInputError(f"--strength: user(s) {missing} have no image in the model's training split to "
                                 "start from; leave them out with --user_ids or drop --strength")

    def draw(self, user_ids: Sequence[int], seed: int) -> tuple[torch.Tensor, list[dict]]:
        """One source per entry of ``user_ids`` (repeat an id for several images), reproducible from ``seed``.

        Returns:
            ``(images [N, C, R, R] as the first stage takes them, records)``; record ``i`` names the training
            file image ``i`` started from (its path as loaded) and its circular time shift in pixels.
        """
        self.check_users(user_ids)
        state = np.random.SeedSequence([_SEED_TAG, int(seed) % 2**63]).generate_state(1, np.uint64)
        generator = torch.Generator().manual_seed(int(state[0]) >> 1)
        width = self.data.images.shape[-1]
        images, records = [], []
        for user_id in user_ids:
            members = self.by_user[int(user_id)]
            index = members[int(torch.randint(len(members), (1,), generator=generator))]
            shift = int(torch.randint(width, (1,), generator=generator))
            images.append(torch.roll(self.data.images[index], shifts=shift, dims=-1))  # (C, R, R), time rolled
            records.append({"source": self.data.paths[index], "time_shift_px": shift})
        return torch.stack(images).float(), records  # (N, C, R, R)
