"""GET /ws/audio: speech streamed over a WebSocket into a connected session (an aiortc client receives it), its
events back on the socket, back-pressure, interrupts, and every kind of bad input closed with a clear code."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np
import pytest

from core.audio import float_to_pcm16
from server import ws_audio
from server.ws_audio import STREAMS
from testing.server_client import Client, Server, is_speaking, offer_sdp, until

pytestmark = pytest.mark.usefixtures("loopback_only")

TOKEN = "ws-test-token-0123456789abcdef"


def tone(seconds: float, rate: int, freq: float = 220.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    return float_to_pcm16(0.3 * np.sin(2 * np.pi * freq * t))


async def connected(server: Server) -> tuple[Client, str]:
    client = Client(server)
    sid = await client.connect()
    await client.wait_video(3)
    return client, sid


def ws_url(server: Server, sid: str, **query: str) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{server.url.replace('http', 'ws')}/ws/audio?sessionid={sid}{extra}"


async def start(ws: aiohttp.ClientWebSocketResponse, rate: int) -> dict:
    await ws.send_json({"type": "start", "sample_rate": rate})
    return await ws.receive_json(timeout=5)


async def messages_until(ws: aiohttp.ClientWebSocketResponse, done, timeout: float = 15.0) -> list[dict]:
    """The JSON messages the server sends, until done(messages) holds."""
    got: list[dict] = []
    async with asyncio.timeout(timeout):
        while not done(got):
            got.append(await ws.receive_json())
    return got


async def send_in_pieces(ws: aiohttp.ClientWebSocketResponse, pcm: bytes, piece_bytes: int) -> None:
    for i in range(0, len(pcm), piece_bytes):
        await ws.send_bytes(pcm[i : i + piece_bytes])


async def test_streamed_audio_is_spoken_with_its_subtitle_and_events(serve, config) -> None:
    async with serve(config) as server:
        client, sid = await connected(server)
        async with server.http.ws_connect(ws_url(server, sid)) as ws:
            ready = await start(ws, 24000)
            assert ready["type"] == "ready" and ready["sample_rate"] == 24000 and ready["max_message_bytes"] == 48000
            await ws.send_json({"type": "text", "text": "Streamed hello."})
            heard_before = len(client.audio_levels)
            await send_in_pieces(ws, tone(1.5, 24000), 960)  # 20 ms pieces, faster than real time
            await ws.send_json({"type": "end_of_utterance"})
            got = await messages_until(ws, lambda m: {"status": "end", "text": "Streamed hello."} in m)
            assert {"status": "start", "text": "Streamed hello."} in got and {
                "event": "speaking",
                "speaking": True,
            } in got
            loud = [level for level in client.audio_levels[heard_before:] if level > 0.1]
            assert len(loud) >= 50, len(loud)  # most of the 1.5 s tone (75 frames of 20 ms) reached the client
            more = await messages_until(ws, lambda m: {"event": "speaking", "speaking": False} in m, 5)
            assert more[-1] == {"event": "speaking", "speaking": False}
            assert not await is_speaking(server, sid)
            # the same session takes a second utterance at another rate of the stream's (it is fixed: 24 kHz)
            await send_in_pieces(ws, tone(0.3, 24000), 4800)
            await ws.send_json({"type": "flush"})
            await messages_until(ws, lambda m: {"status": "end", "text": ""} in m)
        assert await until(lambda: not server.app[STREAMS], 5)
        await client.close()


async def test_the_socket_is_not_read_faster_than_the_session_takes_speech(serve, config) -> None:
    async with serve(config, max_queued_seconds=2.0, max_audio_seconds=1.0) as server:
        client, sid = await connected(server)
        live = server.state.registry.get(sid)
        peak = 0.0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, live.queued_seconds)
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        try:
            async with server.http.ws_connect(ws_url(server, sid)) as ws:
                await start(ws, 16000)
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await send_in_pieces(ws, tone(5.0, 16000), 8000)  # 0.25 s pieces as fast as TCP takes them
                await ws.send_json({"type": "end_of_utterance"})
                await messages_until(ws, lambda m: any(e.get("status") == "end" for e in m), 15)
                elapsed = loop.time() - t0
        finally:
            watcher.cancel()
        assert peak <= 2.0 + 0.3, peak  # never more than --max_queued_seconds (plus one piece) waiting
        assert elapsed >= 4.0, elapsed  # it was played in real time, not dropped
        await client.close()


async def test_interrupt_on_the_socket_and_from_http(serve, config) -> None:
    async with serve(config) as server:
        client, sid = await connected(server)
        async with server.http.ws_connect(ws_url(server, sid)) as ws:
            await start(ws, 48000)
            await send_in_pieces(ws, tone(3.0, 48000), 9600)
            await messages_until(ws, lambda m: {"event": "speaking", "speaking": True} in m)
            await ws.send_json({"type": "interrupt"})
            await messages_until(ws, lambda m: {"event": "speaking", "speaking": False} in m, 3)
            assert server.state.registry.get(sid).queued_seconds == 0

            # an interrupt from elsewhere cuts the utterance: the rest of it is dropped until its end
            await send_in_pieces(ws, tone(1.0, 48000), 9600)
            await messages_until(ws, lambda m: {"event": "speaking", "speaking": True} in m)
            status, _ = await server.post("/interrupt_talk", {"sessionid": sid})
            assert status == 200
            await send_in_pieces(ws, tone(1.0, 48000), 9600)
            got = await messages_until(ws, lambda m: {"event": "interrupted"} in m, 5)
            assert not any(e.get("status") == "end" for e in got)
            await ws.send_json({"type": "end_of_utterance"})
            await send_in_pieces(ws, tone(0.4, 48000), 9600)  # a new utterance plays again
            await ws.send_json({"type": "end_of_utterance"})
            await messages_until(ws, lambda m: any(e.get("status") == "end" for e in m), 10)
        await client.close()


async def test_bad_input_gets_a_clear_status_or_close_code(serve, config) -> None:
    async with serve(config) as server:
        client, sid = await connected(server)
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:
            await server.http.ws_connect(ws_url(server, "nobody"))
        assert e.value.status == 404
        status, body = await server.get(f"/ws/audio?sessionid={sid}")  # not a WebSocket
        assert status == 400 and b"WebSocket" in body

        async def closed_with(*messages: object) -> tuple[int, str]:
            async with server.http.ws_connect(ws_url(server, sid)) as ws:
                for m in messages:
                    if isinstance(m, bytes):
                        await ws.send_bytes(m)
                    elif isinstance(m, str):
                        await ws.send_str(m)
                    else:
                        await ws.send_json(m)
                said: list[dict] = []
                while (msg := await ws.receive(timeout=5)).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                ):
                    said.append(msg.json())
                if ws.close_code != 1009:  # (aiohttp's reader refuses an oversized message by itself)
                    assert said[-1]["event"] == "error" and said[-1]["code"] == ws.close_code, said
                    assert said[-1]["text"].startswith(msg.extra or ""), (said, msg.extra)
                return ws.close_code, msg.extra or ""

        start16 = {"type": "start", "sample_rate": 16000}
        cases = [
            ((b"\x00\x00" * 160,), 1008, "start message"),
            (({"type": "start", "sample_rate": 44100},), 1003, "16000, 24000, 48000"),
            (({"type": "start"},), 1003, "sample_rate"),
            (({"type": "start", "sample_rate": True},), 1003, "sample_rate"),
            (("not json",), 1008, "JSON"),
            (({"type": "hello"},), 1008, "start"),
            ((start16, b"\x00" * 321), 1007, "even number of bytes"),
            ((start16, b"\x00" * 32002), 1009, "at most 1 s"),
            ((start16, b"\x00" * 200_000), 1009, ""),  # over any rate's limit: refused by the reader itself
            ((start16, {"type": "dance"}), 1008, "unknown message type"),
            ((start16, {"type": "text", "text": 5}), 1008, "'text'"),
            ((start16, "[1]"), 1008, "JSON object"),
            (({"type": "start", "sample_rate": "é" * 80},), 1003, "sample_rate"),  # a reason cut to fit, whole
        ]
        for messages, code, words in cases:
            got_code, reason = await closed_with(*messages)
            assert got_code == code and words in reason, (
                messages[-1] if len(str(messages)) < 200 else code,
                got_code,
                reason,
            )
        assert await until(lambda: not server.app[STREAMS], 5)

        # one stream per session
        async with server.http.ws_connect(ws_url(server, sid)) as ws:
            await start(ws, 16000)
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await server.http.ws_connect(ws_url(server, sid))
            assert e.value.status == 409
        assert await until(lambda: not server.app[STREAMS], 5)
        await client.close()


async def test_a_client_gone_mid_stream_leaves_nothing_behind(serve, config) -> None:
    async with serve(config) as server:
        client, sid = await connected(server)
        live = server.state.registry.get(sid)
        ws = await server.http.ws_connect(ws_url(server, sid))
        await start(ws, 16000)
        await send_in_pieces(ws, tone(0.6, 16000), 3200)
        ws._response.connection.transport.abort()  # the TCP connection drops: no close frame, no end_of_utterance
        assert await until(lambda: not server.app[STREAMS], 5)
        assert await until(lambda: live.voice.pending == 0 and not live.session.speaking, 5)  # what came is played
        tasks = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith(("ws-audio", "audio-stream"))]
        assert tasks == []
        # the session goes on: another stream, then an ended session closes its socket with 1001
        async with server.http.ws_connect(ws_url(server, sid)) as ws2:
            await start(ws2, 16000)
            await server.state.registry.end(sid, "test")
            msg = await ws2.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and ws2.close_code == 1001 and "ended" in msg.extra
        assert await until(lambda: not server.app[STREAMS], 5)
        await client.close()


async def test_the_socket_needs_the_token_when_one_is_configured(serve, config) -> None:
    async with serve(config, auth_tokens=(TOKEN,)) as server:
        async with server.http.post(
            server.url + "/offer",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"sdp": await offer_sdp(), "type": "offer"},
        ) as resp:
            sid = (await resp.json())["sessionid"]  # a session (its client never connects: enough here)
        for url in (ws_url(server, sid), ws_url(server, sid, token="wrong-token-0123456789")):
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await server.http.ws_connect(url)
            assert e.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError) as e:  # a page of another site, even with the token
            await server.http.ws_connect(ws_url(server, sid, token=TOKEN), origin="http://evil.example")
        assert e.value.status == 403
        for url, headers in (
            (ws_url(server, sid, token=TOKEN), {}),
            (ws_url(server, sid), {"Authorization": f"Bearer {TOKEN}"}),
        ):
            async with server.http.ws_connect(url, headers=headers) as ws:
                assert (await start(ws, 16000))["type"] == "ready"
            assert await until(lambda: not server.app[STREAMS], 5)


async def test_the_example_client_streams_a_wav_in_real_time(serve, config, tmp_path) -> None:
    import soundfile as sf

    from examples.ws_audio_client import load_pcm16, stream

    wav = tmp_path / "speech.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 200 * np.arange(int(0.8 * 22050)) / 22050), 22050)
    pcm, rate = load_pcm16(wav, None)
    assert rate == 16000 and len(pcm) == 2 * int(0.8 * 16000)  # 22.05 kHz is not taken: resampled
    async with serve(config, auth_tokens=(TOKEN,)) as server:
        async with server.http.post(
            server.url + "/offer",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json={"sdp": await offer_sdp(), "type": "offer"},
        ) as resp:
            sid = (await resp.json())["sessionid"]
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        events = await stream(server.url, sid, pcm, rate, token=TOKEN, text="From a file.", printer=lambda _: None)
        assert loop.time() - t0 >= 0.7  # paced in real time
        assert {"status": "start", "text": "From a file."} in events and events[-1] == {
            "status": "end",
            "text": "From a file.",
        }


async def test_server_shutdown_closes_open_streams(serve, config) -> None:
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        async with serve(config) as server:
            _, sid = await connected(server)
            ws = await http.ws_connect(ws_url(server, sid))
            await start(ws, 16000)
            await send_in_pieces(ws, tone(2.0, 16000), 3200)  # still speaking when the server stops
            t0 = loop.time()
        assert loop.time() - t0 < 10  # the stream did not hold the shutdown up
        msg = await ws.receive(timeout=5)
        while msg.type == aiohttp.WSMsgType.TEXT:  # events sent before the end
            msg = await ws.receive(timeout=5)
        # the server's close frame says why (read after the shutdown, this client answers it too late: its own
        # close_code is then 1006, the connection having been dropped after ws_audio.CLOSE_TIMEOUT_S)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001 and "ended" in msg.extra
        await ws.close()


async def test_an_utterance_left_open_is_ended_and_other_speech_goes_on(serve, config, monkeypatch) -> None:
    monkeypatch.setattr(ws_audio, "UTTERANCE_IDLE_S", 0.5)
    async with serve(config) as server:
        client, sid = await connected(server)
        async with server.http.ws_connect(ws_url(server, sid)) as ws:
            await start(ws, 16000)
            await ws.send_json({"type": "text", "text": "Left open."})
            await send_in_pieces(ws, tone(0.3, 16000), 3200)  # and then nothing: no end_of_utterance
            status, _ = await server.post("/human", {"sessionid": sid, "text": "After it.", "type": "echo"})
            assert status == 200
            got = await messages_until(ws, lambda m: {"status": "end", "text": "After it."} in m, 15)
            ends = [e["text"] for e in got if e.get("status") == "end"]
            assert ends == ["Left open.", "After it."]  # in order: the stream's utterance, then the sentence
        await client.close()
