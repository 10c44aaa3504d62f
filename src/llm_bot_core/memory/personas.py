"""Personas: operators' system prompts, held in memory and refreshed without a restart.

Every backend process keeps all personas in a `PersonaCache`. A change in the `personas` table
NOTIFYs `personas_changed` (a trigger, migration 0009); the cache LISTENs on a connection of its
own, outside the request pool, and reloads within moments. A notification lost with a dropped
connection is caught by the periodic reload (PERSONA_RELOAD_SECONDS), and the listener
reconnects. Chats choose a persona with /mode; their choice is one row of `chat_settings`,
read with each message.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.errors import CoreError

log = logging.getLogger(__name__)

CHANNEL = "personas_changed"
DEFAULT_NAME = "Default"
# Two processes starting on an empty table seed it once.
_SEED_LOCK = zlib.crc32(b"llm_bot_core.personas.seed")


@dataclass(frozen=True, slots=True)
class Persona:
    id: int
    name: str
    instruction: str
    model: str | None
    temperature: float | None
    is_default: bool
    selectable: bool


class PersonaNotFound(CoreError):
    code = "persona_not_found"


_SELECT = text(
    "SELECT id, name, instruction, model, temperature, is_default, selectable "
    "FROM personas ORDER BY id"
)
_SEED = text(
    "INSERT INTO personas (name, instruction, is_default, selectable) "
    "SELECT :name, :instruction, true, true "
    "WHERE NOT EXISTS (SELECT 1 FROM personas WHERE is_default) "
    "ON CONFLICT (name) DO NOTHING"
)
_CHAT_PERSONA = text("SELECT persona_id FROM chat_settings WHERE chat_id = :chat_id")
_CHOOSE = text(
    "INSERT INTO chat_settings (chat_id, persona_id, updated_at) VALUES (:chat_id, :persona_id, "
    "now()) ON CONFLICT (chat_id) DO UPDATE SET persona_id = EXCLUDED.persona_id, "
    "updated_at = now()"
)


class PersonaCache:
    """All personas of the database, as of the last notification or periodic reload."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        fallback_instruction: str,
        reload_seconds: float = 30.0,
    ) -> None:
        self._engine = engine
        # The listener's connection is its own, outside the pool: a pool of DB_POOL_SIZE serves
        # requests, and holding one of its connections for good would take it from them.
        self._listen_engine = create_async_engine(engine.url, poolclass=NullPool)
        self._fallback = Persona(0, DEFAULT_NAME, fallback_instruction, None, None, True, True)
        self._reload_seconds = reload_seconds
        self._by_id: dict[int, Persona] = {}
        self._default: Persona | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        """How many times the cache was read from the database (tests, metrics)."""

    async def start(self) -> None:
        """Seed the default persona from SYSTEM_PROMPT when there is none, load, and listen.

        Only then: once seeded, the persona is the operators' to edit, and SYSTEM_PROMPT is not
        read again. A database that is down does not stop the backend from starting (it answers
        503 meanwhile): the listener seeds and loads once it connects."""
        try:
            await self._seed()
            await self.reload()
        except Exception as exc:
            log.warning("personas: not loaded yet (%r); SYSTEM_PROMPT answers meanwhile", exc)
        self._task = asyncio.create_task(self._listen(), name="personas.listen")

    async def _seed(self) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEED_LOCK})
            await conn.execute(
                _SEED, {"name": DEFAULT_NAME, "instruction": self._fallback.instruction}
            )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._listen_engine.dispose()

    async def reload(self) -> None:
        """Read every persona again."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(_SELECT)).all()
        personas = [Persona(*row) for row in rows]
        self._by_id = {p.id: p for p in personas}
        self._default = next((p for p in personas if p.is_default), None)
        self.reloads += 1

    def default(self) -> Persona:
        """The default persona; SYSTEM_PROMPT when the table has none (emptied by hand)."""
        return self._default or self._fallback

    def get(self, persona_id: int | None) -> Persona:
        """The persona of this id, or the default when it is gone or not given."""
        if persona_id is not None and (persona := self._by_id.get(persona_id)) is not None:
            return persona
        return self.default()

    def selectable(self) -> list[Persona]:
        """What /mode offers, in the operators' order of creation."""
        return [p for p in self._by_id.values() if p.selectable]

    async def for_chat(self, conn: AsyncConnection, chat_id: str) -> Persona:
        """The persona that answers in this chat."""
        return self.get(await conn.scalar(_CHAT_PERSONA, {"chat_id": chat_id}))

    async def chosen(self, chat_id: str) -> tuple[Persona, bool]:
        """The chat's persona and whether the chat chose it (else it is the default)."""
        async with self._engine.connect() as conn:
            persona_id = await conn.scalar(_CHAT_PERSONA, {"chat_id": chat_id})
        persona = self.get(persona_id)
        return persona, persona_id is not None and persona.id == persona_id

    async def choose(self, chat_id: str, persona_id: int) -> Persona:
        """Remember the chat's choice; only a selectable persona may be chosen."""
        # Read from the database, not the cache: a persona created a moment ago in another
        # process may not have reached this one's cache yet.
        async with self._engine.begin() as conn:
            row = (
                await conn.execute(
                    text(
                        "SELECT id, name, instruction, model, temperature, is_default, selectable "
                        "FROM personas WHERE id = :id AND selectable FOR SHARE"
                    ),
                    {"id": persona_id},
                )
            ).first()
            if row is None:
                raise PersonaNotFound(f"no selectable persona with id {persona_id}")
            await conn.execute(_CHOOSE, {"chat_id": chat_id, "persona_id": persona_id})
        return Persona(*row)

    async def _listen(self) -> None:
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped connection, a restarted server
                log.warning("personas: listener lost (%r); reconnecting", exc)
                await asyncio.sleep(min(self._reload_seconds, 5.0))

    async def _listen_once(self) -> None:
        async with self._listen_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            callback: Callable[..., None] = lambda *_: self._changed.set()  # noqa: E731
            await driver.add_listener(CHANNEL, callback)
            try:
                # Changes made while nobody listened (start, reconnect) are read now.
                if self._default is None:
                    await self._seed()
                await self.reload()
                while not driver.is_closed():
                    try:
                        await asyncio.wait_for(self._changed.wait(), self._reload_seconds)
                    except TimeoutError:
                        pass  # the periodic reload: in case a notification was lost
                    self._changed.clear()
                    await self.reload()
                raise ConnectionError("the listening connection was closed")
            finally:
                if not driver.is_closed():
                    await driver.remove_listener(CHANNEL, callback)
