"""Apply Alembic migrations programmatically (backend start, `llm-bot-core migrate`, tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from llm_bot_core.db.engine import normalize_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


# Tables that are not ours to migrate: the admin panel's own, and the vector tables the pgvector
# store creates at run time (their dimension depends on the configured embedding model).
FOREIGN_TABLE_PREFIXES = ("directus_", "rag_vec_", "rag_hvec_")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate's filter: leave alone the tables other components keep in our database."""
    return not (type_ == "table" and name is not None and name.startswith(FOREIGN_TABLE_PREFIXES))


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially (passwords may contain it).
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade_to_head(url: str) -> None:
    """Bring the schema to the newest revision; safe to call concurrently and repeatedly."""
    command.upgrade(alembic_config(url), "head")


async def upgrade_to_head_async(url: str) -> None:
    # env.py runs its own event loop, so it needs a thread without one.
    await asyncio.to_thread(upgrade_to_head, url)
