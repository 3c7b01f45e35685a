"""Avatar preparation and loading: ``avatars/<avatar_id>/`` made once from a video, an image or an array.

Layout (no pickle anywhere; arrays in frame order, the ping-pong cycle is applied by ``Avatar.cycle_index``):

- ``manifest.json``: format_version, avatar_id, fps, width, height, n_frames, source, version, bbox_shift,
  extra_margin, created, latents (the model versions with a latents file), mask (which blend mask: "bisenet-jaw",
  "bisenet-raw", "bisenet-neck" or "face-oval"; avatars from before it have the oval) and, for jaw, cheek_width
- ``frames.npy`` (N,H,W,3) uint8 BGR; ``face_boxes.npy`` / ``crop_boxes.npy`` (N,4) int32 (x1,y1,x2,y2);
  ``landmarks.npy`` (N,468,2) float32; ``masks.npy`` (N,S,S) uint8, each crop-sized mask top-left aligned
- ``latents_<version>.safetensors``: "latents" (N,8,32,32) float16, when a VAE was available

Run ``python -m musetalk.avatar --help`` for the command line.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from musetalk.blending import BlendPlan, prepare_blend
from musetalk.cli import ArgumentParser
from musetalk.config import FACE_SIZE, LATENT_SIZE, VERSIONS, VIDEO_FPS, Version, check_version
from musetalk.extras import require
from musetalk.face import (
    DEFAULT_CHEEK_WIDTH, DEFAULT_PARSING_MODE, N_LANDMARKS, OVAL_MASK, PARSING_MODES, FaceBoxRejected,
    FaceLandmarker, blend_mask, check_parsing, crop_box, face_box,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from musetalk.face_parsing import FaceParser

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEFAULT_AVATARS_DIR = Path("avatars")
DEFAULT_MODELS_DIR = Path("models")
DEMO_ID = "demo"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_MANIFEST_KEYS = ("format_version", "avatar_id", "fps", "width", "height", "n_frames", "source", "version",
                  "bbox_shift", "extra_margin", "created", "latents")


class AvatarError(Exception):
    """A user-facing problem with an avatar or its source (message is meant to be shown as is)."""


class NoFaceError(AvatarError):
    pass


class AvatarNotFoundError(AvatarError):
    pass


class AvatarExistsError(AvatarError):
    pass


def validate_avatar_id(avatar_id: str) -> str:
    """The id itself if it is 1..64 characters of A-Z a-z 0-9 _ - (so it is always a plain folder name)."""
    if not isinstance(avatar_id, str) or not _ID_RE.fullmatch(avatar_id):
        raise ValueError(f"invalid avatar id {avatar_id!r}: use 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
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
        x1, y1, x2, y2 = (int(v) for v in self.crop_boxes[i])
        return self.masks[i, :y2 - y1, :x2 - x1]

    def blend_plan(self, i: int) -> BlendPlan:
        """The precomputed paste of a generated face into original frame i (built once, then cached)."""
        plan = self._plans.get(i)
        if plan is None:  # two sessions may both build it: the same plan, one of them kept
            plan = prepare_blend(tuple(int(v) for v in self.face_boxes[i]), tuple(int(v) for v in self.crop_boxes[i]),
                                 self.mask(i), self.frames.shape[1:3])
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
        raise AvatarError(f"avatar folder {folder}: {path.name} is {arr.shape} {arr.dtype}, "
                          f"expected {want} {np.dtype(dtype)}")
    return arr


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise AvatarError(f"avatar folder {folder}: cannot read manifest.json: {e}") from e
    if not isinstance(manifest, dict) or any(k not in manifest for k in _MANIFEST_KEYS):
        raise AvatarError(f"avatar folder {folder}: manifest.json lacks some of {', '.join(_MANIFEST_KEYS)}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise AvatarError(f"avatar folder {folder}: format_version {manifest['format_version']!r} is not supported "
                          f"(expected {FORMAT_VERSION}); prepare it again")
    return manifest


def load_avatar(avatar_id: str, avatars_dir: Path = DEFAULT_AVATARS_DIR) -> Avatar:
    """Open a prepared avatar; frames and masks are memory-mapped, so this is fast whatever the length."""
    validate_avatar_id(avatar_id)
    folder = Path(avatars_dir) / avatar_id
    if not folder.is_dir():
        raise AvatarNotFoundError(f"no avatar {avatar_id!r} in {avatars_dir} "
                                  f"(prepare one with: python -m musetalk.avatar prepare --source FILE "
                                  f"--avatar_id {avatar_id})")
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
    return sorted(p.name for p in root.iterdir()
                  if p.is_dir() and _ID_RE.fullmatch(p.name) and (p / "manifest.json").is_file())


# ---------------------------------------------------------------------------------------------------- sources

def decode_video(path: Path, fps: float, max_frames: int | None) -> Iterator[np.ndarray]:
    """BGR frames resampled to `fps` by nearest timestamp (an avatar cycle must play at the output rate)."""
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise AvatarError(f"cannot open {path} as a video or image: {e}") from e
    with container:
        if not container.streams.video:
            raise AvatarError(f"{path} has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        src_fps = float(stream.average_rate) if stream.average_rate else fps
        k, t0 = 0, None
        for index, frame in enumerate(container.decode(stream)):
            t = frame.time if frame.time is not None else index / src_fps
            t0 = t if t0 is None else t0
            img = frame.to_ndarray(format="bgr24")
            # Emit this frame for every output time closer to it than to the next source frame.
            while k / fps < (t - t0) + 0.5 / src_fps:
                yield img
                k += 1
                if max_frames is not None and k >= max_frames:
                    return


def _read_source(source: Path | np.ndarray, fps: float, max_frames: int | None) -> tuple[Iterator[np.ndarray], str]:
    """The source's frames, one at a time (a video is decoded as they are taken), and its name."""
    if isinstance(source, np.ndarray):
        frames = source[None] if source.ndim == 3 else source
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
            raise AvatarError(f"expected a BGR uint8 (H,W,3) or (N,H,W,3) array, got {source.shape} {source.dtype}")
        return iter(frames[:max_frames]), "<array>"
    path = Path(source)
    if not path.is_file():
        raise AvatarError(f"source file not found: {path}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise AvatarError(f"cannot read image {path}")
        return iter([img]), path.name
    return decode_video(path, fps, max_frames), path.name


# ---------------------------------------------------------------------------------------------------- preparation

_NPY_HEADER_BYTES = 128  # magic, version, length and the padded dict: room for any (N, H, W, 3) shape


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy (format 1.0) header for a C-order uint8 array of `shape`, always _NPY_HEADER_BYTES long, so that it
    can be written before the frames are counted and rewritten in place after."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape!r}, }}"
    room = _NPY_HEADER_BYTES - 10
    return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + (text.ljust(room - 1) + "\n").encode("latin1")


def write_frames(frames: Iterable[np.ndarray], path: Path, source_name: str, progress: bool = False) -> np.ndarray:
    """Write BGR uint8 frames of one size to the .npy file `path` as they come; returns the file memory-mapped.

    The frames are never all in memory at once (a minute of 1080p video is 9 GB). AvatarError if there are none
    or their sizes differ."""
    from tqdm import tqdm

    shape: tuple[int, ...] | None = None
    n = 0
    with open(path, "wb") as out:
        for frame in tqdm(frames, desc="reading frames", unit="frame", disable=not progress):
            if shape is None:
                shape = frame.shape
                out.write(_npy_header((0, *shape)))
            elif frame.shape != shape:
                raise AvatarError(f"all frames must have the same size ({frame.shape[:2]} after {shape[:2]})")
            out.write(np.ascontiguousarray(frame, np.uint8).data)
            n += 1
        if shape is None:
            raise AvatarError(f"no video frames in {source_name}")
        out.seek(0)
        out.write(_npy_header((n, *shape)))
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _detect_all(frames: np.ndarray, progress: bool) -> list[np.ndarray | None]:
    from tqdm import tqdm

    # One still image is detected on its own; a sequence is tracked from frame to frame.
    with FaceLandmarker(static_image_mode=len(frames) == 1) as detector:
        return [detector.detect(f) for f in tqdm(frames, desc="face landmarks", unit="frame", disable=not progress)]


def _nearest(found: np.ndarray, n: int) -> np.ndarray:
    """For each of n frames, the index of the nearest frame in the sorted `found` (ties go to the earlier one)."""
    idx = np.arange(n)
    right = np.clip(np.searchsorted(found, idx), 0, len(found) - 1)
    left = np.clip(right - 1, 0, len(found) - 1)
    use_left = np.abs(idx - found[left]) <= np.abs(found[right] - idx)
    return np.where(use_left, found[left], found[right])


def face_crops(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """(N,256,256,3) uint8 BGR: each face box resized with LANCZOS4, as upstream does before the VAE."""
    return np.stack([cv2.resize(np.ascontiguousarray(f[y1:y2, x1:x2]), (FACE_SIZE, FACE_SIZE),
                                interpolation=cv2.INTER_LANCZOS4)
                     for f, (x1, y1, x2, y2) in zip(frames, face_boxes)])


def _official_vae(models_dir: Path) -> AutoencoderKL | None:
    """The sd-vae from the official layout if it is there (checked cheaply before importing torch)."""
    if not (models_dir / "sd-vae").is_dir():
        return None
    from musetalk.models import ModelPaths, device_and_dtype, load_vae

    paths = ModelPaths(models_dir)
    if not (paths.vae_config.is_file() and paths.vae_weights.is_file()):
        return None
    return load_vae(paths.vae_dir, *device_and_dtype())


def _face_parser(models_dir: Path, version: Version, required: bool) -> FaceParser | None:
    """BiSeNet when its weights are in models_dir; otherwise None (the face-oval fallback), or, when a parsing mode
    was asked for (`required`), MissingWeightsError naming the files and the download command."""
    from musetalk.face_parsing import load_face_parser, missing_parsing_files

    missing = missing_parsing_files(models_dir)
    if missing and not required:
        log.info("no face-parsing weights (%s): using the face-oval blend mask; for MuseTalk's BiSeNet mask run "
                 "python -m musetalk.download", ", ".join(str(p) for p in missing))
        return None
    return load_face_parser(models_dir, version=version)


def _blend_masks(frames: np.ndarray, landmarks: np.ndarray, boxes: np.ndarray, crops: np.ndarray,
                 parser: FaceParser | None, mode: str, cheek_width: int, progress: bool) -> np.ndarray:
    """(N, S, S) uint8: each frame's crop-sized blend mask, top-left aligned (S = the largest crop)."""
    from tqdm import tqdm

    size = int((crops[:, 2] - crops[:, 0]).max())
    masks = np.zeros((len(frames), size, size), np.uint8)
    for i in tqdm(range(len(frames)), desc="blend masks", unit="frame", disable=not progress):
        box, crop = tuple(boxes[i].tolist()), tuple(crops[i].tolist())
        if parser is None:
            m = blend_mask(landmarks[i], box, crop)
        else:
            m = parser.blend_mask(frames[i], box, crop, mode, cheek_width)
        masks[i, :m.shape[0], :m.shape[1]] = m
    return masks


def _encode(vae: AutoencoderKL, crops: np.ndarray) -> np.ndarray:
    from musetalk.inference import faces_to_latents

    return faces_to_latents(vae, crops).numpy().astype(np.float16)


def _write_avatar(folder: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray],
                  latents: np.ndarray | None) -> None:
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr, allow_pickle=False)
    if latents is not None:
        from safetensors.numpy import save_file

        save_file({"latents": np.ascontiguousarray(latents)}, str(folder / f"latents_{manifest['version']}.safetensors"))
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


