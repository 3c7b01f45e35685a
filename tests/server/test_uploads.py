"""Decoding uploaded audio: formats, rates and channels to 16 kHz mono, and bounded cost on hostile input."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
import soundfile as sf

from server.errors import ApiError
from server.uploads import decode_audio


def dominant_hz(x: np.ndarray, rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "channels"),
    [
        ("WAV", "PCM_16", 44100, 2),
        ("WAV", "FLOAT", 8000, 1),
        ("FLAC", "PCM_16", 96000, 1),
        ("OGG", "VORBIS", 48000, 2),
        ("MP3", "MPEG_LAYER_III", 22050, 1),
    ],
)
def test_formats_are_decoded_to_16k_mono(fmt: str, subtype: str, rate: int, channels: int) -> None:
    t = np.arange(rate) / rate  # 1 s
    x = 0.4 * np.sin(2 * np.pi * 700 * t)
    buf = io.BytesIO()
    sf.write(buf, np.repeat(x[:, None], channels, axis=1), rate, format=fmt, subtype=subtype)
    out = decode_audio(buf.getvalue(), max_seconds=10)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 16000) < 1300  # mp3 adds encoder delay/padding
    assert abs(dominant_hz(out[2000:14000]) - 700) < 3
    assert 0.3 < np.abs(out[2000:14000]).max() < 0.5


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    block = 2 * channels
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_bytes, 0xFFFFFFFF))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, (rate * block) % 2**32, block, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


@pytest.mark.parametrize(
    ("data", "status", "words"),
    [
        (b"", 400, "empty"),
        (bytes(range(256)) * 400, 400, "cannot decode"),
        (wav_header(1, 1, 100) + bytes(100), 400, "sample rate 1 Hz"),
        (wav_header(4_000_000_000, 1, 1000) + bytes(1000), 400, "cannot decode"),
        (wav_header(16000, 200, 0xFFFFFFF0) + bytes(4000), 400, "unsupported channel count 200"),
        (wav_header(16000, 1, 16000 * 2 * 5) + bytes(16000 * 2 * 5), 413, "longer than 3 s"),
    ],
)
def test_hostile_files_fail_fast_with_a_clear_status(data: bytes, status: int, words: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ApiError) as exc:
        decode_audio(data, max_seconds=3)
    assert exc.value.status == status and words in str(exc.value)
    assert time.monotonic() - t0 < 1.0


def test_absurd_length_claim_decodes_only_what_is_there() -> None:
    pcm = (0.3 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    data = wav_header(16000, 1, 0xFFFFFFF0) + (pcm * 32767).astype("<i2").tobytes()
    out = decode_audio(data, max_seconds=3)
    np.testing.assert_allclose(out, pcm, atol=2e-4)  # 16 kHz in: the samples come through as they are


def test_expansion_stops_at_the_duration_limit() -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(48000 * 600, np.int16), 48000, format="FLAC")  # 10 min of silence, a small file
    t0 = time.monotonic()
    with pytest.raises(ApiError) as exc:
        decode_audio(buf.getvalue(), max_seconds=5)
    assert exc.value.status == 413 and time.monotonic() - t0 < 1.0
