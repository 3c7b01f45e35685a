import math

import numpy as np
import pytest

from voices.asr import SpeechEnd, SpeechStart, VADConfig, VoiceActivityDetector

SR = 16000


def voiced(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like: 140 Hz harmonics with a syllable-rate (4 Hz) envelope."""
    t = np.arange(int(SR * seconds)) / SR
    tone = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 6))
    envelope = 0.4 + 0.6 * np.abs(np.sin(2 * np.pi * 2 * t))
    return (0.2 * tone * envelope).astype(np.float32)


def quiet(seconds: float, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(SR * seconds)) * 1e-4).astype(np.float32)


def run(vad: VoiceActivityDetector, audio: np.ndarray, step: int) -> list:
    events = []
    for pos in range(0, len(audio), step):
        events += vad.push(audio[pos:pos + step])
    return events + vad.flush()


@pytest.mark.parametrize("step", [320, 1000, 77, 10**6])
def test_silence_speech_silence_gives_one_utterance(step):
    cfg = VADConfig()
    audio = np.concatenate([quiet(1.0), voiced(1.5), quiet(1.0)])
    events = run(VoiceActivityDetector(cfg), audio, step)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd]
    frame = cfg.frame_ms / 1000
    # Start reported at the speech onset minus the pre-roll; end after the hangover.
    assert events[0].time == pytest.approx(1.0 - cfg.preroll_frames * frame, abs=frame)
    assert events[1].time == pytest.approx(2.5 + cfg.hangover_frames * frame, abs=frame)
    utterance = events[1].audio
    assert len(utterance) == round((events[1].time - events[0].time) * SR)
    onset = round((1.0 - events[0].time) * SR)
    np.testing.assert_array_equal(utterance[onset:onset + SR], audio[SR:2 * SR])  # the speech itself


def test_short_pause_is_bridged_long_pause_splits():
    audio = np.concatenate([quiet(0.5), voiced(0.6), quiet(0.2), voiced(0.6), quiet(1.5), voiced(0.6), quiet(1.0)])
    events = run(VoiceActivityDetector(), audio, 320)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]


def test_noise_and_clicks_are_not_speech():
    rng = np.random.default_rng(3)
    hiss = (rng.standard_normal(SR * 2) * 0.1).astype(np.float32)  # loud but noise-like
    clicks = quiet(2.0)
    clicks[::4000] = 0.9  # isolated spikes: never 3 speech frames in a row
    vad = VoiceActivityDetector()
    assert run(vad, np.concatenate([hiss, clicks]), 320) == []


def test_unfinished_speech_is_closed_by_flush_and_max_length_cuts():
    vad = VoiceActivityDetector()
    assert [type(e) for e in vad.push(voiced(0.5))] == [SpeechStart]
    assert vad.speaking
    assert [type(e) for e in vad.flush()] == [SpeechEnd]
    long_vad = VoiceActivityDetector(VADConfig(max_utterance_s=1.0))
    events = run(long_vad, voiced(2.5), 320)
    assert [type(e) for e in events] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]


def test_frame_decision_matches_a_plain_loop():
    vad = VoiceActivityDetector(VADConfig(threshold_db=-30.0, max_zcr=0.3))
    rng = np.random.default_rng(7)
    for _ in range(50):
        frame = (rng.standard_normal(320) * rng.choice([0.001, 0.05, 0.3])).astype(np.float32)
        if rng.random() < 0.5:
            frame = np.convolve(frame, np.ones(20) / 20, mode="same").astype(np.float32)  # low-passed: few crossings
        energy = sum(float(v) * float(v) for v in frame) / len(frame)
        db = 10 * math.log10(max(energy, 1e-20))
        crossings = sum((frame[i] < 0) != (frame[i - 1] < 0) for i in range(1, len(frame)))
        assert vad.is_speech(frame) == (db > -30.0 and crossings / len(frame) < 0.3)
