"""Fixtures for the local fake services (testing/fake_services.py, testing/fake_realtime.py) the voices package is
tested against."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from testing import fake_realtime as fr
from testing import fake_services as fs


@pytest.fixture
async def openai_server():
    async with fs.openai_service() as served:
        yield served


@pytest.fixture
async def sovits_server():
    async with fs.sovits_service() as served:
        yield served


@pytest.fixture
async def realtime_server():
    async with fr.realtime_service() as served:
        yield served


# With --import-mode=importlib test modules cannot import conftest, so the
# scripted data and helpers are handed out as a fixture.
@pytest.fixture
def fakes() -> SimpleNamespace:
    return SimpleNamespace(ANSWER_DELTAS=fs.ANSWER_DELTAS, TONE_HZ=fs.TONE_HZ, tone_pcm16=fs.tone_pcm16,
                           free_port=fs.free_port, SOVITS_RATE=fs.SOVITS_RATE, REALTIME_TEXT=fr.REALTIME_TEXT,
                           REALTIME_SAMPLES=fr.REALTIME_SAMPLES, heard_transcript=fr.heard_transcript)
