"""Forgotten means gone from every prompt: after each kind of deletion, no later prompt (as the
model receives it) holds the deleted text in any block: the system message (instruction,
profile, summary), the recalled memory or the history.

The backend runs with semantic memory on (the embedded model, Qdrant local mode), fact
extraction every two user messages and a summary every four messages, so each secret reaches
every block it can before it is deleted. The fake model answers "Noted." (an echo would copy
the secret into the assistant's turns, which are not what is deleted) and summarizes by quoting
every line it gets, so a summary that covered a secret carries it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.bot.handlers.memory import EraseAll
from llm_bot_core.config import Settings
from llm_bot_core.memory.prompt import SUMMARY_HEADER
from llm_bot_core.testing.fake_llm import (
    FakeLLM,
    FakeLLMServer,
    is_extraction_request,
    is_summary_request,
    scripted_facts,
)
from llm_bot_core.testing.fake_telegram import ApiCall, FakeTelegram, FakeTelegramServer
from tests.bot_support import (  # noqa: F401 - fixtures
    BackendServer,
    backend_fixture,
    make_bot_settings,
    running_bot,
    telegram_fixture,
    telegram_server_fixture,
)
from tests.conftest import make_settings, running_app
from tests.rag_helpers import say, scalar, start_over, whole_prompt

pytestmark = pytest.mark.asyncio

ALICE = "1001"
FILLER = ["The weather is grey today.", "Let us talk about books.", "Tell me a joke.", "Ok."]


def quoting_summaries(messages: list[dict[str, Any]]) -> str:
    if is_extraction_request(messages):
        return scripted_facts(messages)
    if is_summary_request(messages):
        return "Summary: " + " | ".join(str(messages[-1]["content"]).splitlines())
    return "Noted."


@pytest.fixture(params=["profile", "recall"])
def remembering(
    request: pytest.FixtureRequest,
    clean_db: str,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> Settings:
    """Facts in the profile, or (a budget of 0) only recalled by relevance."""
    fake_llm.reply = quoting_summaries
    return make_settings(
        clean_db,
        llm_server.base_url,
        rag_enabled=True,
        rag_embedder="local",
        qdrant_path=tmp_path / "qdrant",
        data_dir=tmp_path,
        short_history_limit=2,
        facts_every=2,
        summary_threshold=4,
        profile_tokens=0 if request.param == "recall" else 400,
    )


@pytest.fixture(name="client")
async def client_fixture(remembering: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(remembering) as client:
        yield client


def system_of_last_prompt(fake: FakeLLM) -> str:
    return str(fake.chat_requests[-1]["messages"][0]["content"])


async def tell(client: httpx.AsyncClient, secret: str, *, filler: int = 4) -> None:
    """The secret, then enough small talk that a summary covers it and the window drops it."""
    await say(client, ALICE, ALICE, secret)
    for line in FILLER[:filler]:
        await say(client, ALICE, ALICE, line)


async def add_fact(client: httpx.AsyncClient, content: str) -> dict[str, Any]:
    response = await client.post(f"/v1/memory/users/{ALICE}/facts", json={"content": content})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def as_operator(db: AsyncEngine, sql: str, **params: object) -> None:
    """A change made in the database directly, as Directus or psql makes it: the row alone."""
    async with db.begin() as conn:
        await conn.execute(text(sql), params)


async def assert_everywhere_then_gone(
    client: httpx.AsyncClient, fake: FakeLLM, word: str, question: str
) -> None:
    await say(client, ALICE, ALICE, question)
    assert word not in whole_prompt(fake), "the deleted text reached a later prompt"
    await say(client, ALICE, ALICE, f"{question} Once more, please.")
    assert word not in whole_prompt(fake)


async def test_a_fact_deleted_through_the_api(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    fact = await add_fact(client, "Secret project Nightingale")
    await say(client, ALICE, ALICE, "How is the Nightingale project going?")
    assert "Secret project Nightingale" in whole_prompt(fake_llm)
    assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == 1

    deleted = await client.delete(f"/v1/memory/users/{ALICE}/facts/{fact['id']}")
    assert deleted.status_code == 200
    assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == 0
    await say(client, ALICE, ALICE, "Something else.")
    assert "Secret project" not in whole_prompt(fake_llm)
    await say(client, ALICE, ALICE, "What is my secret project?")
    assert "Secret project" not in whole_prompt(fake_llm)


async def test_a_fact_superseded_through_patch(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    fact = await add_fact(client, "Lives in Omsk")
    await say(client, ALICE, ALICE, "Where do I live?")
    assert "Lives in Omsk" in whole_prompt(fake_llm)
    patched = await client.patch(
        f"/v1/memory/users/{ALICE}/facts/{fact['id']}", json={"content": "Lives in Tver"}
    )
    assert patched.status_code == 200
    await say(client, ALICE, ALICE, "Where do I live now?")
    prompt = whole_prompt(fake_llm)
    assert "Lives in Tver" in prompt and "Omsk" not in prompt
    # The old version is history: it keeps no vector, so recall cannot reach it either.
    assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == 1


async def test_an_erased_session(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    await tell(client, "My dog is Barbossa.")
    assert "Barbossa" in system_of_last_prompt(fake_llm)  # the summary, and the profile
    first = await scalar(db, "SELECT id FROM chat_sessions")
    await start_over(client, ALICE)
    await say(client, ALICE, ALICE, "What is the name of my dog?")
    assert "Dog is Barbossa" in whole_prompt(fake_llm)  # the profile, or recalled

    assert (await client.delete(f"/v1/memory/sessions/{first}")).status_code == 200
    await start_over(client, ALICE)
    await assert_everywhere_then_gone(client, fake_llm, "Barbossa", "Who is my dog?")


async def test_an_erased_user(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    await tell(client, "My cat is Matroskin.")
    assert "Matroskin" in system_of_last_prompt(fake_llm)
    assert (await client.delete(f"/v1/memory/users/{ALICE}")).status_code == 200
    assert await scalar(db, "SELECT count(*) FROM fact_embeddings") == 0
    await assert_everywhere_then_gone(client, fake_llm, "Matroskin", "Who is my cat?")


async def test_a_message_deleted_by_an_operator_in_the_database(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    await tell(client, "My horse is Julius.")
    system = system_of_last_prompt(fake_llm)
    assert SUMMARY_HEADER in system and "Julius" in system
    await as_operator(db, "DELETE FROM messages WHERE content = 'My horse is Julius.'")
    assert await scalar(db, "SELECT count(*) FROM facts") == 0
    assert (
        await scalar(
            db, "SELECT count(*) FROM conversation_summaries WHERE content LIKE '%Julius%'"
        )
        == 0
    )
    await assert_everywhere_then_gone(client, fake_llm, "Julius", "What is my horse called?")
    # The summary is built again from the remaining messages.
    await tell(client, "Nothing new.", filler=3)
    assert SUMMARY_HEADER in system_of_last_prompt(fake_llm)
    assert "Julius" not in whole_prompt(fake_llm)


async def test_a_message_edited_by_an_operator(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    await tell(client, "My boat is Victoria.")
    assert "Victoria" in system_of_last_prompt(fake_llm)
    await as_operator(
        db,
        "UPDATE messages SET content = 'Removed by the operator.' "
        "WHERE content = 'My boat is Victoria.'",
    )
    assert await scalar(db, "SELECT count(*) FROM facts") == 0
    await assert_everywhere_then_gone(client, fake_llm, "Victoria", "What is my boat called?")


async def test_a_fact_edited_by_an_operator_is_reindexed_from_the_outbox(
    client: httpx.AsyncClient, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    fact = await add_fact(client, "Drives a green tractor")
    await say(client, ALICE, ALICE, "What do I drive?")
    assert await scalar(db, "SELECT count(*) FROM fact_outbox") == 0
    before = await scalar(db, "SELECT embedding FROM fact_embeddings")
    await as_operator(
        db, "UPDATE facts SET content = 'Rides a red bicycle' WHERE id = :id", id=fact["id"]
    )
    # The edit and the history copy the edit made are queued.
    assert await scalar(db, "SELECT count(*) FROM fact_outbox") == 2
    await say(client, ALICE, ALICE, "What do I ride?")
    assert await scalar(db, "SELECT count(*) FROM fact_outbox") == 0
    indexed = await scalar(db, "SELECT array_agg(fact_id) FROM fact_embeddings")
    assert indexed == [fact["id"]]  # the edited fact, not its history copy
    assert await scalar(db, "SELECT embedding FROM fact_embeddings") != before
    prompt = whole_prompt(fake_llm)
    assert "Rides a red bicycle" in prompt and "tractor" not in prompt


# --- the bot's commands, end to end against the fake Bot API ------------------------------------


@pytest.fixture
def settings(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    fake_llm.reply = quoting_summaries
    return make_settings(clean_db, llm_server.base_url, summary_threshold=4)


async def _say(telegram: FakeTelegram, words: str, chat: int, count: int) -> ApiCall:
    telegram.send_text(words, chat_id=chat, user_id=chat)
    return (await telegram.wait_for("sendMessage", count, chat_id=chat))[count - 1]


async def test_forget_in_telegram(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    backend: BackendServer,
    fake_llm: FakeLLM,
) -> None:
    chat = 701
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember I keep bees named Zhuzha", chat, 1)
        await _say(telegram, "how are my bees?", chat, 2)
        assert "Zhuzha" in str(fake_llm.chat_requests[-1]["messages"])
        gone = await _say(telegram, "/forget 1", chat, 3)
        assert gone.plain_text == "Forgotten: I keep bees named Zhuzha"
        await _say(telegram, "how are my bees now?", chat, 4)
        await _say(telegram, "tell me about my bees", chat, 5)
    assert "Zhuzha" not in str(fake_llm.chat_requests[-1]["messages"])
    assert "Zhuzha" not in str(fake_llm.chat_requests[-2]["messages"])


async def test_forget_all_in_telegram(
    telegram: FakeTelegram,
    telegram_server: FakeTelegramServer,
    backend: BackendServer,
    fake_llm: FakeLLM,
    db: AsyncEngine,
) -> None:
    chat = 702
    async with running_bot(make_bot_settings(telegram_server, backend.url)):
        await _say(telegram, "/remember My parrot is Kesha", chat, 1)
        for n, words in enumerate(["my parrot Kesha talks", "a", "b", "c"], 2):
            await _say(telegram, words, chat, n)
        assert "Kesha" in str(fake_llm.chat_requests[-1]["messages"][0])  # profile, summary
        ask = await _say(telegram, "/forget_all", chat, 6)
        telegram.press(ask, EraseAll(confirm=True).pack())
        await telegram.wait_for("editMessageText", chat_id=chat)
        await _say(telegram, "what is my parrot called?", chat, 7)
    assert "Kesha" not in str(fake_llm.chat_requests[-1]["messages"])
    assert await scalar(db, "SELECT count(*) FROM conversation_summaries") == 0
