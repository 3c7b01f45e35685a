"""The MuseTalk render pool as a Ray Serve application (docs/render_pool.md): one replica per GPU.

Each replica loads the models once (fp16 on its GPU; ``tiny`` builds the tiny random-weight models on the CPU,
for tests and the bench) inside a `MuseTalkEngine`, whose `Batcher` runs the jobs of every front end's sessions
(``engines.render_pool.PoolJob``) earliest-deadline-first in padded batches with a captured graph per size on
CUDA. Our batcher rather than ``@serve.batch``: it orders by the jobs' media-clock deadlines (Serve's batches are
first come, first served), drops stale jobs before packing them, pads to the fixed sizes the graphs were
captured for, and splits a large job over two batches; the bench (bench/pool.py) measures the pool with it.

Avatars' latents are read by id from the avatars store (a folder every replica sees: a shared volume) on first
use and kept in a bounded LRU cache, so a faces job carries only the frame indices (``AvatarRows``).

Deploy: ``python -m engines.ray_serve_app --address auto --replicas 2 --models_dir models --avatars_dir avatars``,
or ``serve run engines.ray_serve_app:build_app replicas=2 ...``, or a RayService's ``import_path``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application

from engines.batcher import Batcher, BatchModel, Job, JobRunner, Rows
from engines.musetalk_batch import ENCODER, FACES, LATENTS
from engines.musetalk_engine import MuseTalkEngine
from engines.render_pool import (
    DEFAULT_APP,
    AvatarRows,
    LateJob,
    PoolError,
    PoolJob,
    PoolResult,
    PoolSpec,
)
from musetalk.audio_features import FEATURE_DIM
from musetalk.avatar import AvatarError, face_crops, load_avatar
from musetalk.config import FACE_SIZE, LATENT_SIZE
from musetalk.whisper import N_STATES

log = logging.getLogger(__name__)

DEFAULT_MAX_AVATARS = 16  # latents of a 10 s avatar at 25 fps: 8 MB of float32
DEFAULT_MAX_SESSIONS = 8  # per replica: the faces batch sizes go up to this many sessions' batches
DEFAULT_LATE_GRACE_S = 0.5  # a job arriving later than this past its deadline has no frame left to show


class LatentCache:
    """Avatars' latents (float32, one row per original frame) by (id, creation stamp), the `limit` most
    recently used kept. Loads run off the event loop; two jobs of an avatar being loaded wait for one load."""

    def __init__(self, avatars_dir: Path, version: str, runner: JobRunner, limit: int = DEFAULT_MAX_AVATARS) -> None:
        if limit < 1:
            raise ValueError(f"the latents cache must hold at least one avatar, got {limit}")
        self.avatars_dir, self.version, self.runner, self.limit = avatars_dir, version, runner, limit
        self._cached: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Task] = {}

    async def rows(self, ref: AvatarRows) -> np.ndarray:
        key = (ref.avatar_id, ref.created)
        cached = self._cached.get(key)
        if cached is None:
            task = self._loading.get(key)
            if task is None:
                task = self._loading[key] = asyncio.create_task(asyncio.to_thread(self._load, *key))
                task.add_done_callback(lambda _: self._loading.pop(key, None))
            loaded: np.ndarray = await asyncio.shield(task)  # a cancelled job does not cancel others' load
            self._cached[key] = cached = loaded
            while len(self._cached) > self.limit:
                self._cached.popitem(last=False)
        self._cached.move_to_end(key)
        latents: np.ndarray = cached
        if len(ref.indices) and (ref.indices.min() < 0 or ref.indices.max() >= len(latents)):
            raise PoolError(
                f"avatar {ref.avatar_id!r} has {len(latents)} frames; asked for frame {int(ref.indices.max())}"
            )
        return latents[ref.indices]

    def _load(self, avatar_id: str, created: str) -> np.ndarray:
        avatar = load_avatar(avatar_id, self.avatars_dir)
        if str(avatar.manifest.get("created", "")) != created:
            raise AvatarError(
                f"avatar {avatar_id!r} in this replica's store {self.avatars_dir} was prepared at "
                f"{avatar.manifest.get('created')!r}, the front end's at {created!r}: the front ends "
                f"and the pool must share one avatars store"
            )
        latents = avatar.latents(self.version)
        if latents is None:  # prepared without weights: encoded once here, by the replica's models
            crops = face_crops(avatar.frames, avatar.face_boxes)
            latents = self.runner.submit(Job(LATENTS, (crops,), time.monotonic() + 60)).result()
        log.info("avatar %s: %d latent rows cached", avatar_id, len(latents))
        return np.ascontiguousarray(latents, np.float32)


class StandInModel:
    """A batch model of ``--fake_cost_ms`` (tests of real time on a CPU far too slow for the models): each batch
    takes a fixed time (the thread sleeps, as it waits for a GPU), then gives rows that depend only on each row's
    inputs: the same job gives the same result in every replica, and a face tells what it was made from (its red
    level: the audio features' mean; its green level: the avatar latents' mean, see `stand_in_face_levels`)."""

    def __init__(self, kind: str, cost_s: float) -> None:
        outputs: dict[str, Callable[..., Rows]] = {
            ENCODER: _stand_in_states,
            FACES: _stand_in_faces,
            LATENTS: _stand_in_latents,
        }
        self.outputs = outputs[kind]
        self.cost_s = cost_s

    def __call__(self, inputs: tuple[Rows, ...], rows: int) -> Rows:
        time.sleep(self.cost_s)
        return self.outputs(*inputs)


def stand_in_batcher(cost_s: float, _models: dict[str, BatchModel], sizes: dict[str, tuple[int, ...]]) -> Batcher:
    """The engine's batcher (`MuseTalkEngine`'s ``runner``) running stand-ins of its models."""
    models = {kind: StandInModel(kind, cost_s) for kind in (ENCODER, FACES, LATENTS)}
    return Batcher(models, sizes, name="musetalk-batcher").start()


def stand_in_face_levels(chunks: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """(n, 2) uint8: the red and green levels of the stand-in faces of these rows."""

    def level(x: np.ndarray) -> np.ndarray:
        return np.round(np.abs(x.reshape(len(x), -1).astype(np.float64).mean(1)) * 1000) % 256

    return np.stack([level(chunks), level(latents)], axis=1).astype(np.uint8)


def _stand_in_faces(chunks: np.ndarray, latents: np.ndarray) -> np.ndarray:
    faces = np.zeros((len(chunks), FACE_SIZE, FACE_SIZE, 3), np.uint8)
    faces[..., :2] = stand_in_face_levels(np.asarray(chunks), np.asarray(latents))[:, None, None, :]
    return faces


def _stand_in_states(mels: np.ndarray, positions: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Each step's states: the mean of its two log-mel frames (an encoder's output depends on the audio)."""
    out = []
    for mel, position, count in zip(np.asarray(mels), np.asarray(positions), np.asarray(counts)):
        steps = mel[:, 2 * position : 2 * (position + count)].reshape(mel.shape[0], count, 2).mean(axis=(0, 2))
        out.append(np.repeat(steps.astype(np.float32)[:, None, None], N_STATES, 1).repeat(FEATURE_DIM, 2))
    return out


