"""Mixture-of-Experts feed-forward layer with top-k softmax routing and a load-balance loss.

GigaWorld-0-Video (arXiv 2511.19861, Sec. 3.1) replaces the transformer MLP by a
Mixture-of-Experts: ``n_experts`` routed experts (4), each token sent to its ``top_k`` (2)
experts by a softmax gate, plus an optional always-on shared expert. Routing is kept
balanced with the auxiliary loss of Switch Transformer (Fedus et al. 2021, eq. 4; GShard,
Lepikhin et al. 2020)::

    L_balance = E * sum_e f_e * P_e

where ``f_e`` is the fraction of routing assignments (token, slot) that go to expert ``e``
and ``P_e`` the mean router probability of ``e`` over tokens; it equals 1 when routing is
uniform and grows as it collapses. The model adds ``weight * L_balance`` (weight 0.01) per
layer to its loss.

Experts are sized so the *active* parameters per token match a dense MLP of hidden size
``hidden``: each routed expert has ``hidden / top_k`` (or ``hidden / (top_k + 1)`` with a
shared expert, which gets the same size). The dispatch gathers each expert's tokens into a
contiguous slice of one batch, so compute is proportional to active, not total, parameters.
Each slice's length is rounded up to a bucket (:func:`bucket`): with exact lengths every
routing outcome gave the CPU matmul library (oneDNN) new shapes, whose kernels it builds
and caches anew, which slowed the MoE step and, by evicting their cached kernels, other
models in the same process (measurements in benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from robodream.models.transformer import MLP


def load_balance_loss(probs: torch.Tensor, expert_index: torch.Tensor, n_experts: int) -> torch.Tensor:
    """Switch/GShard auxiliary loss ``E * sum_e f_e P_e`` (scalar, 1.0 when perfectly balanced).

    Args:
        probs: (N, E) router softmax probabilities of N tokens.
        expert_index: (N, k) experts chosen per token.
    """
    f = torch.bincount(expert_index.reshape(-1), minlength=n_experts).to(probs.dtype) / expert_index.numel()  # (E,)
    return n_experts * (f * probs.mean(0)).sum()


def _input_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the autocast dtype when autocast is on (the experts' linears would cast it
    anyway, once per expert): halves the bytes the dispatch gathers."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


def bucket(n: int) -> int:
    """Padded row count of an expert batch of ``n`` >= 0 tokens: ``n`` rounded up to a multiple
    of max(8, 2^floor(log2 n) / 8), so at most 12.5% (or 7 rows) of padding and at most 8
    distinct sizes per octave. Our choice (no paper); see the module docstring for why."""
    step = max(8, (1 << max(n, 1).bit_length()) >> 4)
    return -(-n // step) * step


class DispatchPlan(NamedTuple):
    """Where each routing assignment goes in the padded expert batch.

    sizes: padded rows per expert (E,), summing to P.
    token: (P,) token index of each padded row; N (a zero row) for padding.
    pos: (N*k,) padded row of each (token, slot) assignment.
    src: (P,) assignment of each padded row; N*k (a zero row) for padding.
    """

    sizes: list[int]
    token: torch.Tensor
    pos: torch.Tensor
    src: torch.Tensor


def _dispatch_plan(index: torch.Tensor, counts: list[int]) -> DispatchPlan:
    """The padded, expert-grouped layout of N tokens' top-k choices ``index`` (N, k); ``counts``
    (E,) assignments per expert."""
    N, k = index.shape
    dev, A = index.device, index.numel()
    flat = index.reshape(-1)
    order = torch.argsort(flat, stable=True)  # assignments grouped by expert
    sizes = [bucket(n) if n else 0 for n in counts]
    start = torch.tensor([0] + counts[:-1], device=dev).cumsum(0)
    off = torch.tensor([0] + sizes[:-1], device=dev).cumsum(0)
    e = flat[order]
    pos_sorted = torch.arange(A, device=dev) - start[e] + off[e]  # padded row of each sorted assignment
    pos = torch.empty_like(order)
    pos[order] = pos_sorted
    src = torch.full((sum(sizes),), A, dtype=torch.long, device=dev)
    src[pos_sorted] = order
    token = torch.where(src < A, torch.div(src, k, rounding_mode="floor"), N)
    return DispatchPlan(sizes, token, pos, src)


def _with_zero_row(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(1, x.shape[-1])])


class _Dispatch(torch.autograd.Function):
    """Tokens x (N, D) -> padded expert batch (P, D); backward: gather each token's k rows and sum."""

    @staticmethod
    def forward(ctx, x, plan: DispatchPlan, k: int):
        ctx.save_for_backward(plan.pos)
        ctx.k = k
        return _with_zero_row(x).index_select(0, plan.token)

    @staticmethod
    def backward(ctx, grad):
        (pos,) = ctx.saved_tensors
        return grad.index_select(0, pos).view(-1, ctx.k, grad.shape[-1]).sum(1), None, None


