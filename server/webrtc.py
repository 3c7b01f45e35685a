"""WebRTC signalling helpers: ICE configuration (no STUN/TURN unless asked) and answering an offer."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import aioice.ice
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from server.errors import BadRequest

DEFAULT_TURN_REST_USER = "avatar"


def turn_rest_credentials(secret: str, user: str, ttl: float, now: float | None = None) -> tuple[str, str]:
    """Time-limited TURN credentials of the "TURN REST API" scheme (coturn's use-auth-secret): the user name is
    "<expiry unix time>:<user>", the password base64(HMAC-SHA1(secret, user name)). The TURN server checks the
    HMAC with the same secret and refuses the name once its expiry has passed."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")


class IceServer(TypedDict, total=False):
    """An RTCIceServer dictionary (the browser's and aiortc's fields)."""

    urls: list[str]
    username: str | None
    credential: str | None


@dataclass(frozen=True)
class IceOptions:
    stun: Sequence[str] = ()  # e.g. "stun:stun.example.org:3478"
    turn: Sequence[str] = ()  # e.g. "turn:turn.example.org:3478"
    turn_username: str | None = None
    turn_password: str | None = None
    host_addresses: Sequence[str] = field(default_factory=tuple)  # restrict host candidates (empty: all but loopback)
    turn_secret: str | None = None  # shared with the TURN server: credentials are made per use, time-limited
    turn_ttl: float = 86400.0

    def turn_credentials(self) -> tuple[str | None, str | None]:
        """The TURN user name and password: fresh REST credentials with a secret, else the static ones."""
        if self.turn_secret:
            return turn_rest_credentials(self.turn_secret, self.turn_username or DEFAULT_TURN_REST_USER, self.turn_ttl)
        return self.turn_username, self.turn_password

    def servers(self) -> list[IceServer]:
        """The ICE servers as a browser's RTCPeerConnection takes them (RTCIceServer dictionaries)."""
        servers: list[IceServer] = [{"urls": list(self.stun)}] if self.stun else []
        if self.turn:
            username, credential = self.turn_credentials()
            servers.append({"urls": list(self.turn), "username": username, "credential": credential})
        return servers

    def configuration(self) -> RTCConfiguration:
        # An empty list: aiortc's default Google STUN is not used.
        return RTCConfiguration(iceServers=[RTCIceServer(**server) for server in self.servers()])


def use_host_addresses(addresses: Sequence[str]) -> None:
    """Offer ICE host candidates only on these addresses (loopback allowed), process-wide.

    aioice has no per-connection setting for this and never offers 127.0.0.1 by itself, so its address
    lookup is replaced. Tests use ["127.0.0.1"] so that no packet can go to any other address.
    """
    chosen = [str(ipaddress.ip_address(a)) for a in addresses]

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (use_ipv4 and ":" not in a) or (use_ipv6 and ":" in a)]

    aioice.ice.get_host_addresses = host_addresses


_MEDIA_LINE = re.compile(r"^m=(audio|video) (\d+) (\S+)", re.MULTILINE)


def check_offer(sdp: str) -> None:
    """BadRequest naming what is missing from an offer that could never connect (so it takes no session slot).

    Every offer needs a DTLS fingerprint, ICE credentials and an RTP audio or video section. Candidates it may
    lack: the client then reaches our candidates itself and is learnt as a peer-reflexive one (a browser with
    no usable interface of its own does that); an offer that never connects is ended by the connect timeout."""
    missing = [
        what
        for what, needle in (
            ("a DTLS fingerprint (a=fingerprint)", "a=fingerprint:"),
            ("an ICE user fragment (a=ice-ufrag)", "a=ice-ufrag:"),
            ("an ICE password (a=ice-pwd)", "a=ice-pwd:"),
        )
        if needle not in sdp
    ]
    media = [m for m in _MEDIA_LINE.finditer(sdp) if m.group(2) != "0" and "RTP" in m.group(3)]
    if not media:
        missing.append("an audio or video media section (m=audio / m=video over RTP, port not 0)")
    if missing:
        raise BadRequest("the offer SDP lacks " + "; ".join(missing))


async def answer(
    pc: RTCPeerConnection, sdp: str, kind: str, tracks: Sequence[MediaStreamTrack]
) -> RTCSessionDescription:
    """Attach our send tracks, apply the remote offer and return the answer (ICE gathering complete)."""
    for track in tracks:
        pc.addTrack(track)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    await pc.setLocalDescription(await pc.createAnswer())  # aiortc returns once all candidates are gathered
    return pc.localDescription
