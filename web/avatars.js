// The avatar picker: the server's avatars (GET /api/avatars) with a thumbnail of the one picked.

import { api, auth } from "./api.js";
import { t } from "./i18n.js";
import { $ } from "./ui.js";

const avatars = new Map();  // id -> the server's description

export function showAvatar(id) {
  const thumb = $("avatar-thumb");
  const avatar = avatars.get(id);
  thumb.hidden = !avatar;
  if (avatar) thumb.src = auth.url(avatar.thumbnail);
}

// Fill the picker (avatars that failed to load on the server are left out); the server's default is picked.
export async function loadAvatars() {
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

// The voices (TTS backends) this server offers (its /healthz); the first is its default.
export async function loadVoices() {
  try {
    const health = await (await fetch("/healthz")).json();
    for (const name of health.voices ?? []) $("voice").add(new Option(`voice: ${name}`, name));
  } catch {
    $("voice").hidden = true;
  }
}
