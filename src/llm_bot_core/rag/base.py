"""The interface the chat use case sees of semantic memory."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Protocol

from llm_bot_core.memory.prompt import RecalledFact
from llm_bot_core.rag.stores import Scope


class SemanticMemory(Protocol):
    enabled: bool

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
        """Delete the vectors of a session or a user; raises if the store is unreachable."""
        ...

    async def aclose(self) -> None: ...


class DisabledSemanticMemory:
    """Semantic memory switched off (RAG_ENABLED=false or no embedder)."""

    enabled = False

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
