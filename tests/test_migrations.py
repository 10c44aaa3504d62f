"""The Alembic history builds exactly the schema the models describe, and re-running is a no-op."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.db.migrate import include_name, upgrade_to_head_async
from llm_bot_core.db.models import Base

pytestmark = pytest.mark.asyncio


async def test_models_and_migrations_agree(db: AsyncEngine) -> None:
    def diff(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"include_name": include_name})
        return compare_metadata(context, Base.metadata)

    async with db.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == []


async def test_upgrade_twice_is_harmless(clean_db: str, db: AsyncEngine) -> None:
    await upgrade_to_head_async(clean_db)
    await upgrade_to_head_async(clean_db)
    async with db.connect() as conn:
        tables = set(
            (
                await conn.execute(
                    text(
                        "SELECT table_name FROM information_schema.tables"
                        " WHERE table_schema = 'public'"
                    )
                )
            ).scalars()
        )
    assert {"chat_sessions", "messages", "conversation_summaries", "embeddings"} <= tables


async def test_one_active_session_per_chat_is_enforced_by_the_database(db: AsyncEngine) -> None:
    from sqlalchemy.exc import IntegrityError

    async with db.begin() as conn:
        await conn.execute(text("INSERT INTO chat_sessions (user_id, chat_id) VALUES ('u', 'c')"))
    with pytest.raises(IntegrityError):
        async with db.begin() as conn:
            await conn.execute(
                text("INSERT INTO chat_sessions (user_id, chat_id) VALUES ('u', 'c')")
            )


async def test_0005_gives_messages_authors_and_takes_group_messages_out_of_private_memory(
    clean_db: str, db: AsyncEngine
) -> None:
    from alembic import command

    from llm_bot_core.db.migrate import alembic_config

    await asyncio.to_thread(command.downgrade, alembic_config(clean_db), "0004")
    try:
        async with db.begin() as conn:
            # As the code before 0005 stored them: a private chat, and a group whose every
            # message counted as the first speaker's; a pgvector table of that time.
            await conn.execute(text("""
                INSERT INTO chat_sessions (id, user_id, chat_id) VALUES
                    ('00000000-0000-0000-0000-000000000001', 'alice', 'alice'),
                    ('00000000-0000-0000-0000-000000000002', 'alice', '-100')"""))
            await conn.execute(text("""
                INSERT INTO messages (id, session_id, role, content) VALUES
                    (1, '00000000-0000-0000-0000-000000000001', 'user', 'мой пин 7314'),
                    (2, '00000000-0000-0000-0000-000000000002', 'user', 'аллергия на арахис')"""))
            await conn.execute(text("""
                INSERT INTO embeddings (session_id, message_id, role, content, user_id, chat_id,
                                        lexemes)
                SELECT session_id, id, role, content, 'alice',
                       CASE id WHEN 1 THEN 'alice' ELSE '-100' END,
                       to_tsvector('russian', content)
                FROM messages"""))
            await conn.execute(text("DELETE FROM rag_outbox"))
            await conn.execute(text("""
                CREATE TABLE rag_hvec_before_0005 (
                    message_id bigint PRIMARY KEY, session_id uuid NOT NULL,
                    user_id varchar(128) NOT NULL, chat_id varchar(128) NOT NULL)"""))
            await conn.execute(text("""
                INSERT INTO rag_hvec_before_0005
                SELECT message_id, session_id, user_id, chat_id FROM embeddings"""))

        await upgrade_to_head_async(clean_db)

        async with db.connect() as conn:
            async def rows(sql: str) -> list[tuple[object, ...]]:
                return [tuple(r) for r in await conn.execute(text(sql))]

            assert await rows("SELECT chat_id, chat_type, user_id FROM chat_sessions "
                              "ORDER BY chat_id") == [("-100", "group", None),
                                                       ("alice", "private", "alice")]
            assert await rows("SELECT id, user_id FROM messages ORDER BY id") == [
                (1, "alice"), (2, "alice")]
            assert await rows("SELECT message_id, user_id FROM embeddings ORDER BY 1") == [
                (1, "alice"), (2, None)]
            assert await rows("SELECT message_id, user_id FROM rag_hvec_before_0005 "
                              "ORDER BY 1") == [(1, "alice"), (2, None)]
            # Alice's private vocabulary no longer counts the group's words.
            assert await rows("SELECT scope FROM lexical_stats WHERE lexeme = 'арахис' "
                              "ORDER BY scope") == [("c:-100",)]
            # Queued again, so that a Qdrant payload written before is rewritten.
            assert await rows("SELECT message_id FROM rag_outbox") == [(2,)]
    finally:
        async with db.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS rag_hvec_before_0005"))
        await upgrade_to_head_async(clean_db)
