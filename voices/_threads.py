"""Blocking work off the event loop: bounded thread pools of their own, and streaming the results of a
producer running in one (piper, a local LLM) into an async iterator, with prompt cancellation.

Every kind of blocking work has its own small pool instead of asyncio's default executor: aiortc encodes
and decodes video and audio in the default executor, so anything that could fill it (a burst of uploads,
slow TTS, a stuck job) would stop every session's media.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Pool:
    """A named, bounded thread pool: at most `workers` jobs of this kind run at once, the rest wait their turn."""

    def __init__(self, name: str, workers: int) -> None:
        self.name = name
        self.workers = workers
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"pool-{name}")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        """No new jobs; the threads end when their current job does."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# One pool per kind of blocking work of the voices (process-wide, like the models they run).
TTS_POOL = Pool("tts", 2)
LLM_POOL = Pool("llm", 1)
ASR_POOL = Pool("asr", 1)

# A producer runs in the worker thread: it calls emit(item) for each result
# and should return soon after stop.is_set() becomes true.
Producer = Callable[[Callable[[T], None], threading.Event], None]

_DONE = object()


async def stream_from_thread(producer: Producer[T], pool: Pool) -> AsyncIterator[T]:
    """Run ``producer`` in ``pool`` and yield what it emits.

    When the consumer stops early (break, aclose, task cancelled) the stop
    event is set; the producer finishes the piece it is working on and its
    late results are discarded. Exceptions of the producer are re-raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def put(item: object) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop already closed: nobody is listening
            stop.set()

    def run() -> None:
        try:
            producer(lambda item: None if stop.is_set() else put(item), stop)
        except BaseException as e:  # noqa: BLE001 -- handed over to the consumer
            put(e)
        else:
            put(_DONE)

    future = asyncio.ensure_future(pool.run(run))
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
        await future
    finally:
        stop.set()
