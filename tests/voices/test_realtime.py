"""The Realtime client (GA protocol, through the openai SDK) against the local fake, which refuses what the real
service refuses."""

import asyncio
import json

import numpy as np
import pytest
import websockets
from scipy.signal import resample_poly

from core.audio import float_to_pcm16
from voices.openai_api import OpenAIEndpoint
from voices.realtime import (
    AudioDelta,
    RealtimeAuthError,
    RealtimeClient,
    RealtimeError,
    ResponseDone,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    UserTranscript,
    session_config,
)


def client(url, key="sk-rt", **kw):
    return RealtimeClient(OpenAIEndpoint(api_key=key), url=url, **kw)


async def events_until(client, kind):
    async def collect():
        out = []
        async for event in client.events():
            out.append(event)
            if isinstance(event, kind):
                return out
        raise AssertionError(f"connection closed before {kind.__name__}")

    return await asyncio.wait_for(collect(), 10)


async def test_text_in_audio_and_transcript_out_with_the_ga_session(realtime_server, fakes):
    url, rec = realtime_server
    async with client(url, model="gpt-realtime") as rt:
        await rt.update_session(session_config("Be nice.", "marin", "semantic_vad"))
        await rt.send_text("hello")
        events = await events_until(rt, ResponseDone)
    assert rec.query["model"] == "gpt-realtime"
    assert rec.headers["Authorization"] == "Bearer sk-rt" and "OpenAI-Beta" not in rec.headers
    assert rec.types() == ["session.update", "conversation.item.create", "response.create"]
    session = rec.events[0]["session"]
    assert session["type"] == "realtime" and session["output_modalities"] == ["audio"]
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
    sent = [e["type"] for e in rec.sent]
    assert "session.updated" in sent and "error" not in sent  # the service took the GA session as it is
    assert "conversation.item.added" in sent
    assert rec.events[1]["item"]["content"] == [{"type": "input_text", "text": "hello"}]

    audio = [e for e in events if isinstance(e, AudioDelta)]
    text = [e.text for e in events if isinstance(e, TranscriptDelta)]
    assert isinstance(events[-1], ResponseDone) and events[-1].status == "completed"
    assert "".join(text) == "".join(fakes.REALTIME_TEXT)
    # Deltas come out one by one as they arrive (the tiny 17-sample one may only be held back), in order.
    assert len(audio) >= len(fakes.REALTIME_SAMPLES) - 1
    assert isinstance(events[0], AudioDelta) and isinstance(events[1], TranscriptDelta)
    pcm = fakes.tone_pcm16(24000, sum(fakes.REALTIME_SAMPLES) / 24000)
    expected = resample_poly(np.frombuffer(pcm, "<i2") / 32768.0, 2, 3)
    got = np.concatenate([e.audio for e in audio])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)


async def test_cancel_stops_the_response_and_drops_its_late_audio(realtime_server):
    url, rec = realtime_server
    async with client(url) as rt:
        await rt.send_text("long")
        seen = []
        async for event in rt.events():
            seen.append(event)
            if len(seen) == 4:
                await rt.cancel()
            if isinstance(event, ResponseDone):
                break
        await asyncio.wait_for(rec.cancelled.wait(), 2)
        await rt.send_text("hello")  # the next response works normally on the same connection
        again = await events_until(rt, ResponseDone)
    assert rec.types()[-3] == "response.cancel"
    after_cancel = seen[4:]
    assert len(after_cancel) == 1 and isinstance(after_cancel[0], ResponseDone)  # the late delta was dropped
    assert after_cancel[0].status == "cancelled"
    assert rec.deltas_sent < 40 * 5  # the service stopped early
    assert again[-1].status == "completed" and any(isinstance(e, AudioDelta) for e in again)