@contextmanager
def building(final: Path, overwrite: bool) -> Iterator[Path]:
    """A temp folder beside `final` to write into; when the block ends without error it replaces `final` (an
    existing one only with overwrite, moved aside first so that a failed move keeps it). Removed in any case."""
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        old = None
        if final.exists():
            if not overwrite:
                raise AvatarExistsError(f"avatar {final.name!r} already exists in {final.parent} (use --overwrite)")
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def prepare_avatar(
    source: Path | np.ndarray,
    avatar_id: str,
    avatars_dir: Path = DEFAULT_AVATARS_DIR,
    version: Version = "v15",
    bbox_shift: int = 0,
    extra_margin: int = 10,
    fps: float = VIDEO_FPS,
    max_frames: int | None = None,
    vae: AutoencoderKL | None = None,
    progress: bool = True,
    overwrite: bool = False,
    models_dir: Path = DEFAULT_MODELS_DIR,
    source_name: str | None = None,
    parsing_mode: str | None = None,
    cheek_width: int | None = None,
) -> Path:
    """Build ``avatars_dir/avatar_id`` from a video file, an image file or a BGR array; returns its folder.

    Frames where no face is found, or whose landmark box the official rule rejects (``face_box``), take the
    landmarks and boxes of the nearest frame with a good one. Latents are written
    when ``vae`` is given or the official sd-vae weights are in ``models_dir``. Nothing is left behind on error.
    ``source_name`` overrides the source recorded in the manifest (by default the file name, or "<array>").

    The blend mask is MuseTalk's BiSeNet face parsing when ``models_dir/face-parse-bisent`` holds its two files
    (``parsing_mode`` jaw/raw/neck and ``cheek_width``, by default as upstream for ``version``: jaw with 90 px cheeks
    for v15, raw for v1), else the face-oval polygon; a ``parsing_mode`` given without the weights is an error
    (MissingWeightsError). The manifest's "mask" says which was used.
    """
    validate_avatar_id(avatar_id)
    check_version(version)
    mode = parsing_mode or DEFAULT_PARSING_MODE[version]
    cheek_width = DEFAULT_CHEEK_WIDTH[version] if cheek_width is None else cheek_width
    check_parsing(mode, cheek_width)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    if version == "v15" and bbox_shift:
        log.warning("bbox_shift=%d is ignored for v15 (as upstream); extra_margin applies instead", bbox_shift)
        bbox_shift = 0
    root = Path(avatars_dir)
    final = root / avatar_id
    if final.exists() and not overwrite:
        raise AvatarExistsError(f"avatar {avatar_id!r} already exists in {root} (use --overwrite)")

    parser = _face_parser(Path(models_dir), version, required=parsing_mode is not None)
    frames, read_name = _read_source(source, fps, max_frames)
    source_name = source_name or read_name
    with building(final, overwrite) as folder:
        frames_arr = write_frames(frames, folder / "frames.npy", source_name, progress)
        n, shape = len(frames_arr), frames_arr.shape[1:]
        detected = _detect_all(frames_arr, progress)
        landmarks = np.zeros((n, N_LANDMARKS, 2), np.float32)
        boxes = np.zeros((n, 4), np.int32)
        ok = np.zeros(n, bool)
        for i, lm in enumerate(detected):
            if lm is None:
                continue
            try:
                boxes[i] = face_box(lm, shape, version, bbox_shift, extra_margin)
            except FaceBoxRejected:  # upstream falls back to its S3FD box; we have none: as a frame with no face
                continue
            landmarks[i], ok[i] = lm, True
        if not ok.any():
            raise NoFaceError(f"no face found in any of the {n} frame(s) of {source_name}")
        nearest = _nearest(np.flatnonzero(ok), n)
        landmarks, boxes = landmarks[nearest], boxes[nearest]
        crops = np.array([crop_box(tuple(b)) for b in boxes.tolist()], np.int32)
        masks = _blend_masks(frames_arr, landmarks, boxes, crops, parser, mode, cheek_width, progress)
        mask_name = OVAL_MASK if parser is None else f"bisenet-{mode}"
        parser = None  # free it before the VAE loads
        if vae is None:
            vae = _official_vae(Path(models_dir))
        latents = _encode(vae, face_crops(frames_arr, boxes)) if vae is not None else None
        manifest = {
            "format_version": FORMAT_VERSION, "avatar_id": avatar_id, "fps": fps, "width": shape[1],
            "height": shape[0], "n_frames": n, "source": source_name, "version": version, "bbox_shift": bbox_shift,
            "extra_margin": extra_margin, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "latents": [version] if latents is not None else [],
            "mask": mask_name,
        }
        if mask_name == "bisenet-jaw":
            manifest["cheek_width"] = cheek_width
        arrays = {"face_boxes": boxes, "crop_boxes": crops, "landmarks": landmarks, "masks": masks}
        _write_avatar(folder, manifest, arrays, latents)
    return final


