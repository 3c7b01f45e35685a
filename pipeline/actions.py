"""Custom action clips ("audiotype" N): frames, optionally with their own audio, played instead of idle."""
from __future__ import annotations

import argparse
import itertools
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from musetalk.avatar import DEFAULT_AVATARS_DIR, AvatarError, building, decode_video, load_avatar, write_frames
from pipeline.items import SAMPLE_RATE, TICK_SAMPLES
from voices.audio import MonoResampler

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


def save_action(avatar_path: Path, audiotype: int, frames: Iterable[np.ndarray], audio: np.ndarray | None = None,
                source_name: str = "<array>") -> Path:
    """Write clip `audiotype` (frames one by one, never all in memory), replacing a previous clip of that number
    whole: nothing of the old one (its sound, say) is left, and on error the old one is kept."""
    folder = avatar_path / ACTIONS_DIR / str(int(audiotype))
    with building(folder, overwrite=True) as tmp:
        write_frames(frames, tmp / "frames.npy", source_name)
        if audio is not None:
            np.save(tmp / "audio.npy", np.asarray(audio, dtype=np.float32))
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


def decode_audio(path: Path) -> np.ndarray | None:
    """The first audio stream of a media file as 16 kHz mono float32, or None if it has none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        to_mono = MonoResampler()
        parts = [to_mono(frame) for frame in itertools.chain(container.decode(audio=0), [None])]  # None: flush
    audio = np.concatenate(parts)
    return audio if len(audio) else None


def add_action(avatar_id: str, audiotype: int, source: Path, avatars_dir: Path = DEFAULT_AVATARS_DIR,
               with_audio: bool = True) -> Path:
    """Make clip `audiotype` of an avatar from a video: its frames at 25 fps (resized to the avatar's size if
    needed) and, unless with_audio is False, its sound."""
    avatar = load_avatar(avatar_id, avatars_dir)
    h, w = avatar.frames.shape[1:3]
    frames = (f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
              for f in decode_video(source, avatar.fps, None))
    audio = decode_audio(source) if with_audio else None
    return save_action(avatar.path, audiotype, frames, audio, source_name=str(source))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.actions",
                                     description="Add an action clip to a prepared avatar (played by /set_audiotype).")
    parser.add_argument("avatar_id")
    parser.add_argument("audiotype", type=int, help="the number /set_audiotype selects it by")
    parser.add_argument("source", type=Path, help="a video file (its sound plays with it)")
    parser.add_argument("--no_audio", action="store_true", help="play the frames silently")
    parser.add_argument("--avatars_dir", type=Path, default=DEFAULT_AVATARS_DIR)
    args = parser.parse_args(argv)
    try:
        folder = add_action(args.avatar_id, args.audiotype, args.source, args.avatars_dir, not args.no_audio)
    except (AvatarError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    clip = load_actions(folder.parent.parent, np.load(folder / "frames.npy", mmap_mode="r").shape[1:3])[args.audiotype]
    audio = "no audio" if clip.audio is None else f"{len(clip.audio) / SAMPLE_RATE:.2f} s of audio"
    print(f"action {args.audiotype} of {args.avatar_id}: {clip.n_ticks} frames, {audio} ({folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
