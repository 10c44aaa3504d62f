"""Semantic memory end to end: facts told earlier come back in the prompt, and only the teller's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.qdrant_store import QdrantStore
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import (
    has_pgvector,
    recalled_block,
    say,
    scalar,
    services,
    start_over,
    whole_prompt,
)

pytestmark = pytest.mark.asyncio

STORES = ("pgvector", "qdrant-local")


@pytest.fixture(params=STORES)
async def rag_settings(
    request: pytest.FixtureRequest, clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    tmp_path: Path,
) -> Settings:
    """The embedded default embedder with each store; a short window so facts fall out of it."""
    overrides: dict[str, object] = {
        "rag_enabled": True, "rag_embedder": "local", "short_history_limit": 2,
        "data_dir": tmp_path,
    }
    if request.param == "pgvector":
        if not await has_pgvector(clean_db):
            pytest.skip("this PostgreSQL has no pgvector; test_rag_fallback covers that case")
    else:
        overrides["qdrant_path"] = tmp_path / "qdrant"
    return make_settings(clean_db, llm_server.base_url, **overrides)


@pytest.fixture
def store_kind(rag_settings: Settings) -> Iterator[type]:
    yield QdrantStore if rag_settings.rag.qdrant_path else PgVectorStore


async def test_fact_from_a_previous_session_is_recalled_with_its_date(
    rag_settings: Settings, store_kind: type, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        semantic = services(client).semantic
        assert isinstance(semantic, VectorSemanticMemory)
        assert isinstance(semantic._store, store_kind)
        await say(client, "alice", "chat-a", "Привет! Как у тебя дела?")
        await say(client, "alice", "chat-a", "Кстати, мою собаку зовут Рыжик, это спаниель.")
        await say(client, "alice", "chat-a", "Сегодня весь день шёл дождь.")
        await say(client, "alice", "chat-a", "Ладно, пойду ужинать, пока!")
        await say(client, "bob", "chat-b", "А мою собаку зовут Бобик, он овчарка.")
        await start_over(client, "chat-a")
        await say(client, "alice", "chat-a", "Привет снова!")

        await say(client, "alice", "chat-a", "Напомни, как зовут моего пса?")

        block = recalled_block(fake_llm)
        assert "Рыжик" in block
        assert "[20" in block  # each fact carries the date it was told: "- [2026-11-24, user] ..."
        assert "Бобик" not in whole_prompt(fake_llm)
        assert "овчарка" not in whole_prompt(fake_llm)


async def test_recall_skips_what_the_short_term_window_already_shows(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        await say(client, "alice", "chat-a", "Я живу в Казани на улице Баумана.")
        await say(client, "alice", "chat-a", "В каком городе я живу?")
        # The window (2) holds the echoed reply and the question: they are not repeated as
        # memories, while the fact itself, just outside the window, is recalled.
        block = recalled_block(fake_llm)
        assert "- [" in block and "Я живу в Казани" in block
        assert "Echo: Я живу" not in block
        assert "В каком городе" not in block


async def test_other_users_private_facts_never_appear_in_their_private_chats(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    async with running_app(rag_settings) as client:
        await say(client, "bob", "bob", "Мой пароль от вайфая: кактус-42.")
        for filler in ("раз", "два", "три"):
            await say(client, "bob", "bob", filler)
        await say(client, "carol", "carol", "Какой пароль от вайфая?")
        assert "кактус" not in whole_prompt(fake_llm)
        assert recalled_block(fake_llm) == ""


async def test_every_message_gets_a_metadata_row_with_scope_and_importance(
    rag_settings: Settings, db: AsyncEngine
) -> None:
    async with running_app(rag_settings) as client:
        await say(client, "alice", "chat-a", "ок", chat_type="private")
        await say(client, "alice", "chat-a", "Мне 34 года, я работаю врачом в Новосибирске.")
        await say(client, "alice", "-100", "Привет, группа!", chat_type="group")
        rows = await scalar(db, """
            SELECT json_agg(json_build_array(e.role, e.user_id, e.chat_id, e.importance,
                                             e.model IS NOT NULL) ORDER BY e.message_id)
            FROM embeddings e""")
        # A group's messages are the group's memory, nobody's private memory.
        assert [r[:3] for r in rows] == [["user", "alice", "chat-a"],
                                         ["assistant", "alice", "chat-a"]] * 2 + [
            ["user", None, "-100"], ["assistant", None, "-100"]]
        assert rows[0][3] < 0.2  # "ок": one short word, nothing to remember
        assert rows[2][3] == 1.0  # a fact with a number, told by the user
        assert all(r[4] for r in rows)
        assert await scalar(db, "SELECT count(*) FROM rag_outbox") == 0


async def test_chat_scope_keeps_a_users_memory_inside_the_chat_it_was_told_in(
    rag_settings: Settings, fake_llm: FakeLLM
) -> None:
    per_chat = rag_settings.model_copy(
        update={"rag": rag_settings.rag.model_copy(update={"rag_scope": "chat"})}
    )
    async with running_app(per_chat) as client:
        await say(client, "alice", "work-chat", "Код от офисной двери — 4711.")
        for filler in ("раз", "два", "три"):
            await say(client, "alice", "work-chat", filler)
        await say(client, "alice", "home-chat", "Какой код от офисной двери?")
        assert "4711" not in whole_prompt(fake_llm)
        await start_over(client, "work-chat")
        await say(client, "alice", "work-chat", "Какой код от офисной двери?")
        assert "4711" in recalled_block(fake_llm)
