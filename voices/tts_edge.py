"""Microsoft edge-tts (online): the mp3 stream is decoded as it arrives.

edge-tts hard-wires its service URL and verifies TLS against certifi, so it
cannot be pointed at a fake service; ``resolver`` (DNS override) and
``proxy`` are passed through for networks that need them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from typing import Any

import aiohttp
import av
import numpy as np
from av.codec.context import CodecContext

from core.units import SAMPLE_RATE
from voices.options import EDGE_VOICE
from voices.tts import TTSError


class MP3StreamDecoder:
    """mp3 bytes in arbitrary pieces -> float32 mono 16 kHz, incrementally."""

    def __init__(self) -> None:
        self._codec = CodecContext.create("mp3", "r")
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)

    def feed(self, data: bytes) -> np.ndarray:
        return self._decode(self._codec.parse(data))

    def flush(self) -> np.ndarray:
        out = [self._decode(self._codec.parse(None)), self._decode([None])]
        out += [f.to_ndarray().reshape(-1) for f in self._resampler.resample(None)]
        return np.concatenate(out).astype(np.float32)

    def _decode(self, packets: Iterable[av.Packet | None]) -> np.ndarray:
        out: list[np.ndarray] = [np.zeros(0, np.float32)]
        for packet in packets:
            try:
                frames = self._codec.decode(packet)
            except av.error.InvalidDataError:
                continue  # an ID3 tag or a damaged frame: the decoder resyncs on the next one
            for frame in frames:
                out += [f.to_ndarray().reshape(-1) for f in self._resampler.resample(frame)]
        return np.concatenate(out).astype(np.float32)


class EdgeTTS:
    """``voice`` is an edge-tts voice name (``en-US-AriaNeural``, ...)."""

    def __init__(
        self,
        voice: str = EDGE_VOICE,
        *,
        rate: str = "+0%",
        volume: str = "+0%",
        pitch: str = "+0Hz",
        connect_timeout: int = 10,
        receive_timeout: int = 30,
        proxy: str | None = None,
        resolver: aiohttp.abc.AbstractResolver | None = None,
    ) -> None:
        self.voice = voice
        self._options: dict[str, Any] = dict(
            rate=rate,
            volume=volume,
            pitch=pitch,
            proxy=proxy,
            connect_timeout=connect_timeout,
            receive_timeout=receive_timeout,
        )
        self._resolver = resolver

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        import edge_tts

        if not text.strip():
            return
        # The session edge-tts opens owns (and closes) the connector: one per call.
        connector = aiohttp.TCPConnector(resolver=self._resolver) if self._resolver else None
        decoder = MP3StreamDecoder()
        try:
            communicate = edge_tts.Communicate(text, self.voice, connector=connector, **self._options)
            async for message in communicate.stream():
                if message["type"] == "audio":
                    out = decoder.feed(message["data"])
                    if out.size:
                        yield out
        except edge_tts.exceptions.NoAudioReceived as e:
            raise TTSError(f"edge-tts returned no audio for voice {self.voice!r}") from e
        except ValueError as e:  # a malformed voice name or rate/volume/pitch string
            raise TTSError(f"edge-tts: {e}") from e
        except (TimeoutError, edge_tts.exceptions.EdgeTTSException, aiohttp.ClientError, OSError) as e:
            raise TTSError(f"edge-tts failed: {e or type(e).__name__}") from e
        tail = decoder.flush()
        if tail.size:
            yield tail
