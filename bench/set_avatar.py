"""Switching a live session's avatar: what /set_avatar does, timed, on a real-time session (lite engine).

    .venv/bin/python -m bench.set_avatar [--switches 10]

Two avatars: the demo (one 512 px frame) and a 100-frame 384 px video avatar prepared here. Per switch: loading and
warming the avatar (load + engine bind + the blend plans of its first 3 s; first use only, then cached), the switch
itself (on the event loop), the time from the request to the first frame of the new avatar leaving the session's
clock, and the longest gap between two ticks around the switch (a stall of the clock would show here; 40 ms is none)
beside the longest gap in as many ticks just before it (the machine's own jitter).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import machine, summary
from engines.lite import LiteEngine
from musetalk.avatar_demo import demo_image, ensure_demo
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from pipeline.compositor import warm_blend_plans
from pipeline.session import Session
from server.config import ServerConfig
from server.services import Services, build_llm
from testing.media import shifted, write_video


async def run(root: Path, switches: int) -> None:
    config = ServerConfig(engine="lite", avatars_dir=root)
    services = Services(config, LiteEngine(), None, build_llm(config))
    demo, _ = await services.avatar("demo")
    session = Session("bench", demo, services.engine)
    emitted: list[tuple[float, int, tuple[int, ...]]] = []
    session.add_sink(lambda out: emitted.append((time.perf_counter(), out.tick, out.frame.shape)))
    await session.start()
    rows: dict[str, list[list[float]]] = {"first use": [], "again": []}
    try:
        await asyncio.sleep(1.5)
        for i in range(switches):
            target = "second" if i % 2 == 0 else "demo"
            kind = "first use" if i == 0 else "again"
            started = time.perf_counter()
            avatar, actions = await services.avatar(target)
            await asyncio.to_thread(warm_blend_plans, avatar, session.clock.current_tick())
            warmed = time.perf_counter()
            first = await session.set_avatar(avatar, actions)
            switched = time.perf_counter()
            while not emitted or emitted[-1][1] < first + 10:
                await asyncio.sleep(0.01)
            shown = next(t for t, k, _ in emitted if k == first)
            around = [t for t, k, _ in emitted if first - 10 <= k <= first + 10]
            before = [t for t, k, _ in emitted if first - 31 <= k <= first - 11]  # as long, with no switch
            rows[kind].append(
                [
                    1000 * (warmed - started),
                    1000 * (switched - warmed),
                    1000 * (shown - started),
                    1000 * max(np.diff(around)),
                    1000 * max(np.diff(before)),
                ]
            )
            await asyncio.sleep(1.0)
    finally:
        await session.close()
    for kind, values in rows.items():
        if not values:
            continue
        cols = np.array(values).T
        print(
            f"set_avatar ({kind}, {len(values)}x): load+warm {summary(cols[0])}; switch {summary(cols[1])}; "
            f"request -> first frame of the new avatar {summary(cols[2])}; longest tick gap around the switch "
            f"{summary(cols[3])}, in as many ticks before it {summary(cols[4])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.set_avatar")
    parser.add_argument("--switches", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "avatars"
        ensure_demo(root, progress=False, models_dir=Path(tmp) / "no-models")
        img = cv2.resize(demo_image(), (384, 384), interpolation=cv2.INTER_AREA)
        video = write_video(Path(tmp) / "drift.mp4", [shifted(img, i % 7, i % 5) for i in range(100)])
        prepare_avatar(video, "second", root, PrepareOptions(progress=False, models_dir=Path(tmp) / "no-models"))
        asyncio.run(run(root, max(2, args.switches)))


if __name__ == "__main__":
    main()
