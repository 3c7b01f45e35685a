"""Paste generated faces back into the avatar's frames (blend plans are the avatar's, shared by its sessions)."""
from __future__ import annotations

import numpy as np

from musetalk.avatar import Avatar


class Compositor:
    def __init__(self, avatar: Avatar) -> None:
        self._avatar = avatar

    def compose(self, index: int, face: np.ndarray) -> np.ndarray:
        """A new full frame: avatar frame `index` (original order) with `face` blended into its face box."""
        return self._avatar.blend_plan(index).apply(np.asarray(self._avatar.frames[index]), face)
