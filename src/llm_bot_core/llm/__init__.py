"""Chat completion behind a small interface (OpenAI-compatible providers)."""

from llm_bot_core.llm.base import (
    ChatMessage,
    ChatModel,
    Completion,
    LLMBadResponse,
    LLMError,
    LLMNotConfigured,
    LLMUnavailable,
    StreamItem,
)

__all__ = [
    "ChatMessage",
    "ChatModel",
    "Completion",
    "LLMBadResponse",
    "LLMError",
    "LLMNotConfigured",
    "LLMUnavailable",
    "StreamItem",
]
