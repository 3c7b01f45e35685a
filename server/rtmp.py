"""RTMP output (--transport rtmp --push_url rtmp://...): a session's ticks pushed as FLV (H.264 + AAC) with PyAV.

The pusher is a session sink like the recorder: the sink only queues each tick (the session's clock never waits
for the network); one thread owns the connection, encodes and writes. Timestamps are the session's media clock:
video frame k has pts k (1/25 s), its audio pts 1920 k (48 kHz), so the pushed stream is in sync by construction.
When the server drops the connection (or cannot be reached), the thread reconnects with a growing backoff
(0.5 s doubling to 8 s); ticks that come meanwhile are dropped, and the stream resumes at the tick of the moment.

With --transport rtmp the server starts one more session with the server, driven by the API under
--push_session_id (LiveTalking's pages use "0"), whose output goes to --push_url; browsers still get sessions of
their own over WebRTC at the same time.
"""

from __future__ import annotations

import contextlib
import fractions
import logging
import queue
import threading

import av
import numpy as np
from aiohttp import web

from core.clock import AUDIO_OUT_RATE
from core.items import OutputTick
from core.units import VIDEO_FPS
from pipeline.session import Session
from server.custom_video import custom_clips_of, decode_custom_clips
from server.media import Upsampler, to_s16
from server.registry import LiveSession, close_live, close_media
from server.state import STATE, AppState

log = logging.getLogger(__name__)

QUEUE_TICKS = 50  # 2 s
BACKOFF_S = (0.5, 8.0)
IO_TIMEOUT_S = 5.0  # a connect or write that blocks this long fails (then: reconnect)
AUDIO_SAMPLES_PER_TICK = AUDIO_OUT_RATE // VIDEO_FPS  # 1920
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_FPS)
AUDIO_TIME_BASE = fractions.Fraction(1, AUDIO_OUT_RATE)
X264_OPTIONS: dict[str, object] = {"preset": "veryfast", "tune": "zerolatency", "g": str(2 * VIDEO_FPS), "bf": "0"}


