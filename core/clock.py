"""The session's single media clock: tick k is one 40 ms video frame plus its two 20 ms audio frames.

Both the video pts (90 kHz) and the audio pts (48 kHz) are derived from the tick index, so the two tracks
cannot drift apart: they are two views of one counter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.units import TICK_SECONDS, VIDEO_FPS

AUDIO_FRAMES_PER_TICK = 2
VIDEO_CLOCK_RATE = 90_000
AUDIO_OUT_RATE = 48_000
VIDEO_PTS_PER_TICK = VIDEO_CLOCK_RATE // VIDEO_FPS  # 3600
AUDIO_OUT_SAMPLES_PER_FRAME = AUDIO_OUT_RATE // 50  # 960 samples = 20 ms


@dataclass
class MediaClock:
    """Maps tick indices to wall-clock deadlines and to RTP timestamps.

    `now` is injectable so tests can drive hours of media time in milliseconds.
    """

    now: Callable[[], float] = time.monotonic
    t0: float = field(default=0.0)

    def start(self) -> None:
        self.t0 = self.now()

    def tick_time(self, tick: int) -> float:
        return self.t0 + tick * TICK_SECONDS

    def current_tick(self) -> int:
        """The tick whose 40 ms slot contains the present moment."""
        return max(0, int((self.now() - self.t0) / TICK_SECONDS))

    @staticmethod
    def video_pts(tick: int) -> int:
        return tick * VIDEO_PTS_PER_TICK

    @staticmethod
    def audio_pts(tick: int, sub: int) -> int:
        """pts of the sub-th (0 or 1) 20 ms audio frame of a tick, in 48 kHz samples."""
        return (tick * AUDIO_FRAMES_PER_TICK + sub) * AUDIO_OUT_SAMPLES_PER_FRAME


class ManualTime:
    """A settable time source for stepped (offline / test) sessions."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t
