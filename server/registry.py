"""The sessions of one app: the limit on how many, their ids, and ending them (everything they own, once)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from aiortc import RTCPeerConnection

from core.tasks import TaskOwner
from core.units import SAMPLE_RATE
from pipeline.session import Session
from server.errors import ApiError, NotFound, Unavailable
from server.media import SessionTracks
from server.recording import Recorder
from server.voice import Voice

if TYPE_CHECKING:
    from pipeline.actions import CustomClip
    from server.rtmp import RtmpPusher

log = logging.getLogger(__name__)

FPS_WINDOW_S = 5.0


class SessionLimitError(Unavailable):
    """No slot for a new session: the limit is reached, or the server is shutting down."""


class SessionEndedError(NotFound):
    """The session ended while a request for it was under way."""


def new_session_id(taken: set[str]) -> str:
    """128 random bits, URL-safe: a session id is a capability (whoever has it can drive the session), so it
    must not be guessable. (Classic LiveTalking pages that parseInt() the id cannot use it; current ones send
    the string.)"""
    while True:
        sid = secrets.token_urlsafe(16)
        if sid not in taken:
            return sid


@dataclass
class LiveSession:
    """One client's session and everything it owns. Every task and thread of it is owned by `session.tasks`
    (closed last, by session.close()); what serves the client (watchdog, microphone, /ws/audio events) runs in
    the group `tasks`."""

    id: str
    session: Session
    tracks: SessionTracks | None  # None (and pc None): a session pushed over RTMP, with no peer of its own
    pc: RTCPeerConnection | None
    voice: Voice
    voice_name: str = ""  # what /offer chose (or the default): shown by the admin API
    created: float = field(default_factory=time.monotonic)
    recorder: Recorder | None = None
    pusher: RtmpPusher | None = None
    custom_clips: tuple[CustomClip, ...] = ()  # LiveTalking's custom-video config, decoded again for a new avatar
    tasks: TaskOwner = field(init=False)  # watchdog, voice input, /ws/audio events: ended first when closing
    upload_seconds: float = 0.0  # decoded /humanaudio audio handed to the voice and not yet queued
    sse_streams: int = 0
    closed: bool = False  # set when closing starts: nothing new may be started for it after that
    _samples: deque = field(default_factory=lambda: deque(maxlen=int(FPS_WINDOW_S) + 2))  # (time, ticks)

    def __post_init__(self) -> None:
        self.tasks = self.session.tasks.group("client")

    @property
    def tag(self) -> str:
        """A name for the session in metrics and logs read by others: the id is a capability, this is not."""
        return hashlib.sha256(self.id.encode()).hexdigest()[:12]

    def check_open(self) -> None:
        if self.closed:
            raise SessionEndedError(f"session {self.id} has ended")

    def spawn(self, coro: Coroutine[Any, Any, object], name: str) -> asyncio.Task:
        """Run `coro` for this session; it is cancelled when the session ends (refused once it has)."""
        if self.closed:
            coro.close()
            self.check_open()
        return self.tasks.spawn(coro, f"{name}-{self.id}")

    def push_audio_file(self, pcm: np.ndarray) -> None:
        """Hand decoded upload audio to the voice, counting its seconds until it has been queued."""
        seconds = len(pcm) / SAMPLE_RATE
        task = self.voice.push_audio_file(pcm)
        self.upload_seconds += seconds
        task.add_done_callback(lambda _: self._uploaded(seconds))

    def _uploaded(self, seconds: float) -> None:
        self.upload_seconds = max(0.0, self.upload_seconds - seconds)

    @property
    def queued_seconds(self) -> float:
        """Speech accepted but not yet played: scheduled audio plus uploads still waiting to be queued."""
        return self.session.queued_seconds + self.upload_seconds

    def consumed_frames(self) -> int:
        """Video frames the peer connection has taken from the track (what was pushed, less what waits or was
        dropped because nobody took it)."""
        assert self.tracks is not None
        video = self.tracks.video
        return self.session.stats.ticks - video.dropped - video.queue.qsize()

    async def receiver_reports(self) -> tuple[datetime, ...]:
        """When each of our tracks last got an RTCP receiver report from the peer (aiortc keeps the latest)."""
        times = []
        for sender in self.pc.getSenders() if self.pc is not None else ():
            stats = await sender.getStats()
            times += [s.timestamp for s in stats.values() if s.type == "remote-inbound-rtp"]
        return tuple(sorted(times))

    def sample(self, now: float) -> None:
        self._samples.append((now, self.session.stats.ticks))

    @property
    def fps(self) -> float:
        """Output frames per second over the last few seconds."""
        if len(self._samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class RegistryObserver(Protocol):
    """Told when a session is registered and when it ends (the server's metrics)."""

    def opened(self, live: LiveSession) -> None: ...

    def closed(self, live: LiveSession) -> None: ...


class SessionRegistry:
    def __init__(
        self,
        max_sessions: int,
        idle_timeout: float,
        connect_timeout: float,
        observer: RegistryObserver | None = None,
        *,
        tasks: TaskOwner,
    ) -> None:
        """`tasks`: the app's owner, which runs the endings (a session's own owner cannot: ending closes it)."""
        self.max_sessions = max_sessions
        self._tasks = tasks
        self.observer = observer
        self.idle_timeout = idle_timeout
        self.connect_timeout = connect_timeout
        self._sessions: dict[str, LiveSession] = {}
        self._reserved: set[str] = set()
        self._ending: dict[str, asyncio.Task] = {}
        self._shutting_down = False

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[LiveSession]:
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
        if self.observer is not None:
            self.observer.opened(live)
        if live.pc is not None:  # a pushed session has no client to watch
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
            if self.observer is not None:
                self.observer.closed(live)
            task = self._tasks.spawn(close_live(live), f"end-{session_id}")
            self._ending[session_id] = task
            task.add_done_callback(lambda _: self._ending.pop(session_id, None))
        return task

    async def close_all(self) -> None:
        self._shutting_down = True
        await asyncio.gather(
            *(self.end(sid, "server shutdown") for sid in list(self._sessions)),
            *list(self._ending.values()),
            return_exceptions=True,
        )

    async def _watch(self, live: LiveSession, period: float = 1.0) -> None:
        """End the session when its client does not connect within connect_timeout, or, once connected, stops
        taking media for idle_timeout; sample the frame rate meanwhile."""
        if not await self._connected(live, period / 4):
            self.end(live.id, f"the client did not connect within {self.connect_timeout:g} s")
            return
        consumed, reports = live.consumed_frames(), await live.receiver_reports()
        taken_since = heard_since = time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            live.sample(now)
            current, latest = live.consumed_frames(), await live.receiver_reports()
            if current != consumed:
                consumed, taken_since = current, now
            if latest != reports:
                reports, heard_since = latest, now
            # Frames taken by the encoder show the track is pulled; RTCP receiver reports show that somebody
            # receives: aiortc keeps encoding and sending to a vanished client until ICE consent fails (~30 s).
            if now - min(taken_since, heard_since) >= self.idle_timeout:
                what = "no RTCP receiver report" if heard_since < taken_since else "no media taken"
                self.end(live.id, f"{what} for {self.idle_timeout:g} s: the client is gone")
                return

    async def _connected(self, live: LiveSession, period: float) -> bool:
        deadline = live.created + self.connect_timeout
        pc = live.pc
        assert pc is not None  # watched only for WebRTC sessions
        while pc.connectionState != "connected":
            if time.monotonic() >= deadline or pc.connectionState in ("failed", "closed"):
                return False
            await asyncio.sleep(period)
        return True


async def _step(what: str, sid: str, action: Callable[[], Awaitable[object] | object]) -> None:
    """Run one closing step; a failing step is logged and does not keep the others from running."""
    try:
        result = action()
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            await result
    except ApiError as e:  # an expected end, e.g. a recording with nothing in it
        log.info("session %s: closing %s: %s", sid, what, e)
    except Exception:
        log.exception("session %s: closing %s failed", sid, what)


async def close_live(live: LiveSession) -> None:
    live.closed = True
    await live.tasks.close()
    await _step("voice", live.id, live.voice.close)
    if live.recorder is not None:
        await _step("recording", live.id, live.recorder.finish)
    if (pusher := live.pusher) is not None:
        await _step("rtmp push", live.id, lambda: asyncio.to_thread(pusher.stop))
    await close_media(live.id, live.tracks, live.pc, live.session)


async def close_media(sid: str, tracks: SessionTracks | None, pc: RTCPeerConnection | None, session: Session) -> None:
    if tracks is not None:
        await _step("tracks", sid, tracks.close)
    if pc is not None:
        await _step("peer connection", sid, pc.close)
    await _step("session", sid, session.close)
