"""A process-wide batcher that owns the models: every session's worker submits jobs, one owner thread runs them.

Why: sessions that each take a lock around their own small model calls pay the per-call host cost (Python
dispatch, kernel launches, a blocking copy back) once per session and batch; gathered into one call, it is paid
once for all of them. One thread owning the models also gives one place for per-size captured graphs
(``engines.musetalk_batch``).

A `Job` is N rows of model input of one *kind* (e.g. "encoder": mel inputs, "faces": audio chunks + avatar latent
rows), the conversation turn it belongs to with a getter of its session's current turn, and an absolute deadline
(``time.monotonic()`` seconds, from the session's media clock). `Batcher.submit(job)` returns a
`concurrent.futures.Future` that resolves to the job's output rows.

Scheduling, by the owner thread (the only thread that calls the models):
- Earliest deadline first: the pending job with the earliest deadline (ties: first submitted) picks the kind of
  the next batch, and the jobs of that kind fill it in deadline order.
- Gather window: the batch starts once it is full (the largest size), or ``gather_s`` after the oldest pending job
  of that kind was submitted, or when waiting longer would start it later than its earliest deadline minus the
  measured time of a batch of that kind, whichever comes first. Jobs that arrived while a batch ran have usually
  waited long enough already, so a busy batcher does not wait at all.
- Stale turns: a job whose session has moved to another turn (``current_turn() != turn``) is dropped before it is
  packed, never rendered; its future fails with `StaleJob`. A job cancelled by its caller (``future.cancel()``,
  e.g. the session closed) before it is packed is dropped likewise; cancelling later is refused by the future,
  and the result is simply not used.
- Packing: rows of several jobs go into one batch, padded to the smallest of a few fixed sizes (default 1, 2, 4,
  8, 16, 32: one compiled graph per size) that holds them, padding rows repeating the last real row. A job with
  more rows than fit in the rest of the batch is split: its first rows fill this batch, the rest stay first in
  line (same deadline) for the next; its future resolves once all its rows are done.
- Late jobs: a job past its deadline is still run (deadline order puts it first) and counted in
  ``stats.late_jobs``; whether a late face is still shown is the session's call (it may cancel the future).
- Errors: an exception raised by the model fails every job of that batch (the same exception object) and the
  owner thread goes on serving.
- `stop()` lets the batch in flight finish, joins the thread, and fails every job still pending, or submitted
  afterwards, with `BatcherStopped`.

The model of a kind is any callable ``model(inputs, rows) -> outputs``: ``inputs`` is a tuple, one entry per job
input, each the rows of the batch stacked along the first axis (numpy arrays, torch tensors or lists, as the
jobs gave them) and padded to the batch size; ``rows`` says how many leading rows are real. It returns at least
``rows`` rows (an array, a tensor or a list), or a tuple of such; the batcher slices each job's rows from them.
Models must not modify their inputs (a lone job's input may be passed through without a copy).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 32)
DEFAULT_GATHER_S = 0.003

Rows = Any  # np.ndarray | torch.Tensor | list: anything with rows along its first axis


class BatchModel(Protocol):
    def __call__(self, inputs: tuple[Rows, ...], rows: int) -> Rows | tuple[Rows, ...]: ...


class JobRunner(Protocol):
    """What a session-side user of the models needs: `Batcher`, or another runner of the same jobs (the bench's
    lock-serialised baseline; a pool of processes)."""

    def submit(self, job: Job) -> Future: ...

    def stop(self, timeout: float | None = None) -> None: ...


class BatcherError(RuntimeError):
    """Base of the batcher's own failures of a job."""


class StaleJob(BatcherError):
    """The job's turn ended (interrupt) before it was run: it was dropped."""


class BatcherStopped(BatcherError):
    """The batcher stopped before the job was run."""


@dataclass(eq=False)
class Job:
    kind: str
    inputs: tuple[Rows, ...]  # each with the same number of rows (>= 1)
    deadline: float  # time.monotonic() seconds by which the result is due
    turn: int = 0
    current_turn: Callable[[], int] | None = None  # the session's turn now; must be cheap and never block

    @property
    def rows(self) -> int:
        return _num_rows(self.inputs[0])

    def stale(self) -> bool:
        return self.current_turn is not None and self.current_turn() != self.turn


@dataclass
class BatcherStats:
    batches: int = 0
    rows: int = 0  # real rows run
    padded_rows: int = 0  # padding rows run
    jobs_done: int = 0
    stale_jobs: int = 0
    cancelled_jobs: int = 0
    late_jobs: int = 0  # jobs (parts) that started after their deadline
    failed_batches: int = 0
    batch_sizes: dict[tuple[str, int], int] = field(default_factory=dict)  # (kind, padded size) -> batches


