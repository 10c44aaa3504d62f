"""Hybrid search: dense vectors and BM25 over PostgreSQL full text, fused by reciprocal rank.

The lexical side lives in the `embeddings` table whatever the vector store, so it works the same
with pgvector and Qdrant, and keeps answering (alone) when the embedder or the store is down.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag import russian
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.embedders import Embedder
from llm_bot_core.rag.russian import Expansion
from llm_bot_core.rag.vector_store import VectorStore

log = logging.getLogger(__name__)

RRF_K = 60
MIN_CONTENT_WORDS = 2

# BM25 (k1 = 1.2, b = 0.75, each query term counted once per message: chat turns are short).
# Document frequencies are those of the scope (`lexical_stats`, kept by triggers), so "what is
# common" is this user's vocabulary. Candidates are the messages sharing a rare term with the
# query (in at most RARE_SHARE of the scope's messages, or the query's rarest terms if it has
# no rare one); common terms still add their weight to a candidate's score. A message that
# shares only common words would score below those anyway, and reading the thousands of
# messages that contain a user's own name is what made the query slow.
RARE_SHARE = 0.05
_BM25 = """
WITH terms AS MATERIALIZED (
    SELECT lexeme, max(weight) AS weight FROM (
        SELECT lexeme, 1.0::float8 AS weight
        FROM unnest(to_tsvector(CAST(:cfg AS regconfig), :query))
        UNION ALL
        SELECT (unnest(to_tsvector(CAST(:cfg AS regconfig), x.word))).lexeme, x.weight
        FROM unnest(CAST(:words AS text[]), CAST(:word_weights AS float8[])) AS x(word, weight)
    ) t GROUP BY lexeme
),
stats AS MATERIALIZED (
    SELECT s.lexeme, s.df::float8 AS df, c.df::float8 AS n,
           c.len::float8 / greatest(c.df, 1) AS avgdl, t.weight
    FROM lexical_stats c
    JOIN lexical_stats s ON s.scope = c.scope
    JOIN terms t ON t.lexeme = s.lexeme
    WHERE c.scope = :scope AND c.lexeme = '' AND s.df > 0
),
weights AS MATERIALIZED (
    SELECT to_tsquery('simple', quote_literal(lexeme)) AS tq,
           ln(1 + (n - df + 0.5) / (df + 0.5)) * weight AS idf,
           df <= greatest(n * :rare_share, (SELECT min(df) FROM stats)) AS rare, avgdl
    FROM stats
),
candidates AS MATERIALIZED (
    SELECT string_agg(tq::text, ' | ')::tsquery AS tq, max(avgdl) AS avgdl
    FROM weights WHERE rare
)
SELECT e.message_id,
       (SELECT sum(w.idf) FROM weights w WHERE e.lexemes @@ w.tq) * 2.2
       / (1 + 1.2 * (0.25 + 0.75 * length(e.lexemes) / greatest(c.avgdl, 1))) AS score
FROM embeddings e, candidates c
WHERE {where} AND e.lexemes @@ c.tq
  AND e.message_id <> ALL(CAST(:exclude AS bigint[])) AND e.importance > 0
ORDER BY score DESC
LIMIT :limit
"""

# The scope is checked again here, against the database: a vector store's copy of the scope
# columns may lag behind it (Qdrant payloads written before a migration, until re-indexed), and
# what reaches a prompt must be in scope by the rows themselves.
_HYDRATE = """
    SELECT m.id, m.role, m.content, m.created_at,
           length(to_tsvector(CAST(:cfg AS regconfig), m.content)) AS content_words,
           m.user_id, m.user_name
    FROM messages m JOIN embeddings e ON e.message_id = m.id
    WHERE m.id = ANY(CAST(:ids AS bigint[])) AND {where}
"""


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
    user_id: str | None = None
    """Who said it (a user turn) or was answered (an assistant turn)."""
    user_name: str | None = None


@dataclass(frozen=True, slots=True)
class SearchOptions:
    limit: int
    min_score: float
    lexical_weight: float = 1.0
    candidates: int = 40
    dedupe_jaccard: float = 0.75


class Searcher:
    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        store: VectorStore,
        fts_config: str,
        expand: Callable[[str], Expansion] | None = None,
    ) -> None:
        # Every read is one statement: autocommit saves the BEGIN and ROLLBACK round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._embedder = embedder
        self._store = store
        self._cfg = fts_config
        # Words near the query's own (rag/russian.py), searched with a lower weight; the SQL
        # keeps only those in the scope's vocabulary.
        self._expand = expand

    async def search(
        self, query: str, scope: Scope, exclude: Sequence[int], options: SearchOptions
    ) -> list[Hit]:
        """The most relevant messages in `scope`; either side may fail, the other still answers."""
        # The query embedding runs first and alone: the local model spreads a forward pass over
        # every core, and a database query beside it slowed both. The two database queries
        # then run side by side on two connections.
        failures: list[BaseException] = []
        sides = {}
        try:
            vector = await self._embedder.embed_query(query)
            sides["dense"] = self._store.search(vector, scope, exclude, options.candidates)
        except Exception as exc:
            failures.append(exc)
        if options.lexical_weight > 0:
            sides["lexical"] = self.lexical(query, scope, exclude, options.candidates)
        gathered = await asyncio.gather(*sides.values(), return_exceptions=True)
        results = dict(zip(sides, gathered, strict=True))
        failures += [r for r in results.values() if isinstance(r, BaseException)]
        found = {name: r for name, r in results.items() if not isinstance(r, BaseException)}
        for failure in failures:
            log.warning("search side unavailable: %r", failure)
        if not found:
            raise failures[0]
        dense, lexical = found.get("dense", []), found.get("lexical", [])
        return await self._fuse(dense, lexical, scope, options)

    async def lexical(
        self, query: str, scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        column, value = scope.field()
        if column not in ("user_id", "chat_id"):
            raise ValueError("lexical search is scoped by user_id or chat_id")
        # The statistics of the narrowest scope column: a group's (or a private chat's)
        # vocabulary, or a user's across their private chats.
        where, params = scope.where("e.")
        sql = text(_BM25.format(where=where))
        expansion = Expansion([], [])
        if self._expand is not None:
            expansion = await asyncio.to_thread(self._expand, query)
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sql,
                {
                    **params,
                    "cfg": self._cfg,
                    "query": russian.lemmatize(query),
                    "exclude": list(exclude),
                    "limit": limit,
                    "scope": f"{column[0]}:{value}",
                    "rare_share": RARE_SHARE,
                    "words": expansion.words,
                    "word_weights": expansion.weights,
                },
            )
            return [(int(r[0]), float(r[1])) for r in rows]

    async def _fuse(
        self,
        dense: list[tuple[int, float]],
        lexical: list[tuple[int, float]],
        scope: Scope,
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
        where, params = scope.where("e.")
        async with self._engine.connect() as conn:
            found = await conn.execute(
                text(_HYDRATE.format(where=where)), {**params, "ids": kept, "cfg": self._cfg}
            )
            rows = {r[0]: r for r in found}
        hits: list[Hit] = []
        seen: list[set[str]] = []
        for mid in kept:
            row = rows.get(mid)
            if row is None:  # deleted since it was indexed, or out of scope by now
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
                    user_id=row[5],
                    user_name=row[6],
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
