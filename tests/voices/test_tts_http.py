import asyncio
import socket
import time
from contextlib import aclosing

import aiohttp
import numpy as np
import pytest
from scipy.signal import resample_poly

from voices.openai_api import OpenAIEndpoint
from voices.tts import TTSError
from voices.tts_edge import EdgeTTS
from voices.tts_http import GPTSoVITSTTS, OpenAITTS


async def collect(aiter):
    return [x async for x in aiter]


def expected_16k(pcm: bytes, rate: int) -> np.ndarray:
    return resample_poly(np.frombuffer(pcm, "<i2") / 32768.0, 16000, rate)


async def test_openai_tts_streams_resampled_pcm(openai_server, fakes):
    base, rec = openai_server
    async with OpenAITTS(OpenAIEndpoint(base, api_key="sk-x"), model="tts-1", voice="alloy", speed=1.1) as tts:
        chunks = await collect(tts.synthesize("Hello world."))
    assert len(chunks) > 5 and all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    np.testing.assert_allclose(np.concatenate(chunks), expected_16k(fakes.tone_pcm16(24000, 1.0), 24000), atol=1e-4)
    assert rec.requests[0] == {
        "model": "tts-1",
        "input": "Hello world.",
        "voice": "alloy",
        "response_format": "pcm",
        "speed": 1.1,
    }
    assert rec.headers[0]["Authorization"] == "Bearer sk-x"


@pytest.mark.parametrize(("voice", "expected"), [("bad", r"HTTP 400: unknown voice"), ("boom", r"HTTP 503")])
async def test_openai_tts_http_errors(openai_server, voice, expected):
    base, rec = openai_server
    async with OpenAITTS(OpenAIEndpoint(base), voice=voice) as tts:
        with pytest.raises(TTSError, match=expected) as info:
            await collect(tts.synthesize("Hello."))
    assert len(str(info.value)) < 250  # a long error body is not dumped on the user
    assert len(rec.requests) == (1 if voice == "bad" else 3)  # a 503 is retried twice, a 400 is not


async def test_openai_tts_retries_a_429_and_a_503(openai_server, fakes):
    base, rec = openai_server
    async with OpenAITTS(OpenAIEndpoint(base), voice="flaky") as tts:
        chunks = await collect(tts.synthesize("Hello world."))
    np.testing.assert_allclose(np.concatenate(chunks), expected_16k(fakes.tone_pcm16(24000, 1.0), 24000), atol=1e-4)
    assert len(rec.requests) == 3


async def test_network_tts_refused_and_timeout(openai_server, fakes):
    base, _ = openai_server
    async with OpenAITTS(OpenAIEndpoint(f"http://127.0.0.1:{fakes.free_port()}/v1", max_retries=0)) as tts:
        with pytest.raises(TTSError, match="cannot connect"):
            await collect(tts.synthesize("Hello."))
    start = time.monotonic()
    async with OpenAITTS(OpenAIEndpoint(base, read_timeout=0.3, max_retries=0), voice="hang") as tts:
        with pytest.raises(TTSError, match="timed out"):
            await collect(tts.synthesize("Hello."))
    assert time.monotonic() - start < 3


async def test_openai_tts_stopping_closes_the_response(openai_server):
    base, rec = openai_server
    async with OpenAITTS(OpenAIEndpoint(base), voice="slow") as tts:
        async with aclosing(tts.synthesize("A long text.")) as audio:
            async for _ in audio:
                break

        await asyncio.wait_for(rec.client_gone.wait(), 3)
    assert rec.sent_chunks < 100  # 5 s of audio would have been ~160 pieces


async def test_gpt_sovits_streams_wav(sovits_server, fakes):
    url, rec = sovits_server
    async with GPTSoVITSTTS(url, ref_audio_path="ref.wav", prompt_text="参考文本", text_lang="zh") as tts:
        chunks = await collect(tts.synthesize("你好。"))
    assert len(chunks) > 3
    np.testing.assert_allclose(
        np.concatenate(chunks), expected_16k(fakes.tone_pcm16(fakes.SOVITS_RATE, 0.5), fakes.SOVITS_RATE), atol=1e-4
    )
    assert rec.requests[0] == {
        "text": "你好。",
        "text_lang": "zh",
        "ref_audio_path": "ref.wav",
        "prompt_text": "参考文本",
        "prompt_lang": "zh",
        "media_type": "wav",
        "streaming_mode": True,
    }


async def test_gpt_sovits_error_shows_the_server_message(sovits_server):
    url, _ = sovits_server
    async with GPTSoVITSTTS(url, ref_audio_path="missing.wav") as tts:
        with pytest.raises(TTSError, match=r"400.*missing.wav not exists"):
            await collect(tts.synthesize("你好。"))


async def test_gpt_sovits_rejects_a_non_wav_stream(openai_server):
    base, _ = openai_server  # /v1/audio/speech answers raw PCM, not WAV: point the backend at it
    tts = GPTSoVITSTTS(base.removesuffix("/v1"), ref_audio_path="ref.wav")
    tts.url = base + "/audio/speech"
    async with tts:
        with pytest.raises(TTSError, match="not a WAV"):
            await collect(tts.synthesize("hello"))


class _ToLoopback(aiohttp.abc.AbstractResolver):
    """DNS override: every host name resolves to 127.0.0.1."""

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
        ]

    async def close(self):
        pass


async def test_edge_tts_connection_failure_is_quick_tts_error():
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 443)) == 0:
            pytest.skip("something listens on 127.0.0.1:443")
    start = time.monotonic()
    with pytest.raises(TTSError, match="edge-tts failed"):
        await collect(EdgeTTS("en-US-AriaNeural", resolver=_ToLoopback()).synthesize("Hello."))
    assert time.monotonic() - start < 3
    with pytest.raises(TTSError, match="edge-tts: Invalid voice 'not a voice'"):
        await collect(EdgeTTS("not a voice", resolver=_ToLoopback()).synthesize("Hello."))
