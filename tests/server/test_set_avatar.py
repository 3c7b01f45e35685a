"""Switching a session's avatar mid-session: same tracks (no renegotiation), a crossfade, the speaking turn
interrupted, the old avatar's worker retired; POST /set_avatar against the real server, and its bad input."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from aiortc import MediaStreamTrack

from core.items import Source
from musetalk.avatar import load_avatar
from musetalk.avatar_demo import demo_image
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from pipeline.compositor import warm_blend_plans
from pipeline.session import Session
from testing.rtc import frames_of
from testing.server_client import Client, is_speaking, until

SECOND_SIZE = 384


@pytest.fixture(scope="module")
def two_avatars(avatars_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo avatar (512 px, with action clip 2) and "second": a bluish 384 px astronaut without clips."""
    root = tmp_path_factory.mktemp("two-avatars")
    shutil.copytree(avatars_dir / "demo", root / "demo")
    img = cv2.resize(demo_image(), (SECOND_SIZE, SECOND_SIZE), interpolation=cv2.INTER_AREA)
    img[..., 0] = np.clip(img[..., 0].astype(int) + 60, 0, 255)
    prepare_avatar(img, "second", root, PrepareOptions(progress=False, models_dir=root / "no-models"))
    return root


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


async def test_a_stepped_session_crossfades_to_the_new_avatar_and_speaks_with_it(two_avatars, engine) -> None:
    demo, second = load_avatar("demo", two_avatars), load_avatar("second", two_avatars)
    session = Session("s", demo, engine, stepped=True)
    await session.start()
    try:
        for _ in range(3):
            last = session.step()
        await session.push_audio(tone(2.0))
        assert session.speaking
        old_worker = session.worker
        warm_blend_plans(second, 0)
        first = await session.set_avatar(second)
        assert not session.speaking and session.queued_seconds == 0  # the speaking turn was interrupted
        ticks = [session.step() for _ in range(first - 3 + session.options.crossfade_ticks + 2)]
        new = [t for t in ticks if t.tick >= first]
        idle = np.asarray(second.frames[0])
        assert all(t.frame.shape == idle.shape for t in new)
        fading = new[: session.options.crossfade_ticks]
        old_scaled = cv2.resize(np.asarray(last.frame), (SECOND_SIZE, SECOND_SIZE), interpolation=cv2.INTER_AREA)
        for t in fading:  # between the old picture and the new one, moving towards the new
            assert not np.array_equal(t.frame, idle) and not np.array_equal(t.frame, old_scaled)
        diffs = [np.abs(t.frame.astype(int) - idle).mean() for t in fading]
        assert diffs == sorted(diffs, reverse=True)
        assert np.array_equal(new[-1].frame, idle) and new[-1].source is Source.IDLE

        await session.push_audio(tone(1.0))
        await session.end_speech()
        spoken = [session.step() for _ in range(30)]
        speech = [t for t in spoken if t.source is Source.SPEECH]
        assert speech and all(t.frame.shape == idle.shape for t in speech)
        moved = np.abs(speech[len(speech) // 2].frame.astype(int) - idle).max(axis=2) > 0
        _, y1, _, y2 = (int(v) for v in second.crop_boxes[0])
        assert moved.any() and not moved[:y1].any() and not moved[y2:].any()  # only the new avatar's face moved
        for _ in range(500):  # the old worker was told to stop: its thread ends by itself, and its owner forgets it
            if not old_worker.alive:
                break
            await asyncio.sleep(0.01)
        assert not old_worker.alive and session.worker.alive
        assert [t.name for t in session.tasks._threads] == [session.worker.name]
    finally:
        await session.close()
    assert not session.worker.alive


class FrameSizes(Client):
    """A client that also notes the size of every video frame it decodes."""

    sizes: list[tuple[int, int]]

    async def _consume(self, track: MediaStreamTrack) -> None:
        self.sizes = getattr(self, "sizes", [])
        async for frame in frames_of(track):
            if track.kind == "video":
                self.video_times.append(time.monotonic())
                self.sizes.append((frame.width, frame.height))


async def test_set_avatar_switches_a_live_session_on_the_same_connection(serve, config, two_avatars) -> None:
    async with serve(config, avatars_dir=two_avatars) as server:
        client = FrameSizes(server)
        sid = await client.connect()
        await client.wait_video(10)
        live = server.state.registry.get(sid)
        pc_before = live.pc
        status, body = await server.post(
            "/human", {"sessionid": sid, "type": "echo", "text": "This is a long sentence that is still being spoken."}
        )
        assert status == 200, body
        assert await until(lambda: is_speaking(server, sid), 10)
        late_before = live.session.stats.skipped_ticks
        assert (await server.post("/record", {"sessionid": sid, "type": "start_record"}))[0] == 200
        status, body = await server.post("/set_avatar", {"sessionid": sid, "avatar": "second"})
        assert status == 200 and body["data"] == {"avatar": "second", "switched": True}, body
        assert not await is_speaking(server, sid)  # the turn was interrupted
        assert live.session.avatar.avatar_id == "second" and live.pc is pc_before

        async def resized() -> bool:
            return bool(client.sizes) and client.sizes[-1] == (SECOND_SIZE, SECOND_SIZE)

        assert await until(resized, 10), client.sizes[-5:]
        n = len(client.video_times)
        await client.wait_video(n + 10)
        assert live.session.stats.skipped_ticks == late_before  # the clock never stalled
        status, body = await server.post("/record", {"sessionid": sid, "type": "end_record"})
        assert status == 200, body  # the recording keeps its size: frames of the new avatar are scaled to it
        # The new avatar's own action clips apply: "second" has none, the demo had clip 2.
        status, body = await server.post("/set_audiotype", {"sessionid": sid, "audiotype": 2})
        assert status == 400 and "'second' has no action clip 2" in body["msg"]
        status, body = await server.post("/set_avatar", {"sessionid": sid, "avatar": "second"})
        assert status == 200 and body["data"]["switched"] is False
        # Back to the demo: it speaks again on its own face.
        assert (await server.post("/set_avatar", {"sessionid": sid, "avatar": "demo"}))[0] == 200
        assert (await server.post("/human", {"sessionid": sid, "type": "echo", "text": "Hello again."}))[0] == 200
        assert await until(lambda: is_speaking(server, sid), 10)

        async def back() -> bool:
            return client.sizes[-1] == (512, 512)

        assert await until(back, 10)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"sessionid": "nobody", "avatar": "second"}, 404, "session not found"),
        ({"avatar": "second"}, 400, "'sessionid' is required"),
        ({"sessionid": "SID"}, 400, "'avatar'"),
        ({"sessionid": "SID", "avatar": 7}, 400, "'avatar'"),
        ({"sessionid": "SID", "avatar": "../demo"}, 400, "invalid avatar id"),
        ({"sessionid": "SID", "avatar": "nobody"}, 404, "avatar 'nobody' not found"),
    ],
)
async def test_set_avatar_bad_input(serve, config, two_avatars, body, status, words) -> None:
    async with serve(config, avatars_dir=two_avatars) as server:
        client = Client(server)
        sid = await client.connect()
        body = {k: (sid if v == "SID" else v) for k, v in body.items()}
        got, reply = await server.post("/set_avatar", body)
        assert got == status and words in reply["msg"], reply
        assert server.state.registry.get(sid).session.avatar.avatar_id == "demo"
        got, reply = await server.post("/set_avatar", raw=b"{not json")
        assert got == 400


