"""The aiohttp application: shared services built at startup, the session registry, routes, error bodies,
CORS (LiveTalking opens it for every route), and closing every session on shutdown."""
from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from musetalk.avatar import DEMO_ID, ensure_demo
from server.config import ServerConfig
from server.registry import SessionEndedError, SessionLimitError, SessionRegistry
from server.errors import ApiError
from server.routes import error_response, setup_routes
from server.services import Services
from server.state import STATE, AppState
from server.uploads import AudioDecoder
from server.webrtc import IceOptions, use_host_addresses

log = logging.getLogger(__name__)

_CORS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
         "Access-Control-Allow-Headers": "*", "Access-Control-Max-Age": "86400"}


@web.middleware
async def api_errors(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    """Every failure of an API route becomes a `{code: -1, msg}` body with a fitting HTTP status."""
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        return web.Response(status=204, headers=_CORS)  # CORS preflight
    try:
        return await handler(request)
    except ApiError as e:
        return error_response(e.status, str(e))
    except SessionLimitError as e:
        return error_response(503, str(e))
    except SessionEndedError as e:
        return error_response(404, str(e))
    except web.HTTPRequestEntityTooLarge as e:
        return error_response(413, f"the request is too large ({e.text})")
    except web.HTTPException:
        raise
    except Exception as e:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(500, f"internal error: {e or type(e).__name__}")


async def _cors(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("Access-Control-Allow-Origin", "*")


def ice_options(config: ServerConfig) -> IceOptions:
    return IceOptions(stun=config.stun, turn=config.turn, turn_username=config.turn_user,
                      turn_password=config.turn_password, host_addresses=config.ice_host)


def create_app(config: ServerConfig, services: Services | None = None) -> web.Application:
    """The app; `services` (engine, voices) are built at startup unless given (tests share one set)."""
    app = web.Application(client_max_size=config.max_upload_bytes + 1024 * 1024, middlewares=[api_errors])
    own_services = services is None

    async def startup(app: web.Application) -> None:
        if config.ice_host:
            use_host_addresses(config.ice_host)
        shared = services
        if shared is None:
            if config.avatar_id == DEMO_ID:
                _, built = await asyncio.to_thread(ensure_demo, config.avatars_dir, False, config.models_dir)
                if built:
                    log.info("built the demo avatar in %s", config.avatars_dir / DEMO_ID)
            shared = await Services.create(config)
        app[STATE] = AppState(config, shared, SessionRegistry(config.max_session, config.idle_timeout),
                              ice_options(config), AudioDecoder(config.max_audio_seconds))

    async def shutdown(app: web.Application) -> None:
        await app[STATE].registry.close_all()

    async def cleanup(app: web.Application) -> None:
        if own_services:
            await app[STATE].services.aclose()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    app.on_response_prepare.append(_cors)
    setup_routes(app, config.web_dir)
    return app
