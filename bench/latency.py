"""End-to-end latency: POST /human (echo) -> the first lip-synced frame at an aiortc receiver.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.latency'

The real server (in this process, on 127.0.0.1: lite engine, demo avatar, offline piper voice) and a client that
connects through POST /offer like LiveTalking's pages. Per trial the figure is split into
  tts        POST sent -> the sentence's first audio reaches the session (HTTP, sentence split, piper's first chunk)
  pipeline   that audio in -> its first frame leaves the session (the session's own counter)
  transport  frame leaves the session -> the mouth moves at the receiver (VP8 encode, RTP, decode, detection)
"""
from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from bench.common import machine, summary
from bench.measure import MOUTH_ONSET, mouth_darkening, mouth_region
from musetalk.avatar import ensure_demo, load_avatar
from server.config import ServerConfig
from server.services import Services
from testing.rtc import LoopbackReceiver, require_loopback_namespace
from testing.server_client import running_server

SENTENCES = ["Hello, nice to meet you.", "The weather is lovely today.", "What can I do for you?",
             "Thank you for waiting.", "Let me show you around."]


def now_ms() -> float:
    return time.monotonic() * 1000.0


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    require_loopback_namespace()
    ensure_demo(progress=False)
    print(f"machine: {machine()}")
    config = ServerConfig(host="127.0.0.1", ice_host=("127.0.0.1",), engine="lite", asr=False)
    region = mouth_region(load_avatar("demo"))
    services = await Services.create(config)
    async with running_server(config, services) as server:
        receiver = LoopbackReceiver()
        sid = await receiver.connect_http(server.http, server.url)
        session = server.state.registry.get(sid).session
        emitted: list[tuple[float, str]] = []
        session.add_sink(lambda out: emitted.append((now_ms(), out.source)))
        await asyncio.sleep(2.0)
        rows = []
        for i in range(args.trials):
            while session.speaking:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)
            reference = receiver.frames["video"][-1].data
            t0 = now_ms()
            await server.post("/human", {"sessionid": sid, "text": SENTENCES[i % len(SENTENCES)], "type": "echo",
                                         "interrupt": True})
            t_emit = t_arrive = None
            while now_ms() - t0 < 10_000 and t_arrive is None:
                await asyncio.sleep(0.01)
                t_emit = next((t for t, src in emitted if t > t0 and src == "speech"), None)
                if t_emit is not None:
                    t_arrive = next((f.arrival_ms for f in receiver.frames["video"] if f.arrival_ms > t_emit
                                     and mouth_darkening(f.data, reference, region) > MOUTH_ONSET), None)
            if t_emit is None or t_arrive is None:
                print(f"trial {i}: no lip-synced frame within 10 s")
                continue
            pipeline = session.stats.last_latency_ms or 0.0
            rows.append((t_arrive - t0, t_emit - t0 - pipeline, pipeline, t_arrive - t_emit))
        await receiver.close()
    total, tts, pipe, transport = (list(col) for col in zip(*rows))
    print(f"POST /human -> first lip-synced frame at the receiver: {summary(total)}  [target <= 500 ms]")
    print(f"  tts        {summary(tts)}")
    print(f"  pipeline   {summary(pipe)}")
    print(f"  transport  {summary(transport)}")
    print(f"  shares of the median: tts {np.median(tts) / np.median(total):.0%}, pipeline "
          f"{np.median(pipe) / np.median(total):.0%}, transport {np.median(transport) / np.median(total):.0%}")


if __name__ == "__main__":
    asyncio.run(main())
