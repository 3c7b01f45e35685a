// The session's server-sent events (GET /sse): the avatar's sentences (subtitles, transcript, speaking
// state), what the microphone heard, and the errors of the speech and language services.

import { t } from "./i18n.js";

const SUBTITLE_LINGER_MS = 1200;  // keep a finished sentence on screen briefly

// The event kinds the server sends (and LiveTalking's field names for them); core/events.py defines them,
// tests/core/test_event_names.py keeps the two in step.
export const EVENT = Object.freeze({
  START: "start",                          // a sentence starts playing (its text)
  SUBTITLE: "subtitle",                    // streamed speech: the next words of the playing sentence
  END: "end",                              // the sentence finished playing
  USER_SPEECH_START: "user_speech_start",  // the user barged in: the avatar stops
  USER_TEXT: "user_text",                  // what speech recognition heard
});

const ERROR_TITLES = {
  tts_error: "Speech synthesis failed",
  llm_error: "The language model failed",
  asr_error: "Speech recognition failed",
  render_error: "Rendering failed",
};

// One SSE message's data as {kind, text}; null for keep-alives and anything that is not a JSON object.
export function parseEvent(raw) {
  let data;
  try {
    data = JSON.parse(raw);
  } catch {
    return null;
  }
  if (typeof data !== "object" || data === null) return null;
  const kind = data.status ?? data.event ?? data.type ?? data.name ?? "";
  const text = data.text ?? data.msg ?? data.message ?? "";
  return { kind: String(kind), text: String(text) };
}

// The message an error event shows (translated); null when the kind is not an error.
export function errorMessage({ kind, text }) {
  if (!kind.endsWith("error")) return null;
  const what = t(ERROR_TITLES[kind] ?? kind);
  return text ? `${what}: ${text}` : what;
}

// The stream of a session; onLost runs once when it cannot be opened at all.
export function openEvents(url, onEvent, onLost) {
  const source = new EventSource(url);
  source.onmessage = (ev) => {
    const event = parseEvent(ev.data);
    if (event) onEvent(event);
  };
  source.onerror = () => {
    // EventSource retries by itself; only a stream closed for good is reported.
    if (source.readyState === EventSource.CLOSED) onLost();
  };
  return source;
}

// What the events mean for the page. view: {setSpeaking(on), subtitle(text), transcript(text, who),
// message(text)}; the reply latency runs from sent() to the next sentence's start.
export class Conversation {
  constructor(view, lingerMs = SUBTITLE_LINGER_MS) {
    this.view = view;
    this.lingerMs = lingerMs;
    this.speaking = false;
    this.subtitle = "";
    this.sentAt = null;
    this.replyMs = null;
    this.sentenceLogged = false;  // the current sentence is already in the transcript
    this.lingerTimer = null;
  }

  handle(event) {
    const { kind, text } = event;
    if (kind === EVENT.START) this.started(text);
    else if (kind === EVENT.SUBTITLE) this.showSubtitle(this.subtitle + text);
    else if (kind === EVENT.END) this.ended(text);
    else if (kind === EVENT.USER_SPEECH_START) this.showSubtitle("");
    else if (kind === EVENT.USER_TEXT) this.heard(text);
    else this.failed(event);
  }

  started(text) {
    if (this.sentAt !== null) {
      this.replyMs = performance.now() - this.sentAt;
      this.sentAt = null;
    }
    this.setSpeaking(true);
    this.showSubtitle(text);
    this.sentenceLogged = Boolean(text);
    if (text) this.view.transcript(text, "avatar");
  }

  ended(text) {
    if (text && !this.sentenceLogged) this.view.transcript(text, "avatar");
    this.sentenceLogged = true;
    clearTimeout(this.lingerTimer);
    this.lingerTimer = setTimeout(() => this.silent(), this.lingerMs);
  }

  heard(text) {
    if (text) this.view.transcript(text, "user");
    this.sentAt = performance.now();
  }

  failed(event) {
    const message = errorMessage(event);
    if (message === null) return;  // a kind this page does not show
    this.view.message(message);
    this.sentAt = null;
  }

  // The user sent text: the reply latency starts now.
  sent() {
    this.sentAt = performance.now();
  }

  silent() {
    this.showSubtitle("");
    this.setSpeaking(false);
  }

  // Interrupted by the user: silent at once, and no reply awaited.
  interrupted() {
    this.sentAt = null;
    this.silent();
  }

  // The server's is_speaking poll; the subtitles decide while a sentence is on screen.
  polled(speaking) {
    if (!this.subtitle) this.setSpeaking(speaking);
  }

  showSubtitle(text) {
    if (text) clearTimeout(this.lingerTimer);
    this.subtitle = text;
    this.view.subtitle(text);
  }

  setSpeaking(on) {
    this.speaking = on;
    this.view.setSpeaking(on);
  }

  // The connection is gone.
  close() {
    clearTimeout(this.lingerTimer);
    this.silent();
  }
}
