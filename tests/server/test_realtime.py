"""--tts realtime: the OpenAI Realtime API (the local GA fake, testing/fake_realtime.py) speaks for the avatar:
typed chat, speech to speech from the microphone with barge-in, cancel, reconnection, refused credentials."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from core.audio import resample
from testing import fake_realtime
from testing.receiver_audio import AudioWatch, spoken
from testing.server_client import (
    ScriptedMicrophone,
    connect_with_events,
    is_speaking,
    until,
)
from voices.asr import Transcriber

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_realtime_answers_with_audio_and_subtitles_and_can_be_interrupted(serve, config) -> None:
    async with fake_realtime.realtime_service() as (url, rec):
        async with serve(
            config,
            tts="realtime",
            TTS_SERVER=url,
            realtime_model="gpt-realtime",
            system_prompt="Be a test.",
            REF_FILE="verse",
        ) as server:
            client, events, sse = await connect_with_events(server)
            sid = client.sessionid

            status, reply = await server.post("/human", {"sessionid": sid, "text": "Hello", "type": "chat"})
            assert status == 200 and reply["code"] == 0
            answer = "".join(fake_realtime.REALTIME_TEXT)
            assert await until(lambda: any(e.get("status") == "end" for e in events), 5)
            assert events[0] == {"status": "start", "text": ""} and events[-1] == {"status": "end", "text": answer}
            assert "".join(e["text"] for e in events if e.get("event") == "subtitle") == answer
            assert max(client.audio_levels) > 0.3  # the answer's audio (a 0.5-peak tone) reached the client
            update, item, create = rec.events[:3]
            assert update["type"] == "session.update" and update["session"]["instructions"] == "Be a test."
            assert update["session"]["audio"]["output"]["voice"] == "verse"
            assert item["item"]["content"] == [{"type": "input_text", "text": "Hello"}]
            assert create["type"] == "response.create" and rec.query["model"] == "gpt-realtime"

            def speaking():
                return is_speaking(server, sid)

            await server.post("/human", {"sessionid": sid, "text": "long", "type": "chat"})
            assert await until(speaking, 5)
            t0 = time.monotonic()
            assert (await server.post("/interrupt_talk", {"sessionid": sid}))[0] == 200
            await asyncio.wait_for(rec.cancelled.wait(), 2)
            while await speaking():
                assert time.monotonic() - t0 < 0.5, "still speaking after the interrupt"
                await asyncio.sleep(0.03)
            n = len(events)
            await asyncio.sleep(0.5)
            assert not any(e.get("status") == "end" and e["text"] for e in events[n:])  # the cancelled one is gone

            await server.post("/human", {"sessionid": sid, "text": "Read this aloud.", "type": "echo"})
            assert await until(lambda: rec.events[-1]["type"] == "response.create", 5)
            assert "Read this aloud." in rec.events[-1]["response"]["instructions"]
            sse.cancel()
            await client.close()


async def test_microphone_speech_to_speech_with_barge_in_and_typed_chat_in_the_same_session(serve, config) -> None:
    question = await spoken("What is the weather like today?")
    whisper = await asyncio.to_thread(Transcriber)

    async def transcribe(audio24k: np.ndarray) -> str:  # the fake service transcribes with our whisper
        return await whisper.transcribe(resample(audio24k.astype(np.float32), 24000, 16000))

    async with fake_realtime.realtime_service() as (url, rec):
        rec.transcribe = transcribe
        async with serve(config, tts="realtime", TTS_SERVER=url, realtime_turn_detection="semantic_vad") as server:
            mic = ScriptedMicrophone()
            client, events, sse = await connect_with_events(server, mic)
            sid = client.sessionid
            watch = AudioWatch(client)

            # The avatar is answering a typed question at length when the user starts to speak.
            await server.post("/human", {"sessionid": sid, "text": "long", "type": "chat"})
            assert await until(lambda: is_speaking(server, sid), 5)
            update = rec.events[0]["session"]
            assert update["audio"]["input"]["turn_detection"]["type"] == "semantic_vad"
            assert update["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            await asyncio.sleep(0.5)
            mic.play(question)
            assert await until(lambda: rec.speech_started_at, 5), "the service never heard the user"
            heard_at = rec.speech_started_at[0]
            # Barge-in: the avatar stops at once, and its page is told.
            assert await until(lambda: any(e.get("event") == "user_speech_start" for e in events), 2)
            await asyncio.sleep(0.6)
            stopped = watch.silent_from(heard_at)
            print(f"barge-in: audio stopped at the receiver {1000 * (stopped - heard_at):.0f} ms after speech_started")
            assert stopped - heard_at < 1.0  # the order; the number itself is measured in bench/realtime_bargein.py
            assert rec.cancelled.is_set()  # the answer was cancelled at the service too

            # The user's turn: the service transcribes it and answers by voice.
            assert await until(lambda: any(e.get("event") == "user_text" for e in events), 10)
            user_text = next(e["text"] for e in events if e.get("event") == "user_text")
            answer = "".join(fake_realtime.REALTIME_TEXT)
            assert await until(lambda: any(e.get("status") == "end" and e["text"] == answer for e in events), 10)
            # What the service heard is the spoken question (as 24 kHz PCM16): whisper understands it.
            assert "weather" in user_text.lower(), user_text
            assert "input_audio_buffer.append" in rec.types()

            # Typed chat still works in the same session, on the same connection.
            n = len(events)
            await server.post("/human", {"sessionid": sid, "text": "Hello", "type": "chat"})
            assert await until(lambda: any(e.get("status") == "end" and e["text"] == answer for e in events[n:]), 5)
            assert rec.connections == 1
            assert not [e for e in events if e.get("event") in ("tts_error", "llm_error")], events
            await watch.stop()
            sse.cancel()
            await client.close()


async def test_a_dropped_connection_is_reported_and_reconnected_with_backoff(serve, config) -> None:
    async with fake_realtime.realtime_service() as (url, rec):
        async with serve(config, tts="realtime", TTS_SERVER=url) as server:
            client, events, sse = await connect_with_events(server)
            sid = client.sessionid
            await server.post("/human", {"sessionid": sid, "text": "long", "type": "chat"})
            assert await until(lambda: is_speaking(server, sid), 5)
            rec.refusals = 1  # the first attempt to reconnect is refused: the next one waits longer
            rec.drop()
            assert await until(lambda: rec.connections == 2, 10)
            errors = [e["text"] for e in events if e.get("event") == "tts_error"]
            assert "connection was lost" in errors[0] and "reconnecting in 0.5 s" in errors[0], errors
            assert "HTTP 503" in errors[1] and "trying again in 1.0 s" in errors[1], errors
            # the new connection gets the session set up again
            assert await until(lambda: rec.types().count("session.update") == 2, 5)
            answer = "".join(fake_realtime.REALTIME_TEXT)
            n = len(events)
            await server.post("/human", {"sessionid": sid, "text": "Hello", "type": "chat"})
            assert await until(lambda: any(e.get("status") == "end" and e["text"] == answer for e in events[n:]), 10)
            sse.cancel()
            await client.close()


async def test_refused_credentials_give_one_clear_error_and_no_retry_loop(serve, config, caplog) -> None:
    async with fake_realtime.realtime_service() as (url, rec):
        async with serve(config, tts="realtime", TTS_SERVER=url, llm_api_key="sk-bad-key") as server:
            client, events, sse = await connect_with_events(server)
            await server.post("/human", {"sessionid": client.sessionid, "text": "Hello", "type": "chat"})
            assert await until(lambda: any(e.get("event") == "tts_error" for e in events), 5)
            await asyncio.sleep(1.5)  # a retry loop would have tried again by now
            errors = [e["text"] for e in events if e.get("event") in ("tts_error", "llm_error")]
            assert len(errors) == 1 and "HTTP 401: Incorrect API key provided" in errors[0], errors
            assert rec.attempts == 1 and rec.connections == 0
            assert sum("Incorrect API key" in r.getMessage() for r in caplog.records) == 1
            sse.cancel()
            await client.close()
