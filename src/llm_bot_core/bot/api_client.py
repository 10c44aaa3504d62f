"""The bot's only way to the backend: `/v1/chat/handle` (or `/stream`), `/v1/chat/reset`,
`/v1/media/transcriptions` (voice), the
user's memory (`/v1/memory/users/{id}/facts`, `DELETE /v1/memory/users/{id}`) and usage
(`GET /v1/usage/users/{id}`)."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import orjson
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

T = TypeVar("T")


class BackendError(Exception):
    """The backend answered with its error shape (or something unreadable)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        request_id: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        # Seconds the backend says to wait (budget_exceeded: until the user's day resets).
        self.retry_after = retry_after

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


@dataclass(frozen=True, slots=True)
class Done:
    """The end of a streamed answer: its whole text, as the backend stored it."""

    text: str


@dataclass(frozen=True, slots=True)
class UserFact:
    """A current fact about the user, as `GET /v1/memory/users/{id}/facts` lists it."""

    id: int
    content: str
    source: str
    created_at: datetime


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


def _chat_body(
    user_id: int | str,
    chat_id: int | str,
    text: str,
    chat_type: str,
    user_name: str | None,
    input_mode: str = "text",
    images: Sequence[tuple[bytes, str]] = (),
) -> dict[str, Any]:
    """The body of /v1/chat/handle and /v1/chat/stream."""
    body: dict[str, Any] = {
        "user_id": str(user_id),
        "chat_id": str(chat_id),
        "text": text,
        "chat_type": chat_type,
    }
    if user_name:
        body["user_name"] = user_name
    if input_mode != "text":  # the spec's request shape, unless the message was spoken
        body["input_mode"] = input_mode
    if images:
        body["images"] = [
            {"data_base64": base64.b64encode(data).decode("ascii"), "mime_type": mime}
            for data, mime in images
        ]
    return body


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
        self,
        *,
        user_id: int | str,
        chat_id: int | str,
        text: str,
        chat_type: str,
        user_name: str | None = None,
        request_id: str | None = None,
        input_mode: str = "text",
        images: Sequence[tuple[bytes, str]] = (),
    ) -> str:
        """The assistant's answer to `text` in this chat's memory.

        `chat_type` (Telegram's chat.type) scopes what the backend may recall; `user_name`
        labels the sender's turns in a group; `input_mode` "voice": `text` is a transcript;
        `images` are (bytes, mime type) of pictures sent with the message, `text` being their
        caption."""
        body = _chat_body(user_id, chat_id, text, chat_type, user_name, input_mode, images)
        data = await self._post("/v1/chat/handle", body, request_id, _handle_may_retry)
        answer = data.get("text")
        if not isinstance(answer, str):
            raise BackendError(502, "bad_backend_response", "no text in /v1/chat/handle answer")
        return answer

    async def stream_chat(
        self,
        *,
        user_id: int | str,
        chat_id: int | str,
        text: str,
        chat_type: str,
        user_name: str | None = None,
        request_id: str | None = None,
        input_mode: str = "text",
    ) -> AsyncGenerator[str | Done, None]:
        """The answer as it is generated: text deltas, then Done with the whole text.

        Opening the stream is retried like `handle_chat`; once it is open the backend has the
        message, so nothing after that is repeated: a failure mid-answer is raised.
        """
        body = _chat_body(user_id, chat_id, text, chat_type, user_name, input_mode)
        request_id = request_id or str(uuid.uuid4())
        path = "/v1/chat/stream"
        response = await self._retrying(
            path, _handle_may_retry, self._open_stream, body, request_id
        )
        try:
            async for event, data in _server_sent_events(response):
                if event == "delta" and isinstance(data.get("text"), str):
                    yield data["text"]
                elif event == "done" and isinstance(data.get("text"), str):
                    yield Done(data["text"])
                    return
                elif event == "error":
                    raise BackendError(
                        response.status_code,
                        str(data.get("code", "unknown")),
                        str(data.get("message", "")),
                        data.get("request_id"),
                    )
            raise BackendUnavailable(f"backend {path}: stream ended early", maybe_processed=True)
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"backend {path}: {type(exc).__name__} {exc}".strip(),
                maybe_processed=True,
                timed_out=isinstance(exc, httpx.ReadTimeout),
            ) from exc
        finally:
            await response.aclose()

    async def transcribe(
        self,
        *,
        user_id: int | str,
        chat_id: int | str,
        audio: bytes,
        filename: str,
        content_type: str,
        duration: float | None = None,
        request_id: str | None = None,
    ) -> str:
        """The text of a recording (POST /v1/media/transcriptions); never empty.

        Retried like a chat message: only when the backend surely did nothing, since a
        transcription that went through was billed and accounted."""
        data: dict[str, str] = {"user_id": str(user_id), "chat_id": str(chat_id)}
        if duration is not None:
            data["duration"] = str(duration)
        path = "/v1/media/transcriptions"

        async def once(path: str, _: dict[str, Any], request_id: str) -> dict[str, Any]:
            try:
                response = await self._client.post(
                    path,
                    data=data,
                    files={"audio": (filename, audio, content_type)},
                    headers={"X-Request-ID": request_id},
                )
            except httpx.TransportError as exc:
                raise _unavailable(path, exc) from exc
            return _answer_of(response, request_id)

        result = await self._retrying(
            path, _handle_may_retry, once, {}, request_id or str(uuid.uuid4())
        )
        text = result.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BackendError(502, "bad_backend_response", f"no text in {path} answer")
        return text

    async def reset_chat(self, *, chat_id: int | str, request_id: str | None = None) -> int:
        """Close the chat's active session; the number of sessions closed."""
        data = await self._post(
            "/v1/chat/reset", {"chat_id": str(chat_id)}, request_id, _reset_may_retry
        )
        return int(data.get("reset_sessions", 0))

    async def usage(self, *, user_id: int | str, request_id: str | None = None) -> dict[str, Any]:
        """The user's usage today and their daily limit, as GET /v1/usage/users/{id} gives it."""
        path = f"/v1/usage/users/{user_id}"
        request_id = request_id or str(uuid.uuid4())
        try:
            response = await self._client.get(path, headers={"X-Request-ID": request_id})
        except httpx.TransportError as exc:
            raise BackendUnavailable(
                f"backend {path}: {type(exc).__name__} {exc}".strip(), maybe_processed=False
            ) from exc
        return _answer_of(response, request_id)

    async def list_facts(
        self, *, user_id: int | str, request_id: str | None = None
    ) -> list[UserFact]:
        """The user's current facts, oldest first (the order /memory numbers them in)."""
        data = await self._send("GET", _facts_path(user_id), None, request_id)
        try:
            return [
                UserFact(
                    id=int(f["id"]),
                    content=str(f["content"]),
                    source=str(f["source"]),
                    created_at=datetime.fromisoformat(f["created_at"]),
                )
                for f in data["facts"]
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(502, "bad_backend_response", f"unreadable facts: {exc}") from exc

    async def add_fact(
        self, *, user_id: int | str, content: str, request_id: str | None = None
    ) -> str:
        """Store a fact in the user's words; the content as stored."""
        data = await self._send("POST", _facts_path(user_id), {"content": content}, request_id)
        return str(data.get("content", content))

    async def delete_fact(
        self, *, user_id: int | str, fact_id: int, request_id: str | None = None
    ) -> None:
        """Forget one fact (and its earlier versions); BackendError fact_not_found if gone."""
        await self._send("DELETE", f"{_facts_path(user_id)}/{fact_id}", None, request_id)

    async def erase_user(self, *, user_id: int | str, request_id: str | None = None) -> int:
        """Erase everything stored about the user; the number of messages deleted."""
        data = await self._send("DELETE", _user_path(user_id), None, request_id)
        return int(data.get("deleted_messages", 0))

    async def personas(
        self, *, chat_id: int | str, request_id: str | None = None
    ) -> tuple[list[dict[str, Any]], int]:
        """The selectable personas (/mode's buttons) and the id of the chat's current one."""
        request_id = request_id or str(uuid.uuid4())
        listed = await self._send("GET", "/v1/personas", None, request_id)
        current = await self._send("GET", _chat_persona_path(chat_id), None, request_id)
        try:
            return list(listed["personas"]), int(current["persona"]["id"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(502, "bad_backend_response", f"unreadable personas: {exc}") from exc

    async def choose_persona(
        self, *, chat_id: int | str, persona_id: int, request_id: str | None = None
    ) -> str:
        """Answer in the chat with this persona from now on; its name. BackendError
        persona_not_found when it is gone or no longer selectable."""
        data = await self._send(
            "PUT", _chat_persona_path(chat_id), {"persona_id": persona_id}, request_id
        )
        return str(data.get("persona", {}).get("name", ""))

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _send(
        self, method: str, path: str, body: dict[str, Any] | None, request_id: str | None
    ) -> dict[str, Any]:
        # The memory calls are idempotent (adding a known fact returns it; deleting twice finds
        # nothing the second time), so they repeat on every transient failure, like a reset.
        async def once(path: str, _: dict[str, Any], request_id: str) -> dict[str, Any]:
            return await self._request_once(method, path, body, request_id)

        return await self._retrying(
            path, _reset_may_retry, once, body or {}, request_id or str(uuid.uuid4())
        )

    async def _post(
        self, path: str, body: dict[str, Any], request_id: str | None, may_retry: Any
    ) -> dict[str, Any]:
        request_id = request_id or str(uuid.uuid4())
        return await self._retrying(path, may_retry, self._post_once, body, request_id)

    async def _retrying(
        self,
        path: str,
        may_retry: Callable[[BaseException], bool],
        call: Callable[[str, dict[str, Any], str], Awaitable[T]],
        body: dict[str, Any],
        request_id: str,
    ) -> T:
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
                return await call(path, body, request_id)
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def _open_stream(
        self, path: str, body: dict[str, Any], request_id: str
    ) -> httpx.Response:
        """The response of a stream that started (200, text/event-stream), not yet read."""
        request = self._client.build_request(
            "POST", path, json=body, headers={"X-Request-ID": request_id}
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            raise _unavailable(path, exc) from exc
        if response.status_code == 200 and response.headers.get("content-type", "").startswith(
            "text/event-stream"
        ):
            return response
        try:
            await response.aread()
        except httpx.TransportError as exc:
            raise _unavailable(path, exc) from exc
        finally:
            await response.aclose()
        raise _error_of(response, request_id)

    async def _post_once(self, path: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
        return await self._request_once("POST", path, body, request_id)

    async def _request_once(
        self, method: str, path: str, body: dict[str, Any] | None, request_id: str
    ) -> dict[str, Any]:
        try:
            response = await self._client.request(
                method, path, json=body, headers={"X-Request-ID": request_id}
            )
        except httpx.TransportError as exc:
            raise _unavailable(path, exc) from exc
        return _answer_of(response, request_id)


def _answer_of(response: httpx.Response, request_id: str) -> dict[str, Any]:
    """The JSON object of a successful answer; anything else raises the backend's error."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success and isinstance(data, dict):
        return data
    raise _error_of(response, request_id)


def _unavailable(path: str, exc: httpx.TransportError) -> BackendUnavailable:
    never_sent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return BackendUnavailable(
        f"backend {path}: {type(exc).__name__} {exc}".strip(),
        maybe_processed=not never_sent,
        timed_out=isinstance(exc, httpx.ReadTimeout),
    )


def _error_of(response: httpx.Response, request_id: str) -> BackendError:
    """The backend's error shape as a BackendError (bad_backend_response if it is not one)."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and data.get("type") == "error":
        return BackendError(
            response.status_code,
            str(data.get("code", "unknown")),
            str(data.get("message", "")),
            data.get("request_id"),
            retry_after=_seconds(response.headers.get("Retry-After")),
        )
    return BackendError(
        response.status_code,
        "bad_backend_response",
        response.text[:200] or response.reason_phrase,
        request_id,
    )


async def _server_sent_events(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """(event, decoded data) of a text/event-stream; unreadable data is a bad response."""
    event, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()
        elif not line and data:
            try:
                decoded = orjson.loads(data)
            except orjson.JSONDecodeError as exc:
                raise BackendError(502, "bad_backend_response", data[:200]) from exc
            yield event, decoded if isinstance(decoded, dict) else {}
            event, data = "message", ""


def _seconds(value: str | None) -> float | None:
    try:
        return max(float(value), 0.0) if value else None
    except ValueError:
        return None  # an HTTP date; the backend sends seconds


def _user_path(user_id: int | str) -> str:
    return f"/v1/memory/users/{quote(str(user_id), safe='')}"


def _chat_persona_path(chat_id: int | str) -> str:
    return f"/v1/chats/{quote(str(chat_id), safe='')}/persona"


def _facts_path(user_id: int | str) -> str:
    return f"{_user_path(user_id)}/facts"
