"""Paste generated faces back into the avatar's frames (blend plans built lazily, once per avatar frame)."""
from __future__ import annotations

import numpy as np

from musetalk.avatar import Avatar
from musetalk.blending import BlendPlan


class Compositor:
    def __init__(self, avatar: Avatar) -> None:
        self._avatar = avatar
        self._plans: dict[int, BlendPlan] = {}

    def compose(self, index: int, face: np.ndarray) -> np.ndarray:
        """A new full frame: avatar frame `index` (original order) with `face` blended into its face box."""
        plan = self._plans.get(index)
        if plan is None:
            plan = self._plans[index] = self._avatar.blend_plan(index)
        return plan.apply(np.asarray(self._avatar.frames[index]), face)
