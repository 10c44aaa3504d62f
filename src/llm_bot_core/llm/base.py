"""The interface the memory layer talks to, and its typed errors."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from llm_bot_core.config import LLMSettings
from llm_bot_core.errors import CoreError

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(TypedDict):
    role: Role
    content: str | list[dict[str, Any]]
    """Text; or, for a user turn with pictures, OpenAI content parts: `{"type": "text",
    "text": ...}` and `{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}`.
    """


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    seconds: float
    cost: float | None = None
    """What the provider charged, when it says (OpenRouter with `usage: {include: true}`)."""


def cost_of(usage: object) -> float | None:
    """The cost a provider reported in a completion's `usage` (OpenRouter's `cost`), if any."""
    cost = usage.get("cost") if isinstance(usage, dict) else None
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) else None


class LLMError(CoreError):
    """Base of every failure of the chat model; mapped once at the API boundary."""

    code = "llm_unavailable"


class LLMNotConfigured(LLMError):
    code = "llm_not_configured"


class LLMUnavailable(LLMError):
    """The provider could not be reached, timed out, or answered 429/5xx after retries."""

    code = "llm_unavailable"


class LLMBadResponse(LLMError):
    """The provider answered, but with nothing usable (empty text, malformed body, 4xx)."""

    code = "llm_bad_response"


class ImagesNotSupported(LLMBadResponse):
    """The provider refused the request's pictures: the model cannot read images."""

    code = "images_not_supported"


# What providers say when a model gets image parts it cannot read (OpenRouter: "No endpoints
# found that support image input"; OpenAI: "... does not support image ..."; vLLM/llama.cpp:
# "... multimodal ..." / "image input is not supported").
_NO_IMAGES = re.compile(r"image|vision|multimodal|multi-modal", re.IGNORECASE)


def refused_for_images(status: int, message: str) -> bool:
    """Whether a provider's 4xx answer says the model cannot take image input."""
    return (
        400 <= status < 500
        and status not in (401, 403, 408, 409, 429)
        and bool(_NO_IMAGES.search(message))
    )


def is_transient(status: int) -> bool:
    """Whether a provider's error status is worth retrying: 408, 409, 429 and 5xx."""
    return status >= 500 or status in (408, 409, 429)


def status_error(status: int, message: str, detail: str) -> LLMError:
    """The typed error for a provider's error `status` once retries are spent: unavailable when
    transient, ImagesNotSupported when `detail` (the provider's own text) says the model cannot
    take pictures, else a bad response. `message` is the error's text."""
    if is_transient(status):
        return LLMUnavailable(message)
    if refused_for_images(status, detail):
        return ImagesNotSupported(f"the model cannot read pictures ({message})")
    return LLMBadResponse(message)


def completion_with_usage(text: str, usage: object, model: str, seconds: float) -> Completion:
    """A Completion with the token counts and cost that a provider's `usage` reports, if any."""
    usage = usage if isinstance(usage, dict) else {}
    prompt_tokens = usage.get("prompt_tokens")
    completion_tokens = usage.get("completion_tokens")
    return Completion(
        text=text,
        prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else None,
        completion_tokens=completion_tokens if isinstance(completion_tokens, int) else None,
        model=model,
        seconds=seconds,
        cost=cost_of(usage),
    )


def read_completion(body: Any, model_name: str, seconds: float) -> Completion:
    """Read a chat.completion body; anything malformed or empty is an LLMBadResponse."""
    try:
        text = (body["choices"][0]["message"].get("content") or "").strip()
        usage = body.get("usage")
        model = str(body.get("model") or model_name)
    except (KeyError, IndexError, TypeError, AttributeError) as exc:
        raise LLMBadResponse(
            f"LLM provider sent an unreadable answer: {type(exc).__name__}"
        ) from exc
    if not isinstance(text, str) or not text:
        raise LLMBadResponse(f"model {model_name} returned an empty answer")
    return completion_with_usage(text, usage, model, seconds)


StreamItem = str | Completion
"""What a streamed completion yields: text deltas as they come, then one Completion whose
text is the whole answer, stripped (as `complete` returns it)."""


class ChatModel(Protocol):
    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> Completion:
        """One chat completion; raises LLMError subclasses only.

        `response_format` is passed through as the OpenAI API's field (structured output); a
        provider that does not support it answers 4xx, i.e. LLMBadResponse.
        """
        ...

    def stream(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[StreamItem]:
        """One streamed chat completion: deltas, then its Completion; raises LLMError only.

        Retries happen before the first delta only: once text was yielded, a failure is raised.
        """
        ...

    async def aclose(self) -> None: ...


def completion_payload(
    settings: LLMSettings,
    messages: list[ChatMessage],
    model_name: str,
    max_tokens: int | None,
    response_format: dict[str, Any] | None = None,
    *,
    stream: bool = False,
    temperature: float | None = None,
) -> dict[str, Any]:
    """The body of a chat completion request, the same for both clients; `temperature`
    (a persona's) overrides LLM_TEMPERATURE."""
    payload: dict[str, Any] = {
        "model": model_name,
        "messages": messages,
        "max_tokens": max_tokens or settings.llm_max_tokens,
    }
    if temperature is None:
        temperature = settings.llm_temperature
    if temperature is not None:
        payload["temperature"] = temperature
    if settings.is_openrouter:
        payload["usage"] = {"include": True}  # OpenRouter then reports the call's cost
    if response_format is not None:
        payload["response_format"] = response_format
    if stream:
        # The last chunk then carries the token counts, as a plain answer does.
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    return payload
