"""Avatars over HTTP against the real server: list with thumbnails, upload -> background preparation (polling,
/sse progress, cancel), delete; LiveTalking's avatar page requests; bad input and the token on every route."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import aiohttp
import av
import cv2
import numpy as np
import psutil
import pytest

from musetalk.avatar import list_avatars
from musetalk.avatar_demo import demo_image
from server.avatar_jobs import leftovers
from testing.server_client import Server, until

TOKEN = "test-token-0123456789abcdef"


def video_bytes(frames: int, size: int = 256, fps: int = 25) -> bytes:
    """An mp4 (H.264) of the public-domain astronaut portrait, swaying a little so frames differ."""
    face = cv2.resize(demo_image(), (size, size), interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            shift = np.float32([[1, 0, 2 * np.sin(i / 5)], [0, 1, 0]])
            img = cv2.warpAffine(face, shift, (size, size), borderMode=cv2.BORDER_REPLICATE)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")))
        out.mux(stream.encode(None))
    return buf.getvalue()


def png_bytes() -> bytes:
    return cv2.imencode(".png", cv2.resize(demo_image(), (256, 256)))[1].tobytes()


@pytest.fixture
def own_avatars(avatars_dir: Path, tmp_path: Path) -> Path:
    """A folder of avatars this test may change: a copy of the demo avatar (and its action clip)."""
    root = tmp_path / "avatars"
    shutil.copytree(avatars_dir / "demo", root / "demo")
    return root


def form(
    fields: dict[str, str], data: bytes | None = None, name: str = "talk.mp4", key: str = "file"
) -> aiohttp.FormData:
    out = aiohttp.FormData(default_to_multipart=True)
    for k, v in fields.items():
        out.add_field(k, v)
    if data is not None:
        out.add_field(key, data, filename=name, content_type="application/octet-stream")
    return out


async def call(server: Server, method: str, path: str, **kwargs) -> tuple[int, dict]:
    async with server.http.request(method, server.url + path, **kwargs) as resp:
        text = await resp.text()
    try:
        return resp.status, json.loads(text)
    except ValueError:  # aiohttp's own 404/405 for paths no route matches
        return resp.status, {"msg": text}


async def wait_task(server: Server, task_id: str, timeout: float = 120.0) -> dict:
    task: dict = {}

    async def ended() -> bool:
        nonlocal task
        status, body = await call(server, "GET", f"/api/avatars/tasks/{task_id}")
        assert status == 200, body
        task = body["data"]
        return task["status"] in ("done", "failed", "cancelled")

    assert await until(ended, timeout, step=0.2), task
    return task


def upload_dirs() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("avatar-upload-")}


def preparing_children() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "server.avatar_jobs" in " ".join(p.cmdline())]


async def test_list_and_thumbnail(serve, config, own_avatars) -> None:
    async with serve(config, avatars_dir=own_avatars) as server:
        status, body = await call(server, "GET", "/api/avatars")
        assert status == 200, body
        (demo,) = body["data"]["avatars"]
        assert demo["id"] == "demo" and demo["default"] and demo["frames"] == 1
        assert demo["width"] == demo["height"] == 512 and demo["thumbnail"] == "/api/avatars/demo/thumbnail.jpg"
        async with server.http.get(server.url + demo["thumbnail"]) as resp:
            assert resp.status == 200 and resp.content_type == "image/jpeg"
            jpeg = cv2.imdecode(np.frombuffer(await resp.read(), np.uint8), cv2.IMREAD_COLOR)
        assert jpeg.shape == (160, 160, 3)
        assert (await call(server, "GET", "/api/avatars/nobody/thumbnail.jpg"))[0] == 404
        assert (await call(server, "GET", "/api/avatars/..%2F..%2Fetc/thumbnail.jpg"))[0] in (400, 404)


async def test_upload_prepares_in_the_background_with_progress_then_delete(serve, config, own_avatars) -> None:
    async with serve(config, avatars_dir=own_avatars) as server:
        status, body = await call(
            server, "POST", "/api/avatars", data=form({"avatar_id": "alice", "version": "v15"}, video_bytes(40))
        )
        assert status == 202, body
        task = body["data"]
        assert task["avatar_id"] == "alice" and task["status"] in ("queued", "running")
        snapshots = []
        async with server.http.get(f"{server.url}/api/avatars/tasks/{task['id']}/sse") as resp:
            assert resp.status == 200
            async for line in resp.content:  # the stream ends when the task does
                if line.startswith(b"data:"):
                    snapshots.append(json.loads(line[5:]))
        assert snapshots[-1]["status"] == "done", snapshots[-1]
        progress = [s["progress"] for s in snapshots]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert {"face landmarks", "blend masks"} <= {s["stage"] for s in snapshots}
        assert (await wait_task(server, task["id"]))["status"] == "done"
        status, body = await call(server, "GET", "/api/avatars")
        alice = next(a for a in body["data"]["avatars"] if a["id"] == "alice")
        assert alice["frames"] == 40 and alice["width"] == 256 and not alice["default"]
        assert not leftovers(own_avatars, "alice") and not preparing_children()

        # An image works too; an id that exists is refused before the upload is read.
        status, body = await call(
            server, "POST", "/api/avatars", data=form({"avatar_id": "still"}, png_bytes(), name="face.png")
        )
        assert status == 202, body
        assert (await wait_task(server, body["data"]["id"]))["status"] == "done"
        status, body = await call(server, "POST", "/api/avatars", data=form({"avatar_id": "alice"}, b"x" * 100))
        assert status == 409 and "already exists" in body["msg"]

        assert (await call(server, "DELETE", "/api/avatars/alice"))[0] == 200
        assert "alice" not in list_avatars(own_avatars)
        assert (await call(server, "DELETE", "/api/avatars/alice"))[0] == 404
        assert (await call(server, "GET", "/api/avatars/alice/thumbnail.jpg"))[0] == 404
        status, body = await call(server, "DELETE", "/api/avatars/demo")
        assert status == 409 and "default" in body["msg"]


async def test_cancel_a_running_and_a_queued_task_leaves_nothing(serve, config, own_avatars) -> None:
    before = upload_dirs()
    async with serve(config, avatars_dir=own_avatars) as server:
        big = video_bytes(250, size=384)
        _, first = await call(server, "POST", "/api/avatars", data=form({"avatar_id": "long"}, big))
        _, second = await call(server, "POST", "/api/avatars", data=form({"avatar_id": "later"}, big))
        first, second = first["data"], second["data"]
        assert second["status"] == "queued"

        async def running() -> bool:
            return (await call(server, "GET", f"/api/avatars/tasks/{first['id']}"))[1]["data"]["status"] == "running"

        assert await until(running, 30, step=0.05)
        status, body = await call(server, "DELETE", f"/api/avatars/tasks/{second['id']}")
        assert status == 200 and body["data"]["status"] == "cancelled"
        status, body = await call(server, "DELETE", f"/api/avatars/tasks/{first['id']}")
        assert status == 200 and body["data"]["status"] == "cancelled", body
        assert (await call(server, "DELETE", f"/api/avatars/tasks/{first['id']}"))[0] == 409  # already ended
        assert not preparing_children()
        assert list_avatars(own_avatars) == ["demo"] and not leftovers(own_avatars, "long")
        assert not [p for p in own_avatars.iterdir() if p.name.startswith(".")]
    assert upload_dirs() == before


async def test_shutdown_ends_a_running_preparation(serve, config, own_avatars) -> None:
    async with serve(config, avatars_dir=own_avatars) as server:
        await call(server, "POST", "/api/avatars", data=form({"avatar_id": "long"}, video_bytes(250, 384)))

        async def started() -> bool:
            return bool(preparing_children())

        assert await until(started, 30, step=0.05)
    assert not preparing_children()
    assert list_avatars(own_avatars) == ["demo"] and not leftovers(own_avatars, "long")


async def test_livetalking_avatar_page_requests(serve, config, own_avatars) -> None:
    """The requests LiveTalking's web/avatar.html makes, as it makes them (FormData of its form, in field order)."""
    async with serve(config, avatars_dir=own_avatars) as server:
        fields = {"model": "musetalk", "avatar_id": "lt_avatar"}
        data = form(fields, video_bytes(30), name="clip.mp4", key="video_file")
        for name, value in (
            ("img_size", "256"),
            ("bbox_shift", "0"),
            ("pads", "0 10 0 0"),
            ("face_det_batch_size", "4"),
        ):
            data.add_field(name, value)
        status, body = await call(server, "POST", "/api/avatar/task", data=data)
        assert status == 200 and body["code"] == 0, body
        task_id = body["data"]["task_id"]
        status, body = await call(server, "GET", "/api/avatar/tasks")
        assert status == 200 and body["code"] == 0
        (task,) = body["data"]["tasks"]
        assert task["task_id"] == task_id and task["model_type"] == "musetalk" and task["avatar_id"] == "lt_avatar"
        assert task["status"] in ("pending", "running") and 0 <= task["progress"] <= 100
        assert isinstance(task["start_time"], float)

        async def completed() -> bool:
            _, body = await call(server, "GET", f"/api/avatar/task/{task_id}")
            return body["data"]["status"] == "completed"

        assert await until(completed, 120, step=0.2)
        assert "lt_avatar" in list_avatars(own_avatars)
        # Its cancel button (shown for pending tasks): DELETE /api/avatar/task/{id}.
        _, body = await call(
            server,
            "POST",
            "/api/avatar/task",
            data=form({"model": "musetalk", "avatar_id": "a1"}, video_bytes(200, 384), key="video_file"),
        )
        _, body2 = await call(
            server,
            "POST",
            "/api/avatar/task",
            data=form({"model": "musetalk", "avatar_id": "a2"}, video_bytes(10), key="video_file"),
        )
        status, reply = await call(server, "DELETE", f"/api/avatar/task/{body2['data']['task_id']}")
        assert status == 200 and reply["code"] == 0
        _, body = await call(server, "GET", "/api/avatar/tasks")
        states = {t["avatar_id"]: t for t in body["data"]["tasks"]}
        assert states["a2"]["status"] == "failed" and states["a2"]["error_msg"] == "cancelled"
        # Its default model choice is wav2lip: refused with the reason, not silently made a MuseTalk avatar.
        status, reply = await call(
            server,
            "POST",
            "/api/avatar/task",
            data=form({"model": "wav2lip", "avatar_id": "w"}, video_bytes(5), key="video_file"),
        )
        assert status == 400 and "musetalk" in reply["msg"]


