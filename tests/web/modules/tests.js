// Unit tests of the page's modules (web/*.js) for the pure logic: event parsing and the conversation state,
// i18n look-up, the ICE configuration, stats and their text, the API's token handling with a stubbed fetch.
// Results go to window.moduleTests for the pytest that drives this page.

import { api, ApiError, auth, keepTokenFrom } from "/api.js";
import { Conversation, errorMessage, EVENT, parseEvent } from "/events.js";
import { language, setLanguage, t } from "/i18n.js";
import { setMicEnabled } from "/mic.js";
import { hasTurn, iceConfigurationFor, offerBody, waitForIceGathering } from "/signalling.js";
import { fmt, mediaSummary, readReport, serverLine, StatsHistory, statsLines } from "/stats.js";

const tests = [];
const test = (name, fn) => tests.push({ name, fn });

function assertEqual(actual, expected, what = "") {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) throw new Error(`${what} expected ${e}, got ${a}`);
}

function assert(condition, what) {
  if (!condition) throw new Error(what);
}

async function rejects(promise) {
  try {
    await promise;
  } catch (e) {
    return e;
  }
  throw new Error("expected a rejection");
}

const tick = (ms = 0) => new Promise((resolve) => setTimeout(resolve, ms));

// -- events -----------------------------------------------------------------------------------------------

test("parseEvent reads LiveTalking's and our field names", () => {
  assertEqual(parseEvent('{"status": "start", "text": "Hi"}'), { kind: "start", text: "Hi" });
  assertEqual(parseEvent('{"event": "llm_error", "msg": "HTTP 401"}'), { kind: "llm_error", text: "HTTP 401" });
  assertEqual(parseEvent('{"type": "user_text", "message": "hello"}'), { kind: "user_text", text: "hello" });
  assertEqual(parseEvent('{"name": "end"}'), { kind: "end", text: "" });
});

test("parseEvent drops keep-alives and non-objects", () => {
  assertEqual(parseEvent(""), null);
  assertEqual(parseEvent(": ping"), null);
  assertEqual(parseEvent("42"), null);
  assertEqual(parseEvent("null"), null);
});

test("errorMessage names the failed service, and ignores other kinds", () => {
  assertEqual(errorMessage({ kind: "tts_error", text: "" }), "Speech synthesis failed");
  assertEqual(errorMessage({ kind: "llm_error", text: "HTTP 401" }), "The language model failed: HTTP 401");
  assertEqual(errorMessage({ kind: "render_error", text: "x" }), "Rendering failed: x");
  assertEqual(errorMessage({ kind: "unknown_error", text: "x" }), "unknown_error: x");  // a kind without a title
  assertEqual(errorMessage({ kind: EVENT.START, text: "x" }), null);
});

function fakeView() {
  const log = { speaking: [], subtitles: [], transcript: [], messages: [] };
  return {
    log,
    setSpeaking: (on) => log.speaking.push(on),
    subtitle: (text) => log.subtitles.push(text),
    transcript: (text, who) => log.transcript.push([who, text]),
    message: (text) => log.messages.push(text),
  };
}

test("a sentence: start shows and logs it, streamed words append, end clears it after the linger", async () => {
  const view = fakeView();
  const c = new Conversation(view, 0);
  c.handle({ kind: EVENT.START, text: "Hello" });
  assert(c.speaking && c.subtitle === "Hello", "speaking with its subtitle");
  c.handle({ kind: EVENT.SUBTITLE, text: " there" });
  assertEqual(c.subtitle, "Hello there");
  c.handle({ kind: EVENT.END, text: "Hello there" });
  assertEqual(view.log.transcript, [["avatar", "Hello"]], "logged once:");
  await tick(10);
  assert(!c.speaking && c.subtitle === "", "silent after the linger");
});

test("a streamed sentence (no text at start) is logged at its end", () => {
  const view = fakeView();
  const c = new Conversation(view, 60_000);
  c.handle({ kind: EVENT.START, text: "" });
  c.handle({ kind: EVENT.END, text: "Streamed" });
  assertEqual(view.log.transcript, [["avatar", "Streamed"]]);
  c.close();
  assert(!c.speaking && c.subtitle === "", "close silences");
});

