from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch

# pytest runs with --import-mode=importlib, which does not put the repository root on sys.path.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from musetalk.avatar import demo_image, prepare_avatar  # noqa: E402
from musetalk.face import FaceLandmarker  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return demo_image()


@pytest.fixture(scope="session")
def astronaut_landmarks(astronaut: np.ndarray) -> np.ndarray:
    with FaceLandmarker(static_image_mode=True) as detector:
        lm = detector.detect(astronaut)
    assert lm is not None
    return lm


def write_video(path: Path, frames: Sequence[np.ndarray], fps: int = 25, codec: str = "libx264") -> Path:
    """BGR frames -> a video file written with PyAV (x264 at a high quality, yuv420p)."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="bgr24")))
        container.mux(stream.encode())
    return path


def decode_video(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


def shifted(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)


BLANK = (3, 4, 9)  # frames of the synthetic video with no face


class Media:
    """The helpers above, handed to tests as a fixture (importlib mode cannot import conftest)."""

    blank = BLANK
    write_video = staticmethod(write_video)
    decode_video = staticmethod(decode_video)
    shifted = staticmethod(shifted)


@pytest.fixture(scope="session")
def media() -> type[Media]:
    return Media


@pytest.fixture(scope="session")
def face_video(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """12 frames of the astronaut drifting a few pixels per frame; frames in BLANK are plain grey."""
    frames = []
    for i in range(12):
        frames.append(np.full_like(astronaut, 128) if i in BLANK else shifted(astronaut, 3 * i, 2 * i))
    return write_video(tmp_path_factory.mktemp("video") / "drift.mp4", frames)


@pytest.fixture(scope="session")
def prepared_video(tmp_path_factory: pytest.TempPathFactory, face_video: Path) -> Path:
    return prepare_avatar(face_video, "drift", tmp_path_factory.mktemp("avatars"), progress=False,
                          models_dir=tmp_path_factory.mktemp("no_models"))


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return prepare_avatar(astronaut, "demo", tmp_path_factory.mktemp("avatars"), progress=False,
                          models_dir=tmp_path_factory.mktemp("no_models"))