@dataclass(eq=False)
class _Pending:
    job: Job
    future: Future
    seq: int
    submitted: float
    rows: int
    packed: int = 0  # rows handed to batches so far
    done: int = 0  # rows whose outputs are back
    started: bool = False  # future moved to RUNNING (can no longer be cancelled)
    finished: bool = False
    parts: list = field(default_factory=list)

    @property
    def key(self) -> tuple[float, int]:
        return self.job.deadline, self.seq


@dataclass
class _Batch:
    kind: str
    size: int
    rows: int
    parts: list[tuple[_Pending, int, int]]  # (job, first row, end row) in batch order


# ------------------------------------------------------------------------------- rows of arrays, tensors, lists


def _num_rows(x: Rows) -> int:
    return int(x.shape[0]) if isinstance(x, (np.ndarray, torch.Tensor)) else len(x)


def _concat(parts: Sequence[Rows]) -> Rows:
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(list(parts))
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    return [row for part in parts for row in part]


def _pad(x: Rows, size: int) -> Rows:
    n = _num_rows(x)
    if n == size:
        return x
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
    return list(x) + [x[-1]] * (size - n)


def _slice(out: Rows | tuple, start: int, end: int) -> Rows | tuple:
    if isinstance(out, tuple):
        return tuple(o[start:end] for o in out)
    return out[start:end]


