"""What crosses the hop between a front end and the render pool (docs/render_pool.md), without importing Ray.

The front end's musetalk engine hands its jobs (``engines.batcher.Job``: kind, numpy rows, turn, deadline) to a
runner; with ``--render_pool ray`` that runner (``engines.ray_pool``) sends each one as a `PoolJob` to a replica
of the Ray Serve deployment (``engines.ray_serve_app``), whose own `Batcher` runs it with other front ends' jobs
and returns a `PoolResult`.

- The deadline travels as seconds left (monotonic clocks of two machines are not comparable); the transit eats
  into it. A replica drops a job that arrives more than its grace past the deadline (`LateJob`): its frames could
  not be shown any more.
- The turn stays on the front end (a session's turn getter cannot travel): the runner cancels the call of a job
  whose turn ended, which drops it in the replica unless a batch holds it already, and drops the result of a
  stale turn that comes back anyway.
- A faces job does not ship its avatar latents: `AvatarRows` names the avatar and the frames, and the replica
  reads the latents from the avatars store once and keeps them in a bounded cache.

This module is imported by app.py's checks; it must not import Ray (``tests/engines/test_ray_pool.py`` checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from engines.batcher import StaleJob

RAY = "ray"
DEFAULT_APP = "musetalk-pool"  # the Serve application name front ends look up


class PoolUnavailableError(RuntimeError):
    """The render pool cannot be reached, or has no running MuseTalk application: the front end cannot start."""


class PoolError(RuntimeError):
    """A job sent to the pool failed there or on the way (e.g. its replica died): its frames are not rendered."""


class LateJob(StaleJob):
    """The job reached its replica too long after its deadline for its frames to be shown: dropped, not run
    (a `StaleJob`, so the session counts it as dropped rather than as a render error)."""


def pool_address(value: str) -> str:
    """The Ray address of ``--render_pool ray[://HOST:PORT]``: "auto" (the cluster this machine belongs to, or
    RAY_ADDRESS) for "ray", else the Ray Client address ray://HOST:PORT. ValueError for anything else."""
    if value == RAY:
        return "auto"
    if value.startswith(RAY + "://") and len(value) > len(RAY) + 3:
        return value
    raise ValueError(f"--render_pool must be 'ray' or 'ray://HOST:PORT', got {value!r}")


@dataclass(frozen=True)
class AvatarRows:
    """Latent rows of a prepared avatar by reference: the avatar's id and creation stamp (a re-prepared avatar of
    the same id is another one) and the original frame indices. Indexing selects frames, like the array would."""

    avatar_id: str
    created: str
    indices: np.ndarray = field(compare=False)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Any) -> AvatarRows:
        return replace(self, indices=np.asarray(self.indices[key], np.int64).reshape(-1))


@dataclass(frozen=True)
class PoolJob:
    """A batcher job on the wire: `inputs` are numpy rows, except a faces job's latents, which may be an
    `AvatarRows`. `seconds_left`: until the deadline when it was sent (None: as soon as possible)."""

    kind: str
    inputs: tuple[Any, ...]
    seconds_left: float | None
    turn: int = 0


@dataclass(frozen=True)
class PoolResult:
    outputs: Any  # the job's output rows, as the batch model returns them
    replica: str  # the replica that ran it (Serve's replica id)
    seconds: float  # time in the replica, queueing included: the rest of a call's time is the hop


@dataclass(frozen=True)
class PoolSpec:
    """What a front end needs to know of the pool's models (it runs none itself)."""

    version: str
    encoder_config: dict[str, Any]  # the whisper encoder's config (feature width, mel bins)
    batch_size: int  # the replicas' default frames per session batch
    device: str
