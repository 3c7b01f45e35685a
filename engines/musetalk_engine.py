"""`musetalk`: the real model. Whisper features of the utterance's audio -> UNet + VAE decode -> faces.

Models load once per process and are owned by one process-wide `engines.batcher.Batcher` (one owner thread, the
only one that runs them): every session's worker submits its encoder windows and its frames as jobs carrying the
request's deadline (from the session's media clock) and turn, and the batcher runs them earliest-deadline-first
in padded batches of several sessions (and avatars), with a captured graph per batch size on CUDA
(``engines.musetalk_batch``). Each session's CPU work (the log-mel of its window) stays on its own worker thread.
`close()` stops the batcher (the server does at shutdown). The per-session state is only the feature windowing.

Features: a batch is encoded from the start of its official 30 s segment (left context up to ~30 s) to all of
its utterance the worker has (right context up to the segment's end), so a sentence that has arrived before its
frames are due gets the official features (``StreamingFeatures``).

Latency budget (lead_ticks): the worker renders a batch once its B ticks and the features' look-ahead
(80 ms of whisper window + right context) are there and no more audio could change it, at the latest a batch time
before its deadline, or at the deadline the ticks whose look-ahead is there; the lead covers that look-ahead plus
the measured time of one batch, so on-time audio is rendered before it is played.

Utterance ends: the request says where its utterance ends once that is within reach; the features then take the
official end (zero steps for v1.5, the replicated last step for v1, from step T = floor(n / 16000 * 50) on) and
the official number of frames, floor(n / 16000 * 25) for v1.5: a tick past it gets no face.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from core.units import TICK_SAMPLES
from engines.base import (
    DEFAULT_RIGHT_CONTEXT_S,
    AvatarBinding,
    Engine,
    Renderer,
    RenderRequest,
    lead_ticks_for,
)
from engines.batcher import Batcher, BatchModel, Job, JobRunner
from engines.musetalk_batch import (
    ENCODER,
    FACES,
    LATENTS,
    check_graph_mode,
    default_graph_mode,
    encode_window_batched,
    musetalk_models,
    musetalk_sizes,
    use_channels_last,
    warm_up,
)
from musetalk.audio_features import SEGMENT_STEPS, StepFunction, StreamingFeatures
from musetalk.avatar import Avatar, face_crops
from musetalk.config import FACE_SIZE, check_version
from musetalk.models import ModelPaths, MuseTalkModels, load_models
from musetalk.whisper import load_encoder

log = logging.getLogger(__name__)

DEFAULT_BATCH_GPU = 8
DEFAULT_BATCH_CPU = 4
DEFAULT_MAX_SESSIONS = 4  # the faces batch sizes go up to the first fixed size holding this many sessions' batches
AUTO = "auto"


@dataclass(frozen=True)
class JobTag:
    """What every job of one render carries: when its result is due (``time.monotonic()`` seconds) and its turn
    with a getter of the session's current turn (a job of an ended turn is dropped, not run)."""

    deadline: float
    turn: int = 0
    current_turn: Callable[[], int] | None = None


def context_ticks(features: StreamingFeatures) -> tuple[int, int, int]:
    """Context in ticks for a batch of ``features.batch_frames`` (smaller ones need less), the worst case over the
    frames of a whole 30 s segment: the left context the worker must hand over, the right context it must wait
    for, and how far right queued audio can still be used (to the end of the segment)."""
    left = right = usable = 0
    for f in range(SEGMENT_STEPS, 2 * SEGMENT_STEPS):  # a full segment's worth of frames, past the first one
        (start, end), batch_end = features.window(f), (f + features.batch_frames) * TICK_SAMPLES
        left = max(left, f * TICK_SAMPLES - start)
        right = max(right, end - batch_end)
        usable = max(usable, features.span_end(f) - batch_end)
    return math.ceil(left / TICK_SAMPLES), math.ceil(right / TICK_SAMPLES), math.ceil(usable / TICK_SAMPLES)


