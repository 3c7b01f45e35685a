"""WebRTC signalling helpers: ICE configuration (no STUN/TURN unless asked) and answering an offer."""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import aioice.ice
from aiortc import MediaStreamTrack, RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription


@dataclass(frozen=True)
class IceOptions:
    stun: Sequence[str] = ()  # e.g. "stun:stun.example.org:3478"
    turn: Sequence[str] = ()  # e.g. "turn:turn.example.org:3478"
    turn_username: str | None = None
    turn_password: str | None = None
    host_addresses: Sequence[str] = field(default_factory=tuple)  # restrict host candidates (empty: all but loopback)

    def configuration(self) -> RTCConfiguration:
        servers = [RTCIceServer(urls=list(self.stun))] if self.stun else []
        if self.turn:
            servers.append(RTCIceServer(urls=list(self.turn), username=self.turn_username,
                                        credential=self.turn_password))
        return RTCConfiguration(iceServers=servers)  # an empty list: aiortc's default Google STUN is not used


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
    """ValueError naming what is missing from an offer that could never connect (so it takes no session slot).

    Every offer needs a DTLS fingerprint, ICE credentials and an RTP audio or video section. Candidates it may
    lack: the client then reaches our candidates itself and is learnt as a peer-reflexive one (a browser with
    no usable interface of its own does that); an offer that never connects is ended by the connect timeout."""
    missing = [what for what, needle in (("a DTLS fingerprint (a=fingerprint)", "a=fingerprint:"),
                                         ("an ICE user fragment (a=ice-ufrag)", "a=ice-ufrag:"),
                                         ("an ICE password (a=ice-pwd)", "a=ice-pwd:"))
               if needle not in sdp]
    media = [m for m in _MEDIA_LINE.finditer(sdp) if m.group(2) != "0" and "RTP" in m.group(3)]
    if not media:
        missing.append("an audio or video media section (m=audio / m=video over RTP, port not 0)")
    if missing:
        raise ValueError("the offer SDP lacks " + "; ".join(missing))


async def answer(pc: RTCPeerConnection, sdp: str, kind: str, tracks: Sequence[MediaStreamTrack]) -> RTCSessionDescription:
    """Attach our send tracks, apply the remote offer and return the answer (ICE gathering complete)."""
    for track in tracks:
        pc.addTrack(track)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
    await pc.setLocalDescription(await pc.createAnswer())  # aiortc returns once all candidates are gathered
    return pc.localDescription
