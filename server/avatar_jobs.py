"""Avatar preparation for the HTTP API: jobs queued and run one at a time, each in a child process.

The child runs musetalk.avatar_prepare.prepare_avatar (face landmarks, masks, latents: seconds to minutes of CPU or
GPU work) and reports its progress as JSON lines on stdout. A process, not a thread, because a preparation must be
cancellable at any point: cancel terminates the child (SIGTERM: prepare_avatar's own cleanup removes its temp
folder; SIGKILL after a grace period, then the temp folder is removed here), and nothing of it runs on in the
server. One runner task owns the child; close() cancels everything and waits for it.

Run as ``python -m server.avatar_jobs '<json arguments>'`` only by AvatarJobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import shutil
import signal
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.tasks import TaskOwner
from server.errors import Conflict, TooBusy, Unavailable

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
JOB_ID = re.compile(r"[0-9a-f]{16}")
MAX_QUEUED = 8
HISTORY = 32  # finished jobs remembered for polling
TERMINATE_GRACE_S = 5.0
# (stage name in prepare_avatar's progress bars, share of the whole job before it, share of this stage)
STAGES = {"reading frames": (0.0, 0.3), "face landmarks": (0.3, 0.55), "blend masks": (0.85, 0.1)}


@dataclass(frozen=True, kw_only=True)
class JobOptions:
    """What an API client chooses of musetalk.avatar_prepare.PrepareOptions (shown in the job's JSON)."""

    version: str = "v15"
    bbox_shift: int = 0
    extra_margin: int = 10
    max_frames: int  # the server's limit unless the client asks for fewer


@dataclass
class AvatarJob:
    id: str
    avatar_id: str
    source: Path  # the upload, alone in a temp folder; the folder is removed when the job ends
    source_name: str  # the uploaded file's name, recorded in the manifest
    options: JobOptions
    expected_frames: int  # for the progress of the first stage, whose length the decoder does not know
    status: str = "queued"  # queued | running | done | failed | cancelled
    stage: str = ""
    progress: float = 0.0  # 0..1
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    cancel_requested: bool = False
    _listeners: set[asyncio.Queue] = field(default_factory=set, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "avatar_id": self.avatar_id,
            "status": self.status,
            "stage": self.stage,
            "progress": round(self.progress, 3),
            "error": self.error,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "options": asdict(self.options),
        }

    def subscribe(self) -> asyncio.Queue:
        """Snapshots (to_json) on every change; None after the last one."""
        q: asyncio.Queue = asyncio.Queue(64)
        self._listeners.add(q)
        q.put_nowait(self.to_json())
        if self.finished:
            q.put_nowait(None)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._listeners.discard(q)

    def changed(self) -> None:
        snapshot = self.to_json()
        for q in self._listeners:
            for item in (snapshot, None) if self.finished else (snapshot,):
                if q.full():  # a slow reader loses its oldest snapshot, never the end
                    q.get_nowait()
                q.put_nowait(item)


def leftovers(avatars_dir: Path, avatar_id: str) -> list[Path]:
    """Temp folders of an interrupted prepare_avatar (musetalk.avatar_writer.building names them so)."""
    return list(avatars_dir.glob(f".{avatar_id}.tmp-*"))


class AvatarJobs:
    def __init__(self, avatars_dir: Path, models_dir: Path, tasks: TaskOwner) -> None:
        """`tasks`: the app's owner, in which the runner and the children's stderr readers run."""
        self._tasks = tasks
        self.avatars_dir = Path(avatars_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self._jobs: dict[str, AvatarJob] = {}
        self._queue: asyncio.Queue[AvatarJob] = asyncio.Queue()
        self._runner: asyncio.Task | None = None
        self._child: asyncio.subprocess.Process | None = None
        self._closed = False

    # -- API -----------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[AvatarJob]:
        return iter(sorted(self._jobs.values(), key=lambda j: j.created, reverse=True))

    def get(self, job_id: str) -> AvatarJob | None:
        return self._jobs.get(job_id)

    def busy(self, avatar_id: str) -> bool:
        """Whether a queued or running job is making this avatar."""
        return any(j.avatar_id == avatar_id and not j.finished for j in self._jobs.values())

    def submit(
        self, avatar_id: str, source: Path, source_name: str, options: JobOptions, expected_frames: int
    ) -> AvatarJob:
        """Queue a job; the job owns `source` (and its folder) from here on. Conflict (already being prepared),
        TooBusy (queue full) or Unavailable (shutting down) if it cannot be queued."""
        if self._closed:
            raise Unavailable("the server is shutting down")
        if self.busy(avatar_id):
            raise Conflict(f"avatar {avatar_id!r} is already being prepared")
        if sum(not j.finished for j in self._jobs.values()) >= MAX_QUEUED:
            raise TooBusy(f"{MAX_QUEUED} avatars are already waiting to be prepared; try again later")
        job = AvatarJob(secrets.token_hex(8), avatar_id, source, source_name, options, max(1, expected_frames))
        self._jobs[job.id] = job
        self._forget_old()
        self._queue.put_nowait(job)
        if self._runner is None:
            self._runner = self._tasks.spawn(self._run(), "avatar-jobs")
        return job

    async def cancel(self, job: AvatarJob) -> None:
        """Cancel a queued or running job (a finished one is left as it is); returns once it has ended."""
        if job.finished:
            return
        job.cancel_requested = True
        if job.status == "queued":
            self._finish(job, "cancelled")
            return
        self._signal(signal.SIGTERM)
        done = job.subscribe()
        try:
            try:
                await asyncio.wait_for(_ended(done), TERMINATE_GRACE_S)
            except TimeoutError:  # stuck in native code: SIGTERM cannot unwind it
                self._signal(signal.SIGKILL)
                await _ended(done)
        finally:
            job.unsubscribe(done)

    def _signal(self, signum: int) -> None:
        child = self._child
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum)

    async def close(self) -> None:
        """Cancel every job and wait until no child runs."""
        self._closed = True
        for job in list(self._jobs.values()):
            if job.status == "queued":
                self._finish(job, "cancelled")
        running = [j for j in self._jobs.values() if j.status == "running"]
        await asyncio.gather(*(self.cancel(j) for j in running))
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    # -- the runner ----------------------------------------------------------------------------------------
    def _forget_old(self) -> None:
        done = [j for j in sorted(self._jobs.values(), key=lambda j: j.created) if j.finished]
        for job in done[: max(0, len(done) - HISTORY)]:
            del self._jobs[job.id]

    def _finish(self, job: AvatarJob, status: str, error: str | None = None) -> None:
        job.status, job.error, job.ended = status, error, time.time()
        if status == "done":
            job.progress = 1.0
        shutil.rmtree(job.source.parent, ignore_errors=True)
        job.changed()

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            if job.status != "queued":
                continue  # cancelled while it waited
            job.status, job.started = "running", time.time()
            job.changed()
            try:
                status, error = await self._prepare(job)
            except Exception as e:  # the runner must outlive any one job
                log.exception("avatar job %s failed", job.id)
                status, error = "failed", f"internal error: {e or type(e).__name__}"
            for tmp in leftovers(self.avatars_dir, job.avatar_id):
                shutil.rmtree(tmp, ignore_errors=True)
            self._finish(job, status, error)
            log.info("avatar job %s (%s): %s%s", job.id, job.avatar_id, status, f": {error}" if error else "")

    async def _prepare(self, job: AvatarJob) -> tuple[str, str | None]:
        args = {
            "source": str(job.source),
            "source_name": job.source_name,
            "avatar_id": job.avatar_id,
            "avatars_dir": str(self.avatars_dir),
            "models_dir": str(self.models_dir),
            **asdict(job.options),
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "server.avatar_jobs",
            json.dumps(args),
            cwd=str(PROJECT_ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._child = child
        if job.cancel_requested:  # cancelled while the child started
            self._signal(signal.SIGTERM)
        stderr_tail: deque[str] = deque(maxlen=5)
        error: str | None = None
        try:
            drain = self._tasks.spawn(_collect(child.stderr, stderr_tail), f"avatar-job-stderr-{job.id}")
            async for line in _lines(child.stdout):
                error = self._progress(job, line) or error
            await child.wait()
            await drain
        except BaseException:  # the runner is cancelled (shutdown): the child must not outlive it
            if child.returncode is None:
                child.kill()
                await child.wait()
            raise
        finally:
            self._child = None
        if job.cancel_requested:
            return "cancelled", None
        if child.returncode == 0:
            return "done", None
        exited = f"the preparation exited with {child.returncode}"
        return "failed", error or (stderr_tail[-1] if stderr_tail else exited)

    @staticmethod
    def _progress(job: AvatarJob, line: str) -> str | None:
        """Apply one progress line of the child; returns its error message if it reported one."""
        try:
            msg = json.loads(line)
        except ValueError:
            return None
        if not isinstance(msg, dict):
            return None
        if "error" in msg:
            return str(msg["error"])
        stage = msg.get("stage")
        if stage in STAGES:
            base, share = STAGES[stage]
            total = msg.get("total") or job.expected_frames
            job.stage = stage
            job.progress = max(job.progress, base + share * min(1.0, msg.get("n", 0) / total))
        job.changed()
        return None


async def _ended(updates: asyncio.Queue) -> None:
    while await updates.get() is not None:
        pass


async def _lines(stream: asyncio.StreamReader | None) -> AsyncIterator[str]:
    if stream is None:
        return
    while line := await stream.readline():
        yield line.decode("utf-8", "replace").strip()


async def _collect(stream: asyncio.StreamReader | None, tail: deque[str]) -> None:
    async for line in _lines(stream):
        if line:
            tail.append(line)


# ------------------------------------------------------------------------------------------------ the child


def _report(**msg: Any) -> None:
    print(json.dumps(msg), flush=True)


def _progress_bar(iterable: Iterable | None = None, desc: str = "", total: int | None = None, **_: Any) -> Iterator:
    """Stands in for tqdm inside prepare_avatar: reports (at most 5 times a second) instead of drawing."""
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    last = 0.0
    for n, item in enumerate(iterable if iterable is not None else (), 1):
        yield item
        now = time.monotonic()
        if now - last >= 0.2 or n == total:
            last = now
            _report(stage=desc, n=n, total=total)


def _child_main(argv: list[str]) -> int:
    import tqdm

    from musetalk.avatar import AvatarError
    from musetalk.avatar_prepare import PrepareOptions, prepare_avatar

    args = json.loads(argv[0])
    tqdm.tqdm = _progress_bar  # prepare_avatar imports tqdm where it draws a bar: it gets this one

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through prepare_avatar: its temp folder is removed

    signal.signal(signal.SIGTERM, terminated)
    try:
        options = PrepareOptions(
            version=args["version"],
            bbox_shift=args["bbox_shift"],
            extra_margin=args["extra_margin"],
            max_frames=args["max_frames"],
            models_dir=Path(args["models_dir"]),
            source_name=args["source_name"],
        )
        prepare_avatar(Path(args["source"]), args["avatar_id"], Path(args["avatars_dir"]), options)
    except (AvatarError, ValueError, OSError) as e:
        _report(error=str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
