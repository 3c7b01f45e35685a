"""Session pipeline numbers: latency into the session, A/V offset and drift at an aiortc receiver, interrupt.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.pipeline --minutes 10'

1. latency: first speech sample pushed -> its first lip-synced frame leaves the session (lite engine).
2. sync: tone bursts after silence; at the receiver, the audio onset vs the mouth-motion onset, both on the
   receiver's clock (RTP time + per-stream arrival offset, as a player does); drift = slope over the run.
   2b: the audio onset vs the moment the mouth reaches 50 % of its opening in that burst (what a viewer sees).
3. interrupt: interrupt during speech -> first idle (closed-mouth) frame arriving at the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from aiortc import RTCPeerConnection

from bench.common import machine, summary
from bench.measure import (
    IDLE_MATCH,
    audio_onsets,
    mouth_difference,
    mouth_region,
    video_onsets,
)
from bench.receivers import WHOLE_FRAME, ReceiverClient, half_open_times
from core.items import OutputTick, Source
from engines.base import Engine
from engines.lite import LiteEngine
from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import ensure_demo
from musetalk.cli import ArgumentParser
from pipeline.session import Session
from pipeline.stats import SessionStats
from server.media import SessionTracks
from testing.rtc import received, require_loopback_namespace

SR = 16000
TONE_AMPLITUDE = 0.3


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (TONE_AMPLITUDE * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def session_latency(avatar: Avatar, engine: Engine, trials: int) -> list[float]:
    session = Session("latency", avatar, engine)
    first_speech: list[float] = []

    def note_first_speech(out: OutputTick) -> None:
        if out.source is Source.SPEECH and not first_speech:
            first_speech.append(time.monotonic())

    session.add_sink(note_first_speech)
    await session.start()
    results = []
    for _ in range(trials):
        while session.speaking:  # the previous burst has fully played
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        first_speech.clear()
        t_in = time.monotonic()
        await session.push_audio(tone(0.3))
        await session.end_speech()
        give_up = t_in + 10.0
        while not first_speech and time.monotonic() < give_up:
            await asyncio.sleep(0.002)
        if first_speech:  # else every frame of the burst came too late to be shown (counted as repeats)
            results.append(1000 * (first_speech[0] - t_in))
    await session.close()
    return results


@dataclass(frozen=True)
class Burst:
    minutes: float  # into the run
    onset: float  # first darkening of the mouth - audio onset, ms
    half_open: float | None  # mouth at 50 % of its opening in this burst - audio onset, ms


async def sync_run(
    avatar: Avatar, engine: LiteEngine, minutes: float, period: float, inline: bool
) -> tuple[list[Burst], SessionStats]:
    """Tone bursts every `period` s for `minutes`; the offsets of each burst, and the session counters.

    The receiver runs in a process of its own (bench.receivers) unless `inline`: in this process its decoding
    shares the event loop with the session it measures.
    """
    burst_times: list[float] = []
    session = Session("sync", avatar, engine)

    async def bursts() -> None:
        await asyncio.sleep(2.0)  # connection up, encoder settled on the idle picture
        end = time.monotonic() + minutes * 60
        while time.monotonic() < end:
            burst_times.append(time.monotonic() * 1000.0)
            await session.push_audio(tone(0.4))
            await session.end_speech()
            await asyncio.sleep(period)
        await asyncio.sleep(1.0)

    region = mouth_region(avatar)
    if inline:
        async with received(session, video_region=region) as receiver:  # 10 min of full frames would be 12 GB
            await bursts()
        video, audio = receiver.frames["video"], receiver.frames["audio"]
        a_on = audio_onsets(audio, burst_times)
        v_on = video_onsets(video, burst_times, WHOLE_FRAME)
        half = half_open_times(video, burst_times, WHOLE_FRAME)
    else:
        a_on, v_on, half = await remote_onsets(session, region, bursts, burst_times)
    result = [
        Burst((b - burst_times[0]) / 60000.0, v - a, None if h is None else h - a)
        for b, a, v, h in zip(burst_times, a_on, v_on, half)
        if a is not None and v is not None
    ]
    return result, session.stats


async def remote_onsets(
    session: Session, region: tuple[slice, slice], run: Callable[[], Awaitable[None]], after_ms: list[float]
) -> tuple[list[float | None], list[float | None], list[float | None]]:
    """Run `run()` with the session sent to a receiver in another process; its audio onsets, video onsets and
    half-open times."""
    receivers = await ReceiverClient.spawn()
    tracks = SessionTracks(session)
    pc: RTCPeerConnection | None = None
    try:
        pc = await receivers.connect("sync", tracks, region)
        await session.start()
        await run()
        onsets = await receivers.request(op="onsets", id="sync", after_ms=after_ms)
        if onsets["unmatched"]:
            print(f"   warning: {onsets['unmatched']} received frames had no packet arrival time", flush=True)
        return onsets["audio"], onsets["video"], onsets["half_open"]
    finally:
        await receivers.stop()
        if pc is not None:
            await pc.close()
        tracks.close()
        await session.close()


async def interrupt_run(avatar: Avatar, engine: LiteEngine, trials: int) -> list[float]:
    region = mouth_region(avatar)
    results = []
    session = Session("interrupt", avatar, engine)
    async with received(session) as receiver:
        await asyncio.sleep(2.0)
        for _ in range(trials):
            idle = receiver.frames["video"][-1].data
            await session.push_audio(tone(3.0))
            await asyncio.sleep(1.0)
            t_int = time.monotonic() * 1000.0
            session.interrupt()
            await asyncio.sleep(0.6)
            for f in receiver.frames["video"]:
                if f.arrival_ms > t_int and mouth_difference(f.data, idle, region) < IDLE_MATCH:
                    results.append(f.arrival_ms - t_int)
                    break
    return results


async def musetalk_latency(avatar: Avatar, trials: int) -> tuple[list[float], str]:
    """The same latency with the musetalk engine on tiny random weights of the real architecture (CPU)."""
    import tempfile
    from pathlib import Path

    from engines.musetalk_engine import MuseTalkEngine
    from musetalk.tiny import write_tiny_layout

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_layout(Path(tmp))
        engine = MuseTalkEngine(models_dir=Path(tmp), batch_size=4)
        budget = (
            f"batch {engine.batch_size} ({engine.batch_size * 40} ms of audio), look-ahead "
            f"{engine.right_context_ticks} ticks ({engine.right_context_ticks * 40} ms: whisper window 80 ms + "
            f"{engine.context[1]:g} s right context), one batch {1000 * engine.batch_seconds:.0f} ms -> lead "
            f"{engine.lead_ticks} ticks = {engine.lead_ticks * 40} ms"
        )
        return await session_latency(avatar, engine, trials), budget


def sync_report(bursts: list[Burst], minutes: float, stats: SessionStats) -> str:
    off = np.asarray([b.onset for b in bursts])
    at = [b.minutes for b in bursts]
    slope = float(np.polyfit(at, off, 1)[0]) if len(off) > 2 else float("nan")
    tenth = max(1, len(off) // 10)
    lines = [
        f"2. A/V offset at the aiortc receiver (video onset - audio onset), {minutes:g} min, {len(off)} bursts: "
        f"median {np.median(off):+.1f} ms, mean {off.mean():+.1f}, p1 {np.percentile(off, 1):+.1f} / p99 "
        f"{np.percentile(off, 99):+.1f}, max |offset| {np.abs(off).max():.1f} ms, bursts over 20 ms: "
        f"{int((np.abs(off) > 20).sum())}  [target |offset| <= 20 ms]",
        f"   drift: median of the first tenth {np.median(off[:tenth]):+.1f} ms, of the last tenth "
        f"{np.median(off[-tenth:]):+.1f} ms, fitted slope {slope:+.3f} ms/min  [target: no drift]",
        f"   session counters: {stats.ticks} ticks, {stats.repeated_frames} repeated, {stats.dropped_frames} "
        f"dropped, {stats.late_ticks} late (caught up), {stats.skipped_ticks} skipped ticks",
    ]
    half = np.asarray([b.half_open for b in bursts if b.half_open is not None])
    if not len(half):
        return "\n".join([*lines, "2b. mouth at 50 % of its opening: no burst opened the mouth"])
    lines.append(
        f"2b. mouth at 50 % of its opening - audio onset, per burst at the receiver, {len(half)} bursts: "
        f"|offset| min {np.abs(half).min():.1f} / median {np.median(np.abs(half)):.1f} / max "
        f"{np.abs(half).max():.1f} ms (signed: median {np.median(half):+.1f}, min {half.min():+.1f}, max "
        f"{half.max():+.1f}), bursts over 20 ms: {int((np.abs(half) > 20).sum())}, no opening seen: "
        f"{len(bursts) - len(half)}  [target |offset| <= 20 ms in every burst]"
    )
    return "\n".join(lines)


def write_bursts(path: str, bursts: list[Burst]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["burst", "minutes", "onset_ms", "half_open_ms"])
        for i, b in enumerate(bursts):
            out.writerow([i, f"{b.minutes:.3f}", f"{b.onset:.2f}", "" if b.half_open is None else f"{b.half_open:.2f}"])


async def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the sync run (default 10)")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between tone bursts")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument(
        "--inline_receiver",
        action="store_true",
        help="sync: decode in this process instead of a separate receiver process",
    )
    parser.add_argument("--only", choices=("latency", "sync", "interrupt"), help="run one of the three parts")
    parser.add_argument("--per_burst", metavar="CSV", help="sync: write every burst's offsets to this file")
    args = parser.parse_args()
    require_loopback_namespace()
    ensure_demo(progress=False)
    avatar, engine = load_avatar("demo"), LiteEngine()
    print(f"machine: {machine()}")
    print(f"engine: lite (batch {engine.batch_size}, lead {engine.lead_ticks} ticks = {engine.lead_ticks * 40} ms)")
    if args.only in (None, "latency"):
        lat = await session_latency(avatar, engine, args.trials)
        print(
            f"1. latency, first speech sample in -> first lip-synced frame out of the session: {summary(lat)}"
            f"  [target <= 250 ms]",
            flush=True,
        )
        mt, budget = await musetalk_latency(avatar, max(3, args.trials // 2))
        print(
            f"1b. same, musetalk engine with the reduced (tiny, random) config on this CPU: {summary(mt)}\n"
            f"    budget: {budget}",
            flush=True,
        )
    if args.only in (None, "sync"):
        bursts, stats = await sync_run(avatar, engine, args.minutes, args.period, args.inline_receiver)
        print(sync_report(bursts, args.minutes, stats), flush=True)
        if args.per_burst:
            write_bursts(args.per_burst, bursts)
    if args.only in (None, "interrupt"):
        intr = await interrupt_run(avatar, engine, args.trials)
        print(f"3. interrupt -> first idle frame at the receiver: {summary(intr)}  [target <= 150 ms]", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
