"""Stream an audio file into a running avatar session over GET /ws/audio, in real time, as an external TTS or a
phone bridge would, and print the session's events (start/end of the utterance, speaking) as they come back.

    python examples/ws_audio_client.py --sessionid SID speech.wav [--url http://127.0.0.1:8010] [--token T]
        [--text "subtitle"] [--rate 16000|24000|48000] [--piece_ms 20] [--fast]

The session id is the one /offer returned to the page that shows the avatar (in the page's developer console:
window.avatarClient.sessionId). Needs numpy, scipy, soundfile and aiohttp (all in the server's requirements).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from math import gcd
from pathlib import Path

import aiohttp
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

RATES = (16000, 24000, 48000)


def load_pcm16(path: Path, rate: int | None) -> tuple[bytes, int]:
    """The file as PCM16 mono bytes at one of the rates the server takes (its own rate if it is one)."""
    audio, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    target = rate or (file_rate if file_rate in RATES else 16000)
    if target != file_rate:
        g = gcd(target, file_rate)
        mono = resample_poly(mono, target // g, file_rate // g)
    return (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes(), target


async def stream(
    url: str,
    sessionid: str,
    pcm: bytes,
    rate: int,
    *,
    token: str | None = None,
    text: str = "",
    piece_ms: int = 20,
    realtime: bool = True,
    printer=print,
) -> list[dict]:
    """Send the audio as one utterance and return the events received until it was played."""
    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/ws/audio"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    events: list[dict] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(ws_url, params={"sessionid": sessionid}, headers=headers) as ws,
    ):
        await ws.send_json({"type": "start", "sample_rate": rate})
        ready = await ws.receive_json(timeout=10)
        printer(f"ready: {ready}")
        played = asyncio.Event()

        async def receive() -> None:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                events.append(event)
                printer(f"event: {event}")
                if event.get("status") == "end":
                    played.set()

        reader = asyncio.create_task(receive())
        try:
            if text:
                await ws.send_json({"type": "text", "text": text})
            piece = rate * 2 * piece_ms // 1000
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            for n, pos in enumerate(range(0, len(pcm), piece)):
                if realtime:  # one piece per piece_ms of audio, on a clock (no drift from send times)
                    await asyncio.sleep(max(0.0, t0 + n * piece_ms / 1000 - loop.time()))
                await ws.send_bytes(pcm[pos : pos + piece])
            await ws.send_json({"type": "end_of_utterance"})
            await asyncio.wait_for(played.wait(), timeout=len(pcm) / (2 * rate) + 30)
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    return events


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file", type=Path, help="an audio file soundfile reads (wav, flac, ogg)")
    p.add_argument("--sessionid", required=True)
    p.add_argument("--url", default="http://127.0.0.1:8010", help="the server")
    p.add_argument("--token", default=None, help="the server's --auth_token, if it has one")
    p.add_argument("--text", default="", help="subtitle of the utterance")
    p.add_argument("--rate", type=int, choices=RATES, default=None, help="rate to send (default: the file's)")
    p.add_argument("--piece_ms", type=int, default=20, help="audio per message")
    p.add_argument("--fast", action="store_true", help="send as fast as the server reads (it paces the socket)")
    a = p.parse_args(argv)
    pcm, rate = load_pcm16(a.file, a.rate)
    try:
        asyncio.run(
            stream(a.url, a.sessionid, pcm, rate, token=a.token, text=a.text, piece_ms=a.piece_ms, realtime=not a.fast)
        )
    except aiohttp.WSServerHandshakeError as e:
        print(f"refused: HTTP {e.status} {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
