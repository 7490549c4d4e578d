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
shared expert, which gets the same size). The dispatch loops over experts and gathers
each expert's tokens, so compute is proportional to active, not total, parameters.
"""

from __future__ import annotations

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
            counts = torch.bincount(index.reshape(-1), minlength=self.n_experts).float()
            self.expert_fraction = counts / counts.sum()
        out = torch.zeros_like(xf)
        if self.shared is not None:
            out = out + self.shared(xf).to(xf.dtype)
        flat_expert = index.reshape(-1)  # (N*k,) expert of each (token, slot)
        order = torch.argsort(flat_expert, stable=True)
        tokens = order // self.top_k  # token of each sorted assignment
        gates = weight.reshape(-1)[order]
        counts_l = torch.bincount(flat_expert, minlength=self.n_experts).tolist()
        start = 0
        for e, n in enumerate(counts_l):
            # An expert with no tokens still runs on an empty batch, so every parameter takes
            # part in the graph (zero gradients) — DistributedDataParallel requires that.
            tok = tokens[start:start + n]
            y = self.experts[e](xf.index_select(0, tok))  # (n, D)
            out = out.index_add(0, tok, (y * gates[start:start + n, None]).to(xf.dtype))
            start += n
        return out.reshape(shape)
