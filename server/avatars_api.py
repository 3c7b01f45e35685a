"""Avatars over HTTP: list them (with thumbnails), upload a video or image to prepare one in the background
(progress by polling or server-sent events, cancellable), delete one, and switch a session's avatar.

LiveTalking's avatar page (`/api/avatar/task(s)`) is served by the same jobs, in its own field names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
from aiohttp import BodyPartReader, web

from core.units import VIDEO_FPS
from musetalk.avatar import (
    Avatar,
    AvatarError,
    AvatarNotFoundError,
    list_avatars,
    load_avatar,
    validate_avatar_id,
)
from musetalk.avatar_source import IMAGE_SUFFIXES
from musetalk.config import VERSIONS
from pipeline.compositor import warm_blend_plans
from server.avatar_jobs import JOB_ID, AvatarJob, AvatarJobs, JobOptions
from server.custom_video import decode_custom_clips
from server.errors import BadRequest, Conflict, NotFound, TooLarge
from server.routes import json_body, live_session, loaded_avatar, ok, stream_events
from server.state import STATE

log = logging.getLogger(__name__)

JOBS = web.AppKey("avatar_jobs", AvatarJobs)
THUMBNAIL_WIDTH = 160
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v", ".flv", ".mpg", ".mpeg", ".gif"})
_READ_CHUNK = 256 * 1024
_MAX_FIELD_BYTES = 4096
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,5}$")
RESERVED_IDS = frozenset({"tasks"})  # /api/avatars/tasks is the task list


# ------------------------------------------------------------------------------------------------- listing


def _describe(avatar: Avatar, default_id: str) -> dict[str, Any]:
    m = avatar.manifest
    return {
        "id": avatar.avatar_id,
        "width": m["width"],
        "height": m["height"],
        "frames": m["n_frames"],
        "fps": m["fps"],
        "version": m["version"],
        "latents": m["latents"],
        "mask": m.get("mask"),
        "source": m["source"],
        "created": m["created"],
        "default": avatar.avatar_id == default_id,
        "thumbnail": f"/api/avatars/{avatar.avatar_id}/thumbnail.jpg",
    }


def _list(avatars_dir: Path, default_id: str) -> list[dict[str, Any]]:
    out = []
    for avatar_id in list_avatars(avatars_dir):
        try:
            out.append(_describe(load_avatar(avatar_id, avatars_dir), default_id))
        except AvatarError as e:
            out.append({"id": avatar_id, "error": str(e)})
    return out


async def list_route(request: web.Request) -> web.Response:
    config = request.app[STATE].config
    return ok({"avatars": await asyncio.to_thread(_list, config.avatars_dir, config.avatar_id)})


def _avatar_id(request: web.Request) -> str:
    return validate_avatar_id(request.match_info["avatar_id"])  # InvalidAvatarIdError: 400


def _thumbnail(avatars_dir: Path, avatar_id: str) -> bytes:
    avatar = load_avatar(avatar_id, avatars_dir)
    frame = avatar.frames[0]
    h, w = frame.shape[:2]
    small = cv2.resize(frame, (THUMBNAIL_WIDTH, max(1, round(h * THUMBNAIL_WIDTH / w))), interpolation=cv2.INTER_AREA)
    done, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not done:
        raise AvatarError(f"cannot encode a thumbnail of avatar {avatar_id!r}")
    return data.tobytes()


async def thumbnail_route(request: web.Request) -> web.Response:
    avatar_id = _avatar_id(request)
    try:
        data = await asyncio.to_thread(_thumbnail, request.app[STATE].config.avatars_dir, avatar_id)
    except AvatarNotFoundError as e:
        raise NotFound(f"avatar {avatar_id!r} not found") from e
    return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


# ------------------------------------------------------------------------------------------------- deleting


def _remove(folder: Path) -> None:
    """Move the folder aside in one step (no session can load half of it), then delete it."""
    doomed = folder.with_name(f".{folder.name}.deleted-{uuid.uuid4().hex[:8]}")
    folder.rename(doomed)
    shutil.rmtree(doomed)


async def delete_route(request: web.Request) -> web.Response:
    state = request.app[STATE]
    avatar_id = _avatar_id(request)
    if avatar_id == state.config.avatar_id:
        raise Conflict(f"avatar {avatar_id!r} is the server's default (--avatar_id) and cannot be deleted")
    if request.app[JOBS].busy(avatar_id):
        raise Conflict(f"avatar {avatar_id!r} is being prepared; cancel its task first")
    users = [live for live in state.registry if live.session.avatar.avatar_id == avatar_id]
    if users:
        raise Conflict(
            f"avatar {avatar_id!r} is shown by {len(users)} session(s); switch them to another avatar or end them first"
        )
    folder = state.config.avatars_dir / avatar_id
    if not (folder / "manifest.json").is_file():
        raise NotFound(f"avatar {avatar_id!r} not found")
    await asyncio.to_thread(_remove, folder)
    state.services.forget_avatar(avatar_id)
    return ok({"id": avatar_id})


# ------------------------------------------------------------------------------------------------- uploads


def _int_field(fields: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = fields.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError as e:
        raise BadRequest(f"'{name}' must be an integer") from e
    if not low <= value <= high:
        raise BadRequest(f"'{name}' must be between {low} and {high}")
    return value


def _options(fields: dict[str, str], max_frames: int) -> JobOptions:
    model = fields.get("model", "").strip()
    if model and model != "musetalk":
        raise BadRequest(f"'model' {model!r} is not available: this server prepares MuseTalk avatars (model=musetalk)")
    version = fields.get("version", "").strip() or "v15"
    if version not in VERSIONS:
        raise BadRequest(f"'version' must be one of {', '.join(VERSIONS)}")
    frames = _int_field(fields, "max_frames", max_frames, 1, max_frames)
    return JobOptions(
        version=version,
        bbox_shift=_int_field(fields, "bbox_shift", 0, -100, 100),
        extra_margin=_int_field(fields, "extra_margin", 10, 0, 100),
        max_frames=frames,
    )


def _suffix(filename: str | None) -> str:
    match = _SUFFIX.search(filename or "")
    suffix = match.group(0).lower() if match else ""
    if suffix not in VIDEO_SUFFIXES | IMAGE_SUFFIXES:
        raise BadRequest(
            f"the file must be a video ({', '.join(sorted(VIDEO_SUFFIXES))}) or an image "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}), by its name"
        )
    return suffix


def _probe(path: Path, max_seconds: float) -> int:
    """Expected frame count of an uploaded video or image (BadRequest if it is neither, TooLarge if too long)."""
    if path.suffix in IMAGE_SUFFIXES:
        if cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8) is None:
            raise BadRequest("the file is not a readable image")
        return 1
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise BadRequest("the file has no video stream")
            stream = container.streams.video[0]
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = (container.duration or 0) / av.time_base
    except av.FFmpegError as e:
        raise BadRequest(f"cannot read the video: {e}") from e
    if seconds > max_seconds:
        raise TooLarge(f"the video is {seconds:.0f} s long; the limit is {max_seconds:g} s")
    return max(1, round(seconds * VIDEO_FPS))


async def _read_upload(
    request: web.Request, folder: Path, max_bytes: int, check: Callable[[dict[str, str], bool], None]
) -> tuple[dict[str, str], Path, str]:
    """The form's text fields and its file, streamed to `folder` (at most max_bytes). `check(fields, False)` runs
    on the fields that came before the file, before any of it is read (a bad id costs no upload), and
    `check(fields, True)` on all of them at the end."""
    if not request.content_type.startswith("multipart/"):
        raise BadRequest("send the avatar as multipart/form-data with fields 'avatar_id' and 'file'")
    if request.content_length is not None and request.content_length > max_bytes + 64 * 1024:
        raise TooLarge(f"the upload is larger than {max_bytes // (1024 * 1024)} MB")
    fields: dict[str, str] = {}
    found: tuple[Path, str] | None = None
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise BadRequest("nested multipart forms are not supported")
            if part.name in ("file", "video_file"):  # ours, LiveTalking's
                if found is not None:
                    raise BadRequest("send one file")
                check(fields, False)
                name = Path(part.filename or "").name or "upload"
                path = folder / f"source{_suffix(name)}"
                size = 0
                # Local disk writes of the chunks the socket hands over, as aiohttp's own file responses do.
                with open(path, "wb") as out:  # noqa: ASYNC230
                    while chunk := await part.read_chunk(_READ_CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise TooLarge(f"the file is larger than {max_bytes // (1024 * 1024)} MB")
                        out.write(chunk)
                if size == 0:
                    raise BadRequest("the file is empty")
                found = (path, name)
            elif part.name:
                value = await part.read(decode=True)
                if len(value) > _MAX_FIELD_BYTES:
                    raise BadRequest(f"form field {part.name!r} is too long")
                fields[part.name] = value.decode("utf-8", "replace")
    except ValueError as e:  # malformed multipart framing
        raise BadRequest(f"malformed multipart form: {e}") from e
    if found is None:
        if "video_path" in fields:
            raise BadRequest("'video_path' (a file on the server) is not accepted: upload the file as 'file'")
        raise BadRequest("the form has no 'file' field (a video or an image)")
    check(fields, True)
    return fields, *found


async def create(request: web.Request) -> AvatarJob:
    """Read an upload and queue its preparation (the upload is removed whatever goes wrong before that)."""
    state, jobs = request.app[STATE], request.app[JOBS]
    config = state.config
    folder = Path(tempfile.mkdtemp(prefix="avatar-upload-"))
    try:

        def check(fields: dict[str, str], complete: bool) -> None:
            avatar_id = fields.get("avatar_id", "").strip()
            if not avatar_id:
                if complete:
                    raise BadRequest("'avatar_id' is required")
                return  # it may come after the file
            validate_avatar_id(avatar_id)
            if avatar_id in RESERVED_IDS:
                raise BadRequest(f"{avatar_id!r} is a reserved name; choose another avatar id")
            if (config.avatars_dir / avatar_id).exists():
                raise Conflict(f"avatar {avatar_id!r} already exists; delete it first")
            if jobs.busy(avatar_id):
                raise Conflict(f"avatar {avatar_id!r} is already being prepared")

        fields, path, name = await _read_upload(request, folder, config.max_avatar_upload_bytes, check)
        max_frames = int(config.max_avatar_seconds * VIDEO_FPS)
        options = _options(fields, max_frames)
        # In the uploads' own pool, as audio uploads: never in the threads aiortc encodes with.
        expected = await state.decoder.pool.run(_probe, path, config.max_avatar_seconds)
        job = jobs.submit(fields["avatar_id"].strip(), path, name, options, min(expected, options.max_frames))
    except BaseException:  # an error, or the client went away mid-upload (the handler is cancelled)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return job


async def create_route(request: web.Request) -> web.Response:
    job = await create(request)
    return web.json_response({"code": 0, "msg": "ok", "data": job.to_json()}, status=202)


# ------------------------------------------------------------------------------------------------- tasks


def _job(request: web.Request) -> AvatarJob:
    job_id = request.match_info["task_id"]
    if not JOB_ID.fullmatch(job_id):
        raise BadRequest(f"invalid task id {job_id[:40]!r}")
    job = request.app[JOBS].get(job_id)
    if job is None:
        raise NotFound("task not found")
    return job


async def tasks_route(request: web.Request) -> web.Response:
    return ok({"tasks": [job.to_json() for job in request.app[JOBS]]})


async def task_route(request: web.Request) -> web.Response:
    return ok(_job(request).to_json())


async def cancel_route(request: web.Request) -> web.Response:
    job = _job(request)
    if job.finished:
        raise Conflict(f"the task has already ended ({job.status})")
    await request.app[JOBS].cancel(job)
    return ok(job.to_json())


async def task_sse_route(request: web.Request) -> web.StreamResponse:
    job = _job(request)
    updates = job.subscribe()
    try:
        return await stream_events(request, updates, json.dumps)
    finally:
        job.unsubscribe(updates)


# ------------------------------------------------------------------------------------------------- LiveTalking

_LT_STATUS = {"queued": "pending", "running": "running", "done": "completed", "failed": "failed", "cancelled": "failed"}


def livetalking_task(job: AvatarJob) -> dict[str, Any]:
    """A job in LiveTalking's task fields (its avatar page reads these)."""
    return {
        "task_id": job.id,
        "model_type": "musetalk",
        "avatar_id": job.avatar_id,
        "status": _LT_STATUS[job.status],
        "progress": round(100 * job.progress),
        "error_msg": job.error or ("cancelled" if job.status == "cancelled" else ""),
        "notify_url": None,
        "start_time": job.started or job.created,
        "end_time": job.ended,
        "duration": (job.ended - job.started) if job.ended and job.started else None,
    }


