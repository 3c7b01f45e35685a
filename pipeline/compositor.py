"""Paste generated faces back into the avatar's frames (blend plans are the avatar's, shared by its sessions)."""

from __future__ import annotations

import numpy as np

from core.arrays import Image
from musetalk.avatar import Avatar

WARM_TICKS = 75  # 3 s of frames


def warm_blend_plans(avatar: Avatar, first_tick: int, ticks: int = WARM_TICKS) -> None:
    """Build the blend plans of the frames shown from `first_tick` on (blocking: call it off the event loop),
    so that a session switching to the avatar does not build them while its first frames are due (plans are
    cached on the avatar: for an avatar already in use this costs nothing)."""
    for i in sorted({avatar.cycle_index(k) for k in range(first_tick, first_tick + ticks)}):
        avatar.blend_plan(i)


class Compositor:
    def __init__(self, avatar: Avatar) -> None:
        self._avatar = avatar

    def compose(self, index: int, face: Image) -> Image:
        """A new full frame: avatar frame `index` (original order) with `face` blended into its face box."""
        return self._avatar.blend_plan(index).apply(np.asarray(self._avatar.frames[index]), face)
