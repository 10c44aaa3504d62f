"""A PostgreSQL without pgvector (Debian's PostgreSQL 15 here): said clearly, never a crash.

Against TEST_DATABASE_URL=...PostgreSQL 15 these run on the real missing extension; on the
embedded server (which has pgvector) the check is made to report it missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from llm_bot_core.rag import factory
from llm_bot_core.rag.base import DisabledSemanticMemory
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.qdrant_store import QdrantStore
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import has_pgvector, recalled_block, say, services, start_over

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def no_pgvector(clean_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if await has_pgvector(clean_db):
        async def missing(_: object) -> str:
            return "the server has no `vector` extension package"

        monkeypatch.setattr(factory, "pgvector_missing", missing)


async def test_without_pgvector_falls_back_to_qdrant_local_under_data_dir_and_says_so(
    no_pgvector: None, clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_enabled=True,
                             rag_embedder="local", short_history_limit=2, data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="llm_bot_core.rag.factory"):
        async with running_app(settings) as client:
            semantic = services(client).semantic
            assert isinstance(semantic, VectorSemanticMemory)
            assert isinstance(semantic._store, QdrantStore)
            assert (tmp_path / "qdrant").is_dir()
            health = (await client.get("/health")).json()
            assert health["rag"]["status"] == "ok" and "Qdrant local" in health["rag"]["detail"]

            await say(client, "alice", "chat-a", "Я аллергик: мне нельзя арахис.")
            await say(client, "alice", "chat-a", "Ну всё, спасибо.")
            await start_over(client, "chat-a")
            await say(client, "alice", "chat-a", "Что мне нельзя есть?")
            assert "арахис" in recalled_block(fake_llm)
    assert any("pgvector is not available" in r.getMessage() and "falls back to Qdrant local"
               in r.getMessage() for r in caplog.records)


async def test_without_pgvector_and_fallback_disabled_rag_is_off_and_chat_works(
    no_pgvector: None, clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_enabled=True,
                             rag_embedder="local", rag_pgvector_fallback="disable",
                             data_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="llm_bot_core.rag.factory"):
        async with running_app(settings) as client:
            assert isinstance(services(client).semantic, DisabledSemanticMemory)
            assert (await client.get("/health")).json()["rag"]["status"] == "disabled"
            assert await say(client, "alice", "alice", "Привет") == "Echo: Привет"
    assert any("semantic memory (RAG) is OFF" in r.getMessage() for r in caplog.records)


async def test_pgvector_is_the_default_store_when_the_server_has_it(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    if not await has_pgvector(clean_db):
        pytest.skip("this PostgreSQL has no pgvector (covered by the fallback tests)")
    settings = make_settings(clean_db, llm_server.base_url, rag_enabled=True,
                             rag_embedder="local", data_dir=tmp_path)
    async with running_app(settings) as client:
        detail = (await client.get("/health")).json()["rag"]["detail"]
        assert "pgvector table rag_hvec_local_multilingual_e5_small_q4" in detail
        assert not (tmp_path / "qdrant").exists()


async def test_the_pgvector_check_accepts_this_server_and_refuses_versions_before_halfvec(
    clean_db: str,
) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    if not await has_pgvector(clean_db):
        pytest.skip("this PostgreSQL has no pgvector (the tests above cover that case)")
    engine = create_async_engine(clean_db)
    try:
        assert await factory.pgvector_missing(engine) is None
    finally:
        await engine.dispose()
    # halfvec and binary_quantize, which the store's tables use, came in pgvector 0.7.
    assert factory._version("0.6.2") < factory.MIN_PGVECTOR <= factory._version("0.7.0")
    assert factory._version("0.8.5") >= factory.MIN_PGVECTOR
