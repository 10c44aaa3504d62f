"""The optional query rewrite (RAG_QUERY_REWRITE): before recall, the chat model turns the user's
message, read with the recent turns, into a standalone search query for their past messages.

"Where was it?" finds nothing of "My brother lives in Kaliningrad"; "Where does my brother live,
city, town" does. The rewrite only adds to the search: recall still reads the message itself, and
any failure of the rewrite (timeout, error, empty answer) leaves recall exactly as without it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from llm_bot_core.llm.base import ChatMessage, ChatModel, LLMError
from llm_bot_core.memory.store import StoredMessage
from llm_bot_core.metrics import UsageAccount, metered_completion

log = logging.getLogger(__name__)

PURPOSE = "query_rewrite"
REWRITE_SYSTEM_PROMPT = (
    "You write search queries for a memory search over a chat user's own earlier messages "
    "(full-text and semantic search). Rewrite the user's latest message into one standalone "
    "search query. Use the recent conversation only to resolve what the message refers to: "
    'replace pronouns and references such as "it", "there", "that city" with what they mean. '
    "Keep the key words of the message itself and add a few synonyms or closely related words. "
    "Write in the language of the latest message. Answer with the query only: one line, no "
    "explanation, no quotes."
)
# How much of the conversation the rewrite reads: references point at the last few turns, and
# every word here is a prompt token paid before each answer.
CONTEXT_TURNS = 4
CONTEXT_CHARS = 500
MESSAGE_CHARS = 2000
# A query is a line of words; a longer answer is cut (the lexical side reads every word of it).
MAX_TOKENS = 96
MAX_QUERY_CHARS = 400

_LABEL = re.compile(r"^(?:search\s+)?(?:query|запрос|поисковый запрос)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'«»“”„`"


def rewrite_prompt(message: str, context: Sequence[StoredMessage]) -> list[ChatMessage]:
    """The rewrite's prompt: the instruction, then one user turn with the conversation and the
    message (one system message and one user turn: the strict chat shape)."""
    parts: list[str] = []
    lines = [f"{_speaker(m)}: {_cut(m.content, CONTEXT_CHARS)}" for m in context]
    if lines:
        parts.append("Recent conversation:\n" + "\n".join(lines))
    parts.append("Latest message:\n" + _cut(message, MESSAGE_CHARS))
    return [
        {"role": "system", "content": REWRITE_SYSTEM_PROMPT},
        {"role": "user", "content": "\n\n".join(parts)},
    ]


def clean_query(answer: str) -> str | None:
    """The query in the model's answer: its first non-empty line without a label or quotes;
    None when nothing is left."""
    line = next((s.strip() for s in answer.splitlines() if s.strip()), "")
    line = _LABEL.sub("", line).strip().strip(_QUOTES).strip()
    return line[:MAX_QUERY_CHARS] or None


class QueryRewriter:
    """Asks the chat model for a search query; bounded by its own timeout, never raises."""

    def __init__(self, model: ChatModel, *, timeout: float, model_name: str | None = None) -> None:
        self._model = model
        self._timeout = timeout  # RAG_TIMEOUT: recall waits no longer for its embedder
        self._model_name = model_name  # RAG_QUERY_REWRITE_MODEL

    async def rewrite(
        self,
        message: str,
        context: Sequence[StoredMessage],
        *,
        account: UsageAccount,
        chat_model: str | None,
    ) -> str | None:
        """The search query for `message` read with `context` (the turns before it), or None
        on a timeout, an error or an empty answer. `chat_model`: the chat's model (its
        persona's), used unless RAG_QUERY_REWRITE_MODEL names another."""
        if not message.strip():
            return None
        prompt = rewrite_prompt(message, context[-CONTEXT_TURNS:])
        try:
            async with asyncio.timeout(self._timeout):
                completion = await metered_completion(
                    self._model,
                    PURPOSE,
                    prompt,
                    account=account,
                    model=self._model_name or chat_model,
                    max_tokens=MAX_TOKENS,
                )
        except (LLMError, TimeoutError) as exc:
            log.warning("query rewrite skipped: %r", exc)
            return None
        query = clean_query(completion.text)
        if query is None:
            log.info("query rewrite skipped: the model answered no query")
        return query


def _speaker(message: StoredMessage) -> str:
    if message.role == "assistant":
        return "assistant"
    if message.role == "user":
        return message.user_name or "user"
    return message.role


def _cut(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