async def lt_create_route(request: web.Request) -> web.Response:
    job = await create(request)
    return ok({"task_id": job.id})


async def lt_tasks_route(request: web.Request) -> web.Response:
    return ok({"tasks": [livetalking_task(job) for job in request.app[JOBS]]})


async def lt_task_route(request: web.Request) -> web.Response:
    return ok(livetalking_task(_job(request)))


# ------------------------------------------------------------------------------------------------- switching


async def set_avatar_route(request: web.Request) -> web.Response:
    """Switch a session's avatar; the first use of an avatar loads and warms it before the switch."""
    state = request.app[STATE]
    body = await json_body(request)
    live = live_session(state, body.get("sessionid"))
    avatar_id = body.get("avatar")
    if not isinstance(avatar_id, str):
        raise BadRequest("'avatar' (an avatar id) is required")
    avatar, actions = await loaded_avatar(state, avatar_id)
    session = live.session
    await asyncio.to_thread(warm_blend_plans, avatar, session.clock.current_tick())
    custom_actions, idle = await decode_custom_clips(live.custom_clips, avatar, state.config.max_avatar_seconds)
    live.check_open()
    if session.avatar is avatar:
        return ok({"avatar": avatar_id, "switched": False})
    await live.voice.interrupt()  # a speaking turn is cut here, as /interrupt_talk does
    live.check_open()
    await session.set_avatar(avatar, actions)
    session.use_custom_clips(custom_actions, idle)
    return ok({"avatar": avatar_id, "switched": True})


