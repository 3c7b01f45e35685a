"""core.audio: resampling (one-shot and streamed) and PCM conversions."""

import struct

import numpy as np
import pytest
from scipy.signal import resample_poly

from core.audio import StreamResampler, float_to_pcm16, pcm16_to_float, resample


@pytest.mark.parametrize("src", [22050, 24000, 32000, 44100, 48000, 8000])
def test_stream_resampler_equals_one_shot_for_any_chunking(src):
    rng = np.random.default_rng(src)
    x = rng.standard_normal(src // 2 + 13).astype(np.float32)
    expected = resample_poly(x.astype(np.float64), 16000, src)
    r = StreamResampler(src)
    pieces, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 700))
        pieces.append(r.process(x[pos : pos + n]))
        pos += n
    pieces.append(r.flush())
    got = np.concatenate(pieces)
    assert got.dtype == np.float32
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_stream_resampler_releases_output_before_the_end_and_resets():
    r = StreamResampler(24000)
    first = r.process(np.ones(2400, np.float32))
    assert len(first) >= 1600 - r.context  # only the filter context is held back
    r.flush()
    again = r.process(np.ones(2400, np.float32))
    assert len(again) == len(first)  # flush started a fresh stream


def test_resample_one_shot_keeps_frequency():
    t = np.arange(22050) / 22050
    y = resample(np.sin(2 * np.pi * 300 * t).astype(np.float32), 22050)
    assert y.dtype == np.float32 and len(y) == 16000
    assert np.argmax(np.abs(np.fft.rfft(y))) == 300  # 1 s of audio: bin == Hz


def test_resample_rejects_bad_input():
    with pytest.raises(ValueError, match="mono"):
        resample(np.zeros((2, 10)), 24000)
    with pytest.raises(ValueError, match="positive"):
        StreamResampler(0)


def test_pcm16_conversions_match_struct():
    values = [0, 1, -1, 32767, -32768, 1234]
    data = struct.pack("<6h", *values)
    np.testing.assert_array_equal(pcm16_to_float(data), np.array(values) / 32768.0)
    assert struct.unpack("<3h", float_to_pcm16(np.array([0.5, -2.0, 1.0]))) == (16384, -32767, 32767)
    with pytest.raises(ValueError, match="even"):
        pcm16_to_float(b"\x00")
