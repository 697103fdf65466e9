"""Stage 1's adversarial term: the patch discriminator's layout, the hinge losses, which player each update
reaches, VQGAN's adaptive weight, the start step, and the refusals (in-process, tiny models)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from vqvae_transformer.errors import UserInputError
from vqvae_transformer.models.discriminator import (PatchDiscriminator, hinge_discriminator_loss,
                                                    hinge_generator_loss)
from vqvae_transformer.models.first_stage import build_first_stage
from vqvae_transformer.training.adversarial import AdversarialTerm, decoder_last_layer, diff_augment
from vqvae_transformer.training.train_vqvae import VQVAEStep

TINY = dict(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=8, num_vq_embeddings=32,
            codebook_dim=4, sample_size=16, layers_per_block=1)


@pytest.mark.parametrize("channels, size, layers, patches", [(1, 64, 2, 14), (3, 32, 2, 6), (1, 64, 3, 6)])
def test_the_discriminator_gives_one_logit_per_patch(channels, size, layers, patches):
    disc = PatchDiscriminator(channels, num_layers=layers)
    logits = disc(torch.rand(2, channels, size, size) * 2 - 1)
    assert logits.shape == (2, 1, patches, patches)


def test_hinge_losses_have_their_margins():
    far_real, far_fake = torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 3, 3), -2.0)
    assert hinge_discriminator_loss(far_real, far_fake) == 0  # both beyond the margin: nothing to learn
    assert hinge_discriminator_loss(torch.zeros(4), torch.zeros(4)) == pytest.approx(1.0)
    assert hinge_discriminator_loss(torch.tensor([0.5]), torch.tensor([-0.5])) == pytest.approx(0.5)
    assert hinge_generator_loss(torch.tensor([1.0, 3.0])) == pytest.approx(-2.0)


def test_diff_augment_rolls_each_image_in_time_and_blanks_a_quarter():
    torch.manual_seed(0)
    images = (torch.rand(8, 2, 16, 12) + 0.5).requires_grad_()  # no zeros: a 0 after augmentation is the cutout
    out = diff_augment(images)
    assert out.shape == images.shape
    for i in range(8):
        blank = out[i, 0] == 0
        assert blank.sum() == 8 * 6 and torch.equal(blank, out[i, 1] == 0)  # one F/2 x T/2 box, every channel
        kept = ~blank.any(dim=0)  # columns the box missed: a circular roll of the image's own columns
        shift = next(s for s in range(12) if torch.equal(out[i, :, :, kept], images[i].roll(-s, dims=-1)[:, :, kept]))
        assert 0 <= shift < 12
    assert not torch.equal(out[0] == 0, out[1] == 0) or not torch.equal(out[2] == 0, out[3] == 0)  # per image
    out.sum().backward()
    assert images.grad is not None and (images.grad == 0).float().mean() == pytest.approx(0.25)


def _tiny_setup(weight: float = 0.5, start: int = 0):
    torch.manual_seed(0)
    model = build_first_stage("vq", in_channels=1, out_channels=1, **TINY)
    accelerator = Accelerator(cpu=True)
    term = AdversarialTerm(1, weight, start, learning_rate=1e-3)
    term.prepare(accelerator)
    return model, accelerator, term


def test_the_generator_term_reaches_the_tokenizer_only_with_vqgans_adaptive_weight():
    model, accelerator, term = _tiny_setup(weight=0.5)
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    out = model(images)
    rec = F.l1_loss(out.sample, images)
    last = decoder_last_layer(model)
    torch.manual_seed(1)
    term_loss, logs = term.generator_term(rec, out.sample, last, accelerator)
    # The weight, recomputed by hand (same augmentation draw): 0.5 * |d rec / d last| / (|d adv / d last| + 1e-4).
    g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
    disc = accelerator.unwrap_model(term.discriminator)
    torch.manual_seed(1)
    g_adv = torch.autograd.grad(-disc(diff_augment(out.sample)).mean(), last, retain_graph=True)[0]
    expected = 0.5 * g_rec.norm() / (g_adv.norm() + 1e-4)
    assert logs["adv_lambda"] == pytest.approx(float(expected), rel=1e-4)
    for p in disc.parameters():
        p.grad = None
    term_loss.backward()
    assert last.grad is not None and last.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # the discriminator is not trained by this side
    assert all(p.requires_grad for p in disc.parameters())  # and is trainable again afterwards


def test_the_discriminator_step_moves_the_discriminator_and_not_the_tokenizer():
    model, accelerator, term = _tiny_setup()
    disc = accelerator.unwrap_model(term.discriminator)
    before = [p.detach().clone() for p in disc.parameters()]
    images = torch.rand(4, 1, 16, 16) * 2 - 1
    logs = term.discriminator_step(images, model(images).sample, accelerator)
    assert set(logs) == {"d_loss", "d_real", "d_fake"}
    assert any(not torch.equal(a, p) for a, p in zip(before, disc.parameters()))
    assert all(p.grad is None for p in model.parameters())  # fake images were detached


def test_the_step_function_trains_adversarially_from_the_start_step_only():
    model, accelerator, term = _tiny_setup(start=3)
    step = VQVAEStep("l1", None, time_shift=False, adversarial=term)
    batch = (torch.rand(4, 1, 16, 16) * 2 - 1,)
    step.global_step = 2
    _, logs = step(model, batch, accelerator)
    assert "d_loss" not in logs and "adv_lambda" not in logs
    step.global_step = 3
    loss, logs = step(model, batch, accelerator)
    assert {"d_loss", "g_adv", "adv_lambda"} <= set(logs)
    assert torch.isfinite(loss)


def test_fp16_and_bad_weights_are_refused():
    term = AdversarialTerm(1, 0.5, 0, learning_rate=1e-3)
    with pytest.raises(UserInputError, match="fp16"):
        term.prepare(SimpleNamespace(mixed_precision="fp16"))
    with pytest.raises(ValueError, match="weight"):
        AdversarialTerm(1, 0.0, 0, learning_rate=1e-3)
    with pytest.raises(RuntimeError, match="prepare"):
        term.discriminator_step(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16), None)
