"""Soak: 200 connect/disconnect cycles, then 10 minutes of continuous speech with interrupts and uploads, in one
server. Whatever a session leaves behind (a task, a thread, a socket, a buffer) would grow with the cycles:
RSS must end within 5 % of its level after the first 20 cycles, threads and open files exactly there.

SOAK_CYCLES and SOAK_SECONDS shorten it for a local run; CI runs the full length."""
from __future__ import annotations

import asyncio
import gc
import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
import soundfile as sf

from testing.server_client import Client, Server, is_speaking, until, upload
from voices._threads import ASR_POOL, LLM_POOL, TTS_POOL

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("loopback_only")]

CYCLES = int(os.environ.get("SOAK_CYCLES", "200"))
SPEECH_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
BASELINE_CYCLES = 20
TEXT = ("This is the soak test speaking for a long time. Every sentence goes through the voice, the framer, "
        "the renderer and the tracks. Interrupts come at random moments. Nothing may be left behind.")


def usage() -> tuple[float, int, int]:
    gc.collect()
    proc = psutil.Process()
    return proc.memory_info().rss / 1e6, proc.num_threads(), proc.num_fds()


def start_every_thread(server: Server) -> None:
    """Thread pools start their threads only as work overlaps: fill each once, so that the count measured
    after warm-up is the count under any load (the default executor is aiortc's)."""
    pools = [pool._executor for pool in (TTS_POOL, LLM_POOL, ASR_POOL, server.state.decoder.pool)]
    default = ThreadPoolExecutor()  # asyncio's default: the same size rule
    loop = asyncio.get_running_loop()
    loop.set_default_executor(default)
    for executor in [*pools, default]:
        barrier = threading.Barrier(executor._max_workers, timeout=10)
        for future in [executor.submit(barrier.wait) for _ in range(executor._max_workers)]:
            future.result()


async def cycle(server: Server, warm_up: bool = False) -> None:
    client = Client(server)
    sid = await client.connect()
    await client.wait_video(3)
    if warm_up:
        start_every_thread(server)
        await server.post("/human", {"sessionid": sid, "text": "Warming up the voice.", "type": "echo"})
        assert await until(lambda: is_speaking(server, sid), 10)
        await server.post("/interrupt_talk", {"sessionid": sid})
    await client.close()
    server.clients.remove(client)
    assert await server.wait_sessions(0, timeout=10)


@pytest.mark.timeout(CYCLES * 10 + SPEECH_SECONDS * 2 + 120)
async def test_cycles_and_continuous_speech_leave_nothing_behind(serve, config) -> None:
    rng = np.random.default_rng(7)
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 200 * np.arange(32000) / 16000), 16000, format="WAV")
    wav = buf.getvalue()
    async with serve(config, max_session=2) as server:
        t0 = time.monotonic()
        for i in range(BASELINE_CYCLES):
            await cycle(server, warm_up=i == 0)  # loads the voice and starts every pool's threads
        base = usage()
        print(f"after {BASELINE_CYCLES} cycles ({time.monotonic() - t0:.0f} s): RSS {base[0]:.1f} MB, "
              f"{base[1]} threads, {base[2]} fds, {threading.active_count()} Python threads")
        for _ in range(CYCLES - BASELINE_CYCLES):
            await cycle(server)
        after_cycles = usage()
        print(f"after {CYCLES} cycles ({time.monotonic() - t0:.0f} s): RSS {after_cycles[0]:.1f} MB, "
              f"{after_cycles[1]} threads, {after_cycles[2]} fds")

        client = Client(server)
        sid = await client.connect()
        await client.wait_video(3)
        t_speech, requests, interrupts, refused = time.monotonic(), 0, 0, 0
        t_report = t_speech + 60
        while time.monotonic() - t_speech < SPEECH_SECONDS:
            if rng.random() < 0.2:
                status, _ = await upload(server, sid, wav)
            else:
                status, _ = await server.post("/human", {"sessionid": sid, "text": TEXT, "type": "echo"})
            requests += 1
            refused += status == 429
            assert status in (200, 429), status
            await asyncio.sleep(float(rng.uniform(0.5, 4.0)))
            if time.monotonic() > t_report:
                t_report += 60
                print(f"  {time.monotonic() - t_speech:.0f} s: RSS {usage()[0]:.1f} MB", flush=True)
            if rng.random() < 0.3:
                assert (await server.post("/interrupt_talk", {"sessionid": sid}))[0] == 200
                interrupts += 1
        live = server.state.registry.get(sid)
        stats = live.session.stats
        assert len(client.video_times) > 20 * SPEECH_SECONDS  # video flowed the whole time (25 fps nominal)
        await client.close()
        server.clients.remove(client)
        assert await server.wait_sessions(0, timeout=10)
        end = usage()
    print(f"speech {SPEECH_SECONDS:.0f} s: {requests} requests ({refused} refused with 429), {interrupts} "
          f"interrupts, {stats.ticks} ticks, {stats.late_ticks} late; end: RSS {end[0]:.1f} MB "
          f"({100 * (end[0] / base[0] - 1):+.1f} %), {end[1]} threads, {end[2]} fds")
    assert end[0] <= base[0] * 1.05, f"RSS grew from {base[0]:.1f} to {end[0]:.1f} MB"
    assert end[1] == base[1], f"threads: {base[1]} -> {end[1]}"
    assert end[2] == base[2], f"open files: {base[2]} -> {end[2]}"