def demo_image() -> np.ndarray:
    """skimage's astronaut portrait (public domain, bundled in the wheel) as BGR."""
    skimage_data = require("skimage.data", "prepare", "the demo avatar's picture")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def ensure_demo(avatars_dir: Path = DEFAULT_AVATARS_DIR, progress: bool = True,
                models_dir: Path = DEFAULT_MODELS_DIR) -> tuple[Path, bool]:
    """Build the demo avatar unless a valid one exists; returns (folder, built)."""
    try:
        return load_avatar(DEMO_ID, avatars_dir).path, False
    except AvatarNotFoundError:
        overwrite = False
    except AvatarError:
        overwrite = True  # damaged: rebuild it
    path = prepare_avatar(demo_image(), DEMO_ID, avatars_dir, progress=progress, overwrite=overwrite,
                          models_dir=models_dir, source_name="skimage.data.astronaut()")
    return path, True


# ---------------------------------------------------------------------------------------------------- command line

def _parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m musetalk.avatar", description="Prepare and list avatars.")
    p.add_argument("--avatars_dir", type=Path, default=DEFAULT_AVATARS_DIR)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build an avatar from a video or an image")
    prep.add_argument("--source", type=Path, required=True, help="video file (mp4, webm, ...) or image (png, jpg)")
    prep.add_argument("--avatar_id", required=True)
    prep.add_argument("--version", choices=VERSIONS, default="v15")
    prep.add_argument("--bbox_shift", type=int, default=0, help="v1 only: move the mask's upper edge down (px)")
    prep.add_argument("--extra_margin", type=int, default=10, help="v15 only: pixels added under the chin")
    prep.add_argument("--parsing_mode", choices=PARSING_MODES, default=None,
                      help="BiSeNet blend mask (needs MODELS_DIR/face-parse-bisent); default jaw for v15, raw for v1, "
                           "or the face-oval mask when the weights are absent")
    prep.add_argument("--cheek_width", type=int, default=None,
                      help="jaw mode: half-width in px (of 512) of the middle band left unnarrowed; default 90 for "
                           "v15, 80 for v1")
    prep.add_argument("--fps", type=float, default=VIDEO_FPS)
    prep.add_argument("--max_frames", type=int, default=None)
    prep.add_argument("--overwrite", action="store_true")
    prep.add_argument("--models_dir", type=Path, default=DEFAULT_MODELS_DIR)
    sub.add_parser("demo", help="build avatars/demo from a bundled public-domain photo (offline)")
    sub.add_parser("list", help="list prepared avatars")
    return p


