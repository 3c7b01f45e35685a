// What the browser measures of the received media (RTCPeerConnection.getStats): frame rate, latency, audio
// level; as numbers for tests and the console, and as the text of the page's Stats card.

const RATE_WINDOW_MS = 1000;  // rates are taken over at least this long, however often stats are read

// The inbound video and audio streams (with their codec) and the round trip time of the pair in use.
export function readReport(report) {
  const out = { video: null, audio: null, rttMs: null };
  for (const s of report.values()) {
    if (s.type === "inbound-rtp" && (s.kind === "video" || s.kind === "audio")) {
      out[s.kind] = { ...s, codec: report.get(s.codecId)?.mimeType ?? "" };
    } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
      if (typeof s.currentRoundTripTime === "number") out.rttMs = s.currentRoundTripTime * 1000;
    }
  }
  return out;
}

export function videoRates(v, prev, seconds) {
  const out = { fps: (v.framesDecoded - prev.framesDecoded) / seconds };
  const emitted = v.jitterBufferEmittedCount - prev.jitterBufferEmittedCount;
  if (emitted > 0) out.videoJitterMs = (1000 * (v.jitterBufferDelay - prev.jitterBufferDelay)) / emitted;
  return out;
}

export function audioRates(a, prev, seconds) {
  const energy = a.totalAudioEnergy - prev.totalAudioEnergy;  // energy = sum(level^2 * dt)
  const duration = a.totalSamplesDuration - prev.totalSamplesDuration;
  return {
    audioRms: duration > 0 ? Math.sqrt(Math.max(0, energy) / duration) : 0,
    samplesPerSecond: (a.totalSamplesReceived - prev.totalSamplesReceived) / seconds,
  };
}

// Network half round trip + time in the jitter buffer + decode time: what the browser adds.
export function browserLatencyMs(v, rttMs, jitterMs) {
  if (!v || !(v.framesDecoded > 0)) return undefined;
  const decodeMs = (1000 * (v.totalDecodeTime ?? 0)) / v.framesDecoded;
  return (rttMs ?? 0) / 2 + (jitterMs ?? 0) + decodeMs;
}

// Recent samples {t, video, audio}; each new one gets its rates against the newest one at least
// RATE_WINDOW_MS older.
export class StatsHistory {
  constructor() {
    this.samples = [];
  }

  add(now, out) {
    const prev = [...this.samples].reverse().find((h) => now - h.t >= RATE_WINDOW_MS) ?? this.samples[0];
    const seconds = prev ? (now - prev.t) / 1000 : 0;
    if (prev && out.video && prev.video) Object.assign(out, videoRates(out.video, prev.video, seconds));
    if (prev && out.audio && prev.audio) Object.assign(out, audioRates(out.audio, prev.audio, seconds));
    out.latencyMs = browserLatencyMs(out.video, out.rttMs, out.videoJitterMs);
    this.samples.push({ t: now, video: out.video, audio: out.audio });
    this.samples = this.samples.filter((h) => now - h.t <= 2 * RATE_WINDOW_MS);
    return out;
  }

  clear() {
    this.samples = [];
  }
}

export function fmt(x, digits = 0) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–";
}

// The /healthz body's plain fields, "key value, ...".
export function serverLine(server) {
  if (!server) return "–";
  const parts = Object.entries(server)
    .filter(([k, val]) => k !== "ok" && (typeof val !== "object" || val === null))
    .map(([k, val]) => `${k} ${val}`);
  return parts.join(", ") || "ok";
}

// The Stats card's text, by element id.
export function statsLines(out, replyMs, server) {
  const v = out.video;
  const a = out.audio;
  return {
    "st-video": v ? `${v.frameWidth ?? "?"}×${v.frameHeight ?? "?"} ${v.codec.replace("video/", "")}` : "–",
    "st-fps": v ? `${fmt(out.fps, 1)} (${fmt(v.framesPerSecond)} reported, ${v.framesDecoded} total)` : "–",
    "st-dropped": v ? `${v.framesDropped ?? 0} dropped, ${v.packetsLost ?? 0} packets lost` : "–",
    "st-latency": v ? `${fmt(out.latencyMs)} ms (rtt ${fmt(out.rttMs)} ms, jitter buffer ${fmt(out.videoJitterMs)} ms)` : "–",
    "st-audio": a ? `level ${fmt(a.audioLevel, 3)}, rms ${fmt(out.audioRms, 3)}` : "–",
    "st-reply": replyMs === null ? "–" : `${fmt(replyMs)} ms (send → first sentence played)`,
    "st-server": serverLine(server),
  };
}

// The numbers tests and the console read (window.avatarClient.stats()).
export function mediaSummary(out) {
  const v = out.video;
  const a = out.audio;
  return {
    connectionState: out.connectionState ?? null,
    serverSpeaking: out.serverSpeaking ?? null,
    fps: out.fps ?? null,
    latencyMs: out.latencyMs ?? null,
    video: v ? {
      framesDecoded: v.framesDecoded, framesPerSecond: v.framesPerSecond ?? null,
      framesDropped: v.framesDropped ?? 0, width: v.frameWidth, height: v.frameHeight, codec: v.codec,
    } : null,
    audio: a ? {
      totalSamplesReceived: a.totalSamplesReceived, audioLevel: a.audioLevel ?? 0,
      totalAudioEnergy: a.totalAudioEnergy ?? 0, codec: a.codec,
    } : null,
  };
}
