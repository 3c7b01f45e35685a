"""A local server speaking the HTTP API of CosyVoice's FastAPI server (runtime/python/fastapi/server.py), as it
answers today: GET or POST multipart forms; a missing form field is FastAPI's 422 with a JSON `detail` list; a
reference that is not audio fails inside the model's loader (500, plain text); the answer is raw PCM16 mono
(no header) at the model's rate, one piece per sentence, streamed. Records what it received."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from testing.fake_services import _serve, tone_pcm16

RATE = 24000  # CosyVoice 2 and 3
SENTENCE_SECONDS = 0.4
FIELDS = {"zero_shot": ("tts_text", "prompt_text", "prompt_wav"), "cross_lingual": ("tts_text", "prompt_wav")}
REC = web.AppKey("rec", list)


@dataclass
class Received:
    mode: str
    fields: dict[str, str] = field(default_factory=dict)
    prompt_wav: bytes = b""


def _missing(names: list[str]) -> web.Response:
    detail = [{"type": "missing", "loc": ["body", name], "msg": "Field required", "input": None} for name in names]
    return web.json_response({"detail": detail}, status=422)


async def _inference(request: web.Request) -> web.StreamResponse:
    mode = request.match_info["mode"]
    form = await request.post() if request.content_type.startswith("multipart/") else {}
    got = Received(mode)
    for name, value in form.items():
        if isinstance(value, web.FileField):
            got.prompt_wav = value.file.read()
        else:
            got.fields[name] = str(value)
    missing = [n for n in FIELDS[mode] if n not in got.fields and not (n == "prompt_wav" and "prompt_wav" in form)]
    if missing:
        return _missing(missing)
    request.app[REC].append(got)
    if got.prompt_wav[:4] != b"RIFF":
        return web.Response(status=500, text="Internal Server Error")
    resp = web.StreamResponse()  # FastAPI's StreamingResponse: chunked, no content type given
    await resp.prepare(request)
    for _ in [s for s in re.split(r"(?<=[.!?。！？])\s*", got.fields["tts_text"]) if s.strip()]:
        await resp.write(tone_pcm16(RATE, SENTENCE_SECONDS))
        await asyncio.sleep(0.01)  # the model works on the next sentence
    await resp.write_eof()
    return resp


@asynccontextmanager
async def cosyvoice_service() -> AsyncIterator[tuple[str, list[Received]]]:
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[REC] = []
    for method in ("GET", "POST"):
        app.router.add_route(method, r"/inference_{mode:zero_shot|cross_lingual}", _inference)
    runner, url = await _serve(app)
    try:
        yield url, app[REC]
    finally:
        await runner.cleanup()
