"""LiveTalking's custom-video config for sessions: `--customvideo_config FILE` for every session, or `/offer`
`custom_config` for one (a JSON string of the clip list, as its pages send it; its paths must be under
--custom_dir). Audiotype 1 is the idle video, looped; the others are played by /set_audiotype."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from core.units import VIDEO_FPS
from musetalk.avatar import Avatar, AvatarError
from pipeline.actions import (
    ActionClip,
    CustomClip,
    load_custom_clips,
    parse_custom_config,
)
from server.config import ServerConfig
from server.errors import BadRequest, ServerFault


def read_config_file(path: Path) -> tuple[CustomClip, ...]:
    """The --customvideo_config file's clips (its paths are the operator's: not confined). ValueError, OSError."""
    return parse_custom_config(path.read_text(encoding="utf-8"))


def custom_clips_of(config: ServerConfig, body: dict[str, Any]) -> tuple[CustomClip, ...]:
    """The clips a new session plays: the offer's custom_config (BadRequest if bad), else the server's file
    (checked at start: ServerFault if it went bad since)."""
    given = body.get("custom_config")
    if given not in (None, "", []):
        try:
            return parse_custom_config(given, root=config.custom_dir)
        except (ValueError, OSError) as e:
            raise BadRequest(str(e)) from e
    if config.customvideo_config is not None:
        try:
            return read_config_file(config.customvideo_config)
        except (ValueError, OSError) as e:
            raise ServerFault(f"--customvideo_config {config.customvideo_config}: {e}") from e
    return ()


async def decode_custom_clips(
    clips: tuple[CustomClip, ...], avatar: Avatar, max_seconds: float
) -> tuple[dict[int, ActionClip], ActionClip | None]:
    """The clips decoded for `avatar` (once; cached in its folder), off the event loop: (actions, idle clip)."""
    if not clips:
        return {}, None
    try:
        return await asyncio.to_thread(load_custom_clips, clips, avatar, int(max_seconds * VIDEO_FPS))
    except (AvatarError, OSError) as e:
        raise BadRequest(f"custom_config: {e}") from e
