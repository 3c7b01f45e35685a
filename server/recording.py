"""/record: a session sink that writes the output ticks to an mp4 (H.264 + AAC) in a worker thread.

The sink only hands each tick to a bounded queue (the session's clock must never wait for the encoder); the
thread encodes video frame and audio of each tick with the same timestamps the tracks use, so the file is in
sync by construction. If the encoder falls behind by more than the queue, ticks are dropped and counted.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
from pathlib import Path

import av
import numpy as np

from pipeline.items import SAMPLE_RATE, TICK_SAMPLES, OutputTick
from pipeline.session import Session

log = logging.getLogger(__name__)

VIDEO_FPS = 25
QUEUE_TICKS = 250  # 10 s of output
_RECORD_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_STOP = object()


def record_path(records_dir: Path, session_id: str) -> Path:
    """Where the recording of `session_id` lives; ValueError for an id that is not a plain file name."""
    if not _RECORD_ID.fullmatch(session_id):
        raise ValueError(f"invalid session id {session_id!r}")
    return records_dir / f"{session_id}.mp4"


class Recorder:
    """Started by start(), attached to the session as a sink; finish() closes the file and returns its path."""

    def __init__(self, session: Session, path: Path) -> None:
        self.session = session
        self.path = path
        self.dropped = 0
        self.error: Exception | None = None
        self._partial = path.with_name(f".{path.stem}.partial.mp4")
        self._queue: queue.Queue = queue.Queue(QUEUE_TICKS)
        self._thread = threading.Thread(target=self._run, name=f"record-{session.session_id}", daemon=True)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        self.session.add_sink(self)

    def __call__(self, out: OutputTick) -> None:
        try:
            self._queue.put_nowait(out)
        except queue.Full:
            self.dropped += 1

    async def finish(self) -> Path:
        """Stop taking ticks, let the thread drain the queue and close the file (off the event loop)."""
        self.session.remove_sink(self)
        await asyncio.to_thread(self._stop_and_join)
        if self.error is not None:
            self._partial.unlink(missing_ok=True)
            raise RuntimeError(f"recording failed: {self.error}") from self.error
        self._partial.replace(self.path)
        if self.dropped:
            log.warning("recording %s: %d ticks dropped (encoder too slow)", self.path.name, self.dropped)
        return self.path

    def _stop_and_join(self) -> None:
        self._queue.put(_STOP)  # may wait for the encoder to free a slot: not on the event loop
        self._thread.join()

    def _run(self) -> None:
        try:
            self._encode()
        except Exception as e:  # reported by finish(); keep draining so the sink never blocks
            log.exception("recording %s failed", self.path.name)
            self.error = e
            while self._queue.get() is not _STOP:
                pass

    def _encode(self) -> None:
        container = video = audio = None
        first = 0
        try:
            while (item := self._queue.get()) is not _STOP:
                out: OutputTick = item
                if container is None:  # opened on the first tick: its frame gives the video size
                    first = out.tick
                    container, video, audio = self._open(*out.frame.shape[:2])
                assert video is not None and audio is not None
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(out.frame[:video.height, :video.width]),
                                                   format="bgr24")
                frame.pts = out.tick - first
                container.mux(video.encode(frame))
                pcm = av.AudioFrame.from_ndarray(np.asarray(out.audio, np.float32).reshape(1, -1), format="flt",
                                                 layout="mono")
                pcm.sample_rate = SAMPLE_RATE
                pcm.pts = (out.tick - first) * TICK_SAMPLES
                container.mux(audio.encode(pcm))
            if container is None:
                raise RuntimeError("nothing was recorded (the session produced no output yet)")
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
