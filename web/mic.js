// The microphone, sent to the avatar on the session's peer connection (voice input).

// The user's microphone with the browser's voice processing, or null (with a warning) when the page may not
// use it; the session then goes on without it.
export async function openMic(warn) {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    warn("This browser has no microphone access here (it needs https or localhost); continuing without it.");
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
    });
  } catch (e) {
    warn(`Microphone unavailable (${e.name}: ${e.message}); continuing without it.`);
    return null;
  }
}

// Mute or unmute without renegotiating: a disabled track sends silence.
export function setMicEnabled(stream, on) {
  if (stream) for (const track of stream.getAudioTracks()) track.enabled = on;
}

export function stopMic(stream) {
  if (stream) for (const track of stream.getTracks()) track.stop();
}
