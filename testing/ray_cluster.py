"""A real local Ray cluster for tests and the bench: a head and more node processes on 127.0.0.1, CPU only,
with a small object store, in a temporary folder; stopped by ending exactly the processes of that folder.

``ray stop`` would end every Ray process of the machine (other clusters included), so `LocalRayCluster.stop`
ends the processes that carry this cluster's mark in their environment (`MARK`, set for ``ray start`` and
inherited by the processes Ray starts), and the agents of its raylets (started with an environment of their own
that names their raylet): all of them are ours.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# Ray's own ports for worker processes are 10002-19999 by default: the GCS port stays out of that range.
DEFAULT_PORT = 26379
MARK = "MUSETALK_RAY_CLUSTER"


def quiet_env() -> dict[str, str]:
    """Ray without usage statistics or a dashboard, logging little."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


class LocalRayCluster:
    def __init__(
        self, nodes: int = 2, cpus_per_node: int = 2, port: int = DEFAULT_PORT, object_store_mb: int = 100
    ) -> None:
        self.nodes, self.cpus, self.port, self.store = nodes, cpus_per_node, port, object_store_mb * 1024 * 1024
        self.root = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths must stay short
        self.address = f"127.0.0.1:{port}"
        self._seen: set[int] = set()  # every marked process seen: agents name their raylet by its id

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ray_start(self, *args: str) -> None:
        common = [
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            str(self.cpus),
            "--num-gpus",
            "0",
            "--object-store-memory",
            str(self.store),
            "--disable-usage-stats",
        ]
        done = subprocess.run(
            [RAY, "start", *args, *common],
            env={**quiet_env(), MARK: str(self.root)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self) -> None:
        self._ray_start(
            "--head",
            "--port",
            str(self.port),
            "--include-dashboard=false",
            "--temp-dir",
            str(self.root),
            "--ray-client-server-port",
            str(self.port + 1),
        )
        for _ in range(self.nodes - 1):
            self._ray_start("--address", self.address)
        self.processes()  # the raylets' ids, while they run

    def processes(self) -> list[int]:
        """Ids of this cluster's processes: those whose environment carries its mark, and the agents of its raylets
        (Ray starts them with an environment of their own, naming their raylet)."""
        environs: dict[int, list[bytes]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    environs[int(entry.name)] = (entry / "environ").read_bytes().split(b"\0")
                except OSError:  # it ended meanwhile, or is not ours to read
                    continue
        marked = {pid for pid, env in environs.items() if f"{MARK}={self.root}".encode() in env}
        self._seen |= marked  # remembered: a raylet's agents may outlive it
        raylets = {f"RAY_RAYLET_PID={pid}".encode() for pid in self._seen}
        return sorted(marked | {pid for pid, env in environs.items() if raylets.intersection(env)})

    def stop(self, grace_s: float = 10.0) -> None:
        """End this cluster's processes (SIGTERM, then SIGKILL after `grace_s`) and remove its folder."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            pids = self.processes()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline:
                time.sleep(0.1)
                pids = self.processes()
            if not pids:
                break
        shutil.rmtree(self.root, ignore_errors=True)


def replica_actor(replica_id: str):
    """The actor of a Serve replica, by the replica's id (``PoolResult.replica``), in a driver of its cluster."""
    import ray

    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].endswith("#" + replica_id):
            return ray.get_actor(actor["name"], namespace=actor["namespace"])
    raise LookupError(f"no actor for replica {replica_id}")


def replica_actors(app: str) -> dict:  # actor name -> ray ActorHandle
    """The actors of a Serve application's live replicas, in a driver of its cluster."""
    import ray

    return {
        actor["name"]: ray.get_actor(actor["name"], namespace=actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{app}#")
    }
