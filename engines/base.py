"""The engine interface the session pipeline talks to.

An engine is created once per process (its models are shared by every session). `bind(avatar)` does the
per-avatar precomputation once, and each session gets its own `Renderer` from the binding for its small
per-session state (e.g. smoothing).
"""
from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from musetalk.avatar import Avatar
from pipeline.clock import TICK_SECONDS


def lead_ticks_for(right_context_ticks: int, batch_seconds: float) -> int:
    """How many ticks ahead new audio must be scheduled: the look-ahead a batch waits for, the tick being
    played, and the time one batch takes (margin included by the caller)."""
    return right_context_ticks + 1 + math.ceil(batch_seconds / TICK_SECONDS)


@dataclass(frozen=True)
class RenderRequest:
    """B consecutive ticks to render.

    `audio` holds the 16 kHz samples of [left context | 2 audio frames per tick | right context]; context
    that does not exist (start or end of a stretch of audio) is zeros. `seg_pos` is the position of the
    first tick within its contiguous stretch of audio, so engines that pad features at utterance edges can.
    """

    ticks: Sequence[int]
    cycle_indices: Sequence[int]  # avatar frame (original index) each tick is composited on
    audio: np.ndarray
    left_samples: int
    right_samples: int
    seg_pos: int


class Renderer(abc.ABC):
    """Per-session: turns a RenderRequest into B faces (256x256 BGR uint8) for the avatar's face boxes."""

    @abc.abstractmethod
    def render(self, request: RenderRequest) -> list[np.ndarray]: ...


class AvatarBinding(abc.ABC):
    @abc.abstractmethod
    def new_renderer(self) -> Renderer: ...


class Engine(abc.ABC):
    name: str
    batch_size: int  # video frames per render call
    left_context_ticks: int
    right_context_ticks: int
    lead_ticks: int  # how far ahead of the output clock new audio is scheduled (the pipeline latency budget)

    def __init__(self) -> None:
        self._bindings: dict[str, AvatarBinding] = {}

    def bind(self, avatar: Avatar) -> AvatarBinding:
        """Per-avatar data, computed once and shared by all sessions using this avatar."""
        key = f"{avatar.path}:{avatar.manifest.get('created', '')}"
        if key not in self._bindings:
            self._bindings[key] = self._bind(avatar)
        return self._bindings[key]

    @abc.abstractmethod
    def _bind(self, avatar: Avatar) -> AvatarBinding: ...

    def describe(self) -> str:
        return self.name
