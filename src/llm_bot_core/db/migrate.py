"""Apply Alembic migrations programmatically (backend start, `llm-bot-core migrate`, tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from llm_bot_core.db.engine import normalize_url

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Autogenerate's filter: the admin panel keeps its own `directus_*` tables in our database."""
    return not (type_ == "table" and name is not None and name.startswith("directus_"))


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
