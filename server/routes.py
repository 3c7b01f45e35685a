"""The HTTP API, LiveTalking-compatible: same routes, fields and `{code, msg, data}` bodies, plus real HTTP
status codes on errors (400 bad input, 404 unknown session/avatar, 413 too large, 503 session limit)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription

from core.events import Event, EventKind
from core.units import SAMPLE_RATE
from musetalk.avatar import Avatar, AvatarNotFoundError, validate_avatar_id
from pipeline.actions import ActionClip, CustomClip
from pipeline.session import Session
from server.custom_video import custom_clips_of, decode_custom_clips
from server.errors import BadRequest, NotFound, TooBusy, TooLarge
from server.media import SessionTracks
from server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from server.recording import Recorder, record_path
from server.reference_voice import (
    Reference,
    check_tts_field,
    reference_of,
    reference_speaker,
)
from server.registry import LiveSession, close_live, close_media
from server.state import STATE, AppState
from server.uploads import read_form
from server.voice_input import VoiceInput, drain
from server.webrtc import answer, check_offer

log = logging.getLogger(__name__)

SSE_HEARTBEAT_S = 15.0
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_JSON_BYTES = 256 * 1024  # an SDP offer is a few KB; /human text is capped far below this
_TRUE = (True, 1, "true", "1", "yes", "on")


def ok(data: Any = None) -> web.Response:
    body: dict[str, Any] = {"code": 0, "msg": "ok"}
    if data is not None:
        body["data"] = data
    return web.json_response(body)


def error_response(status: int, message: str) -> web.Response:
    return web.json_response({"code": -1, "msg": message}, status=status)


# ------------------------------------------------------------------------------------------------- input


async def json_body(request: web.Request) -> dict[str, Any]:
    """The JSON object of a request, read with a size cap (uploads may be large; JSON bodies may not)."""
    if request.content_length is not None and request.content_length > MAX_JSON_BYTES:
        raise TooLarge(f"the request body is larger than {MAX_JSON_BYTES // 1024} KB")
    raw = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise TooLarge(f"the request body is larger than {MAX_JSON_BYTES // 1024} KB")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"the request body is not valid JSON: {e}") from e
    except RecursionError as e:
        raise BadRequest("the request body is nested too deeply") from e
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def session_id_of(value: object) -> str:
    """LiveTalking clients send the id as a string (current pages) or a number (classic pages, tools)."""
    if isinstance(value, bool) or value is None or value == "":
        raise BadRequest("'sessionid' is required")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, (str, int)):
        raise BadRequest("'sessionid' must be a string or a number")
    return str(value).strip()


def live_session(state: AppState, value: object) -> LiveSession:
    live = state.registry.get(session_id_of(value))
    if live is None:
        raise NotFound("session not found")
    return live


async def loaded_avatar(state: AppState, avatar_id: str) -> tuple[Avatar, dict[int, ActionClip]]:
    """A prepared avatar, loaded and bound once (services.avatar). An invalid id is the client's error (400), a
    damaged avatar or action clip on disk the server's (AvatarError: 500), as server.errors maps them."""
    try:
        return await state.services.avatar(avatar_id)
    except AvatarNotFoundError as e:  # its own message tells an operator how to prepare one
        raise NotFound(f"avatar {avatar_id!r} not found") from e


def admit_speech(state: AppState, live: LiveSession, audio_seconds: float = 0.0) -> None:
    """429 when the session already has as much speech waiting as it may (requests or seconds)."""
    c = state.config
    if live.voice.pending >= c.max_pending_requests:
        raise TooBusy(
            f"this session already has {live.voice.pending} requests waiting to be spoken (the "
            f"limit is {c.max_pending_requests}); wait for them to play, or /interrupt_talk"
        )
    queued = live.queued_seconds
    if queued + audio_seconds > c.max_queued_seconds:
        raise TooBusy(
            f"this session already has {queued:.0f} s of speech waiting to be played; "
            f"{'with this audio ' if audio_seconds else ''}that would pass the limit of "
            f"{c.max_queued_seconds:g} s; wait for it to play, or /interrupt_talk"
        )


