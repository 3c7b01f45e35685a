"""An avatar's source frames: a video file (resampled to the output rate), an image file or a BGR array."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from musetalk.avatar import AvatarError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


def decode_video(path: Path, fps: float, max_frames: int | None) -> Iterator[np.ndarray]:
    """BGR frames resampled to `fps` by nearest timestamp (an avatar cycle must play at the output rate)."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise AvatarError(f"cannot open {path} as a video or image: {e}") from e
    with container:
        if not container.streams.video:
            raise AvatarError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = float(stream.average_rate) if stream.average_rate else fps
        k, t0 = 0, None
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / src_fps
            t0 = t if t0 is None else t0
            img = frame.to_ndarray(format="bgr24")
            # Emit this frame for every output time closer to it than to the next source frame.
            while k / fps < (t - t0) + 0.5 / src_fps:
                yield img
                k += 1
                if max_frames is not None and k >= max_frames:
                    return


def read_source(source: Path | np.ndarray, fps: float, max_frames: int | None) -> tuple[Iterator[np.ndarray], str]:
    """The source's frames, one at a time (a video is decoded as they are taken), and its name."""
    if isinstance(source, np.ndarray):
        frames = source[None] if source.ndim == 3 else source
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise AvatarError(f"expected a BGR uint8 (H,W,3) or (N,H,W,3) array, got {source.shape} {source.dtype}")
        return iter(frames[:max_frames]), "<array>"
    path = Path(source)
    if not path.is_file():
        raise AvatarError(f"source file not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"cannot read image {path}")
        return iter([img]), path.name
    return decode_video(path, fps, max_frames), path.name
