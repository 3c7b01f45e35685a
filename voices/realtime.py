"""OpenAI Realtime API client (GA protocol) through the official ``openai`` SDK (``client.realtime.connect``).

Text or microphone audio goes in; events come out as they arrive: the answer's audio deltas (PCM16 24 kHz
base64 -> float32 16 kHz, resampled delta by delta), its transcript deltas, response done, the service's turn
detection (the user started / stopped speaking), the user's transcript, errors. Only the GA shapes are spoken:
the service refuses the retired beta ones (``beta_api_shape_disabled``, ``unknown_parameter``).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import openai
import websockets

from core.audio import StreamResampler, pcm16_to_float
from voices.openai_api import OpenAIEndpoint
from voices.options import REALTIME_MODEL, TURN_DETECTION

if TYPE_CHECKING:
    from openai.resources.realtime.realtime import AsyncRealtimeConnection

API_RATE = 24000  # the service's PCM rate, both ways
# The service's error codes after which the same connection attempt can only fail the same way again.
FATAL_CODES = frozenset({"invalid_api_key", "beta_api_shape_disabled", "model_not_found"})


class RealtimeError(Exception):
    """Connection or protocol failure; the message is meant for a user."""


class RealtimeAuthError(RealtimeError):
    """The service refused the credentials: trying again cannot help."""


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    audio: np.ndarray  # float32 mono 16 kHz


@dataclass(frozen=True)
class TranscriptDelta:
    response_id: str
    text: str


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str  # "completed", "cancelled", ...


@dataclass(frozen=True)
class SpeechStarted:
    """The service's turn detection heard the user begin to speak (in the microphone audio appended)."""

    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str


@dataclass(frozen=True)
class UserTranscript:
    """What the user said, transcribed by the service (``audio.input.transcription``)."""

    item_id: str
    text: str


@dataclass(frozen=True)
class ServerError:
    message: str
    code: str | None = None


RealtimeEvent = (
    AudioDelta | TranscriptDelta | ResponseDone | SpeechStarted | SpeechStopped | UserTranscript | ServerError
)


def session_config(
    instructions: str,
    voice: str | None = None,
    turn_detection: str = "server_vad",
    transcription_model: str = "gpt-4o-mini-transcribe",
) -> dict[str, Any]:
    """The GA ``session.update`` body: audio out (with its transcript), PCM16 24 kHz both ways, the service's
    own turn detection on the microphone audio (it answers when the user stops, and cuts its answer when the
    user starts), and the user's speech transcribed for the page."""
    if turn_detection not in TURN_DETECTION:
        raise ValueError(f"turn_detection must be one of {', '.join(TURN_DETECTION)}, not {turn_detection!r}")
    pcm = {"type": "audio/pcm", "rate": API_RATE}
    output: dict[str, Any] = {"format": pcm}
    if voice:
        output["voice"] = voice
    return {
        "type": "realtime",
        "instructions": instructions,
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": pcm,
                "transcription": {"model": transcription_model},
                "turn_detection": {"type": turn_detection, "create_response": True, "interrupt_response": True},
            },
            "output": output,
        },
    }


