"""A loopback aiortc receiver for tests and benchmarks, and the guard that keeps them on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import NoReturn

import aiohttp
import numpy as np
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from av import AudioFrame, VideoFrame

from pipeline.session import Session
from server.media import SessionTracks
from server.webrtc import IceOptions, answer, use_host_addresses

NETNS_HINT = (
    "WebRTC tests and benchmarks run only inside a loopback-only network namespace, e.g.\n"
    "  unshare -n sh -c 'ip link set lo up && .venv/bin/python -m pytest'"
)


def in_loopback_namespace() -> bool:
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test that cannot run here; in CI (env CI set) that is a failure instead."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def loopback_only() -> None:
    """WebRTC tests run only where no packet can leave 127.0.0.1, with host candidates on 127.0.0.1."""
    if not in_loopback_namespace():
        skip_or_fail(NETNS_HINT)
    use_host_addresses(["127.0.0.1"])


def require_loopback_namespace() -> None:
    if not in_loopback_namespace():
        raise SystemExit(NETNS_HINT)
    use_host_addresses(["127.0.0.1"])


@dataclass
class _Arrivals:
    """Arrival time (monotonic ms) of the first RTP packet of each timestamp of one stream. Decoded frames carry
    the RTP timestamp, relative to the stream's first, as pts, so their arrival can be looked up: an aiortc
    receiver buffers audio and video differently before recv() returns, so that time says nothing about sync."""

    first_ts: int | None = None
    by_pts: dict[int, float] = field(default_factory=dict)


# The streams of open LoopbackReceivers, by id(RTCRtpReceiver); other receivers' packets are not recorded.
_RECORDED: dict[int, _Arrivals] = {}
_original_handle = RTCRtpReceiver._handle_rtp_packet


async def _recording_handle(self: RTCRtpReceiver, packet, arrival_time_ms: int) -> None:
    arrivals = _RECORDED.get(id(self))
    if arrivals is not None:
        if arrivals.first_ts is None:
            arrivals.first_ts = packet.timestamp
        arrivals.by_pts.setdefault((packet.timestamp - arrivals.first_ts) % 2**32, time.monotonic() * 1000.0)
    await _original_handle(self, packet, arrival_time_ms)


# The harness records arrival times inside aiortc's receiver: a patch of its method, on purpose.
RTCRtpReceiver._handle_rtp_packet = _recording_handle  # type: ignore[method-assign]


@dataclass
class Received:
    kind: str
    rtp_ts: int
    arrival_ms: float  # when the first packet of this frame arrived (monotonic ms)
    data: np.ndarray  # video: (H, W, 3) BGR; audio: (samples,) float32 mono 48 kHz


@dataclass
class LoopbackReceiver:
    """An aiortc client that receives the avatar's tracks and keeps every decoded frame."""

    video_region: tuple[slice, slice] | None = None  # keep only this part of each frame (long runs)
    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    frames: dict[str, list[Received]] = field(default_factory=lambda: {"video": [], "audio": []})
    _tasks: list[asyncio.Task] = field(default_factory=list)
    _recorded: list[int] = field(default_factory=list)  # keys of this receiver's streams in _RECORDED
    unmatched: int = 0  # frames whose packet arrival was not found (should stay 0)

    async def connect(self, tracks: SessionTracks, ice: IceOptions = IceOptions()) -> RTCPeerConnection:
        """In-process: answer with a server-side peer connection sending `tracks`; returns that connection."""
        server_pc = RTCPeerConnection(ice.configuration())

        async def answerer(offer: RTCSessionDescription) -> RTCSessionDescription:
            return await answer(server_pc, offer.sdp, offer.type, [tracks.video, tracks.audio])

        try:
            await self._negotiate(answerer, ice)
        except BaseException:
            await server_pc.close()
            raise
        return server_pc

    async def connect_http(self, http: aiohttp.ClientSession, url: str, **extra: object) -> str:
        """Through a running server's POST /offer, as LiveTalking's pages do; returns the session id."""
        reply: dict = {}

        async def answerer(offer: RTCSessionDescription) -> RTCSessionDescription:
            async with http.post(f"{url}/offer", json={"sdp": offer.sdp, "type": offer.type, **extra}) as resp:
                reply.update(await resp.json())
                if resp.status != 200:
                    raise RuntimeError(f"/offer answered {resp.status}: {reply}")
            return RTCSessionDescription(sdp=reply["sdp"], type=reply["type"])

        await self._negotiate(answerer, IceOptions())
        return str(reply["sessionid"])

    async def _negotiate(
        self, answerer: Callable[[RTCSessionDescription], Awaitable[RTCSessionDescription]], ice: IceOptions
    ) -> None:
        await self.accept(await answerer(await self.offer(ice)))

    async def offer(self, ice: IceOptions = IceOptions()) -> RTCSessionDescription:
        """A receive-only offer for video + audio; pass the sender's answer to accept()."""
        self.pc = RTCPeerConnection(ice.configuration())
        for kind in ("video", "audio"):
            rtp_receiver = self.pc.addTransceiver(kind, direction="recvonly").receiver
            self._recorded.append(id(rtp_receiver))
            _RECORDED[id(rtp_receiver)] = _Arrivals()

        @self.pc.on("track")
        def on_track(track) -> None:
            receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
            self._tasks.append(asyncio.create_task(self._consume(track, _RECORDED[id(receiver)])))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription

    async def accept(self, reply: RTCSessionDescription) -> None:
        await self.pc.setRemoteDescription(reply)

    async def _consume(self, track, arrivals: _Arrivals) -> None:
        async for frame in frames_of(track):
            pts = frame.pts
            assert pts is not None  # aiortc stamps every frame it decodes
            arrival = arrivals.by_pts.get(pts % 2**32)
            if arrival is None:
                self.unmatched += 1
                arrival = time.monotonic() * 1000.0
            if isinstance(frame, VideoFrame):
                data = frame.to_ndarray(format="bgr24")
                if self.video_region is not None:
                    data = data[self.video_region].copy()
            else:
                pcm = frame.to_ndarray().astype(np.float32).reshape(-1, len(frame.layout.channels))
                data = pcm.mean(axis=1) / 32768.0
            self.frames[track.kind].append(Received(track.kind, pts, arrival, data))

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for key in self._recorded:
            _RECORDED.pop(key, None)


