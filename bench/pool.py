"""The render pool on Ray Serve (docs/render_pool.md): what the hop costs, and the rate of 1 and 2 replicas.

    .venv/bin/python -m bench.pool                     # a local CPU cluster, tiny models (run it in scripts/test.sh's
                                                       # namespace or on a machine where 127.0.0.1 is all Ray sees)
    .venv/bin/python -m bench.pool --address auto      # an existing cluster (its GPUs: the real models)

Two parts, in the same run:

1. Per-call overhead: the same faces jobs (B rows, zeros) run in this process through the engine's own batcher
   and through the pool (one replica); the hop is a call's time less the time its replica spent on it.
2. Aggregate rate: `--clients` threads submit faces jobs of B rows back to back for `--seconds`, with 1 and then 2
   replicas; frames per second and the per-call latency. With 2, one replica is then killed while the clients
   call: how many calls fail, how soon calls are answered again, how soon Serve runs 2 replicas again.
3. The same with 1 replica batching with Serve's ``@serve.batch`` (up to 4 jobs, 3 ms wait) around the faces model
   instead of our batcher: which of the two the pool should use.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import machine, summary
from engines.batcher import Job, JobRunner
from engines.musetalk_batch import FACES

if TYPE_CHECKING:  # Ray is imported when the bench runs, not with the module
    from ray.serve import Application

    from engines.musetalk_engine import MuseTalkEngine
    from engines.ray_pool import RayRunner

APP = "bench-pool"


def faces_job(rows: int) -> Job:
    return Job(FACES, (np.zeros((rows, 50, 384), np.float32), np.zeros((rows, 8, 32, 32), np.float32)), 0.0)


def timed_calls(runner: JobRunner, rows: int, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        runner.submit(faces_job(rows)).result()
        times.append(time.perf_counter() - started)
    return times


def hop_times(runner: RayRunner, rows: int, n: int) -> list[float]:
    """Each call's time less its replica's time (the replica's own figure, sent back with the result)."""
    from engines.ray_pool import PoolJob

    handle, hops = runner._handle, []  # the raw call: its PoolResult carries the replica's time
    for _ in range(n):
        job = faces_job(rows)
        started = time.perf_counter()
        result = handle.remote(PoolJob(job.kind, job.inputs, None)).result()
        hops.append(time.perf_counter() - started - result.seconds)
    return hops


def aggregate(runner: JobRunner, rows: int, clients: int, seconds: float) -> tuple[float, list[float]]:
    """Frames per second of `clients` threads submitting back to back, and their calls' times."""
    stop, times, lock = time.monotonic() + seconds, [], threading.Lock()

    def client() -> None:
        while time.monotonic() < stop:
            started = time.perf_counter()
            runner.submit(faces_job(rows)).result()
            with lock:
                times.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(times) * rows / (time.perf_counter() - started), times


def replica_restart(runner: RayRunner, rows: int, clients: int, bound_s: float = 300.0) -> str:
    """Kill one of two replicas while `clients` threads call back to back: the calls that failed, when the
    calls were answered again, when Serve had two replicas running again and when the new one first answered."""
    import ray
    from ray import serve
    from ray.serve.schema import ReplicaState

    from engines.ray_pool import PoolJob
    from testing.ray_cluster import replica_actor

    handle, answers, lock, stop = runner._handle, [], threading.Lock(), threading.Event()

    def client() -> None:
        while not stop.is_set():
            job = faces_job(rows)
            try:
                replica = handle.remote(PoolJob(job.kind, job.inputs, None)).result(timeout_s=60).replica
            except Exception:  # noqa: BLE001 -- the killed replica's calls: counted as failed
                replica = None
            with lock:
                answers.append((time.monotonic(), replica))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        with lock:
            before = {r for _, r in answers if r is not None}
        ray.kill(replica_actor(next(iter(before))))
        killed = time.monotonic()
        while True:
            with lock:
                new = [t for t, r in answers if r is not None and r not in before]
            status = serve.status().applications[APP].deployments["MuseTalkReplica"]
            running = status.replica_states.get(ReplicaState.RUNNING, 0)
            if new and running == 2:
                break
            if time.monotonic() - killed > bound_s:
                return f"replica killed: not back after {bound_s:g} s ({status})"
            time.sleep(0.2)
        running_at = time.monotonic()
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [t for t, r in answers if r is None and t >= killed]
    answered = min(t for t, r in answers if r is not None and t > max(failed, default=killed))
    return (
        f"one of 2 replicas killed: {len(failed)} call(s) failed; calls answered again "
        f"{answered - killed:.2f} s after the kill; 2 replicas running after {running_at - killed:.1f} s "
        f"(the new one's first answer {min(new) - killed:.1f} s)"
    )


def ms(values: list[float]) -> str:
    return summary([1000 * v for v in values])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", default=None, help="an existing cluster (default: start a local CPU one)")
    p.add_argument("--rows", type=int, default=4, help="frames per job (a session's batch)")
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny models on the CPU (default: with the local cluster)",
    )
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import ray
    from ray import serve

    from engines.ray_pool import RayRunner
    from engines.ray_serve_app import build_app
    from testing.ray_cluster import LocalRayCluster

    tiny = a.tiny if a.tiny is not None else a.address is None
    cluster = LocalRayCluster(nodes=2, cpus_per_node=1) if a.address is None else None
    print(f"machine: {machine()}")
    print(
        f"pool: {'local CPU cluster, 2 nodes x 1 CPU' if cluster else a.address}, "
        f"{'tiny models' if tiny else 'models/'}; {a.rows} frames a job",
        flush=True,
    )
    try:
        if cluster is not None:
            cluster.start()
        ray.init(address=cluster.address if cluster else a.address, logging_level=logging.WARNING, log_to_driver=False)
        serve.start(proxy_location="Disabled")
        options = {"tiny": tiny, "batch_size": a.rows, "num_cpus": 1}
        if cluster is not None:
            options["num_gpus"] = 0
        rates = {}
        for replicas in (1, 2):
            handle = serve.run(build_app({**options, "replicas": replicas}), name=APP, route_prefix=None)
            runner = RayRunner(handle)
            try:
                timed_calls(runner, a.rows, 4)  # both replicas' first calls
                if replicas == 1:
                    local = _local_engine(tiny, a.rows)
                    try:
                        timed_calls(local.runner, a.rows, 3)
                        in_process = timed_calls(local.runner, a.rows, a.calls)
                    finally:
                        local.close()
                    through_pool = timed_calls(runner, a.rows, a.calls)
                    print(
                        f"faces call, {a.rows} frames: in process {ms(in_process)}; through the pool "
                        f"{ms(through_pool)}; the hop alone {ms(hop_times(runner, a.rows, a.calls))}",
                        flush=True,
                    )
                fps, times = aggregate(runner, a.rows, a.clients, a.seconds)
                rates[replicas] = fps
                print(f"{replicas} replica(s), {a.clients} clients: {fps:.1f} frames/s, calls {ms(times)}", flush=True)
                if replicas == 2:
                    print(replica_restart(runner, a.rows, a.clients), flush=True)
            finally:
                runner.stop()
        print(f"2 replicas / 1 replica: {rates[2] / rates[1]:.2f}x")
        handle = serve.run(serve_batched_app(options, a.clients), name=APP, route_prefix=None)
        runner = RayRunner(handle)
        try:
            timed_calls(runner, a.rows, 2)
            fps, times = aggregate(runner, a.rows, a.clients, a.seconds)
            print(
                f"1 replica with @serve.batch, {a.clients} clients: {fps:.1f} frames/s, calls {ms(times)} "
                f"(our batcher: {rates[1]:.1f} frames/s)",
                flush=True,
            )
        finally:
            runner.stop()
        serve.delete(APP)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.stop()


