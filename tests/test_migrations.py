"""The Alembic history builds exactly the schema the models describe, and re-running is a no-op."""

from __future__ import annotations

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
