"""Fixtures for the MuseTalk model tests: a temporary official-layout models folder with tiny random weights,
and a local server that answers like the Hugging Face Hub (testing.fake_hub)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from musetalk.tiny import TinyLayout, write_tiny_layout
from testing.fake_hub import FakeHub, serve_fake_hub


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """The test machine's 2 cores are shared between test runs; more threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_layout(tmp_path_factory: pytest.TempPathFactory) -> TinyLayout:
    return write_tiny_layout(tmp_path_factory.mktemp("models"), whisper=False)


@pytest.fixture
def fake_hub() -> Iterator[FakeHub]:
    with serve_fake_hub() as hub:
        yield hub