def _stand_in_latents(crops: np.ndarray) -> np.ndarray:
    levels = np.asarray(crops).reshape(len(crops), -1).mean(1, dtype=np.float64) / 255
    return np.broadcast_to(levels[:, None, None, None], (len(crops), 8, LATENT_SIZE, LATENT_SIZE)).astype(np.float32)


class MuseTalkReplica:
    """One replica of the pool: the models, their batcher and the avatars' latents (see the module doc)."""

    def __init__(
        self,
        models_dir: str = "models",
        avatars_dir: str = "avatars",
        version: str = "v15",
        batch_size: int | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        max_avatars: int = DEFAULT_MAX_AVATARS,
        late_grace_s: float = DEFAULT_LATE_GRACE_S,
        device: str | None = None,
        tiny: bool = False,
        fake_cost_ms: float | None = None,
    ) -> None:
        runner = None if fake_cost_ms is None else partial(stand_in_batcher, fake_cost_ms / 1000)

        def engine(root: Path, on: str | None) -> MuseTalkEngine:
            return MuseTalkEngine(
                models_dir=root,
                version=version,
                batch_size=batch_size,
                device=on,
                max_sessions=max_sessions,
                runner=runner,
            )

        if tiny:  # the tiny random-weight models of the tests (the same seed: every replica has the same weights)
            from musetalk.tiny import write_tiny_layout

            with tempfile.TemporaryDirectory(prefix="musetalk-tiny-") as root:
                write_tiny_layout(Path(root))
                self.engine = engine(Path(root), device or "cpu")
        else:
            self.engine = engine(Path(models_dir), device)
        assert isinstance(self.engine.runner, Batcher)  # the engine's own (or its stand-ins')
        self.runner: Batcher = self.engine.runner
        self.latents = LatentCache(Path(avatars_dir), version, self.runner, max_avatars)
        self.late_grace_s = late_grace_s
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.device = str(self.engine.models.device) + (
            "" if fake_cost_ms is None else f", models' stand-ins of {fake_cost_ms:g} ms a batch"
        )

    def describe(self) -> PoolSpec:
        e = self.engine
        return PoolSpec(e.version, e.encoder.config.to_dict(), e.batch_size, self.device)

    async def run(self, job: PoolJob) -> PoolResult:
        started = time.perf_counter()
        if job.seconds_left is not None and job.seconds_left < -self.late_grace_s:
            raise LateJob(f"the {job.kind} job arrived {-job.seconds_left:.2f} s after its deadline")
        deadline = 0.0 if job.seconds_left is None else time.monotonic() + job.seconds_left
        inputs = job.inputs
        if job.kind == FACES and isinstance(inputs[1], AvatarRows):
            inputs = (inputs[0], await self.latents.rows(inputs[1]))
        # A cancelled call (the front end's turn ended) cancels the future: dropped unless a batch holds it.
        outputs = await asyncio.wrap_future(self.runner.submit(Job(job.kind, inputs, deadline, job.turn)))
        return PoolResult(outputs, self.replica, time.perf_counter() - started)

    def check_health(self) -> None:
        """Serve's periodic health check: a replica whose batcher stopped is restarted."""
        if not self.runner.running:
            raise RuntimeError("the replica's batcher is not running")

    def __del__(self) -> None:  # Serve tears the replica down: stop the batcher's thread
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


