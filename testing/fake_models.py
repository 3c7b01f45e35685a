"""Fake batch models (the `engines.batcher.BatchModel` protocol) for tests of the batcher's scheduling: results
that say which rows they came from, a known cost, and a record of every call. The real models in their tiny
random-weight configurations are in musetalk/tiny.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np


class FakeModel:
    """Doubles its input rows; costs `per_batch + per_row * size` seconds; records every call."""

    def __init__(self, per_batch: float = 0.0, per_row: float = 0.0) -> None:
        self.per_batch, self.per_row = per_batch, per_row
        self.calls: list[tuple[int, int, np.ndarray]] = []  # (padded size, real rows, the input)
        self.threads: set[str] = set()
        self.before: Callable[[np.ndarray], object] | None = None  # called with the input first (to block or raise)

    def __call__(self, inputs: tuple[np.ndarray, ...], rows: int) -> np.ndarray:
        (x,) = inputs
        self.threads.add(threading.current_thread().name)
        self.calls.append((len(x), rows, x.copy()))
        if self.before is not None:
            self.before(x)
        time.sleep(self.per_batch + self.per_row * len(x))
        return x * 2

    def firsts(self) -> list[float]:
        """The first input value of every call, in call order."""
        return [float(x[0, 0]) for _, _, x in self.calls]


class FakeFacesModel:
    """Two inputs like the faces model (audio rows, avatar latent rows): returns audio + latent per row."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []  # (padded size, real rows)

    def __call__(self, inputs: tuple[np.ndarray, ...], rows: int) -> np.ndarray:
        chunks, latents = inputs
        self.calls.append((len(chunks), rows))
        return chunks + latents
