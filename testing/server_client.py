"""Test harness for the HTTP/WebRTC server: run the app on 127.0.0.1, and an aiortc client that connects the
way the LiveTalking pages do (POST /offer with a complete offer, video then audio recvonly), optionally
sending a scripted microphone."""

from __future__ import annotations

import asyncio
import fractions
import inspect
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from server.app import create_app, runner_options
from server.config import ServerConfig
from server.services import Services
from server.state import STATE, AppState
from testing.rtc import frames_of

MIC_RATE = 48000
MIC_FRAME = 960  # 20 ms


@dataclass
class Server:
    url: str
    app: web.Application
    http: aiohttp.ClientSession
    clients: list[Client] = field(default_factory=list)  # closed by running_server, also when a test fails
    tasks: list[asyncio.Task] = field(default_factory=list)  # e.g. /sse readers; cancelled likewise

    async def close_clients(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients:
            await client.close()

    @property
    def state(self) -> AppState:
        return self.app[STATE]

    async def post(self, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else json.dumps(body).encode()
        async with self.http.post(self.url + path, data=data) as resp:
            return resp.status, await resp.json(content_type=None)

    async def get(self, path: str) -> tuple[int, bytes]:
        async with self.http.get(self.url + path) as resp:
            return resp.status, await resp.read()

    async def sessions(self) -> int:
        _, body = await self.get("/healthz")
        return json.loads(body)["sessions"]

    async def wait_sessions(self, n: int, timeout: float = 5.0) -> bool:
        async def reached() -> bool:
            return await self.sessions() == n

        return await until(reached, timeout, step=0.1)


@asynccontextmanager
async def running_server(config: ServerConfig, services: Services) -> AsyncIterator[Server]:
    app = create_app(config, services)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(**runner_options(config))
    try:
        async with aiohttp.ClientSession() as http:
            running = Server(f"http://127.0.0.1:{server.port}", app, http)
            try:
                yield running
            finally:
                await running.close_clients()
    finally:
        await server.close()
        await services.aclose()


class ScriptedMicrophone(MediaStreamTrack):
    """A microphone that sends silence, or the audio given to play(), in real time (48 kHz, 20 ms frames)."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, np.float32)
        self._n = 0
        self._t0: float | None = None

    def play(self, pcm48: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, np.asarray(pcm48, np.float32)])

    @property
    def playing(self) -> bool:
        return len(self._pending) > 0

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        delay = self._t0 + self._n * MIC_FRAME / MIC_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = np.zeros(MIC_FRAME, np.float32)
        part, self._pending = self._pending[:MIC_FRAME], self._pending[MIC_FRAME:]
        chunk[: len(part)] = part
        frame = AudioFrame.from_ndarray(
            (np.clip(chunk, -1, 1) * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts, frame.time_base = MIC_RATE, self._n * MIC_FRAME, fractions.Fraction(1, MIC_RATE)
        self._n += 1
        return frame


@dataclass
class Client:
    """A browser stand-in: records the arrival time of every video frame and the level of every audio frame."""

    server: Server
    microphone: ScriptedMicrophone | None = None
    pc: RTCPeerConnection = field(default_factory=RTCPeerConnection)
    sessionid: str = ""
    video_times: list[float] = field(default_factory=list)
    audio_levels: list[float] = field(default_factory=list)  # peak per 20 ms frame
    _tasks: list[asyncio.Task] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.clients.append(self)

    async def offer(self, **extra: Any) -> tuple[int, dict]:
        """Negotiate as LiveTalking's client.js does; returns the /offer status and body."""
        self.pc.addTransceiver("video", direction="recvonly")
        if self.microphone is not None:
            self.pc.addTransceiver(self.microphone, direction="sendrecv")
        else:
            self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", lambda track: self._tasks.append(asyncio.create_task(self._consume(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())  # aiortc: gathering is complete here
        status, body = await self.server.post(
            "/offer", {"sdp": self.pc.localDescription.sdp, "type": self.pc.localDescription.type, **extra}
        )
        return status, body

    async def connect(self, **extra: Any) -> str:
        status, body = await self.offer(**extra)
        assert status == 200 and body["type"] == "answer", (status, body)
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
        self.sessionid = body["sessionid"]
        return self.sessionid

    async def wait_video(self, frames: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.video_times) < frames:
            assert time.monotonic() < deadline, f"only {len(self.video_times)} video frames arrived"
            await asyncio.sleep(0.05)

    def fps_between(self, t0: float, t1: float) -> float:
        n = sum(t0 <= t < t1 for t in self.video_times)
        return n / (t1 - t0)

    async def _consume(self, track: MediaStreamTrack) -> None:
        async for frame in frames_of(track):
            if track.kind == "video":
                self.video_times.append(time.monotonic())
            else:
                self.audio_levels.append(float(np.abs(frame.to_ndarray()).max()) / 32768.0)

    async def close(self) -> None:
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def offer_sdp() -> str:
    """A complete offer SDP (video and audio, recvonly) from a throwaway aiortc peer connection."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def upload(
    server: Server, sid: object, data: bytes | None, name: str = "a.wav", sid_first: bool = True
) -> tuple[int, dict]:
    """POST /humanaudio as a multipart form (the session id before the file, as our page sends it, or after)."""
    form = aiohttp.FormData(default_to_multipart=True)
    if sid_first:
        form.add_field("sessionid", str(sid))
    if data is not None:
        form.add_field("file", data, filename=name, content_type="application/octet-stream")
    if not sid_first:
        form.add_field("sessionid", str(sid))
    async with server.http.post(server.url + "/humanaudio", data=form) as resp:
        return resp.status, await resp.json(content_type=None)


async def sse_events(server: Server, sessionid: str, into: list[dict], ready: asyncio.Event) -> None:
    """Collect the /sse events of a session (until it ends or the task is cancelled)."""
    async with server.http.get(f"{server.url}/sse", params={"sessionid": sessionid}) as resp:
        assert resp.status == 200, await resp.text()
        ready.set()
        async for line in resp.content:
            text = line.decode().strip()
            if text.startswith("data:"):
                into.append(json.loads(text[5:]))


async def until(predicate, timeout: float, step: float = 0.03) -> bool:
    """Poll `predicate` (returning a bool or an awaitable bool) until it holds or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return True
        await asyncio.sleep(step)
    return False


async def is_speaking(server: Server, sessionid: str) -> bool:
    status, reply = await server.post("/is_speaking", {"sessionid": sessionid})
    assert status == 200, reply
    return reply["data"]


async def connect_with_events(
    server: Server, microphone: ScriptedMicrophone | None = None
) -> tuple[Client, list[dict], asyncio.Task]:
    """A connected client receiving video, the list its /sse events go into, and the task filling it."""
    client = Client(server, microphone=microphone)
    sid = await client.connect()
    await client.wait_video(3)
    events: list[dict] = []
    ready = asyncio.Event()
    task = asyncio.create_task(sse_events(server, sid, events, ready))
    server.tasks.append(task)
    await asyncio.wait_for(ready.wait(), 5)
    return client, events, task
