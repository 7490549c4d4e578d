"""MP4 encoding and decoding for LeRobot v3.0 datasets, with PyAV.

One MP4 file holds the frames of many episodes back to back; an episode is the half-open
time window ``[from_timestamp, to_timestamp)`` of the file. A frame at presentation time
``t`` (seconds, ``pts * time_base``) belongs to the episode when
``from_timestamp - 0.5/fps <= t < to_timestamp - 0.5/fps``: the half-frame margin absorbs
rounding in the stored timestamps and in the container's time base.

Colour: the ``"h264"`` codec stores full-range BT.601 YUV 4:4:4 that we convert ourselves
(:func:`rgb_to_yuv444`, :func:`yuv444_to_rgb`); the round trip RGB -> YUV -> RGB is off by
at most 1/255 for every one of the 2**24 RGB colours (swscale's own conversion is off by up
to 2). Other streams are converted to RGB by FFmpeg's swscale.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.video.frame import PictureType
from av.video.reformatter import ColorRange, Colorspace, VideoReformatter

from robodream.errors import DatasetError


@dataclass(frozen=True)
class VideoCodec:
    """How one entry of :data:`VIDEO_CODECS` encodes RGB frames.

    ``encoder`` is the FFmpeg encoder, ``pix_fmt`` the stored pixel format, ``options`` the
    encoder options, ``full_range_yuv`` whether frames are converted to full-range BT.601
    YUV 4:4:4 by :func:`rgb_to_yuv444` (otherwise RGB frames are handed to FFmpeg).
    """

    encoder: str
    pix_fmt: str
    options: dict[str, str] = field(default_factory=dict)
    full_range_yuv: bool = False


VIDEO_CODECS: dict[str, VideoCodec] = {
    # Near-lossless: lossless H.264 (qp 0) of full-range YUV 4:4:4; max abs error 1/255, which
    # comes from the RGB<->YUV rounding. No chroma subsampling, so 2-5 px objects stay sharp.
    "h264": VideoCodec("libx264", "yuv444p", {"qp": "0"}, full_range_yuv=True),
    # Bit-exact: lossless H.264 that codes the RGB planes directly (stored as gbrp).
    "h264-rgb": VideoCodec("libx264rgb", "rgb24", {"qp": "0"}),
    # LeRobot's own default: SVT-AV1, YUV 4:2:0, crf 30, a key frame every 2 frames (lossy).
    "av1": VideoCodec("libsvtav1", "yuv420p", {"crf": "30", "g": "2"}),
}

# Full-range BT.601 (JFIF) matrices; offsets of 128 on the chroma planes.
_RGB2YUV = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
)
_YUV2RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], dtype=np.float32)
_CHROMA_OFFSET = np.array([0.0, 128.0, 128.0], dtype=np.float32)
_BT601 = {int(Colorspace.ITU601), 6}  # AVCOL_SPC_BT470BG, AVCOL_SPC_SMPTE170M


def rgb_to_yuv444(rgb: np.ndarray) -> np.ndarray:
    """Convert an RGB image ``(H, W, 3) uint8`` to full-range BT.601 planes ``(3, H, W) uint8``."""
    yuv = rgb.astype(np.float32) @ _RGB2YUV.T + _CHROMA_OFFSET
    return np.clip(np.rint(yuv), 0, 255).astype(np.uint8).transpose(2, 0, 1).copy()


def yuv444_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Convert full-range BT.601 planes ``(3, H, W) uint8`` to an RGB image ``(H, W, 3) uint8``."""
    x = yuv.transpose(1, 2, 0).astype(np.float32) - _CHROMA_OFFSET
    return np.clip(np.rint(x @ _YUV2RGB.T), 0, 255).astype(np.uint8)


def frame_to_rgb(frame: av.VideoFrame, reformatter: VideoReformatter | None = None) -> np.ndarray:
    """Decoded frame -> ``(H, W, 3) uint8`` RGB; exact inverse of our "h264" colour conversion.

    Pass the same ``reformatter`` for all frames of a stream to reuse FFmpeg's scaler context.
    """
    if (
        frame.format.name in ("yuv444p", "yuvj444p")
        and frame.color_range == ColorRange.JPEG
        and frame.colorspace in _BT601
    ):
        return yuv444_to_rgb(frame.to_ndarray())
    if reformatter is None:
        return frame.to_ndarray(format="rgb24")
    return reformatter.reformat(frame, format="rgb24").to_ndarray()


