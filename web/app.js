// Demo page of the avatar server: one WebRTC connection (video + audio, optional microphone) and the
// LiveTalking-compatible HTTP API. No build step, no dependencies.

const ICE_GATHER_TIMEOUT_MS = 5000;  // non-trickle signalling: wait this long for all local candidates
const CONNECT_TIMEOUT_MS = 15000;    // offer sent -> ICE/DTLS connected
const NO_VIDEO_TIMEOUT_MS = 8000;    // connected -> first decoded video frame
const STATS_INTERVAL_MS = 1000;
const RATE_WINDOW_MS = 1000;
const HEALTH_INTERVAL_MS = 5000;
const SUBTITLE_LINGER_MS = 1200;     // keep a finished sentence on screen briefly

import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(path, detail, status) {
    super(`${path}: ${detail}`);
    this.detail = detail;
    this.status = status;
  }
}

// The access token of a server started with --auth_token: taken from the page's ?token=, or asked for once
// when the server answers 401, and kept in localStorage for the next visits.
const TOKEN_KEY = "avatar-server-token";
const auth = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) localStorage.setItem(TOKEN_KEY, value);
    else localStorage.removeItem(TOKEN_KEY);
  },
  // A URL for the routes the browser opens itself (EventSource, downloads), which cannot send a header.
  url(path) {
    const token = this.token;
    if (!token) return path;
    return `${path}${path.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`;
  },
  // After a 401: ask the user (true if a new token was given).
  ask(wrong) {
    const answer = window.prompt(wrong ? "That token was not accepted. Access token:" :
                                         "This server needs an access token:");
    if (!answer || !answer.trim()) return false;
    this.token = answer.trim();
    return true;
  },
};
{
  const fromPage = new URLSearchParams(location.search).get("token");
  if (fromPage) auth.token = fromPage;
}

// POST to the API; resolves with the JSON body, rejects with a readable ApiError
// (network failure, HTTP error status or a non-zero `code`). A 401 asks for the token and tries again.
async function api(path, body, method = "POST") {
  const isForm = body instanceof FormData;
  const hasBody = method !== "GET";
  let resp;
  try {
    for (;;) {
      const sent = auth.token;
      const headers = isForm || !hasBody ? {} : { "Content-Type": "application/json" };
      if (sent) headers.Authorization = `Bearer ${sent}`;
      const payload = !hasBody ? undefined : isForm ? body : JSON.stringify(body);
      resp = await fetch(path, { method, headers, body: payload });
      if (resp.status !== 401) break;
      if (auth.token && auth.token !== sent) continue;  // answered for another request meanwhile: no question
      if (!auth.ask(Boolean(sent))) break;
    }
  } catch (e) {
    throw new ApiError(path, `network error (${e.message}). Is the server running?`, 0);
  }
  let json = null;
  try {
    json = await resp.json();
  } catch {
    // not JSON: the HTTP status says what happened
  }
  const code = json && typeof json.code === "number" ? json.code : 0;
  if (!resp.ok || code !== 0 || json === null) {
    const detail = (json && (json.msg || json.message)) || `${resp.status} ${resp.statusText}`.trim();
    throw new ApiError(path, detail, resp.status);
  }
  return json;
}

// The server's ICE servers (GET /api/ice: STUN, TURN with fresh credentials). The page's ?relay=1 sends the
// media through TURN only (iceTransportPolicy "relay"): to check a TURN set-up, or to hide the client's addresses.
async function iceConfiguration() {
  const { data } = await api("/api/ice", undefined, "GET");
  const iceServers = data?.iceServers ?? [];
  const relay = new URLSearchParams(location.search).get("relay") === "1";
  const hasTurn = iceServers.some((s) => [].concat(s.urls).some((u) => /^turns?:/.test(u)));
  if (relay && !hasTurn) {
    throw new Error(t("?relay=1 needs a TURN server, and this server has none (start it with --turn)"));
  }
  return { iceServers, iceTransportPolicy: relay ? "relay" : "all" };
}

