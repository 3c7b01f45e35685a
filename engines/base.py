"""The engine interface the session pipeline talks to.

An engine is created once per process (its models are shared by every session). `bind(avatar)` does the
per-avatar precomputation once, and each session gets its own `Renderer` from the binding for its small
per-session state (e.g. smoothing).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.units import TICK_SECONDS
from musetalk.avatar import Avatar

# Seconds of audio after a batch (past the features' own look-ahead) that a lip-sync engine waits for before
# rendering it, unless the utterance ends first: more is closer to the features of the whole utterance, less is
# lower latency (README: --right_context; BENCHMARKS.md section 9 measures the trade-off).
DEFAULT_RIGHT_CONTEXT_S = 0.04


def lead_ticks_for(right_context_ticks: int, batch_seconds: float) -> int:
    """How many ticks ahead new audio must be scheduled: the look-ahead a batch waits for, the tick being
    played, and the time one batch takes (margin included by the caller).

    The worker renders a speaking tick only once its right context has arrived (or its utterance has ended), at
    the latest `batch_seconds` before the tick is due. Audio that arrives at the pace it plays (a streaming voice)
    brings the context of a tick `right_context_ticks` ticks after the tick itself; a tick is scheduled at least
    `lead - 1` ticks after its audio came (the tick being played when it came is partly over). So
    `(lead - 1) * tick >= right_context_ticks * tick + batch_seconds` is what keeps such audio on time."""
    return right_context_ticks + 1 + math.ceil(batch_seconds / TICK_SECONDS)


@dataclass(frozen=True)
class RenderRequest:
    """B consecutive ticks to render.

    `audio` holds the 16 kHz samples of [left context | 2 audio frames per tick | right context], the contexts
    only from the same utterance: up to the engine's `left_context_ticks` before, and after it at least
    `right_context_ticks` (unless the utterance ends first), more when more has arrived, as far as
    `max_right_context_ticks` past a full batch; `left_samples` and `right_samples` say how long they are. `seg_pos`
    is the position of the first tick within its contiguous stretch of audio, `utterance_pos` within its utterance
    (the audio since the stretch began or the last end of speech: the clip a lip-sync model pads at both ends), so
    `audio[left_samples]` is utterance sample `utterance_pos * 640`. `utterance_samples` is the utterance's
    length in samples when it ends within this request's ticks or right context (None: it goes on past them);
    the ticks' samples beyond it are padding. `deadline` is when the first tick is due (``time.monotonic()``
    seconds, from the session's media clock; 0: as soon as possible) and `turn` the conversation turn of the
    ticks, with `current_turn` the session's turn now: an engine that queues work may drop a render whose turn
    ended (it then raises ``engines.batcher.StaleJob``).
    """

    ticks: Sequence[int]
    cycle_indices: Sequence[int]  # avatar frame (original index) each tick is composited on
    audio: np.ndarray
    left_samples: int
    right_samples: int
    seg_pos: int
    utterance_pos: int = 0
    utterance_samples: int | None = None
    deadline: float = 0.0
    turn: int = 0
    current_turn: Callable[[], int] | None = None


class Renderer(abc.ABC):
    """Per-session: turns a RenderRequest into faces (256x256 BGR uint8) for the avatar's face boxes.

    One face per tick, except that an engine with a frame count of its own per utterance may return fewer: the
    ticks past its utterance's last frame (the audio tail that officially makes no frame) then show the avatar's
    own frame."""

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

    @property
    def max_right_context_ticks(self) -> int:
        """How many queued ticks after a full batch the engine can still use: it waits for `right_context_ticks`
        of them, and is handed up to this many when they are there already."""
        return self.right_context_ticks

    def bind(self, avatar: Avatar) -> AvatarBinding:
        """Per-avatar data, computed once and shared by all sessions using this avatar."""
        key = self._binding_key(avatar)
        if key not in self._bindings:
            self._bindings[key] = self._bind(avatar)
        return self._bindings[key]

    def unbind(self, avatar: Avatar) -> None:
        """Forget an avatar's binding (the avatar was deleted): its data is freed once no session holds it."""
        self._bindings.pop(self._binding_key(avatar), None)

    @staticmethod
    def _binding_key(avatar: Avatar) -> str:
        return f"{avatar.path}:{avatar.manifest.get('created', '')}"

    @abc.abstractmethod
    def _bind(self, avatar: Avatar) -> AvatarBinding: ...

    def describe(self) -> str:
        return self.name

    def close(self) -> None:  # noqa: B027 -- optional: an engine with nothing of its own to release keeps this
        """Release what the engine runs beside the sessions (threads, devices); called once at shutdown."""
