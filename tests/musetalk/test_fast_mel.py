"""The streaming log-mel computes only the STFT frames that reach the audio; it must equal the full computation
bit for bit (torch.equal), whatever the length and position of the audio and however loud it is (the clamp floor
max - 8 is taken over the whole input)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musetalk.audio_features import (
    _mel_filters,
    placed_log_mel,
    window_mel,
    window_mels,
)

SEGMENT = 480000
# 0 samples, 1, shorter than a hop, exactly one hop / one step / one FFT window, 0.5 s, 2.3 s, 29.99 s, 30 s
LENGTHS = [0, 1, 159, 160, 320, 400, 8000, 36800, 479840, SEGMENT]
AMPLITUDES = [0.5, 1e-5, 0.0]  # floor above the zero frames' -10, below it, an all-zero input


def _full_log_mel(audio: np.ndarray) -> torch.Tensor:
    """The whole computation, as whisper writes it: STFT of every frame (centered, reflect), last frame dropped."""
    stft = torch.stft(torch.from_numpy(audio), 400, 160, window=torch.hann_window(400), return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    return torch.clamp(_mel_filters() @ power, min=1e-10).log10()


def _normalise(log_spec: torch.Tensor) -> torch.Tensor:
    return (torch.maximum(log_spec, log_spec.max() - 8.0) + 4.0) / 4.0


def _full_v15(audio: np.ndarray, start: int) -> torch.Tensor:
    placed = np.zeros(SEGMENT, np.float32)
    placed[start : start + len(audio)] = audio
    return _normalise(_full_log_mel(placed))


def _audio(n: int, amplitude: float, seed: int) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def _starts(n: int) -> list[int]:
    """Sample positions: the start (reflect padding reads samples 1..200), around it, a step, mid, the very end."""
    last = SEGMENT - n
    return sorted({s for s in (0, 1, 199, 200, 201, 320, 160 * 7 + 3, last // 2, last - 1, last) if 0 <= s <= last})


@pytest.mark.parametrize("amplitude", AMPLITUDES)
@pytest.mark.parametrize("n", LENGTHS)
def test_v15_placed_log_mel_equals_the_full_computation(n, amplitude):
    audio = _audio(n, amplitude, seed=n)
    for start in _starts(n):
        got, want = placed_log_mel(audio, start), _full_v15(audio, start)
        assert got.shape == want.shape == (80, 3000)
        assert torch.equal(got, want), (n, start, int((got != want).sum()))


@pytest.mark.parametrize("n", [1, 2, 3, 200, 401])
def test_v15_audio_at_the_very_end_reads_the_end_reflection(n):
    # Frame 2999 reads samples 479959 .. 479998 reflected: a single frame to compute (a matrix-vector product,
    # not bit-identical to the full matrix product, if the fast path did not widen it).
    audio = _audio(n, 0.5, seed=7)
    for start in range(SEGMENT - n - 3, SEGMENT - n + 1):
        assert torch.equal(placed_log_mel(audio, start), _full_v15(audio, start)), start


@pytest.mark.parametrize("version", ["v15", "v1"])
@pytest.mark.parametrize("n", LENGTHS)
def test_streaming_encoder_inputs_equal_the_full_computation(version, n):
    """window_mels (what the streaming engine encodes) against the full log-mel of each version: v15 the whole
    30 s input holding the audio at its step, v1 the whole window's log-mel with its global max, placed in zeros."""
    audio = _audio(n, 0.3, seed=n + 1)
    for offset in sorted({0, 1, 37, (SEGMENT - n) // 320}):
        if offset >= 1500 or offset * 320 + n > SEGMENT:
            continue
        mels, positions, _ = window_mels(audio, version, offset)
        assert positions == [offset] and mels.shape == (1, 80, 3000)
        if version == "v15":
            want = _full_v15(audio, offset * 320)
        else:
            want = torch.zeros(80, 3000)
            if n >= 320:
                mel = _normalise(_full_log_mel(audio))
                want[:, 2 * offset : 2 * offset + mel.shape[1]] = mel
        assert torch.equal(mels[0], want), (offset, int((mels[0] != want).sum()))
        assert torch.equal(window_mel(audio, version, offset)[0], want)


def test_placed_log_mel_refuses_audio_outside_30s():
    with pytest.raises(ValueError, match="do not fit"):
        placed_log_mel(np.zeros(10, np.float32), SEGMENT - 9)
    with pytest.raises(ValueError, match="do not fit"):
        placed_log_mel(np.zeros(10, np.float32), -1)
