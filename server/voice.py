"""What a session speaks with: voices.speaker.Speaker (TTS + LLM), or RealtimeVoice (--tts realtime)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import numpy as np

from pipeline.items import Event
from pipeline.session import Session
from voices.speaker import one_chunk
from voices.tasks import TaskSet
from voices.realtime import AudioDelta, RealtimeClient, RealtimeError, ResponseDone, ServerError, TranscriptDelta

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
    """The OpenAI Realtime API as the session's voice: text goes in, the answer's audio deltas go into the
    session as they arrive (sentence_start with the first, sentence_end with the whole transcript when the
    response is done), transcript deltas ride on the next audio as `subtitle` events, and interrupt cancels
    the response. Connects on first use; failures become `llm_error` events."""

    def __init__(self, session: Session, connect: Callable[[], RealtimeClient], instructions: str,
                 voice: str | None = None) -> None:
        self.session = session
        self._new_client = connect
        self._setup = {"instructions": instructions, "modalities": ["audio", "text"],
                       **({"voice": voice} if voice else {})}
        self._client: RealtimeClient | None = None
        self._reader: asyncio.Task | None = None
        self._connecting = asyncio.Lock()
        self._playing = asyncio.Lock()  # one response or audio file goes into the session at a time
        self._tasks = TaskSet()  # requests: say, chat, audio files
        self._request_turn = 0
        self._responding = False  # a response was asked for and is not done: there is something to cancel

    def say(self, text: str) -> asyncio.Task:
        return self._tasks.spawn(self._request(lambda c: c.send({"type": "response.create", "response": {
            "instructions": f"Say exactly the following text and nothing else: {text}"}})), "realtime-say")

    def chat(self, text: str) -> asyncio.Task:
        return self._tasks.spawn(self._request(lambda c: c.send_text(text)), "realtime-chat")

    def push_audio_file(self, pcm: np.ndarray, label: str = "") -> asyncio.Task:
        return self.push_audio_stream(one_chunk(pcm), label)

    def push_audio_stream(self, chunks: AsyncIterator[np.ndarray], label: str = "") -> asyncio.Task:
        return self._tasks.spawn(self._play(chunks, label, self.session.turn), "realtime-audio")

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def _play(self, chunks: AsyncIterator[np.ndarray], label: str, turn: int) -> None:
        async with self._playing:
            events: list[Event] | None = [Event("sentence_start", label, turn)]
            async for pcm in chunks:
                if not await self.session.push_audio(pcm, events, turn):
                    return  # interrupted
                events = None
            if events is None:  # something was played
                await self.session.end_speech([Event("sentence_end", label, turn)], turn)

    async def interrupt(self) -> int:
        await self._tasks.cancel()
        if self._client is not None and self._responding:
            self._responding = False
            with contextlib.suppress(RealtimeError):
                await self._client.cancel()
        return self.session.interrupt()

    async def close(self) -> None:
        await self._tasks.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._client is not None:
            await self._client.close()

    async def _request(self, send: Callable[[RealtimeClient], object]) -> None:
        try:
            client = await self._connected()
            self._request_turn = self.session.turn
            self._responding = True
            await send(client)  # type: ignore[misc]
        except RealtimeError as e:
            self._fail(str(e))

    async def _connected(self) -> RealtimeClient:
        async with self._connecting:
            if self._client is None or self._reader is None or self._reader.done():
                if self._client is not None:
                    await self._client.close()
                client = self._new_client()
                await client.connect()
                await client.update_session(self._setup)
                self._client = client
                self._reader = asyncio.create_task(self._read(client), name="realtime-reader")
            return self._client

    async def _read(self, client: RealtimeClient) -> None:
        turns: dict[str, int] = {}
        transcripts: dict[str, str] = {}
        subtitles: list[Event] = []
        try:
            async for ev in client.events():
                if isinstance(ev, ServerError):
                    self._fail(ev.message)
                    continue
                if isinstance(ev, TranscriptDelta):
                    transcripts[ev.response_id] = transcripts.get(ev.response_id, "") + ev.text
                    subtitles.append(Event("subtitle", ev.text, turns.get(ev.response_id, self._request_turn)))
                    continue
                turn = turns.get(ev.response_id)
                if isinstance(ev, AudioDelta):
                    events, subtitles = subtitles, []
                    if turn is None:  # the response's first audio: it now owns the session's voice
                        turn = turns[ev.response_id] = self._request_turn
                        await self._playing.acquire()
                        events.insert(0, Event("sentence_start", "", turn))
                    await self.session.push_audio(ev.audio, events, turn)
                elif isinstance(ev, ResponseDone):
                    self._responding = False
                    if turn is not None:
                        end = Event("sentence_end", transcripts.pop(ev.response_id, ""), turn)
                        await self.session.end_speech([*subtitles, end], turn)
                        subtitles = []
                        del turns[ev.response_id]
                        self._playing.release()
        except RealtimeError as e:
            self._fail(str(e))
        finally:
            if turns and self._playing.locked():
                self._playing.release()

    def _fail(self, message: str) -> None:
        log.warning("realtime: %s", message)
        self.session.publish(Event("llm_error", message, self.session.turn))
