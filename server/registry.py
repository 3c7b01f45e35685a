"""The sessions of one app: the limit on how many, their ids, and ending them (everything they own, once)."""
from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aiortc import RTCPeerConnection

from pipeline.session import Session
from server.media import SessionTracks
from server.recording import Recorder
from server.voice import Voice

log = logging.getLogger(__name__)

FPS_WINDOW_S = 5.0


class SessionLimitError(Exception):
    """No slot for a new session: the limit is reached, or the server is shutting down (503)."""


class SessionEndedError(Exception):
    """The session ended while a request for it was under way (404)."""


def new_session_id(taken: set[str]) -> str:
    """15 random digits: unguessable enough, and the same session whether a client sends it as a string or,
    like the classic LiveTalking pages (parseInt), as a number (exact in a JavaScript double)."""
    while True:
        sid = str(10**14 + secrets.randbelow(9 * 10**14))
        if sid not in taken:
            return sid


@dataclass
class LiveSession:
    """One client's session and everything it owns."""

    id: str
    session: Session
    tracks: SessionTracks
    pc: RTCPeerConnection
    voice: Voice
    created: float = field(default_factory=time.monotonic)
    recorder: Recorder | None = None
    tasks: set[asyncio.Task] = field(default_factory=set)  # watchdog, voice input, queued speech
    closed: bool = False  # set when closing starts: nothing new may be started for it after that
    _samples: deque = field(default_factory=lambda: deque(maxlen=int(FPS_WINDOW_S) + 2))  # (time, ticks)

    def check_open(self) -> None:
        if self.closed:
            raise SessionEndedError(f"session {self.id} has ended")

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task:
        """Run `coro` for this session; it is cancelled when the session ends (refused once it has)."""
        if self.closed:
            coro.close()
            self.check_open()
        task = asyncio.create_task(coro, name=f"{name}-{self.id}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def consumed_frames(self) -> int:
        """Video frames the peer connection has taken from the track (what was pushed, less what waits or was
        dropped because nobody took it)."""
        video = self.tracks.video
        return self.session.stats.ticks - video.dropped - video.queue.qsize()

    def sample(self, now: float) -> None:
        self._samples.append((now, self.session.stats.ticks))

    @property
    def fps(self) -> float:
        """Output frames per second over the last few seconds."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class SessionRegistry:
    def __init__(self, max_sessions: int, idle_timeout: float) -> None:
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._sessions: dict[str, LiveSession] = {}
        self._reserved: set[str] = set()
        self._ending: dict[str, asyncio.Task] = {}
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self):  # noqa: ANN204
        return iter(list(self._sessions.values()))

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def reserve(self) -> str:
        """Claim a slot and an id before the (slow, awaiting) setup, so concurrent offers cannot overshoot."""
        if self._shutting_down:
            raise SessionLimitError("the server is shutting down")
        used = len(self._sessions) + len(self._reserved)
        if used >= self.max_sessions:
            raise SessionLimitError(f"Maximum session limit reached ({used}/{self.max_sessions})")
        sid = new_session_id(set(self._sessions) | self._reserved)
        self._reserved.add(sid)
        return sid

    def release(self, session_id: str) -> None:
        self._reserved.discard(session_id)

    def add(self, live: LiveSession) -> None:
        """Register a reserved session; refused once shutdown has begun (the caller then closes it: offers
        still being set up when on_shutdown runs are awaited by aiohttp afterwards)."""
        self._reserved.discard(live.id)
        if self._shutting_down:
            raise SessionLimitError("the server is shutting down")
        self._sessions[live.id] = live
        live.spawn(self._watch(live), "watch")

    def end(self, session_id: str, reason: str) -> Awaitable[None]:
        """End a session (idempotent; safe to call from its own tasks and callbacks); await it to wait."""
        task = self._ending.get(session_id)
        if task is None:
            live = self._sessions.pop(session_id, None)
            if live is None:
                done: asyncio.Future = asyncio.get_running_loop().create_future()
                done.set_result(None)
                return done
            log.info("session %s ends: %s", session_id, reason)
            task = asyncio.create_task(close_live(live), name=f"end-{session_id}")
            self._ending[session_id] = task
            task.add_done_callback(lambda _: self._ending.pop(session_id, None))
        return task

    async def close_all(self) -> None:
        self._shutting_down = True
        await asyncio.gather(*(self.end(sid, "server shutdown") for sid in list(self._sessions)),
                             *list(self._ending.values()), return_exceptions=True)

    async def _watch(self, live: LiveSession, period: float = 1.0) -> None:
        """Sample the frame rate; end the session when its client has taken no media for idle_timeout."""
        consumed, since = live.consumed_frames(), time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            live.sample(now)
            current = live.consumed_frames()
            if current != consumed:
                consumed, since = current, now
            elif now - since >= self.idle_timeout:
                self.end(live.id, f"no media consumed for {self.idle_timeout:g} s")
                return


async def _step(what: str, sid: str, action: Callable[[], Awaitable[object] | object]) -> None:
    """Run one closing step; a failing step is logged and does not keep the others from running."""
    try:
        result = action()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
    except Exception:
        log.exception("session %s: closing %s failed", sid, what)


async def close_live(live: LiveSession) -> None:
    live.closed = True
    tasks = list(live.tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await _step("voice", live.id, live.voice.close)
    if live.recorder is not None:
        await _step("recording", live.id, live.recorder.finish)
    await close_media(live.id, live.tracks, live.pc, live.session)


async def close_media(sid: str, tracks: SessionTracks, pc: RTCPeerConnection, session: Session) -> None:
    await _step("tracks", sid, tracks.close)
    await _step("peer connection", sid, pc.close)
    await _step("session", sid, session.close)
