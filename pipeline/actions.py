"""Custom action clips ("audiotype" N): frames, optionally with their own audio, played instead of idle.

Two sources: clips stored with an avatar (``avatars/<id>/actions/<N>/``, made by ``python -m pipeline.actions``), and
LiveTalking's custom-video config (``--customvideo_config`` file or ``/offer`` ``custom_config``): a list of
``{"audiotype": N, "imgpath": folder of images or a video, "audiopath": sound file (optional)}``. In that config
audiotype 1 is the idle video: it loops whenever the avatar neither speaks nor plays another clip.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from core.arrays import Image, Pcm
from core.audio import MonoResampler
from core.units import SAMPLE_RATE, TICK_SAMPLES, VIDEO_FPS
from musetalk.avatar import DEFAULT_AVATARS_DIR, Avatar, AvatarError, load_avatar
from musetalk.avatar_source import IMAGE_SUFFIXES, decode_video
from musetalk.avatar_writer import building, write_frames

ACTIONS_DIR = "actions"
CUSTOM_CACHE_DIR = ".custom"  # in the avatar's folder: config clips decoded and resized for it, memory-mapped
IDLE_AUDIOTYPE = 1
MAX_CUSTOM_CLIPS = 32


@dataclass(frozen=True)
class ActionClip:
    frames: Image  # (M, H, W, 3) uint8 BGR, the avatar's frame size
    audio: Pcm | None = None  # float32 16 kHz mono, played with the frames (2 audio frames per video frame)

    @property
    def n_ticks(self) -> int:
        return len(self.frames)

    def frame(self, i: int) -> Image:
        frame: Image = self.frames[i]  # (numpy types an element of an array as Any)
        return frame

    def tick_audio(self, i: int) -> Pcm:
        out = np.zeros(TICK_SAMPLES, np.float32)
        if self.audio is not None:
            part = self.audio[i * TICK_SAMPLES : (i + 1) * TICK_SAMPLES]
            out[: len(part)] = part
        return out


def save_action(
    avatar_path: Path, audiotype: int, frames: Iterable[Image], audio: Pcm | None = None, source_name: str = "<array>"
) -> Path:
    """Write clip `audiotype` (frames one by one, never all in memory), replacing a previous clip of that number
    whole: nothing of the old one (its sound, say) is left, and on error the old one is kept."""
    folder = avatar_path / ACTIONS_DIR / str(int(audiotype))
    with building(folder, overwrite=True) as tmp:
        write_frames(frames, tmp / "frames.npy", source_name)
        if audio is not None:
            np.save(tmp / "audio.npy", np.asarray(audio, dtype=np.float32))
    return folder


def load_actions(avatar_path: Path, frame_shape: tuple[int, int]) -> dict[int, ActionClip]:
    """Clips in `<avatar>/actions/<N>/` (frames.npy, optional audio.npy); AvatarError for a clip that cannot be
    read or does not fit the avatar (the avatar's folder is damaged)."""
    clips: dict[int, ActionClip] = {}
    root = avatar_path / ACTIONS_DIR
    if not root.is_dir():
        return clips
    for folder in sorted(root.iterdir()):
        if not (folder.is_dir() and re.fullmatch(r"\d{1,6}", folder.name)):
            continue
        audio_path = folder / "audio.npy"
        try:
            frames = np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False)
            audio = np.load(audio_path, allow_pickle=False).astype(np.float32) if audio_path.exists() else None
        except (OSError, ValueError) as e:
            raise AvatarError(f"action clip {folder}: cannot read it: {e}") from e
        if frames.ndim != 4 or frames.shape[1:3] != tuple(frame_shape) or frames.shape[3] != 3 or not len(frames):
            raise AvatarError(f"action clip {folder}: frames {frames.shape} do not match the avatar's {frame_shape}")
        clips[int(folder.name)] = ActionClip(frames=frames, audio=audio)
    return clips


@dataclass(frozen=True)
class CustomClip:
    """One entry of a LiveTalking custom-video config."""

    audiotype: int
    imgpath: Path  # a folder of images (played in the order of their numeric names) or a video file
    audiopath: Path | None = None


def _inside(path: Path, root: Path | None) -> Path:
    resolved = path.resolve()
    if root is not None and not resolved.is_relative_to(root.resolve()):
        raise ValueError(f"{path} is outside {root} (custom_config paths must be under --custom_dir)")
    return resolved


def _entry(entry: object, root: Path | None) -> CustomClip:
    if not isinstance(entry, dict):
        raise ValueError("each custom_config entry must be an object {audiotype, imgpath, audiopath?}")
    audiotype, imgpath, audiopath = entry.get("audiotype"), entry.get("imgpath"), entry.get("audiopath")
    if isinstance(audiotype, str) and audiotype.isdigit():
        audiotype = int(audiotype)
    if not isinstance(audiotype, int) or isinstance(audiotype, bool) or not 1 <= audiotype <= 999_999:
        raise ValueError(f"custom_config: audiotype must be a whole number from 1, got {audiotype!r}")
    if not isinstance(imgpath, str) or not imgpath:
        raise ValueError(f"custom_config: audiotype {audiotype} needs an imgpath")
    if audiopath is not None and (not isinstance(audiopath, str) or not audiopath):
        raise ValueError(f"custom_config: audiotype {audiotype}: audiopath must be a path")
    images = _inside(Path(imgpath), root)
    if not images.exists():
        raise ValueError(f"custom_config: audiotype {audiotype}: imgpath {imgpath} does not exist")
    sound = _inside(Path(audiopath), root) if audiopath else None
    if sound is not None and not sound.is_file():
        raise ValueError(f"custom_config: audiotype {audiotype}: audiopath {audiopath} is not a file")
    return CustomClip(audiotype, images, sound)