class _Combine(torch.autograd.Function):
    """Padded expert outputs (P, D) -> (N*k, D) in (token, slot) order; backward: the inverse gather."""

    @staticmethod
    def forward(ctx, y, plan: DispatchPlan):
        ctx.save_for_backward(plan.src)
        return y.index_select(0, plan.pos)

    @staticmethod
    def backward(ctx, grad):
        (src,) = ctx.saved_tensors
        return _with_zero_row(grad).index_select(0, src), None


class MoEMLP(nn.Module):
    """Top-k routed Mixture-of-Experts MLP: (..., D) -> (..., D).

    After each forward, ``aux_loss`` holds the (differentiable) load-balance loss of that
    call (unweighted) and ``expert_fraction`` (E,) the detached fraction of routing
    assignments each expert received (sums to 1; 1/E when balanced).

    Args:
        dim: token width D.
        hidden: hidden size of the *dense* MLP whose active parameters this layer matches.
        n_experts: routed experts E.
        top_k: experts per token k (1 <= k <= E).
        shared_expert: add an always-active expert.
        normalize_topk: renormalise the k selected gate probabilities to sum to 1.
    """

    def __init__(self, dim: int, hidden: int, n_experts: int = 4, top_k: int = 2, shared_expert: bool = False,
                 normalize_topk: bool = True) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k must be in [1, n_experts={n_experts}], got {top_k}")
        self.n_experts, self.top_k, self.normalize_topk = n_experts, top_k, normalize_topk
        self.expert_hidden = max(1, hidden // (top_k + int(shared_expert)))
        self.router = nn.Linear(dim, n_experts, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.experts = nn.ModuleList(MLP(dim, self.expert_hidden) for _ in range(n_experts))
        self.shared = MLP(dim, self.expert_hidden) if shared_expert else None
        self.aux_loss: torch.Tensor = torch.zeros(())
        self.register_buffer("expert_fraction", torch.full((n_experts,), 1.0 / n_experts), persistent=False)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router of N tokens x (N, D): probabilities (N, E) fp32, chosen experts (N, k), gate weights (N, k)."""
        probs = F.softmax(self.router(x).float(), dim=-1)
        weight, index = probs.topk(self.top_k, dim=-1)
        if self.normalize_topk:
            weight = weight / weight.sum(-1, keepdim=True)
        return probs, index, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xf = x.reshape(-1, shape[-1])  # (N, D)
        probs, index, weight = self.route(xf)
        self.aux_loss = load_balance_loss(probs, index, self.n_experts)
        with torch.no_grad():
            counts = torch.bincount(index.reshape(-1), minlength=self.n_experts)  # (E,) assignments
            self.expert_fraction = counts.float() / counts.sum()
        # Dispatch: the N*k (token, slot) assignments grouped by expert into one padded
        # (P, D) matrix, expert e's rows a contiguous slice whose length is rounded up to a
        # bucket (pad rows read a zero token and are dropped). Bucketed lengths keep the
        # matmul shapes few, so the CPU matmul library reuses its kernels instead of building
        # new ones for every routing outcome. Outputs go back to (token, slot) order and are
        # summed over the k slots. Gathers both ways (see _Dispatch/_Combine): no scatter-add.
        plan = _dispatch_plan(index, counts.tolist())
        xs = _Dispatch.apply(_input_dtype(xf), plan, self.top_k)  # (P, D)
        # An expert with no tokens still runs on an empty batch, so every parameter takes part
        # in the graph (zero gradients) — DistributedDataParallel requires that.
        ys = torch.cat([expert(part) for expert, part in zip(self.experts, xs.split(plan.sizes))])  # (P, D)
        y = _Combine.apply(ys, plan).view(-1, self.top_k, shape[-1])  # (N, k, D) in slot order
        out = (y * weight.unsqueeze(-1)).sum(1).to(xf.dtype)  # gate-weighted sum over the k slots, fp32
        if self.shared is not None:
            out = out + self.shared(xf).to(xf.dtype)
        return out.reshape(shape)
