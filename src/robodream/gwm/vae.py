"""Set VAE: a frame's Gaussians <-> a small set of latent vectors (GWM, arXiv 2508.17600, Sec. 3.2).

Encoder (3DShape2VecSet-style, as the GWM paper): ``n_latents`` farthest-point-sampled queries;
embed every Gaussian (Fourier features of its normalised centre + a linear map of its other 11
numbers); one cross-attention from the queries to all Gaussians, a few self-attention layers,
then a linear map to the mean and log-variance of a ``latent_dim`` vector per query: the latent
set z (B, n_latents, latent_dim).

Queries (``query_mode``): ``"fixed"`` (default) — FPS once over the training frames' pooled
centres gives ``n_latents`` anchor points in the scene (a buffer saved with the weights); each
frame's queries are the Fourier embeddings of these anchors, so latent ``j`` always describes
the same region of space in every frame. The dynamics model needs exactly that: token ``j`` of
the next frame continues token ``j`` of this one. ``"frame"`` — FPS over each frame's own
Gaussians (3DShape2VecSet as written): the queries follow the frame, but FPS is unstable under
small motions, so token ``j`` means different places in consecutive frames. With fixed queries,
``encoder_neighbors`` = k > 0 lets each query attend only to its k nearest Gaussians, each
embedding with its offset from the query's anchor (the local pooling of PointNet++-style set
encoders); 0 attends to all of them.

Decoder: self-attention layers over the latent set; every latent vector becomes
``n / n_latents`` Gaussians (14 numbers each, activated: robodream.gwm.pixel's layout). Their
centres (``decode_means``): ``"anchor"`` — offsets from the latent's own anchor (at most a few
centimetres are needed: the Gaussians near anchor ``j`` are the ones latent ``j`` describes);
``"absolute"`` — anywhere in the scene box, from every latent alike (the first design: the
decoder must learn each token's place in space before it can place a Gaussian).

Loss: Chamfer distance between decoded and input centres (normalised units) + L1 between
renders of the decoded and of the input Gaussians through ``robodream.gaussians``'s
rasteriser (batched over scenes) + beta x KL(q(z | x) || N(0, I)).

Because the encoder only sees the set (attention without positions over the Gaussians) its
output does not depend on their order: permutation-invariant (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robodream.errors import ConfigError
from robodream.gwm.pixel import GAUSSIAN_DIM, farthest_point_sample, pack, render, unpack
from robodream.models.transformer import MLP, CrossAttention, RMSNorm, RoPESelfAttention


@dataclass
class SetVAEConfig:
    """Architecture and loss weights of the set VAE (saved in a run's config.json under ``model``)."""

    n_gaussians: int = 2048  # Gaussians per frame (input and output)
    n_latents: int = 512  # latent vectors per frame (the FPS queries)
    latent_dim: int = 16  # numbers per latent vector
    dim: int = 128  # transformer width
    heads: int = 4
    encoder_layers: int = 1  # self-attention layers after the cross-attention
    decoder_layers: int = 4
    fourier_bands: int = 8  # Fourier features of the centre: sin/cos at 2^0..2^(bands-1)
    kl_weight: float = 1e-4  # beta
    chamfer_weight: float = 1.0
    render_weight: float = 1.0
    render_cameras: int = 1  # input cameras rendered per frame and step in the loss (random ones)
    query_mode: str = "fixed"  # "fixed": FPS anchors of the training set, shared by all frames; "frame": per-frame FPS
    # Decoded centres: "anchor" = latent j's Gaussians are offsets from anchor j (needs query_mode "fixed");
    # "absolute" = anywhere in the scene box from every latent
    decode_means: str = "anchor"
    anchor_radius: float = 0.1  # "anchor": a unit of the head's output moves a centre this far (x extent)
    # > 0: each fixed query attends only to its k nearest Gaussians (centres), which also carry their
    # offset from the query's anchor; 0: every query attends to every Gaussian
    encoder_neighbors: int = 16
    # Scene normalisation (metres), fitted on the training Gaussians (filled in by training).
    center: tuple[float, float, float] = (0.0, 0.6, 0.1)
    extent: float = 1.0

    # runs saved before these fields existed decoded and encoded so
    LEGACY_DEFAULTS: ClassVar[dict] = {"decode_means": "absolute", "encoder_neighbors": 0}

    def __post_init__(self) -> None:
        self.center = tuple(float(c) for c in self.center)
        if self.n_gaussians % self.n_latents:
            raise ConfigError(f"n_gaussians ({self.n_gaussians}) must be a multiple of n_latents ({self.n_latents})")
        if self.dim % self.heads or self.dim % 2:
            raise ConfigError(f"dim ({self.dim}) must be even and divisible by heads ({self.heads})")
        if min(self.n_latents, self.latent_dim, self.fourier_bands, self.decoder_layers, self.render_cameras) < 1:
            raise ConfigError("n_latents, latent_dim, fourier_bands, decoder_layers and render_cameras must be >= 1")
        if self.query_mode not in ("fixed", "frame"):
            raise ConfigError(f"query_mode must be 'fixed' or 'frame', got {self.query_mode!r}")
        if self.decode_means not in ("absolute", "anchor"):
            raise ConfigError(f"decode_means must be 'absolute' or 'anchor', got {self.decode_means!r}")
        if self.decode_means == "anchor" and self.query_mode != "fixed":
            raise ConfigError("decode_means 'anchor' needs query_mode 'fixed' (the anchors are the fixed queries); "
                              "use decode_means 'absolute' with per-frame queries")
        if self.encoder_neighbors < 0 or (self.encoder_neighbors and self.query_mode != "fixed"):
            raise ConfigError(f"encoder_neighbors must be >= 0 and > 0 needs query_mode 'fixed' (got "
                              f"{self.encoder_neighbors}); use encoder_neighbors 0 with per-frame queries")
        if self.encoder_neighbors > self.n_gaussians:
            raise ConfigError(f"encoder_neighbors ({self.encoder_neighbors}) > n_gaussians ({self.n_gaussians})")
        if self.anchor_radius <= 0:
            raise ConfigError(f"anchor_radius must be > 0, got {self.anchor_radius}")
        if self.extent <= 0 or min(self.kl_weight, self.chamfer_weight, self.render_weight) < 0:
            raise ConfigError("extent must be > 0 and the loss weights >= 0")


class _SelfBlock(nn.Module):
    """Pre-norm self-attention + MLP (the models' attention with QK-RMSNorm, no positions)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.n1, self.n2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = RoPESelfAttention(dim, heads)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.n1(x))
        return x + self.mlp(self.n2(x))


def fourier_features(xyz: Tensor, bands: int) -> Tensor:
    """(..., 3) -> (..., 3 + 6 bands): the input and sin/cos of pi 2^k x for k < bands."""
    freqs = math.pi * 2.0 ** torch.arange(bands, device=xyz.device, dtype=xyz.dtype)
    a = (xyz[..., None] * freqs).flatten(-2)  # (..., 3 bands)
    return torch.cat([xyz, a.sin(), a.cos()], -1)


def canonical_order(g: Tensor) -> Tensor:
    """The Gaussians (B, n, 14) sorted lexicographically by all 14 numbers (centre first).

    Farthest-point sampling breaks distance ties by position in the array, and float16 storage
    makes ties common; sorting first makes everything downstream independent of the input order.
    """
    idx = torch.arange(g.shape[1], device=g.device).expand(g.shape[0], -1)
    for col in reversed(range(g.shape[-1])):  # stable sorts, least significant column first
        key = torch.gather(g[..., col], 1, idx)
        idx = torch.gather(idx, 1, torch.sort(key, dim=1, stable=True).indices)
    return torch.gather(g, 1, idx[..., None].expand(-1, -1, g.shape[-1]))


def chamfer(a: Tensor, b: Tensor) -> Tensor:
    """Symmetric Chamfer distance (B,) between point sets (B, N, 3) and (B, M, 3): mean squared
    nearest distance each way. Nearest neighbours are found without autograd and the distances
    recomputed on the pairs: the same value and gradient as ``cdist(a, b).min``, ~10x cheaper."""
    with torch.no_grad():
        d = torch.cdist(a.detach(), b.detach())  # (B, N, M)
        ab, ba = d.argmin(2), d.argmin(1)  # (B, N), (B, M)
    near_b = torch.gather(b, 1, ab[..., None].expand(-1, -1, 3))
    near_a = torch.gather(a, 1, ba[..., None].expand(-1, -1, 3))
    return (a - near_b).pow(2).sum(-1).mean(1) + (b - near_a).pow(2).sum(-1).mean(1)


class GaussianSetVAE(nn.Module):
    """Set VAE over per-frame Gaussians (module docstring). ``model_type``: ``gwm_set_vae``."""

    model_type = "gwm_set_vae"

    def __init__(self, cfg: SetVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.register_buffer("center", torch.tensor(cfg.center, dtype=torch.float32))
        self.register_buffer("extent", torch.tensor(float(cfg.extent)))
        self.register_buffer("anchors", torch.zeros(cfg.n_latents, 3))  # "fixed" queries, metres (set_anchors)
        self.query_embed = nn.Sequential(nn.Linear(3 + 6 * cfg.fourier_bands, d), nn.GELU(), nn.Linear(d, d))
        self.embed = nn.Sequential(nn.Linear(3 + 6 * cfg.fourier_bands + GAUSSIAN_DIM - 3, d), nn.GELU(),
                                   nn.Linear(d, d))
        self.q_norm, self.kv_norm = RMSNorm(d), RMSNorm(d)
        if cfg.encoder_neighbors:  # a neighbour's offset from the query's anchor, in anchor radii
            self.offset_embed = nn.Sequential(nn.Linear(3 + 6 * cfg.fourier_bands, d), nn.GELU(), nn.Linear(d, d))
        self.cross = CrossAttention(d, cfg.heads)
        self.cross_mlp = MLP(d, 4 * d)
        self.cross_norm = RMSNorm(d)
        self.encoder = nn.ModuleList(_SelfBlock(d, cfg.heads) for _ in range(cfg.encoder_layers))
        self.to_latent = nn.Linear(d, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, d)
        self.decoder = nn.ModuleList(_SelfBlock(d, cfg.heads) for _ in range(cfg.decoder_layers))
        self.out_norm = RMSNorm(d)
        self.per_token = cfg.n_gaussians // cfg.n_latents
        self.head = nn.Linear(d, self.per_token * GAUSSIAN_DIM)
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)

    def set_anchors(self, centers: Tensor) -> None:
        """FPS ``n_latents`` anchors from centres (P, 3) pooled over training frames (``"fixed"`` queries).

        Raises:
            ConfigError: fewer than ``n_latents`` distinct centres.
        """
        idx, radius = farthest_point_sample(centers[None].float(), self.cfg.n_latents)
        if bool((radius[0, 1:] == 0).any()):
            raise ConfigError(f"need at least {self.cfg.n_latents} distinct Gaussian centres for the anchors")
        self.anchors.copy_(centers[idx[0]].to(self.anchors))

    # ------------------------------------------------------------------ normalisation
    def normalize_centers(self, means: Tensor) -> Tensor:
        """World centres (metres) -> the model's units (centred, divided by the scene extent)."""
        return (means - self.center) / self.extent

    def _features(self, g: Tensor) -> Tensor:
        p = unpack(g)
        xyz = self.normalize_centers(p["means"])
        scales = torch.log(p["scales"].clamp_min(1e-6) / self.extent) / 5.0 + 1.0  # ~[-1, 1] for 0.1 mm .. 1 m
        other = torch.cat([p["quats"], scales, p["opacities"][..., None] * 2 - 1, p["colors"] * 2 - 1], -1)
        return torch.cat([fourier_features(xyz, self.cfg.fourier_bands), other], -1)

    # ------------------------------------------------------------------ encoder / decoder
    def encode(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """Gaussians (B, n, 14) -> posterior mean and log-variance (B, n_latents, latent_dim).

        Raises:
            ConfigError: not (B, n_gaussians, 14).
        """
        if g.dim() != 3 or g.shape[1:] != (self.cfg.n_gaussians, GAUSSIAN_DIM):
            raise ConfigError(f"the set VAE takes (B, {self.cfg.n_gaussians}, {GAUSSIAN_DIM}) Gaussians, "
                              f"got {tuple(g.shape)}")
        g = canonical_order(g)
        h = self.embed(self._features(g))  # (B, n, d)
        p = unpack(g)
        live = p["opacities"] > 0
        if self.cfg.query_mode == "fixed":
            q = self.query_embed(fourier_features(self.normalize_centers(self.anchors), self.cfg.fourier_bands))
            q = q[None].expand(g.shape[0], -1, -1)
        else:
            with torch.no_grad():
                idx, _ = farthest_point_sample(p["means"].float(), self.cfg.n_latents, live)
            q = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))  # (B, n_latents, d)
        if self.cfg.encoder_neighbors:
            x = q + self._local_cross(q, h, self.normalize_centers(p["means"]), live)
        else:
            x = q + self.cross(self.q_norm(q), self.kv_norm(h), context_mask=live)
        x = x + self.cross_mlp(self.cross_norm(x))
        for blk in self.encoder:
            x = blk(x)
        mean, logvar = self.to_latent(x).chunk(2, -1)
        return mean, logvar.clamp(-20.0, 10.0)

    def _local_cross(self, q: Tensor, h: Tensor, xyz: Tensor, live: Tensor) -> Tensor:
        """Cross-attention of each fixed query (B, n_latents, d) to its ``encoder_neighbors`` nearest
        Gaussians: embeddings h (B, n, d) plus their offset from the query's anchor; xyz (B, n, 3)
        their normalised centres, live (B, n) bool. Returns (B, n_latents, d)."""
        B, L, d = q.shape
        k = self.cfg.encoder_neighbors
        anchors = self.normalize_centers(self.anchors).to(xyz.dtype)  # (L, 3)
        with torch.no_grad():
            dist = torch.cdist(anchors[None].expand(B, -1, -1), xyz)  # (B, L, n)
            idx = dist.masked_fill(~live[:, None, :], float("inf")).topk(k, dim=-1, largest=False).indices
        flat = idx.reshape(B, L * k, 1)
        hk = torch.gather(h, 1, flat.expand(-1, -1, d)).reshape(B, L, k, d)
        rel = torch.gather(xyz, 1, flat.expand(-1, -1, 3)).reshape(B, L, k, 3) - anchors[None, :, None]
        hk = hk + self.offset_embed(fourier_features(rel / self.cfg.anchor_radius, self.cfg.fourier_bands))
        mask = torch.gather(live, 1, idx.reshape(B, L * k)).reshape(B * L, k)
        out = self.cross(self.q_norm(q).reshape(B * L, 1, d), self.kv_norm(hk).reshape(B * L, k, d), context_mask=mask)
        return out.reshape(B, L, d)

    def decode(self, z: Tensor) -> Tensor:
        """Latent set (B, n_latents, latent_dim) -> Gaussians (B, n_gaussians, 14) (activated)."""
        x = self.from_latent(z)
        for blk in self.decoder:
            x = blk(x)
        raw = self.head(self.out_norm(x)).reshape(z.shape[0], self.cfg.n_gaussians, GAUSSIAN_DIM)
        if self.cfg.decode_means == "anchor":  # token j's Gaussians around anchor j
            base = self.anchors.to(raw.dtype).repeat_interleave(self.per_token, 0)  # (n_gaussians, 3)
            means = base + self.extent * self.cfg.anchor_radius * raw[..., 0:3]
        else:
            means = self.center + self.extent * raw[..., 0:3] * 0.5
        quats = F.normalize(raw[..., 3:7] + torch.tensor([1.0, 0, 0, 0], device=z.device, dtype=raw.dtype), dim=-1)
        scales = self.extent * torch.exp(raw[..., 7:10] - 5.0).clamp_max(1.0)  # starts at ~7 mm for a 1 m scene
        opac = torch.sigmoid(raw[..., 10] + 2.0)
        colors = torch.sigmoid(raw[..., 11:14])
        return pack(means, quats, scales, opac, colors)

    def forward(self, g: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """Encode and decode (posterior mean, or a sample when ``sample``): (B, n, 14) -> (B, n, 14)."""
        mean, logvar = self.encode(g)
        z = mean
        if sample:
            eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + eps * torch.exp(0.5 * logvar)
        return self.decode(z)

    def loss(self, gaussians: Tensor, background: Tensor, Ks: Tensor, viewmats: Tensor, image_size: tuple[int, int],
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Training loss of B frames.

        Args:
            gaussians: (B, n, 14) input Gaussians; background: (B, 3).
            Ks (B, C, 3, 3), viewmats (B, C, 4, 4): the cameras rendered for the L1 term.
            image_size: (H, W).

        Returns:
            scalar loss and ``{"chamfer", "render_l1", "kl"}``.
        """
        mean, logvar = self.encode(gaussians)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + eps * torch.exp(0.5 * logvar)
        out = self.decode(z)
        live = unpack(gaussians)["opacities"] > 0
        a = self.normalize_centers(unpack(out)["means"].float())
        b = self.normalize_centers(unpack(gaussians)["means"].float())
        b = torch.where(live[..., None], b, b[:, :1])  # repeats (no opacity) fall onto a real centre
        ch = chamfer(a, b).mean()
        H, W = image_size
        with torch.no_grad():
            target = render(gaussians.float(), viewmats, Ks, W, H, background)
        pred = render(out.float(), viewmats, Ks, W, H, background)
        l1 = (pred - target).abs().mean()
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).sum(-1).mean()
        c = self.cfg
        total = c.chamfer_weight * ch + c.render_weight * l1 + c.kl_weight * kl
        return total, {"chamfer": float(ch.detach()), "render_l1": float(l1.detach()), "kl": float(kl.detach())}
