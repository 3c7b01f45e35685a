// One session = one peer connection (video + audio, optional microphone) + its server-sent events, and the
// session's API calls.

import { api, ApiError, auth } from "./api.js";
import { Conversation, openEvents } from "./events.js";
import { t } from "./i18n.js";
import { Player } from "./media.js";
import { openMic, setMicEnabled, stopMic } from "./mic.js";
import { iceConfiguration, negotiate } from "./signalling.js";
import { mediaSummary, readReport, StatsHistory, statsLines } from "./stats.js";
import * as ui from "./ui.js";

const CONNECT_TIMEOUT_MS = 15000;    // offer sent -> ICE/DTLS connected
const NO_VIDEO_TIMEOUT_MS = 8000;    // connected -> first decoded video frame
const STATS_INTERVAL_MS = 1000;
const HEALTH_INTERVAL_MS = 5000;

// The text shown when connecting failed: the server's refusal, or what went wrong here.
function connectFailure(e) {
  if (e instanceof ApiError && e.status !== 0) return `${t("The server refused the connection")}: ${e.detail}`;
  return `${t("Connect failed")}: ${e instanceof ApiError ? e.detail : e.message}`;
}

export class AvatarClient {
  constructor(video) {
    this.player = new Player(video);
    this.conversation = new Conversation(ui);
    this.state = "idle";
    this.pc = null;
    this.sessionId = null;
    this.events = null;
    this.mic = null;            // MediaStream from getUserMedia, when the microphone is used
    this.timers = [];
    this.recording = false;
    this.history = new StatsHistory();
    this.latest = {};           // last computed stats (what stats() returns between samples)
    this.server = null;         // last /healthz body
    this.generation = 0;        // bumps on every connect/disconnect: late callbacks of an old one are ignored
  }

  // -- connection ----------------------------------------------------------------------------------------
  async connect({ avatar = "", voice = "", useMic = false } = {}) {
    if (this.pc) return;
    const gen = ++this.generation;
    const stale = () => gen !== this.generation;
    ui.clearMessages();
    this.setState("connecting");
    this.player.prepare();
    try {
      const configuration = await iceConfiguration(location.search);
      if (stale()) return;
      const pc = new RTCPeerConnection(configuration);
      this.pc = pc;
      if (!(await this.addTransceivers(pc, useMic))) return;
      pc.addEventListener("track", (ev) => this.player.addTrack(ev.track));
      pc.addEventListener("connectionstatechange", () => this.onConnectionState(gen));
      const sessionId = await negotiate(pc, { avatar, voice }, stale);
      if (sessionId === null) return;
      this.sessionId = sessionId;
      this.started();
    } catch (e) {
      if (!stale()) this.fail(connectFailure(e));
    }
  }

  // m-lines: video first, then audio (sent too when the microphone is used). False if the microphone
  // was asked for and the connection went away meanwhile.
  async addTransceivers(pc, useMic) {
    pc.addTransceiver("video", { direction: "recvonly" });
    const mic = useMic ? await openMic(ui.warn) : null;
    if (this.pc !== pc) {
      stopMic(mic);
      return false;
    }
    this.mic = mic;
    const micTrack = this.mic?.getAudioTracks()[0];
    if (micTrack) pc.addTransceiver(micTrack, { direction: "sendrecv", streams: [this.mic] });
    else pc.addTransceiver("audio", { direction: "recvonly" });
    return true;
  }

  // The answer is in: events, stats, and a deadline for ICE/DTLS.
  started() {
    this.events = openEvents(auth.url(`/sse?sessionid=${encodeURIComponent(this.sessionId)}`),
                             (event) => this.conversation.handle(event), () => this.eventsLost());
    this.every(STATS_INTERVAL_MS, () => this.sample());
    this.every(HEALTH_INTERVAL_MS, () => this.pollHealth());
    this.pollHealth();
    this.after(CONNECT_TIMEOUT_MS, () => {
      if (this.pc && this.pc.connectionState !== "connected") {
        this.fail("Could not connect: ICE/DTLS did not complete. A firewall may block UDP between you and the server.");
      }
    });
  }

  eventsLost() {
    ui.warn("Subtitle/event stream unavailable.");
    this.events = null;
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
    for (const timer of this.timers) clearInterval(timer);
    this.timers = [];
    if (this.events) this.events.close();
    this.events = null;
    stopMic(this.mic);
    this.mic = null;
    if (this.pc) this.pc.close();  // the server ends the session when the peer connection closes
    this.pc = null;
    this.sessionId = null;
    this.history.clear();
    this.latest = {};
    this.recording = false;
    this.player.clear();
    this.conversation.close();
    ui.setRecordLabel(false);
  }

  setState(state, label) {
    this.state = state;
    ui.setConnState(state, label);
    // Before connecting the switch chooses whether to use the microphone; while connected it mutes it.
    ui.$("mic").disabled = state === "connecting" || (state === "connected" && !this.mic);
  }

  every(ms, fn) {
    this.timers.push(setInterval(fn, ms));
  }

  after(ms, fn) {
    this.timers.push(setTimeout(fn, ms));
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
      ui.warn("Connection interrupted; trying to recover…");
      this.setState("connecting", "reconnecting");
    } else if (s === "closed") {
      this.disconnect();
    }
  }

  setMicEnabled(on) {
    setMicEnabled(this.mic, on);
  }

  unmute() {
    this.player.unmute();
  }

  // -- API calls on the session ---------------------------------------------------------------------------
  requireSession() {
    if (!this.sessionId) throw new Error("not connected");
    return this.sessionId;
  }

  async say(text, type = "echo", interrupt = true) {
    const sessionid = this.requireSession();
    if (!text.trim()) throw new Error("nothing to say");
    this.conversation.sent();
    if (type === "chat") ui.transcript(text, "user");
    await api("/human", { sessionid, text, type, interrupt });
  }

  async interrupt() {
    await api("/interrupt_talk", { sessionid: this.requireSession() });
    this.conversation.interrupted();
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
    const out = this.history.add(performance.now(), { connectionState: pc.connectionState, ...readReport(report) });
    this.latest = out;
    if (this.sessionId) out.serverSpeaking = await this.pollSpeaking(pc);
    if (this.pc === pc) ui.setTexts(statsLines(out, this.conversation.replyMs, this.server));
  }

  // The server's speaking state (undefined when the poll failed: the subtitles still show speech, and a failing
  // poll is not worth an error box every second).
  async pollSpeaking(pc) {
    try {
      const r = await api("/is_speaking", { sessionid: this.sessionId });
      if (this.pc === pc) this.conversation.polled(Boolean(r.data));
      return Boolean(r.data);
    } catch {
      return undefined;
    }
  }

  // A snapshot for tests and the console: fresh numbers from getStats.
  async stats() {
    await this.sample();
    const c = this.conversation;
    return {
      state: this.state,
      sessionId: this.sessionId,
      speaking: c.speaking,
      subtitle: c.subtitle,
      playing: this.player.playing,
      muted: this.player.video.muted,
      replyMs: c.replyMs,
      ...mediaSummary(this.latest),
      server: this.server,
    };
  }
}
