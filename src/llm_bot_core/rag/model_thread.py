"""The one thread a local model runs on, serving searches before indexing.

A user's recall waits for its query embedding, with RAG_TIMEOUT as the limit; indexing can
wait. With a plain first-in-first-out executor, one user's long messages being indexed made
every other user's query queue behind them (149 s of work for six 16,000-character messages).
Here a query job always runs before any waiting indexing job, and among queries the shortest
goes first, so a short question never waits behind a long one. Nothing is preempted: a query
still waits for the forward pass in flight, which is why the indexer hands in small sub-batches.
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

_STOP, _QUERY, _DOCUMENTS = -1, 0, 1
_Job = tuple[int, int, int, Callable[[], Any] | None, Future[Any] | None]


class ModelThread:
    """Runs jobs one at a time on a dedicated thread: queries (shortest first), then indexing
    jobs in arrival order, so concurrent indexers take turns sub-batch by sub-batch."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.PriorityQueue[_Job] = queue.PriorityQueue()
        self._order = itertools.count()  # ties keep arrival order, never compare the jobs
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def query(self, size: int, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` before any indexing job; `size` orders queries among themselves."""
        return await self._submit(_QUERY, size, partial(fn, *args))

    async def documents(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` when no query is waiting."""
        return await self._submit(_DOCUMENTS, 0, partial(fn, *args))

    async def _submit(self, lane: int, size: int, job: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError("the model thread is closed")
        future: Future[T] = Future()
        self._jobs.put((lane, size, next(self._order), job, future))
        # Cancelling the awaiting task (recall's timeout) cancels a job that has not started.
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        """Stop after the job in flight; jobs still queued are cancelled."""
        if not self._closed:
            self._closed = True
            self._jobs.put((_STOP, 0, next(self._order), None, None))

    def _serve(self) -> None:
        while True:
            _, _, _, job, future = self._jobs.get()
            if job is None or future is None:
                break
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:  # handed to the awaiting coroutine, raised there
                future.set_exception(exc)
        while not self._jobs.empty():
            _, _, _, _, future = self._jobs.get_nowait()
            if future is not None:
                future.cancel()
