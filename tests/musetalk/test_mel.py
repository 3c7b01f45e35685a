"""Log-mel semantics: v1.5 per 30 s waveform segment (HF extractor) vs v1 global normalisation (plain numpy)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor
from transformers.audio_utils import mel_filter_bank

from musetalk.audio_features import mel_segments


@pytest.mark.parametrize("seconds", [1.0, 31.0])
def test_v15_segments_equal_the_hf_extractor_per_30s_segment(speech_like, seconds):
    audio = speech_like(int(seconds * 16000))
    audio[16000 * 30 :] *= 0.01  # a quiet second segment: its own max must be used
    extractor = WhisperFeatureExtractor(feature_size=80)
    want = [
        extractor(audio[s : s + 480000], sampling_rate=16000, return_tensors="np").input_features[0]
        for s in range(0, len(audio), 480000)
    ]
    mels, steps = mel_segments(audio, "v15")
    assert mels.shape == (len(want), 80, 3000)
    assert steps == [min(1500, (len(audio) - s) // 320) for s in range(0, len(audio), 480000)]
    for got, ref in zip(mels.numpy(), want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)


def _plain_v1_mel(audio: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
    """openai-whisper log_mel_spectrogram over the whole input, global max, split and zero-padded per 3000 frames."""
    filters = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )  # (201, 80)
    padded = np.pad(audio.astype(np.float64), 200, mode="reflect")  # torch.stft(center=True)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    n_frames = 1 + len(audio) // 160 - 1  # the last STFT frame is dropped
    mel = np.empty((80, n_frames))
    for f in range(n_frames):
        power = np.abs(np.fft.rfft(padded[160 * f : 160 * f + 400] * window)) ** 2
        mel[:, f] = filters.T @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = (np.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0
    segments, steps = [], []
    for seek in range(0, n_frames, 3000):
        seg = np.zeros((80, 3000))
        part = log_spec[:, seek : seek + 3000]
        seg[:, : part.shape[1]] = part
        segments.append(seg)
        steps.append(part.shape[1] // 2)
    return segments, steps


def test_v1_segments_use_the_global_max_and_pad_the_log_mel(speech_like):
    audio = speech_like(31 * 16000 + 123)
    audio[16000 * 30 :] *= 1e-3  # per-segment normalisation would lift this segment's floor
    want, want_steps = _plain_v1_mel(audio)
    mels, steps = mel_segments(audio, "v1")
    assert steps == want_steps == [1500, (16000 + 123) // 160 // 2]
    for got, ref in zip(mels.numpy(), want):
        np.testing.assert_allclose(got, ref, rtol=0, atol=5e-4)
    # The padding of the last segment is 0 in the normalised domain (not log-mel of silence).
    assert np.all(mels[1, :, (16000 + 123) // 160 :].numpy() == 0)
    # And it is not the per-segment result of v1.5.
    assert np.abs(mels[1].numpy() - mel_segments(audio, "v15")[0][1].numpy()).max() > 0.1


def test_v1_short_inputs():
    mels, steps = mel_segments(np.zeros(319, np.float32), "v1")
    assert mels.shape == (0, 80, 3000) and steps == []
    mels, steps = mel_segments(np.zeros(0, np.float32), "v15")
    assert mels.shape == (0, 80, 3000) and steps == []


def test_bad_audio_is_refused():
    with pytest.raises(ValueError, match="1-D"):
        mel_segments(np.zeros((2, 100), np.float32), "v15")
    with pytest.raises(ValueError, match="float"):
        mel_segments(np.zeros(100, np.int16), "v15")
    with pytest.raises(ValueError, match="version"):
        mel_segments(np.zeros(100, np.float32), "v2")
