"""pipeline.stats.SessionStats: counters written from the worker's thread and the event loop at once."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from pipeline.stats import COUNTERS, SessionStats

N = 20_000


async def test_a_thread_and_the_loop_counting_at_once_lose_no_increment() -> None:
    stats = SessionStats()
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter lets them
    try:

        def worker() -> None:
            for _ in range(N):
                stats.add(dropped_stale=1, dropped_frames=2)
                stats.record_batch(1, 0.5)

        thread = threading.Thread(target=worker)
        thread.start()
        for i in range(N):
            stats.add(dropped_stale=1, dropped_frames=1)
            stats.record_batch(2, 0.25)
            if i % 1000 == 0:
                await asyncio.sleep(0)  # the loop stays a loop
        await asyncio.to_thread(thread.join)
    finally:
        sys.setswitchinterval(old)
    assert (stats.dropped_stale, stats.dropped_frames, stats.rendered_frames) == (2 * N, 3 * N, 3 * N)
    assert stats.render_seconds == pytest.approx(0.75 * N)


def test_only_counters_can_be_added_to() -> None:
    stats = SessionStats()
    with pytest.raises(AttributeError, match="no counter frames"):
        stats.add(frames=1)
    with pytest.raises(AttributeError, match="no counter last_latency_ms"):
        stats.add(last_latency_ms=1)
    assert {"ticks", "dropped_stale", "dropped_frames", "render_errors"} <= COUNTERS
    assert stats == SessionStats()  # nothing was changed by a refused add
