"""How many concurrent lite sessions one server process holds at 25 fps, and the CPU each one costs.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python -m bench.capacity'

For N = 1, 2, 4, 6, ... (stopping at the first N that fails) one server process runs N sessions (shared
LiteEngine and avatar, each with its SessionTracks and its own aiortc peer connection), each speaking
continuously (a syllable-modulated tone, so the lite engine renders a moving mouth on every frame). All
receivers run in ONE separate process (bench.receivers, driven over stdin/stdout with JSON lines),
so their decoding is not charged to the server. After a warm-up, for --seconds:

- received video fps per session and missing frames (gaps in the RTP timestamps), at the receiver;
- the sessions' repeated_frames / dropped_frames / late_ticks / skipped_ticks and frames the video / audio
  tracks dropped because the sender fell behind (deltas over the window), and the share of frames that were
  rendered speech;
- server process CPU (psutil cpu_times delta) in total and per session.

A level passes when every session receives >= 24.5 fps with no missing, repeated or dropped frames and no skipped
ticks (late ticks, sent late and caught up, are shown but lose nothing). The receivers share this machine's cores
with the server, so the figure is a lower bound for a server whose viewers are elsewhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass

import numpy as np
import psutil
from aiortc import RTCPeerConnection

from bench.common import machine
from bench.receivers import ReceiverClient, cpu_seconds
from engines.lite import LiteEngine
from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import ensure_demo
from musetalk.cli import ArgumentParser
from pipeline.session import Session
from server.media import SessionTracks
from testing.rtc import require_loopback_namespace

SR = 16000
MIN_FPS = 24.5  # a 12 s window measures 25 fps to within one frame
COUNTERS = ("ticks", "speech_frames", "repeated_frames", "dropped_frames", "late_ticks", "skipped_ticks")


def speech(seconds: float) -> np.ndarray:
    """A 220 Hz tone whose loudness swings between near-silence and loud ~3 times a second, like syllables."""
    t = np.arange(int(seconds * SR)) / SR
    envelope = 0.01 + 0.29 * (0.5 + 0.5 * np.sin(2 * np.pi * 3.1 * t))
    return (envelope * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


@dataclass
class Level:
    n: int
    seconds: float
    fps: list[float]  # video frames received per second, per session
    audio_fps: list[float]  # 20 ms audio frames received per second (50 when complete)
    missing: list[int]
    deltas: list[dict[str, int]]  # COUNTERS + frames each track dropped, per session
    server_cpu: float  # seconds over the window
    receiver_cpu: float

    def total(self, key: str) -> int:
        return sum(d[key] for d in self.deltas)

    @property
    def ok(self) -> bool:
        return (
            min(self.fps) >= MIN_FPS
            and sum(self.missing) == 0
            and self.total("repeated_frames") == 0
            and self.total("dropped_frames") == 0
            and self.total("skipped_ticks") == 0
            and self.total("video_dropped") == 0
            and self.total("audio_dropped") == 0
        )

    @property
    def cpu_per_session(self) -> float:
        """Fraction of one core."""
        return self.server_cpu / self.seconds / self.n

    @property
    def cpu_ms_per_frame(self) -> float:
        return 1000.0 * self.server_cpu / max(1, self.total("ticks"))


def counters(session: Session, tracks: SessionTracks) -> dict[str, int]:
    c = {k: getattr(session.stats, k) for k in COUNTERS}
    c["video_dropped"], c["audio_dropped"] = tracks.video.dropped, tracks.audio.dropped
    return c


async def run_level(
    n: int, receivers: ReceiverClient, avatar: Avatar, engine: LiteEngine, warmup: float, seconds: float
) -> Level:
    sessions: list[Session] = []
    tracks: list[SessionTracks] = []
    pcs: list[RTCPeerConnection] = []
    try:
        for i in range(n):
            session = Session(f"n{n}-s{i}", avatar, engine)
            sessions.append(session)
            tracks.append(SessionTracks(session))
            pcs.append(await receivers.connect(session.session_id, tracks[-1]))
        for session in sessions:
            await session.start()
            await session.push_audio(speech(warmup + seconds + 3.0))
            await session.end_speech()
        await asyncio.sleep(warmup)  # connections up, first keyframes sent, worker threads running

        proc = psutil.Process()
        before = [counters(s, t) for s, t in zip(sessions, tracks)]
        cpu0, t0 = cpu_seconds(proc), time.monotonic()
        await receivers.request(op="mark")
        await asyncio.sleep(seconds)
        report = await receivers.request(op="report")
        cpu1, t1 = cpu_seconds(proc), time.monotonic()
        after = [counters(s, t) for s, t in zip(sessions, tracks)]
    finally:
        await receivers.request(op="close")
        for pc in pcs:
            await pc.close()
        for t in tracks:
            t.close()
        for s in sessions:
            await s.close()

    peers = [report["peers"][s.session_id] for s in sessions]
    return Level(
        n=n,
        seconds=t1 - t0,
        fps=[p["video"] / report["seconds"] for p in peers],
        audio_fps=[p["audio"] / report["seconds"] for p in peers],
        missing=[p["missing"] for p in peers],
        deltas=[{k: a[k] - b[k] for k in a} for a, b in zip(after, before)],
        server_cpu=cpu1 - cpu0,
        receiver_cpu=report["cpu"],
    )


TABLE_HEADER = (
    "|  N | fps/session min..max | audio/s min | missing | repeated | dropped | late | track drops v/a "
    "| skipped | speech % | server CPU (cores) | per session | CPU ms/frame | receivers CPU | result |\n"
    "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"
)


def table_row(lv: Level) -> str:
    speech_share = 100.0 * lv.total("speech_frames") / max(1, lv.total("ticks"))
    return (
        f"| {lv.n:2d} | {min(lv.fps):5.2f} .. {max(lv.fps):5.2f} | {min(lv.audio_fps):5.1f} | {sum(lv.missing)} | "
        f"{lv.total('repeated_frames')} | {lv.total('dropped_frames')} | {lv.total('late_ticks')} | "
        f"{lv.total('video_dropped')}/{lv.total('audio_dropped')} | {lv.total('skipped_ticks')} | "
        f"{speech_share:5.1f} | "
        f"{lv.server_cpu / lv.seconds:.2f} | "
        f"{100 * lv.cpu_per_session:5.1f} % | {lv.cpu_ms_per_frame:5.2f} | "
        f"{lv.receiver_cpu / lv.seconds:.2f} | {'ok' if lv.ok else 'FAIL'} |"
    )


def levels(maximum: int) -> list[int]:
    return [n for n in [1, 2, *range(4, maximum + 1, 2)] if n <= maximum]


async def server_main(args: argparse.Namespace) -> None:
    require_loopback_namespace()
    print(f"machine: {machine()}")
    ensure_demo(progress=False)
    avatar, engine = load_avatar("demo"), LiteEngine()
    print(
        f"engine: lite (batch {engine.batch_size}), avatar demo {avatar.frames.shape[2]}x{avatar.frames.shape[1]}, "
        f"VP8 + Opus; {args.warmup:g} s warm-up, {args.seconds:g} s measured per level; receivers in one separate "
        f"process on the same {os.cpu_count()} cores",
        flush=True,
    )
    receivers = await ReceiverClient.spawn()
    results: list[Level] = []
    try:
        for n in levels(args.max_sessions):
            lv = await run_level(n, receivers, avatar, engine, args.warmup, args.seconds)
            results.append(lv)
            print(
                f"N={n}: {'ok' if lv.ok else 'FAIL'}, fps {min(lv.fps):.2f}..{max(lv.fps):.2f}, server CPU "
                f"{lv.server_cpu / lv.seconds:.2f} cores",
                flush=True,
            )
            if not lv.ok:
                break
            await asyncio.sleep(1.0)  # let the closed connections' tasks finish before the next level
    finally:
        await receivers.stop()

    print(TABLE_HEADER)
    for lv in results:
        print(table_row(lv))
    passed = [lv for lv in results if lv.ok]
    best = passed[-1] if passed else None
    capped = results[-1].ok  # every level tried passed: the true capacity is higher
    if best is None:
        print(f"\nanswer: not even 1 session holds 25 fps here (target >= {args.target}): MISSED")
        return
    one = results[0]
    verdict = "met" if best.n >= args.target else ("not reached yet" if capped else "MISSED")
    cores = os.cpu_count() or 1
    print(
        f"\nanswer: {best.n}{'+' if capped else ''} concurrent lite sessions hold 25 fps with zero dropped/repeated "
        f"frames on this machine (target >= {args.target}: {verdict})"
        f"{'; the largest N tried passed (raise --max_sessions)' if capped else f'; N={results[-1].n} failed'}.\n"
        f"server CPU per session (render + composite + VP8 + Opus + RTP/SRTP + asyncio): "
        f"{100 * one.cpu_per_session:.1f} % of one core = {one.cpu_ms_per_frame:.2f} ms per frame with one session; "
        f"{100 * best.cpu_per_session:.1f} % = {best.cpu_ms_per_frame:.2f} ms at N={best.n} (lower once the cores "
        f"are saturated: the process gets less time, sessions do not get cheaper).\n"
        f"at the one-session rate a server with the {cores} cores to itself (viewers elsewhere) would fit "
        f"~{cores / one.cpu_per_session:.0f} sessions, ~{1 / one.cpu_per_session:.1f} per core"
    )


def main() -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured seconds per level (default 12)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring (default 3)")
    parser.add_argument("--max_sessions", type=int, default=16)
    parser.add_argument("--target", type=int, default=4)
    args = parser.parse_args()
    asyncio.run(server_main(args))


if __name__ == "__main__":
    main()