# ------------------------------------------------------------------------------------------------- setup


def setup(app: web.Application) -> None:
    """The routes (all under the token when one is configured) and the jobs' lifetime (closed on shutdown)."""

    async def start(app: web.Application) -> None:
        config = app[STATE].config
        app[JOBS] = AvatarJobs(config.avatars_dir, config.models_dir, app[STATE].tasks)

    async def stop(app: web.Application) -> None:
        await app[JOBS].close()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    r = app.router
    r.add_get("/api/avatars", list_route)
    r.add_post("/api/avatars", create_route)
    r.add_get("/api/avatars/tasks", tasks_route)
    r.add_get("/api/avatars/tasks/{task_id}", task_route)
    r.add_delete("/api/avatars/tasks/{task_id}", cancel_route)
    r.add_get("/api/avatars/tasks/{task_id}/sse", task_sse_route)
    r.add_get("/api/avatars/{avatar_id}/thumbnail.jpg", thumbnail_route)
    r.add_delete("/api/avatars/{avatar_id}", delete_route)
    r.add_post("/api/avatar/task", lt_create_route)
    r.add_get("/api/avatar/tasks", lt_tasks_route)
    r.add_get("/api/avatar/task/{task_id}", lt_task_route)
    r.add_delete("/api/avatar/task/{task_id}", cancel_route)
    r.add_post("/set_avatar", set_avatar_route)
