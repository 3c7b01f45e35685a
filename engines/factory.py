"""Engine selection: `auto` picks musetalk when CUDA and the weights are present, otherwise lite."""

from __future__ import annotations

import logging
from pathlib import Path

from engines.base import DEFAULT_RIGHT_CONTEXT_S, Engine

log = logging.getLogger(__name__)

ENGINES = ("auto", "musetalk", "lite")


def musetalk_unavailable(models_dir: Path, version: str) -> str | None:
    """Why the musetalk engine cannot run here, or None if it can."""
    from musetalk.models import MissingWeightsError, ModelPaths

    missing = ModelPaths(models_dir, version).missing()
    if missing:
        return (
            f"MuseTalk {version} weights are missing in {models_dir}/ "
            f"({MissingWeightsError(missing, version, models_dir).command})"
        )
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (MuseTalk is far too slow for real time on a CPU)"
    return None


def create_engine(
    name: str = "auto",
    models_dir: Path = Path("models"),
    version: str = "v15",
    batch_size: int | None = None,
    device: str | None = None,
    right_context_s: float = DEFAULT_RIGHT_CONTEXT_S,
    render_pool: str | None = None,
) -> Engine:
    """`render_pool`: ``ray[://ADDRESS]`` runs musetalk's models in the render pool (docs/render_pool.md; Ray is
    imported only then), None in this process."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if render_pool is not None:
        if name == "lite":
            raise ValueError("--render_pool runs the musetalk engine; it does not go with --engine lite")
        from core.extras import require

        require("ray.serve", "ray", "the render pool (--render_pool)")
        from engines.ray_pool import create_pooled_engine

        return create_pooled_engine(render_pool, version, batch_size, right_context_s)
    if name == "auto":
        reason = musetalk_unavailable(models_dir, version)
        if reason is None:
            name = "musetalk"
        else:
            log.warning("engine auto: using lite, because %s", reason)
            name = "lite"
    if name == "lite":
        from engines.lite import LiteEngine

        return LiteEngine()
    from engines.musetalk_engine import MuseTalkEngine

    return MuseTalkEngine(
        models_dir=models_dir, version=version, batch_size=batch_size, device=device, right_context_s=right_context_s
    )
