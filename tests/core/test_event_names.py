"""The page's event names (web/events.js) are core.events.EventKind's, as the server sends them."""

from __future__ import annotations

import re
from pathlib import Path

from core.events import ERROR_SERVICES, Event, EventKind
from server.routes import sse_data

EVENTS_JS = (Path(__file__).resolve().parents[2] / "web" / "events.js").read_text()


def _object_literal(name: str) -> str:
    match = re.search(rf"{name} = (?:Object\.freeze\()?\{{(.*?)\}}", EVENTS_JS, re.S)
    assert match, f"{name} not found in web/events.js"
    return match.group(1)


def test_every_kind_the_page_handles_is_one_the_server_sends() -> None:
    page = set(re.findall(r':\s*"([a-z_]+)"', _object_literal("EVENT")))
    sent = {str(v) for kind in EventKind for v in sse_data(Event(kind, "x")).values() if v != "x"}
    assert page <= sent, page - sent
    # sentences in LiveTalking's format, the rest by their own name
    assert sse_data(Event(EventKind.SENTENCE_START, "Hi.")) == {"status": "start", "text": "Hi."}
    assert sse_data(Event(EventKind.USER_TEXT, "hello")) == {"event": "user_text", "text": "hello"}


def test_every_error_kind_has_a_title_on_the_page() -> None:
    titled = set(re.findall(r"^\s*([a-z_]+):", _object_literal("ERROR_TITLES"), re.M))
    assert titled == {str(kind) for kind in ERROR_SERVICES}
