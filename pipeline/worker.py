"""The inference stage: a thread that renders scheduled ticks in batches and composites them.

It takes ticks from a small thread-safe queue, waits for a full batch (plus the engine's right context)
only as long as the batch's deadline allows, skips the model for silent batches, and hands composited
frames to the output through a bounded queue (back-pressure: it never runs more than a few batches ahead).
A speaking tick is never rendered before the engine's right context after it has arrived, unless its utterance
ends first (flush, or its stretch breaks off): the deadline shrinks a batch to the ticks whose context is there,
it does not fill missing audio with zeros.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import numpy as np

from core.arrays import Image
from core.items import TickAudio, VideoResult
from core.tasks import TaskOwner
from core.units import TICK_SAMPLES
from engines.base import Engine, Renderer, RenderRequest, lead_ticks_for
from engines.batcher import StaleJob
from pipeline.compositor import Compositor
from pipeline.stats import SessionStats

log = logging.getLogger(__name__)


class Scheduled(Protocol):
    """What a TickQueue holds: something for one tick of one turn (TickAudio, VideoResult)."""

    @property
    def tick(self) -> int: ...

    @property
    def turn(self) -> int: ...


T = TypeVar("T", bound=Scheduled)


class TickQueue(Generic[T]):
    """A bounded FIFO shared by one producer and one consumer thread, with peek and turn-based purge."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: collections.deque[T] = collections.deque()
        self.cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Append unless full; never blocks."""
        with self.cond:
            if len(self._items) >= self.capacity:
                return False
            self._items.append(item)
            self.cond.notify_all()
            return True

    def put_wait(self, item: T, keep_waiting: Callable[[], bool]) -> bool:
        """Append, waiting for room while `keep_waiting()` holds (back-pressure on the producer thread)."""
        with self.cond:
            while len(self._items) >= self.capacity:
                if not keep_waiting():
                    return False
                self.cond.wait(0.05)
            self._items.append(item)
            self.cond.notify_all()
            return True

    def purge_turns_before(self, turn: int) -> int:
        with self.cond:
            before = len(self._items)
            self._items = collections.deque(i for i in self._items if i.turn >= turn)
            self.cond.notify_all()
            return before - len(self._items)

    def clear(self) -> None:
        with self.cond:
            self._items.clear()
            self.cond.notify_all()

    # The following are called with `cond` held.
    def peek(self, i: int = 0) -> T | None:
        return self._items[i] if i < len(self._items) else None

    def first(self, n: int) -> list[T]:
        """The first n items (fewer if there are fewer), in one pass (indexing a deque's middle is not O(1))."""
        return list(itertools.islice(self._items, n))

    def popleft(self) -> T:
        return self._items.popleft()


class InferenceWorker:
    def __init__(
        self,
        engine: Engine,
        renderer: Renderer,
        compositor: Compositor,
        cycle_index: Callable[[int], int],
        tick_time: Callable[[int], float],
        now: Callable[[], float],
        current_turn: Callable[[], int],
        stats: SessionStats,
        queue_capacity: int,
        out_capacity: int,
        name: str = "inference",
        own_frame: Callable[[int], Image] | None = None,
        on_render_error: Callable[[Exception], None] | None = None,
    ) -> None:
        self.engine = engine
        # Told of the first failed render of an outage (e.g. a render pool replica died), not of each batch: the
        # session reports it once; a render that succeeds ends the outage.
        self.on_render_error = on_render_error
        self._failing = False
        # The avatar frame (original index) shown for a tick the engine makes no face for (past its utterance's
        # last frame); without it such ticks get no video and the output repeats the last frame.
        self.own_frame = own_frame
        self.renderer = renderer
        self.compositor = compositor
        self.cycle_index = cycle_index
        self.tick_time = tick_time
        self.now = now
        self.current_turn = current_turn
        self.stats = stats
        self.inbox: TickQueue[TickAudio] = TickQueue(queue_capacity)
        self.outbox: TickQueue[VideoResult] = TickQueue(out_capacity)
        self._history_ticks = max(1, engine.left_context_ticks)
        self._history: collections.deque[TickAudio] = collections.deque(maxlen=self._history_ticks)
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # started by start(), through the session's task owner
        # Seconds a batch is expected to take; the worker stops waiting for a full batch this long before the
        # first frame is due. Starts pessimistic and follows the measured render time.
        self._budget = 0.02

    def start(self, tasks: TaskOwner) -> None:
        """Start the worker's thread, owned by `tasks` (the session's owner stops and joins it when it closes)."""
        self._thread = tasks.start_thread(self._run, self.name, stop=self.stop)

    def stop(self) -> None:
        """Tell the thread to end (it ends within a wait of its queues); its owner joins it. Never blocks."""
        self._stop.set()
        for q in (self.inbox, self.outbox):
            with q.cond:
                q.cond.notify_all()

    @property
    def lead_ticks(self) -> int:
        """How far ahead new audio must be scheduled so its first batch is rendered in time: the engine's own
        figure, raised when the batches measured here (this machine, its present load) take longer."""
        e = self.engine
        return max(e.lead_ticks, lead_ticks_for(e.right_context_ticks, self._budget))

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            batch, right, ends = self._next_batch()
            if batch:
                self._render_or_drop(batch, right, ends)

    def _render_or_drop(self, batch: list[TickAudio], right: list[TickAudio], ends: bool) -> None:
        try:
            self._render(batch, right, ends)
        except StaleJob:  # its turn ended (or the session closed) while it waited for the models: never shown
            self.stats.add(dropped_stale=len(batch))
        except Exception as e:  # a failed batch must not kill the session: its speech ticks repeat the last frame
            log.exception("render failed for ticks %d..%d", batch[0].tick, batch[-1].tick)
            self.stats.add(render_errors=1)
            if not self._failing and self.on_render_error is not None:
                self.on_render_error(e)
            self._failing = True

    def _job_turn(self) -> int:
        """The turn a render's queued model work is still wanted for: none (-1) once the worker stops."""
        return -1 if self._stop.is_set() else self.current_turn()

    def _utterance_run(self, limit: int) -> tuple[list[TickAudio], bool]:
        """The queued ticks from the head (at most `limit`) that are consecutive, of the current turn and of the
        head's utterance, and whether that utterance is known to end with the last of them (flushed there, or
        its stretch breaks off: the next queued tick is not the next tick)."""
        run: list[TickAudio] = []
        for item in self.inbox.first(limit):
            if run and (item.tick != run[-1].tick + 1 or item.utterance_pos == 0 or item.turn != run[-1].turn):
                return run, True
            run.append(item)
            if item.last:
                return run, True
        return run, False

    def _next_batch(self) -> tuple[list[TickAudio], list[TickAudio], bool]:
        """The next batch, the right context after it, and whether its utterance ends within the two."""
        q = self.inbox
        with q.cond:
            while not self._stop.is_set():
                plan = self._plan()
                if plan is None:
                    head = q.peek()
                    wait = self.tick_time(head.tick) - self._budget - self.now() if head is not None else 0.05
                    q.cond.wait(min(wait, 0.02) if wait > 0 else 0.005)  # past the deadline: its context may come
                    continue
                take, right, ends = plan
                batch = [q.popleft() for _ in range(take)]
                q.cond.notify_all()
                return batch, right, ends
        return [], [], False

    def _plan(self) -> tuple[int, list[TickAudio], bool] | None:
        """With the inbox's lock held: (how many ticks to take now, the right context after them, whether the
        utterance ends within the two), or None to wait. Drops stale ticks at the head on the way.

        A speaking tick needs the engine's right context after it (or its utterance's end). A full batch with its
        context is taken once no audio still to come could change it (its utterance ends within what has arrived,
        or as much has arrived as the engine can use), and else a batch time before its deadline: until then more
        of a streamed utterance may arrive, which an engine that uses all it is given (MuseTalk: the rest of the
        30 s segment) turns into the official features. A batch whose utterance ends is taken at once. At the
        deadline a batch is cut to the ticks whose context is there; silent ticks need none (the model is skipped
        for them). A speaking head tick still waiting for its context when its time has come could not be shown
        any more: it is dropped."""
        q, size, context = self.inbox, self.engine.batch_size, self.engine.right_context_ticks
        usable = max(context, self.engine.max_right_context_ticks)
        while (head := q.peek()) is not None:
            if head.turn != self.current_turn():
                q.popleft()
                self.stats.add(dropped_stale=1)
                continue
            run, ended = self._utterance_run(size + usable)
            covered = len(run) if ended else max(0, len(run) - context)  # ticks whose right context has arrived
            now, due = self.now(), self.tick_time(head.tick) - self._budget
            settled = ended or len(run) == size + usable or now >= due - self._budget
            if covered and (ended or now >= due or (covered >= size and settled)):
                take = min(size, covered)
                return take, run[take:], ended  # all that arrived, as far as the engine can use it
            if now >= due and head.silent:
                take = 1
                while take < min(size, len(run)) and run[take].silent:
                    take += 1
                return take, [], False
            if now <= self.tick_time(head.tick):
                return None
            self._remember([q.popleft()])  # too late to be shown; still the left context of the ticks after it
            self.stats.add(dropped_frames=1)
            q.cond.notify_all()
        return None

    def _render(self, batch: list[TickAudio], right: list[TickAudio], ends: bool) -> None:
        turn = batch[0].turn
        indices = [self.cycle_index(t.tick) for t in batch]
        if all(t.silent for t in batch):
            self.stats.add(silent_batches=1)
            self._remember(batch)
            return  # silence skips the model: the output plays the avatar's own frames for these ticks
        started = time.perf_counter()
        request = self._request(batch, right, indices, ends)
        faces = self.renderer.render(request)
        frames = [self.compositor.compose(i, f) for i, f in zip(indices, faces)]
        if self.own_frame is not None:  # past the engine's last frame of the utterance: the avatar's own frame
            frames += [self.own_frame(i) for i in indices[len(frames) :]]
        elapsed = time.perf_counter() - started
        self._failing = False
        self._budget = 0.8 * self._budget + 0.2 * elapsed * 1.5
        self.stats.record_batch(len(batch), elapsed)
        self._remember(batch)
        for tick, frame in zip(batch, frames):
            self._deliver(VideoResult(tick=tick.tick, turn=turn, frame=frame))

    def _remember(self, batch: list[TickAudio]) -> None:
        self._history.extend(batch[-self._history_ticks :])

    def _request(self, batch: list[TickAudio], right: list[TickAudio], indices: list[int], ends: bool) -> RenderRequest:
        first = batch[0]
        # Left context only from the same utterance (its earlier ticks, still remembered; zeros if one is not).
        wanted = range(first.tick - min(self.engine.left_context_ticks, first.utterance_pos), first.tick)
        left = [t.pcm for t in self._history if t.tick in wanted and t.turn == first.turn]
        if len(left) != len(wanted):
            left = [np.zeros(len(wanted) * TICK_SAMPLES, np.float32)]
        last = (right or batch)[-1]  # the utterance's last tick when it ends here
        # The media clock's deadline of the first tick, as a time.monotonic() instant (a stepped session's clock
        # is not monotonic time; the distance to the deadline is the same).
        deadline = time.monotonic() + self.tick_time(first.tick) - self.now()
        return RenderRequest(
            ticks=[t.tick for t in batch],
            cycle_indices=indices,
            audio=np.concatenate(left + [t.pcm for t in batch + right]),
            left_samples=len(wanted) * TICK_SAMPLES,
            right_samples=len(right) * TICK_SAMPLES,
            seg_pos=first.seg_pos,
            utterance_pos=first.utterance_pos,
            utterance_samples=last.utterance_pos * TICK_SAMPLES + last.samples if ends else None,
            deadline=deadline,
            turn=first.turn,
            current_turn=self._job_turn,
        )

    def _deliver(self, result: VideoResult) -> None:
        def current() -> bool:
            return not self._stop.is_set() and result.turn == self.current_turn()

        if not (current() and self.outbox.put_wait(result, current)):
            self.stats.add(dropped_stale=1)
