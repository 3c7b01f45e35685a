"""The page's ES modules (web/*.js) in headless Chromium: each is served with a JavaScript MIME type (module
scripts are refused otherwise), the page loads them all, and the unit tests in tests/web/modules/ (pure
logic: events, i18n, ICE configuration, stats, the API's token handling with a stubbed fetch) pass."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from testing.browser import CHROMIUM_FLAGS, ROOT, running_server

TESTS_DIR = Path(__file__).parent / "modules"
TESTS_URL = "/__tests__/"  # where the test page is served, next to the page's modules (same origin)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_page_modules(tmp_path: Path, chromium: Path) -> None:
    from playwright.sync_api import Route, sync_playwright
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    errors: list[str] = []
    with running_server(tmp_path) as base, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(chromium), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))

            for module in sorted((ROOT / "web").glob("*.js")):
                resp = page.request.get(f"{base}/{module.name}")
                assert resp.status == 200 and "javascript" in resp.headers["content-type"], (
                    module.name,
                    resp.status,
                    resp.headers.get("content-type"),
                )

            # Only this browser sees the test page: the server ships the page's modules, not their tests.
            def serve_test_file(route: Route) -> None:
                name = route.request.url.split(TESTS_URL, 1)[1].split("?")[0]
                path = TESTS_DIR / name
                if path.parent != TESTS_DIR or not path.is_file():
                    route.fulfill(status=404)
                    return
                kind = "text/javascript" if path.suffix == ".js" else "text/html"
                route.fulfill(status=200, body=path.read_bytes(), content_type=kind)

            page.route(f"{base}{TESTS_URL}**", serve_test_file)
            page.goto(f"{base}{TESTS_URL}index.html")
            try:
                page.wait_for_function("window.moduleTests !== undefined", timeout=30_000)
            except PlaywrightTimeout:
                pytest.fail(f"the module tests did not run; page errors: {errors}")
            results = page.evaluate("window.moduleTests")

            page.goto(f"{base}/")  # the page itself: every module loads, nothing throws
            page.wait_for_function("window.avatarClient !== undefined")
        finally:
            ctx.close()
    failed = [f"{r['name']}: {r['error']}" for r in results if not r["ok"]]
    assert not failed, "\n".join(failed)
    assert len(results) >= 20, [r["name"] for r in results]
    assert errors == []
    print(f"{len(results)} module tests passed")
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
