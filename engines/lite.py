"""`lite`: a CPU engine without weights that opens the avatar's mouth with the loudness of the speech.

Per avatar frame it precomputes a 256x256 face crop and a displacement field anchored on the mesh
landmarks (lip line, mouth corners, lower lip): everything below the lip line is pulled down by the
current opening, fading out sideways past the mouth corners and downwards towards the chin, and the gap
that opens is painted as a dark mouth interior. Loudness of each 40 ms tick, smoothed with a fast attack
and a slower release, sets the opening. Cost: one remap and one small blur per frame.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from core.audio import dbfs
from core.units import TICK_SAMPLES
from engines.base import AvatarBinding, Engine, Renderer, RenderRequest
from musetalk.avatar import Avatar, face_crops
from musetalk.config import FACE_SIZE

# mediapipe face-mesh indices
UPPER_LIP_INNER, LOWER_LIP_INNER = 13, 14
MOUTH_LEFT, MOUTH_RIGHT = 61, 291
LOWER_LIP_OUTER = 17
CHIN = 152

QUIET_DB, LOUD_DB = -45.0, -15.0  # loudness mapped linearly onto opening 0..1
ATTACK, RELEASE = 0.7, 0.4  # fraction of the way to the target per tick
MAX_OPEN_OF_JAW = 0.35  # widest opening as a fraction of lip-line-to-chin distance
MOUTH_INTERIOR_BGR = (38, 28, 52)


def loudness_target(pcm: np.ndarray) -> float:
    """Opening 0..1 for a chunk of audio, linear in dBFS between QUIET_DB and LOUD_DB."""
    return float(np.clip((dbfs(pcm) - QUIET_DB) / (LOUD_DB - QUIET_DB), 0.0, 1.0))


class MouthGeometry:
    """Lip line, mouth corners and jaw of one avatar frame, in 256x256 face-crop coordinates."""

    def __init__(self, landmarks: np.ndarray, face_box: np.ndarray) -> None:
        x1, y1, x2, y2 = (float(v) for v in face_box)
        pts = (landmarks - np.array([x1, y1], np.float32)) * np.array(
            [FACE_SIZE / (x2 - x1), FACE_SIZE / (y2 - y1)], np.float32
        )
        self.lip_y = float((pts[UPPER_LIP_INNER, 1] + pts[LOWER_LIP_INNER, 1]) / 2)
        self.cx = float((pts[MOUTH_LEFT, 0] + pts[MOUTH_RIGHT, 0]) / 2)
        self.half_w = max(2.0, float(abs(pts[MOUTH_RIGHT, 0] - pts[MOUTH_LEFT, 0]) / 2))
        self.lower_lip_y = max(self.lip_y + 1.0, float(pts[LOWER_LIP_OUTER, 1]))
        chin_y = max(self.lower_lip_y + 1.0, float(pts[CHIN, 1]))
        self.max_open = MAX_OPEN_OF_JAW * (chin_y - self.lip_y)

    def field(self) -> np.ndarray:
        """Downward displacement per pixel for an opening of 1 pixel, (256, 256) float32."""
        y = np.arange(FACE_SIZE, dtype=np.float32)
        x = np.arange(FACE_SIZE, dtype=np.float32)
        below = np.clip((FACE_SIZE - y) / max(1.0, FACE_SIZE - self.lower_lip_y), 0.0, 1.0)
        s = np.where(y <= self.lip_y, 0.0, np.where(y <= self.lower_lip_y, 1.0, below)).astype(np.float32)
        d = np.abs(x - self.cx)
        inner, outer = 1.2 * self.half_w, 2.6 * self.half_w
        t = np.clip((d - inner) / (outer - inner), 0.0, 1.0)
        w = (0.5 + 0.5 * np.cos(np.pi * t)).astype(np.float32)
        return s[:, None] * w[None, :]


class LiteBinding(AvatarBinding):
    def __init__(self, avatar: Avatar) -> None:
        self.avatar = avatar
        self._cache: dict[int, tuple[np.ndarray, MouthGeometry, np.ndarray]] = {}
        self._lock = threading.Lock()
        grid = np.arange(FACE_SIZE, dtype=np.float32)
        self.map_x, self.map_y = np.meshgrid(grid, grid)

    def frame_data(self, index: int) -> tuple[np.ndarray, MouthGeometry, np.ndarray]:
        """(face crop, mouth geometry, displacement field) of one avatar frame, computed once."""
        with self._lock:
            data = self._cache.get(index)
        if data is None:
            a = self.avatar
            crop = face_crops(a.frames[index : index + 1], a.face_boxes[index : index + 1])[0]
            geometry = MouthGeometry(np.asarray(a.landmarks[index]), a.face_boxes[index])
            data = (crop, geometry, geometry.field())
            with self._lock:
                self._cache[index] = data
        return data

    def new_renderer(self) -> LiteRenderer:
        return LiteRenderer(self)


class LiteRenderer(Renderer):
    def __init__(self, binding: LiteBinding) -> None:
        self.binding = binding
        self.opening = 0.0  # smoothed, 0..1; per session

    def advance(self, pcm: np.ndarray) -> float:
        target = loudness_target(pcm)
        rate = ATTACK if target > self.opening else RELEASE
        self.opening += (target - self.opening) * rate
        return self.opening

    def render(self, request: RenderRequest) -> list[np.ndarray]:
        audio = request.audio[request.left_samples : len(request.audio) - request.right_samples]
        if request.seg_pos == 0:
            self.opening = 0.0  # a new stretch of speech starts from a closed mouth
        faces = []
        for i, index in enumerate(request.cycle_indices):
            opening = self.advance(audio[i * TICK_SAMPLES : (i + 1) * TICK_SAMPLES])
            faces.append(self.face(index, opening))
        return faces

    def face(self, index: int, opening: float) -> np.ndarray:
        """The face crop of avatar frame `index` with the mouth opened by `opening` (0..1)."""
        crop, geo, field = self.binding.frame_data(index)
        open_px = opening * geo.max_open
        if open_px < 0.5:
            return crop.copy()
        map_y = self.binding.map_y - open_px * field
        face = cv2.remap(crop, self.binding.map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        mouth = np.zeros((FACE_SIZE, FACE_SIZE), np.uint8)
        center = (round(geo.cx * 4), round((geo.lip_y + open_px / 2) * 4))
        axes = (round(geo.half_w * 0.85 * 4), max(1, round(open_px / 2 * 4)))
        cv2.ellipse(mouth, center, axes, 0, 0, 360, (255,), -1, cv2.LINE_AA, shift=2)
        alpha = cv2.GaussianBlur(mouth, (5, 5), 0).astype(np.float32)[:, :, None] / 255.0
        interior = np.array(MOUTH_INTERIOR_BGR, np.float32)
        return (face * (1.0 - alpha) + interior * alpha + 0.5).astype(np.uint8)


class LiteEngine(Engine):
    name = "lite"
    batch_size = 2
    left_context_ticks = 0
    right_context_ticks = 0
    lead_ticks = 3

    def _bind(self, avatar: Avatar) -> LiteBinding:
        return LiteBinding(avatar)
