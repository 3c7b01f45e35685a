"""--tts realtime: the OpenAI Realtime API (a local fake) speaks for the avatar."""
from __future__ import annotations

import asyncio
import time

import pytest

from testing import fake_services
from testing.server_client import connect_with_events, is_speaking, until

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_realtime_answers_with_audio_and_subtitles_and_can_be_interrupted(serve, config) -> None:
    async with fake_services.realtime_service() as (url, rec):
        async with serve(config, tts="realtime", TTS_SERVER=url, realtime_model="gpt-realtime",
                         system_prompt="Be a test.", REF_FILE="verse") as server:
            client, events, sse = await connect_with_events(server)
            sid = client.sessionid

            status, reply = await server.post("/human", {"sessionid": sid, "text": "Hello", "type": "chat"})
            assert status == 200 and reply["code"] == 0
            answer = "".join(fake_services.REALTIME_TEXT)
            assert await until(lambda: any(e.get("status") == "end" for e in events), 5)
            assert events[0] == {"status": "start", "text": ""} and events[-1] == {"status": "end", "text": answer}
            assert "".join(e["text"] for e in events if e.get("event") == "subtitle") == answer
            assert max(client.audio_levels) > 0.3  # the answer's audio (a 0.5-peak tone) reached the client
            update, item, create = rec.events[:3]
            assert update["type"] == "session.update" and update["session"]["instructions"] == "Be a test."
            assert update["session"]["voice"] == "verse"
            assert item["item"]["content"] == [{"type": "input_text", "text": "Hello"}]
            assert create["type"] == "response.create" and rec.query["model"] == "gpt-realtime"

            def speaking():  # noqa: ANN202
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
