"""Fixtures for the server tests: one demo avatar (with an action clip) and one lite engine per test run, and
a factory that starts the app on 127.0.0.1 with test options."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from engines.lite import LiteEngine
from musetalk.avatar import load_avatar
from musetalk.avatar_demo import ensure_demo
from pipeline.actions import save_action
from server.config import ServerConfig
from server.services import Services, build_llm, build_tts
from testing import rtc
from testing.server_client import running_server

ACTION = 2


@pytest.fixture(name="loopback_only")
def loopback() -> None:
    """Requested by the tests that use WebRTC."""
    rtc.loopback_only()


@pytest.fixture(scope="session")
def avatars_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("avatars")
    ensure_demo(root, progress=False, models_dir=root / "no-models")
    demo = load_avatar("demo", root)
    frames = np.ascontiguousarray(demo.frames[[0, 0, 0]])
    frames[:, :40] = (0, 0, 255)  # a red band: action frames are recognisable
    save_action(demo.path, ACTION, frames)
    return root


@pytest.fixture(scope="session")
def engine() -> LiteEngine:
    return LiteEngine()


@pytest.fixture
def config(avatars_dir: Path, tmp_path: Path) -> ServerConfig:
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<!doctype html><title>avatar test page</title>")
    (web / "client.js").write_text("// test asset")
    return ServerConfig(host="127.0.0.1", listenport=0, engine="lite", avatars_dir=avatars_dir,
                        records_dir=tmp_path / "records", web_dir=web, ice_host=("127.0.0.1",), max_session=3,
                        idle_timeout=30.0)


@pytest.fixture
def serve(engine: LiteEngine):
    """serve(config, **changes) -> async context manager yielding a testing.server_client.Server."""
    def start(config: ServerConfig, **changes):  # noqa: ANN202
        config = dataclasses.replace(config, **changes)
        return running_server(config, Services(config, engine, build_tts(config), build_llm(config)))
    return start
