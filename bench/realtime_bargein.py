"""Barge-in with --tts realtime: the service's `input_audio_buffer.speech_started` -> the avatar's audio stops at
an aiortc receiver.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.realtime_bargein'

The real server (in this process, on 127.0.0.1: lite engine, demo avatar, --tts realtime) against the local GA
Realtime fake (testing/fake_realtime.py). Per trial: a typed question gets a long spoken answer; once the avatar
speaks, the client's microphone says a sentence (piper); the fake's turn detection sends speech_started (its
time is the start of the figure); the figure ends when the audio frames arriving at the client are silent
(10 frames in a row; arrival times polled every 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio

from bench.common import machine, summary
from musetalk.avatar_demo import ensure_demo
from server.config import ServerConfig
from server.services import Services
from testing import fake_realtime
from testing.receiver_audio import AudioWatch, spoken
from testing.rtc import require_loopback_namespace
from testing.server_client import (
    Client,
    ScriptedMicrophone,
    is_speaking,
    running_server,
    until,
)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    require_loopback_namespace()
    ensure_demo(progress=False)
    print(f"machine: {machine()}")
    question = await spoken("Wait, what is the weather like today?")
    async with fake_realtime.realtime_service() as (url, rec):
        config = ServerConfig(
            host="127.0.0.1",
            ice_host=("127.0.0.1",),
            engine="lite",
            tts="realtime",
            TTS_SERVER=url,
            llm_api_key="sk-bench",
        )
        async with running_server(config, await Services.create(config)) as server:
            mic = ScriptedMicrophone()
            client = Client(server, microphone=mic)
            sid = await client.connect()
            watch = AudioWatch(client)
            stops = []
            for _ in range(args.trials):
                await server.post("/human", {"sessionid": sid, "text": "long", "type": "chat"})
                if not await until(lambda: is_speaking(server, sid), 10):
                    raise SystemExit("the avatar did not start speaking")
                await asyncio.sleep(1.0)
                heard = len(rec.speech_started_at)
                mic.play(question)
                if not await until(lambda heard=heard: len(rec.speech_started_at) > heard, 5):
                    raise SystemExit("the fake never heard the microphone")
                started = rec.speech_started_at[heard]
                await asyncio.sleep(0.8)
                stops.append(1000 * (watch.silent_from(started) - started))
                while mic.playing or await is_speaking(server, sid):  # the answer to the spoken question
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.5)
            await watch.stop()
            print(f"speech_started -> audio silent at the receiver: {summary(stops)}")
            print(f"  per trial: {', '.join(f'{v:.0f}' for v in stops)} ms")
            await client.close()


if __name__ == "__main__":
    asyncio.run(main())
