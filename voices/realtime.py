"""OpenAI Realtime API client (WebSocket, aiohttp).

Text or audio goes in; events come out as they arrive: audio deltas
(PCM16 24 kHz base64 -> float32 16 kHz, resampled delta by delta),
transcript deltas, response done, errors. Both the GA event names
(``response.output_audio.delta``) and the beta ones (``response.audio.delta``)
are understood.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
import numpy as np

from voices._http import bearer
from voices.audio import SAMPLE_RATE, StreamResampler, float_to_pcm16, pcm16_to_float, resample

API_RATE = 24000
_AUDIO_DELTA = {"response.output_audio.delta", "response.audio.delta"}
_TRANSCRIPT_DELTA = {"response.output_audio_transcript.delta", "response.audio_transcript.delta"}


class RealtimeError(Exception):
    """Connection or protocol failure; the message is meant for a user."""


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
class ServerError:
    message: str
    code: str | None = None


RealtimeEvent = AudioDelta | TranscriptDelta | ResponseDone | ServerError


class RealtimeClient:
    def __init__(
        self,
        url: str = "wss://api.openai.com/v1/realtime",
        model: str = "gpt-realtime",
        api_key: str | None = None,
        *,
        beta: bool = True,
        connect_timeout: float = 10.0,
    ) -> None:
        self.url = f"{url}{'&' if '?' in url else '?'}{urlencode({'model': model})}" if model else url
        self._headers = bearer(api_key)
        if beta:
            self._headers["OpenAI-Beta"] = "realtime=v1"
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._resamplers: dict[str, StreamResampler] = {}
        self._current: str | None = None  # id of the response being generated
        self._cancelled: set[str] = set()

    async def connect(self) -> None:
        self._session = aiohttp.ClientSession()
        try:
            # max_msg_size=0: audio deltas can exceed aiohttp's 4 MiB default.
            self._ws = await asyncio.wait_for(
                self._session.ws_connect(self.url, headers=self._headers, heartbeat=20.0, max_msg_size=0),
                self._connect_timeout,
            )
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            await self.close()
            status = f" (HTTP {e.status})" if isinstance(e, aiohttp.WSServerHandshakeError) else ""
            raise RealtimeError(f"Realtime API: cannot connect to {self.url}{status}: {str(e) or type(e).__name__}") from e

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "RealtimeClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def send(self, event: dict[str, Any]) -> None:
        if self._ws is None or self._ws.closed:
            raise RealtimeError("Realtime API: not connected")
        try:
            await self._ws.send_str(json.dumps(event))
        except (aiohttp.ClientError, ConnectionError) as e:
            raise RealtimeError(f"Realtime API: send failed: {e}") from e

    async def update_session(self, session: dict[str, Any]) -> None:
        await self.send({"type": "session.update", "session": session})

    async def send_text(self, text: str) -> None:
        """Add a user message and ask for a response."""
        await self.send({
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        })
        await self.send({"type": "response.create"})

    async def append_audio(self, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
        """Append microphone audio (float32 mono) to the input buffer."""
        pcm = float_to_pcm16(resample(audio, sample_rate, API_RATE))
        await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode("ascii")})

    async def commit_audio(self) -> None:
        """End the user's turn when the server's own VAD is off."""
        await self.send({"type": "input_audio_buffer.commit"})

    async def cancel(self) -> None:
        """Stop the current response; its remaining audio is dropped here."""
        if self._current is not None:
            self._cancelled.add(self._current)
            self._resamplers.pop(self._current, None)
        await self.send({"type": "response.cancel"})

    async def events(self) -> AsyncIterator[RealtimeEvent]:
        """Yield events until the connection closes."""
        if self._ws is None:
            raise RealtimeError("Realtime API: not connected")
        async for msg in self._ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError as e:
                    raise RealtimeError(f"Realtime API: malformed event {msg.data[:80]!r}") from e
                for event in self._handle(data):
                    yield event
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise RealtimeError(f"Realtime API: connection error: {self._ws.exception()}")

    def _handle(self, event: dict[str, Any]) -> list[RealtimeEvent]:
        kind = event.get("type", "")
        if kind == "response.created":
            self._current = event.get("response", {}).get("id")
            return []
        if kind == "error":
            error = event.get("error") or {}
            return [ServerError(str(error.get("message", error)), error.get("code"))]
        response_id = event.get("response_id") or event.get("response", {}).get("id") or self._current or ""
        if kind == "response.done":
            return self._finish(response_id, event.get("response", {}).get("status", "completed"))
        if response_id in self._cancelled:
            return []  # late deltas of a cancelled response
        if kind in _AUDIO_DELTA:
            resampler = self._resamplers.setdefault(response_id, StreamResampler(API_RATE))
            audio = resampler.process(pcm16_to_float(base64.b64decode(event.get("delta", ""))))
            return [AudioDelta(response_id, audio)] if audio.size else []
        if kind in _TRANSCRIPT_DELTA:
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
        return out + [ResponseDone(response_id, status)]
