"""Training and evaluation samples of the transfer models, built from :func:`~robodream.transfer.pairs.render_pairs`.

A prepared episode (:func:`prepare_episode`) holds, over its T frames::

    x0            (T, C, h, w) float32   target latents (the re-render, tokenizer-encoded)
    target_rgb    (T, H, W, 3) uint8     the re-render itself (metrics)
    baseline_rgb  (T, H, W, 3) uint8     the baseline: the source frame (appearance) or the depth warp (view)
    appearance:   depth (T, H, W) float16 metres, segmentation (T, H, W) uint8 (the source's controls)
    view:         warped (T, H, W, 3) uint8, hole (T, H, W) bool, warped_depth (T, H, W) float16 metres,
                  source (T, C, h, w) float32 latents of the source frame, pose (13,) float32,
                  source_rgb (T, H, W, 3) uint8 (the unmoved view, a second reference in evaluation)

The reference of AppearanceTransfer is a frame of the *target* episode (its latents ``x0[r]``):
in training a random frame other than the generated one, in evaluation frame 0, which is then
given and not scored. The reference of ViewTransfer is the source frame at the same time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robodream.tokenizer.model import ImageTokenizer, encode_frames
from robodream.transfer.modeling import TransferModel, relative_pose
from robodream.transfer.warp import forward_warp


def prepare_episode(kind: str, pair: dict[str, Any], tokenizer: ImageTokenizer) -> dict[str, Any]:
    """One :func:`render_pairs` episode as model inputs (see the module docstring)."""
    ep: dict[str, Any] = {"x0": encode_frames(tokenizer, pair["target_rgb"]).cpu().float(),
                          "target_rgb": pair["target_rgb"], "episode": pair["episode"], "seed": pair["seed"]}
    if kind == "appearance":
        ep["depth"] = pair["source_depth"].astype(np.float16)
        ep["segmentation"] = pair["source_segmentation"]
        ep["baseline_rgb"] = pair["source_rgb"]
    else:
        size = pair["target_rgb"].shape[1:3]
        warps = [forward_warp(rgb, d, pair["K_src"], pair["T_src"], pair["K_dst"], pair["T_dst"], size)
                 for rgb, d in zip(pair["source_rgb"], pair["source_depth"])]
        ep["warped"] = np.stack([w[0] for w in warps])
        ep["hole"] = np.stack([w[1] for w in warps])
        ep["warped_depth"] = np.stack([w[2] for w in warps]).astype(np.float16)
        ep["source"] = encode_frames(tokenizer, pair["source_rgb"]).cpu().float()
        ep["pose"] = relative_pose(pair["K_src"], pair["T_src"], pair["K_dst"], pair["T_dst"])
        ep["baseline_rgb"] = ep["warped"]
        ep["source_rgb"] = pair["source_rgb"]  # a second reference row of the evaluation: the unmoved view
    return ep


class FrameTable:
    """The frames of prepared episodes, concatenated, for sampling batches (row = one frame)."""

    def __init__(self, episodes: list[dict[str, Any]]) -> None:
        self.kind = "appearance" if "depth" in episodes[0] else "view"
        lengths = [len(e["x0"]) for e in episodes]
        self.start = torch.tensor(np.repeat(np.cumsum([0] + lengths[:-1]), lengths))  # (N,) first row of the frame's episode
        self.length = torch.tensor(np.repeat(lengths, lengths))  # (N,) its episode's length
        cat = lambda k: np.concatenate([e[k] for e in episodes])  # noqa: E731
        self.x0 = torch.cat([e["x0"] for e in episodes])  # (N, C, h, w)
        self.target_rgb, self.baseline_rgb = cat("target_rgb"), cat("baseline_rgb")
        if self.kind == "appearance":
            self.depth, self.segmentation = cat("depth"), cat("segmentation")
        else:
            self.warped, self.hole, self.warped_depth = cat("warped"), cat("hole"), cat("warped_depth")
            self.source = torch.cat([e["source"] for e in episodes])
            self.source_rgb = cat("source_rgb")
            self.pose = torch.tensor(np.repeat(np.stack([e["pose"] for e in episodes]), lengths, axis=0))

    def __len__(self) -> int:
        return len(self.x0)

    def sample(self, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` random frames (B,) and their reference rows (B,): for appearance a random other
        frame of the same episode (the frame itself in a one-frame episode), for view the frame itself."""
        idx = torch.randint(0, len(self), (batch,), generator=gen)
        if self.kind == "view":
            return idx, idx
        L, off = self.length[idx], idx - self.start[idx]
        r = (torch.rand(batch, generator=gen) * (L - 1).clamp_min(1)).long()  # [0, L - 1)
        r = torch.where(L > 1, r + (r >= off).long(), off)  # skip the frame itself
        return idx, self.start[idx] + r

    def inputs(self, model: TransferModel, idx: torch.Tensor, ref: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """Keyword arguments of :meth:`TransferModel.loss` (``x0`` included) for rows ``idx`` with
        references ``ref``; for a model with a pixel refiner also ``pixels`` (:meth:`pixel_inputs`)
        and ``target_rgb``, the re-rendered frames (B, H, W, 3) uint8."""
        i = idx.numpy()
        if self.kind == "appearance":
            control = model.make_control(torch.from_numpy(self.depth[i].astype(np.float32)).to(device),
                                         torch.from_numpy(self.segmentation[i]).to(device))
            out = {"x0": self.x0[idx].to(device), "control": control, "reference": self.x0[ref].to(device)}
        else:
            control = model.make_control(torch.from_numpy(self.warped[i]).to(device),
                                         torch.from_numpy(self.hole[i]).to(device),
                                         torch.from_numpy(self.warped_depth[i].astype(np.float32)).to(device))
            out = {"x0": self.x0[idx].to(device), "control": control, "reference": self.source[ref].to(device),
                   "pose": self.pose[idx].to(device)}
        if model.refiner is not None:
            out["pixels"] = self.pixel_inputs(idx, ref, device)
            out["target_rgb"] = torch.from_numpy(self.target_rgb[i]).to(device)
        return out

    def pixel_inputs(self, idx: torch.Tensor, ref: torch.Tensor, device) -> dict[str, torch.Tensor]:
        """:meth:`TransferModel.refine`'s pixel inputs for rows ``idx`` with references ``ref``:
        appearance: the source frame, its segmentation, the reference frame (the target at row
        ``ref``), its segmentation and the source frame at the reference's row; view: the warp
        and its holes."""
        i, r = idx.numpy(), ref.numpy()
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        if self.kind == "appearance":
            return {"source": t(self.baseline_rgb[i]), "segmentation": t(self.segmentation[i]),
                    "reference_rgb": t(self.target_rgb[r]), "reference_segmentation": t(self.segmentation[r]),
                    "source_reference": t(self.baseline_rgb[r])}
        return {"warped": t(self.warped[i]), "hole": t(self.hole[i])}