def _describe(avatar: Avatar) -> str:
    m = avatar.manifest
    latents = ",".join(m["latents"]) or "none"
    return (f"{avatar.avatar_id}\t{m['n_frames']} frames\t{m['width']}x{m['height']}\t{m['fps']:g} fps\t"
            f"{m['version']}\tlatents: {latents}\tmask: {m.get('mask', OVAL_MASK)}\tsource: {m['source']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.command == "prepare":
            t = time.perf_counter()
            path = prepare_avatar(args.source, args.avatar_id, args.avatars_dir, args.version, args.bbox_shift,
                                  args.extra_margin, args.fps, args.max_frames, overwrite=args.overwrite,
                                  models_dir=args.models_dir, parsing_mode=args.parsing_mode,
                                  cheek_width=args.cheek_width)
            print(f"prepared {path} in {time.perf_counter() - t:.1f} s")
        elif args.command == "demo":
            path, built = ensure_demo(args.avatars_dir)
            print(f"{'built' if built else 'already there:'} {path}")
        else:
            ids = list_avatars(args.avatars_dir)
            if not ids:
                print(f"no avatars in {args.avatars_dir}")
            for avatar_id in ids:
                try:
                    print(_describe(load_avatar(avatar_id, args.avatars_dir)))
                except AvatarError as e:
                    print(f"{avatar_id}\tdamaged: {e}")
    except (AvatarError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
