"""N simulated sessions speaking continuously through the real pipeline (framer, inference worker, engine,
output clock) on one musetalk engine: aggregate frame rate, late ticks and each session's pipeline latency.

Used by ``bench.gpu``. Each session is a real-time `Session` (its own media clock, ticker task and worker
thread) fed like a streaming voice: sentences of 40 ms of speech-like audio every 40 ms, so frames are rendered
as their right context arrives, at the latency floor (`run_sessions`); or, for throughput alone, stepped sessions
given their speech ahead and driven as fast as they render (`run_throughput`). `LockRunner` is the way the engine
ran its models before the batcher -- each session's worker thread calling the model itself under one process-wide
lock, one call per session and batch -- kept here as the baseline the batcher is measured against.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from bench.capacity import speech
from core.units import TICK_SAMPLES, TICK_SECONDS
from engines.batcher import BatchModel, Job
from engines.musetalk_engine import MuseTalkEngine
from musetalk.avatar import Avatar
from pipeline.session import Session, SessionOptions

COUNTERS = ("speech_frames", "rendered_frames", "repeated_frames", "dropped_frames", "late_ticks", "skipped_ticks")


class LockRunner:
    """The old way, as a job runner: the submitting thread runs its own job at once, under one lock."""

    def __init__(self, models: dict[str, BatchModel], sizes: object = None) -> None:
        self.models = models  # (no batch sizes: every job is its own call, as it was)
        self.lock = threading.Lock()

    def submit(self, job: Job) -> Future:
        future: Future = Future()
        try:
            with self.lock:
                future.set_result(self.models[job.kind](job.inputs, job.rows))
        except Exception as e:  # noqa: BLE001 -- reported to the job, as the batcher does
            future.set_exception(e)
        return future

    def stop(self, timeout: float | None = None) -> None:
        """Nothing runs beside the sessions."""


@dataclass(frozen=True)
class Cost:
    """What a batch call costs on a device, on paper: host work per call (Python dispatch, kernel launches or a
    graph replay, the copy back) plus compute per row. Parsed from "CALL_MS+ROW_MS"."""

    call_s: float
    row_s: float

    @classmethod
    def parse(cls, text: str) -> Cost:
        call, row = (float(x) / 1000 for x in text.split("+"))
        if call < 0 or row < 0:
            raise ValueError(f"costs must be >= 0, got {text!r}")
        return cls(call, row)

    def __str__(self) -> str:
        return f"{1000 * self.call_s:g} ms a call + {1000 * self.row_s:g} ms a row"

    def wait(self, rows: int) -> None:
        time.sleep(self.call_s + self.row_s * rows)  # the device busy: the GIL is free, as in a CUDA sync


class SimulatedFaces:
    """The faces model at a given `Cost`: blank faces."""

    def __init__(self, cost: Cost) -> None:
        self.cost = cost

    def __call__(self, inputs: tuple, rows: int) -> np.ndarray:
        self.cost.wait(len(inputs[0]))
        return np.zeros((len(inputs[0]), 256, 256, 3), np.uint8)


class SimulatedEncoder:
    """The encoder model at a given `Cost`: zero states of the asked lengths."""

    def __init__(self, cost: Cost, width: int) -> None:
        self.cost, self.width = cost, width

    def __call__(self, inputs: tuple, rows: int) -> list[np.ndarray]:
        mels, _, counts = inputs
        self.cost.wait(len(mels))
        return [np.zeros((int(n), 5, self.width), np.float32) for n in counts[:rows]]


@dataclass
class SessionsRow:
    n: int
    seconds: float
    counters: dict[str, int]  # summed over the sessions, over the measured window
    latencies_ms: list[float]  # per session: first speech sample in -> its frame out (the stretch's start)
    lead_ticks: list[int]

    def fps(self, key: str) -> float:
        return self.counters[key] / self.seconds

    @property
    def late(self) -> int:
        """Speech ticks played without their own face (repeated) plus faces that came after their tick."""
        return self.counters["repeated_frames"] + self.counters["dropped_frames"]

    def text(self) -> str:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else np.asarray([np.nan])
        return (
            f"| {self.n:2d} | {self.fps('speech_frames'):7.1f} | {self.fps('rendered_frames'):7.1f} | "
            f"{self.fps('speech_frames') / self.n:5.1f} | {self.late:5d} | {self.counters['late_ticks']:4d} | "
            f"{np.median(lat):6.0f} | {lat.max():6.0f} | {min(self.lead_ticks)}..{max(self.lead_ticks)} |"
        )


SESSIONS_HEADER = (
    "|  N | shown fps (all) | rendered fps | per session | late frames | late ticks | latency p50 ms "
    "| max ms | lead ticks |\n|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


SENTENCE_S, GAP_S = 3.0, 1.0  # streamed sentences and the silence between them (longer than any lead: each
# sentence starts a new stretch at the lead of that moment, as a voice's sentences do)


async def _speak(session: Session, audio: np.ndarray, stop: asyncio.Event) -> None:
    """Sentences of SENTENCE_S, 40 ms of audio each 40 ms, each ended (flush) and followed by GAP_S of nothing,
    until stopped."""
    k, t0, per_sentence = 0, time.monotonic(), round(SENTENCE_S / TICK_SECONDS)
    gap = round(GAP_S / TICK_SECONDS)
    while not stop.is_set():
        i = k % (per_sentence + gap)
        if i < per_sentence:
            start = (k * TICK_SAMPLES) % (len(audio) - TICK_SAMPLES)
            await session.push_audio(audio[start : start + TICK_SAMPLES])
            if i == per_sentence - 1:
                await session.end_speech()
        k += 1
        await asyncio.sleep(max(0.0, t0 + k * TICK_SECONDS - time.monotonic()))


async def run_sessions(engine: MuseTalkEngine, avatar: Avatar, n: int, warmup: float, seconds: float) -> SessionsRow:
    sessions = [Session(f"bench-{n}-{i}", avatar, engine, options=SessionOptions(crossfade_ticks=0)) for i in range(n)]
    stop = asyncio.Event()
    audio = speech(20.0)
    feeders: list[asyncio.Task] = []
    try:
        for i, s in enumerate(sessions):
            await s.start()
            # Staggered by a tick each, as independent sessions would be.
            feeders.append(asyncio.create_task(_speak(s, np.roll(audio, i * 2917), stop)))
            await asyncio.sleep(TICK_SECONDS)
        await asyncio.sleep(warmup)
        before = [{k: getattr(s.stats, k) for k in COUNTERS} for s in sessions]
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t0
        after = [{k: getattr(s.stats, k) for k in COUNTERS} for s in sessions]
    finally:
        stop.set()
        await asyncio.gather(*feeders, return_exceptions=True)
        for s in sessions:
            await s.close()
    totals = {k: sum(a[k] - b[k] for a, b in zip(after, before)) for k in COUNTERS}
    return SessionsRow(
        n,
        elapsed,
        totals,
        [s.stats.last_latency_ms for s in sessions if s.stats.last_latency_ms is not None],
        [s.worker.lead_ticks for s in sessions],
    )


async def run_throughput(engine: MuseTalkEngine, avatar: Avatar, n: int, seconds_of_speech: float) -> float:
    """N stepped sessions (their own media clocks, driven as fast as they render) each speaking an utterance of
    `seconds_of_speech` given ahead: aggregate frames rendered per second of wall time, through the real workers
    and the engine's job runner."""
    sessions = [
        Session(f"ahead-{n}-{i}", avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
        for i in range(n)
    ]
    audio = speech(seconds_of_speech)
    ticks = engine.lead_ticks + math.ceil(len(audio) / TICK_SAMPLES) + 2
    try:
        for i, s in enumerate(sessions):
            await s.start()
            await s.push_audio(np.roll(audio, i * 2917))
            await s.end_speech()
        started = time.perf_counter()
        # Each session's clock stepped by its own thread, each tick waiting for its face: sessions in parallel.

        def run(session: Session) -> None:
            for _ in range(ticks):
                session.step(wait_for_video=120.0)

        await asyncio.gather(*(asyncio.to_thread(run, s) for s in sessions))
        elapsed = time.perf_counter() - started
    finally:
        for s in sessions:
            await s.close()
    return sum(s.stats.rendered_frames for s in sessions) / elapsed
