"""The shared services: avatars are loaded once, and a slow load does not hold up avatars already loaded."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import threading
from pathlib import Path

from engines.base import AvatarBinding
from engines.lite import LiteEngine
from musetalk.avatar import Avatar
from server.config import ServerConfig
from server.services import Services, build_llm, build_tts


class GatedEngine(LiteEngine):
    """Binding the avatar "slow" waits for `gate` (as a real engine encoding latents takes seconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def _bind(self, avatar: Avatar) -> AvatarBinding:
        if avatar.avatar_id == "slow":
            assert self.gate.wait(10)
        return super()._bind(avatar)


async def test_a_slow_avatar_load_does_not_block_loaded_avatars(config: ServerConfig, tmp_path: Path) -> None:
    shutil.copytree(config.avatars_dir / "demo", tmp_path / "slow")
    shutil.copytree(config.avatars_dir / "demo", tmp_path / "demo")
    config = dataclasses.replace(config, avatars_dir=tmp_path)
    engine = GatedEngine()
    services = Services(config, engine, build_tts(config), build_llm(config))
    demo = await services.avatar("demo")
    slow = asyncio.create_task(services.avatar("slow"))
    await asyncio.sleep(0.2)
    try:
        assert await asyncio.wait_for(services.avatar("demo"), 1.0) is demo  # the cached one, at once
        assert not slow.done()
    finally:
        engine.gate.set()
    loaded = await slow
    assert loaded[0].avatar_id == "slow" and await services.avatar("slow") is loaded
