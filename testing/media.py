"""Synthetic media for tests and benchmarks: face videos written and read with PyAV, marker ticks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np

from core.items import Kind, OutputTick, Source
from core.units import SAMPLE_RATE, TICK_SAMPLES


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 25, codec: str = "libx264") -> Path:
    """BGR frames -> a video file written with PyAV (x264 at a high quality, yuv420p)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)  # a video codec was asked for
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="bgr24")))
        container.mux(stream.encode())
    return path


def decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    m = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


def marker_tick(k: int, onset: int, size: tuple[int, int] = (128, 160)) -> OutputTick:
    """Output tick k of a marker stream: black and silent before tick `onset`, then white with a 1 kHz tone from
    the tick's first sample, so that an encoder's output can be checked for where picture and sound start."""
    on = k >= onset
    frame = np.full((*size, 3), 255 if on else 0, np.uint8)
    t = (np.arange(TICK_SAMPLES) + k * TICK_SAMPLES) / SAMPLE_RATE
    audio = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32) if on else np.zeros(TICK_SAMPLES, np.float32)
    return OutputTick(
        tick=k,
        frame=frame,
        audio=audio,
        kind=Kind.SPEECH if on else Kind.SILENCE,
        source=Source.SPEECH if on else Source.IDLE,
        events=[],
        turn=0,
    )
