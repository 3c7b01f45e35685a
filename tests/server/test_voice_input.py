"""The page's microphone over the same peer connection: VAD -> ASR -> chat, and barge-in."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from testing import fake_services
from testing.server_client import ScriptedMicrophone, connect_with_events, is_speaking, until
from voices.audio import resample
from voices.tts import PiperTTS

pytestmark = pytest.mark.usefixtures("loopback_only")


async def test_spoken_question_interrupts_the_avatar_is_transcribed_and_answered(serve, config) -> None:
    question = "What is the weather like today?"
    pcm16k = np.concatenate([chunk async for chunk in PiperTTS().synthesize(question)])
    async with fake_services.openai_service() as (base, rec):
        async with serve(config, llm_base_url=base, llm_model="ok") as server:
            mic = ScriptedMicrophone()
            client, events, sse = await connect_with_events(server, mic)
            sid = client.sessionid
            asyncio.create_task(server.state.services.transcriber())  # start loading the model meanwhile

            def speaking():  # noqa: ANN202
                return is_speaking(server, sid)

            long_text = " ".join(f"This is sentence {i}, spoken to keep the avatar busy." for i in range(15))
            await server.post("/human", {"sessionid": sid, "text": long_text, "type": "echo"})
            assert await until(speaking, 5)
            mic.play(resample(pcm16k, 16000, 48000))
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
            assert await until(lambda: " ".join(e["text"] for e in events
                                                if e.get("status") == "end")[-len(answer):] == answer, 15)
            # none of the interrupted echo's later sentences started after the barge-in
            started = [e["text"] for e in events if e.get("status") == "start"][n_started:]
            assert not any(t.startswith("This is sentence") for t in started), started
            sse.cancel()
            await client.close()
