"""A probe engine (paints each face with a function of its own tick's audio) and a synthetic avatar."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.units import TICK_SAMPLES
from engines.base import AvatarBinding, Engine, Renderer, RenderRequest
from musetalk.avatar import Avatar

FACE_BOX = (16, 16, 48, 48)
CROP_BOX = (8, 8, 56, 56)


def synthetic_avatar(n_frames: int = 3, size: int = 64) -> Avatar:
    """Frames of distinct flat colours, a full (unblurred) mask over the face box: pixels are exact."""
    frames = np.stack([np.full((size, size, 3), 40 + 50 * j, np.uint8) for j in range(n_frames)])
    frames.setflags(write=False)
    s = CROP_BOX[2] - CROP_BOX[0]
    masks = np.full((n_frames, s, s), 255, np.uint8)
    return Avatar(
        avatar_id="synthetic",
        path=Path("/nonexistent/synthetic"),
        manifest={"created": "test"},
        frames=frames,
        face_boxes=np.tile(np.array(FACE_BOX, np.int32), (n_frames, 1)),
        crop_boxes=np.tile(np.array(CROP_BOX, np.int32), (n_frames, 1)),
        masks=masks,
        landmarks=np.zeros((n_frames, 468, 2), np.float32),
        fps=25.0,
    )


def probe_value(pcm: np.ndarray) -> int:
    """The grey level the probe engine paints for a tick's audio: a function of that audio only."""
    return round(float(np.mean(pcm)) * 1000) % 256


def probe_audio(ticks: int, first: int = 1) -> np.ndarray:
    """A DC level per tick (0.001 * n for tick n of the clip): every tick's audio is distinguishable."""
    return np.concatenate([np.full(TICK_SAMPLES, (first + j) / 1000, np.float32) for j in range(ticks)])


class ProbeRenderer(Renderer):
    def __init__(self, engine: ProbeEngine) -> None:
        self.engine = engine

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        self.engine.calls += 1
        self.engine.requests.append(request)
        if self.engine.delay:
            import time

            time.sleep(self.engine.delay)
        audio = request.audio[request.left_samples : len(request.audio) - request.right_samples]
        assert len(audio) == len(request.ticks) * TICK_SAMPLES
        return [
            np.full((256, 256, 3), probe_value(audio[i * TICK_SAMPLES : (i + 1) * TICK_SAMPLES]), np.uint8)
            for i in range(len(request.ticks))
        ]


class ProbeBinding(AvatarBinding):
    def __init__(self, engine: ProbeEngine) -> None:
        self.engine = engine

    def new_renderer(self) -> Renderer:
        return ProbeRenderer(self.engine)


class ProbeEngine(Engine):
    """Paints each face with a grey level computed from exactly the audio of its own tick."""

    name = "probe"

    def __init__(
        self, batch_size: int = 4, lead_ticks: int = 3, left: int = 0, right: int = 0, delay: float = 0.0
    ) -> None:
        super().__init__()
        self.batch_size, self.lead_ticks = batch_size, lead_ticks
        self.left_context_ticks, self.right_context_ticks = left, right
        self.delay = delay
        self.calls = 0
        self.requests: list[RenderRequest] = []

    def _bind(self, avatar: Avatar) -> AvatarBinding:
        return ProbeBinding(self)


def face_value(frame: np.ndarray) -> int:
    x1, y1, x2, y2 = FACE_BOX
    region = frame[y1:y2, x1:x2]
    assert (region == region[0, 0]).all(), "face region is not a flat probe colour"
    return int(region[0, 0, 0])