function waitForIceGathering(pc, timeoutMs) {
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

// ---------------------------------------------------------------------------------------------------------
// UI helpers

const ui = {
  video: $("video"),
  errors: $("errors"),

  setConnState(state, label = state) {
    const pill = $("conn-state");
    pill.dataset.state = state;
    pill.dataset.i18n = label;
    pill.textContent = t(label);
    const busy = state === "connecting" || state === "connected";
    $("connect").disabled = busy;
    $("disconnect").disabled = !busy;
    $("avatar").disabled = state === "connecting";  // while connected, picking one switches to it live
    $("voice").disabled = busy;
    for (const el of document.querySelectorAll(".needs-session")) el.disabled = state !== "connected";
  },

  setSpeaking(speaking) {
    const pill = $("speak-state");
    pill.dataset.state = speaking ? "speaking" : "idle";
    pill.dataset.i18n = speaking ? "speaking" : "idle";
    pill.textContent = t(pill.dataset.i18n);
  },

  // kind: "error" | "warn". The same text is shown once at a time.
  message(text, kind = "error") {
    for (const el of ui.errors.children) if (el.dataset.text === text) return;
    const box = document.createElement("div");
    box.className = `msg ${kind}`;
    box.dataset.text = text;
    const span = document.createElement("span");
    span.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "×";
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => box.remove());
    box.append(span, close);
    ui.errors.append(box);
    while (ui.errors.children.length > 5) ui.errors.firstChild.remove();
  },

  clearMessages() {
    ui.errors.replaceChildren();
  },

  transcript(text, who) {
    const li = document.createElement("li");
    li.className = who;
    li.textContent = who === "user" ? `You: ${text}` : text;
    const list = $("transcript");
    list.append(li);
    while (list.children.length > 50) list.firstChild.remove();
    list.scrollTop = list.scrollHeight;
  },

  subtitle(text) {
    const el = $("subtitle");
    el.textContent = text;
    el.hidden = !text;
  },

  set(id, text) {
    $(id).textContent = text;
  },
};

// ---------------------------------------------------------------------------------------------------------
// The client: one session = one peer connection + its server-sent events.

class AvatarClient {
  constructor(video) {
    this.video = video;
    this.state = "idle";
    this.pc = null;
    this.stream = null;         // the <video>'s MediaStream: the received tracks
    this.sessionId = null;
    this.events = null;
    this.mic = null;            // MediaStream from getUserMedia, when the microphone is used
    this.timers = [];
    this.speaking = false;
    this.subtitle = "";
    this.recording = false;
    this.history = [];          // recent getStats samples {t, video, audio}: rates are taken over >= 1 s
    this.latest = {};           // last computed stats (what stats() returns between samples)
    this.server = null;         // last /healthz body
    this.sentAt = null;         // when the last text was sent (reply latency)
    this.replyMs = null;
    this.subtitleTimer = null;
    this.sentenceLogged = false;  // the current sentence is already in the transcript
    this.generation = 0;        // bumps on every connect/disconnect: late callbacks of an old one are ignored
  }

  // -- connection ----------------------------------------------------------------------------------------
  async connect({ avatar = "", voice = "", useMic = false } = {}) {
    if (this.pc) return;
    const gen = ++this.generation;
    ui.clearMessages();
    this.setState("connecting");
    this.prepareVideo();
    try {
      const configuration = await iceConfiguration();
      if (gen !== this.generation) return;
      const pc = new RTCPeerConnection(configuration);
      this.pc = pc;
      pc.addTransceiver("video", { direction: "recvonly" });  // m-lines: video first, then audio
      const micTrack = useMic ? await this.openMic() : null;
      if (gen !== this.generation) return;
      if (micTrack) {
        pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [this.mic] });
      } else {
        pc.addTransceiver("audio", { direction: "recvonly" });
      }
      pc.addEventListener("track", (ev) => this.onTrack(ev));
      pc.addEventListener("connectionstatechange", () => this.onConnectionState(gen));

