"""Write rollout videos (MP4, H.264 4:2:0 so any player opens them) with PyAV."""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int = 20, scale: int = 4) -> None:
    """Write frames (T, H, W, 3) uint8 to ``path`` atomically, upscaled ``scale`` x (nearest)."""
    path = Path(path)
    if scale > 1:
        frames = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    T, H, W, _ = frames.shape
    H2, W2 = H - H % 2, W - W % 2
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W2, H2, "yuv420p"
        stream.options = {"crf": "18"}
        for f in frames:
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(f[:H2, :W2]), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