test("reply latency runs from what the user said to the next sentence", async () => {
  const c = new Conversation(fakeView(), 0);
  c.handle({ kind: EVENT.USER_TEXT, text: "question" });
  await tick(20);
  c.handle({ kind: EVENT.START, text: "answer" });
  assert(c.replyMs >= 15, `replyMs ${c.replyMs}`);
  c.sent();
  c.handle({ kind: "asr_error", text: "" });  // a failed service: no reply is coming
  assertEqual(c.sentAt, null);
});

test("an error event shows a message; unknown kinds change nothing", () => {
  const view = fakeView();
  const c = new Conversation(view, 0);
  c.handle({ kind: "no_such_event", text: "x" });
  c.handle({ kind: "llm_error", text: "down" });
  assertEqual(view.log.messages, ["The language model failed: down"]);
  assertEqual(view.log.speaking, []);
});

test("the speaking poll does not override a subtitle on screen; barge-in clears it", () => {
  const c = new Conversation(fakeView(), 60_000);
  c.handle({ kind: EVENT.START, text: "Hi" });
  c.polled(false);
  assert(c.speaking, "the subtitle decides");
  c.handle({ kind: EVENT.USER_SPEECH_START, text: "" });
  assertEqual(c.subtitle, "");
  c.polled(false);
  assert(!c.speaking, "the poll decides once no subtitle shows");
  c.close();
});

// -- i18n -------------------------------------------------------------------------------------------------

test("t() translates into the chosen language and falls back to the English", () => {
  const before = language();
  try {
    setLanguage("zh");
    assertEqual(t("Connect"), "连接");
    assertEqual(t("not in the table"), "not in the table");
    assertEqual(document.getElementById("conn-state").textContent, "未连接", "marked element:");
    setLanguage("xx");  // unknown: ignored
    assertEqual(language(), "zh");
    setLanguage("en");
    assertEqual(t("Connect"), "Connect");
  } finally {
    setLanguage(before);
  }
});

// -- signalling -------------------------------------------------------------------------------------------

const STUN = { urls: "stun:127.0.0.1:3478" };
const TURN = { urls: ["stun:127.0.0.1:3478", "turn:127.0.0.1:3478?transport=udp"], username: "u", credential: "c" };

test("hasTurn finds turn: and turns: URLs, in a string or a list", () => {
  assert(!hasTurn([]) && !hasTurn([STUN]), "no TURN");
  assert(hasTurn([STUN, TURN]), "TURN in a list");
  assert(hasTurn([{ urls: "turns:example.org:5349" }]), "TURNS as a string");
});

test("the ICE configuration: all candidates, or relay only with ?relay=1", () => {
  assertEqual(iceConfigurationFor([STUN], ""), { iceServers: [STUN], iceTransportPolicy: "all" });
  assertEqual(iceConfigurationFor([TURN], "?relay=1").iceTransportPolicy, "relay");
  assertEqual(iceConfigurationFor([TURN], "?relay=0").iceTransportPolicy, "all");
});

test("?relay=1 without a TURN server says why", () => {
  let error = null;
  try {
    iceConfigurationFor([STUN], "?token=x&relay=1");
  } catch (e) {
    error = e;
  }
  assert(error && error.message.includes("needs a TURN server"), `got ${error}`);
});

test("the offer carries the avatar and voice only when chosen", () => {
  const sdp = { sdp: "v=0", type: "offer" };
  assertEqual(offerBody(sdp), { sdp: "v=0", type: "offer" });
  assertEqual(offerBody(sdp, { avatar: "demo", voice: "" }), { sdp: "v=0", type: "offer", avatar: "demo" });
});

test("ICE gathering: done on 'complete', or when the wait runs out", async () => {
  const pc = new EventTarget();
  pc.iceGatheringState = "gathering";
  const waited = waitForIceGathering(pc, 60_000);
  pc.iceGatheringState = "complete";
  pc.dispatchEvent(new Event("icegatheringstatechange"));
  await waited;
  const slow = new EventTarget();
  slow.iceGatheringState = "gathering";
  await waitForIceGathering(slow, 10);  // resolves with what was gathered so far
});

// -- stats ------------------------------------------------------------------------------------------------