      await pc.setLocalDescription(await pc.createOffer());
      await waitForIceGathering(pc, ICE_GATHER_TIMEOUT_MS);
      if (gen !== this.generation) return;
      const body = { sdp: pc.localDescription.sdp, type: pc.localDescription.type };
      if (avatar) body.avatar = avatar;
      if (voice) body.voice = voice;
      const answer = await api("/offer", body);
      if (gen !== this.generation) return;
      if (typeof answer.sdp !== "string" || !answer.sdp) throw new Error("the server's answer has no SDP");
      this.sessionId = String(answer.sessionid ?? "");
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      if (gen !== this.generation) return;
      this.openEvents();
      this.every(STATS_INTERVAL_MS, () => this.sample());
      this.every(HEALTH_INTERVAL_MS, () => this.pollHealth());
      this.pollHealth();
      this.after(CONNECT_TIMEOUT_MS, () => {
        if (this.pc && this.pc.connectionState !== "connected") {
          this.fail("Could not connect: ICE/DTLS did not complete. A firewall may block UDP between you and the server.");
        }
      });
    } catch (e) {
      if (gen !== this.generation) return;
      const text = e instanceof ApiError && e.status !== 0
        ? `${t("The server refused the connection")}: ${e.detail}`
        : `${t("Connect failed")}: ${e instanceof ApiError ? e.detail : e.message}`;
      this.fail(text);
    }
  }

  disconnect() {
    this.generation++;
    this.teardown();
    this.setState("idle", "disconnected");
  }

  // Report a fatal problem and drop the connection.
  fail(text) {
    this.generation++;
    ui.message(text);
    this.teardown();
    this.setState("failed", "failed");
  }

  teardown() {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    clearTimeout(this.subtitleTimer);
    if (this.events) this.events.close();
    this.events = null;
    if (this.mic) for (const t of this.mic.getTracks()) t.stop();
    this.mic = null;
    if (this.pc) this.pc.close();  // the server ends the session when the peer connection closes
    this.pc = null;
    this.sessionId = null;
    this.history = [];
    this.latest = {};
    this.recording = false;
    this.video.srcObject = null;
    this.setSpeaking(false);
    this.showSubtitle("");
    $("placeholder").hidden = false;
    $("unmute").hidden = true;
    setRecordLabel(false);
  }

  setState(state, label) {
    this.state = state;
    ui.setConnState(state, label);
    const mic = $("mic");
    // Before connecting the switch chooses whether to use the microphone; while connected it mutes it.
    mic.disabled = state === "connecting" || (state === "connected" && !this.mic);
  }

  every(ms, fn) {
    this.timers.push(setInterval(fn, ms));
  }

  after(ms, fn) {
    this.timers.push(setTimeout(fn, ms));
  }

  // -- media ---------------------------------------------------------------------------------------------
  // Called inside the Connect click: starting playback here, while the user gesture is fresh, lets the
  // video play unmuted as soon as the tracks arrive.
  prepareVideo() {
    this.stream = new MediaStream();
    this.video.muted = false;
    this.video.srcObject = this.stream;
    this.play();
  }

  play() {
    const attempt = this.video.play();
    if (!attempt) return;
    attempt.catch((e) => {
      if (e.name !== "NotAllowedError") return;  // AbortError: a newer load replaced this one
      // Autoplay with sound blocked: play muted and offer a button to unmute.
      this.video.muted = true;
      $("unmute").hidden = false;
      this.video.play().catch(() => ui.message("The browser refused to play the video.", "warn"));
    });
  }

  unmute() {
    this.video.muted = false;
    $("unmute").hidden = true;
    this.play();
  }

  onTrack(ev) {
    if (!this.stream.getTracks().includes(ev.track)) this.stream.addTrack(ev.track);
    if (ev.track.kind === "video") $("placeholder").hidden = true;
    if (this.video.paused) this.play();
  }

  async openMic() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      ui.message("This browser has no microphone access here (it needs https or localhost); continuing without it.", "warn");
      return null;
    }
    try {
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
      return this.mic.getAudioTracks()[0];
    } catch (e) {
      ui.message(`Microphone unavailable (${e.name}: ${e.message}); continuing without it.`, "warn");
      this.mic = null;
      return null;
    }
  }

  setMicEnabled(on) {
    if (this.mic) for (const t of this.mic.getAudioTracks()) t.enabled = on;
  }

  onConnectionState(gen) {
    if (gen !== this.generation || !this.pc) return;
    const s = this.pc.connectionState;
    if (s === "connected") {
      this.setState("connected", "connected");
      this.after(NO_VIDEO_TIMEOUT_MS, () => {
        if (this.pc && !(this.latest.video && this.latest.video.framesDecoded > 0)) {
          ui.message(`Connected, but no video frame arrived within ${NO_VIDEO_TIMEOUT_MS / 1000} s.`);
        }
      });
    } else if (s === "failed") {
      this.fail("The connection failed (ICE). The network between you and the server blocks the media path.");
    } else if (s === "disconnected") {
      ui.message("Connection interrupted; trying to recover…", "warn");
      this.setState("connecting", "reconnecting");
    } else if (s === "closed") {
      this.disconnect();
    }
  }

  // -- server-sent events: subtitles, errors, what the microphone heard -----------------------------------
  openEvents() {
    const source = new EventSource(auth.url(`/sse?sessionid=${encodeURIComponent(this.sessionId)}`));
    this.events = source;
    source.onmessage = (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;  // keep-alive or a comment
      }
      this.onEvent(data);
    };
    source.onerror = () => {
      // EventSource retries by itself; a stream that cannot be opened at all is reported once.
      if (source.readyState === EventSource.CLOSED && this.events === source) {
        ui.message("Subtitle/event stream unavailable.", "warn");
        this.events = null;
      }
    };
  }

  onEvent(data) {
    const kind = data.status ?? data.event ?? data.type ?? data.name ?? "";
    const text = data.text ?? data.msg ?? data.message ?? "";
    if (kind === "start") {
      if (this.sentAt !== null) {
        this.replyMs = performance.now() - this.sentAt;
        this.sentAt = null;
      }
      this.setSpeaking(true);
      this.showSubtitle(text);
      this.sentenceLogged = Boolean(text);
      if (text) ui.transcript(text, "avatar");
    } else if (kind === "subtitle") {
      // Streamed speech (realtime API): the words arrive as deltas while the sentence plays.
      this.showSubtitle(this.subtitle + text);
    } else if (kind === "end") {
      if (text && !this.sentenceLogged) ui.transcript(text, "avatar");
      this.sentenceLogged = true;
      clearTimeout(this.subtitleTimer);
      this.subtitleTimer = setTimeout(() => {
        this.showSubtitle("");
        this.setSpeaking(false);
      }, SUBTITLE_LINGER_MS);
    } else if (kind === "user_speech_start") {
      this.showSubtitle("");  // the user barged in: the avatar stops
    } else if (kind === "user_text") {
      if (text) ui.transcript(text, "user");
      this.sentAt = performance.now();
    } else if (kind.endsWith("error")) {
      const what = {
        tts_error: "Speech synthesis failed",
        llm_error: "The language model failed",
        asr_error: "Speech recognition failed",
      }[kind] || kind;
      ui.message(text ? `${t(what)}: ${text}` : t(what));
      this.sentAt = null;
    }
  }

  showSubtitle(text) {
    if (text) clearTimeout(this.subtitleTimer);
    this.subtitle = text;
    ui.subtitle(text);
  }

  setSpeaking(on) {
    this.speaking = on;
    ui.setSpeaking(on);
  }

  // -- API calls on the session ---------------------------------------------------------------------------
  requireSession() {
    if (!this.sessionId) throw new Error("not connected");
    return this.sessionId;
  }

  async say(text, type = "echo", interrupt = true) {
    const sessionid = this.requireSession();
    if (!text.trim()) throw new Error("nothing to say");
    this.sentAt = performance.now();
    if (type === "chat") ui.transcript(text, "user");
    await api("/human", { sessionid, text, type, interrupt });
  }

  async interrupt() {
    await api("/interrupt_talk", { sessionid: this.requireSession() });
    this.sentAt = null;
    this.showSubtitle("");
    this.setSpeaking(false);
  }

  async sendAudioFile(file) {
    const form = new FormData();
    form.append("sessionid", this.requireSession());  // first: the server checks it before reading the file
    form.append("file", file, file.name);
    await api("/humanaudio", form);
  }

  async setAvatar(avatar) {
    await api("/set_avatar", { sessionid: this.requireSession(), avatar });
  }

  async playAction(audiotype) {
    await api("/set_audiotype", { sessionid: this.requireSession(), audiotype });
  }

  // Returns the recording's download URL when a recording was stopped, else null.
  async toggleRecording() {
    const sessionid = this.requireSession();
    const type = this.recording ? "end_record" : "start_record";
    await api("/record", { sessionid, type });
    this.recording = !this.recording;
    return this.recording ? null : auth.url(`/record/${encodeURIComponent(sessionid)}`);
  }

  // -- stats ---------------------------------------------------------------------------------------------
  async pollHealth() {
    try {
      const resp = await fetch("/healthz");
      this.server = resp.ok ? await resp.json() : null;
    } catch {
      this.server = null;
    }
  }

  async sample() {
    const pc = this.pc;
    if (!pc) return;
    const report = await pc.getStats();
    const now = performance.now();
    const out = { connectionState: pc.connectionState, video: null, audio: null, rttMs: null };
    for (const s of report.values()) {
      if (s.type === "inbound-rtp" && (s.kind === "video" || s.kind === "audio")) {
        out[s.kind] = { ...s, codec: report.get(s.codecId)?.mimeType ?? "" };
      } else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") {
        if (typeof s.currentRoundTripTime === "number") out.rttMs = s.currentRoundTripTime * 1000;
      }
    }
    // Rates against the newest sample at least RATE_WINDOW_MS old, however often stats() is called.
    const prev = [...this.history].reverse().find((h) => now - h.t >= RATE_WINDOW_MS) ?? this.history[0];
    const v = out.video;
    const a = out.audio;
    if (prev && v && prev.video) {
      const dt = (now - prev.t) / 1000;
      out.fps = (v.framesDecoded - prev.video.framesDecoded) / dt;
      const emitted = v.jitterBufferEmittedCount - prev.video.jitterBufferEmittedCount;
      if (emitted > 0) out.videoJitterMs = (1000 * (v.jitterBufferDelay - prev.video.jitterBufferDelay)) / emitted;
    }
    if (prev && a && prev.audio) {
      const dt = (now - prev.t) / 1000;
      const energy = a.totalAudioEnergy - prev.audio.totalAudioEnergy;
      const seconds = a.totalSamplesDuration - prev.audio.totalSamplesDuration;
      out.audioRms = seconds > 0 ? Math.sqrt(Math.max(0, energy) / seconds) : 0;  // energy = sum(level^2 * dt)
      out.samplesPerSecond = (a.totalSamplesReceived - prev.audio.totalSamplesReceived) / dt;
    }
    if (v && v.framesDecoded > 0) {
      // Network half round trip + time in the jitter buffer + decode time: what the browser adds.
      const decodeMs = (1000 * (v.totalDecodeTime ?? 0)) / v.framesDecoded;
      out.latencyMs = (out.rttMs ?? 0) / 2 + (out.videoJitterMs ?? 0) + decodeMs;
    }
    this.history.push({ t: now, video: v, audio: a });
    this.history = this.history.filter((h) => now - h.t <= 2 * RATE_WINDOW_MS);
    this.latest = out;
    if (this.sessionId) {
      try {
        const r = await api("/is_speaking", { sessionid: this.sessionId });
        if (this.pc === pc && !this.subtitle) this.setSpeaking(Boolean(r.data));
        out.serverSpeaking = Boolean(r.data);
      } catch {
        // the subtitles still show speech; a failing poll is not worth an error box every second
      }
    }
    if (this.pc === pc) this.render(out);
  }

  render(out) {
    const v = out.video;
    const a = out.audio;
    const fmt = (x, d = 0) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
    ui.set("st-video", v ? `${v.frameWidth ?? "?"}×${v.frameHeight ?? "?"} ${v.codec.replace("video/", "")}` : "–");
    ui.set("st-fps", v ? `${fmt(out.fps, 1)} (${fmt(v.framesPerSecond)} reported, ${v.framesDecoded} total)` : "–");
    ui.set("st-dropped", v ? `${v.framesDropped ?? 0} dropped, ${v.packetsLost ?? 0} packets lost` : "–");
    ui.set("st-latency", v ? `${fmt(out.latencyMs)} ms (rtt ${fmt(out.rttMs)} ms, jitter buffer ${fmt(out.videoJitterMs)} ms)` : "–");
    ui.set("st-audio", a ? `level ${fmt(a.audioLevel, 3)}, rms ${fmt(out.audioRms, 3)}` : "–");
    ui.set("st-reply", this.replyMs === null ? "–" : `${fmt(this.replyMs)} ms (send → first sentence played)`);
    const srv = this.server;
    if (srv) {
      const parts = Object.entries(srv)
        .filter(([k, val]) => k !== "ok" && (typeof val !== "object" || val === null))
        .map(([k, val]) => `${k} ${val}`);
      ui.set("st-server", parts.join(", ") || "ok");
    } else {
      ui.set("st-server", "–");
    }
  }

  // A snapshot for tests and the console: fresh numbers from getStats.
  async stats() {
    await this.sample();
    const out = this.latest;
    return {
      state: this.state,
      sessionId: this.sessionId,
      connectionState: out.connectionState ?? null,
      speaking: this.speaking,
      serverSpeaking: out.serverSpeaking ?? null,
      subtitle: this.subtitle,
      playing: !this.video.paused && this.video.readyState >= 2,
      muted: this.video.muted,
      fps: out.fps ?? null,
      latencyMs: out.latencyMs ?? null,
      replyMs: this.replyMs,
      video: out.video ? {
        framesDecoded: out.video.framesDecoded, framesPerSecond: out.video.framesPerSecond ?? null,
        framesDropped: out.video.framesDropped ?? 0, width: out.video.frameWidth, height: out.video.frameHeight,
        codec: out.video.codec,
      } : null,
      audio: out.audio ? {
        totalSamplesReceived: out.audio.totalSamplesReceived, audioLevel: out.audio.audioLevel ?? 0,
        totalAudioEnergy: out.audio.totalAudioEnergy ?? 0, codec: out.audio.codec,
      } : null,
      server: this.server,
    };
  }
}

