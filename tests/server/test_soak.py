"""Soak: 200 connect/disconnect cycles, then 10 minutes of continuous speech with interrupts and uploads, in one
server. Whatever a session leaves behind (a task, a thread, a socket, a buffer) would grow with the cycles:
RSS must end within 5 % of its level after the first 20 cycles, threads and open files exactly there. The first
cycle talks for a minute, so that what is allocated once (the voice, codec buffers) is in that level.

SOAK_CYCLES, SOAK_SECONDS and SOAK_WARM_UP_SECONDS shorten it for a local run; CI runs the full length."""

from __future__ import annotations

import asyncio
import ctypes
import gc
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import psutil
import pytest
import soundfile as sf

from testing.server_client import Client, Server, upload
from voices._threads import ASR_POOL, LLM_POOL, TTS_POOL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback_only")]

CYCLES = int(os.environ.get("SOAK_CYCLES", "200"))
SPEECH_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
BASELINE_CYCLES = 20
WARM_UP_SECONDS = float(os.environ.get("SOAK_WARM_UP_SECONDS", "60"))  # speech in the first cycle
TEXT = (
    "This is the soak test speaking for a long time. Every sentence goes through the voice, the framer, "
    "the renderer and the tracks. Interrupts come at random moments. Nothing may be left behind."
)


def usage() -> tuple[float, int, int]:
    """RSS (MB) once freed memory is handed back to the system, native threads, open files."""
    gc.collect()
    ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed heap pages cached per arena; a leak is what stays
    proc = psutil.Process()
    return proc.memory_info().rss / 1e6, proc.num_threads(), proc.num_fds()


def start_every_thread(server: Server) -> None:
    """Thread pools start their threads only as work overlaps: fill each once, so that the count measured
    after warm-up is the count under any load (the default executor is aiortc's)."""
    pools = [pool._executor for pool in (TTS_POOL, LLM_POOL, ASR_POOL, server.state.decoder.pool)]
    default = ThreadPoolExecutor()  # asyncio's default, made explicit to be filled: the same size rule
    asyncio.get_running_loop().set_default_executor(default)
    for executor in [*pools, default]:
        barrier = threading.Barrier(executor._max_workers, timeout=10)
        for future in [executor.submit(barrier.wait) for _ in range(executor._max_workers)]:
            future.result()


@dataclass
class Talk:
    """Continuous speech in one session: echo requests and uploads, interrupts at random moments."""

    server: Server
    wav: bytes
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    requests: int = 0
    refused: int = 0
    interrupts: int = 0

    async def run(self, sid: str, seconds: float, report_every: float = 0.0) -> None:
        t0 = time.monotonic()
        t_report = t0 + report_every
        while time.monotonic() - t0 < seconds:
            if self.rng.random() < 0.2:
                status, _ = await upload(self.server, sid, self.wav)
            else:
                status, _ = await self.server.post("/human", {"sessionid": sid, "text": TEXT, "type": "echo"})
            self.requests += 1
            self.refused += status == 429
            assert status in (200, 429), status
            await asyncio.sleep(float(self.rng.uniform(0.5, 4.0)))
            if self.rng.random() < 0.3:
                assert (await self.server.post("/interrupt_talk", {"sessionid": sid}))[0] == 200
                self.interrupts += 1
            if report_every and time.monotonic() > t_report:
                t_report += report_every
                print(f"  {time.monotonic() - t0:.0f} s: RSS {usage()[0]:.1f} MB", flush=True)


async def cycle(server: Server, talk: Talk, seconds: float = 0.0) -> Client:
    """Connect, receive video, talk for `seconds`, disconnect; the session must be gone after."""
    client = Client(server)
    sid = await client.connect()
    await client.wait_video(3)
    await talk.run(sid, seconds, report_every=60)
    await client.close()
    server.clients.remove(client)
    assert await server.wait_sessions(0, timeout=10)
    return client


@pytest.mark.timeout(CYCLES * 10 + SPEECH_SECONDS * 2 + WARM_UP_SECONDS + 120)
async def test_cycles_and_continuous_speech_leave_nothing_behind(serve, config) -> None:
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 200 * np.arange(32000) / 16000), 16000, format="WAV")
    async with serve(config, max_session=2) as server:
        talk = Talk(server, buf.getvalue())
        t0 = time.monotonic()
        start_every_thread(server)
        await cycle(server, talk, WARM_UP_SECONDS)  # everything that allocates once (voice, codecs) has run
        for _ in range(BASELINE_CYCLES - 1):
            await cycle(server, talk)
        base = usage()
        print(
            f"after {BASELINE_CYCLES} cycles ({time.monotonic() - t0:.0f} s): RSS {base[0]:.1f} MB, "
            f"{base[1]} threads, {base[2]} fds, {threading.active_count()} Python threads"
        )
        for _ in range(CYCLES - BASELINE_CYCLES):
            await cycle(server, talk)
        after_cycles = usage()
        print(
            f"after {CYCLES} cycles ({time.monotonic() - t0:.0f} s): RSS {after_cycles[0]:.1f} MB, "
            f"{after_cycles[1]} threads, {after_cycles[2]} fds"
        )
        talk = Talk(server, talk.wav)
        client = await cycle(server, talk, SPEECH_SECONDS)
        assert len(client.video_times) > 20 * SPEECH_SECONDS  # video flowed the whole time (25 fps nominal)
        end = usage()
    print(
        f"speech {SPEECH_SECONDS:.0f} s: {talk.requests} requests ({talk.refused} refused with 429), "
        f"{talk.interrupts} interrupts; end: RSS {end[0]:.1f} MB ({100 * (end[0] / base[0] - 1):+.1f} %), "
        f"{end[1]} threads, {end[2]} fds"
    )
    assert end[0] <= base[0] * 1.05, f"RSS grew from {base[0]:.1f} to {end[0]:.1f} MB"
    assert end[1] == base[1], f"threads: {base[1]} -> {end[1]}"
    assert end[2] == base[2], f"open files: {base[2]} -> {end[2]}"
