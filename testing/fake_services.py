"""Local servers on 127.0.0.1 that speak the protocols of the services the
voices package talks to: OpenAI-compatible chat + speech (also under Azure's
paths) and GPT-SoVITS api_v2. Each records what it received. The Realtime API
has its own fake: testing/fake_realtime.py."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

ANSWER_DELTAS = ["Hel", "lo there", "! I am a", " test model. P", "i is 3.", "14 ", "today."]
TONE_HZ = 440.0


def tone_pcm16(rate: int, seconds: float, freq: float = TONE_HZ) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * 0.5 * 32767).astype("<i2").tobytes()


def free_port() -> int:
    """A port on 127.0.0.1 with nobody listening (for refused connections)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Recorder:
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)  # path and query of each request
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    sent_chunks: int = 0


REC = web.AppKey("rec", Recorder)


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]  # the port the system picked
    return runner, f"http://127.0.0.1:{port}"


async def _write_or_note_gone(resp: web.StreamResponse, data: bytes, rec: Recorder) -> bool:
    try:
        await resp.write(data)
    except (ConnectionResetError, ConnectionError):
        rec.client_gone.set()
        return False
    rec.sent_chunks += 1
    return True


# ---------------------------------------------------------------- OpenAI HTTP


async def _recorded(request: web.Request) -> tuple[Recorder, dict[str, Any]]:
    """The app's recorder and the request's JSON body, both recorded (with the headers)."""
    rec: Recorder = request.app[REC]
    body = await request.json()
    rec.requests.append(body)
    rec.headers.append(dict(request.headers))
    rec.paths.append(request.path_qs)
    return rec, body


# OpenAI sends Retry-After headers with 429 and 5xx answers; a short one keeps the SDK's retries fast here.
RETRY_SOON = {"retry-after-ms": "20"}


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    """An error answer in OpenAI's shape."""
    return web.json_response(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        status=status,
        headers=headers,
    )


def _flaky(rec: Recorder, mode: object) -> web.Response | None:
    """Mode "flaky", in rounds of three requests: the first is rate limited (429), the second finds the service
    unavailable (503), the third is answered (the SDK's retries get through)."""
    if mode != "flaky":
        return None
    attempt = sum(r.get("model") == "flaky" or r.get("voice") == "flaky" for r in rec.requests) % 3
    if attempt == 1:
        return _error(429, "Rate limit reached for requests", "rate_limit_exceeded", RETRY_SOON)
    if attempt == 2:
        return _error(503, "The server is overloaded, please try again later.", "server_error", RETRY_SOON)
    return None


async def _chat(request: web.Request) -> web.StreamResponse:
    rec, body = await _recorded(request)
    mode = body.get("model")
    if mode == "unauthorized":
        return _error(401, "Incorrect API key provided: sk-bad.", "invalid_api_key")
    if mode == "boom":
        return web.Response(status=500, text="internal failure", headers=RETRY_SOON)
    if (failure := _flaky(rec, mode)) is not None:
        return failure
    if mode == "hang":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    deltas = ANSWER_DELTAS * (20 if mode == "slow" else 1)
    for i, delta in enumerate(deltas):
        if mode == "cut" and i == 3:
            assert request.transport is not None  # the connection of a request being answered
            request.transport.close()
            return resp
        if mode == "error_event" and i == 2:
            await resp.write(b'data: {"error": {"message": "model overloaded"}}\n\n')
            return resp
        chunk = {"choices": [{"index": 0, "delta": {"content": delta}}]}
        if not await _write_or_note_gone(resp, f"data: {json.dumps(chunk)}\n\n".encode(), rec):
            return resp
        if mode == "slow":
            await asyncio.sleep(0.02)
    await resp.write(b'data: {"choices": [], "usage": {"total_tokens": 7}}\n\ndata: [DONE]\n\n')
    return resp


async def _speech(request: web.Request) -> web.StreamResponse:
    rec, body = await _recorded(request)
    if body.get("voice") == "bad":
        return _error(400, "unknown voice", "invalid_value")
    if body.get("voice") == "boom":
        return web.Response(status=503, text="x" * 2000, headers=RETRY_SOON)
    if (failure := _flaky(rec, body.get("voice"))) is not None:
        return failure
    if body.get("voice") == "hang":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    await resp.prepare(request)
    pcm = tone_pcm16(24000, 5.0 if body.get("voice") == "slow" else 1.0)
    sizes = [1001, 7, 2400, 333]  # odd sizes: samples split across pieces
    pos, k = 0, 0
    while pos < len(pcm):
        piece = pcm[pos : pos + sizes[k % len(sizes)]]
        pos, k = pos + len(piece), k + 1
        if not await _write_or_note_gone(resp, piece, rec):
            return resp
        await asyncio.sleep(0.02 if body.get("voice") == "slow" else 0)
    await resp.write_eof()
    return resp


@asynccontextmanager
async def openai_service() -> AsyncIterator[tuple[str, Recorder]]:
    """OpenAI-compatible chat (streamed SSE) and speech (24 kHz PCM); yields (base URL with /v1, recorder).

    The request's `model` (chat) or `voice` (speech) picks a failure mode: see _chat, _speech and _flaky."""
    app = web.Application()
    app[REC] = Recorder()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/audio/speech", _speech)
    # Azure OpenAI: the same API under /openai/deployments/<deployment>/..., with ?api-version= and an api-key header.
    app.router.add_post("/openai/deployments/{deployment}/chat/completions", _chat)
    app.router.add_post("/openai/deployments/{deployment}/audio/speech", _speech)
    runner, url = await _serve(app)
    try:
        yield url + "/v1", app[REC]
    finally:
        await runner.cleanup()


# ---------------------------------------------------------------- GPT-SoVITS


def wav_stream_header(rate: int, channels: int = 1) -> bytes:
    """Header as a streaming server sends it: unknown (zero) sizes, and an
    extra LIST chunk before 'data' that a parser has to skip."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * 2 * channels, 2 * channels, 16)
    info = b"INFOISFT\x05\x00\x00\x00test\x00\x00"  # odd-sized sub chunk, padded
    return (
        b"RIFF"
        + struct.pack("<I", 0)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", 16)
        + fmt
        + b"LIST"
        + struct.pack("<I", len(info))
        + info
        + b"data"
        + struct.pack("<I", 0)
    )


SOVITS_RATE = 32000


async def _sovits(request: web.Request) -> web.StreamResponse:
    rec: Recorder = request.app[REC]
    body = await request.json()
    rec.requests.append(body)
    if not body.get("text"):
        return web.json_response({"message": "text is required"}, status=400)
    if body.get("ref_audio_path") == "missing.wav":
        return web.json_response({"message": "ref_audio_path missing.wav not exists"}, status=400)
    resp = web.StreamResponse(headers={"Content-Type": "audio/wav"})
    await resp.prepare(request)
    stream = wav_stream_header(SOVITS_RATE) + tone_pcm16(SOVITS_RATE, 0.5)
    for pos in range(0, len(stream), 777):  # the header itself arrives in pieces
        await resp.write(stream[pos : pos + 777])
    await resp.write_eof()
    return resp


@asynccontextmanager
async def sovits_service() -> AsyncIterator[tuple[str, Recorder]]:
    app = web.Application()
    app[REC] = Recorder()
    app.router.add_post("/tts", _sovits)
    runner, url = await _serve(app)
    try:
        yield url, app[REC]
    finally:
        await runner.cleanup()
