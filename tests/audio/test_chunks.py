"""Step counts, frame counts and per-frame chunks vs plain restatements of the official loops."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import WhisperFeatureExtractor

from musetalk.audio_features import frame_chunks, num_frames, num_steps, whisper_steps

LENGTHS = [8000, 16000, 128000, 496000, 9280, 18560, 1280, 700]  # 0.5 s, 1 s, 8 s, 31 s, float-edge cases, tiny


def _plain_v1_chunk_count(n_steps: int, fps: int) -> int:
    """feature2chunks: append chunk i, then stop once int(i * 50/fps) > T."""
    count, i = 0, 0
    while True:
        start = int(i * (50.0 / fps))
        count += 1
        i += 1
        if start > n_steps:
            return count


@pytest.mark.parametrize("n", LENGTHS)
def test_counts(n):
    assert num_steps(n, "v15") == math.floor(n / 16000 * 50)
    assert num_frames(n, "v15") == math.floor(n / 16000 * 25)
    mel_frames = n // 160
    v1_steps = sum(min(3000, mel_frames - s) // 2 for s in range(0, mel_frames, 3000))
    assert num_steps(n, "v1") == v1_steps
    for fps in (25, 20, 30, 24):
        assert num_frames(n, "v1", fps) == _plain_v1_chunk_count(v1_steps, fps)


def test_reference_counts():
    # reference/musetalk.md: 8 s -> T = 400, 200 frames (v1.5), 202 chunks (v1); the float formula drops a step.
    assert (num_steps(128000, "v15"), num_frames(128000, "v15"), num_frames(128000, "v1")) == (400, 200, 202)
    assert (num_steps(9280, "v15"), num_steps(9280, "v1")) == (28, 29)


def _token_order(clip: np.ndarray) -> np.ndarray:
    """(10, 5, D) -> (50, D) with token 5*t + layer, element by element."""
    out = np.empty((clip.shape[0] * clip.shape[1], clip.shape[2]), clip.dtype)
    for t in range(clip.shape[0]):
        for layer in range(clip.shape[1]):
            out[5 * t + layer] = clip[t, layer]
    return out


def _plain_v15_chunks(steps: np.ndarray, n: int, fps: int) -> np.ndarray:
    """get_whisper_chunk: trim, zero-pad (zeros_like of slices of the trimmed array), slice [floor(i*m), +10)."""
    m = 50 / fps
    feat = steps[:math.floor(n / 16000 * 50)]
    pad = math.ceil(m)
    assert len(feat) >= pad * 2, "shorter utterances get less left padding upstream (documented deviation)"
    feat = np.concatenate([np.zeros_like(feat[:pad * 2]), feat, np.zeros_like(feat[:pad * 3 * 2])])
    chunks = []
    for i in range(math.floor(n / 16000 * fps)):
        a = math.floor(i * m)
        clip = feat[a:a + 10]
        assert clip.shape[0] == 10
        chunks.append(_token_order(clip))
    return np.stack(chunks) if chunks else np.zeros((0, 50, steps.shape[2]), np.float32)


def _plain_v1_chunks(steps: np.ndarray, fps: int) -> np.ndarray:
    """feature2chunks + get_sliced_feature with clamped indices."""
    chunks = []
    for i in range(_plain_v1_chunk_count(len(steps), fps)):
        center = int(i * 50 / fps)
        clip = [steps[min(len(steps) - 1, max(0, idx))] for idx in range(center - 4, center + 6)]
        chunks.append(_token_order(np.stack(clip)))
    return np.stack(chunks)


def _step_features(n_steps: int, dim: int = 8) -> np.ndarray:
    # Distinct, non-zero values everywhere, so a misplaced or zeroed element shows.
    return (np.arange(n_steps * 5 * dim, dtype=np.float32).reshape(n_steps, 5, dim) + 1.0)


@pytest.mark.parametrize("n", [16000, 8000 + 320 * 3 + 17, 128000, 9280, 2240])
@pytest.mark.parametrize("fps", [25, 20, 30])
def test_v15_chunks_equal_get_whisper_chunk(n, fps):
    steps = _step_features(num_steps(n, "v15"))
    got = frame_chunks(steps, n, "v15", fps)
    np.testing.assert_array_equal(got, _plain_v15_chunks(steps, n, fps))


@pytest.mark.parametrize("n", [16000, 8000 + 320 * 3 + 17, 128000, 9280, 320])
@pytest.mark.parametrize("fps", [25, 20, 30])
def test_v1_chunks_equal_get_sliced_feature(n, fps):
    steps = _step_features(num_steps(n, "v1"))
    got = frame_chunks(steps, n, "v1", fps)
    np.testing.assert_array_equal(got, _plain_v1_chunks(steps, fps))


def test_25fps_windows_are_steps_2i_minus_4_to_2i_plus_5():
    n = 16000
    steps = _step_features(50)
    for version in ("v15", "v1"):
        chunks = frame_chunks(steps, n, version).reshape(-1, 10, 5, 8)
        for i in (3, 10, 20):
            np.testing.assert_array_equal(chunks[i], steps[2 * i - 4:2 * i + 6])
    v15 = frame_chunks(steps, n, "v15").reshape(-1, 10, 5, 8)
    assert np.all(v15[0, :4] == 0) and np.array_equal(v15[0, 4:], steps[:6])
    assert np.all(v15[24, 8:] == 0)  # steps 50, 51 lie past the end
    v1 = frame_chunks(steps, n, "v1").reshape(-1, 10, 5, 8)
    assert np.array_equal(v1[0, :4], np.stack([steps[0]] * 4))
    assert len(v1) == 27  # centre 52 > T = 50 is the last chunk
    np.testing.assert_array_equal(v1[26], steps[[48, 49] + [49] * 8])  # steps 48..57, clamped to 49


def test_chunk_errors():
    with pytest.raises(ValueError, match="steps"):
        frame_chunks(_step_features(49), 16000, "v15")
    with pytest.raises(ValueError, match="fps"):
        frame_chunks(_step_features(50), 16000, "v15", fps=25.0)
    with pytest.raises(ValueError, match="one step"):
        frame_chunks(_step_features(0), 100, "v1")


def test_whisper_steps_v15_equals_the_official_pipeline(micro_encoder, speech_like):
    """31 s: two segments, HF extractor per 30 s segment, HF hidden_states stacked on dim 2, concatenated, trimmed."""
    audio = speech_like(31 * 16000 + 5)
    extractor = WhisperFeatureExtractor(feature_size=80)
    parts = []
    with torch.no_grad():
        for s in range(0, len(audio), 480000):
            feat = extractor(audio[s:s + 480000], sampling_rate=16000, return_tensors="pt").input_features
            parts.append(torch.stack(micro_encoder(feat, output_hidden_states=True).hidden_states, dim=2))
    want = torch.cat(parts, dim=1)[0, :math.floor(len(audio) / 16000 * 50)].numpy()
    got = whisper_steps(audio, micro_encoder, "v15")
    assert got.shape == (1550, 5, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
