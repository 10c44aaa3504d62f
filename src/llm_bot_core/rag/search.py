"""Hybrid search: dense vectors and BM25 over PostgreSQL full text, fused by reciprocal rank.

The lexical side lives in the `embeddings` table whatever the vector store, so it works the same
with pgvector and Qdrant, and keeps answering (alone) when the embedder or the store is down.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.embedders import Embedder
from llm_bot_core.rag.stores import Scope, VectorStore

log = logging.getLogger(__name__)

RRF_K = 60
MIN_CONTENT_WORDS = 2

# BM25 (k1 = 1.2, b = 0.75, each query term counted once per message: chat turns are short).
# Document frequencies are counted within the scope, so "what is common" is this user's
# vocabulary, and every count is one GIN lookup narrowed by the scope's btree.
_BM25 = """
WITH terms AS (
    SELECT DISTINCT lexeme FROM unnest(to_tsvector(CAST(:cfg AS regconfig), :query))
),
corpus AS (
    -- The average length from a sample: reading every row's tsvector costs more than the
    -- precision is worth.
    SELECT (SELECT count(*) FROM embeddings WHERE {column} = :value) AS n,
           (SELECT coalesce(avg(length(lexemes)), 1) FROM (
               SELECT lexemes FROM embeddings WHERE {column} = :value LIMIT 500) s) AS avgdl
),
weights AS (
    SELECT to_tsquery('simple', quote_literal(t.lexeme)) AS tq,
           ln(1 + ((SELECT n FROM corpus) - d.df + 0.5) / (d.df + 0.5)) AS idf
    FROM terms t,
         LATERAL (SELECT count(*) AS df FROM embeddings e
                  WHERE e.{column} = :value
                    AND e.lexemes @@ to_tsquery('simple', quote_literal(t.lexeme))) d
    WHERE d.df > 0
)
SELECT e.message_id,
       sum(w.idf) * 2.2 / (1 + 1.2 * (0.25 + 0.75 * length(e.lexemes)
                                      / greatest((SELECT avgdl FROM corpus), 1))) AS score
FROM embeddings e JOIN weights w ON e.lexemes @@ w.tq
WHERE e.{column} = :value AND e.message_id <> ALL(CAST(:exclude AS bigint[]))
  AND e.importance > 0
GROUP BY e.message_id, e.lexemes
ORDER BY score DESC
LIMIT :limit
"""

_HYDRATE = text(
    """
    SELECT m.id, m.role, m.content, m.created_at,
           length(to_tsvector(CAST(:cfg AS regconfig), m.content)) AS content_words
    FROM messages m
    WHERE m.id = ANY(CAST(:ids AS bigint[]))
    """
)


@dataclass(frozen=True, slots=True)
class Hit:
    message_id: int
    role: str
    content: str
    created_at: datetime | None
    score: float
    """The fused rank score (higher is better); not comparable across queries."""
    dense: float | None
    """Cosine similarity to the query, when the dense side found it."""


@dataclass(frozen=True, slots=True)
class SearchOptions:
    limit: int
    min_score: float
    lexical_weight: float = 1.0
    candidates: int = 40
    dedupe_jaccard: float = 0.75


class Searcher:
    def __init__(
        self, engine: AsyncEngine, embedder: Embedder, store: VectorStore, fts_config: str
    ) -> None:
        self._engine = engine
        self._embedder = embedder
        self._store = store
        self._cfg = fts_config

    async def search(
        self, query: str, scope: Scope, exclude: Sequence[int], options: SearchOptions
    ) -> list[Hit]:
        """The most relevant messages in `scope`; either side may fail, the other still answers."""
        # The two sides run concurrently: the query embedding (a thread or an HTTP call) and the
        # full-text query (PostgreSQL) take similar time, so the search costs the slower one.
        sides = [self._dense(query, scope, exclude, options.candidates)]
        if options.lexical_weight > 0:
            sides.append(self.lexical(query, scope, exclude, options.candidates))
        results = await asyncio.gather(*sides, return_exceptions=True)
        found: list[list[tuple[int, float]]] = []
        for side, result in zip(("dense", "lexical"), results, strict=False):
            if isinstance(result, BaseException):
                log.warning("%s search unavailable: %r", side, result)
                found.append([])
            else:
                found.append(result)
        if all(isinstance(r, BaseException) for r in results):
            error = results[0]
            assert isinstance(error, BaseException)
            raise error
        dense = found[0]
        lexical = found[1] if len(found) > 1 else []
        return await self._fuse(dense, lexical, options)

    async def _dense(
        self, query: str, scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        vector = await self._embedder.embed_query(query)
        return await self._store.search(vector, scope, exclude, limit)

    async def lexical(
        self, query: str, scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        column, value = scope.field()
        if column not in ("user_id", "chat_id"):
            raise ValueError("lexical search is scoped by user_id or chat_id")
        sql = text(_BM25.format(column=column))
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sql,
                {
                    "cfg": self._cfg,
                    "query": query,
                    "value": value,
                    "exclude": list(exclude),
                    "limit": limit,
                },
            )
            return [(int(r[0]), float(r[1])) for r in rows]

    async def _fuse(
        self,
        dense: list[tuple[int, float]],
        lexical: list[tuple[int, float]],
        options: SearchOptions,
    ) -> list[Hit]:
        fused: dict[int, float] = {}
        cosine = dict(dense)
        for rank, (mid, _) in enumerate(dense):
            fused[mid] = fused.get(mid, 0.0) + 1.0 / (RRF_K + rank + 1)
        lexical_ids = set()
        for rank, (mid, _) in enumerate(lexical):
            lexical_ids.add(mid)
            fused[mid] = fused.get(mid, 0.0) + options.lexical_weight / (RRF_K + rank + 1)
        # The threshold keeps dense-only near misses out of the prompt; a message that also
        # shares rare words with the question has earned its place.
        kept = [
            mid for mid in fused if mid in lexical_ids or cosine.get(mid, -1.0) >= options.min_score
        ]
        kept.sort(key=lambda mid: fused[mid], reverse=True)
        kept = kept[: options.limit * 4]
        if not kept:
            return []
        async with self._engine.connect() as conn:
            rows = {r[0]: r for r in await conn.execute(_HYDRATE, {"ids": kept, "cfg": self._cfg})}
        hits: list[Hit] = []
        seen: list[set[str]] = []
        for mid in kept:
            row = rows.get(mid)
            if row is None:  # deleted since it was indexed
                continue
            if row[4] < MIN_CONTENT_WORDS:
                # "Ого!", "Ок", "Понимаю.": short texts sit close to every short question in
                # embedding space, yet there is nothing in them to remember.
                continue
            words = _words(row[2])
            # Near-duplicate small talk ("как дела?" x 20) must not crowd out the one fact.
            if any(_jaccard(words, other) >= options.dedupe_jaccard for other in seen):
                continue
            seen.append(words)
            hits.append(
                Hit(
                    message_id=mid,
                    role=row[1],
                    content=row[2],
                    created_at=row[3],
                    score=fused[mid],
                    dense=cosine.get(mid),
                )
            )
            if len(hits) == options.limit:
                break
        return hits


_WORD = re.compile(r"\w+", re.UNICODE)


def _words(content: str) -> set[str]:
    return set(_WORD.findall(content.lower()))


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 1.0 if a == b else 0.0
    return len(a & b) / len(a | b)
