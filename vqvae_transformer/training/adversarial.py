"""Stage 1's adversarial term (``--adversarial_weight``): a patch discriminator trained beside the tokenizer.

From ``--adversarial_start`` (a share of stage 1's steps) on, every training batch

1. updates the discriminator (hinge loss) on the batch's real images against their detached reconstructions;
2. adds ``lambda * -D(reconstruction)`` to the tokenizer's loss, with VQGAN's adaptive weight
   ``lambda = weight * |grad_last L_rec| / (|grad_last L_adv| + 1e-4)`` (gradients with respect to the decoder's last
   convolution, Esser et al. 2021, eq. 7), so the term's pull is a fixed share of the reconstruction's whatever the
   loss scales.

Both players see the discriminator's inputs through DiffAugment (Zhao et al., 2020), the remedy for a
discriminator that memorises a small training set: each image is rolled along time by its own random shift and a
random square of a quarter of its area is blanked, differentiably, for real and reconstructed images alike. Without
it, on the users'-shape data (589 training images) the discriminator's hinge loss fell to about 0 before stage 1
ended: it had memorised the training images.

The discriminator and its optimiser go through ``accelerator.prepare`` (several processes: its gradients are
averaged), so ``save_state`` / ``load_state`` keep them in every checkpoint and a resumed run continues the same
game. The generator's side calls the unwrapped discriminator with its parameters frozen, so no gradient of that
side reaches the discriminator. fp16 is refused: its loss scaler belongs to the tokenizer's optimiser.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator

from ..data.augment import circular_time_shift
from ..errors import UserInputError
from ..models.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss

ADAPTIVE_WEIGHT_MAX = 1e4  # VQGAN's clamp of the adaptive weight
DISCRIMINATOR_BETAS = (0.5, 0.9)  # VQGAN's Adam betas for the discriminator


def diff_augment(images: torch.Tensor) -> torch.Tensor:
    """DiffAugment's translation and cutout for spectrograms, differentiable in ``images`` ``(B, C, F, T)``.

    Translation is a circular roll along time (a spectrogram's time origin is arbitrary; a Doppler shift is not, so
    the frequency axis is left alone), a random amount per image; cutout sets a random ``F/2 x T/2`` box per image
    to 0 (mid-grey in [-1, 1]). Draws from torch's global generator, which every checkpoint saves.
    """
    batch, _, height, width = images.shape
    rolled = circular_time_shift(images)  # the training augmentation's roll: a gather, so differentiable
    box_h, box_w = height // 2, width // 2
    top = torch.randint(0, height - box_h + 1, (batch, 1, 1), device=images.device)
    left = torch.randint(0, width - box_w + 1, (batch, 1, 1), device=images.device)
    rows = torch.arange(height, device=images.device)[None, :, None]
    cols = torch.arange(width, device=images.device)[None, None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)  # (B, F, T)
    return rolled * (~inside)[:, None].to(rolled.dtype)


class AdversarialTerm:
    """The discriminator, its optimiser and the two losses of stage 1's adversarial term.

    Args:
        in_channels: image channels of the tokenizer.
        weight: ``--adversarial_weight`` (> 0), the share of the reconstruction gradient the term may pull with.
        start_step: first optimiser step (0-based) at which both players train.
        learning_rate: the discriminator's (constant) learning rate.
        seed: initialises the discriminator.
    """

    def __init__(self, in_channels: int, weight: float, start_step: int, learning_rate: float, seed: int = 0):
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        self.weight, self.start_step = weight, start_step
        with torch.random.fork_rng(devices=[]):  # the CPU generator only; the run's draws stay as they were
            torch.manual_seed(seed)
            self.discriminator = PatchDiscriminator(in_channels)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=learning_rate,
                                          betas=DISCRIMINATOR_BETAS)
        self._prepared = False

    def prepare(self, accelerator: Accelerator) -> None:
        """Prepare the discriminator and its optimiser (after the tokenizer's, so checkpoints list them second)."""
        if accelerator.mixed_precision == "fp16":
            raise UserInputError("--adversarial_weight does not train under --mixed_precision fp16 (one loss scaler "
                                 "for two optimisers); use --mixed_precision bf16 or no, or --adversarial_weight 0")
        self.discriminator, self.optimizer = accelerator.prepare(self.discriminator, self.optimizer)
        self._prepared = True

    def active(self, step: int) -> bool:
        """Whether optimiser step ``step`` (0-based: the number of steps already taken) trains adversarially."""
        return step >= self.start_step

    def discriminator_step(self, real: torch.Tensor, fake: torch.Tensor, accelerator: Accelerator) -> dict[str, float]:
        """One discriminator update on ``real`` vs ``fake`` (detached here); returns its logs."""
        if not self._prepared:
            raise RuntimeError("AdversarialTerm.prepare(accelerator) must run before training")
        self.optimizer.zero_grad(set_to_none=True)
        # One forward over both halves: a DDP-wrapped module may run once per backward (group norm is per image,
        # so the halves do not mix).
        both = torch.cat([diff_augment(real.detach()), diff_augment(fake.detach())])  # (2B, C, F, T)
        real_logits, fake_logits = self.discriminator(both).chunk(2)
        loss = hinge_discriminator_loss(real_logits.float(), fake_logits.float())
        accelerator.backward(loss)
        self.optimizer.step()
        return {"d_loss": float(loss.detach()), "d_real": float(real_logits.detach().float().mean()),
                "d_fake": float(fake_logits.detach().float().mean())}

    def generator_term(self, reconstruction_loss: torch.Tensor, fake: torch.Tensor, last_layer: torch.Tensor,
                       accelerator: Accelerator) -> tuple[torch.Tensor, dict[str, float]]:
        """``lambda * -D(fake)`` with the adaptive ``lambda``; gradients reach the tokenizer only."""
        discriminator = accelerator.unwrap_model(self.discriminator)
        discriminator.requires_grad_(False)
        try:
            with accelerator.autocast():
                logits = discriminator(diff_augment(fake))
        finally:
            discriminator.requires_grad_(True)
        g_loss = hinge_generator_loss(logits.float())
        rec_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
        adv_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        lam = (rec_grad.norm() / (adv_grad.norm() + 1e-4)).clamp(0.0, ADAPTIVE_WEIGHT_MAX).detach() * self.weight
        return lam * g_loss, {"g_adv": float(g_loss.detach()), "adv_lambda": float(lam)}


def decoder_last_layer(model) -> torch.Tensor:
    """The weight of the first stage's last decoder convolution (both backbones: ``decoder.conv_out``)."""
    return model.decoder.conv_out.weight