async def test_an_avatar_shown_by_a_session_cannot_be_deleted(serve, config, two_avatars, tmp_path) -> None:
    root = tmp_path / "avatars"
    shutil.copytree(two_avatars, root)
    async with serve(config, avatars_dir=root) as server:
        client = Client(server)
        sid = await client.connect()
        assert (await server.post("/set_avatar", {"sessionid": sid, "avatar": "second"}))[0] == 200
        async with server.http.delete(server.url + "/api/avatars/second") as resp:
            assert resp.status == 409 and "shown by 1 session" in (await resp.json())["msg"]
        assert (await server.post("/set_avatar", {"sessionid": sid, "avatar": "demo"}))[0] == 200
        engine, path = server.state.services.engine, str(root / "second")  # (the engine is shared by tests)
        assert any(key.startswith(path) for key in engine._bindings)
        async with server.http.delete(server.url + "/api/avatars/second") as resp:
            assert resp.status == 200
        assert not any(key.startswith(path) for key in engine._bindings)  # its per-avatar data is let go
        assert (await server.post("/set_avatar", {"sessionid": sid, "avatar": "second"}))[0] == 404


@pytest.fixture(autouse=True)
def _webrtc(request: pytest.FixtureRequest) -> None:
    if "serve" in request.fixturenames:
        request.getfixturevalue("loopback_only")


def test_the_switch_benchmark_runs_and_prints_its_figures() -> None:
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "bench.set_avatar", "--switches", "2"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ")
    for kind in ("first use, 1x", "again, 1x"):
        line = next(line for line in lines if line.startswith(f"set_avatar ({kind})"))
        assert "request -> first frame of the new avatar median" in line and "longest tick gap" in line
