"""LLM_FALLBACK_MODELS: when a model is unavailable after its retries, the next one answers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llm_bot_core.llm.base import ChatMessage, ChatModel, Completion, LLMUnavailable, StreamItem

log = logging.getLogger(__name__)


class FallbackChatModel:
    """A ChatModel trying the requested model, then each fallback model, on `llm_unavailable`.

    Only unavailability moves on (errors, timeouts, 429/5xx once the client's own retries are
    spent): a bad request would be as bad for the next model. A stream moves on only before its
    first delta; text already sent cannot be taken back.
    """

    def __init__(self, model: ChatModel, default_model: str, fallbacks: Sequence[str]) -> None:
        self._model = model
        self._default = default_model
        self._fallbacks = list(fallbacks)

    def _chain(self, model: str | None) -> list[str]:
        first = model or self._default
        return [first, *(name for name in self._fallbacks if name != first)]

    async def complete(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        response_format: dict[str, Any] | None = None,
        temperature: float | None = None,
    ) -> Completion:
        chain = self._chain(model)
        for index, name in enumerate(chain):
            try:
                completion = await self._model.complete(
                    messages,
                    model=name,
                    max_tokens=max_tokens,
                    response_format=response_format,
                    temperature=temperature,
                )
            except LLMUnavailable as exc:
                if index == len(chain) - 1:
                    raise
                log.warning("model %s unavailable (%s); trying %s", name, exc, chain[index + 1])
                continue
            if index:
                log.info("answered by fallback model %s", completion.model)
            return completion
        raise AssertionError("unreachable")  # pragma: no cover - the chain is never empty

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        model: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> AsyncIterator[StreamItem]:
        chain = self._chain(model)
        for index, name in enumerate(chain):
            started = False
            try:
                async for item in self._model.stream(
                    messages, model=name, max_tokens=max_tokens, temperature=temperature
                ):
                    if isinstance(item, Completion):
                        if index:
                            log.info("answered by fallback model %s", item.model)
                    else:
                        started = True
                    yield item
                return
            except LLMUnavailable as exc:
                if started or index == len(chain) - 1:
                    raise
                log.warning("model %s unavailable (%s); trying %s", name, exc, chain[index + 1])

    async def aclose(self) -> None:
        await self._model.aclose()
