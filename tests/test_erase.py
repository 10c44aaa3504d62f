"""Erasing a session's or a user's data removes it from every store derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.db.models import Base
from llm_bot_core.rag.base import Scope
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.rag_helpers import has_pgvector, say, scalar, services
from tests.test_api import assert_error, rows

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
    dim = semantic.semantic._embedder.dim
    found = await semantic.semantic._store.search([0.05] * dim, scope, [], 1000)
    return len(found)


async def test_erasing_a_user_deletes_their_rows_and_vectors_only(
    overrides: dict[str, object], clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, **overrides)
    async with running_app(settings) as client:
        await say(client, "alice", "alice", "Мой номер паспорта 1234 567890.")
        await client.post("/v1/chat/reset", json={"chat_id": "alice"})
        await say(client, "alice", "alice", "Ещё одна сессия.")
        await say(client, "bob", "bob", "Я Боб.")
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
        await say(client, "alice", "alice", "Первая сессия.")
        first = await scalar(db, "SELECT id FROM chat_sessions")
        await client.post("/v1/chat/reset", json={"chat_id": "alice"})
        await say(client, "alice", "alice", "Вторая сессия.")

        response = await client.delete(f"/v1/memory/sessions/{first}")
        assert response.json() == {"status": "ok", "deleted_sessions": 1, "deleted_messages": 2}
        assert await vectors_of(client, Scope(session_id=first)) == 0
        assert await vectors_of(client, Scope(user_id="alice")) == 2

        again = await client.delete(f"/v1/memory/sessions/{first}")
        assert again.json()["deleted_sessions"] == 0


async def rows_left_of(db: AsyncEngine, user_id: str, sessions: list[object],
                       messages: list[int]) -> dict[str, int]:
    """Rows of every table that still point at the user, their sessions or their messages.

    Walks the schema instead of naming tables, so a new store keyed by any of them (facts, say)
    fails here until erasure covers it.
    """
    keys = {"user_id": [user_id], "session_id": sessions, "message_id": messages}
    left: dict[str, int] = {}
    async with db.connect() as conn:
        for table in Base.metadata.sorted_tables:
            for column, values in keys.items():
                if column in table.c and values:
                    count = (await conn.execute(
                        text(f"SELECT count(*) FROM {table.name} WHERE {column} = ANY(:values)"),
                        {"values": values})).scalar()
                    left[f"{table.name}.{column}"] = int(count or 0)
        # Lexical statistics are kept per search scope: the user's and the chat's.
        stats = (await conn.execute(text(
            "SELECT count(*) FROM lexical_stats WHERE scope = ANY(:scopes)"),
            {"scopes": [f"u:{user_id}", "c:alice"]})).scalar()
        left["lexical_stats.scope"] = int(stats or 0)
    return left


async def test_erasing_a_user_leaves_nothing_derived_from_them_in_any_store(
    overrides: dict[str, object], clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, summary_threshold=2, **overrides)
    async with running_app(settings) as client:
        for text_ in ("Меня зовут Алиса.", "Я живу в Казани.", "Люблю кататься на лыжах."):
            await say(client, "alice", "alice", text_)
        await say(client, "bob", "bob", "Я Боб, живу в Перми.")
        sessions = [r[0] for r in await rows(db, "SELECT id FROM chat_sessions "
                                                 "WHERE user_id = 'alice'")]
        messages = [r[0] for r in await rows(db, "SELECT m.id FROM messages m JOIN chat_sessions "
                                                 "s ON s.id = m.session_id "
                                                 "WHERE s.user_id = 'alice'")]
        await services(client).ledger.flush()  # the usage rows, written as they would be soon
        before = await rows_left_of(db, "alice", sessions, messages)
        assert before["conversation_summaries.session_id"] > 0
        assert before["embeddings.message_id"] == len(messages) == 6
        assert before["lexical_stats.scope"] > 0
        assert before["llm_usage.user_id"] > 0
        assert before["bot_users.user_id"] == 1
        spent = await scalar(db, "SELECT sum(prompt_tokens + completion_tokens) FROM llm_usage")

        response = await client.delete("/v1/memory/users/alice")
        assert response.json() == {"status": "ok", "deleted_sessions": 1, "deleted_messages": 6}

        after = await rows_left_of(db, "alice", sessions, messages)
        assert after == dict.fromkeys(before, 0)
        assert await vectors_of(client, Scope(user_id="alice")) == 0
        assert await vectors_of(client, Scope(user_id="bob")) == 2
        assert await scalar(db, "SELECT count(*) FROM lexical_stats WHERE scope = 'u:bob'") > 0
        # The accounting stays, anonymised: the day's totals do not change.
        assert await scalar(
            db, "SELECT sum(prompt_tokens + completion_tokens) FROM llm_usage"
        ) == spent
        assert await scalar(db, "SELECT count(*) FROM llm_usage WHERE chat_id = 'chat-a'") == 0


async def test_while_the_vector_store_is_down_erasing_deletes_nothing_and_says_so(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine,
    tmp_path: Path,
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_enabled=True,
                             rag_embedder="local", data_dir=tmp_path,
                             qdrant_url="http://127.0.0.1:1")
    async with running_app(settings) as client:
        await say(client, "alice", "alice", "Мой номер паспорта 1234 567890.")

        response = await client.delete("/v1/memory/users/alice")
        assert_error(response, 503, "vector_store_unavailable")
        assert await scalar(db, "SELECT count(*) FROM messages") == 2
        assert await scalar(db, "SELECT count(*) FROM chat_sessions") == 1
