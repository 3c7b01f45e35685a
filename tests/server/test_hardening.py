"""What an attacker or a clumsy client tries: recordings stopped at once, pools filled, sessions driven without
the token, speech piled up, interrupt under load, offers that can never connect, clients killed mid-speech,
hostile bodies and slow connections. Each test fails on the code before the hardening."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from pipeline.session import Session
from server.errors import ApiError
from server.recording import Recorder
from testing.server_client import (
    Client,
    Server,
    connect_with_events,
    is_speaking,
    offer_sdp,
    until,
    upload,
)
from voices._threads import ASR_POOL, LLM_POOL, TTS_POOL

pytestmark = pytest.mark.usefixtures("loopback_only")

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def post(server: Server, path: str, body: object, headers: dict | None = None) -> tuple[int, dict]:
    async with server.http.post(server.url + path, json=body, headers=headers or {}) as resp:
        return resp.status, await resp.json(content_type=None)


def silence_flac(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(16000 * seconds), np.float32), 16000, format="FLAC")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------- recording


async def test_a_recording_stopped_before_the_first_frame_ends_at_once_with_a_clear_error(
    avatars_dir, engine, tmp_path
) -> None:
    """The freeze: end_record before any tick reached the recorder. The old thread consumed the stop marker,
    raised "nothing was recorded" and then waited for a second marker forever; finish() joined it forever."""
    from musetalk.avatar import load_avatar

    session = Session("s1", load_avatar("demo", avatars_dir), engine, stepped=True)  # no tick unless stepped
    await session.start()
    recorders = [Recorder(session, tmp_path / f"r{i}.mp4") for i in range(8)]  # more than the default pool
    for recorder in recorders:
        recorder.start()
    for recorder in recorders:
        with pytest.raises(ApiError) as e:
            await asyncio.wait_for(recorder.finish(), 5)
        assert e.value.status == 409 and "nothing was recorded" in str(e.value)
        with pytest.raises(ApiError):
            await asyncio.wait_for(recorder.finish(), 5)  # idempotent: the same end again
        recorder._thread.join(5)  # it resolved finish() as its last step
        assert not recorder._thread.is_alive() and not recorder.path.exists()
    assert not list(tmp_path.iterdir())  # no partial files left
    await session.close()


async def test_a_recording_whose_encoder_fails_ends_with_a_500_and_frees_everything(
    avatars_dir, engine, tmp_path, monkeypatch
) -> None:
    from musetalk.avatar import load_avatar

    session = Session("s2", load_avatar("demo", avatars_dir), engine, stepped=True)
    await session.start()
    recorder = Recorder(session, tmp_path / "r.mp4")

    def disk_full(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(recorder, "_open", disk_full)
    recorder.start()
    for _ in range(5):
        session.step()
    with pytest.raises(ApiError) as e:
        await asyncio.wait_for(recorder.finish(), 5)
    assert e.value.status == 500 and "No space left" in str(e.value)
    recorder._thread.join(5)
    assert not recorder._thread.is_alive() and recorder._queue.empty() and not list(tmp_path.iterdir())
    session.step()  # the failed recorder is no longer a sink
    assert recorder._queue.empty()
    await session.close()


async def test_start_and_end_record_back_to_back_never_freeze_the_server(serve, config) -> None:
    async with serve(config) as server:
        client, events, _ = await connect_with_events(server)
        sid = client.sessionid
        for _ in range(8):  # as fast as the client can: some end before the first frame, some after
            status, reply = await post(server, "/record", {"sessionid": sid, "type": "start_record"})
            assert status == 200, reply
            status, reply = await asyncio.wait_for(
                post(server, "/record", {"sessionid": sid, "type": "end_record"}), 10
            )
            assert (status, reply["code"]) in ((200, 0), (409, -1)), reply
        n = len(client.video_times)
        status, _ = await post(server, "/human", {"sessionid": sid, "text": "Still here.", "type": "echo"})
        assert status == 200
        assert await until(lambda: any(e.get("status") == "end" for e in events), 10)  # TTS still speaks
        assert len(client.video_times) > n + 10  # video still flows
        assert (await post(server, "/record", {"sessionid": sid, "type": "start_record"}))[0] == 200
        recorder = server.state.registry.get(sid).recorder
        await asyncio.sleep(0.5)
        await client.close()  # the session ends mid-recording: the recording is closed with it
        assert await server.wait_sessions(0, timeout=10)
        recorder._thread.join(5)
        assert not recorder._thread.is_alive() and recorder.path.exists() and recorder.frames > 0


async def test_filled_pools_do_not_stop_video(serve, config) -> None:
    """TTS, LLM, ASR and upload decoding each have a bounded pool of their own: filling all of them leaves the
    default executor, where aiortc encodes the video, free."""
    async with serve(config) as server:
        client = Client(server)
        await client.connect()
        await client.wait_video(5)
        release = threading.Event()
        pools = [TTS_POOL, LLM_POOL, ASR_POOL, server.state.decoder.pool]
        blocked = [asyncio.ensure_future(pool.run(release.wait)) for pool in pools for _ in range(pool.workers + 2)]
        try:
            await asyncio.sleep(0.3)
            n = len(client.video_times)
            assert await until(lambda: len(client.video_times) >= n + 25, 10), "video stopped"
        finally:
            release.set()
            await asyncio.gather(*blocked)
        await client.close()


# --------------------------------------------------------------------------------------------- access


async def test_with_a_token_nobody_else_can_drive_or_watch_a_session(serve, config) -> None:
    async with serve(config, auth_tokens=(TOKEN,)) as server:
        assert (await post(server, "/offer", {"sdp": await offer_sdp(), "type": "offer"}))[0] == 401
        server.http.headers.update(AUTH)  # the owner's client sends the token with every request
        client, events, _ = await connect_with_events(server)
        sid = client.sessionid
        del server.http.headers["Authorization"]
        attempts = [
            ("/human", {"sessionid": sid, "text": "You have been taken over.", "type": "echo"}),
            ("/interrupt_talk", {"sessionid": sid}),
            ("/is_speaking", {"sessionid": sid}),
            ("/record", {"sessionid": sid, "type": "start_record"}),
            ("/set_audiotype", {"sessionid": sid, "audiotype": 2}),
        ]
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": TOKEN}):
            for path, body in attempts:
                status, reply = await post(server, path, body, headers)
                assert status == 401 and reply["code"] == -1 and "token" in reply["msg"], (path, headers, reply)
            for path in (f"/sse?sessionid={sid}", f"/record/{sid}", "/metrics"):
                async with server.http.get(server.url + path, headers=headers) as resp:
                    assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer", path
        async with server.http.get(server.url + "/healthz") as resp:  # open, and tells no session id
            assert resp.status == 200 and sid not in await resp.text()
        async with server.http.get(server.url + "/") as resp:
            assert resp.status == 200  # the page itself is open: it asks for the token
        assert events == [] and not await is_speaking_with(server, sid)
        status, _ = await post(server, "/human", {"sessionid": sid, "text": "Mine.", "type": "echo"}, AUTH)
        assert status == 200
        async with server.http.get(f"{server.url}/metrics?token={TOKEN}") as resp:  # ?token= as for EventSource
            text = await resp.text()
            assert resp.status == 200 and "avatar_sessions 1.0" in text and sid not in text
        assert await until(lambda: any(e.get("status") == "end" for e in events), 10)
        await client.close()


async def is_speaking_with(server: Server, sid: str) -> bool:
    return (await post(server, "/is_speaking", {"sessionid": sid}, AUTH))[1]["data"]


def test_the_open_access_warning() -> None:
    from server.app import open_access_warning
    from server.config import ServerConfig

    assert "--auth_token" in open_access_warning(ServerConfig(host="0.0.0.0"))
    assert open_access_warning(ServerConfig(host="127.0.0.1")) is None
    assert open_access_warning(ServerConfig(host="localhost")) is None
    assert open_access_warning(ServerConfig(host="0.0.0.0", auth_tokens=(TOKEN,))) is None


# --------------------------------------------------------------------------------------------- bounds


async def test_speech_piled_up_is_refused_with_429_and_interrupt_frees_it(serve, config) -> None:
    async with serve(config, max_audio_seconds=119.5, max_queued_seconds=150.0) as server:
        client = Client(server)
        sid = await client.connect()
        live = server.state.registry.get(sid)
        tracemalloc.start()
        try:
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            long_silence = silence_flac(119)  # 28 KB of FLAC, 7.6 MB decoded
            statuses = [(await upload(server, sid, long_silence))[0] for _ in range(20)]
            assert statuses[0] == 200 and set(statuses[1:]) == {429}, statuses
            status, reply = await upload(server, sid, long_silence)
            assert status == 429 and "s of speech waiting" in reply["msg"]
            text = " ".join(f"Sentence {i} keeps the avatar talking for a while." for i in range(60))
            replies = [
                await post(server, "/human", {"sessionid": sid, "text": text, "type": "echo"}) for _ in range(12)
            ]
            refused = [r["msg"] for s, r in replies if s == 429]
            assert refused and "requests waiting to be spoken" in refused[0], replies
            held = tracemalloc.get_traced_memory()[0] - before
            assert (await post(server, "/interrupt_talk", {"sessionid": sid}))[0] == 200
            assert live.voice.pending == 0 and live.upload_seconds == 0 and live.session.queued_seconds == 0
            await asyncio.sleep(0.2)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0] - before
            print(f"held while queued: {held / 1e6:.1f} MB; after interrupt: {after / 1e6:.1f} MB")
            assert after < 20e6
            assert (await upload(server, sid, long_silence))[0] == 200  # room again
            assert (await upload(server, sid, long_silence))[0] == 429
            await client.close()  # closing with speech queued frees it too
            assert await server.wait_sessions(0, timeout=10)
            gc.collect()
            closed = tracemalloc.get_traced_memory()[0] - before
            print(f"after close: {closed / 1e6:.1f} MB")
            assert closed < 20e6
        finally:
            tracemalloc.stop()


async def test_interrupt_clears_three_long_queued_echo_requests(serve, config) -> None:
    async with serve(config) as server:
        client, events, _ = await connect_with_events(server)
        sid = client.sessionid
        for request in range(3):
            text = " ".join(f"Request {request} sentence {i} is queued." for i in range(120))
            assert (await post(server, "/human", {"sessionid": sid, "text": text, "type": "echo"}))[0] == 200
        assert await until(lambda: is_speaking(server, sid), 10)
        assert (await post(server, "/interrupt_talk", {"sessionid": sid}))[0] == 200
        live = server.state.registry.get(sid)
        assert not live.session.speaking or await until(lambda: not live.session.speaking, 2)  # the next tick
        n = len(events)
        await asyncio.sleep(2.0)
        started = [e for e in events[n:] if e.get("status") == "start"]
        assert started == [], f"interrupted requests still spoke: {started}"
        assert live.voice.pending == 0 and not await is_speaking(server, sid)
        await client.close()


async def test_sse_streams_per_session_are_limited(serve, config) -> None:
    async with serve(config, max_sse_per_session=2) as server:
        client = Client(server)
        sid = await client.connect()
        streams = [await server.http.get(f"{server.url}/sse", params={"sessionid": sid}) for _ in range(2)]
        assert all(s.status == 200 for s in streams)
        async with server.http.get(f"{server.url}/sse", params={"sessionid": sid}) as resp:
            assert resp.status == 429 and "/sse streams" in (await resp.json())["msg"]
        streams[0].close()
        assert await until(lambda: server.state.registry.get(sid).sse_streams == 1, 5)
        async with server.http.get(f"{server.url}/sse", params={"sessionid": sid}) as resp:
            assert resp.status == 200
        streams[1].close()
        await client.close()


# --------------------------------------------------------------------------------------------- offers


async def test_offers_that_can_never_connect_are_refused_before_taking_a_slot(serve, config) -> None:
    async with serve(config, max_session=1) as server:
        sdp = await offer_sdp()
        cases = {"a=fingerprint": "DTLS fingerprint", "a=ice-ufrag": "ICE user fragment", "a=ice-pwd": "ICE password"}
        for prefix, words in cases.items():
            broken = "\r\n".join(line for line in sdp.split("\r\n") if not line.startswith(prefix))
            status, reply = await post(server, "/offer", {"sdp": broken, "type": "offer"})
            assert status == 400 and words in reply["msg"], (prefix, reply)
        no_media = re.sub(r"m=(audio|video) \d+", r"m=\1 0", sdp)
        status, reply = await post(server, "/offer", {"sdp": no_media, "type": "offer"})
        assert status == 400 and "media section" in reply["msg"]
        assert await server.sessions() == 0 and not server.state.registry._reserved
        client = Client(server)
        await client.connect()  # the one slot is still free
        await client.close()


async def test_a_killed_client_is_ended_within_the_idle_timeout(serve, config) -> None:
    """SIGKILL: nothing says goodbye. aiortc would keep sending until ICE consent fails (~30 s); receiver
    reports stop at once, so the idle timeout bounds it."""
    async with serve(config, idle_timeout=2.0) as server:
        # Popen returns once the child is started; its output is read line by line below.
        peer = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "testing.peer_process", server.url],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            sid = (await asyncio.to_thread(peer.stdout.readline)).strip()
            live = server.state.registry.get(sid)
            assert live is not None
            assert await until(lambda: live.pc.connectionState == "connected", 10)
            await asyncio.sleep(3.0)  # connected and receiving for longer than the idle timeout: it stays
            assert server.state.registry.get(sid) is live
        finally:
            peer.send_signal(signal.SIGKILL)
            peer.wait()
        t_kill = time.monotonic()
        assert await until(lambda: server.state.registry.get(sid) is None, 20)
        ended = time.monotonic() - t_kill
        print(f"killed client freed after {ended:.1f} s (idle timeout 2 s)")
        assert ended < 15, "freed only by ICE consent, not by the idle timeout"


# --------------------------------------------------------------------------------------------- bodies


async def test_deep_json_and_zero_bit_wav_are_400(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        sid = await client.connect()
        deep = b"[" * 100_000 + b"]" * 100_000
        for route in ("/offer", "/human", "/is_speaking", "/record"):
            async with server.http.post(server.url + route, data=deep) as resp:
                reply = await resp.json()
                assert resp.status == 400 and "nested too deeply" in reply["msg"], (route, reply)
        pcm = np.zeros(16000, "<i2").tobytes()
        wav = (
            b"RIFF"
            + struct.pack("<I", 36 + len(pcm))
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 0)
            + b"data"
            + struct.pack("<I", len(pcm))
            + pcm
        )
        status, reply = await upload(server, sid, wav)
        assert status == 400 and "cannot decode" in reply["msg"]
        await client.close()


async def test_an_upload_for_an_unknown_session_is_refused_before_its_file_is_read(serve, config) -> None:
    async with serve(config) as server:
        sent = 0

        async def body():
            nonlocal sent
            yield (
                b'--B\r\nContent-Disposition: form-data; name="sessionid"\r\n\r\nnobody\r\n'
                b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
            )
            for _ in range(300):  # 19 MB, slowly
                sent += 64 * 1024
                yield b"\0" * 64 * 1024
                await asyncio.sleep(0.01)
            yield b"\r\n--B--\r\n"

        headers = {"Content-Type": "multipart/form-data; boundary=B"}
        async with server.http.post(server.url + "/humanaudio", data=body(), headers=headers) as resp:
            assert resp.status == 404 and (await resp.json())["msg"] == "session not found"
        assert sent < 5 * 1024 * 1024, f"{sent / 1e6:.0f} MB were sent before the answer"


async def test_a_connection_that_never_finishes_its_headers_is_closed(serve, config) -> None:
    async with serve(config, request_timeout=1.0) as server:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        t0 = time.monotonic()
        for _ in range(40):  # a header line every 0.25 s: never complete
            await asyncio.sleep(0.25)
            if reader.at_eof():
                break
            writer.write(b"X-Slow: 1\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert time.monotonic() - t0 < 6
        writer.close()


async def test_a_json_error_message_always_says_what_is_wrong(serve, config) -> None:
    async with serve(config) as server:
        status, reply = await post(server, "/offer", {"sdp": "v=0\r\n", "type": "offer"})
        assert status == 400 and reply["msg"].startswith("the offer SDP lacks")
        assert json.dumps(reply)
