"""HTTP streaming TTS backends: OpenAI-compatible ``/audio/speech`` (raw PCM, through the openai SDK)
and GPT-SoVITS ``api_v2`` (a WAV stream: header, then PCM as it is made)."""

from __future__ import annotations

import struct
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx2
import numpy as np
import openai

from core.audio import StreamResampler, pcm16_to_float
from voices._http import HTTPBackend, given
from voices.openai_api import OpenAIBackend, OpenAIEndpoint, describe
from voices.options import GPT_SOVITS_SERVER, OPENAI_TTS_MODEL, OPENAI_VOICE
from voices.tts import TTSError

_READ_SIZE = 4800  # 100 ms of 24 kHz PCM16: small enough to pass audio on quickly


class _PCMStream:
    """PCM16 bytes in arbitrary pieces -> float32 mono 16 kHz, incrementally."""

    def __init__(self, sample_rate: int, channels: int = 1) -> None:
        self.channels = channels
        self._frame_bytes = 2 * channels
        self._pending = b""
        self._resampler = StreamResampler(sample_rate)

    def feed(self, data: bytes) -> np.ndarray:
        data = self._pending + data
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        samples = pcm16_to_float(data[:usable])
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        return self._resampler.process(samples)

    def flush(self) -> np.ndarray:
        return self._resampler.flush()


async def _stream_pcm(body: AsyncIterator[bytes], pcm: _PCMStream) -> AsyncIterator[np.ndarray]:
    async for data in body:
        out = pcm.feed(data)
        if out.size:
            yield out
    tail = pcm.flush()
    if tail.size:
        yield tail


class OpenAITTS(OpenAIBackend):
    """OpenAI(-compatible) ``/audio/speech`` through the official SDK, ``response_format: pcm`` (24 kHz s16le),
    streamed: audio goes on as it arrives; closing the iterator closes the HTTP response."""

    def __init__(
        self,
        endpoint: OpenAIEndpoint,
        *,
        model: str = OPENAI_TTS_MODEL,
        voice: str = OPENAI_VOICE,
        pcm_rate: int = 24000,
        instructions: str | None = None,
        speed: float | None = None,
    ) -> None:
        super().__init__(endpoint)
        self.model, self.voice, self.pcm_rate = model, voice, pcm_rate
        self._extra = given(instructions=instructions or None, speed=speed)  # an empty instruction is none

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        if not text.strip():
            return
        try:
            async with self._client.audio.speech.with_streaming_response.create(
                model=self.model,
                input=text,
                voice=self.voice,
                response_format="pcm",
                **self._extra,
            ) as resp:
                async for chunk in _stream_pcm(resp.iter_bytes(_READ_SIZE), _PCMStream(self.pcm_rate)):
                    yield chunk
        except openai.OpenAIError as e:
            raise TTSError(f"OpenAI TTS: {describe(e)}") from e
        except httpx2.HTTPError as e:  # raised by the body's reads, which the SDK does not wrap
            raise TTSError(f"OpenAI TTS: the audio stream failed ({e or type(e).__name__})") from e


class GPTSoVITSTTS(HTTPBackend):
    """GPT-SoVITS ``api_v2`` in streaming mode (``POST {server}/tts``).

    ``ref_audio_path`` is the reference audio's path on the GPT-SoVITS
    server, ``prompt_text`` its transcript.
    The sample rate comes from the WAV header (32 kHz for v2 models).
    """

    error_type = TTSError
    name = "GPT-SoVITS"

    def __init__(
        self,
        server: str = GPT_SOVITS_SERVER,
        *,
        ref_audio_path: str,
        prompt_text: str = "",
        text_lang: str = "zh",
        prompt_lang: str = "zh",
        extra: dict[str, Any] | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        super().__init__(connect_timeout=connect_timeout, read_timeout=read_timeout)
        self.url = server.rstrip("/") + "/tts"
        self._params: dict[str, Any] = {
            "text_lang": text_lang,
            "ref_audio_path": ref_audio_path,
            "prompt_text": prompt_text,
            "prompt_lang": prompt_lang,
            "media_type": "wav",
            "streaming_mode": True,
            **(extra or {}),
        }

    async def synthesize(self, text: str) -> AsyncGenerator[np.ndarray, None]:
        if not text.strip():
            return
        async with self._request("POST", self.url, json={"text": text, **self._params}) as resp:
            body = resp.content.iter_chunked(_READ_SIZE)
            header = WavHeader()
            leftover = b""
            async for data in body:
                leftover = header.feed(data)
                if header.done:
                    break
            if not header.done:
                raise TTSError("GPT-SoVITS: the response ended before a complete WAV header")
            pcm = _PCMStream(header.sample_rate, header.channels)
            first = pcm.feed(leftover)
            if first.size:
                yield first
            async for chunk in _stream_pcm(body, pcm):
                yield chunk


class WavHeader:
    """Incremental RIFF/WAVE header parser for streamed WAV (the data size
    field of a streamed header is a placeholder and is ignored)."""

    def __init__(self) -> None:
        self._buf = b""
        self.done = False
        self.sample_rate = 0
        self.channels = 0

    def feed(self, data: bytes) -> bytes:
        """Consume bytes; once ``done``, return the PCM bytes that followed."""
        self._buf += data
        if len(self._buf) < 12:
            return b""
        if self._buf[:4] != b"RIFF" or self._buf[8:12] != b"WAVE":
            raise TTSError("GPT-SoVITS: the response is not a WAV stream")
        pos = 12
        while len(self._buf) >= pos + 8:
            chunk_id, size = self._buf[pos : pos + 4], struct.unpack("<I", self._buf[pos + 4 : pos + 8])[0]
            if chunk_id == b"data":
                if not self.sample_rate:
                    raise TTSError("GPT-SoVITS: WAV data before its format chunk")
                self.done = True
                return self._buf[pos + 8 :]
            if len(self._buf) < pos + 8 + size:
                return b""
            if chunk_id == b"fmt ":
                fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", self._buf[pos + 8 : pos + 24])
                if fmt != 1 or bits != 16:
                    raise TTSError(f"GPT-SoVITS: unsupported WAV format (format {fmt}, {bits} bits); need 16-bit PCM")
                self.sample_rate, self.channels = rate, channels
            pos += 8 + size + size % 2  # chunks are word aligned
        return b""
