"""`GET /ws/audio?sessionid=`: speech streamed into a session over a WebSocket (an external TTS, an agent
framework, a phone bridge), with the session's events sent back on the same socket.

Protocol (JSON text messages, binary audio):
  client: {"type": "start", "sample_rate": 16000|24000|48000}   first, once
          binary: PCM16 little-endian mono at that rate (at most MAX_MESSAGE_SECONDS a message)
          {"type": "text", "text": "..."}          the subtitle of the next utterance (its start/end events)
          {"type": "end_of_utterance"} (or "flush") the utterance ends: its tail is played, sentence_end fires
                                                   (also after UTTERANCE_IDLE_S without a message in one)
          {"type": "interrupt"}                    stop talking now (as /interrupt_talk)
  server: {"type": "ready", ...} after the start message, then the /sse events ({"status": "start"|"end",
          "text"} when an utterance's audio is actually played, {"event": ...} otherwise), {"event":
          "speaking", "speaking": bool} when that changes, and {"event": "interrupted"} when an utterance
          was cut by an interrupt (its remaining audio is dropped until its end_of_utterance); before a close
          for bad input, {"event": "error", "code", "text"} with the whole reason.

An utterance goes through the session's voice like an uploaded file (after speech already queued, then
Session.push_audio: the same framer, lip-sync and A/V clock as /humanaudio), but piece by piece: the socket is
read only as fast as the voice takes the pieces, and never while the session holds --max_queued_seconds of
unplayed speech, so a fast sender is slowed by TCP instead of filling memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from aiohttp import WSCloseCode, WSMessage, WSMsgType, web

from core.audio import StreamResampler, pcm16_to_float
from core.units import SAMPLE_RATE, TICK_SECONDS
from server.errors import BadRequest, Conflict
from server.registry import LiveSession
from server.routes import live_session, sse_data
from server.state import STATE, AppState
from server.voice import Voice

log = logging.getLogger(__name__)

RATES = (16000, 24000, 48000)
MAX_MESSAGE_SECONDS = 1.0
HEADER_TIMEOUT_S = 10.0
HEARTBEAT_S = 20.0  # pings find a vanished client; its stream then ends like a closed one
UTTERANCE_IDLE_S = 5.0  # no audio or end for this long in the middle of an utterance: it is ended
BUFFERED_PIECES = 4  # audio messages held between the socket and the voice; beyond, the socket is not read
SPEAKING_POLL_S = 0.1
# How soon a stream notices that its session ended while it waits for the client: the session's closing ends the
# event sender (a task the session owns) before anything could tell this side.
SESSION_POLL_S = 0.25
CLOSE_TIMEOUT_S = 2.0  # a client that does not answer our close frame is disconnected after this (aiohttp: 10 s)
STREAMS = web.AppKey("ws_audio_streams", set)  # ids of the sessions with an open audio socket (one each)


class StreamClosed(Exception):
    """End the stream with this WebSocket close code and reason."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def close_reason(text: str, limit: int = 120) -> bytes:
    """`text` cut to fit a close frame, never inside a UTF-8 character."""
    return text.encode()[:limit].decode("utf-8", "ignore").encode()


class Utterance:
    """The audio of one utterance on its way from the socket to the voice, a few pieces at a time."""

    def __init__(self, voice: Voice, label: str) -> None:
        self._pieces: asyncio.Queue[np.ndarray | None] = asyncio.Queue()  # unbounded: the end always fits
        self._taken = asyncio.Event()  # a piece was taken, or the voice's task ended (it takes no more then)
        self.buffered_seconds = 0.0  # handed on, not yet taken by the voice (so not yet counted by the session)
        self.task = voice.push_audio_stream(self._stream(), label)
        self.task.add_done_callback(lambda _: self._taken.set())

    async def _stream(self) -> AsyncIterator[np.ndarray]:
        while (piece := await self._pieces.get()) is not None:
            self.buffered_seconds -= piece.size / SAMPLE_RATE
            self._taken.set()
            yield piece

    async def put(self, pcm: np.ndarray) -> bool:
        """Hand a piece on, waiting while BUFFERED_PIECES are not taken yet. False when the voice will take
        no more of this utterance (interrupted, or the session ended)."""
        while self._pieces.qsize() >= BUFFERED_PIECES and not self.task.done():
            self._taken.clear()
            await self._taken.wait()
        if self.task.done():
            return False
        self._pieces.put_nowait(pcm)
        self.buffered_seconds += pcm.size / SAMPLE_RATE
        return True

    def end(self) -> None:
        """No more audio: the voice plays what it has, then ends the utterance."""
        self._pieces.put_nowait(None)


