"""Audio input stage: any-size float32 16 kHz chunks -> 20 ms frames -> scheduled ticks.

A tick is scheduled when both of its audio frames exist. Ticks of one contiguous stretch of audio get
consecutive numbers; audio that arrives after its slot has passed starts a new stretch `lead` ticks in the
future, so the output never waits and never builds up delay. An utterance (what a lip-sync model treats as one
clip, with its own start and end) is the audio of a stretch up to a flush: the flush marks its last tick, and the
audio that follows, even on time in the same stretch, begins the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from core.arrays import Pcm
from core.events import Event
from core.items import AudioFrame, Kind, TickAudio
from core.units import FRAME_SAMPLES

# Below this RMS (about -60 dBFS) a 20 ms frame counts as silence: the model is not run for silent batches.
SILENCE_RMS = 1e-3


def frame_kind(pcm: Pcm) -> Kind:
    return Kind.SPEECH if float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) > SILENCE_RMS else Kind.SILENCE


class AudioFramer:
    """Cuts arbitrary chunks into 20 ms frames and pairs them into ticks."""

    def __init__(
        self,
        current_tick: Callable[[], int],
        lead_ticks: int | Callable[[], int],
        now: Callable[[], float] = time.monotonic,
    ):
        self._current_tick = current_tick
        self._now = now
        self._lead = lead_ticks if callable(lead_ticks) else (lambda: lead_ticks)
        self._partial = np.zeros(0, dtype=np.float32)
        self._partial_t_in = 0.0
        self._pending_events: list[Event] = []
        self._half: AudioFrame | None = None  # first frame of a tick waiting for its second
        self._next_tick = 0
        self._seg_pos = 0
        self._utterance_pos = 0
        self._last_scheduled: TickAudio | None = None  # still owned by later stages, which read it after us

    def reset(self) -> None:
        """Forget everything not yet scheduled (interrupt)."""
        self._partial = np.zeros(0, dtype=np.float32)
        self._pending_events = []
        self._half = None
        self._next_tick = 0
        self._utterance_pos = 0
        self._last_scheduled = None

    @property
    def buffered_samples(self) -> int:
        return len(self._partial) + (FRAME_SAMPLES if self._half is not None else 0)

    def push(self, pcm: Pcm, turn: int, events: list[Event] | None = None) -> list[TickAudio]:
        """Add audio; `events` fire with the first frame made from this chunk. Returns newly scheduled ticks."""
        pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if not np.all(np.isfinite(pcm)):
            raise ValueError("audio contains NaN or infinite samples")
        if events:
            self._pending_events.extend(events)
        if len(self._partial) == 0:
            self._partial_t_in = self._now()
        self._partial = np.concatenate([self._partial, np.clip(pcm, -1.0, 1.0)])
        whole = len(self._partial) - len(self._partial) % FRAME_SAMPLES
        ticks = self._add_frames(self._partial[:whole], turn)
        self._partial = self._partial[whole:]
        return ticks

    def flush(self, turn: int, events: list[Event] | None = None) -> list[TickAudio]:
        """End of a stream (e.g. a sentence): pad the partial frame/tick with silence so nothing is held back.

        `events` ride on the last frame (e.g. sentence end), so they fire when the last audio is played. The last
        tick is marked `last` (its utterance ends there) and says how many of its samples are audio, not padding.
        """
        tail = self.buffered_samples
        padded = np.concatenate([self._partial, np.zeros(-len(self._partial) % FRAME_SAMPLES, np.float32)])
        self._partial = np.zeros(0, dtype=np.float32)
        ticks = self._add_frames(padded, turn)
        if self._half is not None:
            ticks += self._add_frames(np.zeros(FRAME_SAMPLES, np.float32), turn)
        if ticks:
            ticks[-1].samples = tail
        carrier = ticks[-1] if ticks else self._last_scheduled
        if events or self._pending_events:
            if carrier is None or carrier.turn != turn or carrier.tick <= self._current_tick():
                # the last tick is already played (or of another turn): one silent tick carries the events
                ticks += self._add_frames(np.zeros(2 * FRAME_SAMPLES, np.float32), turn)
                carrier = ticks[-1]
                carrier.samples = 0
            carrier.frames[1].events.extend(self._pending_events + (events or []))
            self._pending_events = []
        if carrier is not None:
            carrier.last = True
        self._utterance_pos = 0
        return ticks

    def _add_frames(self, data: Pcm, turn: int) -> list[TickAudio]:
        ticks = [self._add_frame(data[i : i + FRAME_SAMPLES], turn) for i in range(0, len(data), FRAME_SAMPLES)]
        return [t for t in ticks if t is not None]

    def _add_frame(self, chunk: Pcm, turn: int) -> TickAudio | None:
        frame = AudioFrame(
            pcm=chunk, kind=frame_kind(chunk), turn=turn, events=self._pending_events, t_in=self._partial_t_in
        )
        self._pending_events = []
        if self._half is None:
            self._half = frame
            return None
        first, self._half = self._half, None
        now = self._current_tick()
        if self._next_tick <= now:  # first audio, or its slot has passed: a new stretch starts `lead` ahead
            self._next_tick = now + self._lead()
            self._seg_pos = self._utterance_pos = 0
        tick = TickAudio(
            tick=self._next_tick,
            turn=turn,
            frames=(first, frame),
            seg_pos=self._seg_pos,
            utterance_pos=self._utterance_pos,
        )
        self._next_tick += 1
        self._seg_pos += 1
        self._utterance_pos += 1
        self._last_scheduled = tick
        return tick
