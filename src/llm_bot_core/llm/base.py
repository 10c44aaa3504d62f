"""The interface the memory layer talks to, and its typed errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypedDict

from llm_bot_core.errors import CoreError

Role = Literal["system", "user", "assistant", "tool"]


class ChatMessage(TypedDict):
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    prompt_tokens: int | None
    completion_tokens: int | None
    model: str
    seconds: float


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
    ) -> AsyncIterator[StreamItem]:
        """One streamed chat completion: deltas, then its Completion; raises LLMError only.

        Retries happen before the first delta only: once text was yielded, a failure is raised.
        """
        ...

    async def aclose(self) -> None: ...
