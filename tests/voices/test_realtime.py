import asyncio
import base64

import numpy as np
import pytest
from scipy.signal import resample_poly

from voices.realtime import AudioDelta, RealtimeClient, RealtimeError, ResponseDone, ServerError, TranscriptDelta


async def events_until_done(client):
    out = []
    async for event in client.events():
        out.append(event)
        if isinstance(event, ResponseDone):
            return out
    raise AssertionError("connection closed before response.done")


@pytest.mark.parametrize("model", ["gpt-realtime", "beta-model"])  # GA and beta event names
async def test_text_in_audio_and_transcript_out(realtime_server, fakes, model):
    url, rec = realtime_server
    async with RealtimeClient(url, model=model, api_key="sk-rt") as client:
        await client.update_session({"instructions": "Be nice.", "voice": "alloy"})
        await client.send_text("hello")
        events = await events_until_done(client)
    assert rec.query["model"] == model
    assert rec.headers["Authorization"] == "Bearer sk-rt" and rec.headers["OpenAI-Beta"] == "realtime=v1"
    assert [e["type"] for e in rec.events] == ["session.update", "conversation.item.create", "response.create"]
    assert rec.events[0]["session"] == {"instructions": "Be nice.", "voice": "alloy"}
    assert rec.events[1]["item"]["content"] == [{"type": "input_text", "text": "hello"}]

    audio = [e for e in events if isinstance(e, AudioDelta)]
    text = [e.text for e in events if isinstance(e, TranscriptDelta)]
    assert events[-1] == ResponseDone("resp_1", "completed")
    assert "".join(text) == "".join(fakes.REALTIME_TEXT)
    # Deltas come out one by one as they arrive (the tiny 17-sample one may
    # only be held back), in order, interleaved with their transcript.
    assert len(audio) >= len(fakes.REALTIME_SAMPLES) - 1
    assert isinstance(events[0], AudioDelta) and isinstance(events[1], TranscriptDelta)
    pcm = fakes.tone_pcm16(24000, sum(fakes.REALTIME_SAMPLES) / 24000)
    expected = resample_poly(np.frombuffer(pcm, "<i2") / 32768.0, 2, 3)
    got = np.concatenate([e.audio for e in audio])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-4)


async def test_cancel_stops_the_response_and_drops_its_late_audio(realtime_server):
    url, rec = realtime_server
    async with RealtimeClient(url, model="gpt-realtime", beta=False) as client:
        await client.send_text("long")
        seen = []
        async for event in client.events():
            seen.append(event)
            if len(seen) == 4:
                await client.cancel()
            if isinstance(event, ResponseDone):
                break
        await asyncio.wait_for(rec.cancelled.wait(), 2)
        # Next response works normally on the same connection.
        await client.send_text("hello")
        again = await events_until_done(client)
    assert "OpenAI-Beta" not in rec.headers
    assert rec.events[-3]["type"] == "response.cancel"
    after_cancel = seen[4:]
    assert after_cancel == [ResponseDone("resp_1", "cancelled")]  # the late delta was dropped
    assert rec.deltas_sent < 40 * 5  # the server stopped early
    assert again[-1] == ResponseDone("resp_2", "completed")
    assert any(isinstance(e, AudioDelta) for e in again)


async def test_append_audio_sends_base64_pcm16_at_24k(realtime_server):
    url, rec = realtime_server
    t = np.arange(1600) / 16000
    mic = (0.25 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    async with RealtimeClient(url) as client:
        await client.append_audio(mic)
        await client.commit_audio()
        await asyncio.sleep(0.1)
    assert [e["type"] for e in rec.events] == ["input_audio_buffer.append", "input_audio_buffer.commit"]
    sent = np.frombuffer(base64.b64decode(rec.events[0]["audio"]), "<i2") / 32767.0
    np.testing.assert_allclose(sent, resample_poly(mic.astype(np.float64), 3, 2), atol=2e-4)


async def test_server_error_event_and_connection_errors(realtime_server, fakes):
    url, _ = realtime_server
    async with RealtimeClient(url) as client:
        await client.update_session({"fail": True})
        async for event in client.events():
            assert event == ServerError("bad session", "invalid_value")
            break
    with pytest.raises(RealtimeError, match="cannot connect"):
        await RealtimeClient(f"ws://127.0.0.1:{fakes.free_port()}/v1/realtime").connect()
    with pytest.raises(RealtimeError, match="HTTP 404"):
        await RealtimeClient(url + "/nope").connect()
    with pytest.raises(RealtimeError, match="not connected"):
        await RealtimeClient(url).send_text("hi")
