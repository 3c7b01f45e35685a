"""What every benchmark prints: the machine it ran on, and simple statistics."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import UTC, datetime

import numpy as np


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return (
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, {gpu}, "
        f"load {load:.1f}, Python {platform.python_version()}, commit {_commit()}"
    )


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def summary(values_ms: list[float]) -> str:
    v = np.asarray(values_ms, dtype=np.float64)
    if v.size == 0:
        return "no values (n=0)"
    return (
        f"median {np.median(v):.1f} ms, p90 {np.percentile(v, 90):.1f} ms, min {v.min():.1f}, max {v.max():.1f} "
        f"(n={len(v)})"
    )
