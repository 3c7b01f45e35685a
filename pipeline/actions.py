"""Custom action clips ("audiotype" N): frames, optionally with their own audio, played instead of idle."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.items import TICK_SAMPLES

ACTIONS_DIR = "actions"


@dataclass(frozen=True)
class ActionClip:
    frames: np.ndarray  # (M, H, W, 3) uint8 BGR, the avatar's frame size
    audio: np.ndarray | None = None  # float32 16 kHz mono, played with the frames (2 audio frames per video frame)

    @property
    def n_ticks(self) -> int:
        return len(self.frames)

    def frame(self, i: int) -> np.ndarray:
        return self.frames[i]

    def tick_audio(self, i: int) -> np.ndarray:
        out = np.zeros(TICK_SAMPLES, np.float32)
        if self.audio is not None:
            part = self.audio[i * TICK_SAMPLES:(i + 1) * TICK_SAMPLES]
            out[:len(part)] = part
        return out


def save_action(avatar_path: Path, audiotype: int, frames: np.ndarray, audio: np.ndarray | None = None) -> Path:
    folder = avatar_path / ACTIONS_DIR / str(int(audiotype))
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "frames.npy", np.ascontiguousarray(frames, dtype=np.uint8))
    if audio is not None:
        np.save(folder / "audio.npy", np.asarray(audio, dtype=np.float32))
    return folder


def load_actions(avatar_path: Path, frame_shape: tuple[int, int]) -> dict[int, ActionClip]:
    """Clips in `<avatar>/actions/<N>/` (frames.npy, optional audio.npy); wrong-sized clips are an error."""
    clips: dict[int, ActionClip] = {}
    root = avatar_path / ACTIONS_DIR
    if not root.is_dir():
        return clips
    for folder in sorted(root.iterdir()):
        if not (folder.is_dir() and re.fullmatch(r"\d{1,6}", folder.name)):
            continue
        frames = np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False)
        if frames.ndim != 4 or frames.shape[1:3] != tuple(frame_shape) or frames.shape[3] != 3 or not len(frames):
            raise ValueError(f"action clip {folder}: frames {frames.shape} do not match the avatar's {frame_shape}")
        audio_path = folder / "audio.npy"
        audio = np.load(audio_path, allow_pickle=False).astype(np.float32) if audio_path.exists() else None
        clips[int(folder.name)] = ActionClip(frames=frames, audio=audio)
    return clips
