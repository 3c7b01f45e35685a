"""Avatar preparation: face landmarks and boxes per frame, blend masks, VAE latents, written as an avatar folder
(the format is described in ``musetalk.avatar``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.units import VIDEO_FPS
from musetalk.avatar import (
    DEFAULT_AVATARS_DIR,
    FORMAT_VERSION,
    AvatarExistsError,
    NoFaceError,
    face_crops,
    validate_avatar_id,
)
from musetalk.avatar_source import read_source
from musetalk.avatar_writer import building, write_avatar, write_frames
from musetalk.config import Version, check_version
from musetalk.face import (
    DEFAULT_CHEEK_WIDTH,
    DEFAULT_PARSING_MODE,
    N_LANDMARKS,
    OVAL_MASK,
    FaceBoxRejected,
    FaceLandmarker,
    blend_mask,
    check_parsing,
    crop_box,
    face_box,
)

if TYPE_CHECKING:
    from diffusers import AutoencoderKL

    from musetalk.face_parsing import FaceParser

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path("models")


@dataclass(frozen=True)
class PrepareOptions:
    """How an avatar is prepared; the defaults are the command line's."""

    version: Version = "v15"
    bbox_shift: int = 0  # v1 only: moves the mask's upper edge down (px); v15 ignores it, as upstream
    extra_margin: int = 10  # v15 only: pixels added under the chin
    fps: float = VIDEO_FPS  # a video is resampled to it
    max_frames: int | None = None
    # The BiSeNet blend mask (needs models_dir/face-parse-bisent): None is upstream's default for the version
    # (jaw for v15, raw for v1) when the weights are there, else the face-oval mask.
    parsing_mode: str | None = None
    cheek_width: int | None = None  # jaw mode; None: upstream's default for the version
    models_dir: Path = DEFAULT_MODELS_DIR  # face-parsing weights and the official sd-vae, when present
    overwrite: bool = False  # replace an existing avatar of that id
    progress: bool = True  # tqdm bars
    source_name: str | None = None  # the source in the manifest; default: the file name, or "<array>"


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


def _faces(
    frames: np.ndarray, version: Version, bbox_shift: int, extra_margin: int, source_name: str, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(N,468,2) landmarks and (N,4) face boxes of every frame. Frames where no face is found, or whose landmark
    box the official rule rejects, take those of the nearest frame with a good one; NoFaceError if none has."""
    n, shape = len(frames), frames.shape[1:]
    landmarks = np.zeros((n, N_LANDMARKS, 2), np.float32)
    boxes = np.zeros((n, 4), np.int32)
    ok = np.zeros(n, bool)
    for i, lm in enumerate(_detect_all(frames, progress)):
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
    return landmarks[nearest], boxes[nearest]


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
        log.info(
            "no face-parsing weights (%s): using the face-oval blend mask; for MuseTalk's BiSeNet mask run "
            "python -m musetalk.download",
            ", ".join(str(p) for p in missing),
        )
        return None
    return load_face_parser(models_dir, version=version)


def _blend_masks(
    frames: np.ndarray,
    landmarks: np.ndarray,
    boxes: np.ndarray,
    crops: np.ndarray,
    parser: FaceParser | None,
    mode: str,
    cheek_width: int,
    progress: bool,
) -> np.ndarray:
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
        masks[i, : m.shape[0], : m.shape[1]] = m
    return masks


def _encode(vae: AutoencoderKL, crops: np.ndarray) -> np.ndarray:
    from musetalk.inference import faces_to_latents

    return faces_to_latents(vae, crops).numpy().astype(np.float16)


def prepare_avatar(
    source: Path | np.ndarray,
    avatar_id: str,
    avatars_dir: Path = DEFAULT_AVATARS_DIR,
    options: PrepareOptions = PrepareOptions(),
    vae: AutoencoderKL | None = None,
) -> Path:
    """Build ``avatars_dir/avatar_id`` from a video file, an image file or a BGR array; returns its folder.

    Frames where no face is found, or whose landmark box the official rule rejects (``face_box``), take the
    landmarks and boxes of the nearest frame with a good one. Latents are written
    when ``vae`` is given or the official sd-vae weights are in ``options.models_dir``. Nothing is left behind on
    error.

    The blend mask is MuseTalk's BiSeNet face parsing when ``models_dir/face-parse-bisent`` holds its two files,
    else the face-oval polygon; a ``parsing_mode`` given without the weights is an error (MissingWeightsError).
    The manifest's "mask" says which was used.
    """
    o = options
    validate_avatar_id(avatar_id)
    check_version(o.version)
    mode = o.parsing_mode or DEFAULT_PARSING_MODE[o.version]
    cheek_width = DEFAULT_CHEEK_WIDTH[o.version] if o.cheek_width is None else o.cheek_width
    check_parsing(mode, cheek_width)
    if o.max_frames is not None and o.max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {o.max_frames}")
    if o.fps <= 0:
        raise ValueError(f"fps must be positive, got {o.fps}")
    bbox_shift = o.bbox_shift
    if o.version == "v15" and bbox_shift:
        log.warning("bbox_shift=%d is ignored for v15 (as upstream); extra_margin applies instead", bbox_shift)
        bbox_shift = 0
    root = Path(avatars_dir)
    final = root / avatar_id
    if final.exists() and not o.overwrite:
        raise AvatarExistsError(f"avatar {avatar_id!r} already exists in {root} (use --overwrite)")

    parser = _face_parser(Path(o.models_dir), o.version, required=o.parsing_mode is not None)
    frames, read_name = read_source(source, o.fps, o.max_frames)
    source_name = o.source_name or read_name
    with building(final, o.overwrite) as folder:
        frames_arr = write_frames(frames, folder / "frames.npy", source_name, o.progress)
        n, shape = len(frames_arr), frames_arr.shape[1:]
        landmarks, boxes = _faces(frames_arr, o.version, bbox_shift, o.extra_margin, source_name, o.progress)
        crops = np.array([crop_box(tuple(b)) for b in boxes.tolist()], np.int32)
        masks = _blend_masks(frames_arr, landmarks, boxes, crops, parser, mode, cheek_width, o.progress)
        mask_name = OVAL_MASK if parser is None else f"bisenet-{mode}"
        parser = None  # free it before the VAE loads
        if vae is None:
            vae = _official_vae(Path(o.models_dir))
        latents = _encode(vae, face_crops(frames_arr, boxes)) if vae is not None else None
        manifest = {
            "format_version": FORMAT_VERSION,
            "avatar_id": avatar_id,
            "fps": o.fps,
            "width": shape[1],
            "height": shape[0],
            "n_frames": n,
            "source": source_name,
            "version": o.version,
            "bbox_shift": bbox_shift,
            "extra_margin": o.extra_margin,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "latents": [o.version] if latents is not None else [],
            "mask": mask_name,
        }
        if mask_name == "bisenet-jaw":
            manifest["cheek_width"] = cheek_width
        arrays = {"face_boxes": boxes, "crop_boxes": crops, "landmarks": landmarks, "masks": masks}
        write_avatar(folder, manifest, arrays, latents)
    return final