class MuseTalkEngine(Engine):
    name = "musetalk"

    def __init__(
        self,
        models_dir: Path = Path("models"),
        version: str = "v15",
        batch_size: int | None = None,
        device: str | None = None,
        left_context_s: float | None = None,
        right_context_s: float = DEFAULT_RIGHT_CONTEXT_S,
        graph_mode: str | None = AUTO,
        channels_last: bool | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        loaded: tuple[MuseTalkModels, WhisperEncoder] | None = None,
        runner: Callable[[dict[str, BatchModel], dict[str, tuple[int, ...]]], JobRunner] | None = None,
    ) -> None:
        """`graph_mode`: ``engines.musetalk_batch.GRAPH_MODES`` or None; "auto": cudagraphs on CUDA, none on a CPU.
        `channels_last` (None: on CUDA): NHWC UNet and VAE. `loaded`: models already in memory (bench.gpu) instead
        of loading them from `models_dir`. `runner`: builds what runs the jobs from the batch models and the batch sizes
        per kind (default: a `Batcher`; bench.gpu passes its lock-serialised baseline and simulated models)."""
        super().__init__()
        started = time.perf_counter()
        self.version = check_version(version)
        if loaded is None:
            self.models: MuseTalkModels = load_models(models_dir, version, device)
            self.encoder = load_encoder(
                ModelPaths(Path(models_dir), version).whisper, version, self.models.device, self.models.dtype
            )
        else:
            self.models, self.encoder = loaded
        cuda = self.models.device.type == "cuda"
        self.batch_size = batch_size or (DEFAULT_BATCH_GPU if cuda else DEFAULT_BATCH_CPU)
        self.context = (left_context_s, right_context_s)
        self.graph_mode = default_graph_mode(self.models.device) if graph_mode == AUTO else graph_mode
        check_graph_mode(self.graph_mode)
        self.channels_last = cuda if channels_last is None else channels_last
        if self.channels_last:
            use_channels_last(self.models)
        self.batch_models = musetalk_models(self.models, self.encoder, version, self.graph_mode, self.channels_last)
        self.sizes = musetalk_sizes(max_sessions * self.batch_size, graphs=self.graph_mode is not None)
        self.runner: JobRunner = (
            runner(self.batch_models, self.sizes)
            if runner is not None
            else Batcher(self.batch_models, self.sizes, name="musetalk-batcher").start()
        )
        self._features: dict[int, StreamingFeatures] = {}
        self.batch_seconds = 0.0  # a faces batch (measured by the warm-up): encoder jobs are due this much earlier
        # Diagnostics (bench.parity): called with (first utterance frame, chunks) of every batch rendered.
        self.features_observer: Callable[[int, np.ndarray], None] | None = None
        self.left_context_ticks, self.right_context_ticks, self._usable_right_ticks = context_ticks(
            self.features(self.batch_size)
        )
        self.batch_seconds = self._warm_up()
        self.lead_ticks = lead_ticks_for(self.right_context_ticks, 1.5 * self.batch_seconds)
        log.info(
            "musetalk %s on %s (%s, graphs: %s): batch %d, context %d/%d ticks, %.0f ms per batch, lead %d "
            "ticks; loaded in %.1f s",
            version,
            self.models.device,
            self.models.dtype,
            self.graph_mode or "none",
            self.batch_size,
            self.left_context_ticks,
            self.right_context_ticks,
            1000 * self.batch_seconds,
            self.lead_ticks,
            time.perf_counter() - started,
        )

    @property
    def max_right_context_ticks(self) -> int:
        return self._usable_right_ticks

    def close(self) -> None:
        """Stop the batcher's owner thread (sessions' jobs still pending fail with BatcherStopped)."""
        self.runner.stop()

    def _streaming(self, frames: int, step_features: StepFunction) -> StreamingFeatures:
        return StreamingFeatures.with_step_function(
            step_features,
            self.version,
            batch_frames=frames,
            left_context_s=self.context[0],
            right_context_s=self.context[1],
            feature_dim=self.encoder.config.d_model,
        )

    def _step_features(self, tag: JobTag) -> StepFunction:
        # The encoder's result is due before the faces that need it: a faces batch's time earlier.
        deadline = tag.deadline - self.batch_seconds

        def step_features(audio: np.ndarray, first_step: int) -> np.ndarray:
            return encode_window_batched(
                self.runner, audio, self.version, first_step, deadline, tag.turn, tag.current_turn
            )

        return step_features

    def features(self, frames: int) -> StreamingFeatures:
        """The windowing of batches of `frames` (what audio they need; ``chunks`` encodes as soon as possible)."""
        if frames not in self._features:
            self._features[frames] = self._streaming(frames, self._step_features(JobTag(deadline=0.0)))
        return self._features[frames]

    def _warm_up(self) -> float:
        """First-call costs paid now: with graphs, every batch size of the encoder and faces is built (captured /
        compiled); then one full batch on zeros, twice; returns the time of the second."""
        if self.graph_mode is not None:
            config = self.encoder.config
            mel = np.zeros((1, config.num_mel_bins, 2 * config.max_source_positions), np.float32)
            warm_up(
                self.runner,
                ENCODER,
                self.sizes[ENCODER],
                lambda n: (np.repeat(mel, n, 0), np.zeros(n, np.int64), np.ones(n, np.int64)),
            )
            warm_up(
                self.runner,
                FACES,
                self.sizes[FACES],
                lambda n: (np.zeros((n, 50, config.d_model), np.float32), np.zeros((n, 8, 32, 32), np.float32)),
            )
        latents = np.zeros((self.batch_size, 8, 32, 32), np.float32)
        audio = np.zeros(self.features(self.batch_size).window(0)[1], np.float32)
        for _ in range(2):
            started = time.perf_counter()
            self.faces(audio, 0, self.batch_size, latents, tag=JobTag(deadline=0.0))
        return time.perf_counter() - started

    def faces(
        self,
        window_audio: np.ndarray,
        first_frame: int,
        frames: int,
        latents: np.ndarray,
        final: bool = False,
        tag: JobTag = JobTag(deadline=0.0),
    ) -> np.ndarray:
        """Faces of utterance frames first_frame.. (``StreamingFeatures.chunks``): `frames` of them, fewer when
        `final` and the utterance has fewer; `latents` holds one per frame: float32 rows, or what the runner
        takes for them (the render pool: ``engines.render_pool.AvatarRows``). Raises
        ``engines.batcher.StaleJob`` when `tag`'s turn ended before the jobs ran."""
        chunks = self._streaming(frames, self._step_features(tag)).chunks(window_audio, first_frame, final)
        if self.features_observer is not None:
            self.features_observer(first_frame, chunks)
        if not len(chunks):
            return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
        job = Job(FACES, (chunks, latents[: len(chunks)]), tag.deadline, tag.turn, tag.current_turn)
        return self.runner.submit(job).result()

    def _bind(self, avatar: Avatar) -> AvatarBinding:
        return MuseTalkBinding(self, avatar)


