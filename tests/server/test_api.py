"""The LiveTalking HTTP contract route by route, with an aiortc client in place of the browser."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from testing.metrics import parse_metrics
from testing.server_client import Client, offer_sdp

pytestmark = pytest.mark.usefixtures("loopback_only")

JSON_ROUTES = ["/offer", "/human", "/interrupt_talk", "/is_speaking", "/set_audiotype", "/record"]


async def test_offer_answers_and_streams_video_and_audio(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        status, body = await client.offer()
        assert status == 200 and body["type"] == "answer" and body["code"] == 0
        assert isinstance(body["sessionid"], str) and len(body["sessionid"]) == 22  # 128 random bits, URL-safe
        assert "a=sendonly" in body["sdp"] and "a=candidate" in body["sdp"]  # complete answer, no trickle
        assert "127.0.0.1" in body["sdp"] and "srflx" not in body["sdp"]  # host candidates only, loopback
        await client.pc.setRemoteDescription(type(client.pc.localDescription)(sdp=body["sdp"], type="answer"))
        await client.wait_video(10)
        t0 = time.monotonic()
        await asyncio.sleep(1.2)
        assert 20 <= client.fps_between(t0, time.monotonic()) <= 30
        assert len(client.audio_levels) > 40
        assert await server.sessions() == 1
        await client.close()


async def test_bad_json_and_bad_fields_get_400_with_an_envelope(serve, config) -> None:
    async with serve(config) as server:
        for route in JSON_ROUTES:
            for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
                status, body = await server.post(route, raw=raw)
                assert status == 400 and body["code"] == -1 and body["msg"], (route, raw, body)
        checks = [
            ({"type": "offer"}, "'sdp'"),
            ({"sdp": "v=0", "type": "answer"}, "'type'"),
            ({"sdp": "v=0", "type": "offer", "avatar": "../etc"}, "invalid avatar id"),
            ({"sdp": "v=0", "type": "offer", "avatar": 7}, "'avatar'"),
            ({"sdp": "v=0", "type": "offer", "voice": "nobody"}, "unknown voice 'nobody'; this server offers piper"),
        ]
        for body, words in checks:
            status, reply = await server.post("/offer", body)
            assert status == 400 and words in reply["msg"], (body, reply)
        status, reply = await server.post("/offer", {"sdp": await offer_sdp(), "type": "offer", "avatar": "nobody"})
        assert status == 404 and "nobody" in reply["msg"]
        for route in JSON_ROUTES[1:]:
            status, reply = await server.post(route, {"sessionid": "123", "text": "x", "type": "echo"})
            assert status == 404 and reply == {"code": -1, "msg": "session not found"}
            status, reply = await server.post(route, {"text": "x"})
            assert status == 400 and "sessionid" in reply["msg"]
        status, reply = await server.post("/offer", {"sdp": "v=0\r\n" * 100_000, "type": "offer"})
        assert status == 413 and reply["code"] == -1
        for query, code in (("", 400), ("?sessionid=1", 404)):
            async with server.http.get(server.url + "/sse" + query) as resp:
                assert resp.status == code and (await resp.json())["code"] == -1
        assert await server.sessions() == 0


async def test_a_failed_offer_leaves_no_session_behind(serve, config) -> None:
    async with serve(config, max_session=1) as server:
        for sdp in ("garbage", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n", "v=0\r\n" * 1000):
            status, reply = await server.post("/offer", {"sdp": sdp, "type": "offer"})
            assert status == 400 and reply["code"] == -1 and "offer SDP" in reply["msg"]
        assert await server.sessions() == 0 and not server.state.registry._reserved
        client = Client(server)  # the slot of each failed offer was given back
        await client.connect()
        await client.close()


async def test_session_api_with_string_and_numeric_ids(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        sid = await client.connect()
        status, reply = await server.post("/is_speaking", {"sessionid": sid})
        assert status == 200 and reply == {"code": 0, "msg": "ok", "data": False}
        for ident in (123456, 123456.0):  # numeric ids (classic LiveTalking pages) are read, and match no session
            status, reply = await server.post("/is_speaking", {"sessionid": ident})
            assert status == 404 and reply == {"code": -1, "msg": "session not found"}
        bad = [
            ("/human", {"text": "hi", "type": "shout"}, 400, "'type'"),
            ("/human", {"text": "  ", "type": "echo"}, 400, "'text'"),
            ("/human", {"type": "echo"}, 400, "'text'"),
            ("/human", {"text": "a" * 5000, "type": "echo"}, 413, "longer"),
            ("/set_audiotype", {"audiotype": "two"}, 400, "integer"),
            ("/set_audiotype", {"audiotype": True}, 400, "integer"),
            ("/set_audiotype", {"audiotype": 9}, 400, "available: 2"),
            ("/record", {"type": "pause"}, 400, "start_record"),
            ("/record", {"type": "end_record"}, 400, "not recording"),
        ]
        for route, body, code, words in bad:
            status, reply = await server.post(route, {"sessionid": sid, **body})
            assert status == code and reply["code"] == -1 and words in reply["msg"], (route, body, reply)
        for route, body in [
            ("/human", {"text": "Hello.", "type": "echo", "interrupt": True}),
            ("/interrupt_talk", {}),
            ("/set_audiotype", {"audiotype": 2}),
        ]:
            status, reply = await server.post(route, {"sessionid": sid, **body})
            assert status == 200 and reply == {"code": 0, "msg": "ok"}, (route, reply)
        live = server.state.registry.get(sid)
        await asyncio.sleep(0.3)
        assert live.session.stats.action_frames >= 3  # the 3-frame clip played
        await client.close()


async def test_max_session_gives_503_and_frees_the_slot_when_a_client_leaves(serve, config) -> None:
    async with serve(config, max_session=2) as server:
        clients = [Client(server), Client(server)]
        for c in clients:
            await c.connect()
            await c.wait_video(5)
        extra = Client(server)
        status, reply = await extra.offer()
        assert status == 503 and reply["code"] == -1 and "(2/2)" in reply["msg"]
        await extra.close()
        await clients[0].close()  # the page closes its peer connection: that alone ends the session
        assert await server.wait_sessions(1, timeout=5)
        assert server.state.registry.get(clients[0].sessionid) is None
        again = Client(server)
        await again.connect()
        await again.wait_video(5)
        await again.close()
        await clients[1].close()


async def test_a_client_that_never_connects_is_ended_after_the_connect_timeout(serve, config) -> None:
    async with serve(config, connect_timeout=1.0) as server:
        ghost = Client(server)
        status, reply = await ghost.offer()  # never applies the answer: ICE never completes
        t_offer = time.monotonic()
        assert status == 200
        live = server.state.registry.get(reply["sessionid"])
        active = Client(server)
        await active.connect()
        assert await server.wait_sessions(1, timeout=5)
        assert time.monotonic() - t_offer >= 1.0 and live.session.closed
        assert server.state.registry.get(active.sessionid) is not None  # a connected client stays
        await asyncio.sleep(1.5)
        assert await server.sessions() == 1
        await ghost.close()
        await active.close()


async def test_shutdown_closes_every_session(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        await client.connect()
        live = server.state.registry.get(client.sessionid)
    assert live.session.closed and live.pc.connectionState == "closed"
    assert live.tracks.video.readyState == "ended"
    await client.close()


async def test_health_metrics_static_and_cors(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        await client.connect()
        await client.wait_video(10)
        await asyncio.sleep(2.2)
        status, body = await server.get("/healthz")
        assert status == 200 and json.loads(body) == {
            "ok": True,
            "sessions": 1,
            "max_session": 3,
            "engine": "lite",
            "voices": ["piper", "edgetts"],
        }
        status, body = await server.get("/metrics")  # in detail: tests/server/test_metrics.py
        _, samples = parse_metrics(body.decode())
        assert client.sessionid not in body.decode()
        assert samples[("avatar_sessions", ())] == 1
        assert samples[("avatar_frames_total", (("source", "idle"),))] >= 50
        status, page = await server.get("/")
        assert status == 200 and b"avatar test page" in page
        status, asset = await server.get("/client.js")
        assert status == 200 and asset == b"// test asset"
        preflight = {"Origin": "http://elsewhere", "Access-Control-Request-Method": "POST"}
        async with server.http.options(server.url + "/human", headers=preflight) as resp:
            assert resp.status == 403 and "Access-Control-Allow-Origin" not in resp.headers  # same origin only
        sid = client.sessionid
        async with server.http.post(
            server.url + "/is_speaking", json={"sessionid": sid}, headers={"Origin": "http://elsewhere"}
        ) as resp:
            assert resp.status == 403 and "not allowed" in (await resp.json())["msg"]
        async with server.http.post(
            server.url + "/is_speaking", json={"sessionid": sid}, headers={"Origin": server.url}
        ) as resp:
            assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers  # the page itself
        await client.close()


async def test_cors_only_for_the_configured_origins(serve, config) -> None:
    async with serve(config, cors_origins=("http://app.example",)) as server:
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        async with server.http.options(server.url + "/human", headers=preflight) as resp:
            assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
        async with server.http.post(
            server.url + "/is_speaking", json={"sessionid": "x"}, headers={"Origin": "http://app.example"}
        ) as resp:
            assert resp.status == 404 and resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
        async with server.http.options(server.url + "/human", headers={**preflight, "Origin": "http://evil"}) as r:
            assert r.status == 403


async def test_a_session_can_choose_another_offered_voice(serve, config) -> None:
    async with serve(config) as server:
        client = Client(server)
        await client.connect(voice="edgetts")
        live = server.state.registry.get(client.sessionid)
        assert type(live.voice.tts).__name__ == "EdgeTTS"
        default = Client(server)
        await default.connect()
        assert type(server.state.registry.get(default.sessionid).voice.tts).__name__ == "PiperTTS"
        await client.close()
        await default.close()


async def test_offers_during_shutdown_get_503_and_nothing_is_left_running(serve, config) -> None:
    from server.registry import SessionLimitError

    async with serve(config) as server:
        registry = server.state.registry
        in_flight = registry.reserve()  # an offer still being set up when shutdown begins
        await registry.close_all()
        with pytest.raises(SessionLimitError, match="shutting down"):
            registry.add(type("Live", (), {"id": in_flight})())  # refused: its handler closes it
        client = Client(server)
        status, reply = await client.offer()
        assert status == 503 and "shutting down" in reply["msg"]
        assert len(registry) == 0


async def test_nothing_new_starts_for_a_session_that_has_ended(serve, config) -> None:
    import inspect

    from server.registry import SessionEndedError

    async with serve(config) as server:
        client = Client(server)
        sid = await client.connect()
        live = server.state.registry.get(sid)
        await server.state.registry.end(sid, "test")

        async def work() -> None:
            pass

        coro = work()
        with pytest.raises(SessionEndedError, match=f"session {sid} has ended"):
            live.spawn(coro, "late")
        assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED and not live.tasks


async def test_a_recording_that_cannot_start_is_not_left_half_started(serve, config, tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the records folder should be")
    async with serve(config, records_dir=blocker / "records") as server:
        client = Client(server)
        sid = await client.connect()
        for _ in range(2):  # the second attempt fails the same way, not with "already recording"
            status, reply = await server.post("/record", {"sessionid": sid, "type": "start_record"})
            assert status == 500 and "internal error" in reply["msg"]
        status, reply = await server.post("/record", {"sessionid": sid, "type": "end_record"})
        assert status == 400 and "not recording" in reply["msg"]
