"""`GET /api/ice`: the ICE servers a page should use (--stun, --turn), with TURN credentials: the static
--turn_user/--turn_password, or, with --turn_secret, fresh time-limited ones (TURN REST API: coturn's
use-auth-secret). The page asks for them before each connection; the route needs the token when one is set,
so credentials go only to clients allowed to connect."""

from __future__ import annotations

from aiohttp import web

from server.routes import ok
from server.state import STATE


async def ice_servers(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data: dict[str, object] = {"iceServers": state.ice.servers()}
    if state.ice.turn and state.ice.turn_secret:
        data["ttl"] = state.ice.turn_ttl  # the credentials stop working after this many seconds
    return ok(data)


def setup(app: web.Application) -> None:
    app.router.add_get("/api/ice", ice_servers)
