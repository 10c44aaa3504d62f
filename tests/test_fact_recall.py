"""Facts past the profile's budget are indexed like messages (a vector per fact, lexemes) and
recalled by meaning with them; the profile's own facts are never repeated in the recall block."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.memory.prompt import RECALL_HEADER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import recalled_block, say, scalar, whole_prompt

pytestmark = pytest.mark.asyncio

ALICE = "1001"
DOG = "Мою собаку зовут Рыжик"
FACTS = (DOG, "Работает бухгалтером в банке", "Играет на виолончели в оркестре")


def with_rag(
    clean_db: str, llm_server: FakeLLMServer, tmp_path: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "rag_enabled": True,
        "rag_embedder": "local",
        "qdrant_path": tmp_path / "qdrant",
        "data_dir": tmp_path,
    }
    return make_settings(clean_db, llm_server.base_url, **{**values, **overrides})


def with_embedding_server(clean_db: str, llm_server: FakeLLMServer, tmp_path: Path) -> Settings:
    """Semantic memory embedding through the fake server's /v1/embeddings; no profile."""
    return with_rag(
        clean_db,
        llm_server,
        tmp_path,
        profile_tokens=0,
        rag_embedder="openai",
        embeddings_base_url=llm_server.base_url,
    )


async def remember(client: httpx.AsyncClient, *facts: str) -> list[int]:
    ids = []
    for fact in facts:
        response = await client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": fact})
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    return ids


async def test_a_fact_past_the_budget_is_recalled_by_meaning_without_a_shared_word(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    question = "Какой у меня питомец?"  # no word in common with any fact
    lexical_only = make_settings(clean_db, llm_server.base_url, profile_tokens=0)
    async with running_app(lexical_only) as client:
        await remember(client, *FACTS)
        await say(client, ALICE, ALICE, question)
        assert DOG not in whole_prompt(fake_llm)

    async with running_app(with_rag(clean_db, llm_server, tmp_path, profile_tokens=0)) as client:
        await say(client, ALICE, ALICE, "Привет!")  # indexing the facts queued before
        assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == len(FACTS)
        assert await scalar(db, "SELECT count(*) FROM fact_outbox") == 0
        await say(client, ALICE, ALICE, question)
        block = recalled_block(fake_llm)
        assert block.startswith(RECALL_HEADER)
        recalled = [line for line in block.splitlines() if line.startswith("- [")]
        assert DOG in recalled[0]  # the closest fact first
        assert len([line for line in recalled if any(f in line for f in FACTS)]) <= 3


async def test_a_fact_in_the_profile_is_not_repeated_in_the_recall_block(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # 15 tokens: the newest fact alone (ranked by importance, then recency).
    settings = with_rag(clean_db, llm_server, tmp_path, profile_tokens=15)
    async with running_app(settings) as client:
        await remember(client, "Играет на виолончели в оркестре", DOG)
        await say(client, ALICE, ALICE, "Привет!")
        await say(client, ALICE, ALICE, "Как зовут мою собаку?")
        prompt = whole_prompt(fake_llm)
        assert prompt.count(DOG) == 1 and DOG not in recalled_block(fake_llm)


async def test_a_deleted_fact_loses_its_vector_and_an_unreachable_embedder_loses_nothing(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    settings = with_embedding_server(clean_db, llm_server, tmp_path)
    async with running_app(settings) as client:
        await say(client, ALICE, ALICE, "Привет!")
        fake_llm.embeddings_down = True
        ids = await remember(client, *FACTS)
        await say(client, ALICE, ALICE, "Как дела?")  # answered; the indexing is deferred
        assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == 0
        errors = await scalar(db, "SELECT min(last_error) FROM fact_outbox")
        assert await scalar(db, "SELECT count(*) FROM fact_outbox") == len(FACTS)
        assert "503" in errors

        fake_llm.embeddings_down = False
        async with db.begin() as conn:  # what waiting out the backoff would do
            await conn.execute(text("UPDATE fact_outbox SET next_attempt_at = now()"))
            await conn.execute(text("UPDATE rag_outbox SET next_attempt_at = now()"))
        await client.app.state.services.semantic.sweep()  # type: ignore[attr-defined]
        assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == len(FACTS)
        assert await scalar(db, "SELECT count(*) FROM fact_outbox") == 0

        deleted = await client.delete(f"/v1/memory/users/{ALICE}/facts/{ids[0]}")
        assert deleted.status_code == 200
        assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == len(FACTS) - 1


async def test_recall_embeds_the_message_once_for_past_messages_and_facts(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    settings = with_embedding_server(clean_db, llm_server, tmp_path)
    question = "Какой у меня питомец?"
    async with running_app(settings) as client:
        await remember(client, *FACTS)
        await say(client, ALICE, ALICE, "Привет!")  # indexes the facts
        fake_llm.requests.clear()
        await say(client, ALICE, ALICE, question)
        asked = [
            r for r in fake_llm.requests
            if r.get("_kind") == "embeddings" and r["input"] in ([question], question)
        ]
        # Past messages and the facts past the budget are both searched with one vector.
        assert len(asked) == 1


async def test_facts_are_recalled_by_meaning_while_the_vector_store_is_down(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine, tmp_path: Path
) -> None:
    # Past messages' vectors live in the store; the facts' live in PostgreSQL and need only
    # the embedder. Nothing listens on port 9.
    settings = with_rag(
        clean_db, llm_server, tmp_path, profile_tokens=0, qdrant_path=None,
        qdrant_url="http://127.0.0.1:9",
    )
    async with running_app(settings) as client:
        await remember(client, *FACTS)
        await say(client, ALICE, ALICE, "Привет!")  # indexes the facts
        assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == len(FACTS)
        await say(client, ALICE, ALICE, "Какой у меня питомец?")
        block = recalled_block(fake_llm).splitlines()
        assert DOG in next(line for line in block if line.startswith("- ["))
