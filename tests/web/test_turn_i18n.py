"""The page in a real browser (headless Chromium): relay-only ICE through a real TURN server (coturn with
use-auth-secret, credentials from GET /api/ice), and the page in Chinese or English."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.browser import CHROMIUM_FLAGS, running_server, wait_until
from testing.turn import coturn

# The pair the browser's media goes over: its local candidate's type ("relay" when through TURN).
SELECTED_PAIR_JS = """async () => {
  const stats = await window.avatarClient.pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
  });
  if (!pair) stats.forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s;
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId), remote = stats.get(pair.remoteCandidateId);
  return {local: local.candidateType, relayProtocol: local.relayProtocol ?? null, remote: remote.candidateType};
}"""


@contextlib.contextmanager
def opened(chromium: Path, tmp_path: Path, url: str, locale: str = "en-US") -> Iterator:
    """The page at `url` in headless Chromium with this browser language, loaded; the browser and its profile
    are gone afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path / "profile"
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(chromium),
            headless=True,
            args=[*CHROMIUM_FLAGS, f"--lang={locale}"],
            locale=locale,
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.goto(url)
            page.wait_for_function("window.avatarClient !== undefined")
            yield page
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_relay_only_page_gets_video_through_coturn(tmp_path: Path, chromium: Path) -> None:
    with (
        coturn(tmp_path) as turn,
        running_server(tmp_path, "--turn", turn.url, "--turn_secret", turn.secret) as base,
        opened(chromium, tmp_path, f"{base}/?relay=1") as page,
    ):
        page.click("#connect")
        wait_until(
            page,
            lambda s: s["connectionState"] == "connected" and s["video"] and s["video"]["framesDecoded"] > 10,
            20,
            "video through the TURN relay",
        )
        pair = page.evaluate(SELECTED_PAIR_JS)
        assert pair is not None and pair["local"] == "relay" and pair["relayProtocol"] == "udp", pair
        assert page.locator("#errors").inner_text() == ""
        page.click("#disconnect")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_relay_only_without_a_turn_server_says_why(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import expect

    with running_server(tmp_path) as base, opened(chromium, tmp_path, f"{base}/?relay=1") as page:
        page.click("#connect")
        expect(page.locator("#errors")).to_contain_text("needs a TURN server")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_page_speaks_the_browser_language_and_can_switch(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import expect

    with running_server(tmp_path) as base, opened(chromium, tmp_path, f"{base}/", locale="zh-CN") as page:
        expect(page.locator("#connect")).to_have_text("连接")
        expect(page.locator("#conn-state")).to_have_text("未连接")
        assert page.get_attribute("#text", "placeholder") == "输入要数字人说的话…"
        assert page.evaluate("document.documentElement.lang") == "zh-CN"
        page.click("#connect")  # text set by the code follows the language too
        wait_until(page, lambda s: s["connectionState"] == "connected", 15, "the connection")
        expect(page.locator("#conn-state")).to_have_text("已连接")

        page.select_option("#lang", "en")
        expect(page.locator("#connect")).to_have_text("Connect")
        expect(page.locator("#conn-state")).to_have_text("connected")
        expect(page.locator("#record")).to_have_text("Start recording")
        page.reload()  # the choice is kept
        page.wait_for_function("window.avatarClient !== undefined")
        expect(page.locator("#connect")).to_have_text("Connect")
        assert page.evaluate("document.documentElement.lang") == "en"
        page.select_option("#lang", "zh")
        expect(page.locator("#send")).to_have_text("发送")
