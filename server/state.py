"""What the request handlers share: built at app startup, stored on the aiohttp app (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from core.tasks import TaskOwner
from server.config import ServerConfig
from server.metrics import Metrics
from server.registry import SessionRegistry
from server.services import Services
from server.uploads import AudioDecoder
from server.webrtc import IceOptions


@dataclass
class AppState:
    config: ServerConfig
    services: Services
    registry: SessionRegistry
    ice: IceOptions
    decoder: AudioDecoder
    metrics: Metrics
    tasks: TaskOwner  # the server's own tasks, not a session's (sessions' endings): closed at cleanup


STATE = web.AppKey("state", AppState)
