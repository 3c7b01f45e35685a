"""`musetalk`: the real model. Whisper features of the utterance's audio -> UNet + VAE decode -> faces.

Models load once per process and are shared by every session; GPU calls of different sessions are
serialised by one lock (one model, one stream), which covers the model passes only: each session's CPU work
(the log-mel of its window) runs beside another session's GPU work. The per-session state is only the feature
windowing.

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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engines.base import AvatarBinding, Engine, RenderRequest, Renderer, lead_ticks_for
from engines.batcher import FACES, Batcher, Job, encode_window_batched, musetalk_models
from musetalk.audio_features import SEGMENT_STEPS, StreamingFeatures
from musetalk.avatar import Avatar, face_crops
from musetalk.config import FACE_SIZE
from musetalk.inference import faces_to_latents, infer_faces
from musetalk.models import ModelPaths, MuseTalkModels, load_models
from musetalk.whisper import load_encoder
from pipeline.clock import TICK_SECONDS
from pipeline.items import TICK_SAMPLES

log = logging.getLogger(__name__)

DEFAULT_BATCH_GPU = 8
DEFAULT_BATCH_CPU = 4


class MuseTalkEngine(Engine):
    name = "musetalk"

    def __init__(self, models_dir: Path = Path("models"), version: str = "v15", batch_size: int | None = None,
                 device: str | None = None, left_context_s: float | None = None, right_context_s: float = 0.2,
                 batcher: bool = False) -> None:
        super().__init__()
        started = time.perf_counter()
        self.version = version
        self.models: MuseTalkModels = load_models(models_dir, version, device)
        self.encoder = load_encoder(ModelPaths(Path(models_dir), version).whisper, version, self.models.device,
                                    self.models.dtype)
        self.batch_size = batch_size or (DEFAULT_BATCH_GPU if self.models.device.type == "cuda" else DEFAULT_BATCH_CPU)
        self.context = (left_context_s, right_context_s)
        self.lock = threading.Lock()
        # Opt-in (off by default): every session's encoder and UNet+VAE calls go through one cross-session batcher
        # (engines.batcher), whose owner thread takes `lock` around each model call. `close()` stops it.
        self.batcher: Batcher | None = None
        if batcher:
            def locked(model):
                def run(inputs, rows):
                    with self.lock:
                        return model(inputs, rows)
                return run
            models = musetalk_models(self.models, self.encoder, version)
            self.batcher = Batcher({kind: locked(m) for kind, m in models.items()}, name="musetalk-batcher").start()
        self._features: dict[int, StreamingFeatures] = {}
        # Diagnostics (musetalk.parity): called with (first utterance frame, chunks) of every batch rendered.
        self.features_observer: Callable[[int, np.ndarray], None] | None = None
        # Context in ticks for the largest batch (smaller ones need less), the worst case over the frames of a whole
        # 30 s segment: the left context the worker must hand us, the right context it must wait for, and how far
        # right queued audio can still be used (to the end of the segment).
        probe, left, right, usable = self.features(self.batch_size), 0, 0, 0
        for f in range(SEGMENT_STEPS, 2 * SEGMENT_STEPS):  # a full segment's worth of frames, past the first one
            (start, end), batch_end = probe.window(f), (f + self.batch_size) * TICK_SAMPLES
            left = max(left, f * TICK_SAMPLES - start)
            right = max(right, end - batch_end)
            usable = max(usable, probe.span_end(f) - batch_end)
        self.left_context_ticks, self.right_context_ticks, self._usable_right_ticks = (
            math.ceil(samples / TICK_SAMPLES) for samples in (left, right, usable))
        self.batch_seconds = self._warm_up()
        self.lead_ticks = lead_ticks_for(self.right_context_ticks, 1.5 * self.batch_seconds)
        log.info("musetalk %s on %s (%s): batch %d, context %d/%d ticks, %.0f ms per batch, lead %d ticks; "
                 "loaded in %.1f s", version, self.models.device, self.models.dtype, self.batch_size,
                 self.left_context_ticks, self.right_context_ticks, 1000 * self.batch_seconds, self.lead_ticks,
                 time.perf_counter() - started)

    @property
    def max_right_context_ticks(self) -> int:
        return self._usable_right_ticks

    def close(self) -> None:
        """Stop the batcher's owner thread, if any (sessions' jobs still pending fail with BatcherStopped)."""
        if self.batcher is not None:
            self.batcher.stop()

    def _deadline(self) -> float:
        # The worker asks for a batch about one batch time before it is due; the request carries no deadline or
        # turn yet, so jobs are ordered by when they are asked for.
        return time.monotonic() + TICK_SECONDS

    def features(self, frames: int) -> StreamingFeatures:
        if frames not in self._features and self.batcher is not None:
            batcher = self.batcher

            def step_features(audio: np.ndarray, first_step: int) -> np.ndarray:
                return encode_window_batched(batcher, audio, self.version, first_step, self._deadline())

            self._features[frames] = StreamingFeatures.with_step_function(
                step_features, self.version, batch_frames=frames, left_context_s=self.context[0],
                right_context_s=self.context[1], feature_dim=self.encoder.config.d_model)
        if frames not in self._features:
            self._features[frames] = StreamingFeatures(self.encoder, self.version, batch_frames=frames,
                                                       left_context_s=self.context[0],
                                                       right_context_s=self.context[1],
                                                       encoder_lock=self.lock)
        return self._features[frames]

    def _warm_up(self) -> float:
        """One full batch on zeros: first-call costs (kernels, allocations) paid now; returns its time."""
        latents = torch.zeros(self.batch_size, 8, 32, 32)
        audio = np.zeros(self.features(self.batch_size).window(0)[1], np.float32)
        for _ in range(2):
            started = time.perf_counter()
            self.faces(audio, 0, self.batch_size, latents)
        return time.perf_counter() - started

    def faces(self, window_audio: np.ndarray, first_frame: int, frames: int, latents: torch.Tensor,
              final: bool = False) -> np.ndarray:
        """Faces of utterance frames first_frame.. (``StreamingFeatures.chunks``): `frames` of them, fewer when
        `final` and the utterance has fewer; `latents` holds one per frame."""
        with torch.inference_mode():
            chunks = self.features(frames).chunks(window_audio, first_frame, final)  # takes the lock for the encoder
            if self.features_observer is not None:
                self.features_observer(first_frame, chunks)
            if not len(chunks):
                return np.zeros((0, FACE_SIZE, FACE_SIZE, 3), np.uint8)
            if self.batcher is not None:
                return self.batcher.submit(Job(FACES, (chunks, latents[:len(chunks)]), self._deadline())).result()
            with self.lock:
                return infer_faces(self.models, chunks, latents[:len(chunks)])

    def _bind(self, avatar: Avatar) -> MuseTalkBinding:
        return MuseTalkBinding(self, avatar)


class MuseTalkBinding(AvatarBinding):
    def __init__(self, engine: MuseTalkEngine, avatar: Avatar) -> None:
        self.engine = engine
        latents = avatar.latents(engine.version)
        if latents is None:  # prepared without weights: encode the face crops once, now
            started = time.perf_counter()
            crops = face_crops(avatar.frames, avatar.face_boxes)  # CPU work: outside the models' lock
            with engine.lock:
                encoded = faces_to_latents(engine.models.vae, crops)
            latents = encoded.numpy()
            log.info("avatar %s: encoded %d latents in %.1f s (prepare the avatar with weights present to skip this)",
                     avatar.avatar_id, len(latents), time.perf_counter() - started)
        # On the models' device and dtype once, not copied and cast again for every batch.
        self.latents = torch.from_numpy(np.asarray(latents, np.float32)).to(engine.models.device, engine.models.dtype)

    def new_renderer(self) -> MuseTalkRenderer:
        return MuseTalkRenderer(self)


class MuseTalkRenderer(Renderer):
    def __init__(self, binding: MuseTalkBinding) -> None:
        self.binding = binding

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        engine, frames, first = self.binding.engine, len(request.ticks), request.utterance_pos
        start = engine.features(frames).window(first)[0]
        # request.audio[0] is utterance sample utterance_pos * 640 - left_samples; all of it is utterance audio
        # except the padding past utterance_samples.
        origin = first * TICK_SAMPLES - request.left_samples
        end = origin + len(request.audio)
        final = request.utterance_samples is not None
        if final:
            end = request.utterance_samples
        latents = self.binding.latents[list(request.cycle_indices)]
        return list(engine.faces(request.audio[start - origin:end - origin], first, frames, latents, final))
