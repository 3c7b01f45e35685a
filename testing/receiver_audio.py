"""When the avatar's audio reached an aiortc test client, and a spoken sentence for its microphone: what the
speech-to-speech tests and bench/realtime_bargein.py measure barge-in with."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from core.audio import resample
from core.units import SAMPLE_RATE
from testing.server_client import MIC_RATE, Client
from voices.tts import PiperTTS


class AudioWatch:
    """Arrival times of the client's audio frames (``Client.audio_levels`` keeps only their levels): the count is
    polled every 5 ms, so a time is at most that late."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.seen: list[tuple[float, int]] = []
        self.task = asyncio.create_task(self._poll(), name="audio-watch")

    async def _poll(self) -> None:
        while True:
            self.seen.append((time.monotonic(), len(self.client.audio_levels)))
            await asyncio.sleep(0.005)

    def count_at(self, t: float) -> int:
        """Frames that had arrived at time t."""
        return max((n for s, n in self.seen if s <= t), default=0)

    def arrival(self, index: int) -> float:
        return next(t for t, n in self.seen if n > index)

    def silent_from(self, t: float, quiet: float = 0.01, frames: int = 10) -> float:
        """Arrival time of the first frame, among those that arrived after time t, from which ``frames`` frames in
        a row are silent (the audio has stopped)."""
        levels = self.client.audio_levels
        i = self.count_at(t)
        while not all(level < quiet for level in levels[i : i + frames]):
            i += 1
            if i + frames > len(levels):
                raise AssertionError("the audio has not gone silent")
        return self.arrival(i)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def spoken(text: str) -> np.ndarray:
    """``text`` as the offline piper voice speaks it, at the test microphone's rate (48 kHz)."""
    return resample(np.concatenate([c async for c in PiperTTS().synthesize(text)]), SAMPLE_RATE, MIC_RATE)
