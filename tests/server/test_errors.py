"""Domain errors and their HTTP statuses (server.errors), as the api_errors middleware answers them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from musetalk.avatar import (
    AvatarError,
    AvatarExistsError,
    AvatarNotFoundError,
    InvalidAvatarIdError,
    NoFaceError,
)
from pipeline.actions import save_action
from server.app import api_errors
from server.errors import (
    HTTP_STATUS,
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    ServerFault,
    TooBusy,
    TooLarge,
    Unavailable,
    status_of,
)
from server.registry import SessionEndedError, SessionLimitError
from testing.server_client import offer_sdp


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequest("x"), 400),
        (Forbidden("x"), 403),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (TooLarge("x"), 413),
        (TooBusy("x"), 429),
        (ServerFault("x"), 500),
        (Unavailable("x"), 503),
        (SessionLimitError("full"), 503),
        (SessionEndedError("gone"), 404),
        (InvalidAvatarIdError("../x"), 400),
        (AvatarNotFoundError("x"), 404),
        # a damaged avatar or action clip on the server's disk, and any other avatar error: the server's fault
        (AvatarError("x"), 500),
        (NoFaceError("x"), 500),
        (AvatarExistsError("x"), 500),
    ],
)
def test_each_domain_error_has_its_status(error: Exception, status: int) -> None:
    assert status_of(error) == status
    if isinstance(error, ApiError):
        assert error.status == status


@pytest.mark.parametrize("error", [ValueError("x"), RuntimeError("x"), KeyError("x"), OSError("x"), ApiError("x")])
def test_no_built_in_exception_has_a_status(error: Exception) -> None:
    assert status_of(error) is None
    assert all(cls.__module__ in ("server.errors", "musetalk.avatar") for cls in HTTP_STATUS)  # domain classes only


async def test_the_middleware_answers_with_the_mapped_status_and_the_api_body() -> None:
    async def raising(request: web.Request) -> web.Response:
        raise {
            "bad": BadRequest("'text' must be a non-empty string"),
            "broken": AvatarError("masks.npy is damaged"),
            "full": SessionLimitError("Maximum session limit reached (3/3)"),
            "bug": ValueError("a bug's message"),
        }[request.match_info["what"]]

    app = web.Application(middlewares=[api_errors])
    app.router.add_post("/{what}", raising)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        replies = {}
        for what in ("bad", "broken", "full", "bug"):
            resp = await client.post(f"/{what}")
            replies[what] = resp.status, await resp.json()
    assert replies["bad"] == (400, {"code": -1, "msg": "'text' must be a non-empty string"})
    assert replies["broken"] == (500, {"code": -1, "msg": "masks.npy is damaged"})
    assert replies["full"] == (503, {"code": -1, "msg": "Maximum session limit reached (3/3)"})
    assert replies["bug"] == (500, {"code": -1, "msg": "internal error: a bug's message"})  # a ValueError is no 400


async def test_a_bad_action_clip_on_disk_is_the_servers_error(
    serve, config, avatars_dir: Path, tmp_path: Path, loopback_only: None
) -> None:
    root = tmp_path / "avatars"
    shutil.copytree(avatars_dir / "demo", root / "demo")
    shutil.copytree(avatars_dir / "demo", root / "wrongsize")
    save_action(root / "wrongsize", 4, np.zeros((2, 16, 16, 3), np.uint8))  # not the avatar's frame size
    shutil.copytree(avatars_dir / "demo", root / "garbled")
    save_action(root / "garbled", 4, np.zeros((2, 16, 16, 3), np.uint8))
    (root / "garbled" / "actions" / "4" / "frames.npy").write_bytes(b"not an array")
    async with serve(config, avatars_dir=root) as server:
        sdp = await offer_sdp()
        for avatar, words in (("wrongsize", "do not match the avatar's"), ("garbled", "cannot read it")):
            status, reply = await server.post("/offer", {"sdp": sdp, "type": "offer", "avatar": avatar})
            assert status == 500 and reply["code"] == -1, (avatar, reply)
            assert "action clip" in reply["msg"] and words in reply["msg"], reply