@pytest.mark.parametrize(
    ("fields", "data", "name", "status", "words"),
    [
        ({"avatar_id": "../etc"}, b"x", "a.mp4", 400, "invalid avatar id"),
        ({"avatar_id": "tasks"}, b"x", "a.mp4", 400, "reserved"),
        ({"avatar_id": "demo"}, b"x", "a.mp4", 409, "already exists"),
        ({}, b"x", "a.mp4", 400, "'avatar_id' is required"),
        ({"avatar_id": "b"}, None, "a.mp4", 400, "no 'file'"),
        ({"avatar_id": "b", "video_path": "/etc/passwd"}, None, "a.mp4", 400, "video_path"),
        ({"avatar_id": "b"}, b"hello", "a.txt", 400, "video"),
        ({"avatar_id": "b"}, b"", "a.mp4", 400, "empty"),
        ({"avatar_id": "b"}, bytes(range(256)) * 64, "a.mp4", 400, "cannot read the video"),
        ({"avatar_id": "b"}, b"not a png", "a.png", 400, "not a readable image"),
        ({"avatar_id": "b", "version": "v9"}, b"x", "a.mp4", 400, "'version'"),
        ({"avatar_id": "b", "bbox_shift": "lots"}, b"x", "a.mp4", 400, "'bbox_shift' must be an integer"),
        ({"avatar_id": "b"}, b"x" * (2 * 1024 * 1024), "a.mp4", 413, "larger than 1 MB"),
    ],
)
async def test_bad_uploads_are_refused_and_leave_nothing(
    serve, config, own_avatars, fields, data, name, status, words
) -> None:
    before = upload_dirs()
    async with serve(config, avatars_dir=own_avatars, max_avatar_upload_mb=1.0) as server:
        got, body = await call(server, "POST", "/api/avatars", data=form(fields, data, name=name))
        assert got == status and words in body["msg"], body
        assert (await call(server, "GET", "/api/avatars/tasks"))[1]["data"]["tasks"] == []
    assert upload_dirs() == before and list_avatars(own_avatars) == ["demo"]


