"""The bot's only way to the backend: `POST /v1/chat/handle` and `POST /v1/chat/reset`."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from llm_bot_core.bot.config import BotSettings
from llm_bot_core.errors import RETRYABLE_CODES

log = logging.getLogger(__name__)


class BackendError(Exception):
    """The backend answered with its error shape (or something unreadable)."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        """Nothing was stored and the cause is passing: the same request may be sent again."""
        return self.code in RETRYABLE_CODES


class BackendUnavailable(Exception):
    """The backend could not be reached or did not answer in time."""

    def __init__(self, message: str, *, maybe_processed: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        # False when the request never left (connection refused, connect timeout): the backend
        # certainly did nothing. True when it may have been received (read timeout, reset).
        self.maybe_processed = maybe_processed


# A proxy in front of the backend answering for it (no error shape): the backend may be
# restarting. Only /chat/reset, which is idempotent, repeats on these.
_GATEWAY_STATUS = frozenset({502, 503, 504})


def _handle_may_retry(exc: BaseException) -> bool:
    # /chat/handle stores the user's message before calling the LLM: only failures that
    # happened before the backend got the request (or said it stored nothing) are repeated,
    # so a retry never writes the message twice. LLM failures are retried by the backend.
    if isinstance(exc, BackendUnavailable):
        return not exc.maybe_processed
    if isinstance(exc, BackendError):
        return exc.retryable
    return False


def _reset_may_retry(exc: BaseException) -> bool:
    # Closing a chat's active session is idempotent: every transient failure is repeated.
    if isinstance(exc, BackendUnavailable):
        return True
    if not isinstance(exc, BackendError):
        return False
    return exc.retryable or (exc.code == "bad_backend_response" and exc.status in _GATEWAY_STATUS)


class BackendClient:
    """HTTP client of the backend API with retries on transient failures."""

    def __init__(self, settings: BotSettings, client: httpx.AsyncClient | None = None) -> None:
        headers = {"User-Agent": "llm-bot-core-bot"}
        if settings.backend_api_key is not None:
            headers["Authorization"] = f"Bearer {settings.backend_api_key.get_secret_value()}"
        self._client = client or httpx.AsyncClient(
            base_url=settings.backend_url,
            headers=headers,
            timeout=httpx.Timeout(
                settings.backend_timeout, connect=min(10.0, settings.backend_timeout)
            ),
            # Drop idle connections before uvicorn does (its keep-alive is 5 s): a request on a
            # connection the server just closed fails in a way that cannot be safely repeated.
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self._attempts = settings.backend_retries
        self._backoff = settings.backend_retry_backoff

    async def handle_chat(
        self, *, user_id: int | str, chat_id: int | str, text: str, request_id: str | None = None
    ) -> str:
        """The assistant's answer to `text` in this chat's memory."""
        body = {"user_id": str(user_id), "chat_id": str(chat_id), "text": text}
        data = await self._post("/v1/chat/handle", body, request_id, _handle_may_retry)
        answer = data.get("text")
        if not isinstance(answer, str):
            raise BackendError(502, "bad_backend_response", "no text in /v1/chat/handle answer")
        return answer

    async def reset_chat(self, *, chat_id: int | str, request_id: str | None = None) -> int:
        """Close the chat's active session; the number of sessions closed."""
        data = await self._post(
            "/v1/chat/reset", {"chat_id": str(chat_id)}, request_id, _reset_may_retry
        )
        return int(data.get("reset_sessions", 0))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(
        self, path: str, body: dict[str, Any], request_id: str | None, may_retry: Any
    ) -> dict[str, Any]:
        request_id = request_id or str(uuid.uuid4())
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=max(self._backoff, 10.0))
            + wait_random(0, self._backoff / 2),
            retry=retry_if_exception(may_retry),
            reraise=True,
            before_sleep=lambda state: log.warning(
                "backend %s failed (%s), attempt %d of %d",
                path,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self._attempts,
            ),
        )
        async for attempt in retrying:
            with attempt:
                return await self._post_once(path, body, request_id)
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def _post_once(self, path: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        try:
            response = await self._client.post(
                path, json=body, headers={"X-Request-ID": request_id}
            )
        except httpx.TransportError as exc:
            never_sent = isinstance(
                exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
            )
            raise BackendUnavailable(
                f"backend {path}: {type(exc).__name__} {exc}".strip(),
                maybe_processed=not never_sent,
                timed_out=isinstance(exc, httpx.ReadTimeout),
            ) from exc
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.is_success and isinstance(data, dict):
            return data
        if isinstance(data, dict) and data.get("type") == "error":
            raise BackendError(
                response.status_code,
                str(data.get("code", "unknown")),
                str(data.get("message", "")),
                data.get("request_id"),
            )
        raise BackendError(
            response.status_code,
            "bad_backend_response",
            response.text[:200] or response.reason_phrase,
            request_id,
        )
