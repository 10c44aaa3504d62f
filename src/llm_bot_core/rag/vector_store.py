"""The vector store interface and its values; one module per provider implements it:
`pgvector_store` (a table in the project's PostgreSQL) and `qdrant_store`.

Every store keeps one collection (table) per embedding space, named after the embedder and its
dimension, so changing the model starts a new collection instead of mixing vectors of two
models (or failing on a dimension mismatch) in one.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from llm_bot_core.rag.base import Scope


@dataclass(frozen=True, slots=True)
class Point:
    message_id: int
    vector: list[float]
    session_id: uuid.UUID
    user_id: str | None
    """Whose private memory the message is; None for a group's message (the chat's memory)."""
    chat_id: str
    role: str
    created_at: datetime


class VectorStore(Protocol):
    description: str

    async def prepare(self) -> bool:
        """Create the collection if needed; True when it was just created (so it is empty)."""
        ...

    async def upsert(self, points: Sequence[Point]) -> None: ...

    async def search(
        self, vector: list[float], scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        """(message_id, cosine similarity) best first, exact within the scope."""
        ...

    async def delete(self, scope: Scope) -> None:
        """Forget the vectors of a scope; the rows they came from are not the store's."""
        ...

    async def delete_messages(self, message_ids: Sequence[int]) -> None:
        """Forget the vectors of these messages (a user's messages in groups, on erasure)."""
        ...

    async def count(self) -> int: ...

    async def aclose(self) -> None: ...


def collection_name(prefix: str, embedder_name: str, dim: int) -> str:
    """A stable identifier of an embedding space, safe as a table or collection name."""
    slug = re.sub(r"[^a-z0-9]+", "_", embedder_name.lower()).strip("_")[:32]
    digest = hashlib.sha1(embedder_name.encode()).hexdigest()[:6]
    return f"{prefix}{slug}_{digest}_{dim}"