function fakeReport(video, audio, rtt) {
  return new Map([
    ["v", { type: "inbound-rtp", kind: "video", codecId: "c1", ...video }],
    ["a", { type: "inbound-rtp", kind: "audio", codecId: "c2", ...audio }],
    ["c1", { type: "codec", mimeType: "video/VP8" }],
    ["c2", { type: "codec", mimeType: "audio/opus" }],
    ["p", { type: "candidate-pair", nominated: true, state: "succeeded", currentRoundTripTime: rtt }],
    ["q", { type: "candidate-pair", nominated: false, state: "failed", currentRoundTripTime: 9 }],
  ]);
}

const video = (frames, jitterDelay, emitted) => ({
  framesDecoded: frames, jitterBufferDelay: jitterDelay, jitterBufferEmittedCount: emitted,
  totalDecodeTime: frames * 0.002, frameWidth: 512, frameHeight: 512, framesPerSecond: 25,
});
const audio = (energy, duration, samples) => ({
  totalAudioEnergy: energy, totalSamplesDuration: duration, totalSamplesReceived: samples, audioLevel: 0.5,
});

test("readReport picks the inbound streams, their codecs and the nominated pair's round trip", () => {
  const out = readReport(fakeReport(video(10, 0, 0), audio(0, 0, 0), 0.02));
  assertEqual(out.video.codec, "video/VP8");
  assertEqual(out.audio.codec, "audio/opus");
  assertEqual(out.rttMs, 20);
});

test("rates over one second: fps, jitter buffer, audio RMS and sample rate, browser latency", () => {
  const history = new StatsHistory();
  const first = history.add(1000, readReport(fakeReport(video(100, 1, 100), audio(1, 10, 480_000), 0.02)));
  assertEqual(first.fps, undefined, "no rate from one sample:");
  const out = history.add(2000, readReport(fakeReport(video(125, 2, 125), audio(1.25, 11, 528_000), 0.02)));
  assertEqual(out.fps, 25);
  assertEqual(out.videoJitterMs, 40);
  assertEqual(out.audioRms, 0.5);
  assertEqual(out.samplesPerSecond, 48_000);
  assertEqual(Math.round(out.latencyMs), 10 + 40 + 2);  // rtt/2 + jitter buffer + decode
  history.clear();
  assertEqual(history.add(3000, readReport(fakeReport(video(150, 3, 150), audio(0, 0, 0), 0.02))).fps, undefined);
});

test("rates are taken over at least a second, however often stats are read", () => {
  const history = new StatsHistory();
  history.add(0, { video: video(0, 0, 0), audio: null, rttMs: null });
  history.add(500, { video: video(12, 0, 0), audio: null, rttMs: null });
  const out = history.add(1100, { video: video(27, 0, 0), audio: null, rttMs: null });
  assertEqual(Math.round(out.fps), Math.round(27 / 1.1), "against the sample 1.1 s old:");
});

test("the Stats card's text", () => {
  assertEqual(fmt(NaN), "–");
  assertEqual(fmt(1.234, 1), "1.2");
  const empty = statsLines({ video: null, audio: null }, null, null);
  assert(Object.values(empty).every((text) => text === "–"), JSON.stringify(empty));
  const out = { video: { ...video(50, 0, 0), codec: "video/VP8", framesDropped: 1 }, fps: 25, latencyMs: 60, rttMs: 2 };
  const lines = statsLines(out, 812.4, { ok: true, sessions: 1, voices: ["a"] });
  assertEqual(lines["st-video"], "512×512 VP8");
  assertEqual(lines["st-fps"], "25.0 (25 reported, 50 total)");
  assertEqual(lines["st-dropped"], "1 dropped, 0 packets lost");
  assertEqual(lines["st-reply"], "812 ms (send → first sentence played)");
  assertEqual(lines["st-server"], "sessions 1");
  assertEqual(serverLine({ ok: true }), "ok");
});

test("the stats summary for tests and the console", () => {
  assertEqual(mediaSummary({}), {
    connectionState: null, serverSpeaking: null, fps: null, latencyMs: null, video: null, audio: null });
  const s = mediaSummary({ video: { ...video(5, 0, 0), codec: "video/VP8" }, audio: { ...audio(2, 1, 9), codec: "audio/opus" } });
  assertEqual(s.video, { framesDecoded: 5, framesPerSecond: 25, framesDropped: 0, width: 512, height: 512, codec: "video/VP8" });
  assertEqual(s.audio, { totalSamplesReceived: 9, audioLevel: 0.5, totalAudioEnergy: 2, codec: "audio/opus" });
});

