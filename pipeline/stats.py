"""Per-session counters, readable by the server (health page, metrics)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Protocol

from core.events import EventKind


class StatsObserver(Protocol):
    """Told of each measurement as it happens (the server's metrics: histograms need every value)."""

    def batch(self, frames: int, seconds: float) -> None: ...

    def latency_observed(self, seconds: float) -> None: ...

    def tts_first_audio_observed(self, seconds: float) -> None: ...

    def event(self, kind: EventKind) -> None: ...


@dataclass
class SessionStats:
    ticks: int = 0  # output ticks sent (video frames == pairs of audio frames)
    speech_frames: int = 0  # frames showing a rendered (lip-synced) face
    idle_frames: int = 0
    action_frames: int = 0
    repeated_frames: int = 0  # speech audio played while its video was not ready: last frame shown again
    dropped_frames: int = 0  # rendered frames that arrived after their tick had been played
    dropped_stale: int = 0  # items of an interrupted turn discarded at some stage
    late_ticks: int = 0  # ticks sent after their slot because the event loop was busy (then caught up)
    skipped_ticks: int = 0  # ticks never sent: the event loop stalled for longer than the catch-up limit
    silent_batches: int = 0
    rendered_frames: int = 0
    render_errors: int = 0
    render_seconds: float = 0.0
    last_latency_ms: float | None = None  # first speech sample in -> its frame out, for the latest stretch
    observer: StatsObserver | None = field(default=None, repr=False, compare=False)
    # Two threads write these counters: the session's inference worker and the event loop (output, interrupt,
    # ticker) both count dropped frames and stale items. `x += n` reads, adds and writes: a thread switch in
    # between loses the other thread's increment. So every change goes through add() under this lock (a few
    # uncontended acquisitions a tick); reading a counter needs no lock (one attribute load).
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Increase the named counters, e.g. add(dropped_stale=3); safe from any thread."""
        if unknown := counts.keys() - COUNTERS:
            raise AttributeError(f"SessionStats has no counter {', '.join(sorted(unknown))}")
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def record_batch(self, frames: int, seconds: float) -> None:
        with self._lock:
            self.rendered_frames += frames
            self.render_seconds += seconds
        if self.observer is not None:
            self.observer.batch(frames, seconds)

    def record_latency(self, seconds: float) -> None:
        self.last_latency_ms = round(1000 * seconds, 1)
        if self.observer is not None:
            self.observer.latency_observed(seconds)

    def record_tts_first_audio(self, seconds: float) -> None:
        if self.observer is not None:
            self.observer.tts_first_audio_observed(seconds)

    def record_event(self, kind: EventKind) -> None:
        """An event published to the session's listeners (tts_error, llm_error...)."""
        if self.observer is not None:
            self.observer.event(kind)

    @property
    def inference_fps(self) -> float:
        return self.rendered_frames / self.render_seconds if self.render_seconds > 0 else 0.0


COUNTERS = frozenset(f.name for f in fields(SessionStats) if f.type == "int")  # what add() may change
