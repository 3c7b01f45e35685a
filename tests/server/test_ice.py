"""GET /api/ice and TURN REST credentials (--turn_secret), checked against a real coturn with use-auth-secret."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import aioice
import pytest
from aioice.ice import TransportPolicy

from server.config import parse_args
from server.webrtc import turn_rest_credentials
from testing.server_client import Client
from testing.turn import coturn

pytestmark = pytest.mark.usefixtures("loopback_only")

TOKEN = "ice-test-token-0123456789abcdef"


async def ice(server, headers: dict | None = None) -> tuple[int, dict]:
    async with server.http.get(server.url + "/api/ice", headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def relay_candidates(port: int, username: str, password: str) -> list:
    """The relay candidates a TURN client gets from the server with these credentials (none if refused)."""
    conn = aioice.Connection(
        ice_controlling=True,
        turn_server=("127.0.0.1", port),
        turn_username=username,
        turn_password=password,
        transport_policy=TransportPolicy.RELAY,
        use_ipv6=False,
    )
    try:
        await conn.gather_candidates()
        return [c for c in conn.local_candidates if c.type == "relay"]
    finally:
        await conn.close()


def test_rest_credentials_follow_the_coturn_scheme() -> None:
    username, password = turn_rest_credentials("s3cret", "alice", 600, now=1_000_000)
    assert username == "1000600:alice"
    assert password == base64.b64encode(hmac.new(b"s3cret", b"1000600:alice", hashlib.sha1).digest()).decode()


def test_turn_options_are_checked() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--turn", "turn:t.example.org:3478"])  # no credentials of any kind
    with pytest.raises(SystemExit):
        parse_args(["--turn_secret", "x" * 20])  # a secret for no server
    c = parse_args(["--turn", "turn:t.example.org:3478", "--turn_secret", "x" * 20, "--turn_ttl", "60"])
    assert c.turn_secret == "x" * 20 and c.turn_ttl == 60 and c.turn_user is None


async def test_api_ice_gives_the_configured_servers(serve, config) -> None:
    async with serve(config) as server:
        assert await ice(server) == (200, {"code": 0, "msg": "ok", "data": {"iceServers": []}})
    async with serve(
        config,
        stun=("stun:stun.example.org:3478",),
        turn=("turn:t.example.org:3478",),
        turn_user="u",
        turn_password="p",
    ) as server:
        status, body = await ice(server)
        assert status == 200 and body["data"] == {
            "iceServers": [
                {"urls": ["stun:stun.example.org:3478"]},
                {"urls": ["turn:t.example.org:3478"], "username": "u", "credential": "p"},
            ]
        }
    async with serve(
        config, turn=("turn:t.example.org:3478",), turn_secret="s3cret", turn_ttl=600, auth_tokens=(TOKEN,)
    ) as server:
        status, body = await ice(server)
        assert status == 401  # credentials only for clients with the token
        status, body = await ice(server, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["data"]["ttl"] == 600
        (turn,) = body["data"]["iceServers"]
        expiry, user = turn["username"].split(":")
        assert user == "avatar" and abs(int(expiry) - (time.time() + 600)) < 5
        assert turn["credential"] == turn_rest_credentials("s3cret", "avatar", 600, now=int(expiry) - 600)[1]


async def test_coturn_accepts_the_credentials_and_the_server_relays_through_it(serve, config, tmp_path) -> None:
    with coturn(tmp_path) as turn:
        async with serve(config, turn=(turn.url,), turn_secret=turn.secret, turn_user="page") as server:
            _, body = await ice(server)
            server_turn = body["data"]["iceServers"][0]
            assert server_turn["username"].endswith(":page")
            assert await relay_candidates(turn.port, server_turn["username"], server_turn["credential"])
            # refused: another secret, or credentials past their expiry
            wrong = turn_rest_credentials("not-the-secret", "page", 600)
            expired = turn_rest_credentials(turn.secret, "page", -60)
            assert await relay_candidates(turn.port, *wrong) == []
            assert await relay_candidates(turn.port, *expired) == []
            # the server's own side gets fresh credentials too: its answer offers a relay candidate on coturn
            client = Client(server)
            await client.connect()
            sdp = client.pc.remoteDescription.sdp
            assert "typ relay" in sdp and "typ host" in sdp
            await client.wait_video(5)
            await client.close()
