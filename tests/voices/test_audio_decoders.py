"""The streamed decoders of the TTS backends: the WAV header parser (HTTP voices) and the MP3 decoder (edge-tts)."""

import io
import wave

import av
import numpy as np

from voices.tts_edge import MP3StreamDecoder
from voices.tts_http import WavHeader


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
        rest = header.feed(data[i : i + 5])
        if header.done:
            rest += data[i + 5 :]
            break
    assert (header.sample_rate, header.channels) == (32000, 2)
    assert rest == b"\x01\x02\x03\x04" * 10


def _mp3_tone(rate=24000, seconds=1.0, freq=500.0) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as out:
        stream = out.add_stream("libmp3lame", rate=rate, layout="mono")
        t = np.arange(int(rate * seconds)) / rate
        frame = av.AudioFrame.from_ndarray(
            (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate = rate
        for packet in list(stream.encode(frame)) + list(stream.encode(None)):
            out.mux(packet)
    return buf.getvalue()


def test_mp3_stream_decoder_decodes_incrementally():
    data = _mp3_tone()
    decoder = MP3StreamDecoder()
    pieces, out_by_half = [], 0
    for pos in range(0, len(data), 700):
        pieces.append(decoder.feed(data[pos : pos + 700]))
        if pos + 700 <= len(data) // 2:
            out_by_half += len(pieces[-1])
    assert out_by_half > 4000  # audio comes out while the stream is still arriving
    audio = np.concatenate([*pieces, decoder.flush()])
    assert audio.dtype == np.float32
    assert 16000 <= len(audio) <= 16000 + 2000  # 1 s plus the codec's padding
    spectrum = np.abs(np.fft.rfft(audio[2000 : 2000 + 8000]))  # 0.5 s: bin k = 2k Hz
    assert abs(np.argmax(spectrum) * 2 - 500) <= 2
