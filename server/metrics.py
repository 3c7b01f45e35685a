"""/metrics with prometheus_client: process-wide counters and histograms, process metrics, and (only with
--metrics_per_session) series labelled by session.

Each app has its own registry (not prometheus_client's global one), so apps in one process (tests) never share
series. The pipeline feeds it without knowing it: every session's SessionStats gets this object as its observer
when the session is registered (histograms: latency, batch time, TTS first audio; counters: errors), and the
frame counters are read from the sessions' own counters at scrape time, plus those of the sessions already
closed, so they only ever grow."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.events import ERROR_SERVICES, EventKind
from core.items import Source
from server.registry import LiveSession

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Frame counters of pipeline.stats.SessionStats, by source: what each frame sent showed, or that it was dropped.
DROPPED = "dropped"  # the label of frames rendered too late (not a source: they were never shown)
FRAME_SOURCES = {
    Source.SPEECH: "speech_frames",
    Source.IDLE: "idle_frames",
    Source.ACTION: "action_frames",
    Source.REPEAT: "repeated_frames",
    DROPPED: "dropped_frames",
}
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)
TTS_BUCKETS = (0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 4.0)


@dataclass
class _FrameTotals:
    speech: int = 0
    idle: int = 0
    action: int = 0
    repeat: int = 0
    dropped: int = 0

    def add(self, stats: object) -> None:
        for source, counter in FRAME_SOURCES.items():
            setattr(self, source, getattr(self, source) + getattr(stats, counter))


class Metrics:
    """One app's metrics. Its methods are what pipeline.stats.SessionStats and the registry report to."""

    def __init__(
        self,
        sessions: Callable[[], Iterable[LiveSession]],
        max_sessions: int,
        engine: Callable[[], str],
        per_session: bool = False,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # CPU seconds, resident memory, open files, start time
        PlatformCollector(registry=self.registry)
        r = self.registry
        self.sessions_opened = Counter("avatar_sessions_opened", "Sessions started (offer answered).", registry=r)
        self.sessions_closed = Counter("avatar_sessions_closed", "Sessions ended (for whatever reason).", registry=r)
        self.latency = Histogram(
            "avatar_session_latency_seconds",
            "First speech sample in to its lip-synced frame out, per stretch of speech.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_seconds = Histogram(
            "avatar_inference_batch_seconds",
            "Time of one engine render call (a batch).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.tts_first_audio = Histogram(
            "avatar_tts_first_audio_seconds",
            "A sentence handed to TTS to its first audio.",
            buckets=TTS_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "avatar_errors", "Failures reported to a session (TTS, LLM, ASR, rendering).", ["kind"], registry=r
        )
        self.uploads_rejected = Counter(
            "avatar_uploads_rejected", "Uploads refused, by HTTP status.", ["status"], registry=r
        )
        for kind in ERROR_SERVICES.values():
            self.errors.labels(kind)  # present at 0 from the start: a rate() needs the series before the first error
        self._closed_frames = _FrameTotals()
        r.register(_LiveCollector(self, sessions, max_sessions, engine, per_session))

    # -- what the sessions and the registry report ---------------------------------------------------------
    def opened(self, live: LiveSession) -> None:
        self.sessions_opened.inc()
        live.session.stats.observer = self

    def closed(self, live: LiveSession) -> None:
        self.sessions_closed.inc()
        self._closed_frames.add(live.session.stats)
        live.session.stats.observer = None

    def batch(self, frames: int, seconds: float) -> None:
        self.batch_seconds.observe(seconds)

    def latency_observed(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def tts_first_audio_observed(self, seconds: float) -> None:
        self.tts_first_audio.observe(seconds)

    def event(self, kind: EventKind) -> None:
        if (service := ERROR_SERVICES.get(kind)) is not None:
            self.errors.labels(service).inc()

    def upload_rejected(self, status: int) -> None:
        self.uploads_rejected.labels(str(status)).inc()

    def frame_totals(self, live: Iterable[LiveSession]) -> _FrameTotals:
        """The frame counters of the closed sessions plus those of the live ones."""
        totals = replace(self._closed_frames)
        for s in live:
            totals.add(s.session.stats)
        return totals

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


# name, help, value of a live session (None: not known yet, left out) for --metrics_per_session
_PER_SESSION_GAUGES = (
    ("avatar_session_fps", "Output video frames per second over the last seconds.", lambda s: s.fps),
    (
        "avatar_session_last_latency_seconds",
        "First speech sample in to its frame out, latest stretch of speech.",
        lambda s: None if s.session.stats.last_latency_ms is None else s.session.stats.last_latency_ms / 1000,
    ),
    (
        "avatar_session_inference_fps",
        "Frames rendered per second of render time.",
        lambda s: s.session.stats.inference_fps,
    ),
    ("avatar_session_speaking", "1 while the avatar speaks.", lambda s: int(s.session.speaking)),
)
_PER_SESSION_COUNTERS = (
    ("avatar_session_ticks", "Output ticks sent (a video frame and its 40 ms of audio).", "ticks"),
    ("avatar_session_rendered_frames", "Faces rendered by the engine.", "rendered_frames"),
    ("avatar_session_late_ticks", "Ticks sent late (then caught up) because the event loop was busy.", "late_ticks"),
    ("avatar_session_skipped_ticks", "Ticks never sent because the event loop stalled too long.", "skipped_ticks"),
)


class _LiveCollector(Collector):
    """What is read from the live sessions at scrape time."""

    def __init__(
        self,
        metrics: Metrics,
        sessions: Callable[[], Iterable[LiveSession]],
        max_sessions: int,
        engine: Callable[[], str],
        per_session: bool,
    ) -> None:
        self.metrics, self.sessions, self.max_sessions = metrics, sessions, max_sessions
        self.engine, self.per_session = engine, per_session

    def collect(self) -> Iterator[Metric]:
        live = list(self.sessions())
        yield GaugeMetricFamily("avatar_sessions", "Sessions open now.", value=len(live))
        yield GaugeMetricFamily("avatar_max_sessions", "Session limit (--max_session).", value=self.max_sessions)
        info = GaugeMetricFamily("avatar_engine_info", "The lip-sync engine in use.", labels=["engine"])
        info.add_metric([self.engine()], 1)
        yield info
        totals = self.metrics.frame_totals(live)
        frames = CounterMetricFamily(
            "avatar_frames",
            "Video frames by source: sent showing speech, idle, an action "
            "clip, the previous frame again (repeat), or rendered too late and dropped.",
            labels=["source"],
        )
        for source in FRAME_SOURCES:
            frames.add_metric([source], getattr(totals, source))
        yield frames
        if self.per_session:
            yield from self._per_session(live)

    def _per_session(self, live: list[LiveSession]) -> Iterator[Metric]:
        labels = ["session", "avatar"]
        for name, help_text, value in _PER_SESSION_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=labels)
            for s in live:
                if (v := value(s)) is not None:
                    family.add_metric([s.tag, s.session.avatar.avatar_id], v)
            yield family
        for name, help_text, counter in _PER_SESSION_COUNTERS:
            totals = CounterMetricFamily(name, help_text, labels=labels)
            for s in live:
                totals.add_metric([s.tag, s.session.avatar.avatar_id], getattr(s.session.stats, counter))
            yield totals
