"""The page's microphone over the same peer connection: Silero VAD -> ASR -> chat, and barge-in (not on noise)."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server import voice_input
from server.config import parse_args
from testing import fake_services
from testing.receiver_audio import spoken
from testing.server_client import (
    ScriptedMicrophone,
    connect_with_events,
    is_speaking,
    until,
)

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_spoken_question_interrupts_the_avatar_is_transcribed_and_answered(serve, config) -> None:
    question = "What is the weather like today?"
    speech = await spoken(question)
    async with fake_services.openai_service() as (base, rec):
        async with serve(config, llm_base_url=base, llm_model="ok") as server:
            mic = ScriptedMicrophone()
            client, events, sse = await connect_with_events(server, mic)
            sid = client.sessionid
            loading = asyncio.create_task(server.state.services.transcriber())  # start loading the model meanwhile

            def speaking():
                return is_speaking(server, sid)

            long_text = " ".join(f"This is sentence {i}, spoken to keep the avatar busy." for i in range(15))
            await server.post("/human", {"sessionid": sid, "text": long_text, "type": "echo"})
            assert await until(speaking, 5)
            mic.play(speech)
            assert await until(lambda: any(e.get("event") == "user_speech_start" for e in events), 5)
            t_start = time.monotonic()
            while await speaking():  # barge-in: the avatar stops as soon as the user starts talking
                assert time.monotonic() - t_start < 0.6, "the avatar kept talking over the user"
                await asyncio.sleep(0.03)
            n_started = sum(e.get("status") == "start" for e in events)
            assert await until(lambda: any(e.get("event") == "user_text" for e in events), 15)
            heard = next(e["text"] for e in events if e.get("event") == "user_text")
            assert "weather" in heard.lower(), heard
            assert await until(lambda: len(rec.requests) >= 1, 5)
            assert rec.requests[0]["messages"][-1] == {"role": "user", "content": heard}
            answer = "".join(fake_services.ANSWER_DELTAS)
            assert await until(
                lambda: " ".join(e["text"] for e in events if e.get("status") == "end")[-len(answer) :] == answer, 15
            )
            # none of the interrupted echo's later sentences started after the barge-in
            started = [e["text"] for e in events if e.get("status") == "start"][n_started:]
            assert not any(t.startswith("This is sentence") for t in started), started
            await loading  # loaded by now: the user's speech was transcribed
            sse.cancel()
            await client.close()


async def test_a_noisy_room_does_not_interrupt_the_avatar(serve, config) -> None:
    async with serve(config) as server:
        mic = ScriptedMicrophone()
        client, events, sse = await connect_with_events(server, mic)
        sid = client.sessionid
        long_text = " ".join(f"This is sentence {i}, spoken to keep the avatar busy." for i in range(6))
        await server.post("/human", {"sessionid": sid, "text": long_text, "type": "echo"})
        assert await until(lambda: is_speaking(server, sid), 5)
        rng = np.random.default_rng(5)
        spectrum = np.fft.rfft(rng.standard_normal(48000 * 3))
        pink = np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(len(spectrum)), 1)), 48000 * 3)
        mic.play(0.2 * pink / np.sqrt(np.mean(pink**2)))  # 3 s of loud pink noise (-14 dBFS)
        while mic.playing:
            assert await is_speaking(server, sid), "the noise interrupted the avatar"
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.6)  # the last of it went through the VAD
        assert await is_speaking(server, sid)
        assert not any(e.get("event") in ("user_speech_start", "user_text") for e in events), events
        sse.cancel()
        await client.close()


def test_asr_and_realtime_options() -> None:
    c = parse_args([])
    assert (c.asr_model, c.asr_language, c.asr_device, c.realtime_turn_detection) == (None, None, "cpu", "server_vad")
    c = parse_args(
        [
            "--asr_model",
            "large-v3",
            "--asr_language",
            "zh",
            "--asr_device",
            "cuda",
            "--realtime_turn_detection",
            "semantic_vad",
            "--llm_azure_endpoint",
            "https://x.openai.azure.com",
            "--llm_api_version",
            "2025-04-01-preview",
        ]
    )
    assert (c.asr_model, c.asr_language, c.asr_device) == ("large-v3", "zh", "cuda")
    assert c.realtime_turn_detection == "semantic_vad"
    assert (c.llm_azure_endpoint, c.llm_api_version) == ("https://x.openai.azure.com", "2025-04-01-preview")
    assert parse_args(["--asr_model_dir", "/models/whisper"]).asr_model == "/models/whisper"  # the older name


async def test_without_a_vad_model_the_session_goes_on_without_voice_input(serve, config, monkeypatch, caplog) -> None:
    def missing(*args: object) -> None:
        raise FileNotFoundError("Silero VAD model not found in faster-whisper's assets")

    monkeypatch.setattr(voice_input.VoiceActivityDetector, "__init__", missing)
    async with serve(config) as server:
        mic = ScriptedMicrophone()
        client, events, sse = await connect_with_events(server, mic)
        # (an asr_error event is published too, but before this client's /sse stream was open)
        assert await until(
            lambda: any("voice input is off: Silero VAD model not found" in r.getMessage() for r in caplog.records), 5
        )
        await server.post("/human", {"sessionid": client.sessionid, "text": "Still here.", "type": "echo"})
        assert await until(lambda: any(e.get("status") == "end" for e in events), 8)
        sse.cancel()
        await client.close()


def test_an_azure_endpoint_takes_its_key_from_azure_openai_api_key(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key")
    assert parse_args([]).llm_api_key == "sk-openai"
    assert parse_args(["--llm_azure_endpoint", "https://x.openai.azure.com"]).llm_api_key == "az-key"
    assert parse_args(["--llm_azure_endpoint", "https://x.openai.azure.com", "--llm_api_key", "k"]).llm_api_key == "k"
