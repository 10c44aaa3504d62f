"""A streamed answer whose client left, at shutdown: stored within the grace, or nothing is."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.memory.chat import UserMessage
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.bot_support import rows
from tests.conftest import make_settings, running_app

ANSWERS = "SELECT role, content FROM messages ORDER BY id"


@pytest.mark.parametrize(("grace", "stored"), [(5, True), (0, False)])
async def test_answer_in_progress_at_shutdown_is_stored_within_the_grace_or_not_at_all(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM, grace: int,
    stored: bool,
) -> None:  # fmt: skip
    fake_llm.chunk_chars, fake_llm.chunk_delay = 4, 0.1  # "Echo: question" takes ~0.4 s
    settings = make_settings(clean_db, llm_server.base_url, shutdown_grace_seconds=grace)
    app = running_app(settings)
    client = await app.__aenter__()
    chat = client.app.state.services.chat  # type: ignore[attr-defined]
    reply = await chat.stream(UserMessage(user_id="u", chat_id="c", text="question"))
    assert await anext(reply) == "Echo"  # the reader takes one delta and goes away
    await asyncio.sleep(0.05)
    await app.__aexit__(None, None, None)  # the lifespan's shutdown

    expected = [("user", "question")] + ([("assistant", "Echo: question")] if stored else [])
    assert await rows(db, ANSWERS) == expected
