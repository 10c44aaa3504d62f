"""Semantic memory as the rest of the app sees it: the interface, its values and its error.

memory/ (the chat use case, erasure, jobs) and api/ depend on this module, and it depends on
nothing of the package, so importing it loads neither rag's implementation nor memory/.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


class VectorStoreUnavailable(Exception):
    """The store cannot be reached or refused the operation; the caller retries later."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose memory a search or a deletion covers.

    - `user_id`: that user's private memory, what they said and were told in private chats
      (only those carry a user id in the index); with `chat_id` too, that private chat's part.
    - `chat_id` alone: a group's memory, what any member said there, and never a message of a
      private chat, even of a chat id that was used for both.
    - `session_id`: one session (deletion).
    """

    user_id: str | None = None
    chat_id: str | None = None
    session_id: uuid.UUID | None = None

    def field(self) -> tuple[str, str]:
        """The column and value that narrow a search most (what the stores index)."""
        for name in ("session_id", "chat_id", "user_id"):
            value = getattr(self, name)
            if value is not None:
                return name, str(value)
        raise ValueError("empty scope")

    @property
    def shared(self) -> bool:
        """A group's memory: only messages no private chat owns."""
        return self.chat_id is not None and self.user_id is None and self.session_id is None

    def where(self, prefix: str = "") -> tuple[str, dict[str, object]]:
        """The scope as an SQL condition on the scope columns (of `prefix`), and its parameters."""
        conditions: list[str] = []
        params: dict[str, object] = {}
        if self.session_id is not None:
            conditions.append(f"{prefix}session_id = CAST(:scope_session AS uuid)")
            params["scope_session"] = str(self.session_id)
        if self.chat_id is not None:
            conditions.append(f"{prefix}chat_id = :scope_chat")
            params["scope_chat"] = self.chat_id
        if self.user_id is not None:
            conditions.append(f"{prefix}user_id = :scope_user")
            params["scope_user"] = self.user_id
        elif self.shared:
            conditions.append(f"{prefix}user_id IS NULL")
        if not conditions:
            raise ValueError("empty scope")
        return " AND ".join(conditions), params


@dataclass(frozen=True, slots=True)
class RecalledFact:
    """A fragment found by semantic memory, with where and when it was said."""

    message_id: int
    role: str
    content: str
    created_at: datetime | None
    score: float
    user_name: str | None = None
    """Who said it (the display name the client gave), for a group prompt's speaker labels."""


class SemanticMemory(Protocol):
    enabled: bool

    @property
    def description(self) -> str | None:
        """What serves semantic memory (model, store, scope), for GET /health; None when off."""
        ...

    async def recall(
        self,
        *,
        user_id: str,
        chat_id: str,
        private: bool,
        session_id: uuid.UUID,
        query: str,
        exclude_message_ids: Sequence[int],
        fact_ids: Sequence[int] = (),
        rewrite: str | None = None,
    ) -> list[RecalledFact]:
        """Top-K relevant past fragments of the memory this chat may see (a private chat: the
        user's private chats; a group: that group); never raises (an outage: nothing).

        With `fact_ids` (the user's facts past the profile's budget), the closest of those facts
        come first, with `message_id` the negated fact id. `rewrite` (RAG_QUERY_REWRITE): the
        message rewritten as a standalone query, searched besides `query`."""
        ...

    async def index_messages(self, message_ids: Sequence[int]) -> int:
        """Index stored messages (idempotent); returns how many were indexed."""
        ...

    async def duplicate_facts(
        self, user_id: str, contents: Sequence[str], *, threshold: float, chat_id: str | None
    ) -> list[bool]:
        """For each candidate fact, whether a current fact of the user already says it (same
        content words, vectors at least `threshold` close), among all their facts or (`chat_id`)
        those learned in that group; all False while the embedder is unreachable or before the
        user's facts are indexed."""
        ...

    async def forget(self, scope: Scope) -> None:
        """Delete the vectors of a session or a user; raises VectorStoreUnavailable if the
        store is unreachable. The rows they were made from are the caller's (memory/erase.py).
        """
        ...

    async def forget_messages(self, message_ids: Sequence[int]) -> None:
        """Delete the vectors of these messages; raises if the store is unreachable."""
        ...

    async def aclose(self) -> None: ...


class DisabledSemanticMemory:
    """Semantic memory switched off (RAG_ENABLED=false or no embedder)."""

    enabled = False
    description = None

    async def recall(
        self,
        *,
        user_id: str,
        chat_id: str,
        private: bool,
        session_id: uuid.UUID,
        query: str,
        exclude_message_ids: Sequence[int],
        fact_ids: Sequence[int] = (),
        rewrite: str | None = None,
    ) -> list[RecalledFact]:
        return []

    async def index_messages(self, message_ids: Sequence[int]) -> int:
        return 0

    async def duplicate_facts(
        self, user_id: str, contents: Sequence[str], *, threshold: float, chat_id: str | None
    ) -> list[bool]:
        return [False] * len(contents)

    async def forget(self, scope: Scope) -> None:
        return None

    async def forget_messages(self, message_ids: Sequence[int]) -> None:
        return None

    async def aclose(self) -> None:
        return None
