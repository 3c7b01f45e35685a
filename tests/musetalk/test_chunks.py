"""Step counts, frame counts and per-frame chunks vs plain restatements of the official loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from musetalk.audio_features import frame_chunks, num_frames, num_steps, whisper_steps
from testing.official_audio import official_chunks, official_steps, token_order

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


def _plain_v1_chunks(steps: np.ndarray, fps: int) -> np.ndarray:
    """feature2chunks + get_sliced_feature with clamped indices."""
    chunks = []
    for i in range(_plain_v1_chunk_count(len(steps), fps)):
        center = int(i * 50 / fps)
        clip = [steps[min(len(steps) - 1, max(0, idx))] for idx in range(center - 4, center + 6)]
        chunks.append(token_order(np.stack(clip)))
    return np.stack(chunks)


def _step_features(n_steps: int, dim: int = 8) -> np.ndarray:
    # Distinct, non-zero values everywhere, so a misplaced or zeroed element shows.
    return np.arange(n_steps * 5 * dim, dtype=np.float32).reshape(n_steps, 5, dim) + 1.0


@pytest.mark.parametrize("n", [16000, 8000 + 320 * 3 + 17, 128000, 9280, 2240])
@pytest.mark.parametrize("fps", [25, 20, 30])
def test_v15_chunks_equal_get_whisper_chunk(n, fps):
    steps = _step_features(num_steps(n, "v15"))
    got = frame_chunks(steps, n, "v15", fps)
    np.testing.assert_array_equal(got, official_chunks(steps, n, fps))


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
            np.testing.assert_array_equal(chunks[i], steps[2 * i - 4 : 2 * i + 6])
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
    got = whisper_steps(audio, micro_encoder, "v15")
    assert got.shape == (1550, 5, 64) and got.dtype == np.float32
    np.testing.assert_allclose(got, official_steps(audio, micro_encoder), rtol=0, atol=2e-4)


# Upstream (musetalk/utils/audio_processor.py at 0a89dec, reference 5.2) computes both counts in float:
# num_frames = math.floor((librosa_length / sr) * fps), actual_length = math.floor((librosa_length / sr) * 50).
# For these lengths the float product falls just under an integer, one below the exact count
# (37120 / 16000 * 25 = 57.99999999999999, 18560 / 16000 * 50 = 57.99999999999999, ...).
@pytest.mark.parametrize(
    ("n", "fps", "frames", "steps"), [(37120, 25, 57, 115), (18560, 25, 28, 57), (65600, 30, 122, 204)]
)
def test_counts_follow_the_float_floor_where_it_differs_from_the_exact_one(n, fps, frames, steps):
    assert (n * fps // 16000, n * 50 // 16000) == (frames + 1, steps + 1)  # the exact floors, for contrast
    assert num_frames(n, "v15", fps) == frames
    assert num_steps(n, "v15") == steps


@pytest.mark.parametrize(("n", "fps"), [(37120, 25), (18560, 25), (65600, 30)])
def test_last_frames_read_zero_steps_past_the_kept_steps(n, fps):
    """Steps from floor((n / 16000) * 50) on are zeros, even the last whole step of audio the float floor drops."""
    steps = _step_features(n // 320)  # every whole 20 ms step of the audio, all non-zero
    kept = {37120: 115, 18560: 57, 65600: 204}[n]
    got = frame_chunks(steps[:kept], n, "v15", fps).reshape(-1, 10, 5, 8)
    last = len(got) - 1
    first_read = math.floor(last * 50 / fps) - 2 * math.ceil(50 / fps)  # step read by the last frame's slot 0
    for k in range(10):
        step = first_read + k
        if step >= kept:
            assert not got[last, k].any()
        else:
            np.testing.assert_array_equal(got[last, k], steps[step])
    assert first_read + 9 >= kept  # the last frame does reach past the kept steps