class RealtimeClient:
    """One WebSocket connection. ``url`` is the Realtime endpoint (``wss://.../v1/realtime``); None: from the
    endpoint (``OPENAI_BASE_URL`` or OpenAI's, or Azure's)."""

    def __init__(
        self,
        endpoint: OpenAIEndpoint = OpenAIEndpoint(),
        model: str = REALTIME_MODEL,
        url: str | None = None,
        *,
        connect_timeout: float = 10.0,
    ) -> None:
        self.endpoint, self.model = endpoint, model
        self.url = url or "the Realtime API"
        self._websocket_base = url.removesuffix("/").removesuffix("/realtime") if url else None
        self._connect_timeout = connect_timeout
        self._client: openai.AsyncOpenAI | None = None
        self._conn: AsyncRealtimeConnection | None = None
        self._resamplers: dict[str, StreamResampler] = {}
        self._current: str | None = None  # id of the response being generated
        self._cancelled: set[str] = set()

    async def connect(self) -> None:
        self._client = self.endpoint.client(websocket_base_url=self._websocket_base)
        manager = self._client.realtime.connect(model=self.model)
        try:
            self._conn = await asyncio.wait_for(manager.enter(), self._connect_timeout)
        except websockets.InvalidStatus as e:
            await self.close()
            status, message = e.response.status_code, _handshake_message(e.response.body)
            error = RealtimeAuthError if status in (401, 403) else RealtimeError
            raise error(f"Realtime API: {self.url} refused the connection (HTTP {status}: {message})") from e
        except (TimeoutError, OSError, websockets.WebSocketException, openai.OpenAIError) as e:
            await self.close()
            raise RealtimeError(f"Realtime API: cannot connect to {self.url}: {str(e) or type(e).__name__}") from e

    async def close(self) -> None:
        conn, client, self._conn, self._client = self._conn, self._client, None, None
        if conn is not None:
            await conn.close()
        if client is not None:
            await client.close()

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, event: dict[str, Any]) -> None:
        if self._conn is None:
            raise RealtimeError("Realtime API: not connected")
        try:
            await self._conn.send(event)  # type: ignore[arg-type]
        except (websockets.WebSocketException, openai.OpenAIError, OSError) as e:
            raise RealtimeError(f"Realtime API: the connection was lost ({e or type(e).__name__})") from e

    async def update_session(self, session: dict[str, Any]) -> None:
        await self.send({"type": "session.update", "session": session})

    async def send_text(self, text: str) -> None:
        """Add a user message and ask for a response."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
            }
        )
        await self.send({"type": "response.create"})

    async def say(self, text: str) -> None:
        """Ask for a response that speaks ``text`` as it is."""
        await self.send(
            {
                "type": "response.create",
                "response": {"instructions": f"Say exactly the following text and nothing else: {text}"},
            }
        )

    async def append_audio(self, pcm16: bytes) -> None:
        """Append microphone audio, PCM16 mono at 24 kHz, to the input buffer (the service's turn detection
        decides when the user's turn ends)."""
        await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm16).decode("ascii")})

    async def cancel(self) -> None:
        """Stop the current response; its remaining audio is dropped here."""
        if self._current is not None:
            self._cancelled.add(self._current)
            self._resamplers.pop(self._current, None)
        await self.send({"type": "response.cancel"})

    async def events(self) -> AsyncIterator[RealtimeEvent]:
        """Yield events until the connection closes (normally: the iterator ends; dropped: RealtimeError)."""
        if self._conn is None:
            raise RealtimeError("Realtime API: not connected")
        try:
            async for raw in self._raw(self._conn):
                for event in self._handle(raw):
                    yield event
        except websockets.ConnectionClosed as e:
            raise RealtimeError(f"Realtime API: the connection was lost ({e})") from e

    @staticmethod
    async def _raw(conn: AsyncRealtimeConnection) -> AsyncIterator[dict[str, Any]]:
        # Raw JSON rather than the SDK's models: only a few fields are read, and nothing the service adds breaks it.
        while True:
            try:
                data = await conn.recv_bytes()
            except websockets.ConnectionClosedOK:
                return
            try:
                event = json.loads(data)
            except json.JSONDecodeError as e:
                raise RealtimeError(f"Realtime API: malformed event {data[:80]!r}") from e
            if isinstance(event, dict):
                yield event

    def _handle(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        kind = event.get("type", "")
        if kind == "response.created":
            self._current = event.get("response", {}).get("id")
            return []
        if kind == "error":
            error = event.get("error") or {}
            return [ServerError(str(error.get("message", error)), error.get("code"))]
        if kind == "input_audio_buffer.speech_started":
            return [SpeechStarted(event.get("item_id", ""))]
        if kind == "input_audio_buffer.speech_stopped":
            return [SpeechStopped(event.get("item_id", ""))]
        if kind == "conversation.item.input_audio_transcription.completed":
            return [UserTranscript(event.get("item_id", ""), event.get("transcript", ""))]
        response_id = event.get("response_id") or event.get("response", {}).get("id") or self._current or ""
        if kind == "response.done":
            return self._finish(response_id, event.get("response", {}).get("status", "completed"))
        if response_id in self._cancelled:
            return []  # late deltas of a cancelled response
        if kind == "response.output_audio.delta":
            resampler = self._resamplers.setdefault(response_id, StreamResampler(API_RATE))
            audio = resampler.process(pcm16_to_float(base64.b64decode(event.get("delta", ""))))
            return [AudioDelta(response_id, audio)] if audio.size else []
        if kind == "response.output_audio_transcript.delta":
            return [TranscriptDelta(response_id, event.get("delta", ""))]
        return []

    def _finish(self, response_id: str, status: str) -> list[RealtimeEvent]:
        out: list[RealtimeEvent] = []
        resampler = self._resamplers.pop(response_id, None)
        if resampler is not None and response_id not in self._cancelled:
            tail = resampler.flush()
            if tail.size:
                out.append(AudioDelta(response_id, tail))
        if response_id in self._cancelled:
            status = "cancelled"
        self._cancelled.discard(response_id)
        if self._current == response_id:
            self._current = None
        return [*out, ResponseDone(response_id, status)]


def _handshake_message(body: bytes | bytearray | None) -> str:
    """The service's message from a refused handshake's body (OpenAI's JSON error shape), else its text."""
    text = (body or b"").decode("utf-8", "replace").strip()
    try:
        error = json.loads(text).get("error") or {}
        return str(error.get("message") or text)[:200]
    except (json.JSONDecodeError, AttributeError):
        return text[:200] or "no details"
