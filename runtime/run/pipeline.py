"""Decode, explain and write overlapped (issue: a pipelined run; docs/runs.md).

Three stages over a run's images, in order:

1. ``load(item)`` in a pool of threads, a bounded window ahead of the session (decoding,
   resizing and normalising release the GIL in OpenCV and numpy);
2. ``compute(loaded)`` in a pool of ``computers`` threads, batches in order (one session call a
   method; onnxruntime releases the GIL, so loading and writing go on meanwhile);
3. ``render(batch, i)`` for each image in a second pool (colour map, blend, encode, write), and
   ``commit(batch, rendered)`` on the calling thread, batch after batch in input order, once all
   of a batch's images are rendered (the results table's rows go in order).

At most ``depth`` batches wait at each side, so memory stays bounded whatever the run's length.
An exception in any stage stops the run: work not started is cancelled, work running finishes
(files are written whole or not at all), batches already rendered whole are still committed, and
the exception is raised on the calling thread.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")
Batch = TypeVar("Batch")
Rendered = TypeVar("Rendered")


class Skip(Exception):
    """Raised by ``load`` for an input to leave out of the run (``--skip-bad``); its text says why."""


def default_workers() -> int:
    """Threads per pool: the machine's cores, at least 2 and at most 8."""
    return max(2, min(8, os.cpu_count() or 2))


@dataclass
class Timings:
    """CPU seconds spent per stage (``time.thread_time`` of the threads that ran it: with one onnxruntime
    thread a call, as a CPU run has, the session's work is its caller's), summed over threads, so
    stages that overlap can add up to more than the run's wall time. ``add`` is safe from any thread."""

    decode: float = 0.0
    compute: float = 0.0
    encode: float = 0.0
    write: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    def per_image(self, images: int) -> dict[str, float]:
        """Milliseconds per image, per stage."""
        return {stage: 1000 * getattr(self, stage) / max(images, 1) for stage in ("decode", "compute", "encode", "write")}


@dataclass
class Pipeline(Generic[Item, Loaded, Batch, Rendered]):
    """The three stages (module docstring). workers: threads loading, and threads rendering;
    computers: batches computed at once (``explain``'s ``session_calls``: on 2 cores, two calls of one
    onnxruntime thread each, so cores never wait on each other inside an operator; on a GPU, one)."""

    load: Callable[[Item], Loaded]
    compute: Callable[[list[Loaded]], Batch]
    render: Callable[[Batch, int], Rendered]
    commit: Callable[[Batch, list[Rendered]], None]
    batch_size: int
    workers: int = field(default_factory=default_workers)
    computers: int = 1
    depth: int = 2  # batches waiting to be written; and decoded ahead of the session, with ``prefetch``
    prefetch: int = 64  # images decoded ahead at least (while the first call opens its session, say)
    skipped: Callable[[Item, Skip], None] = lambda item, reason: None
    size: Callable[[Batch], int] = len
    stop: threading.Event | None = None  # set (by a SIGINT handler, say): stop at the next batch boundary

    def run(self, items: Sequence[Item]) -> None:
        """Every item through the three stages; returns when the last batch is committed."""
        loaders = ThreadPoolExecutor(self.workers, thread_name_prefix="onnxcam-load")
        computers = ThreadPoolExecutor(self.computers, thread_name_prefix="onnxcam-compute")
        renderers = ThreadPoolExecutor(self.workers, thread_name_prefix="onnxcam-write")
        loading: deque[tuple[Item, Future]] = deque()
        computing: deque[Future] = deque()
        writing: deque[tuple[Batch, list[Future]]] = deque()
        ahead = max(self.batch_size * (self.depth + self.computers), self.prefetch)
        queued = 0

        def top_up() -> None:
            nonlocal queued
            while queued < len(items) and len(loading) < ahead:
                loading.append((items[queued], loaders.submit(self.load, items[queued])))
                queued += 1

        def next_chunk() -> list[Loaded]:
            chunk = []
            while loading and len(chunk) < self.batch_size:
                item, future = loading.popleft()
                try:
                    chunk.append(future.result())
                except Skip as reason:
                    self.skipped(item, reason)
                top_up()
            return chunk

        try:
            top_up()
            while loading or computing:
                if self.stop is not None and self.stop.is_set():
                    raise KeyboardInterrupt  # between batches: every batch so far is whole, committed or not
                while loading and len(computing) < self.computers:
                    chunk = next_chunk()
                    if chunk:
                        computing.append(computers.submit(self.compute, chunk))
                if not computing:
                    continue
                batch = computing.popleft().result()
                writing.append((batch, [renderers.submit(self.render, batch, i) for i in range(self.size(batch))]))
                while len(writing) > self.depth:
                    self._commit(writing.popleft())
            while writing:
                self._commit(writing.popleft())
        except BaseException:
            self._salvage(writing)
            raise
        finally:
            for future in [f for _, f in loading] + list(computing) + [f for _, fs in writing for f in fs]:
                future.cancel()
            for pool in (loaders, computers, renderers):
                pool.shutdown(wait=True, cancel_futures=True)

    def _commit(self, pending: tuple[Batch, list[Future]]) -> None:
        batch, futures = pending
        self.commit(batch, [future.result() for future in futures])

    def _salvage(self, writing: deque) -> None:
        """When a stage fails: commit, in order, the batches already rendered whole, so that what was
        finished is kept; stop at the first that is not (the run's own error is the one raised)."""
        while writing:
            try:
                self._commit(writing.popleft())
            except BaseException:
                return


def timed(timings: Timings, stage: str, function: Callable) -> Callable:
    """``function`` with its CPU time (this thread's) added to ``timings.<stage>``."""
    def wrapper(*args, **kwargs):
        start = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            timings.add(stage, time.thread_time() - start)
    return wrapper
