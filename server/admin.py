"""The admin API: `GET /api/admin/sessions` (what each session shows, speaks and how it runs), `DELETE
/api/admin/sessions/{id}` (end one), `GET /api/admin/config` (the settings, no secrets). The fields LiveTalking's
admin page reads (`sessionid`, `avatar_id`, `speaking`, `recording`, `model`, `REF_FILE`, `transport`,
`batch_size`, `customopt`; `data.config`) are there too, so that page works unchanged.

A session's id drives it (whoever knows it may speak through it), so it is never listed: each session is shown
by its public handle, the tag /metrics uses, and DELETE takes that handle (or the id). With --auth_token the
routes need a token like the rest of the API; without one they answer only clients on the server's own machine
(loopback), since ending sessions is not for anybody who can reach the port."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from aiohttp import web

from core.units import VIDEO_FPS
from server.errors import Forbidden, NotFound
from server.registry import LiveSession
from server.routes import ok
from server.state import STATE, AppState

CONFIG_KEYS = (
    "avatar_id",
    "tts",
    "REF_FILE",
    "REF_TEXT",
    "listenport",
    "max_session",
    "engine",
    "version",
    "llm_model",
    "stun",
    "turn",
)  # shown as set; secrets (keys, passwords, tokens) never are


def _loopback(remote: str | None) -> bool:
    try:
        return remote is not None and ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def check_admin(request: web.Request) -> None:
    """403 for a client beyond loopback when the server has no tokens (the access middleware checked them)."""
    if not request.app[STATE].config.auth_tokens and not _loopback(request.remote):
        raise Forbidden(
            "the admin API answers only local clients unless the server is started with "
            "--auth_token (then send the token)"
        )


def _without_stream_key(url: str | None) -> str | None:
    """An RTMP URL with its stream name hidden: on streaming platforms that name is the secret key."""
    if not url:
        return url
    head, sep, _ = url.rstrip("/").rpartition("/")
    return f"{head}{sep}***" if "://" in head else "***"


def describe(state: AppState, live: LiveSession, now: float) -> dict[str, Any]:
    session = live.session
    return {
        "id": live.tag,
        "sessionid": live.tag,
        "avatar": session.avatar.avatar_id,
        "avatar_id": session.avatar.avatar_id,
        "voice": live.voice_name,
        "uptime_s": round(now - live.created, 1),
        "fps": round(live.fps, 1),
        "speaking": session.speaking,
        "recording": live.recorder is not None,
        "latency_ms": session.stats.last_latency_ms,
        "queued_s": round(live.queued_seconds, 2),
        "connection": live.pc.connectionState if live.pc is not None else "pushed",
        "model": state.services.engine.describe(),
        "REF_FILE": state.config.REF_FILE or "",
        "transport": "webrtc" if live.pc is not None else "rtmp",
        "batch_size": state.services.engine.batch_size,
        "customopt": [],
    }


def find(state: AppState, handle: str) -> LiveSession:
    for live in state.registry:
        if handle in (live.tag, live.id):
            return live
    raise NotFound("session not found")


async def sessions(request: web.Request) -> web.Response:
    check_admin(request)
    state = request.app[STATE]
    now = time.monotonic()
    return ok({"sessions": [describe(state, live, now) for live in state.registry]})


async def end_session(request: web.Request) -> web.Response:
    check_admin(request)
    state = request.app[STATE]
    live = find(state, request.match_info["id"])
    await state.registry.end(live.id, "ended by the admin API")
    return ok()


async def config(request: web.Request) -> web.Response:
    check_admin(request)
    state = request.app[STATE]
    c = state.config
    shown: dict[str, Any] = {key: getattr(c, key) for key in CONFIG_KEYS}
    shown.update(
        model=state.services.engine.describe(),
        transport=",".join(c.transports),
        fps=VIDEO_FPS,
        batch_size=state.services.engine.batch_size,
        push_url=_without_stream_key(c.push_url),
    )
    # LiveTalking's page shows "" as "not set" (its options default to ""), and lists as text
    shown.update(
        {
            key: "" if value is None else list(value) if isinstance(value, tuple) else value
            for key, value in shown.items()
        }
    )
    return ok({"config": shown})


def setup(app: web.Application) -> None:
    app.router.add_get("/api/admin/sessions", sessions)
    app.router.add_delete("/api/admin/sessions/{id}", end_session)
    app.router.add_get("/api/admin/config", config)
