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
    """Whose memory a search or a deletion covers; exactly one field is set."""

    user_id: str | None = None
    chat_id: str | None = None
    session_id: uuid.UUID | None = None

    def field(self) -> tuple[str, str]:
        for name in ("user_id", "chat_id", "session_id"):
            value = getattr(self, name)
            if value is not None:
                return name, str(value)
        raise ValueError("empty scope")


@dataclass(frozen=True, slots=True)
class RecalledFact:
    """A fragment found by semantic memory, with where and when it was said."""

    message_id: int
    role: str
    content: str
    created_at: datetime | None
    score: float


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
        session_id: uuid.UUID,
        query: str,
        exclude_message_ids: Sequence[int],
    ) -> list[RecalledFact]:
        """Top-K relevant past fragments; never raises (an outage means no recalled memory)."""
        ...

    async def index_messages(self, message_ids: Sequence[int]) -> int:
        """Index stored messages (idempotent); returns how many were indexed."""
        ...

    async def forget(self, scope: Scope) -> None:
        """Delete the vectors of a session or a user; raises VectorStoreUnavailable if the
        store is unreachable. The rows they were made from are the caller's (memory/erase.py).
        """
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
        session_id: uuid.UUID,
        query: str,
        exclude_message_ids: Sequence[int],
    ) -> list[RecalledFact]:
        return []

    async def index_messages(self, message_ids: Sequence[int]) -> int:
        return 0

    async def forget(self, scope: Scope) -> None:
        return None

    async def aclose(self) -> None:
        return None
