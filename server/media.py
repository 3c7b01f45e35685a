"""aiortc tracks fed from a session's output ticks.

Both tracks are views of the same ticks: video pts = tick * 3600 (90 kHz), audio pts = (2 * tick + i) * 960
(48 kHz). The audio is upsampled to 48 kHz here, in 20 ms frames, so aiortc's Opus encoder does not re-frame
it (which would shift audio ~20 ms against video).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from typing import Generic, TypeVar

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame
from scipy.signal import firwin, lfilter, lfilter_zi

from core.clock import (
    AUDIO_OUT_RATE,
    AUDIO_OUT_SAMPLES_PER_FRAME,
    VIDEO_CLOCK_RATE,
    MediaClock,
)
from core.items import OutputTick
from core.units import FRAME_SAMPLES
from pipeline.session import Session

T = TypeVar("T")  # what a track queues: ticks or frames

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_OUT_RATE)
UP = AUDIO_OUT_RATE // 16000  # 3
QUEUE_TICKS = 6  # a consumer further behind than this loses its oldest frames (never builds delay)


class Upsampler:
    """Stateful 16 kHz -> 48 kHz: zero-stuffing and a linear-phase low-pass (delay 0.5 ms), no edge clicks."""

    def __init__(self, taps: int = 48) -> None:
        self.h = (firwin(taps, 1.0 / UP) * UP).astype(np.float64)
        self.zi = lfilter_zi(self.h, 1.0) * 0.0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        stuffed = np.zeros(len(x) * UP, np.float64)
        stuffed[::UP] = x
        y, self.zi = lfilter(self.h, 1.0, stuffed, zi=self.zi)
        return y


def to_s16(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype(np.int16)


class _TickTrack(MediaStreamTrack, Generic[T]):
    """A send track fed by the session's clock; items beyond `capacity` waiting for the encoder are dropped, oldest
    first."""

    capacity: int

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[T | None] = asyncio.Queue()  # None: the track stopped
        self.dropped = 0

    def offer(self, item: T) -> None:
        if self.readyState != "live":
            return
        while self.queue.qsize() >= self.capacity:
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(item)

    async def _next(self) -> T:
        if self.readyState != "live":
            raise MediaStreamError
        item = await self.queue.get()
        if item is None:
            raise MediaStreamError
        return item

    def stop(self) -> None:
        if self.readyState == "live":
            self.queue.put_nowait(None)
        super().stop()


class AvatarVideoTrack(_TickTrack[OutputTick]):
    kind = "video"
    capacity = QUEUE_TICKS

    def push(self, out: OutputTick) -> None:
        self.offer(out)  # made a VideoFrame only when the encoder takes it: a dropped tick costs no conversion

    async def recv(self) -> VideoFrame:
        out = await self._next()
        frame = VideoFrame.from_ndarray(np.ascontiguousarray(out.frame), format="bgr24")
        frame.pts = MediaClock.video_pts(out.tick)
        frame.time_base = VIDEO_TIME_BASE
        return frame


class AvatarAudioTrack(_TickTrack[AudioFrame]):
    kind = "audio"
    capacity = 2 * QUEUE_TICKS

    def __init__(self) -> None:
        super().__init__()
        self.upsample = Upsampler()

    def push(self, out: OutputTick) -> None:
        pcm48 = to_s16(self.upsample(out.audio))
        for sub in range(2):
            part = pcm48[sub * AUDIO_OUT_SAMPLES_PER_FRAME : (sub + 1) * AUDIO_OUT_SAMPLES_PER_FRAME]
            frame = AudioFrame.from_ndarray(part.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = AUDIO_OUT_RATE
            frame.pts = MediaClock.audio_pts(out.tick, sub)
            frame.time_base = AUDIO_TIME_BASE
            self.offer(frame)

    async def recv(self) -> AudioFrame:
        return await self._next()


assert 2 * FRAME_SAMPLES * UP == 2 * AUDIO_OUT_SAMPLES_PER_FRAME


class SessionTracks:
    """The pair of tracks of one peer connection, attached to a session as one sink."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.video = AvatarVideoTrack()
        self.audio = AvatarAudioTrack()
        session.add_sink(self)

    def __call__(self, out: OutputTick) -> None:
        self.video.push(out)
        self.audio.push(out)

    def close(self) -> None:
        self.session.remove_sink(self)
        self.video.stop()
        self.audio.stop()
