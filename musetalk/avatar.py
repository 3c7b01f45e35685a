"""A prepared avatar: its on-disk format, the ``Avatar`` type and its loading.

``avatars/<avatar_id>/`` is made once from a video, an image or an array by ``musetalk.avatar_prepare``.

Layout (no pickle anywhere; arrays in frame order, the ping-pong cycle is applied by ``Avatar.cycle_index``):

- ``manifest.json``: format_version, avatar_id, fps, width, height, n_frames, source, version, bbox_shift,
  extra_margin, created, latents (the model versions with a latents file), mask (which blend mask: "bisenet-jaw",
  "bisenet-raw", "bisenet-neck" or "face-oval"; avatars from before it have the oval) and, for jaw, cheek_width
- ``frames.npy`` (N,H,W,3) uint8 BGR; ``face_boxes.npy`` / ``crop_boxes.npy`` (N,4) int32 (x1,y1,x2,y2);
  ``landmarks.npy`` (N,468,2) float32; ``masks.npy`` (N,S,S) uint8, each crop-sized mask top-left aligned
- ``latents_<version>.safetensors``: "latents" (N,8,32,32) float16, when a VAE was available

Run ``python -m musetalk.avatar --help`` for the command line (``musetalk.avatar_cli``).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from musetalk.blending import BlendPlan, prepare_blend
from musetalk.config import FACE_SIZE, LATENT_SIZE, check_version
from musetalk.face import N_LANDMARKS, Box

FORMAT_VERSION = 1
DEFAULT_AVATARS_DIR: Path = Path("avatars")
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MANIFEST_KEYS = (
    "format_version",
    "avatar_id",
    "fps",
    "width",
    "height",
    "n_frames",
    "source",
    "version",
    "bbox_shift",
    "extra_margin",
    "created",
    "latents",
)


class AvatarError(Exception):
    """A user-facing problem with an avatar or its source (message is meant to be shown as is)."""


class NoFaceError(AvatarError):
    pass


class AvatarNotFoundError(AvatarError):
    pass


class AvatarExistsError(AvatarError):
    pass


class InvalidAvatarIdError(AvatarError, ValueError):
    """An id that is not a plain folder name (a ValueError too: it is a bad value, whoever gave it)."""


def validate_avatar_id(avatar_id: str) -> str:
    """The id itself if it is 1..64 characters of A-Z a-z 0-9 _ - (so it is always a plain folder name)."""
    if not isinstance(avatar_id, str) or not _ID_RE.fullmatch(avatar_id):
        raise InvalidAvatarIdError(
            f"invalid avatar id {avatar_id!r}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'"
        )
    return avatar_id


# ---------------------------------------------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class Avatar:
    """A prepared avatar as loaded from disk; arrays are indexed by original frame (see cycle_index)."""

    avatar_id: str
    path: Path
    manifest: dict[str, Any]
    frames: np.ndarray  # (N,H,W,3) uint8 BGR, read-only memory map
    face_boxes: np.ndarray  # (N,4) int32
    crop_boxes: np.ndarray  # (N,4) int32
    masks: np.ndarray  # (N,S,S) uint8, top-left aligned
    landmarks: np.ndarray  # (N,468,2) float32
    fps: float
    # Built on first use and shared by every session showing the avatar (a plan's alpha is up to a few MB).
    _plans: dict[int, BlendPlan] = field(default_factory=dict, init=False, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def n_cycle(self) -> int:
        """Length of the played cycle: the frames forward, then backward."""
        return 2 * self.n_frames

    def cycle_index(self, i: int) -> int:
        """The original frame shown at output position i of the endless ping-pong loop."""
        j = i % self.n_cycle
        return j if j < self.n_frames else self.n_cycle - 1 - j

    def mask(self, i: int) -> np.ndarray:
        """The crop-sized blend mask of original frame i."""
        x1, y1, x2, y2 = as_box(self.crop_boxes[i])
        return self.masks[i, : y2 - y1, : x2 - x1]

    def blend_plan(self, i: int) -> BlendPlan:
        """The precomputed paste of a generated face into original frame i (built once, then cached)."""
        plan = self._plans.get(i)
        if plan is None:  # two sessions may both build it: the same plan, one of them kept
            plan = prepare_blend(
                as_box(self.face_boxes[i]), as_box(self.crop_boxes[i]), self.mask(i), self.frames.shape[1:3]
            )
            plan = self._plans.setdefault(i, plan)
        return plan

    def latents(self, version: str) -> np.ndarray | None:
        """(N,8,32,32) float16 VAE latents for a model version, or None if they were not prepared."""
        check_version(version)
        path = self.path / f"latents_{version}.safetensors"
        if not path.is_file():
            return None
        from safetensors.numpy import load_file

        try:
            arr = load_file(str(path))["latents"]
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise AvatarError(f"avatar {self.avatar_id!r}: cannot read {path.name}: {e}") from e
        expected = (self.n_frames, 8, LATENT_SIZE, LATENT_SIZE)
        if arr.shape != expected:
            raise AvatarError(f"avatar {self.avatar_id!r}: {path.name} has shape {arr.shape}, expected {expected}")
        return arr


def _load_array(folder: Path, name: str, shape: tuple[int | None, ...], dtype: type, mmap: bool) -> np.ndarray:
    path = folder / f"{name}.npy"
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AvatarError(f"avatar folder {folder}: cannot read {path.name}: {e}") from e
    if arr.dtype != dtype or arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise AvatarError(
            f"avatar folder {folder}: {path.name} is {arr.shape} {arr.dtype}, expected {want} {np.dtype(dtype)}"
        )
    return arr


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise AvatarError(f"avatar folder {folder}: cannot read manifest.json: {e}") from e
    if not isinstance(manifest, dict) or any(k not in manifest for k in _MANIFEST_KEYS):
        raise AvatarError(f"avatar folder {folder}: manifest.json lacks some of {', '.join(_MANIFEST_KEYS)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise AvatarError(
            f"avatar folder {folder}: format_version {manifest['format_version']!r} is not supported "
            f"(expected {FORMAT_VERSION}); prepare it again"
        )
    return manifest


def as_box(row: np.ndarray) -> Box:
    """A stored (x1, y1, x2, y2) row (face_boxes, crop_boxes) as a Box of ints."""
    x1, y1, x2, y2 = (int(v) for v in row)
    return x1, y1, x2, y2


def load_avatar(avatar_id: str, avatars_dir: Path = DEFAULT_AVATARS_DIR) -> Avatar:
    """Open a prepared avatar; frames and masks are memory-mapped, so this is fast whatever the length."""
    validate_avatar_id(avatar_id)
    folder = Path(avatars_dir) / avatar_id
    if not folder.is_dir():
        raise AvatarNotFoundError(
            f"no avatar {avatar_id!r} in {avatars_dir} "
            f"(prepare one with: python -m musetalk.avatar prepare --source FILE "
            f"--avatar_id {avatar_id})"
        )
    m = _read_manifest(folder)
    n, h, w = m["n_frames"], m["height"], m["width"]
    frames = _load_array(folder, "frames", (n, h, w, 3), np.uint8, mmap=True)
    face_boxes = _load_array(folder, "face_boxes", (n, 4), np.int32, mmap=False)
    crop_boxes = _load_array(folder, "crop_boxes", (n, 4), np.int32, mmap=False)
    landmarks = _load_array(folder, "landmarks", (n, N_LANDMARKS, 2), np.float32, mmap=False)
    masks = _load_array(folder, "masks", (n, None, None), np.uint8, mmap=True)
    sizes = crop_boxes[:, 2:] - crop_boxes[:, :2]
    if n == 0 or (sizes <= 0).any() or sizes.max() > min(masks.shape[1:]):
        raise AvatarError(f"avatar folder {folder}: crop boxes do not fit masks.npy {masks.shape}")
    return Avatar(avatar_id, folder, m, frames, face_boxes, crop_boxes, masks, landmarks, float(m["fps"]))


def list_avatars(avatars_dir: Path = DEFAULT_AVATARS_DIR) -> list[str]:
    """Ids of the folders under avatars_dir that look like avatars (valid id and a manifest)."""
    root = Path(avatars_dir)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if p.is_dir() and _ID_RE.fullmatch(p.name) and (p / "manifest.json").is_file()
    )


def face_crops(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """(N,256,256,3) uint8 BGR: each face box resized with LANCZOS4, as upstream does before the VAE."""
    return np.stack(
        [
            cv2.resize(np.ascontiguousarray(f[y1:y2, x1:x2]), (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LANCZOS4)
            for f, (x1, y1, x2, y2) in zip(frames, face_boxes)
        ]
    )


if __name__ == "__main__":  # python -m musetalk.avatar, as documented since the first release
    from musetalk.avatar_cli import main

    sys.exit(main())
