"""The page's avatar picker in headless Chromium: the server's avatars with a thumbnail, the chosen one used to
connect, and another picked while connected switches the session live (same connection, new frame size)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cv2
import pytest

from musetalk.avatar_demo import demo_image, ensure_demo
from musetalk.avatar_prepare import PrepareOptions, prepare_avatar
from testing.browser import CHROMIUM_FLAGS, running_server, wait_until


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_picker_lists_avatars_and_switches_live(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    avatars = tmp_path / "avatars"
    ensure_demo(avatars, progress=False, models_dir=tmp_path / "no-models")
    prepare_avatar(
        cv2.resize(demo_image(), (384, 384)),
        "second",
        avatars,
        PrepareOptions(progress=False, models_dir=tmp_path / "no-models"),
    )
    errors: list[str] = []
    with running_server(tmp_path, "--avatars_dir", str(avatars)) as base, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/")
            page.wait_for_function("document.querySelectorAll('#avatar option').length === 2")
            assert page.eval_on_selector("#avatar", "s => s.value") == "demo"  # the server's default
            expect(page.locator("#avatar option").nth(1)).to_have_text("second (384×384)")
            page.wait_for_function("document.getElementById('avatar-thumb').naturalWidth === 160")
            page.click("#connect")
            s = wait_until(
                page,
                lambda s: s["connectionState"] == "connected" and s["video"] and s["video"]["framesDecoded"] > 5,
                15,
                "video to play",
            )
            assert s["video"]["width"] == 512
            session = page.evaluate("window.avatarClient.sessionId")
            assert page.eval_on_selector("#avatar", "s => s.disabled") is False
            started = time.monotonic()
            page.select_option("#avatar", "second")
            s = wait_until(page, lambda s: s["video"] and s["video"]["width"] == 384, 10, "the new avatar's frames")
            switched = time.monotonic() - started
            assert page.evaluate("window.avatarClient.sessionId") == session  # the same session and connection
            assert s["connectionState"] == "connected" and page.locator("#errors").inner_text() == ""
            thumbnail = page.eval_on_selector("#avatar-thumb", "img => img.src")
            assert thumbnail.endswith("/api/avatars/second/thumbnail.jpg")
        finally:
            ctx.close()
    assert errors == []
    print(f"picked -> the browser decodes the new avatar's frames: {switched:.2f} s")
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
