"""Shared steps of the semantic memory tests."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.memory.prompt import RECALL_FOOTER, RECALL_HEADER
from llm_bot_core.testing.fake_llm import FakeLLM
from tests.conftest import drain_jobs

_pgvector: dict[str, bool] = {}


async def has_pgvector(url: str) -> bool:
    if url not in _pgvector:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                row = await conn.execute(text(
                    "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"))
                _pgvector[url] = row.first() is not None
        finally:
            await engine.dispose()
    return _pgvector[url]


async def say(client: httpx.AsyncClient, user: str, chat: str, message: str, *,
              chat_type: str | None = None, name: str | None = None) -> str:
    """One message through the API; without chat_type the API's rule applies (chat == user:
    private, else a group)."""
    body = {"user_id": user, "chat_id": chat, "text": message}
    if chat_type is not None:
        body["chat_type"] = chat_type
    if name is not None:
        body["user_name"] = name
    response = await client.post("/v1/chat/handle", json=body)
    assert response.status_code == 200, response.text
    await drain_jobs(client)
    return str(response.json()["text"])


async def start_over(client: httpx.AsyncClient, chat: str) -> None:
    response = await client.post("/v1/chat/reset", json={"chat_id": chat})
    assert response.status_code == 200, response.text


def recalled_block(fake: FakeLLM) -> str:
    """The RAG block of the last prompt sent to the model, or '' when there is none."""
    messages: list[dict[str, Any]] = fake.chat_requests[-1]["messages"]
    last_turn = str(messages[-1]["content"])  # recalled memory leads the last user turn
    if not last_turn.startswith(RECALL_HEADER):
        return ""
    return last_turn.split(RECALL_FOOTER, 1)[0]


def whole_prompt(fake: FakeLLM) -> str:
    return "\n".join(str(m["content"]) for m in fake.chat_requests[-1]["messages"])


async def scalar(db: AsyncEngine, sql: str, **params: object) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


async def wait_until(predicate: Any, seconds: float = 30.0) -> None:
    """Poll a condition another task (the outbox sweeper) will make true."""
    async with asyncio.timeout(seconds):
        while not await predicate():
            await asyncio.sleep(0.1)


def services(client: httpx.AsyncClient) -> Any:
    return client.app.state.services  # type: ignore[attr-defined]