def _join(parts: list) -> Rows | tuple:
    if isinstance(parts[0], tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    return _concat(parts)


def _output_rows(out: Rows | tuple) -> int:
    return min(_num_rows(o) for o in out) if isinstance(out, tuple) else _num_rows(out)


# ------------------------------------------------------------------------------------------------ the batcher


class Batcher:
    """One owner thread running the models of every session in gathered, padded batches (see the module doc)."""

    def __init__(
        self,
        models: Mapping[str, BatchModel],
        sizes: Sequence[int] | Mapping[str, Sequence[int]] = BATCH_SIZES,
        gather_s: float = DEFAULT_GATHER_S,
        name: str = "batcher",
    ) -> None:
        if not models:
            raise ValueError("a batcher needs at least one model")
        self.models = dict(models)
        per_kind = sizes if isinstance(sizes, Mapping) else {kind: sizes for kind in self.models}
        self.sizes: dict[str, tuple[int, ...]] = {}
        for kind in self.models:
            s = tuple(sorted(set(per_kind.get(kind, BATCH_SIZES))))
            if not s or s[0] < 1:
                raise ValueError(f"batch sizes of {kind!r} must be positive, got {s}")
            self.sizes[kind] = s
        if gather_s < 0:
            raise ValueError(f"gather_s must be >= 0, got {gather_s}")
        self.gather_s = gather_s
        self.name = name
        self.stats = BatcherStats()
        self._cost: dict[tuple[str, int], float] = {}  # (kind, size) -> smoothed seconds per batch
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []  # sorted by (deadline, seq)
        self._seq = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -------------------------------------------------------------------------------- owner's life

    def start(self) -> Batcher:
        with self._cond:
            if self._thread is not None:
                raise RuntimeError(f"{self.name} was already started")
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish the batch in flight, join the owner thread, fail every pending job with `BatcherStopped`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"{self.name}: a model call did not return within {timeout} s")
        self._reject_all(BatcherStopped(f"{self.name} stopped before the job ran"))

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def __enter__(self) -> Batcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def estimated_cost(self, kind: str, rows: int) -> float:
        """Measured seconds of a batch of `kind` holding `rows` rows (0 until one of that size has run)."""
        return self._cost.get((kind, self._size_for(kind, rows)), 0.0)

    # ------------------------------------------------------------------------------------- sessions' side

    def submit(self, job: Job) -> Future:
        """Queue a job (any thread); the future resolves to its output rows, or fails with `StaleJob`,
        `BatcherStopped` or the model's exception."""
        if job.kind not in self.models:
            raise ValueError(f"no model for jobs of kind {job.kind!r} (have {sorted(self.models)})")
        if not isinstance(job.inputs, tuple) or not job.inputs:
            raise ValueError("job inputs must be a non-empty tuple")
        rows = {_num_rows(x) for x in job.inputs}
        if len(rows) != 1 or min(rows) < 1:
            raise ValueError(f"job inputs must all hold the same number (>= 1) of rows, got {sorted(rows)}")
        future: Future = Future()
        with self._cond:
            if self._stopping:
                future.set_exception(BatcherStopped(f"{self.name} is stopped"))
                return future
            pending = _Pending(job, future, self._seq, time.monotonic(), rows.pop())
            self._seq += 1
            bisect.insort(self._queue, pending, key=lambda p: p.key)
            self._cond.notify_all()
        return future

    # -------------------------------------------------------------------------------------- owner thread

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    batch = self._next_batch()
                if batch is None:
                    return
                self._execute(batch)
        except BaseException as e:  # a bug here must not leave sessions waiting on futures forever
            log.exception("%s: owner thread failed", self.name)
            with self._cond:
                self._stopping = True
            self._reject_all(BatcherStopped(f"{self.name} failed: {e!r}"))

    def _size_for(self, kind: str, rows: int) -> int:
        sizes = self.sizes[kind]
        i = bisect.bisect_left(sizes, rows)
        return sizes[min(i, len(sizes) - 1)]

    def _next_batch(self) -> _Batch | None:
        """Wait (``_cond`` held) until a batch is due, then pack it; None once stopping."""
        while True:
            if self._stopping:
                return None
            self._drop_dead()
            if not self._queue:
                self._cond.wait()
                continue
            kind = self._queue[0].job.kind
            same = [p for p in self._queue if p.job.kind == kind]
            rows = sum(p.rows - p.packed for p in same)
            largest = self.sizes[kind][-1]
            now = time.monotonic()
            start_at = min(
                min(p.submitted for p in same) + self.gather_s,
                same[0].job.deadline - self._cost.get((kind, largest), 0.0),
            )
            if rows >= largest or now >= start_at:
                return self._pack(kind, same, largest)
            self._cond.wait(start_at - now)

    def _drop_dead(self) -> None:
        keep = []
        for p in self._queue:
            if p.finished:
                continue
            if not p.started and p.future.cancelled():
                self.stats.cancelled_jobs += 1
                continue
            if self._is_stale(p):
                self.stats.stale_jobs += 1
                self._fail(p, StaleJob(f"turn {p.job.turn} ended before its {p.job.kind} job ran"))
                continue
            keep.append(p)
        self._queue[:] = keep

    def _is_stale(self, p: _Pending) -> bool:
        try:
            return p.job.stale()
        except Exception as e:  # noqa: BLE001 -- a broken getter fails its own job, not the batcher
            self._fail(p, e)
            return False

    def _pack(self, kind: str, same: list[_Pending], largest: int) -> _Batch:
        parts, room, now = [], largest, time.monotonic()
        for p in same:
            if room == 0:
                break
            if p.finished:  # its stale-turn getter raised in _drop_dead
                continue
            if not p.started:
                if not p.future.set_running_or_notify_cancel():
                    self.stats.cancelled_jobs += 1
                    p.finished = True
                    continue
                p.started = True
            if p.job.deadline < now:
                self.stats.late_jobs += 1
            n = min(room, p.rows - p.packed)
            parts.append((p, p.packed, p.packed + n))
            p.packed += n
            room -= n
        self._queue[:] = [p for p in self._queue if not p.finished and p.packed < p.rows]
        rows = largest - room
        return _Batch(kind, self._size_for(kind, rows), rows, parts)

    def _execute(self, batch: _Batch) -> None:
        started = time.perf_counter()
        try:
            inputs = tuple(
                _pad(_concat([_slice(p.job.inputs[i], a, b) for p, a, b in batch.parts]), batch.size)
                for i in range(len(batch.parts[0][0].job.inputs))
            )
            out = self.models[batch.kind](inputs, batch.rows)
            if _output_rows(out) < batch.rows:
                raise ValueError(f"the {batch.kind} model returned {_output_rows(out)} rows for {batch.rows}")
        except BaseException as e:  # noqa: BLE001 -- reported to every job of the batch
            log.warning("%s: a %s batch of %d failed: %r", self.name, batch.kind, batch.rows, e)
            with self._cond:
                self.stats.failed_batches += 1
                for p, _, _ in batch.parts:
                    self._fail(p, e)
            return
        elapsed = time.perf_counter() - started
        key = (batch.kind, batch.size)
        with self._cond:
            self._cost[key] = elapsed if key not in self._cost else 0.8 * self._cost[key] + 0.2 * elapsed
            self.stats.batches += 1
            self.stats.rows += batch.rows
            self.stats.padded_rows += batch.size - batch.rows
            self.stats.batch_sizes[key] = self.stats.batch_sizes.get(key, 0) + 1
            offset, resolved = 0, []
            for p, a, b in batch.parts:
                n = b - a
                if not p.finished:
                    p.parts.append(_slice(out, offset, offset + n))
                    p.done += n
                    if p.done == p.rows:
                        p.finished = True
                        resolved.append(p)
                offset += n
            self.stats.jobs_done += len(resolved)
        for p in resolved:  # outside the lock: done-callbacks may submit
            p.future.set_result(_join(p.parts))
            p.parts = []

    def _fail(self, p: _Pending, error: BaseException) -> None:
        if p.finished:
            return
        p.finished = True
        p.parts = []
        if not p.started:
            if not p.future.set_running_or_notify_cancel():
                return
            p.started = True
        p.future.set_exception(error)

    def _reject_all(self, error: BatcherError) -> None:
        with self._cond:
            pending, self._queue = self._queue, []
            for p in pending:
                self._fail(p, error)
