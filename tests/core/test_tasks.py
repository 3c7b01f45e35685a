"""core.tasks.TaskOwner: starts, names, tracks, cancels and awaits tasks and threads; logs failures once."""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading

import pytest

from core.tasks import OwnerClosedError, TaskOwner


async def forever() -> None:
    await asyncio.Event().wait()


class StoppableThread:
    """A thread body that runs until told to stop."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.ran = threading.Event()

    def run(self) -> None:
        self.ran.set()
        self.stop.wait()


async def test_close_cancels_and_awaits_tasks_and_joins_threads_of_the_owner_and_its_groups() -> None:
    owner = TaskOwner("s")
    group = owner.group("voice")
    tasks = [owner.spawn(forever(), "a"), group.spawn(forever(), "b")]
    body = StoppableThread()
    thread = owner.start_thread(body.run, "worker-s", stop=body.stop.set)
    assert body.ran.wait(5) and thread.name == "worker-s" and tasks[1].get_name() == "b"
    assert len(owner) == 3 and len(group) == 1
    await owner.close()
    assert all(t.cancelled() for t in tasks) and not thread.is_alive()
    assert len(owner) == 0 and owner.closed and group.closed


async def test_close_is_idempotent_and_a_closed_owner_refuses_new_work_clearly() -> None:
    owner = TaskOwner("session-x")
    owner.spawn(forever(), "a")
    await asyncio.gather(owner.close(), owner.close())  # a second close waits for the first
    await owner.close()
    coro = forever()
    with pytest.raises(OwnerClosedError, match="session-x is closed: it takes no task 'late'"):
        owner.spawn(coro, "late")
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # closed, never left to warn "never awaited"
    with pytest.raises(OwnerClosedError, match="thread"):
        owner.start_thread(lambda: None, "late", stop=lambda: None)
    with pytest.raises(OwnerClosedError, match="group"):
        owner.group("late")


async def test_cancel_ends_the_tasks_so_far_and_the_owner_stays_open() -> None:
    owner = TaskOwner("s")
    first = owner.spawn(forever(), "a")
    await owner.cancel()
    assert first.cancelled() and len(owner) == 0
    second = owner.spawn(asyncio.sleep(0, "done"), "b")
    assert await second == "done"
    await owner.close()


async def test_finished_tasks_threads_and_closed_groups_are_forgotten() -> None:
    owner = TaskOwner("s")
    for i in range(200):
        await owner.spawn(asyncio.sleep(0), f"t{i}")
    threads = [owner.start_thread(lambda: None, f"th{i}", stop=lambda: None) for i in range(20)]
    for thread in threads:
        thread.join(5)
    for i in range(20):
        await owner.group(f"g{i}").close()
    assert len(owner) == 0 and not owner._tasks and not owner._threads and not owner._groups
    await owner.close()


async def test_a_failure_is_logged_once_with_its_traceback_and_a_cancellation_not_at_all(caplog) -> None:
    owner = TaskOwner("s")

    async def broken() -> None:
        raise ValueError("boom")

    def broken_thread() -> None:
        raise OSError("disk")

    caplog.set_level(logging.ERROR, "core.tasks")
    failed = owner.spawn(broken(), "broken")
    cancelled = owner.spawn(forever(), "cancelled")
    await asyncio.sleep(0)
    cancelled.cancel()
    owner.start_thread(broken_thread, "broken-thread", stop=lambda: None)
    await owner.close()
    with pytest.raises(ValueError, match="boom"):
        failed.result()  # the caller may still look: the owner only logged it
    records = [(r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [("s: task broken failed", True), ("s: thread broken-thread failed", True)] or records == [
        ("s: thread broken-thread failed", True),
        ("s: task broken failed", True),
    ]


async def test_a_task_may_close_its_own_owner() -> None:
    owner = TaskOwner("s")
    other = owner.spawn(forever(), "other")

    async def closer() -> str:
        await owner.close()
        return "closed"

    assert await owner.spawn(closer(), "closer") == "closed"
    assert other.cancelled() and owner.closed


async def test_a_thread_may_start_from_another_thread_while_the_owner_closes() -> None:
    """set_avatar starts a worker off the event loop: a thread is either refused or known to close()."""
    owner = TaskOwner("s")
    bodies = [StoppableThread() for _ in range(20)]

    def start_all() -> None:
        for body in bodies:
            try:
                owner.start_thread(body.run, "w", stop=body.stop.set)
            except OwnerClosedError:
                body.stop.set()

    starter = threading.Thread(target=start_all)
    starter.start()
    await owner.close()
    starter.join(5)
    assert not [t for t in threading.enumerate() if t.name == "w"]


async def test_a_thread_that_ignores_stop_is_reported_not_waited_for_forever(caplog, monkeypatch) -> None:
    import core.tasks

    monkeypatch.setattr(core.tasks, "JOIN_TIMEOUT_S", 0.1)
    owner = TaskOwner("s")
    release = threading.Event()

    def stuck() -> None:
        release.wait()

    thread = owner.start_thread(stuck, "stuck", stop=lambda: None)
    await owner.close()
    assert "s: thread stuck did not stop within 0.1 s" in caplog.text
    release.set()
    thread.join(5)
