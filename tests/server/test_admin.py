"""The admin API: sessions listed without their ids, ended by handle, the config without secrets; the exact
requests LiveTalking's admin page (web/admin.html) makes; tokens and local-only access."""

from __future__ import annotations

import pytest

from server.admin import _loopback
from testing.server_client import Client, until

pytestmark = pytest.mark.usefixtures("loopback_only")

TOKEN = "admin-test-token-0123456789abcdef"
SECRETS = ("sk-secret-key-0123", "turn-password-0123", "turn-secret-0123")


async def get(server, path: str, headers: dict | None = None) -> tuple[int, dict]:
    async with server.http.get(server.url + path, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def delete(server, path: str, headers: dict | None = None) -> tuple[int, dict]:
    async with server.http.delete(server.url + path, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_sessions_are_listed_and_ended(serve, config) -> None:
    async with serve(
        config, llm_api_key=SECRETS[0], turn=("turn:t.example.org:3478",), turn_user="u", turn_password=SECRETS[1]
    ) as server:
        assert await get(server, "/api/admin/sessions") == (200, {"code": 0, "msg": "ok", "data": {"sessions": []}})
        clients = [Client(server) for _ in range(2)]
        sids = [await c.connect() for c in clients]
        for c in clients:
            await c.wait_video(3)
        await server.post("/human", {"sessionid": sids[0], "text": "Hello there, admin.", "type": "echo"})

        async def first_speaks() -> bool:
            _, body = await get(server, "/api/admin/sessions")
            return any(s["speaking"] for s in body["data"]["sessions"])

        assert await until(first_speaks, 10)

        async def measured() -> bool:  # the frame rate is sampled once a second
            _, body = await get(server, "/api/admin/sessions")
            return all(s["fps"] > 0 for s in body["data"]["sessions"])

        assert await until(measured, 10, step=0.2)
        status, body = await get(server, "/api/admin/sessions")
        listed = body["data"]["sessions"]
        assert status == 200 and len(listed) == 2
        text = str(body)
        assert not any(sid in text for sid in sids)  # ids drive sessions: never listed
        lives = {server.state.registry.get(sid).tag: sid for sid in sids}
        first = next(s for s in listed if lives[s["id"]] == sids[0])
        assert first["avatar"] == first["avatar_id"] == "demo" and first["voice"] == "piper"
        assert first["uptime_s"] > 1 and 15 <= first["fps"] <= 30 and first["connection"] == "connected"
        assert first["latency_ms"] is not None and first["latency_ms"] > 0
        assert first["sessionid"] == first["id"] and first["transport"] == "webrtc"
        assert {"recording", "model", "REF_FILE", "batch_size", "customopt"} <= first.keys()

        # LiveTalking's admin page: GET /api/admin/config -> data.config, GET /api/admin/sessions -> data.sessions
        status, body = await get(server, "/api/admin/config")
        shown = body["data"]["config"]
        assert status == 200 and shown["avatar_id"] == "demo" and shown["tts"] == "piper" and shown["fps"] == 25
        assert shown["model"] == first["model"] == "lite" and shown["REF_FILE"] == ""  # LiveTalking: "" is unset
        assert {"model", "transport", "listenport", "batch_size", "REF_FILE"} <= shown.keys()
        assert not any(secret in str(body) for secret in SECRETS)

        assert (await delete(server, "/api/admin/sessions/nobody"))[0] == 404
        status, _ = await delete(server, f"/api/admin/sessions/{first['id']}")
        assert status == 200
        assert server.state.registry.get(sids[0]) is None
        status, body = await server.post("/is_speaking", {"sessionid": sids[0]})
        assert status == 404
        status, _ = await delete(server, f"/api/admin/sessions/{sids[1]}")  # the id itself works too
        assert status == 200 and await server.wait_sessions(0)
        for c in clients:
            await c.close()


async def test_admin_routes_need_the_token_when_one_is_set(serve, config) -> None:
    async with serve(config, auth_tokens=(TOKEN,)) as server:
        for path in ("/api/admin/sessions", "/api/admin/config"):
            assert (await get(server, path))[0] == 401
            assert (await get(server, path, {"Authorization": f"Bearer {TOKEN}"}))[0] == 200
            assert (await get(server, f"{path}?token={TOKEN}"))[0] == 200
        assert (await delete(server, "/api/admin/sessions/x"))[0] == 401
        assert (await delete(server, "/api/admin/sessions/x", {"Authorization": f"Bearer {TOKEN}"}))[0] == 404


async def test_config_names_the_outputs_without_the_stream_key(serve, config) -> None:
    async with serve(config, transports=("webrtc", "rtmp"), push_url="rtmp://127.0.0.1:1/live/secret-key") as server:
        status, body = await get(server, "/api/admin/config")
        shown = body["data"]["config"]
        assert status == 200 and shown["transport"] == "webrtc,rtmp"
        assert shown["push_url"] == "rtmp://127.0.0.1:1/live/***" and "secret-key" not in str(body)


def test_without_tokens_only_local_clients_are_admins() -> None:
    assert _loopback("127.0.0.1") and _loopback("::1")
    assert not _loopback("192.0.2.7") and not _loopback(None) and not _loopback("unix-socket")
