"""BM25's statistics follow `embeddings` through every kind of change, and search uses them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.search import Searcher

pytestmark = pytest.mark.asyncio

# What the triggers must keep `lexical_stats` equal to, counted from scratch.
RECOUNT = """
    SELECT scope, lexeme, sum(df)::bigint, sum(len)::bigint FROM (
        SELECT k.scope, l.lexeme, 1 AS df, 0 AS len
        FROM embeddings r
        CROSS JOIN LATERAL (VALUES ('u:' || r.user_id), ('c:' || r.chat_id)) k(scope)
        CROSS JOIN LATERAL unnest(r.lexemes) l
        WHERE k.scope IS NOT NULL
        UNION ALL
        SELECT k.scope, '', 1, length(r.lexemes)
        FROM embeddings r
        CROSS JOIN LATERAL (VALUES ('u:' || r.user_id), ('c:' || r.chat_id)) k(scope)
        WHERE k.scope IS NOT NULL AND r.lexemes IS NOT NULL
    ) d GROUP BY 1, 2
"""


async def stats(db: AsyncEngine) -> set[tuple[str, str, int, int]]:
    async with db.connect() as conn:
        rows = await conn.execute(text("SELECT scope, lexeme, df, len FROM lexical_stats"))
        return {(r[0], r[1], r[2], r[3]) for r in rows}


async def recount(db: AsyncEngine) -> set[tuple[str, str, int, int]]:
    async with db.connect() as conn:
        return {(r[0], r[1], r[2], r[3]) for r in await conn.execute(text(RECOUNT))}


async def session(db: AsyncEngine, user: str, chat: str) -> Any:
    async with db.begin() as conn:
        return (
            await conn.execute(
                text(
                    "INSERT INTO chat_sessions (user_id, chat_id, is_active, closed_at) "
                    "VALUES (:u, :c, false, now()) RETURNING id"
                ),
                {"u": user, "c": chat},
            )
        ).scalar_one()


async def remember(db: AsyncEngine, session_id: Any, *texts: str) -> list[int]:
    """Messages and their `embeddings` rows in one statement each, as any writer might."""
    ids = []
    async with db.begin() as conn:
        for content in texts:
            ids.append(
                (
                    await conn.execute(
                        text(
                            "INSERT INTO messages (session_id, role, content) "
                            "VALUES (:s, 'user', :c) RETURNING id"
                        ),
                        {"s": session_id, "c": content},
                    )
                ).scalar_one()
            )
        await conn.execute(
            text(
                """INSERT INTO embeddings (session_id, message_id, role, content, importance,
                                          user_id, chat_id, lexemes)
                   SELECT m.session_id, m.id, m.role, m.content, 1, s.user_id, s.chat_id,
                          to_tsvector('russian', m.content)
                   FROM messages m JOIN chat_sessions s ON s.id = m.session_id
                   WHERE m.id = ANY(CAST(:ids AS bigint[]))"""
            ),
            {"ids": ids},
        )
    return ids


async def test_counts_follow_inserts_updates_upserts_deletes_and_truncate(db: AsyncEngine) -> None:
    first = await session(db, "alice", "chat-a")
    second = await session(db, "alice", "chat-b")
    other = await session(db, "bob", "chat-c")
    ids = await remember(db, first, "Моя собака Рекс любит апельсины", "Рекс спит весь день")
    await remember(db, second, "I play the saxophone on Sundays")
    await remember(db, other, "Рекс — это имя моего кота")
    counted = await stats(db)
    assert counted == await recount(db)
    assert ("u:alice", "рекс", 2, 0) in counted
    documents = {row[0]: row[2] for row in counted if row[1] == ""}
    assert documents == {"u:alice": 3, "c:chat-a": 2, "c:chat-b": 1, "u:bob": 1, "c:chat-c": 1}
    assert ("c:chat-c", "рекс", 1, 0) in counted

    async with db.begin() as conn:
        # An edit re-indexed: one lexeme leaves, another comes.
        await conn.execute(
            text("UPDATE embeddings SET lexemes = to_tsvector('russian', 'Рекс грызёт кость') "
                 "WHERE message_id = :id"),
            {"id": ids[1]},
        )
        # The indexer's upsert: an update and an insert in one statement.
        third = (
            await conn.execute(
                text("INSERT INTO messages (session_id, role, content) "
                     "VALUES (:s, 'user', 'Кость была большая') RETURNING id"),
                {"s": first},
            )
        ).scalar_one()
        await conn.execute(
            text(
                """INSERT INTO embeddings (session_id, message_id, role, content, user_id,
                                          chat_id, lexemes)
                   SELECT m.session_id, m.id, 'user', m.content, 'alice', 'chat-a',
                          to_tsvector('russian', m.content || ' апельсины')
                   FROM messages m WHERE m.id = ANY(CAST(:ids AS bigint[]))
                   ON CONFLICT (message_id) DO UPDATE SET lexemes = EXCLUDED.lexemes"""
            ),
            {"ids": [ids[0], third]},
        )
    assert await stats(db) == await recount(db)

    # Deleting a session cascades to its messages and embeddings rows.
    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM chat_sessions WHERE id = :s"), {"s": other})
    counted = await stats(db)
    assert counted == await recount(db)
    assert not [row for row in counted if row[0] in ("u:bob", "c:chat-c")]
    assert all(row[2] > 0 for row in counted)

    async with db.begin() as conn:
        await conn.execute(text("DELETE FROM embeddings"))
    assert await stats(db) == set()

    await remember(db, first, "Снова про Рекса")
    assert await stats(db) != set()
    async with db.begin() as conn:
        await conn.execute(text("TRUNCATE embeddings"))
    assert await stats(db) == set()


async def test_concurrent_writers_for_one_user_lose_no_count(db: AsyncEngine) -> None:
    sessions = [await session(db, "alice", f"chat-{n}") for n in range(8)]

    async def writer(session_id: Any, n: int) -> None:
        for i in range(6):
            await remember(db, session_id, f"Рекс и апельсины, запись {n} {i}")

    await asyncio.gather(*(writer(s, n) for n, s in enumerate(sessions)))
    counted = await stats(db)
    assert counted == await recount(db)
    assert ("u:alice", "рекс", 48, 0) in counted


async def test_a_rare_word_outranks_the_name_in_every_message(db: AsyncEngine) -> None:
    chat = await session(db, "alice", "chat-a")
    small_talk = [f"Alice says the weather is fine, day {n}" for n in range(40)]
    fact = "Alice bought a saxophone yesterday"
    ids = await remember(db, chat, *small_talk, fact)
    searcher = Searcher(db, cast(Any, None), cast(Any, None), "russian")

    alice = Scope(user_id="alice")
    found = await searcher.lexical("What did Alice buy, a saxophone?", alice, [], 5)
    assert found[0][0] == ids[-1]
    # The name alone is in every message: with no rare word, the rarest terms still answer.
    found = await searcher.lexical("Alice", Scope(user_id="alice"), [], 5)
    assert len(found) == 5
    # Another user's memory is another scope.
    assert await searcher.lexical("saxophone", Scope(user_id="bob"), [], 5) == []
    # Excluded ids (the short-term window) are not returned.
    found = await searcher.lexical("saxophone", Scope(user_id="alice"), [ids[-1]], 5)
    assert ids[-1] not in [mid for mid, _ in found]


async def test_the_full_text_side_reads_a_long_query_up_to_its_cut(db: AsyncEngine) -> None:
    from llm_bot_core.rag.search import LEXICAL_QUERY_CHARS

    chat = await session(db, "alice", "chat-a")
    ids = await remember(db, chat, "Alice bought a saxophone yesterday", "Alice owns a bicycle")
    searcher = Searcher(db, cast(Any, None), cast(Any, None), "russian")
    alice = Scope(user_id="alice")
    # A pasted text: what it says within the cut is searched, what follows is not read.
    filler = "lorem ipsum " * (LEXICAL_QUERY_CHARS // 12 + 1)
    found = await searcher.lexical(f"saxophone {filler} bicycle", alice, [], 5)
    assert [mid for mid, _ in found] == [ids[0]]


class _Vectors:
    """Stands in for the embedder and the vector store: only the metadata path is under test."""

    name, dim, min_score = "test/constant", 4, 0.0
    description = "in memory"

    def __init__(self) -> None:
        self.points: dict[int, Any] = {}

    async def embed_documents(self, texts: Any, alone: Any = None) -> list[list[float]]:
        return [[1.0, 0.0, 0.0, 0.0] for _ in texts]

    async def upsert(self, points: Any) -> None:
        self.points.update({p.message_id: p for p in points})


async def test_concurrent_indexing_batches_of_one_user_keep_exact_counts(db: AsyncEngine) -> None:
    from llm_bot_core.rag.indexing import Indexer

    chat = await session(db, "alice", "chat-a")
    async with db.begin() as conn:
        # The outbox trigger queues each of them.
        await conn.execute(
            text(
                "INSERT INTO messages (session_id, role, content) "
                "SELECT :s, 'user', 'Рекс любит апельсины и кости, запись ' || n "
                "FROM generate_series(1, 60) n"
            ),
            {"s": chat},
        )
    vectors = _Vectors()
    indexer = Indexer(db, cast(Any, vectors), cast(Any, vectors), fts_config="russian",
                      context_turns=1)
    done = await asyncio.gather(*(indexer.index(None, limit=10) for _ in range(6)))
    assert sum(done) == 60 and len(vectors.points) == 60
    counted = await stats(db)
    assert counted == await recount(db)
    assert ("u:alice", "рекс", 60, 0) in counted


class _Reading(_Vectors):
    """Records what the indexer gives the embedder."""

    def __init__(self) -> None:
        super().__init__()
        self.given: list[tuple[list[str], list[str] | None]] = []

    async def embed_documents(self, texts: Any, alone: Any = None) -> list[list[float]]:
        self.given.append((list(texts), None if alone is None else list(alone)))
        return await super().embed_documents(texts)


LONG = "Вчера мы с братом ездили на рыбалку, поймали огромную щуку и двух окуней."


async def test_the_indexer_gives_each_turn_with_its_context_and_alone(db: AsyncEngine) -> None:
    from llm_bot_core.rag.indexing import Indexer

    chat = await session(db, "alice", "chat-a")
    async with db.begin() as conn:
        for role, content in [("user", "Я собираю марки."), ("assistant", "Понял тебя."),
                              ("user", LONG), ("assistant", "Здорово!")]:
            await conn.execute(
                text("INSERT INTO messages (session_id, role, content) VALUES (:s, :r, :c)"),
                {"s": chat, "r": role, "c": content},
            )
    vectors = _Reading()
    indexer = Indexer(db, cast(Any, vectors), cast(Any, vectors), fts_config="russian",
                      context_turns=1)
    assert await indexer.index(None) == 4
    [(texts, alone)] = vectors.given
    assert alone is not None
    # A context of few content words is left out of what USE reads; a long one is kept.
    assert sorted(zip(texts, alone, strict=True)) == sorted([
        ("User: Я собираю марки.", "User: Я собираю марки."),
        ("User: Я собираю марки.\nAssistant: Понял тебя.", "Assistant: Понял тебя."),
        (f"Assistant: Понял тебя.\nUser: {LONG}", f"User: {LONG}"),
        (f"User: {LONG}\nAssistant: Здорово!", f"User: {LONG}\nAssistant: Здорово!"),
    ])


async def test_ranking_reads_few_content_words_exactly_and_neighbours_on_request(
    db: AsyncEngine,
) -> None:
    from llm_bot_core.rag.indexing import Indexer
    from llm_bot_core.rag.search import MIN_CONTENT_WORDS

    chat = await session(db, "alice", "chat-a")
    turns = [("user", "Да."), ("assistant", "Понял тебя."), ("user", "Я собираю марки."),
             ("user", LONG), ("assistant", "Здорово!"), ("user", "Я никогда не курил."),
             ("user", "Я вегетарианец."), ("assistant", "Я рад.")]
    async with db.begin() as conn:
        ids = [
            (
                await conn.execute(
                    text("INSERT INTO messages (session_id, role, content) "
                         "VALUES (:s, :r, :c) RETURNING id"),
                    {"s": chat, "r": role, "c": content},
                )
            ).scalar_one()
            for role, content in turns
        ]
    vectors = _Vectors()
    indexer = Indexer(db, cast(Any, vectors), cast(Any, vectors), fts_config="russian",
                      context_turns=1)
    assert await indexer.index(None) == len(turns)
    searcher = Searcher(db, cast(Any, None), cast(Any, None), "russian")
    alice = Scope(user_id="alice")
    rows = await searcher.candidates(ids, alice, neighbours=False)
    async with db.connect() as conn:
        exact = [
            (await conn.execute(text("SELECT length(to_tsvector('russian', :c))"), {"c": c}))
            .scalar_one()
            for _, c in turns
        ]
    # Below two the count is exact (such a message is never recalled); the long message's
    # importance already shows it has enough, and it is not counted.
    assert exact == [0, 1, 2, 9, 1, 1, 1, 1]
    # "никогда", "не" and "я" are stop words of the full text, but the negation, or a user
    # speaking of themselves, is the fact: it counts as one more word of a turn that has one.
    assert [rows[i].content_words for i in ids] == [0, 1, 2, MIN_CONTENT_WORDS, 1, 2, 2, 1]
    assert all(rows[i].prev_id is None and rows[i].next_id is None for i in ids)
    linked = await searcher.candidates(ids, alice)
    assert [(linked[i].prev_id, linked[i].next_id) for i in ids] == list(
        zip([None, *ids[:-1]], [*ids[1:], None], strict=True)
    )
