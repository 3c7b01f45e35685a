import io
import struct
import wave

import av
import numpy as np
import pytest
from scipy.signal import resample_poly

from core.audio import StreamResampler, float_to_pcm16, pcm16_to_float, resample
from voices.tts_edge import MP3StreamDecoder
from voices.tts_http import WavHeader


@pytest.mark.parametrize("src", [22050, 24000, 32000, 44100, 48000, 8000])
def test_stream_resampler_equals_one_shot_for_any_chunking(src):
    rng = np.random.default_rng(src)
    x = rng.standard_normal(src // 2 + 13).astype(np.float32)
    expected = resample_poly(x.astype(np.float64), 16000, src)
    r = StreamResampler(src)
    pieces, pos = [], 0
    while pos < len(x):
        n = int(rng.integers(1, 700))
        pieces.append(r.process(x[pos:pos + n]))
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


def test_wav_header_parser_against_wave_module():
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(32000)
        w.writeframes(b"\x01\x02\x03\x04" * 10)
    data = buf.getvalue()
    header = WavHeader()
    rest = b""
    for i in range(0, len(data), 5):
        rest = header.feed(data[i:i + 5])
        if header.done:
            rest += data[i + 5:]
            break
    assert (header.sample_rate, header.channels) == (32000, 2)
    assert rest == b"\x01\x02\x03\x04" * 10


def _mp3_tone(rate=24000, seconds=1.0, freq=500.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        frame = av.AudioFrame.from_ndarray((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None],
                                           format="flt", layout="mono")
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            out.mux(packet)
    return buf.getvalue()


def test_mp3_stream_decoder_decodes_incrementally():
    data = _mp3_tone()
    decoder = MP3StreamDecoder()
    pieces, out_by_half = [], 0
    for pos in range(0, len(data), 700):
        pieces.append(decoder.feed(data[pos:pos + 700]))
        if pos + 700 <= len(data) // 2:
            out_by_half += len(pieces[-1])
    assert out_by_half > 4000  # audio comes out while the stream is still arriving
    audio = np.concatenate([*pieces, decoder.flush()])
    assert audio.dtype == np.float32
    assert 16000 <= len(audio) <= 16000 + 2000  # 1 s plus the codec's padding
    spectrum = np.abs(np.fft.rfft(audio[2000:2000 + 8000]))  # 0.5 s: bin k = 2k Hz
    assert abs(np.argmax(spectrum) * 2 - 500) <= 2