class AudioStream:
    """One socket's stream into one session."""

    def __init__(self, state: AppState, live: LiveSession, ws: web.WebSocketResponse) -> None:
        self.state = state
        self.live = live
        self.ws = ws
        self.rate = 0
        self._resampler: StreamResampler | None = None
        self._utterance: Utterance | None = None
        self._dropping = False  # the utterance was interrupted: drop its audio until its end
        self._label = ""

    async def run(self) -> None:
        events = self.live.session.subscribe()
        sender: asyncio.Task | None = None
        code: int = WSCloseCode.OK
        reason = "bye"
        try:
            if self.live.closed:  # it ended while the socket was being accepted
                raise StreamClosed(WSCloseCode.GOING_AWAY, "the session ended")
            sender = self.live.spawn(self._send_events(events), "ws-audio-events")  # named with the session id
            await self._start()
            await self._receive()
        except StreamClosed as e:
            code, reason = e.code, e.reason
        finally:
            self._end_utterance()  # what was received is played; the voice does not wait for more
            if sender is not None:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
            self.live.session.unsubscribe(events)
        if not self.ws.closed:
            if code != WSCloseCode.OK and not self.live.closed:  # the whole reason (a close frame holds at most
                # 123 bytes of it); an ended session is no fault of the client: its socket just closes with 1001
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.send_json({"event": "error", "code": code, "text": reason})
            await self.ws.close(code=code, message=close_reason(reason))

    # -- from the client --------------------------------------------------------------------------------------
    async def _start(self) -> None:
        try:
            msg = await self._message(HEADER_TIMEOUT_S)
        except TimeoutError as e:
            raise StreamClosed(WSCloseCode.POLICY_VIOLATION, f"no start message within {HEADER_TIMEOUT_S:g} s") from e
        if msg.type == WSMsgType.BINARY:
            raise StreamClosed(
                WSCloseCode.POLICY_VIOLATION,
                'audio before the start message: send {"type": "start", "sample_rate": 16000} first',
            )
        if msg.type != WSMsgType.TEXT:
            raise StreamClosed(WSCloseCode.OK, "closed before the start message")
        header = self._control(msg.data)
        if header.get("type") != "start":
            raise StreamClosed(
                WSCloseCode.POLICY_VIOLATION, 'the first message must be {"type": "start", "sample_rate": ...}'
            )
        rate = header.get("sample_rate")
        if isinstance(rate, bool) or rate not in RATES:
            raise StreamClosed(
                WSCloseCode.UNSUPPORTED_DATA,
                f"sample_rate must be one of {', '.join(map(str, RATES))} (PCM16 mono), got {rate!r}",
            )
        self.rate = rate
        self._resampler = StreamResampler(rate, SAMPLE_RATE)
        await self.ws.send_json(
            {
                "type": "ready",
                "sample_rate": rate,
                "format": "pcm16le mono",
                "max_message_bytes": self.max_message_bytes,
                "max_queued_seconds": self.state.config.max_queued_seconds,
            }
        )

    @property
    def max_message_bytes(self) -> int:
        return int(self.rate * 2 * MAX_MESSAGE_SECONDS)

    async def _receive(self) -> None:
        while True:
            # An open utterance holds the session's voice (other speech waits for its end): a client that goes
            # quiet in the middle of one has it ended for it.
            idle = UTTERANCE_IDLE_S if self._utterance is not None else None
            try:
                msg = await self._message(idle)
            except TimeoutError:
                await self._flush()
                continue
            if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                return  # the client closed (or vanished: heartbeat)
            if msg.type == WSMsgType.BINARY:
                await self._audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                await self._command(self._control(msg.data))
            elif msg.type == WSMsgType.ERROR:  # e.g. a message over the size limit: aiohttp closed with 1009
                raise StreamClosed(self.ws.close_code or WSCloseCode.PROTOCOL_ERROR, str(msg.data))

    async def _message(self, timeout: float | None) -> WSMessage:
        """The client's next message; TimeoutError after `timeout` seconds (None: none), StreamClosed
        once the session has ended."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if self.live.closed:
                raise StreamClosed(WSCloseCode.GOING_AWAY, "the session ended")
            wait = (
                SESSION_POLL_S
                if deadline is None
                else min(SESSION_POLL_S, deadline - asyncio.get_running_loop().time())
            )
            if wait <= 0:
                raise TimeoutError
            try:
                return await self.ws.receive(timeout=wait)
            except TimeoutError:
                continue

    @staticmethod
    def _control(text: str) -> dict[str, Any]:
        try:
            body = json.loads(text)
        except ValueError as e:
            raise StreamClosed(WSCloseCode.POLICY_VIOLATION, f"a text message must be JSON: {e}") from e
        if not isinstance(body, dict):
            raise StreamClosed(WSCloseCode.POLICY_VIOLATION, "a text message must be a JSON object")
        return body

    async def _command(self, body: dict[str, Any]) -> None:
        kind = body.get("type")
        if kind in ("end_of_utterance", "flush"):
            await self._flush()
        elif kind == "interrupt":
            self._end_utterance()
            self._dropping = False
            assert self._resampler is not None
            self._resampler.reset()
            await self.live.voice.interrupt()
        elif kind == "text":
            text = body.get("text")
            if not isinstance(text, str) or len(text) > self.state.config.max_text_chars:
                raise StreamClosed(
                    WSCloseCode.POLICY_VIOLATION,
                    f"'text' must be a string of at most {self.state.config.max_text_chars} characters",
                )
            self._label = text
        else:
            raise StreamClosed(
                WSCloseCode.POLICY_VIOLATION,
                f"unknown message type {kind!r} (expected end_of_utterance, interrupt or text)",
            )

    async def _audio(self, data: bytes) -> None:
        if len(data) % 2:
            raise StreamClosed(
                WSCloseCode.INVALID_TEXT, "an audio message must hold whole PCM16 samples (an even number of bytes)"
            )
        if len(data) > self.max_message_bytes:
            raise StreamClosed(
                WSCloseCode.MESSAGE_TOO_BIG,
                f"an audio message may hold at most "
                f"{MAX_MESSAGE_SECONDS:g} s ({self.max_message_bytes} "
                f"bytes at {self.rate} Hz)",
            )
        if self._dropping or not data:
            return
        assert self._resampler is not None
        await self._push(self._resampler.process(pcm16_to_float(data)))

    async def _flush(self) -> None:
        assert self._resampler is not None
        tail = self._resampler.flush()
        if not self._dropping and tail.size:
            await self._push(tail)
        self._dropping = False
        self._end_utterance()

    async def _push(self, pcm: np.ndarray) -> None:
        if not pcm.size:
            return
        await self._room(pcm.size / SAMPLE_RATE)
        if self.live.closed:  # before, or while waiting for room: its voice takes nothing more
            raise StreamClosed(WSCloseCode.GOING_AWAY, "the session ended")
        if self._utterance is None:
            self._utterance = Utterance(self.live.voice, self._label)
            self._label = ""
        if not await self._utterance.put(pcm):
            if self.live.closed:
                raise StreamClosed(WSCloseCode.GOING_AWAY, "the session ended")
            self._utterance = None
            self._dropping = True
            await self.ws.send_json({"event": "interrupted"})

    async def _room(self, seconds: float) -> None:
        """Back-pressure: wait (reading nothing) while the session holds as much speech as it may: seconds not
        played (--max_queued_seconds) or, before a new utterance, requests waiting (--max_pending_requests)."""
        c = self.state.config
        while not self.live.closed and (
            self.live.queued_seconds + self._buffered_seconds + seconds > c.max_queued_seconds
            or (self._utterance is None and self.live.voice.pending >= c.max_pending_requests)
        ):
            await asyncio.sleep(TICK_SECONDS)

    @property
    def _buffered_seconds(self) -> float:
        return self._utterance.buffered_seconds if self._utterance is not None else 0.0

    def _end_utterance(self) -> None:
        if self._utterance is not None:
            self._utterance.end()
            self._utterance = None

    # -- to the client ----------------------------------------------------------------------------------------
    async def _send_events(self, events: asyncio.Queue) -> None:
        speaking: bool | None = None
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), SPEAKING_POLL_S)
                except TimeoutError:
                    event = False
                if event is None:  # the session ended
                    await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"the session ended")
                    return
                if event:
                    await self.ws.send_json(sse_data(event))
                if (now := self.live.session.speaking) != speaking:
                    speaking = now
                    await self.ws.send_json({"event": "speaking", "speaking": now})
        except (ConnectionError, RuntimeError):
            pass  # the socket is closing: the receiving side ends the stream


async def ws_audio(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    live = live_session(state, request.query.get("sessionid"))
    ws = web.WebSocketResponse(
        max_msg_size=int(max(RATES) * 2 * MAX_MESSAGE_SECONDS) + 1024, heartbeat=HEARTBEAT_S, timeout=CLOSE_TIMEOUT_S
    )
    if not ws.can_prepare(request).ok:
        raise BadRequest("/ws/audio is a WebSocket: connect with a WebSocket client (Upgrade: websocket)")
    streams = request.app[STREAMS]
    if live.id in streams:
        raise Conflict("this session already has an open /ws/audio stream; close it first")
    streams.add(live.id)
    try:
        await ws.prepare(request)
        try:
            await AudioStream(state, live, ws).run()
        except Exception:  # after the upgrade no HTTP error body can be sent: a close code instead
            log.exception("session %s: /ws/audio failed", live.id)
            await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal error")
    finally:
        streams.discard(live.id)
    return ws


def setup(app: web.Application) -> None:
    app[STREAMS] = set()
    app.router.add_get("/ws/audio", ws_audio)
