"""Local servers on 127.0.0.1 that speak the protocols of the services the
voices package talks to: OpenAI-compatible chat + speech, the Realtime API
(WebSocket) and GPT-SoVITS api_v2. Each records what it received."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

REC = web.AppKey("rec", object)
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
    client_gone: asyncio.Event = field(default_factory=asyncio.Event)
    sent_chunks: int = 0


async def _serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
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
    return rec, body


async def _chat(request: web.Request) -> web.StreamResponse:
    rec, body = await _recorded(request)
    mode = body.get("model")
    if mode == "unauthorized":
        return web.json_response({"error": {"message": "Invalid API key"}}, status=401)
    if mode == "boom":
        return web.Response(status=500, text="internal failure")
    if mode == "hang":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    deltas = ANSWER_DELTAS * (20 if mode == "slow" else 1)
    for i, delta in enumerate(deltas):
        if mode == "cut" and i == 3:
            request.transport.close()  # type: ignore[union-attr]
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
        return web.json_response({"error": {"message": "unknown voice"}}, status=400)
    if body.get("voice") == "boom":
        return web.Response(status=503, text="x" * 2000)
    if body.get("voice") == "hang":
        await asyncio.sleep(30)
    resp = web.StreamResponse(headers={"Content-Type": "audio/pcm"})
    await resp.prepare(request)
    pcm = tone_pcm16(24000, 5.0 if body.get("voice") == "slow" else 1.0)
    sizes = [1001, 7, 2400, 333]  # odd sizes: samples split across pieces
    pos, k = 0, 0
    while pos < len(pcm):
        piece = pcm[pos:pos + sizes[k % len(sizes)]]
        pos, k = pos + len(piece), k + 1
        if not await _write_or_note_gone(resp, piece, rec):
            return resp
        await asyncio.sleep(0.02 if body.get("voice") == "slow" else 0)
    await resp.write_eof()
    return resp


@asynccontextmanager
async def openai_service() -> AsyncIterator[tuple[str, Recorder]]:
    """OpenAI-compatible chat (streamed SSE) and speech (24 kHz PCM); yields (base URL with /v1, recorder).

    The request's `model` (chat) or `voice` (speech) picks a failure mode: see _chat and _speech."""
    app = web.Application()
    app[REC] = Recorder()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/audio/speech", _speech)
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
    return (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"LIST" + struct.pack("<I", len(info)) + info + b"data" + struct.pack("<I", 0))


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
        await resp.write(stream[pos:pos + 777])
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


# ---------------------------------------------------------------- Realtime API

REALTIME_TEXT = ["Sure", ", here", " is", " the", " answer."]
REALTIME_SAMPLES = [2401, 17, 4800, 1203, 960]  # 24 kHz samples per audio delta


@dataclass
class RealtimeRecorder:
    events: list[dict[str, Any]] = field(default_factory=list)
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    deltas_sent: int = 0
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


async def _realtime(request: web.Request) -> web.WebSocketResponse:
    rec: RealtimeRecorder = request.app[REC]
    rec.query, rec.headers = dict(request.query), dict(request.headers)
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    beta = request.query.get("model") == "beta-model"
    audio_name = "response.audio.delta" if beta else "response.output_audio.delta"
    text_name = "response.audio_transcript.delta" if beta else "response.output_audio_transcript.delta"
    audio = np.frombuffer(tone_pcm16(24000, sum(REALTIME_SAMPLES) / 24000), "<i2")
    responses = 0

    async def respond(rid: str, repeats: int, delay: float) -> None:
        await ws.send_json({"type": "response.created", "response": {"id": rid}})
        pos = 0
        for k in range(repeats * len(REALTIME_SAMPLES)):
            n = REALTIME_SAMPLES[k % len(REALTIME_SAMPLES)]
            piece = audio[pos % len(audio):][:n]
            pos += n
            await ws.send_json({"type": audio_name, "response_id": rid, "item_id": "i1",
                                "delta": base64.b64encode(piece.tobytes()).decode()})
            await ws.send_json({"type": text_name, "response_id": rid,
                                "delta": REALTIME_TEXT[k % len(REALTIME_TEXT)]})
            rec.deltas_sent += 1
            await asyncio.sleep(delay)
        await ws.send_json({"type": "response.done", "response": {"id": rid, "status": "completed"}})

    senders: list[asyncio.Task] = []
    try:
        async for msg in ws:
            event = json.loads(msg.data)
            rec.events.append(event)
            if event["type"] == "response.create":
                responses += 1
                slow = rec.events[-2].get("item", {}).get("content", [{}])[0].get("text") == "long"
                senders.append(asyncio.create_task(
                    respond(f"resp_{responses}", 40 if slow else 1, 0.02 if slow else 0)))
            elif event["type"] == "response.cancel" and senders:
                senders[-1].cancel()
                rec.cancelled.set()
                rid = f"resp_{responses}"
                # A delta that was already in flight when the cancel arrived.
                await ws.send_json({"type": audio_name, "response_id": rid,
                                    "delta": base64.b64encode(audio[:480].tobytes()).decode()})
                await ws.send_json({"type": "response.done", "response": {"id": rid, "status": "cancelled"}})
            elif event["type"] == "session.update" and event["session"].get("fail"):
                await ws.send_json({"type": "error", "error": {"message": "bad session", "code": "invalid_value"}})
    finally:  # the connection ended: no response keeps sending on it
        for task in senders:
            task.cancel()
        await asyncio.gather(*senders, return_exceptions=True)
    return ws


@asynccontextmanager
async def realtime_service() -> AsyncIterator[tuple[str, RealtimeRecorder]]:
    """The Realtime API over WebSocket; yields (ws:// URL, recorder). A user text "long" gets a long answer."""
    app = web.Application()
    app[REC] = RealtimeRecorder()
    app.router.add_get("/v1/realtime", _realtime)
    runner, url = await _serve(app)
    try:
        yield url.replace("http", "ws") + "/v1/realtime", app[REC]
    finally:
        await runner.cleanup()