// ---------------------------------------------------------------------------------------------------------
// Wiring

function setRecordLabel(recording) {
  const button = $("record");
  button.dataset.i18n = recording ? "Stop recording" : "Start recording";  // kept on a change of language
  button.textContent = t(button.dataset.i18n);
}

const client = new AvatarClient(ui.video);

// Run an action from a button; show its failure instead of leaving an unhandled rejection.
function guarded(fn) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    try {
      await fn(ev);
    } catch (e) {
      ui.message(e.message);
    }
  };
}

$("connect").addEventListener("click", () =>
  client.connect({ avatar: $("avatar").value, voice: $("voice").value, useMic: $("mic").checked }));

// The avatar picker: the server's avatars (GET /api/avatars) with a thumbnail; picking one while connected
// switches the session to it (POST /set_avatar) on the same connection.
const avatars = new Map();
function showAvatar(id) {
  const thumb = $("avatar-thumb");
  const avatar = avatars.get(id);
  thumb.hidden = !avatar;
  if (avatar) thumb.src = auth.url(avatar.thumbnail);
}
async function loadAvatars() {
  const { data } = await api("/api/avatars", undefined, "GET");
  const picker = $("avatar");
  picker.replaceChildren();
  for (const a of data.avatars.filter((a) => !a.error)) {
    avatars.set(a.id, a);
    const option = new Option(`${a.id} (${a.width}×${a.height})`, a.id);
    option.title = `${a.frames} ${t("frames")}, ${a.source}`;
    picker.add(option);
    if (a.default) picker.value = a.id;
  }
  showAvatar(picker.value);
}
loadAvatars().catch((e) => ui.message(e.message));
$("avatar").addEventListener("change", guarded(async (ev) => {
  showAvatar(ev.target.value);
  if (client.state === "connected") await client.setAvatar(ev.target.value);
}));

