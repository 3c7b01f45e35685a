from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musetalk.avatar_demo import demo_image
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from musetalk.face import FaceLandmarker
from testing.media import decode_video, shifted, write_video

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
    return prepare_avatar(face_video, "drift", tmp_path_factory.mktemp("avatars"),
                          PrepareOptions(progress=False, models_dir=tmp_path_factory.mktemp("no_models")))


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    return prepare_avatar(astronaut, "demo", tmp_path_factory.mktemp("avatars"),
                          PrepareOptions(progress=False, models_dir=tmp_path_factory.mktemp("no_models")))
