"""One session: owns its stages, their thread and task, and stops all of them when closed.

`Session.tasks` owns every task and thread of the session, its own and those of what serves it (the voice, the
client's connection, a recording): all of them start through it, and close() ends them all.

    push_audio -> AudioFramer (20 ms frames, ticks) -> InferenceWorker thread (render + composite)
                                 \\-> Output (audio schedule)  <- rendered frames
    ticker task (media clock, 40 ms) -> Output.tick -> sinks (WebRTC tracks, recorder) + event listeners
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from core.arrays import Pcm
from core.clock import ManualTime, MediaClock
from core.events import Event, EventKind
from core.items import OutputTick, TickAudio
from core.tasks import OwnerClosedError, TaskOwner
from core.units import TICK_SECONDS
from engines.base import Engine
from musetalk.avatar import Avatar
from pipeline.actions import ActionClip
from pipeline.compositor import Compositor
from pipeline.framer import AudioFramer
from pipeline.output import Output
from pipeline.stats import SessionStats
from pipeline.worker import InferenceWorker

log = logging.getLogger(__name__)

Sink = Callable[[OutputTick], None]
MAX_CATCH_UP_TICKS = 10  # 400 ms


@dataclass(frozen=True)
class SessionOptions:
    crossfade_ticks: int = 2
    max_scheduled_seconds: float = 120.0  # audio accepted ahead of playback before push_audio waits
    event_queue_size: int = 256


EventQueue: TypeAlias = asyncio.Queue[Event | None]  # a listener's events; None: the session ended


class SessionClosed(RuntimeError):
    pass


class Session:
    def __init__(
        self,
        session_id: str,
        avatar: Avatar,
        engine: Engine,
        actions: dict[int, ActionClip] | None = None,
        options: SessionOptions = SessionOptions(),
        stepped: bool = False,
    ) -> None:
        self.session_id = session_id
        self.avatar = avatar
        self.engine = engine
        self.actions = actions or {}
        self.options = options
        self.stepped = stepped
        self._manual_time = ManualTime() if stepped else None
        self.clock = MediaClock(now=self._manual_time) if self._manual_time is not None else MediaClock()
        self.stats = SessionStats()
        self.tasks = TaskOwner(f"session-{session_id}")
        self._turn = 0
        self._closed = False
        self._started = False
        self._next_tick = 0
        self._max_ticks = int(options.max_scheduled_seconds / TICK_SECONDS)
        self._sinks: list[Sink] = []
        self._ticker: asyncio.Task[None] | None = None
        self._listeners: set[EventQueue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the session's event loop, once started
        self.worker = self._new_worker(avatar)
        self.framer = AudioFramer(self.clock.current_tick, lambda: self.worker.lead_ticks, now=self.clock.now)
        self.output = Output(avatar, self.worker.outbox, self.stats, self.clock.tick_time, options.crossfade_ticks)

    def _new_worker(self, avatar: Avatar) -> InferenceWorker:
        engine = self.engine
        return InferenceWorker(
            engine,
            engine.bind(avatar).new_renderer(),
            Compositor(avatar),
            avatar.cycle_index,
            self.clock.tick_time,
            self.clock.now,
            lambda: self._turn,
            self.stats,
            queue_capacity=self._max_ticks + 64,
            out_capacity=2 * engine.batch_size + 4,
            name=f"inference-{self.session_id}",
            own_frame=lambda i: avatar.frames[i],
            on_render_error=self._render_failed,
        )

    def _render_failed(self, error: Exception) -> None:
        """From the worker's thread, once per outage: a `render_error` event for the session's listeners (/sse)."""
        if self._loop is not None and not self._loop.is_closed():
            event = Event(
                EventKind.RENDER_ERROR,
                f"rendering failed, the last frame is shown until it recovers: {error}",
                self._turn,
            )
            self._loop.call_soon_threadsafe(self.publish, event)

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        self.clock.start()
        self.worker.start(self.tasks)
        if not self.stepped:
            self._ticker = self.tasks.spawn(self._run_ticker(), f"ticker-{self.session_id}")

    async def close(self) -> None:
        """End every task and thread of the session (the ticker, the workers, whatever else started through
        `tasks`) and wait for them; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.tasks.close()
        self.worker.inbox.clear()
        self.worker.outbox.clear()
        self._sinks.clear()
        for q in self._listeners:
            self._offer(q, None)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- input ---------------------------------------------------------------------------------------------
    @property
    def turn(self) -> int:
        return self._turn

    async def push_audio(self, pcm: Pcm, events: list[Event] | None = None, turn: int | None = None) -> bool:
        """Queue speech audio (float32 16 kHz mono, any length). Returns False if `turn` was interrupted.

        Waits (back-pressure) while more than `max_scheduled_seconds` of audio is waiting to be played.
        """
        self._check_open()
        while self.output.scheduled_ticks >= self._max_ticks and self._current(turn) and not self._closed:
            await asyncio.sleep(TICK_SECONDS)
        if not self._current(turn):
            return False
        self._dispatch(self.framer.push(pcm, self._turn, events))
        return True

    async def end_speech(self, events: list[Event] | None = None, turn: int | None = None) -> bool:
        """The current stream of audio ends here (e.g. a sentence): flush it; `events` fire with its last frame."""
        self._check_open()
        if not self._current(turn):
            return False
        self._dispatch(self.framer.flush(self._turn, events))
        return True

    def interrupt(self) -> int:
        """Start a new turn: everything of older turns is dropped at every stage. Returns the new turn."""
        self._turn += 1
        self.framer.reset()
        dropped = self.worker.inbox.purge_turns_before(self._turn) + self.output.interrupt(self._turn)
        self.stats.add(dropped_stale=dropped)
        return self._turn

    def set_audiotype(self, audiotype: int) -> None:
        """Play action clip `audiotype` (instead of idle frames) from the next tick; KeyError if unknown."""
        clip = self.actions[audiotype]
        self.output.start_action(clip, audiotype, self.clock.current_tick() + 1)

    async def set_avatar(self, avatar: Avatar, actions: dict[int, ActionClip] | None = None) -> int:
        """Show another avatar from the next tick on, crossfaded, on the same tracks (no renegotiation).

        What the old avatar was saying is interrupted (a new turn): its frames are the old face. The new avatar
        gets a worker of its own (renderer, compositor, blend plans), started off the event loop (starting a thread
        waits for it to run: tens of ms on a busy machine); the old worker is stopped in the background, and
        whatever it still renders is never shown. The avatar should have been bound to the engine and its first
        frames' blend plans built beforehand (warm_blend_plans), so that the switch costs no stall on the clock.
        Returns the first tick that shows the new avatar."""
        self._check_open()
        new = self._new_worker(avatar)
        if self._started:
            with contextlib.suppress(OwnerClosedError):  # the session closed meanwhile: said just below
                await asyncio.to_thread(new.start, self.tasks)
            self._check_open()  # closed meanwhile: close() refused the new worker's thread, or stopped it
        turn = self.interrupt()
        old = self.worker
        self.avatar, self.actions, self.worker = avatar, actions or {}, new
        tick = self.clock.current_tick() + 1
        self.output.switch_avatar(avatar, new.outbox)
        old.stop()  # its thread ends by itself (the owner forgets it then, or joins it if the session closes first)
        log.info("session %s: avatar %s from tick %d (turn %d)", self.session_id, avatar.avatar_id, tick, turn)
        return tick

    @property
    def queued_seconds(self) -> float:
        """Audio accepted and not yet played."""
        return self.output.scheduled_ticks * TICK_SECONDS

    @property
    def speaking(self) -> bool:
        return self.output.speaking

    def use_custom_clips(self, actions: dict[int, ActionClip], idle: ActionClip | None) -> None:
        """LiveTalking's custom-video clips: `actions` join (and replace) the avatar's own action clips, `idle`
        loops whenever nothing is spoken or played (None: the avatar's own frames)."""
        self.actions = {**self.actions, **actions}
        self.output.idle_clip = idle

    def _current(self, turn: int | None) -> bool:
        return turn is None or turn == self._turn

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.session_id} is closed")

    def _dispatch(self, ticks: list[TickAudio]) -> None:
        for t in ticks:
            self.output.schedule(t)
            if not self.worker.inbox.put(t):  # cannot happen while push_audio bounds the schedule
                log.error("session %s: inference queue full, tick %d has no video", self.session_id, t.tick)

    # -- output --------------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: Sink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    def subscribe(self) -> EventQueue:
        """Events (sentence start/end...) as their audio is played; None marks the end of the session."""
        q: EventQueue = asyncio.Queue(self.options.event_queue_size)
        self._listeners.add(q)
        return q

    def unsubscribe(self, q: EventQueue) -> None:
        self._listeners.discard(q)

    def publish(self, event: Event) -> None:
        """An event not tied to audio (e.g. a TTS failure): delivered to listeners right away."""
        self.stats.record_event(event.kind)
        for q in self._listeners:
            self._offer(q, event)

    def step(self, wait_for_video: float = 10.0) -> OutputTick:
        """Stepped mode: produce the next tick now, waiting for its rendered frame if it is speech."""
        if self._manual_time is None:
            raise RuntimeError("step() is for stepped sessions; real-time sessions run their own clock")
        k = self._next_tick
        self._manual_time.t = self.clock.tick_time(k)
        self._next_tick += 1
        return self._emit(self.output.tick(k, wait_for_video=wait_for_video))

    async def _run_ticker(self) -> None:
        k = 0  # a failure ends the task: its owner (self.tasks) logs it
        while True:
            delay = self.clock.tick_time(k) - self.clock.now()
            if delay > 0:
                await asyncio.sleep(delay)
            behind = self.clock.current_tick() - k
            if behind > 0:
                self.stats.add(late_ticks=1)
            if behind > MAX_CATCH_UP_TICKS:  # a long stall: skip what cannot be sent in time any more
                self.stats.add(skipped_ticks=behind)
                k += behind
            # A short stall (the event loop was busy) is caught up by sending the missed ticks back to back:
            # receivers' jitter buffers absorb that, and no audio is lost.
            self._emit(self.output.tick(k))
            k += 1

    def _emit(self, out: OutputTick) -> OutputTick:
        for sink in list(self._sinks):
            try:
                sink(out)
            except Exception:
                log.exception("session %s: sink failed", self.session_id)
        for event in out.events:
            for q in self._listeners:
                self._offer(q, event)
        return out

    @staticmethod
    def _offer(q: EventQueue, item: Event | None) -> None:
        if q.full():  # a slow listener loses its oldest event rather than stalling the clock
            q.get_nowait()
        q.put_nowait(item)
