"""Fire-and-forget asyncio tasks that are still owned, and daemon threads for blocking calls."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

# How long a job cancelled at shutdown may take to unwind (roll back, hand back outbox rows).
UNWIND_SECONDS = 2.0


class BackgroundTasks:
    """Keeps a reference to each task until it ends (the loop holds only weak ones), hands a
    failure to `on_failure` (nobody awaits these tasks), and lets the owner wait for them all.
    """

    def __init__(self, on_failure: Callable[[asyncio.Task[Any], BaseException], None]) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._on_failure(task, exc)

    async def drain(self) -> None:
        """Wait until every task, including those spawned meanwhile, has ended."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def finish_within(self, grace: float) -> None:
        """At shutdown: wait up to `grace` seconds, then cancel what is left and let it unwind."""
        if not self._tasks:
            return
        _, late = await asyncio.wait(list(self._tasks), timeout=grace)
        if late:
            for task in late:
                if not task.cancelling():  # one already cancelled is unwinding: let it finish
                    task.cancel()
            log.warning("shutdown: cancelled %d background job(s) after %ss", len(late), grace)
            await asyncio.wait(late, timeout=UNWIND_SECONDS)


class DaemonThreads:
    """Runs blocking calls off the event loop in daemon threads.

    Unlike asyncio.to_thread, a call still blocked at exit (a publish to a broker that stopped
    answering, a batch of the local embedder) does not hold the process: asyncio.run
    and the interpreter join the default executor's threads, never daemon ones.
    """

    def __init__(self, count: int, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._count = count
        for i in range(count):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    async def run(self, fn: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((fn, future, loop))
        return await future

    def close(self) -> None:
        for _ in range(self._count):
            self._calls.put(None)

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future, loop = call
            if future.cancelled():  # given up on while queued (shutdown): skip the call
                continue
            try:
                result, error = fn(), None
            except Exception as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is closed: nobody waits for this result any more
                return


_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


def _settle(future: asyncio.Future[Any], result: Any, error: Exception | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
