// WebRTC signalling with the server: its ICE servers (GET /api/ice), then one non-trickle offer/answer
// exchange (POST /offer) carrying every local candidate.

import { api } from "./api.js";
import { t } from "./i18n.js";

const ICE_GATHER_TIMEOUT_MS = 5000;  // non-trickle signalling: wait this long for all local candidates

export function hasTurn(iceServers) {
  return iceServers.some((s) => [].concat(s.urls).some((u) => /^turns?:/.test(u)));
}

// The page's ?relay=1 sends the media through TURN only (iceTransportPolicy "relay"): to check a TURN
// set-up, or to hide the client's addresses.
export function iceConfigurationFor(iceServers, search) {
  const relay = new URLSearchParams(search).get("relay") === "1";
  if (relay && !hasTurn(iceServers)) {
    throw new Error(t("?relay=1 needs a TURN server, and this server has none (start it with --turn)"));
  }
  return { iceServers, iceTransportPolicy: relay ? "relay" : "all" };
}

// The server's ICE servers (STUN, TURN with fresh credentials) for a new RTCPeerConnection.
export async function iceConfiguration(search) {
  const { data } = await api("/api/ice", undefined, "GET");
  return iceConfigurationFor(data?.iceServers ?? [], search);
}

export function waitForIceGathering(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    // On timeout the offer goes out with the candidates gathered so far (usually enough on a LAN).
    const timer = setTimeout(done, timeoutMs);
    function done() {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    }
    function check() {
      if (pc.iceGatheringState === "complete") done();
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

// The /offer body: the SDP and the optional avatar and voice of the session.
export function offerBody(description, { avatar = "", voice = "" } = {}) {
  const body = { sdp: description.sdp, type: description.type };
  if (avatar) body.avatar = avatar;
  if (voice) body.voice = voice;
  return body;
}

// Offer, answer: resolves with the session id, or null once stale() says a newer connect/disconnect
// replaced this one (nothing more is done for it then).
export async function negotiate(pc, choices, stale) {
  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc, ICE_GATHER_TIMEOUT_MS);
  if (stale()) return null;
  const answer = await api("/offer", offerBody(pc.localDescription, choices));
  if (stale()) return null;
  if (typeof answer.sdp !== "string" || !answer.sdp) throw new Error("the server's answer has no SDP");
  await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  return stale() ? null : String(answer.sessionid ?? "");
}