def serve_batched_app(options: dict, max_jobs: int) -> Application:
    """One replica whose faces jobs are batched by ``@serve.batch`` and run on the faces model directly."""
    import asyncio

    from ray import serve

    from engines.ray_serve_app import MuseTalkReplica
    from engines.render_pool import PoolJob, PoolResult, PoolSpec

    class ServeBatched:
        def __init__(self) -> None:
            self.replica = MuseTalkReplica(tiny=options["tiny"], batch_size=options["batch_size"])
            self.faces = self.replica.engine.batch_models[FACES]

        def describe(self) -> PoolSpec:
            return self.replica.describe()

        @serve.batch(max_batch_size=max_jobs, batch_wait_timeout_s=0.003)
        async def run(self, jobs: list[PoolJob]) -> list[PoolResult]:
            started = time.perf_counter()
            inputs = tuple(np.concatenate([job.inputs[i] for job in jobs]) for i in range(2))
            out = await asyncio.to_thread(self.faces, inputs, len(inputs[0]))
            seconds, ends = time.perf_counter() - started, np.cumsum([len(job.inputs[0]) for job in jobs])
            return [PoolResult(part, self.replica.replica, seconds) for part in np.split(out, ends[:-1])]

    # The class made a deployment by a call rather than a decorator: mypy keeps a decorated class's own type.
    deployment = serve.deployment(
        name="ServeBatched",
        num_replicas=1,
        max_ongoing_requests=4 * max_jobs,
        ray_actor_options={"num_cpus": options["num_cpus"], "num_gpus": options.get("num_gpus", 0)},
    )(ServeBatched)
    return deployment.bind()


def _local_engine(tiny: bool, rows: int) -> MuseTalkEngine:
    """The same models in this process (one torch thread, as a replica with one CPU has)."""
    import torch

    from engines.musetalk_engine import MuseTalkEngine
    from musetalk.tiny import write_tiny_layout

    if not tiny:
        return MuseTalkEngine(batch_size=rows)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as root:
        write_tiny_layout(Path(root))
        return MuseTalkEngine(models_dir=Path(root), batch_size=rows, device="cpu")


if __name__ == "__main__":
    main()
