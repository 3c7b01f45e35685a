// Playback of the received tracks: one <video> carries both, so audio and video share one playout clock.

import { $, warn } from "./ui.js";

export class Player {
  constructor(video) {
    this.video = video;
    this.stream = null;  // the <video>'s MediaStream: the received tracks
  }

  // Called inside the Connect click: starting playback here, while the user gesture is fresh, lets the
  // video play unmuted as soon as the tracks arrive.
  prepare() {
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
      this.video.play().catch(() => warn("The browser refused to play the video."));
    });
  }

  unmute() {
    this.video.muted = false;
    $("unmute").hidden = true;
    this.play();
  }

  addTrack(track) {
    if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
    if (track.kind === "video") $("placeholder").hidden = true;
    if (this.video.paused) this.play();
  }

  // Frames on screen (at least HAVE_CURRENT_DATA) and not paused.
  get playing() {
    return !this.video.paused && this.video.readyState >= 2;
  }

  clear() {
    this.video.srcObject = null;
    $("placeholder").hidden = false;
    $("unmute").hidden = true;
  }
}
