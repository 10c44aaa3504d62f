"""`POST /v1/chat/stream` as Server-Sent Events: `delta` events, then `done` or `error`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from asgi_correlation_id import correlation_id
from fastapi.responses import StreamingResponse
from sqlalchemy.exc import DBAPIError

from llm_bot_core.api.errors import ERROR_CODES
from llm_bot_core.api.schemas import ErrorResponse
from llm_bot_core.llm.base import LLMError
from llm_bot_core.memory.chat import Reply, SessionGone
from llm_bot_core.memory.streaming import ReplyStream

log = logging.getLogger(__name__)

EVENTS_DESCRIPTION = (
    '`text/event-stream`: `event: delta` with `data: {"text": ...}` (new text) as many times '
    'as needed, then `event: done` with `data: {"text": <whole answer>, "type": '
    '"message"}`, or `event: error` with the error object if the model fails mid-answer. '
    "Failures before the first delta are ordinary JSON errors."
)


async def event_stream(reply: ReplyStream[Reply]) -> StreamingResponse:
    """The response for a reply; a failure before its first delta raises (a JSON error)."""
    first = await anext(reply)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if reply.first_delta_seconds is not None:
        headers["Server-Timing"] = f"llm;dur={reply.first_delta_seconds * 1000:.2f}"
    return StreamingResponse(_events(first, reply), media_type="text/event-stream", headers=headers)


async def _events(first: str | Reply, reply: ReplyStream[Reply]) -> AsyncIterator[bytes]:
    item = first
    try:
        while True:
            if isinstance(item, Reply):
                yield _event(b"done", {"text": item.text, "type": "message"})
                return
            yield _event(b"delta", {"text": item})
            item = await anext(reply)
    except StopAsyncIteration:  # pragma: no cover - a stream always ends with its Reply
        return
    except Exception as exc:  # the answer failed after its first delta: say so in-band
        yield _event(b"error", _error_body(exc))


def _event(name: bytes, data: dict[str, Any]) -> bytes:
    return b"event: " + name + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _error_body(exc: Exception) -> dict[str, Any]:
    """The documented error object of a failure mid-answer, as the error handlers map it."""
    if isinstance(exc, LLMError | SessionGone):
        code, message = exc.code, str(exc)
        log.warning("answer failed mid-stream: %s", exc)
    elif isinstance(exc, DBAPIError | OSError):
        code, message = "database_unavailable", ERROR_CODES["database_unavailable"][1]
        log.error("database error mid-stream: %s", type(exc).__name__, exc_info=exc)
    else:
        code, message = "internal_error", ERROR_CODES["internal_error"][1]
        log.exception("unhandled error mid-stream", exc_info=exc)
    body = ErrorResponse(code=code, message=message, request_id=correlation_id.get())
    return body.model_dump(exclude_none=True)
