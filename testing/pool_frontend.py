"""A front end of the render pool for tests: stepped sessions speaking through ``--render_pool``, in a process of
its own (a front end is a Ray driver of its own), printing what they showed as one JSON line.

Stepped sessions (their media clock advances when a tick is taken, waiting for its frame) make "every speech tick
shows a face rendered for it" checkable on a CPU far too slow for 25 fps in real time.

    python -m testing.pool_frontend --render_pool ray --app musetalk-pool --avatars_dir DIR --sessions 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.items import OutputTick, Source
from engines.render_pool import DEFAULT_APP
from musetalk.avatar import load_avatar
from pipeline.session import Session, SessionOptions

WAIT_FOR_VIDEO_S = 120.0  # a stepped tick waits this long for its frame (a loaded CPU runs the tiny models slowly)


def speech(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * (120 + 20 * seed) * t) * (1 + 0.1 * rng.standard_normal(len(t)))).astype(
        np.float32
    )


def step_together(sessions: list[Session], ticks: int, wait: float = WAIT_FOR_VIDEO_S) -> list[list[OutputTick]]:
    """`ticks` ticks of every session, in turns (their workers render meanwhile, into the pool)."""
    outs: list[list[OutputTick]] = [[] for _ in sessions]
    for _ in range(ticks):
        for session, out in zip(sessions, outs):
            out.append(session.step(wait_for_video=wait))
    return outs


def summary(out: list[OutputTick], session: Session) -> dict:
    sources = [o.source for o in out]
    return {
        "speech": sources.count(Source.SPEECH),
        "repeat": sources.count(Source.REPEAT),
        "render_errors": session.stats.render_errors,
        "dropped_frames": session.stats.dropped_frames,
        "repeated_frames": session.stats.repeated_frames,
    }


async def run(render_pool: str, app: str, avatars_dir: Path, sessions: int, seconds: float, batch_size: int) -> dict:
    from engines.ray_pool import create_pooled_engine

    # Off the event loop, as the server does (a DeploymentHandle's blocking calls refuse to run on one).
    engine = await asyncio.to_thread(create_pooled_engine, render_pool, "v15", batch_size, app_name=app)
    try:
        avatar = load_avatar("demo", avatars_dir)
        live = [
            Session(f"s{i}", avatar, engine, options=SessionOptions(crossfade_ticks=0), stepped=True)
            for i in range(sessions)
        ]
        for i, session in enumerate(live):
            await session.start()
            await session.push_audio(speech(seconds, i))
            await session.end_speech()
        ticks = round(seconds * 25)
        outs = await asyncio.to_thread(step_together, live, engine.lead_ticks + ticks + 4)
        for session in live:
            await session.close()
        stats = engine.pool.stats
        return {
            "ticks": ticks,
            "sessions": [summary(o, s) for o, s in zip(outs, live)],
            "replicas": dict(stats.by_replica),
            "hop_ms": 1000 * stats.hop_seconds,
            "lead_ticks": engine.lead_ticks,
        }
    finally:
        await asyncio.to_thread(engine.close)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--render_pool", default="ray")
    p.add_argument("--app", default=DEFAULT_APP, help="the pool's Serve application")
    p.add_argument("--avatars_dir", type=Path, required=True)
    p.add_argument("--sessions", type=int, default=2)
    p.add_argument("--seconds", type=float, default=0.8)
    p.add_argument("--batch_size", type=int, default=4)
    a = p.parse_args(argv)
    result = asyncio.run(run(a.render_pool, a.app, a.avatars_dir, a.sessions, a.seconds, a.batch_size))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
