"""One owner for the asyncio tasks and threads of a unit that lives and dies as one (a session, the app).

Everything a session runs in the background is started through its owner, so one `close()` ends all of it:
tasks are cancelled and awaited, threads are told to stop and joined. A group (`group()`) is an owner inside an
owner for a part that ends its own work earlier (a voice's requests on interrupt, a microphone's transcriptions):
closing the owner closes its groups too. Finished tasks and threads are forgotten at once, so a long session's
owner does not grow; a failure is logged once, here (a cancellation is not a failure).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
JOIN_TIMEOUT_S = 10.0  # a thread still running this long after it was told to stop is reported, not waited for
JOIN_POLL_S = 0.005


class OwnerClosedError(RuntimeError):
    """Work was handed to an owner that has been closed (its session has ended)."""


class TaskOwner:
    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._threads: dict[threading.Thread, Callable[[], None]] = {}  # each running thread and how to stop it
        self._groups: dict[TaskOwner, None] = {}  # open groups, in the order made (a dict: ordered, O(1) removal)
        self._parent: TaskOwner | None = None
        self._lock = threading.Lock()  # threads leave _threads from their own thread; start_thread may run off-loop
        self._closed = False
        self._ended = asyncio.Event()  # set when close() has finished: a second close() waits for the first

    def __repr__(self) -> str:
        return f"<TaskOwner {self.name} tasks={len(self._tasks)} threads={len(self._threads)}>"

    def __len__(self) -> int:
        """Tasks and threads running now, in groups too."""
        with self._lock:
            threads = len(self._threads)
        return len(self._tasks) + threads + sum(len(g) for g in list(self._groups))

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self, what: str = "new work") -> None:
        if self._closed:
            raise OwnerClosedError(f"{self.name} is closed: it takes no {what}")

    # -- starting work --------------------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `coro` as a task named `name`; refused (the coroutine closed unrun) once the owner is closed."""
        if self._closed:
            coro.close()  # never awaited otherwise: Python would warn about it
            self.check_open(f"task {name!r}")
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def start_thread(self, target: Callable[[], None], name: str, stop: Callable[[], None]) -> threading.Thread:
        """Run `target` in a (daemon) thread named `name`, started now; `stop` tells it to end (close() calls it,
        then joins the thread). Callable from any thread."""
        with self._lock:  # held while it starts: close() never sees a thread that is known but not started
            self.check_open(f"thread {name!r}")
            thread = threading.Thread(target=self._run_thread, args=(target,), name=name, daemon=True)
            thread.start()
            self._threads[thread] = stop
        return thread

    def group(self, name: str) -> TaskOwner:
        """An owner for a part of this one's work, closed with it (or before, by whoever holds it)."""
        self.check_open(f"group {name!r}")
        child = TaskOwner(f"{self.name}/{name}")
        child._parent = self
        self._groups[child] = None
        return child

    # -- ending work ----------------------------------------------------------------------------------------
    async def cancel(self) -> None:
        """Cancel the tasks running now (not those of groups, nor threads) and wait until they have ended; the
        owner stays open. A task calling this is not cancelled (it would wait for itself)."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def close(self) -> None:
        """End everything and take no new work: groups first (newest first), then this owner's tasks (cancelled
        and awaited), then its threads (told to stop, joined). Idempotent; a second call waits for the first."""
        if self._closed:
            await self._ended.wait()
            return
        self._closed = True
        try:
            for child in reversed(list(self._groups)):
                await child.close()
            while self._tasks - {asyncio.current_task()}:  # a task that spawned another as it ended is awaited too
                await self.cancel()
            await self._join_threads()
        finally:
            if self._parent is not None:
                self._parent._groups.pop(self, None)
            self._ended.set()

    async def _join_threads(self) -> None:
        with self._lock:
            threads = list(self._threads.items())
        for _, stop in threads:
            try:
                stop()
            except Exception:
                log.exception("%s: stopping a thread failed", self.name)
        # Waited for by polling, not joined in an executor thread: the loop's executor is small and shared, and
        # joining must neither block the loop nor start threads of its own.
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while any(t.is_alive() for t, _ in threads) and time.monotonic() < deadline:
            await asyncio.sleep(JOIN_POLL_S)
        for thread, _ in threads:
            if thread.is_alive():
                log.error("%s: thread %s did not stop within %g s", self.name, thread.name, JOIN_TIMEOUT_S)
            else:
                thread.join()  # it has ended: this returns at once (and reaps it)

    # -- bookkeeping ----------------------------------------------------------------------------------------
    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:  # retrieved: asyncio logs it no more
            log.error("%s: task %s failed", self.name, task.get_name(), exc_info=error)

    def _run_thread(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Exception:
            log.exception("%s: thread %s failed", self.name, threading.current_thread().name)
        finally:
            with self._lock:
                self._threads.pop(threading.current_thread(), None)
