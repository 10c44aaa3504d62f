"""Facts indexed like messages: an outbox filled by a trigger, vectors, lexemes, and search.

A trigger puts every fact that is inserted, edited (the backend, an operator in the admin panel,
psql) or superseded into `fact_outbox` (migration 0012). The indexer claims rows with a lease,
embeds the current facts, writes `fact_embeddings` and the facts' `lexemes`, removes the vectors
of superseded ones, and only then deletes the outbox rows: a crash or an outage leaves them to
be retried with backoff, as for messages (rag/indexing.py).

A user has tens to hundreds of facts, so the facts past the profile's budget are ranked exactly
here, whatever the vector store of messages: one indexed read of their vectors, and a dot
product of unit vectors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.embedders import Embedder
from llm_bot_core.rag.indexing import LEASE_SECONDS, Outbox

_LEASE = f"""
    UPDATE fact_outbox SET next_attempt_at = now() + interval '{LEASE_SECONDS} seconds',
                           attempts = attempts + 1
    WHERE fact_id IN (
        SELECT fact_id FROM fact_outbox WHERE next_attempt_at <= now() {{only}}
        ORDER BY fact_id LIMIT :limit FOR UPDATE SKIP LOCKED)
    RETURNING fact_id
"""
_CLAIM_DUE = text(_LEASE.format(only=""))
_CLAIM_IDS = text(_LEASE.format(only="AND fact_id = ANY(CAST(:ids AS bigint[]))"))
_READ = text(
    "SELECT id, user_id, content, superseded_at IS NULL FROM facts "
    "WHERE id = ANY(CAST(:ids AS bigint[]))"
)
# Only if the content is still what was embedded: an edit meanwhile re-queued the fact.
_UPSERT = text(
    """
    INSERT INTO fact_embeddings (fact_id, user_id, model, embedding)
    SELECT f.id, f.user_id, :model, CAST(:embedding AS real[])
    FROM facts f WHERE f.id = :id AND f.content = :content AND f.superseded_at IS NULL
    ON CONFLICT (fact_id) DO UPDATE SET user_id = EXCLUDED.user_id, model = EXCLUDED.model,
        embedding = EXCLUDED.embedding
    """
)
# Lexemes for facts an edit outside the app left without them (migration 0006's trigger).
_LEXEMES = text(
    "UPDATE facts SET lexemes = to_tsvector(CAST(:cfg AS regconfig), content) "
    "WHERE id = ANY(CAST(:ids AS bigint[])) AND lexemes IS NULL"
)
_UNINDEX = text("DELETE FROM fact_embeddings WHERE fact_id = ANY(CAST(:ids AS bigint[]))")
_OUTBOX = Outbox("fact_outbox", "fact_id")
_ENQUEUE_STALE = text(
    """
    INSERT INTO fact_outbox (fact_id)
    SELECT f.id FROM facts f LEFT JOIN fact_embeddings e ON e.fact_id = f.id
    WHERE f.superseded_at IS NULL AND (e.fact_id IS NULL OR e.model IS DISTINCT FROM :model)
    ON CONFLICT (fact_id) DO NOTHING
    """
)
_CANDIDATES = text(
    """
    SELECT f.id, f.content, f.created_at, e.embedding
    FROM fact_embeddings e JOIN facts f ON f.id = e.fact_id
    WHERE e.fact_id = ANY(CAST(:ids AS bigint[])) AND e.model = :model
      AND f.superseded_at IS NULL
    """
)

# The user's current facts with a vector, and their content words (lexemes).
_KNOWN = text(
    """
    SELECT e.embedding,
           tsvector_to_array(coalesce(f.lexemes, to_tsvector(CAST(:cfg AS regconfig), f.content)))
    FROM fact_embeddings e JOIN facts f ON f.id = e.fact_id
    WHERE f.user_id = :user_id AND f.superseded_at IS NULL AND e.model = :model
      AND (CAST(:chat_id AS text) IS NULL OR f.chat_id = :chat_id)
    """
)
_WORDS = text(
    "SELECT tsvector_to_array(to_tsvector(CAST(:cfg AS regconfig), c)) "
    "FROM unnest(CAST(:contents AS text[])) WITH ORDINALITY x(c, n) ORDER BY n"
)


@dataclass(frozen=True, slots=True)
class FactHit:
    fact_id: int
    content: str
    created_at: datetime
    similarity: float


class FactIndexer:
    """Moves facts from the outbox into `fact_embeddings`, and ranks a user's facts by meaning."""

    def __init__(self, engine: AsyncEngine, embedder: Embedder, *, fts_config: str) -> None:
        self._engine = engine
        self._embedder = embedder
        self._cfg = fts_config
        # One drain at a time in a process: a message's job that finds the sweeper draining waits
        # for it instead of returning at once, so once the job is done its facts are indexed.
        self._draining = asyncio.Lock()

    async def index(self, fact_ids: Sequence[int] | None = None, limit: int = 64) -> int:
        """Index due outbox rows (only `fact_ids` when given); returns how many were handled.

        Raises on an embedder outage after recording it on the claimed rows.
        """
        async with self._engine.begin() as conn:
            if fact_ids is None:
                rows = await conn.execute(_CLAIM_DUE, {"limit": limit})
            else:
                rows = await conn.execute(_CLAIM_IDS, {"ids": list(fact_ids), "limit": limit})
            claimed = [r[0] for r in rows]
        if not claimed:
            return 0
        await _OUTBOX.settle(self._engine, claimed, lambda: self._index_claimed(claimed))
        return len(claimed)

    async def drain(self, batch: int = 64) -> int:
        """Index every due outbox row."""
        total = 0
        async with self._draining:
            while (done := await self.index(None, limit=batch)) > 0:
                total += done
        return total

    async def _index_claimed(self, ids: list[int]) -> None:
        async with self._engine.connect() as conn:
            rows = list(await conn.execute(_READ, {"ids": ids}))
        current = [r for r in rows if r[3]]
        vectors = await self._embedder.embed_documents([r[2] for r in current]) if current else []
        async with self._engine.begin() as conn:
            if current:
                await conn.execute(
                    _UPSERT,
                    [
                        {
                            "id": r[0],
                            "content": r[2],
                            "model": self._embedder.name,
                            "embedding": [float(x) for x in v],
                        }
                        for r, v in zip(current, vectors, strict=True)
                    ],
                )
                await conn.execute(_LEXEMES, {"ids": [r[0] for r in current], "cfg": self._cfg})
            superseded = [r[0] for r in rows if not r[3]]
            if superseded:
                await conn.execute(_UNINDEX, {"ids": superseded})
            # Claimed ids whose fact is gone were deleted with it (cascade); the rest are done.
            await conn.execute(_OUTBOX.done, {"ids": ids})

    async def enqueue_stale(self) -> int:
        """Queue current facts whose vector is missing or in another embedding space."""
        async with self._engine.begin() as conn:
            result = await conn.execute(_ENQUEUE_STALE, {"model": self._embedder.name})
            return result.rowcount or 0

    async def search(
        self, query: Sequence[float], fact_ids: Sequence[int], *, limit: int, min_score: float
    ) -> list[FactHit]:
        """The facts among `fact_ids` closest in meaning to the query vector, best first."""
        if not fact_ids:
            return []
        async with self._engine.connect() as conn:
            rows = list(
                await conn.execute(
                    _CANDIDATES, {"ids": list(fact_ids), "model": self._embedder.name}
                )
            )
        if not rows:
            return []
        matrix = np.asarray([r[3] for r in rows], dtype=np.float32)
        q = np.asarray(query, dtype=np.float32)
        norms = np.linalg.norm(matrix, axis=1) * (float(np.linalg.norm(q)) or 1.0)
        scores = matrix @ q / np.where(norms == 0, 1.0, norms)
        order = np.argsort(-scores)
        return [
            FactHit(rows[i][0], rows[i][1], rows[i][2], float(scores[i]))
            for i in order[:limit]
            if scores[i] >= min_score
        ]

    async def duplicates(
        self, user_id: str, contents: Sequence[str], *, threshold: float, chat_id: str | None
    ) -> list[bool]:
        """For each candidate, whether a current fact of the user already says it: every
        content word of the candidate is one of the fact's, and their vectors are at least
        `threshold` close. Either alone is not enough: "Has two cats" and "Has three cats" are
        as close in e5's space as two wordings of one fact, and "Is not a pilot" has no word
        "Works as a pilot" lacks. With `chat_id`, only the facts learned in that group count
        (what the group's prompt may show)."""
        if not contents:
            return []
        async with self._engine.connect() as conn:
            known = list(
                await conn.execute(
                    _KNOWN,
                    {
                        "user_id": user_id,
                        "model": self._embedder.name,
                        "cfg": self._cfg,
                        "chat_id": chat_id,
                    },
                )
            )
            words = [
                set(r[0] or ())
                for r in await conn.execute(_WORDS, {"contents": list(contents), "cfg": self._cfg})
            ]
        if not known:
            return [False] * len(contents)
        vectors = np.asarray(await self._embedder.embed_documents(list(contents)), np.float32)
        matrix = np.asarray([r[0] for r in known], dtype=np.float32)
        matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-9)
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
        close = vectors @ matrix.T >= threshold
        return [
            any(close[i, j] and words[i] <= set(known[j][1] or ()) for j in range(len(known)))
            for i in range(len(contents))
        ]