class VideoFileEncoder:
    """An open MP4 file with one video stream that episodes are appended to.

    Frame ``k`` of the file (counting from 0 across episodes) gets ``pts = k`` in time base
    ``1/fps``, i.e. it is shown at ``k / fps`` seconds. The first frame of every
    :meth:`append` call is forced to be a key frame so that each episode decodes on its own.

    Raises:
        DatasetError: if the encoder cannot be opened or fails.
    """

    def __init__(self, path: Path, codec: VideoCodec, fps: int, height: int, width: int):
        self.path = Path(path)
        self.codec = codec
        self.fps = fps
        self.frames = 0  # frames sent to the encoder
        self._packets = 0  # packets muxed (one per frame)
        self._bytes = 0  # bytes of those packets
        if codec.encoder == "libsvtav1":
            # SVT-AV1 logs banners at info level to stderr; 1 = errors only (a user's setting wins).
            os.environ.setdefault("SVT_LOG", "1")
        self._container = None
        try:
            self._container = av.open(str(self.path), "w")
            stream = self._container.add_stream(codec.encoder, rate=fps, options=dict(codec.options))
            stream.width, stream.height, stream.pix_fmt = width, height, codec.pix_fmt
            stream.time_base = Fraction(1, fps)
            if codec.full_range_yuv:
                stream.codec_context.color_range = ColorRange.JPEG
                stream.codec_context.colorspace = Colorspace.ITU601
            self._stream = stream
        except (av.FFmpegError, OSError, ValueError) as e:
            self.abort()
            raise DatasetError(f"cannot open video encoder {codec.encoder} for {self.path}: {e}") from e

    def append(self, frames: np.ndarray) -> tuple[int, int]:
        """Encode ``frames`` ``(T, H, W, 3) uint8`` RGB; return the file frame range ``[start, stop)``."""
        start = self.frames
        try:
            for t, img in enumerate(frames):
                if self.codec.full_range_yuv:
                    frame = av.VideoFrame.from_ndarray(rgb_to_yuv444(img), format="yuv444p")
                    frame.color_range = ColorRange.JPEG
                    frame.colorspace = Colorspace.ITU601
                else:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame.pts = self.frames
                if t == 0:
                    frame.pict_type = PictureType.I
                self._mux(self._stream.encode(frame))
                self.frames += 1
        except (av.FFmpegError, OSError, ValueError) as e:
            raise DatasetError(f"video encoding failed for {self.path}: {e}") from e
        return start, self.frames

    def _mux(self, packets) -> None:
        for packet in packets:
            self._bytes += packet.size
            self._packets += 1
            self._container.mux(packet)

    def estimated_size_bytes(self) -> float:
        """Bytes muxed so far plus the frames still inside the encoder at the average packet size."""
        if self._packets == 0:
            return float(self._bytes)
        return self._bytes + (self.frames - self._packets) * self._bytes / self._packets

    def close(self) -> None:
        """Flush the encoder and close the file (idempotent)."""
        if self._container is None:
            return
        try:
            self._mux(self._stream.encode(None))
            self._container.close()
        except (av.FFmpegError, OSError, ValueError) as e:
            raise DatasetError(f"video encoding failed for {self.path}: {e}") from e
        finally:
            self._container = None

    def abort(self) -> None:
        """Close the file without caring whether it is valid (used when a collection is abandoned)."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - best effort, the file is about to be deleted
                pass
            self._container = None


def probe_video(path: Path) -> dict:
    """The ``info`` dict LeRobot stores for a video feature, read from the first stream of ``path``.

    Keys: ``video.height``, ``video.width``, ``video.codec`` (e.g. "h264", "av1"), ``video.pix_fmt``,
    ``video.is_depth_map``, ``video.fps``, ``video.channels``, ``has_audio``.

    Raises:
        DatasetError: if the file cannot be opened or has no video stream.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"no video stream in {path}")
            s = container.streams.video[0]
            pix_fmt = s.codec_context.pix_fmt or ""
            return {
                "video.height": s.codec_context.height,
                "video.width": s.codec_context.width,
                "video.codec": s.codec_context.codec.canonical_name,
                "video.pix_fmt": pix_fmt,
                "video.is_depth_map": False,
                "video.fps": int(s.base_rate) if s.base_rate else None,
                "video.channels": 1 if "gray" in pix_fmt else 4 if ("rgba" in pix_fmt or "yuva" in pix_fmt) else 3,
                "has_audio": len(container.streams.audio) > 0,
            }
    except av.FFmpegError as e:
        raise DatasetError(f"cannot read video {path}: {e}") from e


class FrameRateError(DatasetError):
    """The frames of a video window are spaced at a rate other than the dataset's ``fps``.

    Attributes: ``path``, ``window`` (index into the windows decoded), ``fps`` (the
    dataset's), ``measured_fps`` (``1 / mean spacing`` of the window's frames).
    """

    def __init__(self, path: Path, window: int, fps: float, measured_fps: float):
        self.path, self.window, self.fps, self.measured_fps = path, window, fps, measured_fps
        super().__init__(f"video {path} has frames at {measured_fps:.4g} fps but the dataset says fps={fps:g}")


#: Tolerance on the time a window's frames span before :class:`FrameRateError` is raised: 1% of
#: it (a wrong fps is off by far more), and at least 2 ms (containers round times, e.g. mkv to 1 ms).
FPS_TOLERANCE, FPS_TOLERANCE_S = 0.01, 0.002


