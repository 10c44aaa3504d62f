"""A thread of its own for a local model's forward passes, serving the smallest job first.

A forward pass cannot be interrupted, so a job queued behind another waits for all of it.
The local embedder therefore runs short queries, long queries and indexing on threads of their
own (each with its own copy of e5, ~20 MB; "e5+use" adds a fourth for USE's half of indexing):
a user's query never waits for another user's messages being indexed. Within a thread, the
smaller job goes first (a short question never waits behind a long one), and equal sizes keep
their arrival order (concurrent indexers take turns).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")

_STOP = -1
_Job = tuple[int, int, Callable[[], Any] | None, Future[Any] | None]


class ModelThread:
    """Runs jobs one at a time on a dedicated thread, smallest `size` first."""

    def __init__(self, name: str, setup: Callable[[], None] | None = None) -> None:
        self._setup = setup  # runs first on the thread (its priority, before any job)
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()  # ties keep arrival order, never compare the jobs
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    @property
    def native_id(self) -> int | None:
        """The OS id of the thread (its scheduling priority is per thread on Linux)."""
        return self._thread.native_id

    async def run(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` on this thread, after the waiting jobs of smaller size."""
        if self._closed:
            raise RuntimeError("the model thread is closed")
        future: Future[T] = Future()
        self._jobs.put((max(size, 0), next(self._order), partial(fn, *args), future))
        # Cancelling the awaiting task (recall's timeout) cancels a job that has not started.
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop after the job in flight; jobs still queued are cancelled."""
        if not self._closed:
            self._closed = True
            self._jobs.put((_STOP, next(self._order), None, None))

    def _serve(self) -> None:
        if self._setup is not None:
            self._setup()
        while True:
            _, _, job, future = self._jobs.get()
            if job is None or future is None:
                break
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the awaiting coroutine, raised there
                future.set_exception(exc)
        while not self._jobs.empty():
            _, _, _, future = self._jobs.get_nowait()
            if future is not None:
                future.cancel()
