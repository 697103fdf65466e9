"""Unit tests of the anti-collapse EMA vector quantizer."""

from __future__ import annotations

import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from vqvae_transformer.models.quantizer import EMAVectorQuantizer, code_statistics


def _ready(q: EMAVectorQuantizer, embed: torch.Tensor, counts: torch.Tensor | None = None) -> EMAVectorQuantizer:
    """Put a known codebook into ``q`` and mark it initialised (so no k-means runs)."""
    counts = torch.ones(embed.shape[0]) if counts is None else counts
    with torch.no_grad():
        q.embed.copy_(embed)
        q.cluster_size.copy_(counts)
        q.embed_sum.copy_(embed * counts[:, None])
        q.initialized.fill_(True)
    return q


def test_layout_known_latent_maps_to_expected_code_at_row_col():
    k, c, h, w = 6, 3, 2, 3
    codes = torch.eye(k, c) * 10 + torch.arange(k)[:, None].float()  # distinct, well separated codes
    q = _ready(EMAVectorQuantizer(k, c, use_l2_norm=False), codes).eval()
    expected = torch.tensor([[[5, 0, 3], [1, 4, 2]]])  # (B=1, H=2, W=3)
    z = codes[expected.reshape(-1)].view(1, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
    z_q, _, (_, _, indices) = q(z)
    assert indices.shape == (1, h, w)
    assert torch.equal(indices, expected)
    assert torch.allclose(z_q, z)
    assert torch.equal(q.encode_indices(z), expected)


@pytest.mark.parametrize("codebook_dim,l2", [(None, False), (2, True), (4, False)])
def test_indices_round_trip_through_get_codebook_entry(codebook_dim, l2):
    torch.manual_seed(0)
    q = EMAVectorQuantizer(32, 8, codebook_dim=codebook_dim, use_l2_norm=l2)
    q.train()(torch.randn(4, 8, 5, 7))  # k-means initialisation + one update
    q.eval()
    z = torch.randn(3, 8, 5, 7)
    z_q, _, (_, _, indices) = q(z)
    entry = q.get_codebook_entry(indices, shape=(3, 5, 7, 8))
    assert entry.shape == z.shape
    assert torch.allclose(entry, z_q, atol=1e-5)


def test_ema_update_equals_hand_computation():
    decay, eps = 0.5, 0.1
    q = EMAVectorQuantizer(2, 2, decay=decay, eps=eps, dead_code_threshold=0.0, use_l2_norm=False)
    _ready(q, torch.tensor([[0.0, 0.0], [10.0, 10.0]]), counts=torch.tensor([2.0, 2.0]))
    # three vectors: two near code 0, one near code 1 -> layout (B=1, C=2, H=1, W=3)
    vecs = torch.tensor([[1.0, 0.0], [0.0, 3.0], [9.0, 9.0]])
    q.train()(vecs.t().reshape(1, 2, 1, 3))
    # counts: 0.5*2 + 0.5*2 = 2 (code 0), 0.5*2 + 0.5*1 = 1.5 (code 1)
    size = torch.tensor([2.0, 1.5])
    # sums: 0.5*[0,0]*2 + 0.5*[1,3] = [0.5,1.5]; 0.5*[20,20] + 0.5*[9,9] = [14.5,14.5]
    sums = torch.tensor([[0.5, 1.5], [14.5, 14.5]])
    n = size.sum()
    smoothed = (size + eps) / (n + 2 * eps) * n
    assert torch.allclose(q.cluster_size, size)
    assert torch.allclose(q.embed_sum, sums)
    assert torch.allclose(q.embed, sums / smoothed[:, None])
    assert int(q.num_updates) == 1


@pytest.mark.parametrize("sampling", ["error", "uniform"])
def test_dead_codes_are_restarted_from_encoder_outputs(sampling):
    torch.manual_seed(0)
    q = EMAVectorQuantizer(4, 2, dead_code_threshold=0.5, decay=0.9, use_l2_norm=False, restart_sampling=sampling)
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [50.0, 50.0]])
    _ready(q, codes, counts=torch.tensor([5.0, 5.0, 5.0, 0.1]))  # code 3 is dead
    z = torch.tensor([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [7.0, -7.0]]).t().reshape(1, 2, 1, 4)
    q.train()(z)
    assert q.last_stats.restarted_codes == 1
    inputs = z.reshape(2, 4).t()
    assert any(torch.allclose(q.embed[3], v) for v in inputs)
    assert q.cluster_size[3] == pytest.approx(0.5)
    assert torch.allclose(q.embed_sum[3], q.embed[3] * 0.5)