def _check_spacing(path: Path, window: int, first_t: float | None, last_t: float | None, n: int, fps: float) -> None:
    """Raise :class:`FrameRateError` if ``n >= 2`` frames shown from ``first_t`` to ``last_t`` (s) are not 1/fps apart."""
    if n < 2 or first_t is None or last_t is None or last_t <= first_t:
        return
    expected_s = (n - 1) / fps
    if abs((last_t - first_t) - expected_s) > max(FPS_TOLERANCE * expected_s, FPS_TOLERANCE_S):
        raise FrameRateError(path, window, fps, (n - 1) / (last_t - first_t))


def _iter_frames(container, seek_to: float | None):
    """Yield ``(time_s, frame)`` in presentation order from the first video stream."""
    stream = container.streams.video[0]
    if seek_to is not None and seek_to > 0 and stream.time_base:
        container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.pts is None or frame.time is None:
            continue
        yield float(frame.time), frame


def decode_window(path: Path, from_ts: float, to_ts: float, fps: float, expected: int) -> np.ndarray:
    """Decode the frames of ``path`` shown in ``[from_ts, to_ts)`` seconds.

    Returns ``(expected, H, W, 3) uint8`` RGB frames. Seeks to the key frame before
    ``from_ts``; if the container seeks badly, decodes again from the start of the file.

    Raises:
        FrameRateError: the window's frames are not ``1/fps`` apart (a wrong ``fps``).
        DatasetError: if the file cannot be decoded or the window holds a number of frames
            other than ``expected``.
    """
    half = 0.5 / fps
    lo, hi = from_ts - half, to_ts - half
    n = 0
    reformatter = VideoReformatter()
    for seek_to in (lo, None):
        out: list[np.ndarray] = []
        n, first_t, in_t, last_t = 0, None, None, None  # first decoded; first and last in the window
        try:
            with av.open(str(path)) as container:
                for t, frame in _iter_frames(container, seek_to):
                    if t >= hi:
                        break
                    if first_t is None:
                        first_t = t
                    if t < lo:
                        continue
                    n += 1
                    in_t, last_t = in_t if in_t is not None else t, t
                    if n > expected:
                        break
                    out.append(frame_to_rgb(frame, reformatter))
        except av.FFmpegError as e:
            raise DatasetError(f"cannot decode video {path}: {e}") from e
        _check_spacing(path, 0, in_t, last_t, n, fps)
        if n == expected and expected > 0:
            return np.stack(out)
        if first_t is None or first_t <= lo:  # the seek was fine: a retry would not help
            break
    raise DatasetError(
        f"video {path} has {n} frames in the episode window [{from_ts:.6g}, {to_ts:.6g}) s, expected {expected}"
    )


def decode_windows(path: Path, windows: list[tuple[float, float, int]], fps: float) -> list[np.ndarray]:
    """Decode ``path`` once, front to back, and split its frames into time windows.

    ``windows`` are ``(from_ts, to_ts, expected_frames)`` (non-overlapping). Returns one
    ``(expected, H, W, 3) uint8`` array per window, in the order given.

    Raises:
        FrameRateError: a window's frames are not ``1/fps`` apart (``window`` says which).
        DatasetError: if the file cannot be decoded or a window's frame count is wrong.
    """
    half = 0.5 / fps
    order = sorted(range(len(windows)), key=lambda k: windows[k][0])
    los = [windows[k][0] - half for k in order]
    his = [windows[k][1] - half for k in order]
    out: list[list[np.ndarray]] = [[] for _ in windows]
    span: list[list[float]] = [[] for _ in windows]  # times of each window's first and last frame
    end = max(his) if his else 0.0
    reformatter = VideoReformatter()
    try:
        with av.open(str(path)) as container:
            for t, frame in _iter_frames(container, None):
                if t >= end:
                    break
                j = bisect.bisect_right(los, t) - 1
                if j >= 0 and t < his[j]:
                    k = order[j]
                    span[k] = [span[k][0] if span[k] else t, t]
                    if len(out[k]) < windows[k][2]:
                        out[k].append(frame_to_rgb(frame, reformatter))
                    else:
                        out[k].append(None)  # counted, not kept: the error below reports it
    except av.FFmpegError as e:
        raise DatasetError(f"cannot decode video {path}: {e}") from e
    for k, frames in enumerate(out):
        _check_spacing(path, k, *(span[k] or (None, None)), len(frames), fps)
    result = []
    for (from_ts, to_ts, expected), frames in zip(windows, out, strict=True):
        if len(frames) != expected or expected == 0:
            raise DatasetError(
                f"video {path} has {len(frames)} frames in the episode window "
                f"[{from_ts:.6g}, {to_ts:.6g}) s, expected {expected}"
            )
        result.append(np.stack(frames))
    return result
