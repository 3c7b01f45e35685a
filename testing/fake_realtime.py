"""A local OpenAI Realtime API (WebSocket, GA protocol) on 127.0.0.1 that behaves as the real service does today.

- Handshake: no key, or a key starting ``sk-bad``, is refused with HTTP 401 and OpenAI's JSON error body; a
  client that still sends ``OpenAI-Beta: realtime=v1`` gets an ``error`` event ``beta_api_shape_disabled`` and
  the socket is closed (the beta interface is shut down).
- ``session.update`` must have ``session.type: "realtime"`` and only GA fields; a beta field (``modalities``,
  a flat ``voice``, ``input_audio_format``, ``turn_detection`` at the top...) is an ``unknown_parameter`` error.
- Server events have the GA names: ``session.created/updated``, ``conversation.item.added/done``,
  ``response.created``, ``response.output_audio.delta``, ``response.output_audio_transcript.delta``,
  ``response.done``, ``input_audio_buffer.speech_started/stopped/committed``,
  ``conversation.item.input_audio_transcription.completed``.
- Turn detection on the appended microphone audio (a plain energy detector stands in for the service's model):
  speech start interrupts the answer being generated, speech end commits the turn, transcribes it (with the
  recorder's ``transcribe``, e.g. our whisper; without one the transcript says how long the turn was) and answers.
- ``RealtimeRecorder.drop()`` cuts every open socket without a close frame (to test reconnection);
  ``refusals`` makes the next handshakes fail with 503.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from core.audio import rms
from testing.fake_services import _serve, tone_pcm16

RATE = 24000
REALTIME_TEXT = ["Sure", ", here", " is", " the", " answer."]
REALTIME_SAMPLES = [2401, 17, 4800, 1203, 960]  # 24 kHz samples per audio delta
LONG_REPEATS = 40  # a user text "long" gets this many rounds of REALTIME_SAMPLES (about 16 s of audio)
FRAME = RATE // 50  # turn detection works on 20 ms frames
SPEECH_LEVEL = 0.01  # frame RMS above which a frame is voiced (-40 dBFS)
START_FRAMES = 3  # voiced frames in a row that start speech
PREFIX_PADDING_MS = 300
AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")

# The GA session fields (a subset of values is checked); None: a leaf whose value is not checked here.
_AUDIO_FORMAT = {"type": None, "rate": None}
SESSION_FIELDS: dict[str, Any] = {
    "type": None,
    "instructions": None,
    "output_modalities": None,
    "model": None,
    "tools": None,
    "tool_choice": None,
    "max_output_tokens": None,
    "include": None,
    "prompt": None,
    "tracing": None,
    "truncation": None,
    "reasoning": None,
    "parallel_tool_calls": None,
    "audio": {
        "input": {"format": _AUDIO_FORMAT, "noise_reduction": None, "transcription": None, "turn_detection": None},
        "output": {"format": _AUDIO_FORMAT, "voice": None, "speed": None},
    },
}
RESPONSE_FIELDS: dict[str, Any] = {
    "instructions": None,
    "output_modalities": None,
    "audio": SESSION_FIELDS["audio"],
    "conversation": None,
    "metadata": None,
    "input": None,
    "max_output_tokens": None,
    "tool_choice": None,
    "tools": None,
    "prompt": None,
}


@dataclass
class RealtimeRecorder:
    events: list[dict[str, Any]] = field(default_factory=list)  # client events (audio appends without audio)
    query: dict[str, str] = field(default_factory=dict)  # of the last handshake
    headers: dict[str, str] = field(default_factory=dict)
    attempts: int = 0  # handshakes, accepted or not
    connections: int = 0  # accepted WebSocket connections
    refusals: int = 0  # handshakes still to refuse with 503
    deltas_sent: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    heard: list[np.ndarray] = field(default_factory=list)  # appended microphone audio, int16 at 24 kHz
    speech_started_at: list[float] = field(default_factory=list)  # time.monotonic() of each speech_started
    sent: list[dict[str, Any]] = field(default_factory=list)  # server events (audio deltas without audio)
    # How the user's turn (float32 at 24 kHz) is transcribed; None: a note of its length (heard_transcript).
    transcribe: Callable[[np.ndarray], Awaitable[str]] | None = None
    _live: set[asyncio.Transport] = field(default_factory=set)

    def drop(self) -> None:
        """Cut every open connection, as a network failure does: no close frame."""
        for transport in list(self._live):
            transport.abort()

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]


REALTIME_REC = web.AppKey("realtime_rec", RealtimeRecorder)


class _Conn:
    """One accepted connection: its session, the response being generated, turn detection state."""

    def __init__(self, ws: web.WebSocketResponse, rec: RealtimeRecorder, model: str) -> None:
        self.ws, self.rec = ws, rec
        self.ids = itertools.count(1)
        self.session: dict[str, Any] = {
            "type": "realtime",
            "object": "realtime.session",
            "id": f"sess_{rec.connections}",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": "",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": RATE},
                    "transcription": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": 0.5,
                        "prefix_padding_ms": PREFIX_PADDING_MS,
                        "silence_duration_ms": 500,
                        "create_response": True,
                        "interrupt_response": True,
                    },
                },
                "output": {"format": {"type": "audio/pcm", "rate": RATE}, "voice": "alloy", "speed": 1.0},
            },
        }
        self.responder: asyncio.Task | None = None
        self.response_id = ""
        self.last_user_text = ""
        self.buffer = np.zeros(0, np.int16)  # uncommitted input audio
        self.pending = np.zeros(0, np.int16)  # less than a frame, waiting for the rest
        self.samples_in = 0  # every sample appended on this connection (for audio_start_ms)
        self.voiced_run = 0
        self.silent_run = 0
        self.speech_item: str | None = None
        self.speech_start_ms = 0

    def next_id(self, prefix: str) -> str:
        return f"{prefix}_{self.rec.connections}_{next(self.ids)}"

    async def send(self, event: dict[str, Any]) -> None:
        event = {"event_id": self.next_id("event"), **event}
        audio = event["type"] == "response.output_audio.delta"
        self.rec.sent.append({k: v for k, v in event.items() if k != "delta"} if audio else event)
        if event["type"] == "input_audio_buffer.speech_started":
            self.rec.speech_started_at.append(time.monotonic())
        with suppress(ConnectionError):
            await self.ws.send_json(event)

    async def error(
        self,
        code: str,
        message: str,
        param: str | None = None,
        event_id: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        await self.send(
            {
                "type": "error",
                "error": {"type": kind, "code": code, "message": message, "param": param, "event_id": event_id},
            }
        )

    # -- client events --------------------------------------------------------------------------------------
    async def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        handler = {
            "session.update": self.session_update,
            "conversation.item.create": self.item_create,
            "response.create": self.response_create,
            "response.cancel": self.response_cancel,
            "input_audio_buffer.append": self.append,
            "input_audio_buffer.commit": self.commit,
            "input_audio_buffer.clear": self.clear,
        }.get(str(kind))
        if handler is None:
            await self.error(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: 'session.update', "
                "'input_audio_buffer.append', 'conversation.item.create', 'response.create', ...",
                "type",
                event.get("event_id"),
            )
            return
        await handler(event)

    async def session_update(self, event: dict[str, Any]) -> None:
        session = event.get("session")
        if not isinstance(session, dict):
            await self.error(
                "missing_required_parameter", "Missing required parameter: 'session'.", "session", event.get("event_id")
            )
            return
        if (unknown := _unknown_field(session, SESSION_FIELDS, "session")) is not None:
            await self.error("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown, event.get("event_id"))
            return
        if session.get("type") != "realtime":
            await self.error(
                "missing_required_parameter",
                "Missing required parameter: 'session.type'.",
                "session.type",
                event.get("event_id"),
            )
            return
        if (invalid := _invalid_audio(session.get("audio", {}))) is not None:
            await self.error("invalid_value", f"Invalid value for '{invalid}'.", invalid, event.get("event_id"))
            return
        _merge(self.session, session)
        await self.send({"type": "session.updated", "session": self.session})

    async def item_create(self, event: dict[str, Any]) -> None:
        item = dict(event.get("item") or {})
        texts = [c.get("text", "") for c in item.get("content", []) if c.get("type") == "input_text"]
        if item.get("type") != "message" or item.get("role") not in ("user", "system", "assistant") or not texts:
            await self.error("invalid_value", "Invalid value in 'item'.", "item", event.get("event_id"))
            return
        self.last_user_text = " ".join(texts)
        item.update(id=item.get("id") or self.next_id("item"), object="realtime.item", status="completed")
        await self.send({"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send({"type": "conversation.item.done", "previous_item_id": None, "item": item})

    async def response_create(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        if (unknown := _unknown_field(response, RESPONSE_FIELDS, "response")) is not None:
            await self.error("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown, event.get("event_id"))
            return
        if self.responder is not None and not self.responder.done():
            await self.error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.response_id}. Wait until the response is finished before creating a new one.",
                None,
                event.get("event_id"),
            )
            return
        self.start_response(LONG_REPEATS if self.last_user_text == "long" else 1)

    def start_response(self, repeats: int) -> None:
        self.response_id = self.next_id("resp")
        self.responder = asyncio.create_task(self.respond(self.response_id, repeats, 0.02 if repeats > 1 else 0.0))

    async def respond(self, rid: str, repeats: int, delay: float) -> None:
        await self.send(
            {
                "type": "response.created",
                "response": {"id": rid, "object": "realtime.response", "status": "in_progress", "output": []},
            }
        )
        item = self.next_id("item")
        audio = np.frombuffer(tone_pcm16(RATE, sum(REALTIME_SAMPLES) / RATE), "<i2")
        await self.send(
            {
                "type": "response.output_item.added",
                "response_id": rid,
                "output_index": 0,
                "item": {"id": item, "type": "message", "role": "assistant", "status": "in_progress"},
            }
        )
        pos = 0
        for k in range(repeats * len(REALTIME_SAMPLES)):
            n = REALTIME_SAMPLES[k % len(REALTIME_SAMPLES)]
            piece = audio[pos % len(audio) :][:n]
            pos += n
            where = {"response_id": rid, "item_id": item, "output_index": 0, "content_index": 0}
            await self.send(
                {"type": "response.output_audio.delta", **where, "delta": base64.b64encode(piece.tobytes()).decode()}
            )
            await self.send(
                {
                    "type": "response.output_audio_transcript.delta",
                    **where,
                    "delta": REALTIME_TEXT[k % len(REALTIME_TEXT)],
                }
            )
            self.rec.deltas_sent += 1
            await asyncio.sleep(delay)
        await self.send(
            {"type": "response.done", "response": {"id": rid, "object": "realtime.response", "status": "completed"}}
        )

    async def cancel_response(self) -> bool:
        """Stop the response being generated (if any): one delta already in flight, then response.done."""
        if self.responder is None or self.responder.done():
            return False
        self.responder.cancel()
        with suppress(asyncio.CancelledError):
            await self.responder
        self.rec.cancelled.set()
        rid = self.response_id
        await self.send(
            {
                "type": "response.output_audio.delta",
                "response_id": rid,
                "item_id": "late",
                "output_index": 0,
                "content_index": 0,
                "delta": base64.b64encode(tone_pcm16(RATE, 0.02)).decode(),
            }
        )
        await self.send(
            {"type": "response.done", "response": {"id": rid, "object": "realtime.response", "status": "cancelled"}}
        )
        return True

    async def response_cancel(self, event: dict[str, Any]) -> None:
        if not await self.cancel_response():
            await self.error(
                "response_cancel_not_active",
                "Cancellation failed: no active response found.",
                None,
                event.get("event_id"),
            )

    # -- microphone audio and turn detection ----------------------------------------------------------------
    async def append(self, event: dict[str, Any]) -> None:
        try:
            data = base64.b64decode(event.get("audio", ""), validate=True)
        except ValueError:
            await self.error(
                "invalid_value", "Invalid 'audio'. Expected base64-encoded audio bytes.", "audio", event.get("event_id")
            )
            return
        samples = np.frombuffer(data[: len(data) // 2 * 2], "<i2")
        self.rec.heard.append(samples)
        self.pending = np.concatenate([self.pending, samples])
        while len(self.pending) >= FRAME:
            frame, self.pending = self.pending[:FRAME], self.pending[FRAME:]
            self.buffer = np.concatenate([self.buffer, frame])
            self.samples_in += FRAME
            await self.detect(frame)

    async def detect(self, frame: np.ndarray) -> None:
        detection = self.session["audio"]["input"].get("turn_detection")
        if not detection:
            return  # turn detection off: the client commits
        voiced = rms(frame / 32768.0) > SPEECH_LEVEL
        if self.speech_item is None:
            self.voiced_run = self.voiced_run + 1 if voiced else 0
            if self.voiced_run < START_FRAMES:
                return
            self.speech_item, self.silent_run = self.next_id("item"), 0
            padding = detection.get("prefix_padding_ms", PREFIX_PADDING_MS) * RATE // 1000
            started = self.samples_in - START_FRAMES * FRAME
            self.speech_start_ms = max(0, started - padding) * 1000 // RATE
            # The user's item holds the speech from its start minus the prefix padding, not the silence before.
            self.buffer = self.buffer[max(0, len(self.buffer) - START_FRAMES * FRAME - padding) :]
            await self.send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": self.speech_start_ms,
                    "item_id": self.speech_item,
                }
            )
            if detection.get("interrupt_response", True):
                await self.cancel_response()
            return
        self.silent_run = 0 if voiced else self.silent_run + 1
        if self.silent_run * 20 >= detection.get("silence_duration_ms", 500):
            item, self.speech_item = self.speech_item, None
            await self.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": self.samples_in * 1000 // RATE,
                    "item_id": item,
                }
            )
            await self.commit({}, item, detection.get("create_response", True))

    async def commit(self, event: dict[str, Any], item: str | None = None, answer: bool = False) -> None:
        speech_ms = len(self.buffer) * 1000 // RATE
        if speech_ms < 100:
            await self.error(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too "
                f"small. Expected at least 100ms of audio, but buffer only has {speech_ms}ms of audio.",
                None,
                event.get("event_id"),
            )
            return
        item = item or self.next_id("item")
        turn, self.buffer = self.buffer, np.zeros(0, np.int16)
        await self.send({"type": "input_audio_buffer.committed", "previous_item_id": None, "item_id": item})
        await self.send(
            {
                "type": "conversation.item.added",
                "previous_item_id": None,
                "item": {
                    "id": item,
                    "type": "message",
                    "role": "user",
                    "status": "completed",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            }
        )
        if self.session["audio"]["input"].get("transcription"):
            transcribe = self.rec.transcribe
            transcript = await transcribe(turn / 32768.0) if transcribe else heard_transcript(speech_ms)
            await self.send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item,
                    "content_index": 0,
                    "transcript": transcript,
                    "usage": {"type": "duration", "seconds": speech_ms / 1000},
                }
            )
        self.last_user_text = ""
        if answer:
            self.start_response(1)

    async def clear(self, event: dict[str, Any]) -> None:
        self.buffer = np.zeros(0, np.int16)
        await self.send({"type": "input_audio_buffer.cleared"})


def heard_transcript(speech_ms: int) -> str:
    """What this fake 'transcribes': how much audio the user's turn had."""
    return f"(heard {speech_ms / 1000:.1f} s of speech)"