// The voices (TTS backends) this server offers; the first is its default.
(async () => {
  try {
    const health = await (await fetch("/healthz")).json();
    for (const name of health.voices ?? []) $("voice").add(new Option(`voice: ${name}`, name));
  } catch {
    $("voice").hidden = true;
  }
})();
$("disconnect").addEventListener("click", () => client.disconnect());
$("unmute").addEventListener("click", () => client.unmute());
$("mic").addEventListener("change", (ev) => client.setMicEnabled(ev.target.checked));

$("say-form").addEventListener("submit", guarded(async () => {
  const text = $("text").value;
  await client.say(text, $("mode").value, $("interrupt-on-send").checked);
  $("text").value = "";
}));
$("text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey && !$("send").disabled) {
    ev.preventDefault();
    $("say-form").requestSubmit();
  }
});
$("interrupt").addEventListener("click", guarded(() => client.interrupt()));
$("upload").addEventListener("click", guarded(async () => {
  const file = $("audio-file").files[0];
  if (!file) throw new Error("Choose an audio file first.");
  await client.sendAudioFile(file);
}));
$("play-action").addEventListener("click", guarded(async () => {
  const n = Number.parseInt($("audiotype").value, 10);
  if (!Number.isInteger(n) || n < 1) throw new Error("The action number must be a whole number ≥ 1.");
  await client.playAction(n);
}));
$("record").addEventListener("click", guarded(async () => {
  const url = await client.toggleRecording();
  setRecordLabel(client.recording);
  const link = $("record-link");
  link.hidden = !url;
  if (url) {
    link.href = url;
    link.download = `avatar-${client.sessionId}.mp4`;
  }
}));

window.addEventListener("pagehide", () => client.disconnect());

// Small surface for tests and the developer console.
window.avatarClient = {
  connect: (options) => client.connect(options),
  disconnect: () => client.disconnect(),
  say: (text, type = "echo", interrupt = true) => client.say(text, type, interrupt),
  interrupt: () => client.interrupt(),
  setAvatar: (avatar) => client.setAvatar(avatar),
  stats: () => client.stats(),
  get state() { return client.state; },
  get sessionId() { return client.sessionId; },
  get pc() { return client.pc; },
};