def build_app(args: Mapping[str, Any]) -> Application:
    """The Serve application (also Serve's app builder: ``serve run engines.ray_serve_app:build_app k=v``).

    `args`: ``replicas`` (default 1), ``num_gpus`` per replica (default 1 when this process sees CUDA, else 0),
    ``num_cpus`` per replica (default 1), and `MuseTalkReplica`'s options (``models_dir``, ``avatars_dir``,
    ``version``, ``batch_size``, ``max_sessions``, ``max_avatars``, ``late_grace_s``, ``device``, ``tiny``,
    ``fake_cost_ms``)."""
    import torch

    options = dict(args)
    replicas = int(options.pop("replicas", 1))
    num_gpus = float(options.pop("num_gpus", 1 if torch.cuda.is_available() else 0))
    num_cpus = float(options.pop("num_cpus", 1))
    sessions = int(options.get("max_sessions", DEFAULT_MAX_SESSIONS))
    deployment = serve.deployment(
        name="MuseTalkReplica",
        num_replicas=replicas,
        ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus},
        # Every job of a replica's sessions waits in its batcher at once (an encoder and a faces job each).
        max_ongoing_requests=4 * sessions,
        health_check_period_s=2,
        health_check_timeout_s=30,
        graceful_shutdown_timeout_s=5,
    )(MuseTalkReplica)
    return deployment.bind(**options)


def deploy(args: Mapping[str, Any], address: str = "auto", name: str = DEFAULT_APP) -> None:
    """Run the application on the cluster at `address` (it stays when this process exits)."""
    import ray

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")  # front ends call through handles; no HTTP ingress
        serve.run(build_app(args), name=name, route_prefix=None)
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Deploy the MuseTalk render pool on a Ray cluster (docs/render_pool.md)")
    p.add_argument("--address", default="auto", help="the cluster: auto (this node's), HOST:PORT or ray://HOST:PORT")
    p.add_argument("--name", default=DEFAULT_APP, help="the Serve application's name (front ends look it up)")
    p.add_argument("--replicas", type=int, default=1, help="replicas: one per GPU")
    p.add_argument("--num_gpus", type=float, default=None, help="GPUs per replica (default: 1 with CUDA, else 0)")
    p.add_argument("--num_cpus", type=float, default=1)
    p.add_argument("--models_dir", default="models")
    p.add_argument("--avatars_dir", default="avatars", help="the avatars store, shared with the front ends")
    p.add_argument("--model", dest="version", default="v15", choices=("v1", "v15"))
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--max_sessions", type=int, default=DEFAULT_MAX_SESSIONS)
    p.add_argument("--max_avatars", type=int, default=DEFAULT_MAX_AVATARS)
    p.add_argument("--late_grace_s", type=float, default=DEFAULT_LATE_GRACE_S)
    p.add_argument("--tiny", action="store_true", help="tiny random-weight models on the CPU (tests, bench)")
    p.add_argument(
        "--fake_cost_ms",
        type=float,
        default=None,
        help="tests: the models' stand-ins, a fixed time a batch and faces made from their inputs",
    )
    a = vars(p.parse_args(argv))
    address, name = a.pop("address"), a.pop("name")
    if a["num_gpus"] is None:
        del a["num_gpus"]
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    deploy({k: v for k, v in a.items() if v is not None}, address, name)
    print(f"render pool {name!r} is running with {a['replicas']} replica(s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