class MuseTalkBinding(AvatarBinding):
    def __init__(self, engine: MuseTalkEngine, avatar: Avatar) -> None:
        self.engine = engine
        latents = avatar.latents(engine.version)
        if latents is None:  # prepared without weights: encode the face crops once, now (behind sessions' jobs)
            started = time.perf_counter()
            crops = face_crops(avatar.frames, avatar.face_boxes)  # CPU work: on this thread
            latents = engine.runner.submit(Job(LATENTS, (crops,), time.monotonic() + 60)).result()
            log.info(
                "avatar %s: encoded %d latents in %.1f s (prepare the avatar with weights present to skip this)",
                avatar.avatar_id,
                len(latents),
                time.perf_counter() - started,
            )
        # Host float32 rows: a job's input is numpy (32 KB a frame to the device with each batch).
        self.latents = np.ascontiguousarray(latents, np.float32)

    def new_renderer(self) -> MuseTalkRenderer:
        return MuseTalkRenderer(self)


class LatentsBinding(Protocol):
    """What a MuseTalkRenderer reads of its binding: MuseTalkBinding, or the render pool's binding, whose latents
    stay in the pool (engines.render_pool.AvatarRows, indexed like the array)."""

    @property
    def engine(self) -> MuseTalkEngine: ...

    @property
    def latents(self) -> Any: ...


class MuseTalkRenderer(Renderer):
    def __init__(self, binding: LatentsBinding) -> None:
        self.binding = binding

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        engine, frames, first = self.binding.engine, len(request.ticks), request.utterance_pos
        start = engine.features(frames).window(first)[0]
        # request.audio[0] is utterance sample utterance_pos * 640 - left_samples; all of it is utterance audio
        # except the padding past utterance_samples.
        origin = first * TICK_SAMPLES - request.left_samples
        end = origin + len(request.audio)
        final = request.utterance_samples is not None
        if request.utterance_samples is not None:
            end = request.utterance_samples
        latents = self.binding.latents[list(request.cycle_indices)]
        tag = JobTag(request.deadline, request.turn, request.current_turn)
        return list(engine.faces(request.audio[start - origin : end - origin], first, frames, latents, final, tag))
