"""A reply while it is generated: the text a client is sent, and the hand-over to the reader."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ReplyText:
    """Turns the model's deltas into the deltas a client is sent.

    What is sent adds up to exactly what a plain call stores: the model's text stripped and cut
    to `limit` characters. Leading whitespace is dropped; trailing whitespace is held back until
    more text follows it, since the end of the answer would strip it.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._parts: list[str] = []
        self._size = 0
        self._held = ""
        self.full = False

    def feed(self, delta: str) -> str:
        """The text to send for this delta ('' when nothing is to be sent yet, or any more)."""
        if self.full:
            return ""
        text = self._held + delta
        if not self._size:
            text = text.lstrip()
        body = text.rstrip()
        self._held = text[len(body) :]
        room = self._limit - self._size
        if len(body) >= room:
            body, self._held, self.full = body[:room], "", True
        if body:
            self._parts.append(body)
            self._size += len(body)
        return body

    @property
    def text(self) -> str:
        """Everything sent so far: once the model is done, the whole answer."""
        return "".join(self._parts)


class _End(Generic[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value


class ReplyStream(Generic[T]):
    """Deltas (str) as the answer is generated, then its result (T); failures are raised.

    The generation runs as its own task and only hands text over through a queue, so a reader
    that goes away (a client disconnecting mid-answer) does not stop it: the answer is completed
    and stored as if it had been read. Deltas that queued up while the reader was busy come out
    as one, which keeps a slow reader from paying per fragment.
    """

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | _End[T] | Exception] = asyncio.Queue()
        self._pending: _End[T] | Exception | None = None
        self._finished = False
        self.first_delta_seconds: float | None = None
        """How long the model took to its first delta (for Server-Timing)."""

    def push(self, text: str) -> None:
        self._queue.put_nowait(text)

    async def produce(self, generate: Coroutine[Any, Any, T]) -> None:
        """Run the generation (as its own task); its result or failure ends the stream."""
        try:
            result = await generate
        except Exception as exc:  # the reader raises it
            self._queue.put_nowait(exc)
        except BaseException:  # cancelled: the backend is shutting down
            self._queue.put_nowait(RuntimeError("the answer was cancelled at shutdown"))
            raise
        else:
            self._queue.put_nowait(_End(result))

    @property
    def ready(self) -> bool:
        """The next item is there: reading it will not wait."""
        return self._pending is not None or not self._queue.empty()

    def __aiter__(self) -> ReplyStream[T]:
        return self

    async def __anext__(self) -> str | T:
        if self._finished:
            raise StopAsyncIteration
        item = self._pending or await self._queue.get()
        self._pending = None
        if isinstance(item, str):
            parts = [item]
            while not self._queue.empty():
                following = self._queue.get_nowait()
                if not isinstance(following, str):
                    self._pending = following
                    break
                parts.append(following)
            return "".join(parts)
        self._finished = True
        if isinstance(item, Exception):
            raise item
        return item.value
