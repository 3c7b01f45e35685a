// Demo page of the avatar server: one WebRTC connection (video + audio, optional microphone) and the
// LiveTalking-compatible HTTP API. ES modules, no build step, no dependencies:
//   api.js (requests, token)   signalling.js (ICE servers, offer/answer)   media.js (playback)
//   stats.js (getStats)        events.js (SSE)   mic.js   ui.js (elements)   i18n.js   avatars.js (pickers)
//   client.js (one session)    main.js (this: the page's controls wired to one client)

import { keepTokenFrom } from "./api.js";
import { loadAvatars, loadVoices, showAvatar } from "./avatars.js";
import { AvatarClient } from "./client.js";
import { $, guarded, message, setRecordLabel } from "./ui.js";

keepTokenFrom(location.search);
const client = new AvatarClient($("video"));

$("connect").addEventListener("click", () =>
  client.connect({ avatar: $("avatar").value, voice: $("voice").value, useMic: $("mic").checked }));
$("disconnect").addEventListener("click", () => client.disconnect());
$("unmute").addEventListener("click", () => client.unmute());
$("mic").addEventListener("change", (ev) => client.setMicEnabled(ev.target.checked));

// Picking an avatar while connected switches the session to it (POST /set_avatar) on the same connection.
loadAvatars().catch((e) => message(e.message));
$("avatar").addEventListener("change", guarded(async (ev) => {
  showAvatar(ev.target.value);
  if (client.state === "connected") await client.setAvatar(ev.target.value);
}));
loadVoices();

$("say-form").addEventListener("submit", guarded(async () => {
  await client.say($("text").value, $("mode").value, $("interrupt-on-send").checked);
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
