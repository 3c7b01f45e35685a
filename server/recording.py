"""/record: a session sink that writes the output ticks to an mp4 (H.264 + AAC) in a thread of its own.

The sink only hands each tick to a bounded queue (the session's clock must never wait for the encoder); the
thread encodes video frame and audio of each tick with the same timestamps the tracks use, so the file is in
sync by construction. If the encoder falls behind by more than the queue, ticks are dropped and counted.

The thread is the recording's one owner: it opens, writes and closes the file, and it alone decides when it is
done. Stopping is a flag, not a message in the queue, so no failure can leave anyone waiting for a message that
never comes: finish() sets the flag and awaits the thread's own "done", whatever happened before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import re
import threading
import time
from pathlib import Path

import av
import numpy as np

from core.items import OutputTick
from core.units import SAMPLE_RATE, TICK_SAMPLES, VIDEO_FPS
from pipeline.session import Session
from server.errors import BadRequest, Conflict, ServerFault

log = logging.getLogger(__name__)

QUEUE_TICKS = 250  # 10 s of output
DRAIN_SECONDS = 0.8  # after end_record, ticks still queued are encoded for at most this long, then dropped
_POLL_S = 0.05
_RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def record_path(records_dir: Path, session_id: str) -> Path:
    """Where the recording of `session_id` lives; BadRequest for an id that is not a plain file name."""
    if not _RECORD_ID.fullmatch(session_id):
        raise BadRequest(f"invalid session id {session_id!r}")
    return records_dir / f"{session_id}.mp4"


class Recorder:
    """Started by start(), attached to the session as a sink; finish() closes the file and returns its path."""

    def __init__(self, session: Session, path: Path) -> None:
        self.session = session
        self.path = path
        self.dropped = 0
        self.frames = 0
        self.error: Exception | None = None
        self._partial = path.with_name(f".{path.stem}.partial.mp4")
        self._queue: queue.Queue[OutputTick] = queue.Queue(QUEUE_TICKS)
        self._stop = threading.Event()
        self._drain_until = 0.0
        self._done: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the recording thread, owned by the session's task owner (which ends it if the session closes
        without finish(): what is queued is then dropped)."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = self.session.tasks.start_thread(
            self._run, f"record-{self.session.session_id}", stop=self._stop.set
        )
        self.session.add_sink(self)

    def __call__(self, out: OutputTick) -> None:
        if self._stop.is_set():
            return
        try:
            self._queue.put_nowait(out)
        except queue.Full:
            self.dropped += 1

    async def finish(self) -> Path:
        """Stop taking ticks, let the thread encode what is queued (at most DRAIN_SECONDS) and close the file.

        Idempotent. Conflict when nothing was recorded, ServerFault when writing it failed."""
        assert self._done is not None, "finish() before start()"
        self.session.remove_sink(self)
        if not self._stop.is_set():
            self._drain_until = time.monotonic() + DRAIN_SECONDS
            self._stop.set()
        await asyncio.shield(self._done)  # the thread resolves it on every path; shielded: a cancelled caller
        if self.error is not None:  # (session closing) must not leave a half-written file behind
            raise ServerFault(f"recording failed: {self.error}")
        if self.frames == 0:
            raise Conflict(
                "nothing was recorded: end_record came before the session's first video frame; record for longer"
            )
        if self.dropped:
            log.warning("recording %s: %d ticks dropped (encoder too slow)", self.path.name, self.dropped)
        return self.path

    # -- the recording thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._encode()
            if self.frames:
                self._partial.replace(self.path)
        except Exception as e:  # reported by finish()
            log.exception("recording %s failed", self.path.name)
            self.error = e
        finally:
            self._stop.set()  # after a failure too: the sink stops queueing, and what is queued is freed now
            while not self._queue.empty():
                self._queue.get_nowait()
            self._partial.unlink(missing_ok=True)
            self._resolve()

    def _resolve(self) -> None:
        assert self._done is not None
        done = self._done

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits any more
            done.get_loop().call_soon_threadsafe(resolve)

    def _next(self) -> OutputTick | None:
        """The next queued tick; None once stopped and drained (or past the drain deadline)."""
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() > self._drain_until:
                self.dropped += self._queue.qsize()
                return None
            try:
                return self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if stopping:
                    return None

    def _encode(self) -> None:
        container = video = audio = None
        first = 0
        try:
            while (out := self._next()) is not None:
                if container is None:  # opened on the first tick: its frame gives the video size
                    first = out.tick
                    container, video, audio = self._open(*out.frame.shape[:2])
                assert video is not None and audio is not None
                frame = av.VideoFrame.from_ndarray(
                    np.ascontiguousarray(out.frame[: video.height, : video.width]), format="bgr24"
                )
                frame.pts = out.tick - first
                container.mux(video.encode(frame))
                pcm = av.AudioFrame.from_ndarray(
                    np.asarray(out.audio, np.float32).reshape(1, -1), format="flt", layout="mono"
                )
                pcm.sample_rate = SAMPLE_RATE
                pcm.pts = (out.tick - first) * TICK_SAMPLES
                container.mux(audio.encode(pcm))
                self.frames += 1
            if container is not None and video is not None and audio is not None:  # (all three opened together)
                container.mux(video.encode(None))
                container.mux(audio.encode(None))
        finally:
            if container is not None:
                container.close()

    def _open(self, height: int, width: int) -> tuple:
        container = av.open(str(self._partial), mode="w", format="mp4")
        video = container.add_stream("libx264", rate=VIDEO_FPS)
        video.width, video.height, video.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        video.options = {"preset": "ultrafast", "tune": "zerolatency"}
        audio = container.add_stream("aac", rate=SAMPLE_RATE)
        audio.layout = "mono"
        return container, video, audio
