"""Chat completions over the OpenAI protocol: OpenRouter by default, or any compatible server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import openai
from openai import AsyncOpenAI

from llm_bot_core.config import LLMSettings
from llm_bot_core.llm.base import (
    ChatMessage,
    ChatModel,
    Completion,
    LLMBadResponse,
    LLMError,
    LLMNotConfigured,
    LLMUnavailable,
    StreamItem,
    completion_payload,
    read_completion,
    status_error,
)
from llm_bot_core.llm.streaming import ChunkReader, StreamBroken, stream_with_retries


def build_openai_client(settings: LLMSettings) -> AsyncOpenAI:
    """One client per process; the aiohttp transport sustains more requests/s than httpx."""
    return AsyncOpenAI(
        api_key=settings.effective_api_key,
        base_url=settings.effective_base_url,
        timeout=settings.llm_timeout,
        # The SDK retries connection errors, 408, 409, 429 and 5xx with exponential backoff
        # and honours Retry-After; other 4xx are not retried.
        max_retries=settings.llm_max_retries,
        http_client=openai.DefaultAioHttpClient(),
        default_headers={"X-Title": "LLM Bot Core"},
    )


class OpenAIChatModel:
    """ChatModel backed by the official openai SDK."""

    def __init__(self, settings: LLMSettings, client: AsyncOpenAI | None = None) -> None:
        self._settings = settings
        self._client = client if client is not None else build_openai_client(settings)

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> Completion:
        model_name = model or self._settings.chat_model
        started = time.perf_counter()
        try:
            # The SDK's own transport, retries and errors, but not `chat.completions.create`:
            # its recursive TypedDict transform of the messages was about a tenth of the
            # backend's CPU per request, and our messages are plain JSON already.
            # `cast_to=object` hands back the decoded JSON: building the SDK's ChatCompletion
            # model cost about 0.4 ms of CPU per call, and we read four fields of it.
            response: Any = await self._client.post(
                "/chat/completions",
                body=completion_payload(
                    self._settings,
                    messages,
                    model_name,
                    max_tokens,
                    response_format,
                    temperature=temperature,
                ),
                cast_to=object,
            )
        except openai.APIError as exc:
            raise _mapped(exc) from exc
        except ValueError as exc:  # a 200 whose body is not JSON, or not a completion
            raise LLMBadResponse(
                f"LLM provider sent an unreadable answer: {type(exc).__name__}"
            ) from exc
        seconds = time.perf_counter() - started

        return read_completion(response, model_name, seconds)

    def stream(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[StreamItem]:
        model_name = model or self._settings.chat_model
        payload = completion_payload(
            self._settings, messages, model_name, max_tokens, stream=True, temperature=temperature
        )

        async def attempt(reader: ChunkReader) -> AsyncIterator[str]:
            try:
                # As in `complete`: the SDK's transport, retries and SSE decoding, our dicts.
                chunks = await self._client.post(
                    "/chat/completions",
                    body=payload,
                    cast_to=object,
                    stream=True,
                    stream_cls=openai.AsyncStream[object],
                )
            except openai.APIError as exc:
                raise _mapped(exc) from exc
            reader.opened = True
            try:
                async for chunk in chunks:
                    delta = reader.read(chunk)
                    if delta:
                        yield delta
            except openai.APIError as exc:  # includes an error chunk (the SDK raises APIError)
                raise StreamBroken(f"LLM provider stream broke off: {exc.message}") from exc
            except ValueError as exc:  # a data line that is not JSON
                raise LLMBadResponse("LLM provider sent an unreadable chunk: not JSON") from exc
            finally:
                await chunks.close()

        # The SDK has already retried a refused request (LLM_MAX_RETRIES times).
        return stream_with_retries(
            attempt, model_name, retries=self._settings.llm_max_retries, retry_refused=False
        )

    async def aclose(self) -> None:
        await self._client.close()


class UnconfiguredChatModel:
    """Stands in when no LLM is configured, so the backend starts and says what to set."""

    MESSAGE = (
        "No LLM is configured: set OPENROUTER_API_KEY (OpenRouter) or LLM_BASE_URL "
        "(any OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1 for Ollama)."
    )

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> Completion:
        raise LLMNotConfigured(self.MESSAGE)

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[StreamItem]:
        raise LLMNotConfigured(self.MESSAGE)
        yield  # an async generator, like the real clients' streams

    async def aclose(self) -> None:
        return None


def _mapped(exc: openai.APIError) -> LLMError:
    """The typed error for an SDK failure: transient ones (after retries) are unavailable."""
    if isinstance(exc, openai.APIConnectionError | openai.RateLimitError):
        return LLMUnavailable(_describe(exc))
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, _describe(exc), exc.message)
    return LLMBadResponse(_describe(exc))  # malformed body and the like


def _describe(exc: openai.APIError) -> str:
    status = getattr(exc, "status_code", None)
    prefix = f"LLM provider answered {status}" if status else "LLM provider unreachable"
    return f"{prefix}: {type(exc).__name__}"


def build_chat_model(settings: LLMSettings) -> ChatModel:
    """The configured chat model, or a stand-in that explains what to configure."""
    if not settings.configured:
        return UnconfiguredChatModel()
    model: ChatModel
    if settings.llm_client == "openai":
        model = OpenAIChatModel(settings)
    else:
        from llm_bot_core.llm.http_chat import HttpChatModel

        model = HttpChatModel(settings)
    if settings.llm_fallback_models:
        from llm_bot_core.llm.fallback import FallbackChatModel

        model = FallbackChatModel(model, settings.chat_model, settings.llm_fallback_models)
    return model
