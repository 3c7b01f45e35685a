"""A receiving client in a process of its own, so that a test can kill it the hard way (SIGKILL: no BYE, no
DTLS close, no RTCP goodbye). `python -m testing.peer_process URL [TOKEN]` negotiates like the pages do,
prints the session id, then takes the media until it is killed. Loopback only."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from testing.rtc import frames_of, require_loopback_namespace


async def main(url: str, token: str | None) -> None:
    require_loopback_namespace()
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    tasks = []

    async def consume(track) -> None:
        async for _ in frames_of(track):
            pass

    pc.on("track", lambda track: tasks.append(asyncio.create_task(consume(track))))
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
    async with aiohttp.ClientSession(headers=headers) as http, http.post(f"{url}/offer", json=offer) as resp:
        body = await resp.json()
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type=body["type"]))
    print(body["sessionid"], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