// -- mic --------------------------------------------------------------------------------------------------

test("muting the microphone disables its tracks (and no microphone is fine)", () => {
  const tracks = [{ enabled: true }, { enabled: true }];
  setMicEnabled({ getAudioTracks: () => tracks }, false);
  assert(tracks.every((track) => !track.enabled), "disabled");
  setMicEnabled(null, true);
});

// -- api: a stubbed fetch answers; window.prompt stands for the user --------------------------------------

// Run fn with fetch answering from `answers` (one per call) and prompt answering `typed`; returns the calls.
async function withStubs(answers, typed, fn) {
  const calls = { fetch: [], prompts: [] };
  const realFetch = window.fetch;
  const realPrompt = window.prompt;
  window.fetch = async (path, init) => {
    calls.fetch.push({ path, init });
    const next = answers.shift();
    if (next instanceof Error) throw next;
    return next;
  };
  window.prompt = (question) => {
    calls.prompts.push(question);
    return typed;
  };
  auth.token = null;
  try {
    await fn();
  } finally {
    window.fetch = realFetch;
    window.prompt = realPrompt;
    auth.token = null;
  }
  return calls;
}

const json = (body, status = 200) => new Response(JSON.stringify(body), { status });

test("api: JSON in, JSON out", async () => {
  const calls = await withStubs([json({ code: 0, data: 1 })], null, async () => {
    assertEqual(await api("/human", { text: "hi" }), { code: 0, data: 1 });
  });
  const { init } = calls.fetch[0];
  assertEqual([init.method, init.headers["Content-Type"], init.body], ["POST", "application/json", '{"text":"hi"}']);
  assert(!("Authorization" in init.headers), "no token, no header");
});

test("api: an error code, an HTTP error without JSON, a network failure", async () => {
  await withStubs([json({ code: -1, msg: "no such session" }, 404), new Response("oops", { status: 500 }),
                   new TypeError("Failed to fetch")], null, async () => {
    const refused = await rejects(api("/human", {}));
    assert(refused instanceof ApiError, "an ApiError");
    assertEqual([refused.status, refused.detail], [404, "no such session"]);
    assertEqual((await rejects(api("/human", {}))).status, 500);
    const down = await rejects(api("/api/ice", undefined, "GET"));
    assert(down.status === 0 && down.detail.includes("Is the server running?"), down.message);
  });
});

test("api: a 401 asks for the token once, retries with it and keeps it", async () => {
  const calls = await withStubs([json({ code: -1, msg: "token" }, 401), json({ code: 0 })], " secret ", async () => {
    await api("/offer", {});
    assertEqual(auth.token, "secret");
    assertEqual(auth.url("/sse?sessionid=1"), "/sse?sessionid=1&token=secret");
    assertEqual(auth.url("/record/1"), "/record/1?token=secret");
  });
  assertEqual(calls.prompts.length, 1);
  assertEqual(calls.fetch[1].init.headers.Authorization, "Bearer secret");
});

test("api: a 401 without an answer from the user fails with 401", async () => {
  const calls = await withStubs([json({ code: -1, msg: "unauthorized" }, 401)], null, async () => {
    assertEqual((await rejects(api("/offer", {}))).status, 401);
  });
  assertEqual(calls.fetch.length, 1);
});

test("api: a form is sent as it is; ?token= in the page's URL is kept", async () => {
  const form = new FormData();
  form.append("sessionid", "1");
  const calls = await withStubs([json({ code: 0 })], null, async () => {
    keepTokenFrom("?token=from-link");
    await api("/humanaudio", form);
  });
  assert(calls.fetch[0].init.body === form && !("Content-Type" in calls.fetch[0].init.headers), "multipart as is");
  assertEqual(calls.fetch[0].init.headers.Authorization, "Bearer from-link");
});

// -- run --------------------------------------------------------------------------------------------------

const results = [];
for (const { name, fn } of tests) {
  try {
    await fn();
    results.push({ name, ok: true });
  } catch (e) {
    results.push({ name, ok: false, error: String(e && e.stack ? e.stack : e) });
  }
}
window.moduleTests = results;
