"""The bridge from words to a session: text (echo) or an LLM answer (chat) -> sentences -> TTS -> audio.

Everything streams: the LLM answer is split into sentences as it arrives and each sentence is spoken as soon
as it is complete, while the LLM goes on. Each sentence's audio carries `sentence_start` / `sentence_end`
events, which the session fires when that audio is actually played. Interrupt cancels the LLM stream and
the TTS in flight and starts a new turn in the session, whose older audio is then dropped everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import numpy as np

from core.events import Event, EventKind
from core.tasks import TaskOwner
from voices.llm import Conversation, LLMError
from voices.sentences import SentenceSplitter
from voices.tts import TTS, TTSError

log = logging.getLogger(__name__)


class SpeechSink(Protocol):
    """What a Speaker needs of a session (pipeline.session.Session has it)."""

    @property
    def turn(self) -> int: ...
    async def push_audio(self, pcm: np.ndarray, events: list[Event] | None = None, turn: int | None = None) -> bool: ...
    async def end_speech(self, events: list[Event] | None = None, turn: int | None = None) -> bool: ...
    def interrupt(self) -> int: ...
    def publish(self, event: Event) -> None: ...


class Speaker:
    def __init__(
        self,
        sink: SpeechSink,
        tts: TTS,
        conversation: Conversation | None = None,
        max_pending: int = 64,
        on_first_audio: Callable[[float], None] | None = None,
        tasks: TaskOwner | None = None,
    ) -> None:
        """`tasks`: the owner of the session spoken into (the Speaker's tasks run in a group of it); without
        one the Speaker is their only owner, and close() ends them."""
        self.sink = sink
        self.tts = tts
        self.conversation = conversation
        self.on_first_audio = on_first_audio  # told the seconds from a sentence to its first TTS audio (metrics)
        self._sentences: asyncio.Queue = asyncio.Queue(max_pending)
        self._tasks = tasks.group("speaker") if tasks is not None else TaskOwner("speaker")
        self._producers = self._tasks.group("requests")  # requests still queueing speech: say, chat, audio files
        self._voice: asyncio.Task | None = None  # the speaking loop, started by the first request after a quiet spell
        self._errors_reported: set[str] = set()

    # -- what the server calls ------------------------------------------------------------------------------
    def say(self, text: str) -> asyncio.Task:
        """Speak `text` verbatim, sentence by sentence, after whatever is already queued; returns the request's
        task (done when its last sentence is queued; cancelled by interrupt)."""
        return self._request(self._say(text, self.sink.turn), "say")

    def chat(self, text: str) -> asyncio.Task:
        """Ask the LLM and speak its answer as it streams; returns the producing task."""
        if self.conversation is None:
            raise RuntimeError("no LLM configured for chat")
        return self._request(self._chat(text, self.sink.turn), "chat")

    def push_audio_file(self, pcm: np.ndarray, label: str = "") -> asyncio.Task:
        """Speak prepared audio (an uploaded file) as one 'sentence' after what is queued; returns its task,
        done once the audio is in the session (until then this voice holds it)."""
        return self._request(self._audio(one_chunk(pcm), label, self.sink.turn), "audio-file")

    def push_audio_stream(self, chunks: AsyncIterator[np.ndarray], label: str = "") -> asyncio.Task:
        """Speak audio that arrives in pieces (a WebSocket stream) as one 'sentence' after what is queued: its
        pieces are taken only as fast as the session accepts them. Returns its task, done once the stream has
        ended and all of it is in the session (or it was skipped or interrupted)."""
        return self._request(self._audio(chunks, label, self.sink.turn), "audio-stream")

    @property
    def pending(self) -> int:
        """Requests (say, chat, audio files) still queueing their speech."""
        return len(self._producers)

    async def interrupt(self) -> int:
        """Stop talking now: cancel every request still queueing speech and the TTS in flight, drop queued
        sentences, new session turn."""
        await self._producers.cancel()
        while not self._sentences.empty():
            self._sentences.get_nowait()
        turn = self.sink.interrupt()
        # The speaking loop may be inside a TTS call of the old turn: end it so that call is closed now (the next
        # request starts it again).
        await self._tasks.cancel()
        self._voice = None
        return turn

    async def close(self) -> None:
        await self._tasks.close()

    # -- internals ------------------------------------------------------------------------------------------
    def _request(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        """Run a request in the requests' group, starting the speaking loop if it is not running."""
        task = self._producers.spawn(coro, name)  # first: refused once closed (then so is the loop's group)
        if self._voice is None or self._voice.done():
            self._voice = self._tasks.spawn(self._speak_loop(), "speaker")
        return task

    async def _say(self, text: str, turn: int) -> None:
        splitter = SentenceSplitter()
        for sentence in splitter.feed(text) + splitter.flush():
            await self._sentences.put((turn, sentence))

    async def _audio(self, chunks: AsyncIterator[np.ndarray], label: str, turn: int) -> None:
        played: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._sentences.put((turn, chunks, label, played))
        await played

    async def _chat(self, text: str, turn: int) -> None:
        assert self.conversation is not None
        splitter = SentenceSplitter()
        try:
            async with contextlib.aclosing(self.conversation.reply(text)) as deltas:
                async for delta in deltas:
                    for sentence in splitter.feed(delta):
                        await self._sentences.put((turn, sentence))
            for sentence in splitter.flush():
                await self._sentences.put((turn, sentence))
        except LLMError as e:
            self._report(EventKind.LLM_ERROR, str(e))

    async def _speak_loop(self) -> None:
        while True:
            item = await self._sentences.get()
            turn = item[0]
            if isinstance(item[1], str):
                if turn == self.sink.turn:  # else queued before an interrupt
                    await self._speak(item[1], turn)
                continue
            _, chunks, label, played = item
            try:
                if turn == self.sink.turn:
                    start = Event(EventKind.SENTENCE_START, label, turn)
                    await self._push(chunks, start, Event(EventKind.SENTENCE_END, label, turn), turn)
            finally:  # played, skipped or cut short: its request is over either way
                if not played.done():
                    played.set_result(None)

    async def _speak(self, sentence: str, turn: int) -> None:
        start, end = Event(EventKind.SENTENCE_START, sentence, turn), Event(EventKind.SENTENCE_END, sentence, turn)
        try:
            async with contextlib.aclosing(self.tts.synthesize(sentence)) as chunks:
                await self._push(self._timed(chunks), start, end, turn)
        except TTSError as e:
            self._report(EventKind.TTS_ERROR, str(e))

    async def _push(self, chunks: AsyncIterator[np.ndarray], start: Event, end: Event, turn: int) -> None:
        first = True
        async for chunk in chunks:
            if not await self.sink.push_audio(chunk, events=[start] if first else None, turn=turn):
                return  # interrupted
            first = False
        if not first:
            await self.sink.end_speech(events=[end], turn=turn)

    async def _timed(self, chunks: AsyncIterator[np.ndarray]) -> AsyncIterator[np.ndarray]:
        """`chunks`, telling on_first_audio how long the first one took."""
        started, first = time.monotonic(), True
        async for chunk in chunks:
            if first and self.on_first_audio is not None:
                self.on_first_audio(time.monotonic() - started)
            first = False
            yield chunk

    def _report(self, kind: EventKind, message: str) -> None:
        """Tell the client (as an event) every time; log each distinct failure once."""
        if message not in self._errors_reported:
            self._errors_reported.add(message)
            log.warning("%s: %s", kind.value, message)
        self.sink.publish(Event(kind, message, self.sink.turn))


async def one_chunk(pcm: np.ndarray) -> AsyncIterator[np.ndarray]:
    """Audio that is all there already, as a stream of one piece."""
    yield pcm
