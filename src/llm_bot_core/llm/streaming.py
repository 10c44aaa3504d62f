"""What both chat clients share when streaming: reading `chat.completion.chunk`s, and retrying
a stream only while nothing has been yielded yet."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_bot_core.llm.base import (
    Completion,
    LLMBadResponse,
    LLMUnavailable,
    StreamItem,
    completion_with_usage,
)

INITIAL_BACKOFF = 0.5
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0


class StreamBroken(LLMUnavailable):
    """The provider failed while streaming: dropped connection, timeout, or an error chunk."""

    def __init__(self, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ChunkReader:
    """Reads the chunks of one streamed answer; `completion()` once the stream has ended."""

    def __init__(self, model_name: str) -> None:
        self.model = model_name
        self.parts: list[str] = []
        self.usage: dict[str, Any] = {}
        self.opened = False  # the provider accepted the request (a 200 and its stream)
        self.done = False  # `data: [DONE]` or a finish_reason was seen

    @property
    def yielded(self) -> bool:
        return bool(self.parts)

    def read(self, chunk: Any) -> str:
        """The text this chunk adds ('' for role, finish and usage chunks)."""
        try:
            if chunk.get("error"):
                error = chunk["error"]
                message = error.get("message") if isinstance(error, dict) else error
                raise StreamBroken(f"LLM provider failed mid-answer: {str(message)[:200]}")
            if isinstance(chunk.get("usage"), dict):
                self.usage = chunk["usage"]
            if chunk.get("model"):
                self.model = str(chunk["model"])
            choices = chunk.get("choices") or []
            if not choices:
                return ""
            choice = choices[0]
            if choice.get("finish_reason"):
                self.done = True
            text = (choice.get("delta") or {}).get("content") or ""
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise LLMBadResponse(
                f"LLM provider sent an unreadable chunk: {type(exc).__name__}"
            ) from exc
        if not isinstance(text, str):
            raise LLMBadResponse("LLM provider sent an unreadable chunk: content is not text")
        if text:
            self.parts.append(text)
        return text

    def completion(self, seconds: float) -> Completion:
        if not self.done:
            raise StreamBroken("LLM provider ended the stream before the answer was complete")
        text = "".join(self.parts).strip()
        if not text:
            raise LLMBadResponse(f"model {self.model} returned an empty answer")
        return completion_with_usage(text, self.usage, self.model, seconds)


Attempt = Callable[[ChunkReader], AsyncIterator[str]]


async def stream_with_retries(
    attempt: Attempt, model_name: str, *, retries: int, retry_refused: bool
) -> AsyncIterator[StreamItem]:
    """Deltas of `attempt`, then the Completion; a broken stream is tried again (up to
    `retries` times, with backoff) as long as none of its text was yielded. `retry_refused`:
    also retry when the provider refused the request (the SDK has retried that already)."""
    started = time.perf_counter()
    tries = 0
    while True:
        reader = ChunkReader(model_name)
        try:
            async for delta in attempt(reader):
                yield delta
            completion = reader.completion(time.perf_counter() - started)
        except StreamBroken as exc:
            if reader.yielded or tries >= retries or not (reader.opened or retry_refused):
                raise
            await asyncio.sleep(backoff(tries, exc.retry_after))
            tries += 1
            continue
        yield completion
        return


def backoff(attempt: int, retry_after: str | None) -> float:
    """Seconds before retry `attempt`: Retry-After when the provider gave one, else exponential."""
    if retry_after:
        try:
            return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER)
        except ValueError:
            pass  # an HTTP date: fall back to our own backoff
    return min(INITIAL_BACKOFF * 2**attempt, MAX_BACKOFF) * random.uniform(0.75, 1.0)