def parse_custom_config(value: object, root: Path | None = None) -> tuple[CustomClip, ...]:
    """LiveTalking's custom-video config (a JSON string, as its pages send it, or the list itself), checked.

    Relative paths are relative to the working directory, as in LiveTalking; with `root`, every path must resolve
    inside it (a client must not make the server read files elsewhere). ValueError says what is wrong."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise ValueError(f"custom_config is not valid JSON: {e}") from e
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value or len(value) > MAX_CUSTOM_CLIPS:
        raise ValueError(
            f"custom_config must be a list of 1 to {MAX_CUSTOM_CLIPS} clips ({{audiotype, imgpath, audiopath?}})"
        )
    clips = [_entry(entry, root) for entry in value]
    types = [c.audiotype for c in clips]
    if len(set(types)) != len(types):
        raise ValueError("custom_config: an audiotype is given twice")
    return tuple(clips)


def _numbered(name: str) -> tuple[int, int, str]:
    stem = Path(name).stem
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _clip_frames(source: Path, size: tuple[int, int], max_frames: int) -> Iterator[Image]:
    """The frames of an image folder (numeric names in numeric order, as LiveTalking reads them) or of a video
    (at 25 fps), resized to the avatar's (h, w)."""
    h, w = size
    if source.is_dir():
        names = sorted((p.name for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=_numbered)
        if not names:
            raise AvatarError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {source}")
        frames: Iterable[Image] = (_read_image(source / name) for name in names[:max_frames])
    else:
        frames = decode_video(source, VIDEO_FPS, max_frames)
    for f in frames:
        yield _resized(f, (h, w))


def _resized(frame: Image, size: tuple[int, int]) -> Image:
    """`frame` at the avatar's (h, w)."""
    h, w = size
    if frame.shape[:2] == (h, w):
        return frame
    return np.asarray(cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA), np.uint8)


def _read_image(path: Path) -> Image:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise AvatarError(f"cannot read image {path}")
    return np.asarray(img, np.uint8)  # what IMREAD_COLOR reads: only the type changes


def _cache_key(clip: CustomClip, size: tuple[int, ...], max_frames: int) -> str:
    """Names the decoded clip by its sources and their modification times: an edited source is decoded again."""
    parts = [str(size), str(max_frames)]
    for path in (clip.imgpath, clip.audiopath):
        if path is not None:
            newest = max((p.stat().st_mtime_ns for p in path.iterdir()), default=0) if path.is_dir() else 0
            parts += [str(path), str(path.stat().st_mtime_ns), str(newest)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]


def load_custom_clips(
    clips: Sequence[CustomClip], avatar: Avatar, max_frames: int = 3000
) -> tuple[dict[int, ActionClip], ActionClip | None]:
    """(action clips by audiotype, the idle clip or None) of a custom-video config for `avatar` (blocking). Each
    clip is decoded and resized once per avatar and source version, then memory-mapped from the avatar's folder.
    AvatarError or OSError for a source that cannot be read."""
    size = tuple(avatar.frames.shape[1:3])
    actions: dict[int, ActionClip] = {}
    for clip in clips:
        folder = avatar.path / CUSTOM_CACHE_DIR / _cache_key(clip, size, max_frames)
        if not (folder / "frames.npy").is_file():
            with building(folder, overwrite=True) as tmp:
                write_frames(
                    _clip_frames(clip.imgpath, (size[0], size[1]), max_frames), tmp / "frames.npy", str(clip.imgpath)
                )
                audio = decode_audio(clip.audiopath) if clip.audiopath is not None else None
                if audio is not None:
                    np.save(tmp / "audio.npy", audio.astype(np.float32))
        frames = np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False)
        audio_path = folder / "audio.npy"
        audio = np.load(audio_path, allow_pickle=False) if audio_path.exists() else None
        actions[clip.audiotype] = ActionClip(frames=frames, audio=audio)
    return actions, actions.pop(IDLE_AUDIOTYPE, None)


def decode_audio(path: Path) -> Pcm | None:
    """The first audio stream of a media file as 16 kHz mono float32, or None if it has none."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        to_mono = MonoResampler()
        parts = [to_mono(frame) for frame in itertools.chain(container.decode(audio=0), [None])]  # None: flush
    audio = np.concatenate(parts)
    return audio if len(audio) else None


def add_action(
    avatar_id: str, audiotype: int, source: Path, avatars_dir: Path = DEFAULT_AVATARS_DIR, with_audio: bool = True
) -> Path:
    """Make clip `audiotype` of an avatar from a video: its frames at 25 fps (resized to the avatar's size if
    needed) and, unless with_audio is False, its sound."""
    avatar = load_avatar(avatar_id, avatars_dir)
    h, w = avatar.frames.shape[1:3]
    frames = (_resized(f, (h, w)) for f in decode_video(source, avatar.fps, None))
    audio = decode_audio(source) if with_audio else None
    return save_action(avatar.path, audiotype, frames, audio, source_name=str(source))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.actions",
        description="Add an action clip to a prepared avatar (played by /set_audiotype).",
    )
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