def text_field(state: AppState, body: dict[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("'text' must be a non-empty string")
    if len(text) > state.config.max_text_chars:
        raise TooLarge(f"'text' is longer than {state.config.max_text_chars} characters")
    return text


# ------------------------------------------------------------------------------------------------- routes


async def offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await json_body(request)
    sdp, kind = body.get("sdp"), body.get("type")
    if not isinstance(sdp, str) or not sdp.strip():
        raise BadRequest("'sdp' (the offer's SDP text) is required")
    if kind != "offer":
        raise BadRequest("'type' must be \"offer\"")
    avatar_id = body.get("avatar") or state.config.avatar_id
    if not isinstance(avatar_id, str):
        raise BadRequest("'avatar' must be a string (an avatar id)")
    voice = body.get("voice") or None  # our extension: one of /healthz "voices"
    # everything that can be checked before a session slot is taken
    validate_avatar_id(avatar_id)
    if voice is not None:
        state.services.check_voice(voice)
    check_offer(sdp)
    # refaudio/reftext: honoured, or a 400
    reference = reference_of(body, voice or state.services.voices[0], state.config)
    custom = custom_clips_of(state.config, body)  # LiveTalking's custom_config, else --customvideo_config
    sid = state.registry.reserve()  # SessionLimitError: 503
    try:
        local = await _open_session(state, sid, sdp, avatar_id, voice, reference, custom)
    finally:
        state.registry.release(sid)
    return web.json_response({"sdp": local.sdp, "type": local.type, "sessionid": sid, "code": 0, "msg": "ok"})


async def _open_session(
    state: AppState,
    sid: str,
    sdp: str,
    avatar_id: str,
    voice: str | None,
    reference: Reference | None = None,
    custom: tuple[CustomClip, ...] = (),
) -> RTCSessionDescription:
    """Create, connect and register session `sid`; on any failure nothing of it is left behind."""
    avatar, actions = await loaded_avatar(state, avatar_id)
    custom_actions, idle = await decode_custom_clips(custom, avatar, state.config.max_avatar_seconds)
    session = Session(sid, avatar, state.services.engine, actions)
    session.use_custom_clips(custom_actions, idle)
    tracks = SessionTracks(session)
    pc = RTCPeerConnection(state.ice.configuration())
    microphones = []
    pc.on("track", lambda track: microphones.append(track) if track.kind == "audio" else None)
    try:
        local = await answer(pc, sdp, "offer", [tracks.audio, tracks.video])
    except Exception as e:  # aiortc raises assorted errors for SDP it cannot parse or use
        await close_media(sid, tracks, pc, session)
        raise BadRequest(f"cannot use the offer SDP: {str(e) or type(e).__name__}") from e
    live: LiveSession | None = None
    try:
        if reference is not None:  # the session clones a voice of its own
            speaker = await reference_speaker(state.config, state.services, session, reference)
        else:
            speaker = await state.services.new_voice(session, voice)
        live = LiveSession(
            sid, session, tracks, pc, speaker, voice_name=voice or state.services.voices[0], custom_clips=custom
        )
        await session.start()
        state.registry.add(live)
    except BaseException:
        await (close_live(live) if live is not None else close_media(sid, tracks, pc, session))
        raise
    for mic in microphones:
        if state.config.asr:
            live.spawn(VoiceInput(mic, session, live.voice, state.services.transcriber).run(), "voice-input")
        else:
            live.spawn(drain(mic), "drain-mic")

    @pc.on("connectionstatechange")
    def on_state() -> None:
        if pc.connectionState in ("failed", "closed"):
            state.registry.end(sid, f"peer connection {pc.connectionState}")

    return local


async def human(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await json_body(request)
    live = live_session(state, body.get("sessionid"))
    text = text_field(state, body)
    check_tts_field(body)
    kind = body.get("type")
    if kind not in ("echo", "chat"):
        raise BadRequest('\'type\' must be "echo" (speak the text) or "chat" (answer it)')
    if body.get("interrupt") in _TRUE:
        await live.voice.interrupt()
        live.check_open()  # the interrupt was awaited: the session may have ended meanwhile
    admit_speech(state, live)
    # The voice owns the request's task (queueing may wait behind earlier sentences); interrupt cancels it.
    if kind == "echo":
        live.voice.say(text)
    else:
        live.voice.chat(text)
    return ok()


async def human_audio(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the audio as multipart/form-data with fields 'file' and 'sessionid'")
    limit = state.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise TooLarge(f"the upload is larger than {limit // (1024 * 1024)} MB")
    found: list[LiveSession] = []

    def check_session(fields: dict[str, str]) -> None:
        """Before the file is read: known session with room for more speech (or it is not worth reading)."""
        found.append(live_session(state, fields.get("sessionid")))
        admit_speech(state, found[0])

    try:
        data = await read_form(await request.multipart(), limit, check_session)
    except ValueError as e:  # malformed multipart framing
        raise BadRequest(f"malformed multipart form: {e}") from e
    live = found[0]
    pcm = await state.decoder.decode(data)  # BadRequest or TooLarge for an audio file it cannot take
    live.check_open()
    admit_speech(state, live, len(pcm) / SAMPLE_RATE)
    live.push_audio_file(pcm)
    return ok({"seconds": round(len(pcm) / SAMPLE_RATE, 3)})


async def interrupt_talk(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = live_session(state, (await json_body(request)).get("sessionid"))
    await live.voice.interrupt()
    return ok()


async def is_speaking(request: web.Request) -> web.Response:
    state = request.app[STATE]
    live = live_session(state, (await json_body(request)).get("sessionid"))
    return ok(live.session.speaking)


async def set_audiotype(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await json_body(request)
    live = live_session(state, body.get("sessionid"))
    value = body.get("audiotype")
    try:
        audiotype = int(value) if not isinstance(value, bool) and isinstance(value, (int, str)) else None
    except ValueError:
        audiotype = None
    if audiotype is None:
        raise BadRequest("'audiotype' must be an integer")
    if audiotype not in live.session.actions:  # checked here: a KeyError from inside would be a bug, not a 400
        have = ", ".join(str(k) for k in sorted(live.session.actions)) or "none"
        raise BadRequest(f"avatar {live.session.avatar.avatar_id!r} has no action clip {audiotype} (available: {have})")
    live.session.set_audiotype(audiotype)
    return ok()


async def record(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await json_body(request)
    live = live_session(state, body.get("sessionid"))
    kind = body.get("type")
    if kind == "start_record":
        if live.recorder is not None:
            raise BadRequest("already recording")
        started = Recorder(live.session, record_path(state.config.records_dir, live.id))
        started.start()
        live.recorder = started
        return ok()
    if kind == "end_record":
        recorder = live.recorder
        if recorder is None:
            raise BadRequest("not recording (send type start_record first)")
        try:  # a second end_record meanwhile waits for the same end; a start_record is refused until it
            await recorder.finish()  # Conflict (nothing recorded) or ServerFault (writing failed)
        finally:
            if live.recorder is recorder:
                live.recorder = None
        return ok({"url": f"/record/{live.id}"})
    raise BadRequest('\'type\' must be "start_record" or "end_record"')


async def download_record(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    path = record_path(state.config.records_dir, request.match_info["sessionid"])
    if not path.is_file():
        raise NotFound("Record not found")
    return web.FileResponse(path, headers={"Content-Disposition": f'attachment; filename="{path.name}"'})


def sse_data(event: Event) -> dict[str, Any]:
    """LiveTalking's eventpoint format for sentences; other events carry their name."""
    if event.kind is EventKind.SENTENCE_START:
        return {"status": "start", "text": event.text}
    if event.kind is EventKind.SENTENCE_END:
        return {"status": "end", "text": event.text}
    return {"event": event.kind.value, "text": event.text}


async def sse(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    live = live_session(state, request.query.get("sessionid"))
    if live.sse_streams >= state.config.max_sse_per_session:
        raise TooBusy(
            f"this session already has {live.sse_streams} /sse streams open (the limit is "
            f"{state.config.max_sse_per_session}); close one first"
        )
    live.sse_streams += 1
    queue = live.session.subscribe()
    try:
        return await stream_events(request, queue, lambda event: json.dumps(sse_data(event), ensure_ascii=False))
    finally:
        live.session.unsubscribe(queue)
        live.sse_streams -= 1


async def stream_events(request: web.Request, queue: asyncio.Queue, encode: Callable[[Any], str]) -> web.StreamResponse:
    """Server-sent events: each item of `queue` as `data: encode(item)` until a None (the source ended), with a
    heartbeat comment when nothing comes for a while; a client that goes away ends it."""
    resp = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await resp.prepare(request)
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), SSE_HEARTBEAT_S)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if item is None:
                break
            await resp.write(f"data: {encode(item)}\n\n".encode())
    except (ConnectionResetError, ConnectionError):
        pass  # the client went away
    return resp


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response(
        {
            "ok": True,
            "sessions": len(state.registry),
            "max_session": state.registry.max_sessions,
            "engine": state.services.engine.describe(),
            "voices": state.services.voices,
        }
    )


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[STATE].metrics.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})


# Every route here but /healthz and the page's static files needs the token when tokens are configured.
API_PATHS = frozenset(
    {
        "/offer",
        "/human",
        "/humanaudio",
        "/interrupt_talk",
        "/is_speaking",
        "/set_audiotype",
        "/record",
        "/record/{sessionid}",
        "/sse",
        "/metrics",
        "/ws/audio",
        "/set_avatar",
    }
)


def is_protected(request: web.Request) -> bool:
    """True for the API routes; unmatched paths too (their 404 must not tell what exists)."""
    resource = request.match_info.route.resource
    return resource is None or resource.canonical in API_PATHS or resource.canonical.startswith("/api/")


def setup_routes(app: web.Application, web_dir: Path) -> None:
    r = app.router
    r.add_post("/offer", offer)
    r.add_post("/human", human)
    r.add_post("/humanaudio", human_audio)
    r.add_post("/interrupt_talk", interrupt_talk)
    r.add_post("/is_speaking", is_speaking)
    r.add_post("/set_audiotype", set_audiotype)
    r.add_post("/record", record)
    r.add_get("/record/{sessionid}", download_record)
    r.add_get("/sse", sse)
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)

    async def index(request: web.Request) -> web.StreamResponse:
        page = web_dir / "index.html"
        if not page.is_file():
            return web.Response(text=f"The demo page is missing ({page}); the API is served.", status=404)
        return web.FileResponse(page)

    r.add_get("/", index)
    if web_dir.is_dir():
        r.add_static("/", web_dir)