async def test_microphone_audio_gets_turn_detection_a_transcript_and_an_answer(realtime_server, fakes):
    url, rec = realtime_server
    t = np.arange(int(24000 * 1.2)) / 24000
    speech = (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    silence = np.zeros(24000, np.float32)
    async with client(url) as rt:
        await rt.update_session(session_config("Be nice."))
        for part in np.array_split(np.concatenate([silence[:4800], speech, silence]), 50):  # ~45 ms pieces
            await rt.append_audio(float_to_pcm16(part))
        events = await events_until(rt, ResponseDone)
    kinds = [type(e) for e in events]
    order = [SpeechStarted, SpeechStopped, UserTranscript, AudioDelta]
    assert [kinds.index(kind) for kind in order] == sorted(kinds.index(kind) for kind in order)
    transcript = next(e for e in events if isinstance(e, UserTranscript))
    assert transcript.text == fakes.heard_transcript(round(1000 * (0.2 + 1.2 + 0.5)) // 20 * 20)
    heard = np.concatenate(rec.heard) / 32767.0
    np.testing.assert_allclose(heard[4800 : 4800 + len(speech)], speech, atol=1e-4)  # PCM16 at 24 kHz, unchanged


async def test_a_beta_shaped_client_is_refused_as_the_service_does(realtime_server):
    url, _ = realtime_server
    # The retired beta header: an error event, then the socket is closed.
    async with websockets.connect(
        url + "?model=gpt-realtime", additional_headers={"Authorization": "Bearer sk-rt", "OpenAI-Beta": "realtime=v1"}
    ) as ws:
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and error["error"]["code"] == "beta_api_shape_disabled"
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    # Beta session fields and values, and beta response fields, are refused by the GA interface.
    async with client(url) as rt:
        await rt.update_session({"modalities": ["audio", "text"], "voice": "alloy", "instructions": "x"})
        await rt.update_session({"type": "realtime", "voice": "alloy"})
        await rt.update_session({"type": "realtime", "audio": {"input": {"format": "pcm16"}}})
        await rt.send({"type": "response.create", "response": {"modalities": ["audio"]}})
        errors = await asyncio.wait_for(_errors(rt, 4), 5)
    assert [e.code for e in errors] == ["unknown_parameter", "unknown_parameter", "invalid_value", "unknown_parameter"]
    assert "session.modalities" in errors[0].message and "session.voice" in errors[1].message
    assert "response.modalities" in errors[3].message


async def _errors(rt, n):
    errors = []
    async for event in rt.events():
        if isinstance(event, ServerError):
            errors.append(event)
            if len(errors) == n:
                return errors


async def test_bad_credentials_and_connection_errors(realtime_server, fakes):
    url, rec = realtime_server
    with pytest.raises(RealtimeAuthError, match=r"HTTP 401: Incorrect API key provided: sk-bad"):
        await client(url, key="sk-bad-key").connect()
    rec.refusals = 1
    with pytest.raises(RealtimeError, match=r"HTTP 503") as info:
        await client(url).connect()
    assert not isinstance(info.value, RealtimeAuthError)
    with pytest.raises(RealtimeError, match="cannot connect"):
        await client(f"ws://127.0.0.1:{fakes.free_port()}/v1/realtime").connect()
    with pytest.raises(RealtimeError, match="not connected"):
        await client(url).send_text("hi")


async def test_a_dropped_socket_ends_the_events_with_an_error(realtime_server):
    url, rec = realtime_server
    async with client(url) as rt:
        await rt.send_text("long")

        async def drop_on_first_audio() -> None:
            async for event in rt.events():
                if isinstance(event, AudioDelta):
                    rec.drop()

        with pytest.raises(RealtimeError, match="connection was lost"):
            await drop_on_first_audio()


async def test_azure_openai_realtime_uses_the_deployment_the_api_version_and_its_key(realtime_server):
    url, rec = realtime_server
    azure = url.removesuffix("/v1/realtime")
    endpoint = OpenAIEndpoint(
        azure_endpoint=azure.replace("ws://", "http://"), api_version="2025-08-28", api_key="az-key"
    )
    async with RealtimeClient(endpoint, "my-realtime", url=azure + "/openai/realtime") as rt:
        await rt.send_text("hello")
        events = await events_until(rt, ResponseDone)
    assert events[-1].status == "completed"
    assert rec.query["api-version"] == "2025-08-28" and rec.query["deployment"] == "my-realtime"
    assert rec.headers["api-key"] == "az-key"
