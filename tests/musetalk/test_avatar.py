from __future__ import annotations

import io
import json
import shutil
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from musetalk.avatar import (
    AvatarError,
    AvatarExistsError,
    AvatarNotFoundError,
    NoFaceError,
    as_box,
    face_crops,
    load_avatar,
    validate_avatar_id,
)
from musetalk.avatar_cli import main
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from musetalk.avatar_source import decode_video
from musetalk.avatar_writer import _npy_header
from musetalk.blending import prepare_blend
from musetalk.config import vae_tiny_config
from musetalk.face import FaceLandmarker, blend_mask, crop_box, face_box

# ---------------------------------------------------------------------------------------------------- ids


@pytest.mark.parametrize("good", ["demo", "a", "A_b-9", "x" * 64, "0"])
def test_valid_ids(good: str) -> None:
    assert validate_avatar_id(good) == good


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "../x",
        "a/b",
        "a\\b",
        "/abs",
        "/etc/passwd",
        "x" * 65,
        "é",
        "ａ",
        "a b",
        "a\n",
        "a.b",
        "~",
        None,
        5,
    ],
)
def test_invalid_ids(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid avatar id"):
        validate_avatar_id(bad)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- demo (image)


def test_demo_round_trip(prepared_demo: Path, astronaut: np.ndarray, astronaut_landmarks: np.ndarray) -> None:
    manifest = json.loads((prepared_demo / "manifest.json").read_text())
    assert {
        k: manifest[k]
        for k in (
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
            "latents",
        )
    } == {
        "format_version": 1,
        "avatar_id": "demo",
        "fps": 25,
        "width": 512,
        "height": 512,
        "n_frames": 1,
        "source": "<array>",
        "version": "v15",
        "bbox_shift": 0,
        "extra_margin": 10,
        "latents": [],
    }
    assert "T" in manifest["created"]
    avatar = load_avatar("demo", prepared_demo.parent)
    np.testing.assert_array_equal(avatar.frames[0], astronaut)
    box = face_box(astronaut_landmarks, astronaut.shape, "v15")
    crop = crop_box(box)
    assert tuple(avatar.face_boxes[0]) == box and tuple(avatar.crop_boxes[0]) == crop
    assert avatar.face_boxes.dtype == avatar.crop_boxes.dtype == np.int32
    np.testing.assert_allclose(avatar.landmarks[0], astronaut_landmarks, atol=0.5)
    np.testing.assert_array_equal(avatar.mask(0), blend_mask(avatar.landmarks[0], box, crop))
    assert avatar.mask(0).shape == (crop[3] - crop[1], crop[2] - crop[0])
    assert avatar.latents("v15") is None and avatar.fps == 25.0 and avatar.n_cycle == 2
    assert not list(prepared_demo.parent.glob(".*"))  # no temp folder left


def test_frames_are_written_one_by_one_not_held_in_memory(tmp_path: Path, astronaut: np.ndarray) -> None:
    frames = np.repeat(astronaut[None], 60, axis=0)  # 45 MB of frames; holding (or stacking) them would show
    frames[:, :8] = np.arange(60, dtype=np.uint8)[:, None, None, None]  # each frame recognisable
    prepare_avatar(
        frames[:2],
        "warm",
        tmp_path,  # imports
        PrepareOptions(progress=False, models_dir=tmp_path / "no-models"),
    )
    tracemalloc.start()
    try:
        path = prepare_avatar(
            frames, "long", tmp_path, PrepareOptions(progress=False, models_dir=tmp_path / "no-models")
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 15 * 2**20, f"{peak / 2**20:.0f} MB traced"
    avatar = load_avatar("long", path.parent)
    assert isinstance(avatar.frames, np.memmap)
    np.testing.assert_array_equal(avatar.frames, frames)
    assert not list(tmp_path.glob(".*"))


def test_npy_header_has_room_for_any_frame_count() -> None:
    for shape in [(0, 512, 512, 3), (1, 2160, 3840, 3), (10**12, 10**5, 10**5, 3)]:
        header = _npy_header(shape)
        assert len(header) == 128
        stream = io.BytesIO(header)
        assert np.lib.format.read_magic(stream) == (1, 0)
        assert np.lib.format.read_array_header_1_0(stream) == (shape, False, np.dtype(np.uint8))


def test_image_file_source(tmp_path: Path, astronaut: np.ndarray) -> None:
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(tmp_path / "face.png"), small)
    path = prepare_avatar(
        tmp_path / "face.png",
        "img",
        tmp_path / "avatars",
        PrepareOptions(version="v1", bbox_shift=4, progress=False, models_dir=tmp_path),
    )
    avatar = load_avatar("img", tmp_path / "avatars")
    assert avatar.manifest["source"] == "face.png" and avatar.manifest["bbox_shift"] == 4
    np.testing.assert_array_equal(avatar.frames[0], small)
    assert path == tmp_path / "avatars" / "img"


# ---------------------------------------------------------------------------------------------------- video


def plain_nearest(i: int, found: list[int]) -> int:
    return min(found, key=lambda j: (abs(i - j), j))


def test_video_with_blank_frames(prepared_video: Path, face_video: Path, media: Any) -> None:
    avatar = load_avatar("drift", prepared_video.parent)
    decoded = media.decode_video(face_video)
    assert avatar.n_frames == len(decoded) == 12
    np.testing.assert_array_equal(avatar.frames, decoded)
    assert avatar.manifest["source"] == "drift.mp4"
    found = [i for i in range(12) if i not in media.blank]
    with FaceLandmarker() as detector:  # video mode tracks, so run it over every frame in order, as preparation
        detected = [detector.detect(f) for f in decoded]
    boxes = {i: face_box(lm, decoded[i].shape, "v15") for i, lm in enumerate(detected) if lm is not None}
    assert list(boxes) == found
    for i in range(12):
        j = plain_nearest(i, found)
        assert tuple(avatar.face_boxes[i]) == boxes[j], i
        np.testing.assert_array_equal(avatar.landmarks[i], avatar.landmarks[j])
        np.testing.assert_array_equal(avatar.mask(i), avatar.mask(j))
    # The astronaut drifts by (3, 2) px a frame; the detected boxes follow it.
    assert 2 * 10 <= avatar.face_boxes[11][0] - avatar.face_boxes[0][0] <= 4 * 11
    size = max(int(c[2] - c[0]) for c in avatar.crop_boxes)
    assert avatar.masks.shape == (12, size, size)
    for i in range(12):
        s = int(avatar.crop_boxes[i][2] - avatar.crop_boxes[i][0])
        assert not avatar.masks[i, s:].any() and not avatar.masks[i, :, s:].any()


def test_no_face_video_leaves_nothing(tmp_path: Path, media: Any) -> None:
    rng = np.random.default_rng(0)
    frames = [
        np.full((128, 160, 3), 40 + 10 * i, np.uint8) + rng.integers(0, 5, (128, 160, 3), dtype=np.uint8)
        for i in range(4)
    ]
    video = media.write_video(tmp_path / "empty.mp4", frames)
    avatars = tmp_path / "avatars"
    with pytest.raises(NoFaceError, match="no face found in any of the 4 frame"):
        prepare_avatar(video, "nobody", avatars, PrepareOptions(progress=False, models_dir=tmp_path))
    assert not avatars.exists() or not any(avatars.iterdir())


def test_max_frames_and_resampling(tmp_path: Path, media: Any) -> None:
    # A 50 fps video whose frame k is filled with the value 5k: at 25 fps every other frame is kept.
    frames = [np.full((32, 48, 3), 5 * k, np.uint8) for k in range(20)]
    video = media.write_video(tmp_path / "fast.mp4", frames, fps=50)
    every_frame = media.decode_video(video)
    np.testing.assert_array_equal(np.stack(list(decode_video(video, 25, None))), every_frame[::2])
    assert len(np.unique(every_frame[:, 0, 0, 0])) == 20  # frames are distinguishable
    assert len(list(decode_video(video, 25, 3))) == 3
    assert len(list(decode_video(video, 50, None))) == 20


def test_existing_avatar_needs_overwrite(tmp_path: Path, prepared_demo: Path, astronaut: np.ndarray) -> None:
    avatars = tmp_path / "avatars"
    shutil.copytree(prepared_demo, avatars / "demo")
    with pytest.raises(AvatarExistsError):
        prepare_avatar(astronaut, "demo", avatars, PrepareOptions(progress=False, models_dir=tmp_path))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    prepare_avatar(flipped, "demo", avatars, PrepareOptions(progress=False, overwrite=True, models_dir=tmp_path))
    np.testing.assert_array_equal(load_avatar("demo", avatars).frames[0], flipped)
    assert sorted(p.name for p in avatars.iterdir()) == ["demo"]


# ---------------------------------------------------------------------------------------------------- loading


def test_cycle_index_is_ping_pong(prepared_video: Path) -> None:
    avatar = load_avatar("drift", prepared_video.parent)
    order = list(range(12)) + list(range(12))[::-1]
    assert avatar.n_cycle == 24
    assert [avatar.cycle_index(i) for i in range(3 * 24)] == order * 3


def test_blend_plans_are_built_once_per_frame_and_shared(prepared_video: Path) -> None:
    avatar = load_avatar("drift", prepared_video.parent)
    first = avatar.blend_plan(5)
    assert avatar.blend_plan(5) is first and avatar.blend_plan(6) is not first  # every session uses the same plan
    fresh = prepare_blend(
        as_box(avatar.face_boxes[5]), as_box(avatar.crop_boxes[5]), avatar.mask(5), avatar.frames.shape[1:3]
    )
    assert (first.dst, first.src, first.box_size) == (fresh.dst, fresh.src, fresh.box_size)
    np.testing.assert_array_equal(first.alpha, fresh.alpha)


def test_load_errors(tmp_path: Path, prepared_demo: Path) -> None:
    with pytest.raises(ValueError, match="invalid avatar id"):
        load_avatar("../demo", prepared_demo.parent)
    with pytest.raises(AvatarNotFoundError, match="no avatar 'ghost'"):
        load_avatar("ghost", prepared_demo.parent)

    def damaged(name: str, content: bytes) -> str:
        folder = tmp_path / name
        shutil.copytree(prepared_demo, folder)
        (folder / ("manifest.json" if name == "badjson" else f"{name}.npy")).write_bytes(content)
        with pytest.raises(AvatarError) as info:
            load_avatar(name, tmp_path)
        return str(info.value)

    assert "manifest.json" in damaged("badjson", b"{not json")
    frames = (prepared_demo / "frames.npy").read_bytes()
    assert "frames.npy" in damaged("frames", frames[: len(frames) // 2])
    boxes = tmp_path / "b.npy"
    np.save(boxes, np.zeros((1, 4), np.int64))
    assert "face_boxes.npy" in damaged("face_boxes", boxes.read_bytes())
    np.save(boxes, np.zeros((1, 5, 5), np.uint8))
    assert "masks.npy" in damaged("masks", boxes.read_bytes())


# ---------------------------------------------------------------------------------------------------- latents


def test_latents_with_a_tiny_vae(tmp_path: Path, astronaut: np.ndarray, media: Any) -> None:
    from musetalk.inference import faces_to_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_tiny_config()).eval()
    frames = np.stack([media.shifted(astronaut, 4 * i, -3 * i) for i in range(3)])
    prepare_avatar(frames, "lat", tmp_path, PrepareOptions(progress=False, models_dir=tmp_path), vae=vae)
    avatar = load_avatar("lat", tmp_path)
    assert avatar.manifest["latents"] == ["v15"] and avatar.latents("v1") is None
    latents = avatar.latents("v15")
    assert latents is not None and latents.shape == (3, 8, 32, 32) and latents.dtype == np.float16
    crops = np.stack(
        [
            cv2.resize(f[y1:y2, x1:x2], (256, 256), interpolation=cv2.INTER_LANCZOS4)
            for f, (x1, y1, x2, y2) in zip(frames, avatar.face_boxes)
        ]
    )
    np.testing.assert_array_equal(crops, face_crops(frames, avatar.face_boxes))
    expected = faces_to_latents(vae, crops).numpy().astype(np.float16)
    np.testing.assert_array_equal(latents, expected)
    assert np.abs(latents[:, :4] - latents[:, 4:]).max() > 0  # masked and reference halves differ


# ---------------------------------------------------------------------------------------------------- command line


def test_cli(tmp_path: Path, prepared_demo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    avatars = str(tmp_path / "avatars")
    assert main(["--avatars_dir", avatars, "list"]) == 0
    assert "no avatars" in capsys.readouterr().out
    assert (
        main(["--avatars_dir", avatars, "prepare", "--source", str(tmp_path / "missing.mp4"), "--avatar_id", "x"]) == 1
    )
    err = capsys.readouterr().err
    assert "error: source file not found" in err and "Traceback" not in err
    assert main(["--avatars_dir", avatars, "prepare", "--source", str(tmp_path), "--avatar_id", "../x"]) == 1
    assert "invalid avatar id" in capsys.readouterr().err
    (tmp_path / "notavideo.mp4").write_text("hello")
    assert (
        main(["--avatars_dir", avatars, "prepare", "--source", str(tmp_path / "notavideo.mp4"), "--avatar_id", "x"])
        == 1
    )
    assert "cannot open" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--avatars_dir", avatars, "prepare", "--source", "x.mp4", "--avatar_id", "x", "--version", "v2"])
    assert exit_info.value.code == 2

    shutil.copytree(prepared_demo, tmp_path / "avatars" / "demo")
    before = (tmp_path / "avatars" / "demo" / "manifest.json").read_text()
    assert main(["--avatars_dir", avatars, "demo"]) == 0
    assert "already there" in capsys.readouterr().out
    assert (tmp_path / "avatars" / "demo" / "manifest.json").read_text() == before
    assert main(["--avatars_dir", avatars, "list"]) == 0
    assert "demo\t1 frames\t512x512" in capsys.readouterr().out
    (tmp_path / "avatars" / "demo" / "masks.npy").write_bytes(b"broken")
    assert main(["--avatars_dir", avatars, "demo"]) == 0  # damaged: rebuilt
    assert "built" in capsys.readouterr().out
    assert load_avatar("demo", tmp_path / "avatars").manifest["source"] == "skimage.data.astronaut()"


def test_latents_from_the_official_models_layout(tmp_path: Path, astronaut: np.ndarray) -> None:
    from musetalk.inference import faces_to_latents
    from musetalk.models import load_vae

    torch.manual_seed(1)
    AutoencoderKL(**vae_tiny_config()).save_pretrained(tmp_path / "models" / "sd-vae")
    prepare_avatar(
        astronaut, "official", tmp_path, PrepareOptions(version="v1", progress=False, models_dir=tmp_path / "models")
    )
    avatar = load_avatar("official", tmp_path)
    assert avatar.manifest["latents"] == ["v1"] and avatar.latents("v15") is None
    vae = load_vae(tmp_path / "models" / "sd-vae", "cpu", torch.float32)
    expected = faces_to_latents(vae, face_crops(avatar.frames, avatar.face_boxes)).numpy().astype(np.float16)
    latents = avatar.latents("v1")
    assert latents is not None
    np.testing.assert_array_equal(latents, expected)