async def frames_of(track: MediaStreamTrack) -> AsyncIterator[AudioFrame | VideoFrame]:
    """The frames a received track delivers, until it ends."""
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame | VideoFrame)  # a received track decodes its packets
        yield frame


def media_time_ms(frames: list[Received], clock_rate: int) -> list[float]:
    """Receiver-clock time of each frame: its RTP time shifted by the stream's typical arrival offset.

    This is what a player does with RTCP sender reports; using the median arrival offset per stream keeps
    one late packet from moving the whole stream.
    """
    ts = np.unwrap(np.array([f.rtp_ts for f in frames], np.float64), period=2.0**32)  # 32-bit RTP wrap-around
    rtp_ms = (ts - ts[0]) * 1000.0 / clock_rate
    base = float(np.median([f.arrival_ms for f in frames] - rtp_ms))
    return list(rtp_ms + base)


@contextlib.asynccontextmanager
async def received(
    session: Session, video_region: tuple[slice, slice] | None = None
) -> AsyncIterator[LoopbackReceiver]:
    """Connect a loopback receiver to the session's tracks, start the session; close everything on exit."""
    tracks = SessionTracks(session)
    receiver = LoopbackReceiver(video_region=video_region)
    server_pc: RTCPeerConnection | None = None
    try:
        server_pc = await receiver.connect(tracks)
        await session.start()
        yield receiver
    finally:
        await receiver.close()
        if server_pc is not None:
            await server_pc.close()
        tracks.close()
        await session.close()
