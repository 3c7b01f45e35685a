"""The front end's side of the render pool (``--render_pool ray[://ADDRESS]``, docs/render_pool.md).

`RayRunner` is a job runner (``engines.batcher.JobRunner``) that sends the musetalk engine's jobs to the Serve
application of ``engines.ray_serve_app`` through a DeploymentHandle, from an event loop of its own (the calls are
asynchronous; the sessions' workers wait on ``concurrent.futures`` as with the in-process batcher). Serve picks
the replica (the one with the fewest requests in flight of two sampled).

Turns across the hop: a job of an ended turn is not sent; one in flight has its call cancelled (checked every
`STALE_POLL_S`), which drops it in the replica unless a batch holds it already; a result of an ended turn is
dropped here. All three raise `StaleJob` in the session's worker, as the in-process batcher does.

Failures: a call that fails (its replica died mid-batch, a timeout, an error in the replica) raises `PoolError`;
the session's worker shows the last frame again for those ticks and reports one ``render_error`` event, and the
next batches go to the replicas alive (Serve starts a new one in place of the dead).

`PooledMuseTalkEngine` is the musetalk engine of a front end: the features' windowing and the log-mel on the
sessions' threads as always, the models in the pool (this process loads none); its lead includes the hop, since
its batch time is measured through the pool at start.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import ray
import torch
from ray import serve
from transformers import WhisperConfig

from engines.base import DEFAULT_RIGHT_CONTEXT_S, AvatarBinding
from engines.batcher import Job, StaleJob
from engines.musetalk_engine import MuseTalkEngine, MuseTalkRenderer
from engines.render_pool import (
    DEFAULT_APP,
    AvatarRows,
    PoolError,
    PoolJob,
    PoolResult,
    PoolSpec,
    PoolUnavailableError,
    pool_address,
)
from musetalk.avatar import Avatar

log = logging.getLogger(__name__)

STALE_POLL_S = 0.02
DEFAULT_CALL_TIMEOUT_S = 10.0  # beyond a job's deadline: a call not answered by then fails (no session hangs)
CONNECT_TIMEOUT_S = 30.0


@dataclass
class PoolStats:
    calls: int = 0
    failed: int = 0
    stale: int = 0  # not sent, cancelled in flight or dropped on return: their turn ended
    late: int = 0  # dropped by a replica: they arrived too late
    by_replica: collections.Counter = field(default_factory=collections.Counter)  # replica id -> jobs run
    hop_seconds: float = 0.0  # smoothed: a call's time less the time its replica spent on it


class RayRunner:
    """Runs jobs in the pool (see the module doc); `stop()` fails the calls in flight and ends its thread."""

    def __init__(self, handle: Any, call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        self._handle = handle.options(method_name="run")
        self.call_timeout_s = call_timeout_s
        self.stats = PoolStats()
        self._lock = threading.Lock()
        self._in_flight: dict[asyncio.Task, Job] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="render-pool", daemon=True)
        self._thread.start()
        self._watcher = asyncio.run_coroutine_threadsafe(self._watch_turns(), self._loop)

    def submit(self, job: Job) -> Future:
        if job.stale():
            future: Future = Future()
            future.set_exception(self._stale(job))
            return future
        return asyncio.run_coroutine_threadsafe(self._call(job), self._loop)

    def in_flight(self) -> list[Job]:
        """The jobs whose calls are in flight now (diagnostics; a snapshot taken on the runner's loop)."""

        async def snapshot() -> list[Job]:
            return list(self._in_flight.values())

        return asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result()

    def stop(self, timeout: float | None = None) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._cancel_all(), self._loop).result(timeout)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        self._loop.close()

    def _stale(self, job: Job) -> StaleJob:
        with self._lock:
            self.stats.stale += 1
        return StaleJob(f"turn {job.turn} ended before its {job.kind} job was rendered by the pool")

    async def _call(self, job: Job) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight[task] = job
        sent = time.perf_counter()
        left = job.deadline - time.monotonic() if job.deadline > 0 else None
        response = self._handle.remote(PoolJob(job.kind, job.inputs, left, job.turn))
        try:
            result: PoolResult = await asyncio.wait_for(_answer(response), max(left or 0.0, 0.0) + self.call_timeout_s)
        except asyncio.CancelledError:
            response.cancel()
            if job.stale():  # cancelled by the turn watcher
                raise self._stale(job) from None
            raise
        except StaleJob as e:  # LateJob: the replica dropped it
            with self._lock:
                self.stats.late += 1
            raise StaleJob(str(e)) from None
        except Exception as e:  # noqa: BLE001 -- the replica died, a timeout, an error there: the call failed
            response.cancel()
            with self._lock:
                self.stats.failed += 1
            raise PoolError(f"the render pool failed the {job.kind} job: {_reason(e)}") from None
        finally:
            self._in_flight.pop(task, None)
        if job.stale():  # rendered, but its turn ended meanwhile: never shown
            raise self._stale(job)
        with self._lock:
            s = self.stats
            s.calls += 1
            s.by_replica[result.replica] += 1
            hop = time.perf_counter() - sent - result.seconds
            s.hop_seconds = hop if s.calls == 1 else 0.9 * s.hop_seconds + 0.1 * hop
        return result.outputs

    async def _watch_turns(self) -> None:
        while True:
            await asyncio.sleep(STALE_POLL_S)
            for task, job in list(self._in_flight.items()):
                if job.stale():
                    task.cancel()

    async def _cancel_all(self) -> None:
        self._watcher.cancel()
        tasks = list(self._in_flight)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _answer(response: Any) -> PoolResult:
    return await response


