"""Silero VAD (faster-whisper's ONNX model) on real speech (piper) in pink noise at 10 dB SNR, and on noise alone."""

import asyncio

import numpy as np
import pytest

from voices.asr import WINDOW, SpeechEnd, SpeechStart, VADConfig, VoiceActivityDetector
from voices.tts import PiperTTS

SR = 16000
SNR_DB = 10.0


def pink_noise(n: int, seed: int) -> np.ndarray:
    """n samples of unit-RMS pink (1/f power) noise."""
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spectrum / np.sqrt(f), n)
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    async def synthesize() -> np.ndarray:
        return np.concatenate([c async for c in PiperTTS().synthesize("What is the weather like today?")])

    return asyncio.run(synthesize())


def noise_level(speech: np.ndarray) -> float:
    """The noise RMS that puts the speech at SNR_DB."""
    return float(np.sqrt(np.mean(speech**2)) / 10 ** (SNR_DB / 20))


def run(vad: VoiceActivityDetector, audio: np.ndarray, step: int) -> list:
    events = []
    for pos in range(0, len(audio), step):
        events += vad.push(audio[pos : pos + step])
    return events + vad.flush()


@pytest.mark.parametrize("step", [960, 77, 10**7])  # 20 ms microphone frames, odd pieces, all at once
def test_speech_in_pink_noise_at_10_db_snr_is_found(speech, step):
    cfg = VADConfig()
    lead, tail = 1.0, 1.5
    clean = np.concatenate([np.zeros(int(SR * lead), np.float32), speech, np.zeros(int(SR * tail), np.float32)])
    noisy = clean + pink_noise(len(clean), seed=1) * noise_level(speech)
    events = run(VoiceActivityDetector(cfg), noisy, step)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    window = WINDOW / SR
    start, end = events[0].time, events[1].time
    # Reported from the pre-roll before the onset (within a few windows of it), ended after the hangover.
    assert lead - (cfg.preroll_windows + 1) * window <= start <= lead - (cfg.preroll_windows - 6) * window
    speech_end = lead + len(speech) / SR
    assert speech_end <= end <= speech_end + (cfg.hangover_windows + 6) * window
    utterance = events[1].audio
    assert len(utterance) == round((end - start) * SR)
    onset = round((lead - start) * SR)
    np.testing.assert_array_equal(utterance[onset : onset + len(speech)], noisy[int(SR * lead) :][: len(speech)])


def test_no_false_trigger_on_the_noise_alone(speech):
    level = noise_level(speech)
    rng = np.random.default_rng(3)
    clicks = np.zeros(SR * 2, np.float32)
    clicks[::4000] = 0.9  # isolated spikes
    for noise in (
        pink_noise(SR * 10, seed=2) * level,  # the noise of the test above, without the speech
        pink_noise(SR * 5, seed=4) * 0.3,  # much louder pink noise
        (rng.standard_normal(SR * 5) * 0.1).astype(np.float32),  # loud hiss
        clicks,
    ):
        assert run(VoiceActivityDetector(), noise, 960) == []


def test_a_long_pause_splits_and_max_length_cuts(speech):
    gap = np.zeros(SR * 2, np.float32)
    events = run(VoiceActivityDetector(), np.concatenate([gap[: SR // 2], speech, gap, speech, gap]), 960)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    vad = VoiceActivityDetector(VADConfig(max_utterance_s=1.0))
    events = run(vad, np.concatenate([gap[: SR // 2], speech]), 960)
    assert [type(e) for e in events].count(SpeechEnd) >= 2  # a 1.9 s sentence is cut at 1 s
    assert all(len(e.audio) <= SR * 1.0 + WINDOW for e in events if isinstance(e, SpeechEnd))


def test_unfinished_speech_is_closed_by_flush(speech):
    vad = VoiceActivityDetector()
    assert [type(e) for e in vad.push(speech[:SR])] == [SpeechStart]
    assert vad.speaking
    assert [type(e) for e in vad.flush()] == [SpeechEnd]
    assert not vad.speaking