async def test_other_bad_requests(serve, config, own_avatars) -> None:
    async with serve(config, avatars_dir=own_avatars, max_avatar_seconds=1.0) as server:
        status, body = await call(server, "POST", "/api/avatars", json={"avatar_id": "x"})
        assert status == 400 and "multipart" in body["msg"]
        status, body = await call(server, "POST", "/api/avatars", data=form({"avatar_id": "b"}, video_bytes(50)))
        assert status == 413 and "limit is 1 s" in body["msg"]
        for path in ("/api/avatars/tasks/0123456789abcdef", "/api/avatar/task/0123456789abcdef"):
            assert (await call(server, "GET", path))[0] == 404
        for bad in ("..", "x" * 17, "%2E%2E%2Fetc", "ABCDEF0123456789"):
            assert (await call(server, "GET", f"/api/avatars/tasks/{bad}"))[0] in (400, 404, 405)
            assert (await call(server, "DELETE", f"/api/avatar/task/{bad}"))[0] in (400, 404, 405)
        assert (await call(server, "DELETE", "/api/avatars/bad.id"))[0] == 400
        assert (await call(server, "DELETE", "/api/avatars/nobody"))[0] == 404


async def test_a_client_gone_mid_upload_leaves_nothing(serve, config, own_avatars) -> None:
    before = upload_dirs()
    async with serve(config, avatars_dir=own_avatars) as server:
        host, port = server.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        boundary = "b0undary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="avatar_id"\r\n\r\nhalf\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n'
            f"Content-Type: video/mp4\r\n\r\n"
        ).encode()
        writer.write(
            f"POST /api/avatars HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(head) + 10_000_000}\r\n\r\n".encode()
            + head
            + b"\0" * 500_000
        )
        await writer.drain()

        async def receiving() -> bool:
            return bool(upload_dirs() - before)

        assert await until(receiving, 10)
        writer.close()
        await writer.wait_closed()

        async def cleaned() -> bool:
            return upload_dirs() == before

        assert await until(cleaned, 10)
        assert (await call(server, "GET", "/api/avatars/tasks"))[1]["data"]["tasks"] == []
        del reader


