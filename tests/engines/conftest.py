from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import ensure_demo
from musetalk.tiny import TinyLayout, write_tiny_layout


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyLayout]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield write_tiny_layout(tmp_path_factory.mktemp("models"))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    root = tmp_path_factory.mktemp("avatars")
    ensure_demo(root, progress=False, models_dir=root / "no-models")
    return load_avatar("demo", root)