class RtmpPusher:
    """Pushes a session's output to `url` from its own thread, reconnecting when the server goes away."""

    def __init__(
        self, session: Session, url: str, video_bitrate: int = 1_500_000, backoff: tuple[float, float] = BACKOFF_S
    ) -> None:
        self.session = session
        self.url = url
        self.video_bitrate = video_bitrate
        self.backoff = backoff
        self.connects = 0  # successful connections (1 + reconnects)
        self.sent = 0
        self.dropped = 0  # ticks the encoder or the network could not keep up with
        self.last_error: str | None = None
        self._connected = threading.Event()  # the server took the stream's header: it is live
        self._accepting = threading.Event()  # a connection is being opened or is open: ticks are queued
        self._queue: queue.Queue[OutputTick] = queue.Queue(QUEUE_TICKS)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until the stream is live (the server took its header), at most `timeout` seconds."""
        return self._connected.wait(timeout)

    def start(self) -> None:
        """Start pushing from a thread owned by the session's task owner (it stops the thread if the session
        closes first)."""
        self._thread = self.session.tasks.start_thread(
            self._run, f"rtmp-{self.session.session_id}", stop=self._stop.set
        )
        self.session.add_sink(self)

    def __call__(self, out: OutputTick) -> None:
        if not self._accepting.is_set():
            return  # nobody to send it to: the stream resumes at the present tick when reconnected
        try:
            self._queue.put_nowait(out)
        except queue.Full:
            self.dropped += 1

    def stop(self) -> None:
        """Detach, close the connection and end the thread (blocking: run it off the event loop)."""
        self.session.remove_sink(self)
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(timeout=IO_TIMEOUT_S + 5)
        if self._thread.is_alive():
            log.error("rtmp push thread did not stop")

    # -- the thread ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff[0]
        while not self._stop.is_set():
            connects = self.connects
            try:
                self._stream()  # returns only when stopped
            except (av.FFmpegError, OSError) as e:
                if self.last_error != str(e):  # once per kind of failure, not once per retry
                    log.warning("rtmp push to %s: %s; retrying every %g-%g s", self.url, e, *self.backoff)
                self.last_error = str(e)
            if self.connects > connects:
                delay = self.backoff[0]  # it was connected: the server went away, so try again soon
            if self._stop.wait(delay):
                break
            delay = min(2 * delay, self.backoff[1])

    def _stream(self) -> None:
        """One connection: open, then encode and write ticks until stopped (or an error ends it)."""
        container = av.open(self.url, "w", format="flv", timeout=(IO_TIMEOUT_S, IO_TIMEOUT_S))
        try:
            video = audio = None
            upsample = Upsampler()
            with self._queue.mutex:
                self._queue.queue.clear()  # ticks from before this connection are not sent late
            self._accepting.set()
            while not self._stop.is_set():
                try:
                    out = self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
                if video is None or audio is None:
                    video, audio = self._add_streams(container, out.frame.shape[1], out.frame.shape[0])
                # A frame of another size (the avatar was switched) is scaled to the stream's by the encoder.
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(out.frame), format="bgr24")
                frame.pts, frame.time_base = out.tick, VIDEO_TIME_BASE
                sound = av.AudioFrame.from_ndarray(
                    to_s16(upsample(out.audio)).reshape(1, -1), format="s16", layout="mono"
                )
                sound.sample_rate, sound.time_base = AUDIO_OUT_RATE, AUDIO_TIME_BASE
                sound.pts = AUDIO_SAMPLES_PER_TICK * out.tick  # the same tick as its frame: one media clock
                container.mux(video.encode(frame))  # the first write connects (PyAV opens the output lazily)
                container.mux(audio.encode(sound))
                self.sent += 1
                if not self._connected.is_set():
                    self._connected.set()
                    self.connects += 1
                    log.info("rtmp push to %s: connected", self.url)
        finally:
            self._accepting.clear()
            self._connected.clear()
            with contextlib.suppress(av.FFmpegError, OSError):
                container.close()

    def _add_streams(
        self, container: av.container.OutputContainer, width: int, height: int
    ) -> tuple[av.VideoStream, av.AudioStream]:
        video = container.add_stream("libx264", rate=VIDEO_FPS)
        video.width, video.height, video.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        video.bit_rate = self.video_bitrate
        video.options = X264_OPTIONS
        audio = container.add_stream("aac", rate=AUDIO_OUT_RATE)
        audio.layout = "mono"
        audio.bit_rate = 96_000
        return video, audio


# ------------------------------------------------------------------------------------------------ the session


async def open_push_session(state: AppState) -> LiveSession:
    """The session whose output is pushed to --push_url, registered under --push_session_id (no peer, so no
    connect or idle timeout: it lives as long as the server); nothing of it is left behind on failure."""
    config, services = state.config, state.services
    assert config.push_url is not None  # checked when the options were parsed
    avatar, actions = await services.avatar(config.avatar_id)
    custom = custom_clips_of(config, {})  # --customvideo_config
    custom_actions, idle = await decode_custom_clips(custom, avatar, config.max_avatar_seconds)
    session = Session(config.push_session_id, avatar, services.engine, actions)
    session.use_custom_clips(custom_actions, idle)
    live: LiveSession | None = None
    try:
        live = LiveSession(
            config.push_session_id,
            session,
            None,
            None,
            await services.new_voice(session),
            voice_name=services.voices[0],
            custom_clips=custom,
        )
        live.pusher = RtmpPusher(session, config.push_url)
        live.pusher.start()
        await session.start()
        state.registry.add(live)
    except BaseException:
        await (close_live(live) if live is not None else close_media(config.push_session_id, None, None, session))
        raise
    return live


def setup(app: web.Application) -> None:
    """With --transport rtmp, the pushed session starts with the server (and ends with the other sessions)."""

    async def start(app: web.Application) -> None:
        state = app[STATE]
        if "rtmp" in state.config.transports:
            await open_push_session(state)
            log.info("rtmp: session %r pushes to %s", state.config.push_session_id, state.config.push_url)

    app.on_startup.append(start)
