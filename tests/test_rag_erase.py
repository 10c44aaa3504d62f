"""Erasing a session's or a user's data removes their vectors too."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag.base import Scope
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import has_pgvector, say, scalar, services

pytestmark = pytest.mark.asyncio


@pytest.fixture(params=("pgvector", "qdrant-local"))
async def overrides(request: pytest.FixtureRequest, clean_db: str,
                    tmp_path: Path) -> dict[str, object]:
    values: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                 "data_dir": tmp_path}
    if request.param == "pgvector":
        if not await has_pgvector(clean_db):
            pytest.skip("this PostgreSQL has no pgvector")
    else:
        values["qdrant_path"] = tmp_path / "qdrant"
    return values


async def vectors_of(client: object, scope: Scope) -> int:
    semantic = services(client)  # type: ignore[arg-type]
    found = await semantic.semantic._store.search([0.05] * 384, scope, [], 1000)
    return len(found)


async def test_erasing_a_user_deletes_their_rows_and_vectors_only(
    overrides: dict[str, object], clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, **overrides)
    async with running_app(settings) as client:
        await say(client, "alice", "chat-a", "Мой номер паспорта 1234 567890.")
        await client.post("/v1/chat/reset", json={"chat_id": "chat-a"})
        await say(client, "alice", "chat-a", "Ещё одна сессия.")
        await say(client, "bob", "chat-b", "Я Боб.")
        assert await vectors_of(client, Scope(user_id="alice")) == 4

        response = await client.delete("/v1/memory/users/alice")
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "deleted_sessions": 2, "deleted_messages": 4}

        assert await vectors_of(client, Scope(user_id="alice")) == 0
        assert await vectors_of(client, Scope(user_id="bob")) == 2
        assert await scalar(db, "SELECT count(*) FROM messages") == 2
        assert await scalar(db, "SELECT count(*) FROM embeddings WHERE user_id = 'alice'") == 0


async def test_erasing_a_session_keeps_the_users_other_sessions(
    overrides: dict[str, object], clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, **overrides)
    async with running_app(settings) as client:
        await say(client, "alice", "chat-a", "Первая сессия.")
        first = await scalar(db, "SELECT id FROM chat_sessions")
        await client.post("/v1/chat/reset", json={"chat_id": "chat-a"})
        await say(client, "alice", "chat-a", "Вторая сессия.")

        response = await client.delete(f"/v1/memory/sessions/{first}")
        assert response.json() == {"status": "ok", "deleted_sessions": 1, "deleted_messages": 2}
        assert await vectors_of(client, Scope(session_id=first)) == 0
        assert await vectors_of(client, Scope(user_id="alice")) == 2

        again = await client.delete(f"/v1/memory/sessions/{first}")
        assert again.json()["deleted_sessions"] == 0
