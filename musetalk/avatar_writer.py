"""Writing an avatar folder: frames streamed into a .npy file, the arrays and manifest, all into a temp folder
that replaces the avatar's only once complete."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from musetalk.avatar import AvatarError, AvatarExistsError

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


def write_avatar(
    folder: Path, manifest: dict[str, Any], arrays: dict[str, np.ndarray], latents: np.ndarray | None
) -> None:
    """The arrays, the latents (when encoded) and, last, the manifest that makes the folder an avatar."""
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr, allow_pickle=False)
    if latents is not None:
        from safetensors.numpy import save_file

        latents_file = folder / f"latents_{manifest['version']}.safetensors"
        save_file({"latents": np.ascontiguousarray(latents)}, str(latents_file))
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
