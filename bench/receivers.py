"""Benchmark receivers in a process of their own, so their decoding does not load the server being measured.

The parent (the process with the sessions) spawns `python -m bench.receivers` and drives it with one JSON
request line per reply line over stdin/stdout (ReceiverClient). Two kinds of peer:
- counting (capacity): counts decoded frames and finds gaps in the video RTP timestamps;
- recording (sync): keeps every audio frame and the mouth region of every video frame (testing.rtc's
  LoopbackReceiver), and answers with the audio and mouth-motion onsets after given start times, and when the
  mouth reached half of its opening (half_open_times).
Start times are time.monotonic() milliseconds, a clock both processes share.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.measure import MOUTH_ONSET, audio_onsets, mouth_darkening, video_onsets
from core.clock import VIDEO_PTS_PER_TICK
from server.media import SessionTracks
from server.webrtc import IceOptions, answer
from testing.rtc import (
    LoopbackReceiver,
    Received,
    frames_of,
    media_time_ms,
    require_loopback_namespace,
)

WHOLE_FRAME = (slice(None), slice(None))  # a recording peer keeps only the mouth region


def half_open_times(frames: list[Received], after_ms: list[float], region: tuple[slice, slice]) -> list[float | None]:
    """Per start time: when the mouth region reached half of its opening in that burst, on the receiver clock.

    What a viewer sees: the opening of each decoded frame is the mouth region's darkening against the last frame
    before the start (an open mouth shows its dark inside, its area grows with the opening), relative to the
    fully open value (the largest darkening before the next start time). The 50 % crossing is interpolated
    linearly between the presentation times of the frames on either side of it. None: nothing opened.
    """
    times = np.asarray(media_time_ms(frames, 90000))
    out: list[float | None] = []
    for start, end in zip(after_ms, [*after_ms[1:], math.inf]):
        first, stop = (int(i) for i in np.searchsorted(times, [start - 40, end - 40]))
        if first == 0 or stop <= first:
            out.append(None)
            continue
        ref = frames[first - 1].data
        opening = np.array([0.0] + [mouth_darkening(f.data, ref, region) for f in frames[first:stop]])
        t = times[first - 1 : stop]
        half = opening.max() / 2
        if 2 * half <= MOUTH_ONSET:
            out.append(None)
            continue
        i = int(np.argmax(opening >= half))  # >= 1: opening[0] is the reference itself
        out.append(float(t[i - 1] + (t[i] - t[i - 1]) * (half - opening[i - 1]) / (opening[i] - opening[i - 1])))
    return out


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


@dataclass
class CountingPeer(LoopbackReceiver):
    """Counts decoded frames instead of keeping them: N of these run beside the server being measured."""

    video_pts: list[int] = field(default_factory=list)  # frames decoded since the mark
    audio_frames: int = 0

    async def _consume(self, track, arrivals: object) -> None:
        async for frame in frames_of(track):
            if track.kind == "video":
                assert frame.pts is not None  # aiortc stamps every frame it decodes
                self.video_pts.append(frame.pts)
            else:
                self.audio_frames += 1

    def report(self) -> dict[str, int]:
        gaps = np.diff(np.asarray(self.video_pts, np.int64)) % 2**32
        missing = int(np.sum(np.maximum(gaps // VIDEO_PTS_PER_TICK - 1, 0))) if gaps.size else 0
        return {"video": len(self.video_pts), "audio": self.audio_frames, "missing": missing}


class ReceiverHost:
    """All receiving peers of a run, in one process; one request in, one reply out."""

    def __init__(self) -> None:
        self.counting: dict[str, CountingPeer] = {}
        self.recording: dict[str, LoopbackReceiver] = {}
        self.proc = psutil.Process()
        self.mark_time = time.monotonic()
        self.mark_cpu = cpu_seconds(self.proc)

    async def offer(self, peer_id: str, region: list[int] | None) -> RTCSessionDescription:
        """region [y0, y1, x0, x1]: a recording peer keeping that part of each video frame; None: counting."""
        if region is None:
            counter = self.counting[peer_id] = CountingPeer()
            return await counter.offer()
        recorder = self.recording[peer_id] = LoopbackReceiver(
            video_region=(slice(region[0], region[1]), slice(region[2], region[3]))
        )
        return await recorder.offer()

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        op = msg["op"]
        if op == "offer":
            sdp = await self.offer(msg["id"], msg.get("region"))
            return {"sdp": sdp.sdp, "type": sdp.type}
        if op == "answer":
            peer = self.recording.get(msg["id"]) or self.counting[msg["id"]]
            await peer.accept(RTCSessionDescription(msg["sdp"], msg["type"]))
            return {}
        if op == "mark":
            for peer in self.counting.values():
                peer.video_pts.clear()
                peer.audio_frames = 0
            self.mark_time, self.mark_cpu = time.monotonic(), cpu_seconds(self.proc)
            return {}
        if op == "report":
            return {
                "seconds": time.monotonic() - self.mark_time,
                "cpu": cpu_seconds(self.proc) - self.mark_cpu,
                "peers": {k: p.report() for k, p in self.counting.items()},
            }
        if op == "onsets":
            frames = self.recording[msg["id"]].frames
            return {
                "audio": audio_onsets(frames["audio"], msg["after_ms"]),
                "video": video_onsets(frames["video"], msg["after_ms"], WHOLE_FRAME),
                "half_open": half_open_times(frames["video"], msg["after_ms"], WHOLE_FRAME),
                "unmatched": self.recording[msg["id"]].unmatched,
            }
        if op == "close":
            peers = [*self.counting.values(), *self.recording.values()]
            self.counting, self.recording = {}, {}
            for peer in peers:
                await peer.close()
            return {}
        raise ValueError(f"unknown op {op!r}")


async def receiver_main() -> None:
    require_loopback_namespace()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    host = ReceiverHost()
    while line := await reader.readline():
        reply = await host.handle(json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    await host.handle({"op": "close"})


class ReceiverClient:
    """The parent's end of the receiver process."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls) -> ReceiverClient:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.receivers",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**24,
        )  # onsets of a long run come back as one line
        return cls(proc)

    async def request(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"receiver process exited (code {await self.proc.wait()}) during {msg['op']!r}")
        return json.loads(line)

    async def connect(
        self, peer_id: str, tracks: SessionTracks, region: tuple[slice, slice] | None = None
    ) -> RTCPeerConnection:
        """Send `tracks` to a new receiving peer (recording `region` of each frame, or counting if None); returns
        the sending peer connection, which the caller closes."""
        rows_cols = None if region is None else [region[0].start, region[0].stop, region[1].start, region[1].stop]
        offer = await self.request(op="offer", id=peer_id, region=rows_cols)
        pc = RTCPeerConnection(IceOptions().configuration())
        try:
            reply = await answer(pc, offer["sdp"], offer["type"], [tracks.video, tracks.audio])
            await self.request(op="answer", id=peer_id, sdp=reply.sdp, type=reply.type)
        except BaseException:
            await pc.close()
            raise
        return pc

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


if __name__ == "__main__":
    asyncio.run(receiver_main())