async def test_every_avatar_route_needs_the_token(serve, config, own_avatars) -> None:
    async with serve(config, avatars_dir=own_avatars, auth_tokens=(TOKEN,)) as server:
        for method, path in (
            ("GET", "/api/avatars"),
            ("POST", "/api/avatars"),
            ("GET", "/api/avatars/tasks"),
            ("GET", "/api/avatars/tasks/0123456789abcdef"),
            ("DELETE", "/api/avatars/tasks/0123456789abcdef"),
            ("GET", "/api/avatars/tasks/0123456789abcdef/sse"),
            ("GET", "/api/avatars/demo/thumbnail.jpg"),
            ("DELETE", "/api/avatars/demo"),
            ("POST", "/api/avatar/task"),
            ("GET", "/api/avatar/tasks"),
            ("GET", "/api/avatar/task/0123456789abcdef"),
            ("DELETE", "/api/avatar/task/0123456789abcdef"),
            ("POST", "/set_avatar"),
        ):
            status, _ = await call(server, method, path)
            assert status == 401, (method, path)
        status, body = await call(server, "GET", "/api/avatars", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and body["data"]["avatars"][0]["id"] == "demo"
        async with server.http.get(f"{server.url}/api/avatars/demo/thumbnail.jpg?token={TOKEN}") as resp:
            assert resp.status == 200  # an <img> cannot send a header
