"""What travels between the stages. Every item carries the conversation turn it belongs to."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from core.arrays import Image, Pcm
from core.events import Event
from core.units import TICK_SAMPLES


class Kind(enum.Enum):
    SPEECH = "speech"
    SILENCE = "silence"
    ACTION = "action"


class Source(enum.StrEnum):
    """What an output tick's picture is (the metrics' frame label)."""

    SPEECH = "speech"  # a lip-synced face rendered for its audio
    IDLE = "idle"  # the avatar's own frame
    ACTION = "action"  # a frame of an action clip
    REPEAT = "repeat"  # speech played while its face was not ready: the last frame shown again


@dataclass
class AudioFrame:
    """20 ms of 16 kHz float32 mono audio."""

    pcm: Pcm
    kind: Kind
    turn: int
    events: list[Event] = field(default_factory=list)
    t_in: float = 0.0  # monotonic time the audio was handed to the session (latency accounting)


@dataclass
class TickAudio:
    """The two audio frames of one scheduled tick: video frame `tick` is made from exactly these."""

    tick: int
    turn: int
    frames: tuple[AudioFrame, AudioFrame]
    seg_pos: int = 0  # position of this tick in its contiguous stretch of audio (0 = stretch start)
    utterance_pos: int = 0  # position in its utterance: the audio since the stretch began or the last flush
    last: bool = False  # the stream was flushed after this tick: its utterance ends here
    samples: int = TICK_SAMPLES  # how much of the tick is utterance audio (less only for the flush-padded last tick)

    @property
    def pcm(self) -> Pcm:
        return np.concatenate([self.frames[0].pcm, self.frames[1].pcm])

    @property
    def silent(self) -> bool:
        return all(f.kind is not Kind.SPEECH for f in self.frames)

    @property
    def t_in(self) -> float:
        return self.frames[0].t_in


@dataclass
class VideoResult:
    """A composited full frame for one tick, produced by the inference worker."""

    tick: int
    turn: int
    frame: Image  # (H, W, 3) uint8 BGR


@dataclass
class OutputTick:
    """One unit of output: a video frame and its two audio frames, with the pts of both."""

    tick: int
    frame: Image  # (H, W, 3) uint8 BGR
    audio: Pcm  # (640,) float32 at 16 kHz: audio frames 2*tick and 2*tick+1
    kind: Kind
    source: Source
    events: list[Event]
    turn: int