def _reason(error: BaseException) -> str:
    if isinstance(error, asyncio.TimeoutError):
        return "no answer in time"
    first = str(error).strip().splitlines()
    return f"{type(error).__name__}: {first[0] if first else ''}"


class PooledBinding(AvatarBinding):
    """An avatar bound to a pooled engine: its latents stay in the pool, a job names its frames."""

    def __init__(self, engine: PooledMuseTalkEngine, avatar: Avatar) -> None:
        self.engine = engine
        self.latents = AvatarRows(
            avatar.avatar_id, str(avatar.manifest.get("created", "")), np.arange(avatar.n_frames, dtype=np.int64)
        )

    def new_renderer(self) -> MuseTalkRenderer:
        return MuseTalkRenderer(self)


class PooledMuseTalkEngine(MuseTalkEngine):
    """The musetalk engine of a front end whose models run in the pool (see the module doc)."""

    def __init__(
        self,
        runner: RayRunner,
        spec: PoolSpec,
        batch_size: int | None = None,
        right_context_s: float = DEFAULT_RIGHT_CONTEXT_S,
    ) -> None:
        self.pool, self.spec = runner, spec
        # What the engine reads of the models it would run (its batch models are built and never called): their
        # device and the whisper encoder's shape.
        models = SimpleNamespace(device=torch.device("cpu"), dtype=torch.float32, unet=None, vae=None)
        encoder = SimpleNamespace(
            config=WhisperConfig.from_dict(spec.encoder_config), conv1=SimpleNamespace(weight=torch.empty(0))
        )
        super().__init__(
            version=spec.version,
            batch_size=batch_size or spec.batch_size,
            right_context_s=right_context_s,
            graph_mode=None,
            channels_last=False,
            loaded=(models, encoder),  # type: ignore[arg-type]
            runner=lambda *_: runner,
        )

    def _bind(self, avatar: Avatar) -> PooledBinding:
        return PooledBinding(self, avatar)

    def describe(self) -> str:
        return f"musetalk {self.version} in the render pool ({self.spec.device} replicas)"

    def close(self) -> None:
        super().close()
        s = self.pool.stats
        log.info(
            "render pool: %d jobs rendered, by replica %s; %d failed, %d stale, %d late; hop %.1f ms",
            s.calls,
            json.dumps(dict(s.by_replica)),
            s.failed,
            s.stale,
            s.late,
            1000 * s.hop_seconds,
        )
        ray.shutdown()


def connect(value: str, app_name: str = DEFAULT_APP, timeout_s: float = CONNECT_TIMEOUT_S) -> tuple[Any, PoolSpec]:
    """Join the Ray cluster of ``--render_pool`` `value` and find the pool's application: its handle and spec.
    PoolUnavailableError (with what to do) when either is not there."""
    address = pool_address(value)
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 -- ConnectionError, a Ray Client failure, a timeout...
        raise PoolUnavailableError(
            f"cannot join the Ray cluster at {address}: {_reason(e)} (start it with "
            f"'ray start', see docs/render_pool.md)"
        ) from None
    try:
        handle = serve.get_app_handle(app_name)
        spec: PoolSpec = handle.options(method_name="describe").remote().result(timeout_s=timeout_s)
    except Exception as e:  # noqa: BLE001 -- no such application, no replica answering
        ray.shutdown()
        raise PoolUnavailableError(
            f"the Ray cluster at {address} has no running render pool {app_name!r}: "
            f"{_reason(e)} (deploy it with 'python -m engines.ray_serve_app', see "
            f"docs/render_pool.md)"
        ) from None
    return handle, spec


def create_pooled_engine(
    value: str,
    version: str,
    batch_size: int | None = None,
    right_context_s: float = DEFAULT_RIGHT_CONTEXT_S,
    app_name: str = DEFAULT_APP,
) -> PooledMuseTalkEngine:
    handle, spec = connect(value, app_name)
    if spec.version != version:
        ray.shutdown()
        raise PoolUnavailableError(f"the render pool runs MuseTalk {spec.version}, this front end wants {version}")
    runner = RayRunner(handle)
    try:
        engine = PooledMuseTalkEngine(runner, spec, batch_size, right_context_s)
    except BaseException:
        runner.stop()
        ray.shutdown()
        raise
    log.info(
        "render pool %r at %s: MuseTalk %s on %s, %.0f ms per batch through the pool, hop %.1f ms, lead %d ticks",
        app_name,
        pool_address(value),
        spec.version,
        spec.device,
        1000 * engine.batch_seconds,
        1000 * runner.stats.hop_seconds,
        engine.lead_ticks,
    )
    return engine
