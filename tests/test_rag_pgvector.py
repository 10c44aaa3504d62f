"""The pgvector store: binary-code prefilter with exact re-ranking, and old tables converted."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.vector_store import Point, collection_name
from tests.rag_helpers import has_pgvector, scalar

pytestmark = pytest.mark.asyncio

DIM = 384  # like multilingual-e5-small


def vector_of(content: str) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(content.encode()).digest()[:8], "little")
    # Like real models, every vector leans the same way: codes taken around zero would be
    # nearly all equal, and the store's centre is what makes them tell vectors apart.
    v = np.random.default_rng(seed).normal(size=DIM) + 2.0
    return [float(x) for x in v / np.linalg.norm(v)]


class SeededEmbedder:
    name = "test/seeded"
    dim = DIM
    min_score = 0.0

    async def embed_documents(
        self, texts: Sequence[str], alone: Sequence[str] | None = None
    ) -> list[list[float]]:
        return [vector_of(t) for t in texts]

    async def embed_query(self, text_: str) -> list[float]:
        return vector_of(text_)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def pg(clean_db: str, db: AsyncEngine) -> AsyncEngine:
    if not await has_pgvector(clean_db):
        pytest.skip("this PostgreSQL has no pgvector (covered by the fallback tests)")
    async with db.begin() as conn:
        for t in (
            collection_name("rag_hvec_", SeededEmbedder.name, DIM),
            collection_name("rag_vec_", SeededEmbedder.name, DIM),
        ):
            await conn.execute(text(f"DROP TABLE IF EXISTS {t}"))
            await conn.execute(text(f"DROP FUNCTION IF EXISTS {t}_code(halfvec)"))
    return db


async def messages(db: AsyncEngine, user: str, count: int) -> list[tuple[int, Any]]:
    async with db.begin() as conn:
        sid = (
            await conn.execute(
                text(
                    "INSERT INTO chat_sessions (user_id, chat_id, is_active, closed_at) "
                    "VALUES (:u, :c, false, now()) RETURNING id"
                ),
                {"u": user, "c": f"{user}-chat"},
            )
        ).scalar_one()
        rows = await conn.execute(
            text(
                "INSERT INTO messages (session_id, role, content) "
                "SELECT :s, 'user', :u || ' message ' || n FROM generate_series(1, :k) n "
                "RETURNING id"
            ),
            {"s": sid, "u": user, "k": count},
        )
        return [(r[0], sid) for r in rows]


def points(user: str, rows: list[tuple[int, Any]]) -> list[Point]:
    from datetime import UTC, datetime

    return [
        Point(
            message_id=mid,
            vector=vector_of(f"{user}/{mid}"),
            session_id=sid,
            user_id=user,
            chat_id=f"{user}-chat",
            role="user",
            created_at=datetime.now(UTC),
        )
        for mid, sid in rows
    ]


def exact(query: list[float], candidates: list[Point], k: int) -> list[tuple[int, float]]:
    q = np.asarray(query)
    scored = [
        (p.message_id, float(np.dot(q, p.vector) / np.linalg.norm(p.vector))) for p in candidates
    ]
    return sorted(scored, key=lambda s: -s[1])[:k]


async def test_search_is_the_exact_cosine_ranking_within_the_scope(pg: AsyncEngine) -> None:
    store = PgVectorStore(pg, SeededEmbedder())
    assert await store.prepare() is True
    alice = points("alice", await messages(pg, "alice", 300))
    bob = points("bob", await messages(pg, "bob", 300))
    await store.upsert(alice + bob)
    query = vector_of("what did I say?")

    # The scope fits in the re-ranked candidates: the answer is the exact ranking.
    found = await store.search(query, Scope(user_id="alice"), [], 10)
    expected = exact(query, alice, 10)
    assert [mid for mid, _ in found] == [mid for mid, _ in expected]
    # halfvec keeps about three decimal places of the cosine.
    assert np.allclose([s for _, s in found], [s for _, s in expected], atol=2e-3)

    # Excluded ids (the short-term window) and other users' rows never come back.
    excluded = [mid for mid, _ in expected[:3]]
    found = await store.search(query, Scope(user_id="alice"), excluded, 10)
    assert not set(excluded) & {mid for mid, _ in found}
    assert {mid for mid, _ in found} <= {p.message_id for p in alice}


async def test_the_prefilter_keeps_the_best_when_the_scope_exceeds_it(pg: AsyncEngine) -> None:
    store = PgVectorStore(pg, SeededEmbedder())
    await store.prepare()
    alice = points("alice", await messages(pg, "alice", 2000))
    # Twenty questions, each with ten memories about it (noisy copies of the question's
    # vector, as real neighbours are) among 1,800 unrelated ones.
    rng = np.random.default_rng(7)
    questions = [vector_of(f"question {n}") for n in range(20)]
    for i, point in enumerate(alice[:200]):
        near = np.asarray(questions[i // 10]) + rng.normal(scale=0.03, size=DIM)
        alice[i] = _with_vector(point, near / np.linalg.norm(near))
    await store.upsert(alice)
    async with pg.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(f"VACUUM ANALYZE {store.table}"))
    store.RERANK = 200  # a tenth of the scope goes on to exact re-ranking

    overlap = []
    for query in questions:
        found = await store.search(query, Scope(user_id="alice"), [], 10)
        # What is returned is ranked by its exact cosine...
        scores = [s for _, s in found]
        assert scores == sorted(scores, reverse=True)
        truth = dict(exact(query, alice, len(alice)))
        assert np.allclose(scores, [truth[mid] for mid, _ in found], atol=2e-3)
        expected = exact(query, alice, 10)
        overlap.append(len({m for m, _ in found} & {m for m, _ in expected}) / 10)
    # ...and the codes found the true top 10 among a tenth of the rows.
    assert np.mean(overlap) >= 0.95, overlap


def _with_vector(point: Point, vector: np.ndarray) -> Point:
    from dataclasses import replace

    return replace(point, vector=[float(v) for v in vector])


async def test_a_table_of_32_bit_vectors_is_converted_without_embedding_again(
    pg: AsyncEngine,
) -> None:
    legacy = collection_name("rag_vec_", SeededEmbedder.name, DIM)
    alice = points("alice", await messages(pg, "alice", 50))
    async with pg.begin() as conn:
        await conn.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        await conn.execute(
            text(
                f"""CREATE TABLE {legacy} (
                      message_id bigint PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
                      session_id uuid NOT NULL, user_id varchar(128) NOT NULL,
                      chat_id varchar(128) NOT NULL, role varchar(16) NOT NULL,
                      created_at timestamptz NOT NULL, embedding vector({DIM}) NOT NULL)"""
            )
        )
        await conn.execute(
            text(
                f"INSERT INTO {legacy} VALUES (:m, :s, :u, :c, :r, :t, CAST(:e AS vector))"
            ),
            [
                {"m": p.message_id, "s": p.session_id, "u": p.user_id, "c": p.chat_id,
                 "r": p.role, "t": p.created_at, "e": str(p.vector)}
                for p in alice
            ],
        )
    store = PgVectorStore(pg, SeededEmbedder())
    # Not a new collection: nothing is queued for embedding again.
    assert await store.prepare() is False
    assert await store.count() == 50
    assert await scalar(pg, "SELECT to_regclass(:t)::text", t=legacy) is None
    query = vector_of("anything")
    found = await store.search(query, Scope(user_id="alice"), [], 5)
    assert [mid for mid, _ in found] == [mid for mid, _ in exact(query, alice, 5)]
