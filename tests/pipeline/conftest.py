from __future__ import annotations

import pytest

from musetalk.avatar import Avatar, load_avatar
from musetalk.avatar_demo import ensure_demo


@pytest.fixture(scope="session")
def demo_avatar(tmp_path_factory: pytest.TempPathFactory) -> Avatar:
    root = tmp_path_factory.mktemp("avatars")
    ensure_demo(root, progress=False, models_dir=root / "no-models")
    return load_avatar("demo", root)