def test_error_weighted_restarts_pick_the_worst_quantised_vector():
    q = EMAVectorQuantizer(3, 2, dead_code_threshold=0.5, use_l2_norm=False, restart_sampling="error")
    _ready(q, torch.tensor([[0.0, 0.0], [1.0, 1.0], [9.0, 9.0]]), counts=torch.tensor([5.0, 5.0, 0.0]))
    far = torch.tensor([-1000.0, 1000.0])
    z = torch.stack([torch.zeros(2), torch.ones(2), far]).t().reshape(1, 2, 1, 3)  # (B, C, H, W)
    q.train()(z)
    assert torch.allclose(q.embed[2], far)  # its error dwarfs the others: picked with probability ~1


def test_restarts_keep_the_codebook_alive_when_the_data_moves():
    torch.manual_seed(0)
    q = EMAVectorQuantizer(32, 4, decay=0.8, dead_code_threshold=0.5, use_l2_norm=False).train()
    for step in range(60):
        centre = 0.0 if step < 30 else 20.0  # the encoder's output distribution jumps half-way
        q(torch.randn(8, 4, 4, 4) + centre)
    q.reset_usage()
    q.eval()
    q(torch.randn(64, 4, 4, 4) + 20.0)
    assert q.usage_summary()["codebook_usage"] >= 0.9


def test_statistics_match_a_direct_count():
    torch.manual_seed(0)
    q = EMAVectorQuantizer(16, 4, use_l2_norm=False)
    q.train()(torch.randn(2, 4, 3, 3))
    q.reset_usage()
    q.eval()
    all_indices = []
    for _ in range(3):
        _, _, (perplexity, _, indices) = q(torch.randn(2, 4, 3, 3))
        all_indices.append(indices.reshape(-1).numpy())
        _, counts = np.unique(indices.numpy(), return_counts=True)
        p = counts / counts.sum()
        assert perplexity.item() == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
        assert q.last_stats.unique_codes == len(counts)
    flat = np.concatenate(all_indices)
    values, counts = np.unique(flat, return_counts=True)
    p = counts / counts.sum()
    summary = q.usage_summary()
    assert summary["codebook_usage"] == pytest.approx(len(values) / 16)
    assert summary["normalized_entropy"] == pytest.approx(-(p * np.log(p)).sum() / math.log(16), rel=1e-6)
    assert summary["top_code_share"] == pytest.approx(p.max())
    assert summary["total_tokens"] == flat.size


def test_code_statistics_of_a_collapsed_and_a_uniform_histogram():
    collapsed = code_statistics(torch.tensor([10, 0, 0, 0]))
    uniform = code_statistics(torch.tensor([3, 3, 3, 3]))
    assert collapsed["codebook_usage"] == 0.25 and collapsed["normalized_entropy"] == 0.0
    assert uniform["codebook_usage"] == 1.0 and uniform["normalized_entropy"] == pytest.approx(1.0)
    assert uniform["codebook_perplexity"] == pytest.approx(4.0)


def test_codebook_math_stays_float32_under_bf16_autocast():
    torch.manual_seed(0)
    q = EMAVectorQuantizer(16, 8, codebook_dim=4).train()
    z = torch.randn(2, 8, 4, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, loss, _ = q(z.to(torch.bfloat16))
    for buf in (q.embed, q.cluster_size, q.embed_sum):
        assert buf.dtype == torch.float32
    assert loss.dtype == torch.float32
    assert z_q.dtype == torch.bfloat16


def test_straight_through_gradient_and_commitment_loss():
    torch.manual_seed(0)
    q = EMAVectorQuantizer(8, 3, beta=0.25, use_l2_norm=False)
    q.train()(torch.randn(2, 3, 2, 2))
    q.eval()
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    z_q, loss, (_, _, indices) = q(z)
    target = q.get_codebook_entry(indices, shape=(1, 2, 2, 3))
    assert loss.item() == pytest.approx(0.25 * torch.mean((z.detach() - target) ** 2).item(), rel=1e-5)
    z_q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # identity through the quantizer


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="decay"):
        EMAVectorQuantizer(8, 4, decay=1.5)
    with pytest.raises(ValueError, match="codebook_dim"):
        EMAVectorQuantizer(8, 4, codebook_dim=16)
    with pytest.raises(ValueError, match="restart_sampling"):
        EMAVectorQuantizer(8, 4, restart_sampling="random")
    with pytest.raises(ValueError, match="latent channels"):
        EMAVectorQuantizer(8, 4)(torch.randn(1, 3, 2, 2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _distributed_worker(rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(100 + rank)  # each rank sees different data
    q = EMAVectorQuantizer(16, 4, decay=0.9, dead_code_threshold=0.5).train()
    for _ in range(5):
        q(torch.randn(2, 4, 4, 4) * (rank + 1))
    results[rank] = torch.cat([q.embed.flatten(), q.cluster_size, q.embed_sum.flatten()]).clone()
    dist.barrier()
    dist.destroy_process_group()


def test_every_rank_holds_the_same_codebook_under_two_processes():
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_distributed_worker, args=(2, _free_port(), results), nprocs=2, start_method="spawn")
        assert torch.equal(results[0], results[1])
