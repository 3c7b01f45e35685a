"""The demo avatar: built offline from a public-domain photo bundled with scikit-image."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.extras import require
from musetalk.avatar import (
    DEFAULT_AVATARS_DIR,
    AvatarError,
    AvatarNotFoundError,
    load_avatar,
)
from musetalk.avatar_prepare import DEFAULT_MODELS_DIR, PrepareOptions, prepare_avatar

DEMO_ID = "demo"


def demo_image() -> np.ndarray:
    """skimage's astronaut portrait (public domain, bundled in the wheel) as BGR."""
    skimage_data = require("skimage.data", "prepare", "the demo avatar's picture")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def ensure_demo(
    avatars_dir: Path = DEFAULT_AVATARS_DIR, progress: bool = True, models_dir: Path = DEFAULT_MODELS_DIR
) -> tuple[Path, bool]:
    """Build the demo avatar unless a valid one exists; returns (folder, built)."""
    try:
        return load_avatar(DEMO_ID, avatars_dir).path, False
    except AvatarNotFoundError:
        overwrite = False
    except AvatarError:
        overwrite = True  # damaged: rebuild it
    options = PrepareOptions(
        progress=progress, overwrite=overwrite, models_dir=models_dir, source_name="skimage.data.astronaut()"
    )
    return prepare_avatar(demo_image(), DEMO_ID, avatars_dir, options), True
