"""The demo page in a real browser: headless Chromium connects to app.py over loopback WebRTC and the avatar
speaks a typed sentence (sound, mouth movement and subtitle all seen by the browser)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from musetalk.avatar import load_avatar
from testing.browser import CHROMIUM_FLAGS, ROOT, running_server, session_count, stats, wait_until

SENTENCE = "Hello from the browser test."

# Mean grey level of a box of the <video>'s current frame, per pixel (row-major): what the viewer sees.
GRAB_JS = """([x1, y1, x2, y2]) => {
  const v = document.getElementById('video');
  const w = x2 - x1, h = y2 - y1;
  const c = document.createElement('canvas');
  c.width = w; c.height = h;
  const g = c.getContext('2d', {willReadFrequently: true});
  g.drawImage(v, x1, y1, w, h, 0, 0, w, h);
  const d = g.getImageData(0, 0, w, h).data;
  const out = new Array(w * h);
  for (let i = 0; i < w * h; i++) out[i] = (d[4 * i] + d[4 * i + 1] + d[4 * i + 2]) / 3;
  return out;
}"""


def block_change(a: np.ndarray, b: np.ndarray, size: int = 8) -> float:
    """The largest change of mean brightness of a size x size block: lossy-codec noise averages out within a
    block (a few grey levels), a mouth opening does not (tens)."""
    h, w = (a.shape[0] // size) * size, (a.shape[1] // size) * size
    means = [x[:h, :w].reshape(h // size, size, w // size, size).mean(axis=(1, 3)) for x in (a, b)]
    return float(np.abs(means[0] - means[1]).max())


def grab(page, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array(page.evaluate(GRAB_JS, list(box)), dtype=np.float64).reshape(y2 - y1, x2 - x1)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_page_connects_plays_and_the_avatar_speaks(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import ConsoleMessage, expect, sync_playwright

    avatar = load_avatar("demo", ROOT / "avatars")
    height, width = avatar.frames.shape[1:3]
    x1, y1, x2, y2 = (int(v) for v in avatar.face_boxes[0])
    mouth = (x1, (y1 + y2) // 2, x2, y2)
    above_face = (x1, 0, x2, max(8, y1 - 4))  # nothing moves here, speech or not

    console_errors: list[str] = []
    with running_server(tmp_path) as base, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(chromium),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()

            def note_error(message: ConsoleMessage) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            page.on("console", note_error)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(f"{base}/")
            page.wait_for_function("window.avatarClient !== undefined")
            page.click("#connect")

            # -- video and audio play, unmuted, at 25 fps and 48 kHz
            s = wait_until(
                page,
                lambda s: (
                    s["connectionState"] == "connected"
                    and s["video"]
                    and s["video"]["framesDecoded"] > 10
                    and s["playing"]
                ),
                15,
                "video to play",
            )
            assert s["video"]["width"] == width and s["video"]["height"] == height
            assert not s["muted"]  # autoplay with sound after the Connect click
            t0, s0 = time.monotonic(), s
            page.wait_for_timeout(2000)
            s1 = stats(page)
            dt = time.monotonic() - t0
            fps = (s1["video"]["framesDecoded"] - s0["video"]["framesDecoded"]) / dt
            audio_rate = (s1["audio"]["totalSamplesReceived"] - s0["audio"]["totalSamplesReceived"]) / dt
            assert 20 <= fps <= 30 and 20 <= s1["fps"] <= 30, (fps, s1["fps"])  # ours and the page's own figure
            assert 40_000 <= audio_rate <= 56_000, audio_rate  # 48 kHz Opus decoded
            idle_energy = (s1["audio"]["totalAudioEnergy"] - s0["audio"]["totalAudioEnergy"]) / dt
            idle_mouth, idle_above = grab(page, mouth), grab(page, above_face)

            # -- a typed sentence: sound, mouth and subtitle, recorded
            page.click("#record")
            expect(page.locator("#record")).to_have_text("Stop recording")
            page.fill("#text", SENTENCE)
            page.click("#send")
            subtitles: set[str] = set()
            max_level, max_mouth_change, max_above_change = 0.0, 0.0, 0.0
            shot = tmp_path / "page.png"
            e0, t_send = s1["audio"]["totalAudioEnergy"], time.monotonic()
            deadline = t_send + 15
            while time.monotonic() < deadline:
                s = stats(page)
                max_level = max(max_level, s["audio"]["audioLevel"])
                max_mouth_change = max(max_mouth_change, block_change(grab(page, mouth), idle_mouth))
                max_above_change = max(max_above_change, block_change(grab(page, above_face), idle_above))
                if s["subtitle"]:
                    if not subtitles:
                        page.screenshot(path=str(shot))
                    subtitles.add(s["subtitle"])
                elif subtitles and not s["speaking"]:
                    break  # the sentence was spoken and its subtitle went away
                page.wait_for_timeout(80)
            speech_energy = (s["audio"]["totalAudioEnergy"] - e0) / (time.monotonic() - t_send)

            assert SENTENCE in subtitles, subtitles
            assert s["replyMs"] is not None and s["replyMs"] < 5000
            assert max_level > 0.05 and idle_energy < 1e-4, (max_level, idle_energy)
            assert speech_energy > 20 * max(idle_energy, 1e-6), (speech_energy, idle_energy)
            assert max_mouth_change > 40, max_mouth_change  # the mouth opened ...
            assert max_above_change < 20, max_above_change  # ... and the rest of the picture stayed still
            assert shot.exists()

            page.click("#record")
            link = page.locator("#record-link")
            link.wait_for(state="visible")
            recording = page.request.get(f"{base}{link.get_attribute('href')}")
            assert recording.status == 200 and recording.body()[4:8] == b"ftyp"  # an mp4 file

            # -- an uploaded audio file plays; Interrupt silences it at once
            tone = tmp_path / "tone.wav"
            sf.write(tone, 0.3 * np.sin(2 * np.pi * 220 * np.arange(3 * 16000) / 16000), 16000)
            page.set_input_files("#audio-file", str(tone))
            page.click("#upload")
            wait_until(page, lambda s: s["speaking"] and s["audio"]["audioLevel"] > 0.05, 5, "the file to play")
            page.click("#interrupt")
            t_interrupt = time.monotonic()
            wait_until(
                page,
                lambda s: s["serverSpeaking"] is False and s["audio"]["audioLevel"] < 0.01,
                1.5,
                "silence after Interrupt",
            )
            interrupt_s = time.monotonic() - t_interrupt

            assert page.locator("#errors").inner_text() == ""
            assert console_errors == []

            # -- failures are shown on the page: the LLM is unreachable (an SSE error event), and a second
            #    session past the limit (HTTP 503)
            page.select_option("#mode", "chat")
            page.fill("#text", "Are you there?")
            page.click("#send")
            expect(page.locator("#errors")).to_contain_text("The language model failed")

            other = ctx.new_page()
            other.goto(f"{base}/")
            other.click("#connect")
            expect(other.locator("#errors")).to_contain_text("refused")
            assert other.evaluate("window.avatarClient.state") == "failed"
            other.close()

            # -- disconnect ends the session on the server
            page.click("#disconnect")
            assert page.evaluate("window.avatarClient.state") == "idle"
            expect(page.locator("#conn-state")).to_have_text("disconnected")
            deadline = time.monotonic() + 10
            while session_count(base) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert session_count(base) == 0
        finally:
            ctx.close()
    # Chromium itself logs each HTTP error response of the two refusals above; nothing else may be logged.
    assert all("Failed to load resource" in e for e in console_errors), console_errors
    print(
        f"fps {fps:.1f}, audio {audio_rate:.0f} samples/s, reply {s['replyMs']:.0f} ms, "
        f"silent {interrupt_s:.2f} s after Interrupt, "
        f"mouth change {max_mouth_change:.0f} (elsewhere {max_above_change:.0f}), screenshot {shot}"
    )
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_page_asks_for_the_token_once_and_keeps_it(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import sync_playwright

    token = "browser-test-token-0123456789"
    asked: list[str] = []
    with running_server(tmp_path, "--auth_token", token) as base, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()

            def answer(dialog) -> None:
                asked.append(dialog.message)
                dialog.accept(token)

            page.on("dialog", answer)
            for _visit in range(2):  # the second visit uses the kept token: no question
                page.goto(f"{base}/")
                page.wait_for_function("window.avatarClient !== undefined")
                page.click("#connect")
                wait_until(
                    page,
                    lambda s: s["connectionState"] == "connected" and s["video"] and s["video"]["framesDecoded"] > 5,
                    15,
                    "video to play",
                )
                page.fill("#text", SENTENCE)
                page.click("#send")
                wait_until(page, lambda s: s["subtitle"] == SENTENCE, 15, "the subtitle (via /sse with the token)")
                page.click("#disconnect")
            assert len(asked) == 1 and "token" in asked[0], asked
            assert page.locator("#errors").inner_text() == ""
        finally:
            ctx.close()
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
