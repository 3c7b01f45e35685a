"""What a session speaks with: voices.speaker.Speaker (TTS + LLM), or RealtimeVoice (--tts realtime)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import numpy as np

from core.audio import float_to_pcm16
from core.events import Event, EventKind
from pipeline.session import Session
from voices.realtime import (
    FATAL_CODES,
    AudioDelta,
    RealtimeAuthError,
    RealtimeClient,
    RealtimeError,
    ResponseDone,
    ServerError,
    SpeechStarted,
    SpeechStopped,
    TranscriptDelta,
    UserTranscript,
)
from voices.speaker import one_chunk

log = logging.getLogger(__name__)


class Voice(Protocol):
    """A session's voice. Each request runs as a task the voice owns (returned for callers to watch), and
    interrupt cancels every one of them, queued or running."""

    def say(self, text: str) -> asyncio.Task: ...
    def chat(self, text: str) -> asyncio.Task: ...
    def push_audio_file(self, pcm: np.ndarray, label: str = "") -> asyncio.Task: ...
    def push_audio_stream(self, chunks: AsyncIterator[np.ndarray], label: str = "") -> asyncio.Task: ...
    @property
    def pending(self) -> int: ...
    async def interrupt(self) -> int: ...
    async def close(self) -> None: ...


class RealtimeVoice:
    """The OpenAI Realtime API as the session's voice, speech to speech.

    Typed text (`chat`, `say`) and the microphone (`listen`: the service's own turn detection decides when the
    user has finished, and answers) go in; the answer's audio deltas go into the session as they arrive
    (sentence_start with the first, sentence_end with the whole transcript when the response is done), transcript
    deltas ride on the next audio as `subtitle` events, the user's transcript is published as `user_text`. When
    the service hears the user start speaking, the avatar is interrupted at once (barge-in).

    Connects on first use and stays connected: a connection that drops is reconnected with backoff (each drop is a
    `tts_error` for the page); refused credentials end it with one `tts_error` and one log line. The service's
    error events become `llm_error`."""

    def __init__(
        self,
        session: Session,
        connect: Callable[[], RealtimeClient],
        setup: dict[str, Any],
        *,
        first_delay: float = 0.5,
        max_delay: float = 8.0,
    ) -> None:
        self.session = session
        self._new_client = connect
        self._setup = setup  # the session.update body, sent on every (re)connection
        self._first_delay, self._max_delay = first_delay, max_delay
        self._client: RealtimeClient | None = None  # while connected
        self._connected = asyncio.Event()  # set while connected, and for good once the supervisor has ended
        self._owner = session.tasks.group("realtime")  # the connection's supervisor, and the requests' group
        self._supervisor: asyncio.Task | None = None
        self._given_up: str | None = None  # why the connection is not tried again (refused credentials)
        self._playing = asyncio.Lock()  # one response or audio file goes into the session at a time
        self._tasks = self._owner.group("requests")  # say, chat, audio files
        self._request_turn = 0
        self._responding = False  # a response was asked for and is not done: there is something to cancel

    # -- what the server calls ------------------------------------------------------------------------------
    def say(self, text: str) -> asyncio.Task:
        return self._tasks.spawn(self._request(lambda c: c.say(text)), "realtime-say")

    def chat(self, text: str) -> asyncio.Task:
        return self._tasks.spawn(self._request(lambda c: c.send_text(text)), "realtime-chat")

    def push_audio_file(self, pcm: np.ndarray, label: str = "") -> asyncio.Task:
        return self.push_audio_stream(one_chunk(pcm), label)

    def push_audio_stream(self, chunks: AsyncIterator[np.ndarray], label: str = "") -> asyncio.Task:
        return self._tasks.spawn(self._play(chunks, label, self.session.turn), "realtime-audio")

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def listen(self, microphone: AsyncIterator[np.ndarray]) -> None:
        """Stream the microphone (float32 mono at the service's 24 kHz, any piece size) to the service until it
        ends. While the connection is down the audio is dropped: the service hears the user again once it is
        back."""
        self._start()
        async for audio in microphone:
            client = self._client
            if client is None or not audio.size:
                continue
            with contextlib.suppress(RealtimeError):  # a drop: the supervisor reports it and reconnects
                await client.append_audio(float_to_pcm16(audio))

    async def interrupt(self) -> int:
        turn = self.session.interrupt()  # the avatar stops now; the rest tidies up (their audio is of older turns)
        await self._tasks.cancel()
        if self._client is not None and self._responding:
            self._responding = False
            with contextlib.suppress(RealtimeError):
                await self._client.cancel()
        return turn

    async def close(self) -> None:
        await self._owner.close()  # the requests first, then the connection

    # -- internals ------------------------------------------------------------------------------------------
    async def _play(self, chunks: AsyncIterator[np.ndarray], label: str, turn: int) -> None:
        async with self._playing:
            events: list[Event] | None = [Event(EventKind.SENTENCE_START, label, turn)]
            async for pcm in chunks:
                if not await self.session.push_audio(pcm, events, turn):
                    return  # interrupted
                events = None
            if events is None:  # something was played
                await self.session.end_speech([Event(EventKind.SENTENCE_END, label, turn)], turn)

    async def _request(self, send: Callable[[RealtimeClient], Awaitable[None]]) -> None:
        given_up = self._given_up
        try:
            client = await self._connection()
            self._request_turn = self.session.turn
            self._responding = True
            await send(client)
        except RealtimeError as e:
            if given_up is not None:
                self.session.publish(Event(EventKind.TTS_ERROR, given_up, self.session.turn))  # logged when it happened
            elif self._given_up is None:
                self._fail(EventKind.TTS_ERROR, str(e))
            # else: the connection has just been given up on, and the page was told why

    def _start(self) -> None:
        if self._supervisor is None:
            self._supervisor = self._owner.spawn(self._supervise(), "realtime-connection")
            self._supervisor.add_done_callback(lambda _: self._connected.set())  # it ended: nobody waits in vain

    async def _connection(self) -> RealtimeClient:
        """The connected client, waiting for a (re)connection in progress."""
        self._start()
        await self._connected.wait()
        if self._client is None:
            raise RealtimeError(self._given_up or "Realtime API: not connected")
        return self._client

    async def _supervise(self) -> None:
        """Connect, read until the connection ends, and again with backoff, until the credentials are refused
        or the service answers with an error that a new connection cannot cure."""
        delay = self._first_delay
        while True:
            client = self._new_client()
            try:
                await client.connect()
                await client.update_session(self._setup)
            except RealtimeAuthError as e:
                self._given_up = str(e)
                self._fail(EventKind.TTS_ERROR, str(e))
                return
            except RealtimeError as e:
                self._fail(EventKind.TTS_ERROR, f"{e}; trying again in {delay:.1f} s")
                await client.close()
                await asyncio.sleep(delay)
                delay = min(2 * delay, self._max_delay)
                continue
            self._client = client
            self._connected.set()
            started = time.monotonic()
            try:
                reason = await self._read(client)
            finally:
                self._client, self._responding = None, False
                self._connected.clear()
                await client.close()
            if self._given_up is not None:
                self._fail(EventKind.TTS_ERROR, self._given_up)
                return
            if time.monotonic() - started > self._max_delay:
                delay = self._first_delay  # it had been working: start the backoff again
            self._fail(EventKind.TTS_ERROR, f"{reason}; reconnecting in {delay:.1f} s")
            await asyncio.sleep(delay)
            delay = min(2 * delay, self._max_delay)

    async def _read(self, client: RealtimeClient) -> str:
        """Handle the connection's events until it ends; returns why it ended."""
        turns: dict[str, int] = {}
        transcripts: dict[str, str] = {}
        subtitles: list[Event] = []
        try:
            async for ev in client.events():
                if isinstance(ev, ServerError):
                    if ev.code in FATAL_CODES:
                        self._given_up = f"Realtime API: {ev.message}"
                    elif ev.code not in _QUIET_CODES:
                        self._fail(EventKind.LLM_ERROR, f"Realtime API: {ev.message}")
                elif isinstance(ev, SpeechStarted):
                    await self._barge_in()
                elif isinstance(ev, SpeechStopped):
                    # The service answers the user's turn by itself: that answer belongs to the current turn.
                    self._request_turn, self._responding = self.session.turn, True
                elif isinstance(ev, UserTranscript):
                    if ev.text:
                        self.session.publish(Event(EventKind.USER_TEXT, ev.text, self.session.turn))
                elif isinstance(ev, TranscriptDelta):
                    transcripts[ev.response_id] = transcripts.get(ev.response_id, "") + ev.text
                    subtitles.append(Event(EventKind.SUBTITLE, ev.text, turns.get(ev.response_id, self._request_turn)))
                elif isinstance(ev, AudioDelta):
                    events, subtitles = subtitles, []
                    turn = turns.get(ev.response_id)
                    if turn is None:  # the response's first audio: it now owns the session's voice
                        turn = turns[ev.response_id] = self._request_turn
                        await self._playing.acquire()
                        events.insert(0, Event(EventKind.SENTENCE_START, "", turn))
                    await self.session.push_audio(ev.audio, events, turn)
                elif isinstance(ev, ResponseDone):
                    self._responding = False
                    if (turn := turns.pop(ev.response_id, None)) is not None:
                        end = Event(EventKind.SENTENCE_END, transcripts.pop(ev.response_id, ""), turn)
                        await self.session.end_speech([*subtitles, end], turn)
                        subtitles = []
                        self._playing.release()
            return "Realtime API: the service closed the connection"
        except RealtimeError as e:
            return str(e)
        finally:
            for response_id, turn in turns.items():  # cut short by the drop: what arrived plays to its end
                end = Event(EventKind.SENTENCE_END, transcripts.get(response_id, ""), turn)
                await self.session.end_speech([end], turn)
            if turns:
                self._playing.release()

    async def _barge_in(self) -> None:
        """The user started speaking: the avatar stops at once (the service stops its answer too)."""
        self.session.publish(Event(EventKind.USER_SPEECH_START, "", self.session.turn))
        if self.session.speaking or self._responding:
            await self.interrupt()

    def _fail(self, kind: EventKind, message: str) -> None:
        log.warning("realtime: %s", message)
        self.session.publish(Event(kind, message, self.session.turn))


# Errors the service sends that are no news to the user: a cancel that arrived after the response had ended.
_QUIET_CODES = frozenset({"response_cancel_not_active"})