def _unknown_field(value: dict[str, Any], fields: dict[str, Any], path: str) -> str | None:
    """The dotted name of the first field of ``value`` that ``fields`` does not know, else None."""
    for key, sub in value.items():
        if key not in fields:
            return f"{path}.{key}"
        if (
            isinstance(fields[key], dict)
            and isinstance(sub, dict)
            and (unknown := _unknown_field(sub, fields[key], f"{path}.{key}")) is not None
        ):
            return unknown
    return None


def _invalid_audio(audio: dict[str, Any]) -> str | None:
    """The first audio setting whose value the GA interface does not take (e.g. the beta's format "pcm16")."""
    for direction in ("input", "output"):
        fmt = audio.get(direction, {}).get("format")
        if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in AUDIO_FORMATS):
            return f"session.audio.{direction}.format"
    detection = audio.get("input", {}).get("turn_detection")
    if detection is not None and detection.get("type") not in ("server_vad", "semantic_vad"):
        return "session.audio.input.turn_detection.type"
    return None


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _refused(status: int, message: str, code: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}}, status=status)


async def _realtime(request: web.Request) -> web.StreamResponse:
    rec = request.app[REALTIME_REC]
    rec.query, rec.headers = dict(request.query), dict(request.headers)
    rec.attempts += 1
    # OpenAI: a bearer token; Azure OpenAI: an api-key header (and /openai/realtime?api-version=&deployment=).
    key = request.headers.get("api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
    if not key or key.startswith("sk-bad"):
        return _refused(
            401,
            f"Incorrect API key provided: {key or '(none)'}. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            "invalid_api_key",
        )
    if rec.refusals > 0:
        rec.refusals -= 1
        return _refused(503, "The server is overloaded, please try again later.", "server_error", "server_error")
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    rec.connections += 1
    conn = _Conn(ws, rec, request.query.get("model") or request.query.get("deployment", ""))
    if request.headers.get("OpenAI-Beta", "").startswith("realtime="):
        await conn.error(
            "beta_api_shape_disabled",
            "The Realtime API beta interface is no longer available. "
            "Use the GA interface: remove the 'OpenAI-Beta: realtime=v1' header and send GA events.",
        )
        await ws.close()
        return ws
    transport = request.transport
    assert transport is not None
    rec._live.add(transport)
    await conn.send({"type": "session.created", "session": conn.session})
    try:
        async for msg in ws:
            event = json.loads(msg.data)
            rec.events.append({k: v for k, v in event.items() if k != "audio"})
            await conn.handle(event)
    finally:  # the connection ended: no response keeps sending on it
        rec._live.discard(transport)
        if conn.responder is not None:
            conn.responder.cancel()
            await asyncio.gather(conn.responder, return_exceptions=True)
    return ws


@asynccontextmanager
async def realtime_service() -> AsyncIterator[tuple[str, RealtimeRecorder]]:
    """The Realtime API over WebSocket; yields (ws://.../v1/realtime URL, recorder). A user text "long" gets a long
    answer."""
    app = web.Application()
    app[REALTIME_REC] = RealtimeRecorder()
    app.router.add_get("/v1/realtime", _realtime)
    app.router.add_get("/openai/realtime", _realtime)  # Azure OpenAI's path
    runner, url = await _serve(app)
    try:
        yield url.replace("http", "ws") + "/v1/realtime", app[REALTIME_REC]
    finally:
        await runner.cleanup()
