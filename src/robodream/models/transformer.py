"""Transformer blocks with per-token AdaLN modulation, attention masks and a key/value cache.

These are the shared blocks of robodream's diffusion transformers (DiT-style AdaLN-Zero,
Peebles & Xie 2023). Two things differ from a plain DiT:

* Conditioning is *per token*: a sequence mixes clean tokens (flow time 0) and noisy
  tokens (flow time t), as in GigaWorld-Policy (arXiv 2603.17240, Sec. 3.2). A block's
  modulation is computed by ``modulate(cond)`` once per distinct conditioning vector
  (e.g. per token group, or per sampling step) and gathered per token by the caller.
* Attention accepts a boolean mask (True = may attend) and a cached key/value prefix, so a
  clean prefix computed once can be reused across denoising steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from robodream.models.attention import scaled_dot_product_attention
from robodream.models.rope import apply_rope

KV = tuple[torch.Tensor, torch.Tensor]  # keys, values: (B, n_heads, P, head_dim) each


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim with a learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of flow time t in [0, 1] followed by an MLP: (...,) -> (..., dim)."""

    def __init__(self, dim: int, freq_dim: int = 128, max_period: float = 10_000.0) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        half = freq_dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        args = (t.float() * 1000.0).unsqueeze(-1) * self.freqs  # (..., half)
        emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (..., freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class Attention(nn.Module):
    """Multi-head self-attention with QK-RMSNorm, a boolean mask and an optional cached prefix.

    ``inner_dim`` (default ``dim``) is the attention width ``n_heads * head_dim``; a narrower
    token stream can share another stream's attention by projecting into the same heads
    (Mixture-of-Transformers, see :func:`multi_stream_block`). ``out_proj=False`` builds only
    the key/value side (``project_qkv``), for tokens whose outputs nobody reads.
    """

    def __init__(self, dim: int, n_heads: int, inner_dim: int | None = None, out_proj: bool = True) -> None:
        super().__init__()
        inner_dim = inner_dim or dim
        if inner_dim % n_heads:
            raise ValueError(f"attention width {inner_dim} not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.head_dim = inner_dim // n_heads
        self.qkv = nn.Linear(dim, 3 * inner_dim)
        self.q_norm = RMSNorm(self.head_dim) if out_proj else None
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(inner_dim, dim) if out_proj else None

    def project_qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, dim) -> q, k, v (B, n_heads, L, head_dim), q and k RMS-normed.

        q and k share one normalisation pass (then each its own gain): ``F.rms_norm`` on a
        strided view costs about as much as the whole projection at 16 tokens on a CPU.
        """
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim)
        qk, wq, wk = qkv[:, :, :2], self.q_norm.weight, self.k_norm.weight  # qk (B, L, 2, nh, hd)
        low = qk.dtype != torch.float32  # low precision: the mean square in float32 (as F.rms_norm)
        if low:
            qk = qk.float()
        qk = qk * torch.rsqrt(qk.square().mean(-1, keepdim=True) + self.q_norm.eps)
        if low:
            qk, wq, wk = qk.to(qkv.dtype), wq.to(qkv.dtype), wk.to(qkv.dtype)
        return (qk[:, :, 0] * wq).transpose(1, 2), (qk[:, :, 1] * wk).transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def project_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, dim) -> k, v (B, n_heads, L, head_dim), k RMS-normed: the keys/values of
        :meth:`project_qkv` (the same numbers), for tokens whose queries are not needed."""
        B, L, _ = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.n_heads, self.head_dim)
        k, wk = qkv[:, :, 1], self.k_norm.weight
        low = k.dtype != torch.float32
        kn = k.float() if low else k
        kn = kn * torch.rsqrt(kn.square().mean(-1, keepdim=True) + self.k_norm.eps)
        if low:
            kn, wk = kn.to(qkv.dtype), wk.to(qkv.dtype)
        return (kn * wk).transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def project_out(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output (B, n_heads, L, head_dim) -> (B, L, dim)."""
        B, _, L, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(B, L, -1))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv_prefix: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Attend.

        Args:
            x: (B, L, D) tokens.
            mask: (L, P + L) bool, True where query i may attend key j; None = all.
            kv_prefix: cached keys/values (B, n_heads, P, head_dim) of P earlier tokens that
                every query may attend (subject to ``mask``).

        Returns:
            (B, L, D) output and this call's own keys/values (B, n_heads, L, head_dim).
        """
        q, k, v = self.project_qkv(x)
        own = (k, v)
        if kv_prefix is not None:
            k = torch.cat([kv_prefix[0], k], dim=2)  # (B, nh, P + L, hd)
            v = torch.cat([kv_prefix[1], v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, L, hd)
        return self.project_out(out), own


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def modulated_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``LayerNorm(x) * scale + shift`` (no learned affine); ``scale`` already holds ``1 + s``.

    x: (B, L, D); shift, scale: (B, L or 1, D), or (D,) when every token shares them (batch-1
    inference) — then it is a single fused ``layer_norm`` call.
    """
    D = x.shape[-1]
    if shift.dim() == 1:
        return F.layer_norm(x, (D,), scale, shift, eps)
    if x.shape[0] == 1 and shift.shape[1] == 1:
        return F.layer_norm(x, (D,), scale.reshape(D), shift.reshape(D), eps)
    return torch.addcmul(shift, F.layer_norm(x, (D,), eps=eps), scale)


def split_modulation(mod: torch.Tensor | tuple, n_chunks: int) -> tuple[torch.Tensor, ...]:
    """A modulation's parts: (B, L, n D) chunked, a stacked (n, B, 1, D) unbound, a tuple as is."""
    if isinstance(mod, tuple):
        return mod
    return mod.unbind(0) if mod.dim() == 4 else mod.chunk(n_chunks, dim=-1)


def _scale_offset(dim: int, n_chunks: int, scale_chunks: tuple[int, ...]) -> torch.Tensor:
    """(n_chunks * dim,) with ones in the chunks that are AdaLN scales (so modulate returns 1 + s)."""
    off = torch.zeros(n_chunks, dim)
    off[list(scale_chunks)] = 1.0
    return off.flatten()


class AdaLNBlock(nn.Module):
    """Pre-norm transformer block with AdaLN-Zero modulation by per-group conditioning.

    ``x = x + gate1 * Attn(LN(x) * (1 + scale1) + shift1)``;
    ``x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)``; the modulation layer is zero
    initialised so every block starts as the identity. The modulation is computed by
    :meth:`modulate` from conditioning vectors and passed to :meth:`forward`, so callers can
    compute it once for many tokens or many sampling steps. ``attn_dim`` (default ``dim``) is
    the attention width, so a narrow block can share a wide block's attention heads
    (:func:`multi_stream_block`). ``kv_only=True`` builds a block whose tokens only give keys
    and values to other tokens (no output projection, no MLP): the last layer of a stream whose
    outputs are never read; it has no :meth:`forward`, use ``attn.project_qkv``.
    """

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, cond_dim: int | None = None,
                 mlp: nn.Module | None = None, attn_dim: int | None = None, kv_only: bool = False) -> None:
        super().__init__()
        cond_dim = cond_dim or dim
        self.kv_only = kv_only
        self.attn = Attention(dim, n_heads, attn_dim, out_proj=not kv_only)
        self.mlp = None if kv_only else (mlp if mlp is not None else MLP(dim, int(dim * mlp_ratio)))
        self.modulation = nn.Linear(cond_dim, 6 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.register_buffer("scale_offset", _scale_offset(dim, 6, (1, 4)), persistent=False)

    def modulate(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning (..., C) -> modulation (..., 6D): shift, 1 + scale, gate (attention), same (MLP)."""
        return self.modulation(F.silu(cond)) + self.scale_offset

    def forward(
        self,
        x: torch.Tensor,
        mod: torch.Tensor,
        mask: torch.Tensor | None = None,
        kv_prefix: KV | None = None,
    ) -> tuple[torch.Tensor, KV]:
        """Args:
            x: (B, L, D) tokens.
            mod: (B, L, 6D) per-token modulation, (B, 1, 6D) shared by all tokens, or its six
                parts already split: a tuple ((B, 1, D) or, at batch 1, (D,) each) or a stacked
                (6, B, 1, D) tensor.
            mask, kv_prefix: see :meth:`Attention.forward`.

        Returns:
            (B, L, D) and this block's keys/values for ``x`` (for caching).
        """
        shift1, scale1, gate1, shift2, scale2, gate2 = split_modulation(mod, 6)
        h, kv = self.attn(modulated_norm(x, shift1, scale1), mask=mask, kv_prefix=kv_prefix)
        x = torch.addcmul(x, gate1, h)
        x = torch.addcmul(x, gate2, self.mlp(modulated_norm(x, shift2, scale2)))
        return x, kv


def multi_stream_block(
    blocks: list[AdaLNBlock],
    xs: list[torch.Tensor],
    mods: list[torch.Tensor],
    mask: torch.Tensor | None = None,
    kv_prefix: KV | None = None,
) -> tuple[list[torch.Tensor], KV]:
    """One Mixture-of-Transformers layer: segment i of the sequence runs through ``blocks[i]``'s
    weights (norms, QKV, output projection, MLP, modulation) and all segments share one
    self-attention over their concatenation.

    GigaWorld-Policy v0.5 (arXiv 2603.17240) splits a narrow action expert off the video
    transformer this way (Mixture-of-Transformers, Liang et al., arXiv 2411.04996): action
    tokens keep their own, narrower weights and still attend to the video tokens. All blocks
    must share ``n_heads`` and ``head_dim`` (their ``attn_dim``); widths may differ. When every
    segment uses the same block this equals running that block on the concatenated sequence.

    Args:
        blocks: one block per segment (the same object for segments that share weights).
        xs: segments (B, L_i, D_i), in sequence order.
        mods: per-segment modulation (B, L_i or 1, 6 D_i) from ``blocks[i].modulate``.
        mask: (sum L_i, P + sum L_i) bool over the concatenated sequence; None = all.
        kv_prefix: cached keys/values (B, n_heads, P, head_dim) attended by every query.

    Returns:
        the updated segments and the keys/values of this call's tokens (B, n_heads, sum L_i, head_dim).
    """
    if len(blocks) == 1 or all(b is blocks[0] for b in blocks):
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        mod = mods[0] if len(mods) == 1 else torch.cat(
            [m.expand(-1, x_.shape[1], -1) for m, x_ in zip(mods, xs)], dim=1)
        out, kv = blocks[0](x, mod, mask=mask, kv_prefix=kv_prefix)
        return (list(out.split([x_.shape[1] for x_ in xs], dim=1)) if len(xs) > 1 else [out]), kv
    parts = [m.chunk(6, dim=-1) for m in mods]  # shift1, scale1, gate1, shift2, scale2, gate2
    qkvs = [b.attn.project_qkv(modulated_norm(x, p[0], p[1])) for b, x, p in zip(blocks, xs, parts)]
    q, k, v = (torch.cat([t[i] for t in qkvs], dim=2) for i in range(3))  # (B, nh, L, hd)
    own = (k, v)
    if kv_prefix is not None:
        k, v = torch.cat([kv_prefix[0], k], dim=2), torch.cat([kv_prefix[1], v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).split([x.shape[1] for x in xs], dim=2)
    new = []
    for b, x, p, o in zip(blocks, xs, parts, out):
        x = torch.addcmul(x, p[2], b.attn.project_out(o))
        new.append(torch.addcmul(x, p[5], b.mlp(modulated_norm(x, p[3], p[4]))))
    return new, own


class FinalLayer(nn.Module):
    """AdaLN-modulated LayerNorm and a zero-initialised linear read-out: (B, L, D) -> (B, L, out)."""

    def __init__(self, dim: int, out_dim: int, cond_dim: int | None = None) -> None:
        super().__init__()
        self.modulation = nn.Linear(cond_dim or dim, 2 * dim)
        self.linear = nn.Linear(dim, out_dim)
        for layer in (self.modulation, self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.register_buffer("scale_offset", _scale_offset(dim, 2, (1,)), persistent=False)

    def modulate(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning (..., C) -> modulation (..., 2D): shift and 1 + scale."""
        return self.modulation(F.silu(cond)) + self.scale_offset

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        """x (B, L, D), mod (B, L or 1, 2D) or its two parts (see :meth:`AdaLNBlock.forward`) -> (B, L, out)."""
        shift, scale = split_modulation(mod, 2)
        return self.linear(modulated_norm(x, shift, scale))


# ============================================================================ video blocks
# Blocks of the video world model (GigaWorld-0-Video, arXiv 2511.19861, Sec. 3.1): RoPE in
# attention, a pluggable attention kernel (full or 3D neighbourhood), cross-attention to
# conditioning tokens and a pluggable MLP (dense or Mixture-of-Experts).

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin: (L, head_dim / 2) each
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # q, k, v (B, nh, L, hd) -> out


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense softmax attention: q (B, nh, Lq, hd), k/v (B, nh, Lk, hd) -> (B, nh, Lq, hd)."""
    return scaled_dot_product_attention(q, k, v)


def _rotate(x: torch.Tensor, rope: Rope | None) -> torch.Tensor:
    return x if rope is None else apply_rope(x, *rope)


class RoPESelfAttention(Attention):
    """Self-attention with QK-RMSNorm, rotary positions and a pluggable kernel: (B, L, D) -> (B, L, D).

    The weights and projections of :class:`Attention`; queries and keys are rotated before a
    kernel such as :func:`full_attention` or 3D neighbourhood attention.
    """

    def forward(self, x: torch.Tensor, rope: Rope | None = None,  # type: ignore[override]
                attn_fn: AttentionFn | None = None) -> torch.Tensor:
        """x (B, L, D); rope: cos/sin (L, hd/2) for queries and keys; attn_fn default :func:`full_attention`."""
        q, k, v = self.project_qkv(x)
        q, k = _rotate(q, rope), _rotate(k, rope)  # (B, nh, L, hd)
        return self.project_out((attn_fn or full_attention)(q, k, v.to(q.dtype)))


class CrossAttention(nn.Module):
    """Queries from tokens, keys/values from conditioning tokens; QK-RMSNorm, optional RoPE and key mask.

    x (B, L, D), context (B, M, Dc) -> (B, L, D).
    """

    def __init__(self, dim: int, n_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"dim {dim} not divisible by n_heads {n_heads}")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.q_norm = RMSNorm(self.head_dim)
        self.k_norm = RMSNorm(self.head_dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, rope_q: Rope | None = None,
                rope_k: Rope | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """rope_q (L, hd/2) / rope_k (M, hd/2) cos-sin pairs; context_mask (B, M) bool, True = attend."""
        B, L, D = x.shape
        M = context.shape[1]
        q = self.q(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, L, hd)
        k, v = self.kv(context).view(B, M, 2, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = _rotate(self.q_norm(q), rope_q), _rotate(self.k_norm(k), rope_k)
        mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, M)
        out = scaled_dot_product_attention(q, k, v.to(q.dtype), attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class CrossAttnBlock(nn.Module):
    """Self-attention, cross-attention and MLP, each pre-normed with AdaLN-Zero modulation.

    ``x = x + g1 * SelfAttn(LN(x) (1 + s1) + b1)``; ``x = x + g2 * CrossAttn(LN(x) (1 + s2) + b2, ctx)``;
    ``x = x + g3 * MLP(LN(x) (1 + s3) + b3)``. The modulation layer is zero-initialised (the
    block starts as the identity). Modulation is per *group* of consecutive tokens (e.g. one
    group per video frame), so a frame's flow time and actions modulate all its tokens.

    Args:
        mlp: any module (..., D) -> (..., D), e.g. :class:`~robodream.models.moe.MoEMLP`;
            default a dense :class:`MLP` of hidden size ``mlp_ratio * dim``.
    """

    def __init__(self, dim: int, n_heads: int, mlp: nn.Module | None = None, mlp_ratio: float = 4.0,
                 cond_dim: int | None = None, context_dim: int | None = None) -> None:
        super().__init__()
        self.attn = RoPESelfAttention(dim, n_heads)
        self.cross = CrossAttention(dim, n_heads, context_dim)
        self.mlp = mlp if mlp is not None else MLP(dim, int(dim * mlp_ratio))
        self.modulation = nn.Linear(cond_dim or dim, 9 * dim)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.register_buffer("scale_offset", _scale_offset(dim, 9, (1, 4, 7)), persistent=False)

    def modulate(self, cond: torch.Tensor) -> torch.Tensor:
        """Conditioning (..., C) -> modulation (..., 9D): (shift, 1 + scale, gate) x (self, cross, MLP)."""
        return self.modulation(F.silu(cond)) + self.scale_offset

    def forward(self, x: torch.Tensor, mod: torch.Tensor, context: torch.Tensor, *, rope: Rope | None = None,
                context_rope: tuple[Rope, Rope] | None = None, context_mask: torch.Tensor | None = None,
                attn_fn: AttentionFn | None = None) -> torch.Tensor:
        """Args:
            x: (B, L, D) tokens.
            mod: (B, G, 9D) modulation of G groups of L / G consecutive tokens (G = 1: shared).
            context: (B, M, Dc) conditioning tokens.
            rope: self-attention cos/sin (L, hd/2); context_rope: (query, key) cos/sin for
                cross-attention; context_mask: (B, M) bool; attn_fn: self-attention kernel.

        Returns:
            (B, L, D).
        """
        B, L, D = x.shape
        G = mod.shape[1]
        if L % G:
            raise ValueError(f"{L} tokens cannot be split into {G} modulation groups")
        m = mod.unsqueeze(2)  # (B, G, 1, 9D)
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = m.chunk(9, dim=-1)
        x4 = x.view(B, G, L // G, D)  # tokens grouped by modulation
        h = self.attn(modulated_norm(x4, sh1, sc1).flatten(1, 2), rope=rope, attn_fn=attn_fn)
        x4 = torch.addcmul(x4, g1, h.view_as(x4))
        rq, rk = context_rope if context_rope is not None else (None, None)
        h = self.cross(modulated_norm(x4, sh2, sc2).flatten(1, 2), context, rope_q=rq, rope_k=rk,
                       context_mask=context_mask)
        x4 = torch.addcmul(x4, g2, h.view_as(x4))
        x4 = torch.addcmul(x4, g3, self.mlp(modulated_norm(x4, sh3, sc3)))
        return x4.reshape(B, L, D)
