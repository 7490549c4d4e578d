"""Shared blocks of the video world model: 3D neighbourhood attention, Mixture-of-Experts, 3D RoPE."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from robodream.models.moe import MoEMLP, bucket, load_balance_loss
from robodream.models.neighborhood import (
    choose_tiles,
    flex_available,
    neighborhood_attention,
    neighborhood_mask,
    normalize_window,
)
from robodream.models.rope import RotaryEmbedding, apply_rope, grid_positions, split_head_dim


def _qkv(grid, B=2, nh=2, hd=8, seed=0, device="cpu", requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    L = grid[0] * grid[1] * grid[2]
    return [torch.randn(B, nh, L, hd, generator=g).to(device).requires_grad_(requires_grad) for _ in range(3)]


def _masked_dense(q, k, v, grid, window):
    """The definition: dense softmax attention restricted by the (L, L) neighbourhood mask."""
    mask = neighborhood_mask(grid, window, q.device)
    s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return s.masked_fill(~mask, float("-inf")).softmax(-1) @ v


# ----------------------------------------------------------------------------- neighbourhood attention
def test_mask_matches_definition():
    """Query (t, h, w) may attend key (t', h', w') iff every coordinate lies in its clamped window."""
    grid, window = (3, 4, 5), (1, 3, 3)
    mask = neighborhood_mask(grid, window)
    T, H, W = grid
    for qi in range(T * H * W):
        qt, qh, qw = qi // (H * W), (qi // W) % H, qi % W
        for ki in range(T * H * W):
            kt, kh, kw = ki // (H * W), (ki // W) % H, ki % W
            ok = True
            for qc, kc, n, k in ((qt, kt, T, 1), (qh, kh, H, 3), (qw, kw, W, 3)):
                s = min(max(qc - k // 2, 0), n - k)
                ok &= s <= kc < s + k
            assert bool(mask[qi, ki]) == ok
    assert mask.sum(1).eq(1 * 3 * 3).all()  # every query sees exactly k_t k_h k_w keys (shifted at borders)


def _assert_matches_masked_dense(qkv, grid, window, tol: float, **kw) -> None:
    """neighborhood_attention(**kw) equals masked dense attention in values and in q/k/v gradients."""
    q, k, v = qkv
    q2, k2, v2 = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = neighborhood_attention(q, k, v, grid, window, **kw)
    ref = _masked_dense(q2, k2, v2, grid, window)
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(a.grad, b.grad, atol=tol, rtol=tol)


@pytest.mark.parametrize("grid,window,tile", [
    ((5, 4, 8), (0, 3, 3), None),
    ((5, 4, 8), (3, 3, 5), None),
    ((4, 6, 6), (1, 3, 3), (2, 3, 2)),
    ((3, 5, 7), (3, 1, 5), (1, 5, 7)),
    ((2, 4, 4), (1, 3, 3), (1, 1, 1)),
])
def test_blocked_equals_masked_dense_values_and_grads(grid, window, tile):
    _assert_matches_masked_dense(_qkv(grid, requires_grad=True), grid, window, tol=1e-5,
                                 backend="blocked", tile=tile)


def test_reference_backend_equals_masked_dense():
    grid, window = (3, 4, 6), (1, 3, 3)
    q, k, v = _qkv(grid)
    torch.testing.assert_close(neighborhood_attention(q, k, v, grid, window, backend="reference"),
                               _masked_dense(q, k, v, grid, window), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [(0, 0, 0), (5, 7, 9), (3, 3, 5)])
def test_window_covering_everything_is_full_attention(window):
    grid = (3, 3, 5)
    assert normalize_window(grid, window) == grid
    q, k, v = _qkv(grid)
    full = F.scaled_dot_product_attention(q, k, v)
    for backend in ("blocked", "reference"):
        torch.testing.assert_close(neighborhood_attention(q, k, v, grid, window, backend=backend), full)
    # also the sparse code path itself: a full window forced through the masked definition
    torch.testing.assert_close(_masked_dense(q, k, v, grid, window), full, atol=1e-5, rtol=1e-5)


def test_bad_windows_and_tiles():
    with pytest.raises(ValueError, match="odd"):
        normalize_window((5, 8, 8), (1, 4, 3))
    with pytest.raises(ValueError, match="one size per grid axis"):
        normalize_window((5, 8, 8), (3, 3))
    q, k, v = _qkv((2, 4, 4))
    with pytest.raises(ValueError, match="tile"):
        neighborhood_attention(q, k, v, (2, 4, 4), (1, 3, 3), backend="blocked", tile=(1, 3, 4))
    with pytest.raises(ValueError, match="grid"):
        neighborhood_attention(q, k, v, (2, 4, 5), (1, 3, 3))


def test_choose_tiles_divides_grid():
    for grid in ((5, 4, 8), (4, 6, 6), (1, 8, 16)):
        tile = choose_tiles(grid, normalize_window(grid, (1, 3, 3)))
        assert all(n % b == 0 for n, b in zip(grid, tile))


@pytest.mark.skipif(not flex_available(), reason="FlexAttention needs torch >= 2.5")
def test_flex_eager_equals_reference():
    grid, window = (2, 4, 8), (1, 3, 3)
    q, k, v = _qkv(grid, hd=16)
    torch.testing.assert_close(neighborhood_attention(q, k, v, grid, window, backend="flex"),
                               _masked_dense(q, k, v, grid, window), atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_flex_cuda_equals_reference_values_and_grads():
    grid, window = (5, 8, 16), (3, 3, 5)
    _assert_matches_masked_dense(_qkv(grid, hd=32, device="cuda", requires_grad=True), grid, window, tol=2e-3,
                                 backend="flex")


# ----------------------------------------------------------------------------- Mixture-of-Experts
def test_load_balance_loss_known_values():
    E = 4
    # Perfectly balanced: uniform probabilities and each expert chosen equally often -> 1.
    probs = torch.full((8, E), 0.25)
    index = torch.tensor([[0, 1], [2, 3]] * 4)
    assert load_balance_loss(probs, index, E).item() == pytest.approx(1.0)
    # Collapsed: every token picks experts 0 and 1 with probabilities (0.7, 0.3, 0, 0):
    # f = (0.5, 0.5, 0, 0), P = (0.7, 0.3, 0, 0) -> E * (0.35 + 0.15) = 2.
    probs = torch.tensor([[0.7, 0.3, 0.0, 0.0]]).repeat(6, 1)
    index = torch.tensor([[0, 1]]).repeat(6, 1)
    assert load_balance_loss(probs, index, E).item() == pytest.approx(2.0)


def test_moe_routing_on_known_inputs():
    torch.manual_seed(0)
    D, E = 4, 4
    moe = MoEMLP(D, hidden=8, n_experts=E, top_k=2)
    with torch.no_grad():  # router logit of expert e = 10 * x[e]: a token routes to its two largest coordinates
        moe.router.weight.copy_(10 * torch.eye(E, D))
    x = torch.tensor([[1.0, 0.5, 0.0, 0.0],   # -> experts 0, 1
                      [0.0, 0.0, 1.0, 0.8],   # -> experts 2, 3
                      [0.0, 0.9, 1.0, 0.0]])  # -> experts 2, 1
    probs, index, weight = moe.route(x)
    assert [sorted(r) for r in index.tolist()] == [[0, 1], [2, 3], [1, 2]]
    torch.testing.assert_close(weight.sum(-1), torch.ones(3))
    out = moe(x)
    expected = torch.stack([sum(w * moe.experts[e](x[i]) for e, w in zip(index[i].tolist(), weight[i]))
                            for i in range(3)])
    torch.testing.assert_close(out, expected)
    # fraction of routing assignments per expert: experts 1 and 2 twice, 0 and 3 once (of 6)
    torch.testing.assert_close(moe.expert_fraction, torch.tensor([1, 2, 2, 1]) / 6.0)
    expected_aux = E * (moe.expert_fraction * probs.mean(0)).sum()
    torch.testing.assert_close(moe.aux_loss, expected_aux)
    moe.aux_loss.backward()  # the balance loss reaches the router
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_moe_padded_dispatch_equals_per_token_reference():
    """Outputs and gradients (input, experts, router) of the bucketed, padded dispatch equal a
    per-token loop; an expert that receives no token still gets (zero) gradients."""
    torch.manual_seed(0)
    D, E, N = 8, 4, 37
    moe = MoEMLP(D, hidden=16, n_experts=E, top_k=2)
    with torch.no_grad():  # no token picks expert 3: its router logit is always lowest
        moe.router.weight[3] = -5 * moe.router.weight[:3].abs().sum(0) - 1
    x = torch.rand(N, D, requires_grad=True)  # positive inputs keep expert 3's logit lowest
    ref_moe = copy.deepcopy(moe)
    xr = x.detach().clone().requires_grad_(True)
    _, index, weight = ref_moe.route(xr)
    assert 3 not in index.tolist()
    ref = torch.stack([sum(weight[i, j] * ref_moe.experts[int(index[i, j])](xr[i]) for j in range(2))
                       for i in range(N)])
    out = moe(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn(N, D)
    (out * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    for p, q in zip(moe.parameters(), ref_moe.parameters()):
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p),
                                   q.grad if q.grad is not None else torch.zeros_like(q))
    assert all(p.grad is not None and not p.grad.any() for p in moe.experts[3].parameters())


def test_moe_bucket_sizes():
    for n in range(1, 5000):
        b = bucket(n)
        assert n <= b <= max(n + 7, n * 9 // 8)
    assert len({bucket(n) for n in range(1025, 2049)}) == 8  # 8 sizes per octave


def test_moe_shared_expert_and_active_parameters():
    D, hidden = 8, 24  # hidden divisible by k and k + 1: exact matching
    dense_active = 2 * D * hidden
    for shared, k in ((False, 2), (True, 2), (False, 1)):
        moe = MoEMLP(D, hidden, n_experts=4, top_k=k, shared_expert=shared)
        active = (k + int(shared)) * 2 * D * moe.expert_hidden
        assert active == dense_active
    moe = MoEMLP(D, hidden, n_experts=4, top_k=2, shared_expert=True)
    x = torch.randn(5, 3, D)
    y = moe(x)
    assert y.shape == x.shape
    with torch.no_grad():  # the shared expert is always added
        for e in moe.experts:
            for p in e.parameters():
                p.zero_()
    torch.testing.assert_close(moe(x), moe.shared(x))
    with pytest.raises(ValueError, match="top_k"):
        MoEMLP(D, hidden, n_experts=2, top_k=3)


# ----------------------------------------------------------------------------- RoPE
def test_rope_3d_depends_only_on_relative_position():
    hd = 24
    rope = RotaryEmbedding(hd, theta=100.0)
    assert split_head_dim(hd) == (8, 8, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(hd, generator=g), torch.randn(hd, generator=g)

    def score(pq, pk):
        cq, sq = rope.angles(torch.tensor([pq], dtype=torch.float32))
        ck, sk = rope.angles(torch.tensor([pk], dtype=torch.float32))
        return float(apply_rope(q[None], cq, sq) @ apply_rope(k[None], ck, sk).T)

    assert score((1, 2, 3), (0, 1, 1)) == pytest.approx(score((3, 4, 5), (2, 3, 3)), abs=1e-5)
    assert score((1, 2, 3), (0, 1, 1)) != pytest.approx(score((1, 2, 3), (0, 1, 2)), abs=1e-3)
    # time-only rotation leaves the h and w sections untouched
    c, s = rope.angles(grid_positions((2, 3, 4)), axes=(0,))
    assert torch.all(c[:, 4:] == 1) and torch.all(s[:, 4:] == 0)
    x = torch.randn(2, 3, hd)
    torch.testing.assert_close(apply_rope(x, *rope.angles(torch.zeros(3, 3))), x)
