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
import functools
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.common import machine, summary
from bench.measure import MOUTH_ONSET, mouth_darkening, mouth_region
from core.items import Source
from musetalk.avatar import load_avatar
from musetalk.avatar_demo import ensure_demo
from server.config import ServerConfig
from server.services import Services
from testing.rtc import LoopbackReceiver, require_loopback_namespace
from testing.server_client import Server, running_server

SENTENCES = [
    "Hello, nice to meet you.",
    "The weather is lovely today.",
    "What can I do for you?",
    "Thank you for waiting.",
    "Let me show you around.",
]


def now_ms() -> float:
    return time.monotonic() * 1000.0


@dataclass
class LipSyncBench:
    """A server with one connected receiver, timing speech from its start to the mouth moving at the receiver."""

    server: Server
    sessionid: str
    receiver: LoopbackReceiver
    region: tuple[slice, slice]
    emitted: list[tuple[float, Source]] = field(default_factory=list)  # (time, source) of each tick sent

    async def run(self, trials: int, start: Callable[[int], Coroutine[Any, Any, object]]) -> list[tuple[float, ...]]:
        """`trials` timings of speech started by `start(i)`; a trial with no lip-synced frame is reported."""
        rows: list[tuple[float, ...]] = []
        for i in range(trials):
            row = await self.trial(functools.partial(start, i))
            if row is None:
                print(f"trial {i}: no lip-synced frame within 10 s")
            else:
                rows.append(row)
        return rows

    async def trial(self, start: Callable[[], Coroutine[Any, Any, object]]) -> tuple[float, float, float, float] | None:
        """Once the avatar is quiet, start speech (`start()`, run beside the timing) and return (start -> the
        mouth moves at the receiver, the part before the session, the session's own part, transport), or None
        when no lip-synced frame came within 10 s."""
        live = self.server.state.registry.get(self.sessionid)
        assert live is not None, "the bench's session ended"
        session = live.session
        while session.speaking:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        reference = self.receiver.frames["video"][-1].data
        t0 = now_ms()
        starting = asyncio.create_task(start())
        t_emit = t_arrive = None
        while now_ms() - t0 < 10_000 and t_arrive is None:
            await asyncio.sleep(0.01)
            t_emit = next((t for t, src in self.emitted if t > t0 and src is Source.SPEECH), None)
            if t_emit is not None:
                t_arrive = next(
                    (
                        f.arrival_ms
                        for f in self.receiver.frames["video"]
                        if f.arrival_ms > t_emit and mouth_darkening(f.data, reference, self.region) > MOUTH_ONSET
                    ),
                    None,
                )
        await starting
        if t_emit is None or t_arrive is None:
            return None
        pipeline = session.stats.last_latency_ms or 0.0
        return t_arrive - t0, t_emit - t0 - pipeline, pipeline, t_arrive - t_emit


@asynccontextmanager
async def lip_sync_bench() -> AsyncIterator[LipSyncBench]:
    """The real server (lite engine, demo avatar, offline piper voice) on 127.0.0.1 and a receiver connected
    through POST /offer, warmed up for 2 s."""
    require_loopback_namespace()
    ensure_demo(progress=False)
    print(f"machine: {machine()}")
    config = ServerConfig(host="127.0.0.1", ice_host=("127.0.0.1",), engine="lite", asr=False)
    services = await Services.create(config)
    async with running_server(config, services) as server:
        receiver = LoopbackReceiver()
        sid = await receiver.connect_http(server.http, server.url)
        bench = LipSyncBench(server, sid, receiver, mouth_region(load_avatar("demo")))
        live = server.state.registry.get(sid)
        assert live is not None, "the session ended at once"
        live.session.add_sink(lambda out: bench.emitted.append((now_ms(), out.source)))
        await asyncio.sleep(2.0)
        try:
            yield bench
        finally:
            await receiver.close()


def print_stages(title: str, rows: list[tuple[float, ...]], before_session: str) -> None:
    total, before, pipe, transport = (list(col) for col in zip(*rows))
    print(f"{title}: {summary(total)}")
    for name, values in ((before_session, before), ("pipeline", pipe), ("transport", transport)):
        print(f"  {name:<10} {summary(values)}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    async with lip_sync_bench() as bench:
        rows = await bench.run(
            args.trials,
            lambda i: bench.server.post(
                "/human",
                {
                    "sessionid": bench.sessionid,
                    "text": SENTENCES[i % len(SENTENCES)],
                    "type": "echo",
                    "interrupt": True,
                },
            ),
        )
    print_stages("POST /human -> first lip-synced frame at the receiver", rows, "tts")
    total, tts, pipe, transport = (np.median(col) for col in zip(*rows))
    print(
        f"  shares of the median: tts {tts / total:.0%}, pipeline {pipe / total:.0%}, transport {transport / total:.0%}"
    )


if __name__ == "__main__":
    asyncio.run(main())
