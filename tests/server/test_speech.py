"""Speaking through the API: /human echo and chat, /humanaudio uploads, /interrupt_talk, /is_speaking, /sse,
/record; and that hostile uploads cost the other sessions nothing."""

from __future__ import annotations

import asyncio
import io
import struct
import time

import av
import numpy as np
import pytest
import soundfile as sf

from testing import fake_services
from testing.server_client import (
    Client,
    connect_with_events,
    is_speaking,
    until,
    upload,
)

pytestmark = pytest.mark.usefixtures("loopback_only")


def tone(rate: int, seconds: float, channels: int = 1, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def audio_file(fmt: str, rate: int, seconds: float, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    subtype = {"WAV": "PCM_16", "OGG": "VORBIS", "MP3": "MPEG_LAYER_III"}[fmt]
    sf.write(buf, tone(rate, seconds, channels), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


async def test_echo_speaks_with_sse_sentence_events_and_interrupt_stops_it(serve, config) -> None:
    async with serve(config) as server:
        client, events, sse = await connect_with_events(server)
        sid = client.sessionid
        status, reply = await server.post(
            "/human", {"sessionid": sid, "text": "Hello there. This is a test.", "type": "echo"}
        )
        assert status == 200 and reply == {"code": 0, "msg": "ok"}
        assert await until(lambda: is_speaking(server, sid), 5)
        assert await until(lambda: sum(e.get("status") == "end" for e in events) == 2, 10)
        assert events == [
            {"status": "start", "text": "Hello there."},
            {"status": "end", "text": "Hello there."},
            {"status": "start", "text": "This is a test."},
            {"status": "end", "text": "This is a test."},
        ]
        assert max(client.audio_levels) > 0.2  # the voice reached the client
        long_text = " ".join(f"Sentence number {i} is here to keep the avatar talking." for i in range(20))
        await server.post("/human", {"sessionid": sid, "text": long_text, "type": "echo"})
        assert await until(lambda: is_speaking(server, sid), 5)
        n_before = len(events)
        t0 = time.monotonic()
        status, reply = await server.post("/interrupt_talk", {"sessionid": sid})
        assert status == 200 and reply["code"] == 0
        while await is_speaking(server, sid):
            assert time.monotonic() - t0 < 0.5, "still speaking 0.5 s after /interrupt_talk"
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        assert not any(e.get("status") == "start" for e in events[n_before + 1 :])  # nothing new was started
        sse.cancel()
        await client.close()


async def test_humanaudio_plays_wav_mp3_and_ogg_and_rejects_bad_uploads(serve, config) -> None:
    async with serve(config, max_upload_mb=0.5, max_audio_seconds=3.0) as server:
        client, events, sse = await connect_with_events(server)
        sid = client.sessionid
        files = [
            ("a.wav", audio_file("WAV", 44100, 0.6, channels=2)),
            ("b.mp3", audio_file("MP3", 22050, 0.6)),
            ("c.ogg", audio_file("OGG", 48000, 0.6)),
        ]
        for name, data in files:
            status, reply = await upload(server, sid, data, name)
            assert status == 200 and reply["code"] == 0, (name, reply)
            assert abs(reply["data"]["seconds"] - 0.6) < 0.08, (name, reply)  # decoded at its own rate
        assert await until(lambda: sum(e.get("status") == "end" for e in events) == 3, 8)
        assert [e["status"] for e in events] == ["start", "end"] * 3
        assert max(client.audio_levels) > 0.3  # the 0.5-peak tone was played

        absurd = (
            b"RIFF"
            + struct.pack("<I", 0xFFFFFFF0)
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, 7, 14, 2, 16)
            + b"data"
            + struct.pack("<I", 0xFFFFFFF0)
            + bytes(1000)
        )
        bad = [
            (None, 400, "no 'file'"),
            (b"", 400, "empty"),
            (bytes(range(256)) * 100, 400, "decode"),
            (absurd, 400, "sample rate"),
            (audio_file("WAV", 16000, 4.0), 413, "longer than 3 s"),
            (bytes(600 * 1024), 413, "larger"),
        ]
        for data, code, words in bad:
            status, reply = await upload(server, sid, data)
            assert status == code and reply["code"] == -1 and words in reply["msg"], (code, reply)
        status, reply = await upload(server, "42", files[0][1])
        assert status == 404 and reply["msg"] == "session not found"
        async with server.http.post(server.url + "/humanaudio", json={"sessionid": sid}) as resp:
            assert resp.status == 400 and "multipart" in (await resp.json())["msg"]
        sse.cancel()
        await client.close()


async def test_chat_streams_the_llm_answer_into_speech(serve, config) -> None:
    async with fake_services.openai_service() as (base, rec):
        async with serve(
            config, llm_base_url=base, llm_model="ok", tts="openai", TTS_SERVER=base, system_prompt="Be brief."
        ) as server:
            client, events, sse = await connect_with_events(server)
            status, reply = await server.post(
                "/human", {"sessionid": client.sessionid, "text": "Who are you?", "type": "chat", "interrupt": True}
            )
            assert status == 200 and reply["code"] == 0
            answer = "".join(fake_services.ANSWER_DELTAS)
            assert await until(lambda: " ".join(e["text"] for e in events if e.get("status") == "end") == answer, 10)
            chat = rec.requests[0]
            assert chat["stream"] is True and chat["model"] == "ok"
            assert chat["messages"] == [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Who are you?"},
            ]
            spoken = [r["input"] for r in rec.requests[1:]]
            assert " ".join(spoken) == answer  # every sentence went to the TTS
            assert max(client.audio_levels) > 0.3  # and its audio to the client
            sse.cancel()
            await client.close()


async def test_record_writes_a_playable_mp4_of_what_was_sent(serve, config) -> None:
    async with serve(config) as server:
        client, events, sse = await connect_with_events(server)
        sid = client.sessionid
        status, reply = await server.post("/record", {"sessionid": sid, "type": "start_record"})
        assert status == 200 and reply["code"] == 0
        t0 = time.monotonic()
        status, reply = await server.post("/record", {"sessionid": sid, "type": "start_record"})
        assert status == 400 and "already" in reply["msg"]
        await server.post("/human", {"sessionid": sid, "text": "Recording a short sentence.", "type": "echo"})
        assert await until(lambda: any(e.get("status") == "end" for e in events), 8)
        status, reply = await server.post("/record", {"sessionid": sid, "type": "end_record"})
        elapsed = time.monotonic() - t0
        assert status == 200 and reply["data"] == {"url": f"/record/{sid}"}
        status, data = await server.get(f"/record/{sid}")
        assert status == 200 and data[4:8] == b"ftyp"
        with av.open(io.BytesIO(data)) as mp4:
            video, audio = mp4.streams.video[0], mp4.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            frames = sum(1 for _ in mp4.decode(video))
        with av.open(io.BytesIO(data)) as mp4:
            pcm = np.concatenate([f.to_ndarray().reshape(-1) for f in mp4.decode(audio=0)])
        video_s, audio_s = frames / 25, len(pcm) / 16000
        assert abs(video_s - elapsed) < 0.5, (video_s, elapsed)
        assert abs(audio_s - video_s) < 0.15, (audio_s, video_s)  # AAC frames round up to 64 ms
        assert np.abs(pcm).max() > 0.2  # the sentence is in it
        assert (await server.get("/record/999"))[0] == 404
        assert (await server.get("/record/..%2Fsecret"))[0] in (400, 404)
        sse.cancel()
        await client.close()


async def test_hostile_uploads_do_not_stall_another_sessions_video(serve, config) -> None:
    async with serve(config) as server:
        watcher = Client(server)
        await watcher.connect()
        await watcher.wait_video(10)
        uploader = Client(server)
        sid = await uploader.connect()
        huge_claim = (
            b"RIFF"
            + struct.pack("<I", 0xFFFFFFF0)
            + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 2, 96001, 384004, 4, 16)
            + b"data"
            + struct.pack("<I", 0xFFFFFFF0)
            + np.random.default_rng(1).integers(-3e4, 3e4, 96001 * 2 * 30).astype("<i2").tobytes()
        )  # odd rate, absurd length, 30 s of loud noise really there
        uploads = [bytes(range(256)) * 75000, huge_claim, audio_file("WAV", 48000, 150.0)]
        watched = server.state.registry.get(watcher.sessionid).session.stats
        b0, ticks_b0 = time.monotonic(), watched.ticks
        await asyncio.sleep(1.0)  # baseline: this machine, this load, no uploads
        t0, ticks0 = time.monotonic(), watched.ticks
        results = await asyncio.gather(*(upload(server, sid, data) for data in uploads * 2))
        statuses = sorted(status for status, _ in results)
        assert statuses == [200, 200, 400, 400, 413, 413], results
        await asyncio.sleep(max(0.0, t0 + 1.0 - time.monotonic()))
        t1, ticks1 = time.monotonic(), watched.ticks
        server_fps, base_server_fps = (ticks1 - ticks0) / (t1 - t0), (ticks0 - ticks_b0) / (t0 - b0)
        client_fps, base_client_fps = watcher.fps_between(t0, t1), watcher.fps_between(b0, t0)
        print(
            f"uploads took {t1 - t0:.2f} s; server {server_fps:.1f} fps (before {base_server_fps:.1f}), "
            f"client {client_fps:.1f} fps (before {base_client_fps:.1f})"
        )
        # Relative to the baseline as for the client: a stall (the loop blocked by a decode) stops the clock for
        # the whole upload, while a loaded 2-core machine costs a few frames/s before and during alike.
        assert server_fps >= 0.8 * base_server_fps, "the session's output clock stalled during the uploads"
        assert client_fps >= 0.8 * base_client_fps, "the watcher received fewer frames during the uploads"
        await uploader.close()
        await watcher.close()
