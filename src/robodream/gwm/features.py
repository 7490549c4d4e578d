"""The Gaussian world model's encoder as a policy's visual input (GWM, arXiv 2508.17600, Sec. 3.3).

A frame's RGB-D from the GWM's input cameras becomes pixel-aligned Gaussians
(:func:`~robodream.gwm.pixel.pixel_gaussians`), and the frozen set VAE's encoder turns them into
its latent set: ``(n_latents, latent_dim)`` posterior means. A GigaWorld-Policy trained with
``--gwm-vae RUN --model.gwm-tokens K`` reads these beside its image tokens
(:class:`~robodream.policy.modeling.GWMFeaturePool`).

The Gaussians are in world coordinates (each camera's pose is known), so the features of a
scene do not depend on where the cameras stand — unlike image tokens, which a camera shift
changes entirely. That is the property the paper's imitation results lean on.

- :func:`gwm_input_spec`: which cameras, image size and back-projection settings a VAE's
  Gaussians were built with (read from the Gaussian directories it was trained on).
- :func:`attach_gwm_features`: the latents of every frame of encoded training episodes (from the
  datasets' recorded depth), as ``episode["gwm"]`` (T, L, c) float16.
- :class:`GWMFeatureEncoder`: the same path on live observations (closed-loop evaluation).
- :class:`ImageTokenObserver`: the image-tokenizer counterpart (the video-world-model arm of the
  MBRL comparison observes through it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robodream.errors import CheckpointError, ConfigError, DatasetError
from robodream.gwm.pixel import PixelGaussianConfig, pixel_gaussians
from robodream.gwm.vae import GaussianSetVAE


def gwm_input_spec(vae_run: str | Path) -> dict[str, Any]:
    """``{"cameras", "image_size", "pixel"}`` of the Gaussians a set-VAE run was trained on.

    Raises:
        CheckpointError: not a set-VAE run, or its Gaussian directories are gone or disagree
            (other cameras, image sizes or back-projection settings).
    """
    from robodream.train.run_dir import read_run_config

    cfg = read_run_config(vae_run, GaussianSetVAE.model_type)
    specs = []
    for g in cfg.get("gaussians", []):
        index = Path(g) / "index.json"
        if not index.is_file():
            raise CheckpointError(f"the set VAE {vae_run} was trained on {g}, which is gone: its cameras and "
                                  "back-projection settings are unknown")
        ix = json.loads(index.read_text())
        specs.append({"cameras": list(ix["cameras"]), "image_size": list(ix["image_size"]), "pixel": ix["config"]})
    if not specs or any(s != specs[0] for s in specs):
        raise CheckpointError(f"the set VAE {vae_run} has no Gaussian directories or they disagree: {specs}")
    return specs[0]


class GWMFeatureEncoder:
    """Live RGB-D -> the frozen set VAE's latent set (module docstring).

    Args:
        vae: the set VAE (eval mode).
        spec: :func:`gwm_input_spec` (cameras, image size, pixel settings).

    Call :meth:`set_cameras` with the cameras' matrices at every episode start (a camera shift
    is drawn per episode), then ``encoder(rgb (V, H, W, 3) uint8, depth (V, H, W) metres)`` ->
    latents (1, n_latents, latent_dim) float32.

    Raises:
        ConfigError: pixel settings that give another Gaussian count than the VAE takes.
    """

    needs_depth = True

    def __init__(self, vae: GaussianSetVAE, spec: dict[str, Any]) -> None:
        self.vae, self.spec = vae, spec
        self.cameras = list(spec["cameras"])
        self.image_size = int(spec["image_size"][0])
        self.pixel_cfg = PixelGaussianConfig(**spec["pixel"])
        if self.pixel_cfg.n != vae.cfg.n_gaussians:
            raise ConfigError(f"the VAE takes {vae.cfg.n_gaussians} Gaussians a frame, the pixel settings give "
                              f"{self.pixel_cfg.n}")
        self._K = self._T = None

    def set_cameras(self, Ks: np.ndarray, viewmats: np.ndarray) -> None:
        """Ks (V, 3, 3) and world-to-camera (V, 4, 4) of :attr:`cameras`, as rendered now."""
        self._K = torch.as_tensor(np.asarray(Ks), dtype=torch.float32)
        self._T = torch.as_tensor(np.asarray(viewmats), dtype=torch.float32)

    def set_cameras_from_env(self, env) -> None:
        """:meth:`set_cameras` from a :class:`~robodream.envs.meta_world.MetaWorldEnv` after its reset."""
        mats = [env.camera_matrices(c) for c in self.cameras]
        self.set_cameras(np.stack([m[0] for m in mats]), np.stack([m[1] for m in mats]))

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray | torch.Tensor, depth: np.ndarray | torch.Tensor) -> torch.Tensor:
        if self._K is None:
            raise ConfigError("GWMFeatureEncoder.set_cameras must be called at the start of every episode")
        dev = self.vae.center.device
        g, _ = pixel_gaussians(torch.as_tensor(rgb)[None], torch.as_tensor(depth)[None], self._K, self._T,
                               self.pixel_cfg)
        return self.vae.encode(g.to(dev))[0].float()


class ImageTokenObserver:
    """Live RGB of ``cameras`` -> the image tokenizer's latents as tokens (1, V * h * w, C)
    (:func:`robodream.gwm.train.image_tokens`); the same interface as :class:`GWMFeatureEncoder`
    (depth is ignored, :meth:`set_cameras_from_env` does nothing)."""

    needs_depth = False

    def __init__(self, tokenizer, cameras: list[str]) -> None:
        self.tokenizer, self.cameras = tokenizer, list(cameras)
        self.image_size = tokenizer.cfg.image_size

    def set_cameras_from_env(self, env) -> None:
        pass

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray | torch.Tensor, depth=None) -> torch.Tensor:
        from robodream.gwm.train import image_tokens

        dev = next(self.tokenizer.parameters()).device
        lat = self.tokenizer.encode(torch.as_tensor(rgb).to(dev))  # (V, C, h, w)
        return image_tokens(lat[None]).float().cpu()


@torch.no_grad()
def attach_gwm_features(episodes: list[dict], datasets: list, vae: GaussianSetVAE, spec: dict[str, Any], *,
                        batch: int = 32, progress: Callable[[], None] | None = None) -> None:
    """Set ``episode["gwm"]`` (T, n_latents, latent_dim) float16 — the set VAE's posterior means of every
    frame's Gaussians — on encoded episodes (with ``source`` and ``episode_index``, as
    :func:`robodream.data.latents.encode_run_data` makes them).

    Raises:
        DatasetError: a dataset without the GWM cameras' depth (``collect --with-depth``), of
            another image size than the VAE's Gaussians, or not recorded by robodream (its camera
            poses are needed).
    """
    from robodream.gwm.frames import check_depth_source, episode_camera_matrices, episode_rgbd

    cams = spec["cameras"]
    pixel_cfg = PixelGaussianConfig(**spec["pixel"])
    dev = vae.center.device
    for d, ds in enumerate(datasets):
        mine = [e for e in episodes if e["source"] == d]
        if not mine:
            continue
        check_depth_source(ds, cams)
        if list(ds.image_size) != list(spec["image_size"]):
            raise DatasetError(f"{ds.root} has {ds.image_size} images but the GWM's Gaussians were built from "
                               f"{tuple(spec['image_size'])}")
        Ks, Ts = episode_camera_matrices(ds, cams)
        for e in mine:
            i = int(e["episode_index"])
            rgb, depth = episode_rgbd(ds, i, cams)
            K, T = torch.from_numpy(Ks[i]).float(), torch.from_numpy(Ts[i]).float()
            out = []
            for b0 in range(0, len(rgb), batch):
                g, _ = pixel_gaussians(torch.from_numpy(rgb[b0:b0 + batch]), torch.from_numpy(depth[b0:b0 + batch]),
                                       K, T, pixel_cfg)
                out.append(vae.encode(g.to(dev))[0].to("cpu", torch.float16))
            e["gwm"] = torch.cat(out)
            if len(e["gwm"]) != len(e["action"]):
                raise DatasetError(f"{ds.root} episode {i}: {len(e['gwm'])} depth frames for {len(e['action'])} actions")
            if progress:
                progress()



def load_policy_gwm_features(run_dir: str | Path, run_cfg: dict[str, Any], device="cpu") -> GWMFeatureEncoder:
    """The :class:`GWMFeatureEncoder` of a policy run trained with GWM features (its copy of the set
    VAE in ``RUN/gwm_vae`` and the input spec in its config's ``gwm``).

    Raises:
        CheckpointError: the run lacks its set-VAE copy or input spec.
    """
    from robodream.gwm.train import load_set_vae

    spec = run_cfg.get("gwm") or {}
    if not spec.get("cameras"):
        raise CheckpointError(f"{run_dir}/config.json has no gwm input spec (cameras, image size, pixel settings)")
    vae, _ = load_set_vae(Path(run_dir) / "gwm_vae", device=device)
    return GWMFeatureEncoder(vae, spec)
