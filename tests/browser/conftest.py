from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from testing.rtc import loopback_only, skip_or_fail

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(autouse=True)
def loopback() -> None:
    loopback_only()


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium, driven by the playwright package (its own browser downloads are never used)."""
    if importlib.util.find_spec("playwright") is None:
        skip_or_fail("the playwright package is missing: .venv/bin/pip install -c constraints-cpu.txt playwright==1.65.2")
    if not CHROMIUM.exists():
        skip_or_fail(f"{CHROMIUM} is missing: apt-get update && apt-get install -y chromium")
    return CHROMIUM
