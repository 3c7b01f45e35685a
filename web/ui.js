// The page's elements: connection and speaking state, messages, transcript, subtitle, stats. Elements are
// looked up when used, so that importing this module touches no element (a page without them can import it).

import { t } from "./i18n.js";

export const $ = (id) => document.getElementById(id);

const MAX_MESSAGES = 5;
const MAX_TRANSCRIPT = 50;

export function setConnState(state, label = state) {
  const pill = $("conn-state");
  pill.dataset.state = state;
  pill.dataset.i18n = label;  // kept on a change of language
  pill.textContent = t(label);
  const busy = state === "connecting" || state === "connected";
  $("connect").disabled = busy;
  $("disconnect").disabled = !busy;
  $("avatar").disabled = state === "connecting";  // while connected, picking one switches to it live
  $("voice").disabled = busy;
  for (const el of document.querySelectorAll(".needs-session")) el.disabled = state !== "connected";
}

export function setSpeaking(speaking) {
  const pill = $("speak-state");
  pill.dataset.state = speaking ? "speaking" : "idle";
  pill.dataset.i18n = speaking ? "speaking" : "idle";
  pill.textContent = t(pill.dataset.i18n);
}

// kind: "error" | "warn". The same text is shown once at a time.
export function message(text, kind = "error") {
  const errors = $("errors");
  for (const el of errors.children) if (el.dataset.text === text) return;
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
  errors.append(box);
  while (errors.children.length > MAX_MESSAGES) errors.firstChild.remove();
}

export function warn(text) {
  message(text, "warn");
}

export function clearMessages() {
  $("errors").replaceChildren();
}

// who: "user" | "avatar".
export function transcript(text, who) {
  const li = document.createElement("li");
  li.className = who;
  li.textContent = who === "user" ? `You: ${text}` : text;
  const list = $("transcript");
  list.append(li);
  while (list.children.length > MAX_TRANSCRIPT) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

export function subtitle(text) {
  const el = $("subtitle");
  el.textContent = text;
  el.hidden = !text;
}

export function setRecordLabel(recording) {
  const button = $("record");
  button.dataset.i18n = recording ? "Stop recording" : "Start recording";  // kept on a change of language
  button.textContent = t(button.dataset.i18n);
}

// Fill elements by id with text (the Stats card).
export function setTexts(texts) {
  for (const [id, text] of Object.entries(texts)) $(id).textContent = text;
}

// Run an action from a button; show its failure instead of leaving an unhandled rejection.
export function guarded(fn) {
  return async (ev) => {
    if (ev) ev.preventDefault();
    try {
      await fn(ev);
    } catch (e) {
      message(e.message);
    }
  };
}
