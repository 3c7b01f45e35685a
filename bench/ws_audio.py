"""Streamed audio in -> lip-synced frame out: GET /ws/audio -> the first frame with the mouth opening at an aiortc
receiver, the audio sent as a live source would (20 ms PCM16 messages at 24 kHz, in real time).

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.ws_audio'

The real server (in this process, on 127.0.0.1: lite engine, demo avatar) and a client connected through POST
/offer, as bench.latency. Per trial the figure is split into
  socket     first audio message sent -> its audio leaves the session as a frame, less the session's own part
             (WebSocket, resampling, the voice's queue)
  pipeline   that audio in -> its first frame leaves the session (the session's own counter)
  transport  frame leaves the session -> the mouth moves at the receiver (VP8 encode, RTP, decode, detection)
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from bench.latency import lip_sync_bench, print_stages
from core.audio import float_to_pcm16

RATE = 24000
PIECE = RATE * 2 // 50  # 20 ms of PCM16


async def stream_tone(ws, seconds: float) -> None:
    """One utterance of a 220 Hz tone, a message every 20 ms on a clock, then its end."""
    pcm = float_to_pcm16(0.5 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * RATE)) / RATE))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for n, pos in enumerate(range(0, len(pcm), PIECE)):
        await asyncio.sleep(max(0.0, t0 + n * 0.02 - loop.time()))
        await ws.send_bytes(pcm[pos : pos + PIECE])
    await ws.send_json({"type": "end_of_utterance"})


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    async with lip_sync_bench() as bench:
        url = f"{bench.server.url.replace('http', 'ws', 1)}/ws/audio?sessionid={bench.sessionid}"
        async with bench.server.http.ws_connect(url) as ws:
            await ws.send_json({"type": "start", "sample_rate": RATE})
            await ws.receive_json()
            rows = await bench.run(args.trials, lambda _: stream_tone(ws, 0.5))
    print_stages("/ws/audio first message -> first lip-synced frame at the receiver", rows, "socket")


if __name__ == "__main__":
    asyncio.run(main())
