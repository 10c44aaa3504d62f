"""Indexing is durable: outages and restarts lose nothing, and repeats create no duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_bot_core.rag.base import Scope, VectorStoreUnavailable
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.rag.maintenance import reindex
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.vector_store import Point, VectorStore
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import (
    has_pgvector,
    recalled_block,
    say,
    scalar,
    services,
    start_over,
    wait_until,
)

pytestmark = pytest.mark.asyncio


async def store_overrides(url: str, tmp_path: Path) -> dict[str, object]:
    """pgvector where the server has it, Qdrant local otherwise (PostgreSQL 15 here)."""
    overrides: dict[str, object] = {"rag_enabled": True, "short_history_limit": 2,
                                    "data_dir": tmp_path}
    if not await has_pgvector(url):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    return overrides


async def tell_and_forget(client: httpx.AsyncClient, chat: str = "chat-a") -> None:
    """A fact among small talk, then /start: it can only come back through semantic memory."""
    await say(client, "alice", chat, "Запомни: у моей сестры Маши день рождения 12 марта.")
    await say(client, "alice", chat, "Как же сегодня холодно.")
    await start_over(client, chat)


async def fast_forward_backoff(db: AsyncEngine) -> None:
    """What waiting out the retry backoff would do."""
    async with db.begin() as conn:
        await conn.execute(text("UPDATE rag_outbox SET next_attempt_at = now()"))


async def test_embedder_outage_bot_answers_nothing_lost_indexed_when_back(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    settings = make_settings(
        clean_db, llm_server.base_url, rag_embedder="openai",
        embeddings_base_url=llm_server.base_url, **await store_overrides(clean_db, tmp_path))
    async with running_app(settings) as client:
        fake_llm.embeddings_down = True
        await tell_and_forget(client)
        reply = await say(client, "alice", "chat-a", "Когда день рождения у Маши?")
        assert reply.startswith("Echo:")  # answered, without recalled memory
        assert recalled_block(fake_llm) == ""
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 6
        assert await scalar(db, "SELECT count(*) FROM embeddings") == 0
        errors = await scalar(db, "SELECT min(last_error) FROM rag_outbox WHERE attempts > 0")
        assert "503" in errors

        fake_llm.embeddings_down = False
        await fast_forward_backoff(db)
        assert await services(client).semantic.sweep() == 6
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 0
        assert await scalar(db, "SELECT count(*) FROM embeddings") == 6

        await say(client, "alice", "chat-a", "Когда день рождения у Маши?")
        assert "12 марта" in recalled_block(fake_llm)


class FlakyStore:
    """A real store that can be switched off, as a Qdrant restart or a network cut would."""

    def __init__(self, inner: VectorStore) -> None:
        self.inner = inner
        self.down = False
        self.description = inner.description

    def _check(self) -> None:
        if self.down:
            raise VectorStoreUnavailable("connection refused")

    async def prepare(self) -> bool:
        return await self.inner.prepare()

    async def upsert(self, points: Sequence[Point]) -> None:
        self._check()
        await self.inner.upsert(points)

    async def search(self, vector: list[float], scope: Scope, exclude: Sequence[int],
                     limit: int) -> list[tuple[int, float]]:
        self._check()
        return await self.inner.search(vector, scope, exclude, limit)

    async def delete(self, scope: Scope) -> None:
        self._check()
        await self.inner.delete(scope)

    async def delete_messages(self, message_ids: Sequence[int]) -> None:
        self._check()
        await self.inner.delete_messages(message_ids)

    async def count(self) -> int:
        return await self.inner.count()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_vector_store_outage_bot_answers_nothing_lost_indexed_when_back(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_embedder="local",
                             **await store_overrides(clean_db, tmp_path))
    async with running_app(settings) as client:
        semantic = services(client).semantic
        assert isinstance(semantic, VectorSemanticMemory)
        flaky = FlakyStore(semantic._store)  # type: ignore[arg-type]
        semantic._store = flaky
        assert semantic._indexer is not None and semantic._searcher is not None
        semantic._indexer._store = flaky
        semantic._searcher._store = flaky

        flaky.down = True
        await tell_and_forget(client)
        reply = await say(client, "alice", "chat-a", "Когда у Маши день рождения?")
        assert reply.startswith("Echo:")
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 6
        assert await flaky.count() == 0

        flaky.down = False
        await fast_forward_backoff(db)
        assert await semantic.sweep() == 6
        assert await flaky.count() == 6
        await say(client, "alice", "chat-a", "Напомни дату рождения сестры")
        assert "12 марта" in recalled_block(fake_llm)


async def test_unreachable_qdrant_server_bot_still_answers_and_keeps_the_queue(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_enabled=True,
                             rag_embedder="local", qdrant_url="http://127.0.0.1:9",
                             rag_timeout=2.0, data_dir=tmp_path)
    async with running_app(settings) as client:
        assert services(client).semantic.enabled
        reply = await say(client, "alice", "alice", "Мой любимый цвет — зелёный.")
        assert reply == "Echo: Мой любимый цвет — зелёный."
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 2


async def test_messages_stored_while_semantic_memory_was_off_are_indexed_on_next_start(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    # The trigger queues every message whoever stores it, so a process that died (or ran with
    # RAG off) before indexing leaves the work in the outbox for the next one.
    off = make_settings(clean_db, llm_server.base_url, rag_enabled=False)
    async with running_app(off) as client:
        await tell_and_forget(client)
    assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 4

    on = make_settings(clean_db, llm_server.base_url, rag_embedder="local",
                       **await store_overrides(clean_db, tmp_path))
    async with running_app(on) as client:
        async def indexed() -> bool:
            return await scalar(db, "SELECT count(*) FROM rag_outbox") == 0

        await wait_until(indexed)  # the sweeper's first pass, at start
        await say(client, "alice", "chat-a", "Когда день рождения у Маши?")
        assert "12 марта" in recalled_block(fake_llm)


async def test_repeated_indexing_and_reindex_create_no_duplicates(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_embedder="local",
                             **await store_overrides(clean_db, tmp_path))
    async with running_app(settings) as client:
        await tell_and_forget(client)
        semantic = services(client).semantic
        ids = list(range(1, 5))
        # Already indexed and out of the outbox: a repeat (a redelivered Celery task) is a no-op.
        assert await semantic.index_messages(ids) == 0
        store = semantic._store
        assert await store.count() == 4
        if settings.rag.qdrant_path is None:  # Qdrant local allows one process: the app holds it
            report = await reindex(settings, services(client).engine)
            assert (report.queued, report.indexed, report.pending) == (4, 4, 0)
        else:
            await semantic._indexer.enqueue_all()
            assert await semantic.sweep() == 4
        assert await store.count() == 4
        assert await scalar(db, "SELECT count(*) FROM embeddings") == 4
        assert await scalar(db, "SELECT count(DISTINCT message_id) FROM embeddings") == 4


async def test_changing_the_embedding_model_builds_a_separate_collection(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    overrides = await store_overrides(clean_db, tmp_path)
    first = make_settings(clean_db, llm_server.base_url, rag_embedder="local",
                          local_embedding_model="use", **overrides)
    async with running_app(first) as client:
        await tell_and_forget(client)
        old = services(client).semantic.description
    second = make_settings(clean_db, llm_server.base_url, rag_embedder="local",
                           local_embedding_model="e5", **overrides)
    engine = create_async_engine(clean_db)
    try:
        memory = await build_semantic_memory(
            second.rag, engine, data_dir=second.storage.data_dir, sweeper=False
        )
        assert isinstance(memory, VectorSemanticMemory)
        assert memory._store is not None and memory._store.description not in old
        # The new space starts empty with every message queued again; the old one is untouched.
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 4
        assert await memory.sweep() == 4
        assert await memory._store.count() == 4
        assert await scalar(db, "SELECT count(*) FROM embeddings WHERE model LIKE '%e5%'") == 4
        await memory.aclose()
    finally:
        await engine.dispose()

