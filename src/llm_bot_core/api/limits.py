"""Reject oversized bodies before they are read whole."""

from __future__ import annotations

import orjson
from asgi_correlation_id import correlation_id
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_bot_core.config import Settings
from llm_bot_core.errors import ERROR_CODES

CHAT_PATHS = ("/v1/chat/handle", "/v1/chat/stream")


def chat_body_limit(settings: Settings) -> int:
    """The body limit of the chat endpoints: MAX_BODY_BYTES plus MAX_IMAGES pictures of
    IMAGE_MAX_BYTES in base64 (4/3)."""
    pictures = settings.pictures
    return settings.server.max_body_bytes + pictures.max_images * (
        pictures.image_max_bytes * 4 // 3 + 4
    )


class BodySizeLimit:
    """Pure ASGI middleware: 413 on a large Content-Length, or once the streamed body passes it.

    `per_path` gives routes that take uploads their own limit (voice: VOICE_MAX_BYTES; the chat
    endpoints, which take pictures: chat_body_limit)."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, per_path: dict[str, int] | None = None
    ) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.per_path = per_path or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.per_path.get(scope.get("path", ""), self.default_max_bytes)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await self._reject(send, max_bytes)
                    return
        received = 0
        started = False
        rejected = False

        async def limited_receive() -> Message:
            nonlocal received, rejected
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    # Answer now: FastAPI turns any exception raised while it reads the body
                    # into its own 400, which tracking_send then drops.
                    if not started and not rejected:
                        rejected = True
                        await self._reject(send, max_bytes)
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if rejected:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            pass

    async def _reject(self, send: Send, max_bytes: int) -> None:
        # The error shape of the exception handlers, built here: this runs before FastAPI does.
        # The request id is set: CorrelationIdMiddleware wraps this middleware.
        body = orjson.dumps(
            {
                "type": "error",
                "code": "payload_too_large",
                "message": f"Body larger than {max_bytes} bytes"
                + (
                    " (MAX_BODY_BYTES)."
                    if max_bytes == self.default_max_bytes
                    else " (this route's limit: MAX_BODY_BYTES with MAX_IMAGES x IMAGE_MAX_BYTES"
                    " for pictures, VOICE_MAX_BYTES for voice)."
                ),
                "request_id": correlation_id.get(),
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": ERROR_CODES["payload_too_large"].status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
