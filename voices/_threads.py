"""Stream the results of blocking work (piper, a local LLM) done in a worker
thread into an async iterator, with prompt cancellation."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

T = TypeVar("T")

# A producer runs in the worker thread: it calls emit(item) for each result
# and should return soon after stop.is_set() becomes true.
Producer = Callable[[Callable[[T], None], threading.Event], None]

_DONE = object()


async def stream_from_thread(producer: Producer[T]) -> AsyncIterator[T]:
    """Run ``producer`` in the default executor and yield what it emits.

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
        except BaseException as e:  # handed over to the consumer
            put(e)
        else:
            put(_DONE)

    future = loop.run_in_executor(None, run)
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
