"""RAG_QUERY_REWRITE: the chat model rewrites the message into a search query before recall.

Through the real app, PostgreSQL and the default local embedder; the fake LLM scripts the rewrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.llm.strict_chat import chat_problems
from llm_bot_core.memory.query_rewrite import PURPOSE, REWRITE_SYSTEM_PROMPT, clean_query
from llm_bot_core.testing.fake_llm import (
    FakeLLM,
    FakeLLMServer,
    default_reply,
    is_rewrite_request,
    rewritten_message,
)
from tests.conftest import drain_jobs, make_settings, running_app
from tests.rag_helpers import has_pgvector, recalled_block, say
from tests.test_api import rows
from tests.test_observability import sample
from tests.test_stream_api import parse_events

pytestmark = pytest.mark.asyncio

# Told first, then pushed out of the window (2) by small talk. The question refers to it only
# through the turn before it ("к нему": to the brother); its own words share nothing with the
# fact, but they do with the sunny-weather fact, which recall finds by the message itself.
FACT = "Мой брат Олег переехал в Калининград прошлой осенью."
OTHER_FACT = "Больше всего я люблю солнечную погоду."
HISTORY = (
    FACT,
    OTHER_FACT,
    "Сегодня весь день шёл дождь.",
    "Ладно, пойду ужинать.",
    "На майские я поеду к нему в гости.",
)
QUESTION = "Какая там сейчас погода?"
REWRITE = "Какая погода в Калининграде, где живёт брат Олег; климат, город"


def scripted(messages: list[dict[str, Any]]) -> str:
    """The fake's answers, with the rewrite a chat model would give for QUESTION."""
    if is_rewrite_request(messages) and rewritten_message(messages) == QUESTION:
        return f"Query: «{REWRITE}»"
    return default_reply(messages)


async def rewrite_settings(
    url: str, server: FakeLLMServer, tmp_path: Path, **overrides: Any
) -> Settings:
    """The default embedder and store (Qdrant local mode where PostgreSQL has no pgvector: the
    store plays no part here); a window of 2, so the facts are out of it; no fact extraction."""
    values: dict[str, Any] = {
        "rag_enabled": True,
        "rag_embedder": "local",
        "short_history_limit": 2,
        "facts_every": 0,
        "rag_top_k": 2,
        "data_dir": tmp_path,
        "rag_query_rewrite": True,
        **overrides,
    }
    if not await has_pgvector(url):
        values["qdrant_path"] = tmp_path / "qdrant"
    return make_settings(url, server.base_url, **values)


async def tell_history(client: httpx.AsyncClient) -> None:
    for message in HISTORY:
        await say(client, "alice", "alice", message)


async def ask_streamed(client: httpx.AsyncClient, message: str) -> str:
    body = {"user_id": "alice", "chat_id": "alice", "text": message}
    response = await client.post("/v1/chat/stream", json=body)
    assert response.status_code == 200, response.text
    events = parse_events(response.text)
    assert events[-1][0] == "done", events
    await drain_jobs(client)
    return str(events[-1][1]["text"])


def chat_calls(fake: FakeLLM) -> list[dict[str, Any]]:
    return [r for r in fake.requests if r.get("_kind") == "chat"]


@pytest.mark.parametrize("route", ["handle", "stream"])
async def test_rewrite_recalls_a_fact_only_its_words_reach(
    route: str,
    clean_db: str,
    db: AsyncEngine,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> None:
    fake_llm.reply = scripted
    async with running_app(await rewrite_settings(clean_db, llm_server, tmp_path)) as client:
        await tell_history(client)
        fake_llm.requests.clear()
        if route == "handle":
            answer = await say(client, "alice", "alice", QUESTION)
        else:
            answer = await ask_streamed(client, QUESTION)
        metrics = (await client.get("/metrics")).text

        assert answer == f"Echo: {QUESTION}"
        block = recalled_block(fake_llm)
        assert FACT in block  # found by the rewrite's words: брат, Олег, Калининград
        assert OTHER_FACT in block  # the message's own words still search
        # One rewrite, before the answer, with the chat's model.
        calls = chat_calls(fake_llm)
        assert [is_rewrite_request(c["messages"]) for c in calls] == [True, False]
        assert calls[0]["model"] == "test-model"
        assert sample(metrics, "llmbot_llm_tokens_total", purpose=PURPOSE, kind="prompt") > 0

    # The strict chat shape: the instruction, then one user turn with the recent conversation
    # (what "к нему" refers to) and the message.
    messages = calls[0]["messages"]
    assert chat_problems(messages) == []
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == REWRITE_SYSTEM_PROMPT
    assert "На майские я поеду к нему в гости." in messages[1]["content"]
    assert messages[1]["content"].endswith(f"Latest message:\n{QUESTION}")
    # Its tokens are the user's, as every call made for them: one rewrite per message.
    assert await rows(
        db,
        "SELECT user_id, chat_id, model, count(*) FROM llm_usage WHERE purpose = :p "
        "GROUP BY 1, 2, 3",
        p=PURPOSE,
    ) == [("alice", "alice", "test-model", len(HISTORY) + 1)]


async def test_without_the_setting_no_rewrite_call_is_made_and_the_fact_stays_out(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    fake_llm.reply = scripted
    settings = await rewrite_settings(clean_db, llm_server, tmp_path, rag_query_rewrite=False)
    async with running_app(settings) as client:
        await tell_history(client)
        fake_llm.requests.clear()
        await say(client, "alice", "alice", QUESTION)

        assert len(chat_calls(fake_llm)) == 1  # the answer, nothing before it
        block = recalled_block(fake_llm)
        assert OTHER_FACT in block
        assert FACT not in block  # the message alone does not reach it
    assert fake_llm.rewrite_requests == []
    assert await rows(db, "SELECT purpose FROM llm_usage WHERE purpose = :p", p=PURPOSE) == []


async def test_with_semantic_memory_off_the_setting_makes_no_rewrite_call(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, rag_query_rewrite=True)
    async with running_app(settings) as client:
        await say(client, "alice", "alice", FACT)
        await say(client, "alice", "alice", QUESTION)
    assert fake_llm.rewrite_requests == []
    assert len(fake_llm.chat_requests) == 2


@pytest.mark.parametrize("fault", ["error", "slow", "empty"])
async def test_a_failed_rewrite_leaves_recall_on_the_message_and_the_chat_answers(
    fault: str,
    clean_db: str,
    db: AsyncEngine,
    llm_server: FakeLLMServer,
    fake_llm: FakeLLM,
    tmp_path: Path,
) -> None:
    fake_llm.reply = scripted
    # The rewrite waits RAG_TIMEOUT at most; the slow one takes longer.
    settings = await rewrite_settings(clean_db, llm_server, tmp_path, rag_timeout=2.0)
    async with running_app(settings) as client:
        await tell_history(client)
        fake_llm.requests.clear()
        if fault == "error":
            fake_llm.fail_next(1, status=500)  # the rewrite is the next call (no retries here)
        elif fault == "slow":
            fake_llm.rewrite_latency = 6.0
        else:
            # An answer, but no query in it (an empty one the client refuses as an error).
            fake_llm.reply = lambda m: "Query: «»" if is_rewrite_request(m) else default_reply(m)
        for route in ("handle", "stream"):
            if route == "handle":
                answer = await say(client, "alice", "alice", QUESTION)
            else:
                if fault == "error":
                    fake_llm.fail_next(1, status=500)
                answer = await ask_streamed(client, QUESTION)

            assert answer == f"Echo: {QUESTION}"
            block = recalled_block(fake_llm)
            assert OTHER_FACT in block  # recall ran, on the message as it was
            assert FACT not in block
        assert len(fake_llm.rewrite_requests) == 2  # tried once per message
    # Each told message had its rewrite; a failed or timed-out one reported no usage, an
    # answer without a query did.
    recorded = await rows(db, "SELECT count(*) FROM llm_usage WHERE purpose = :p", p=PURPOSE)
    assert recorded == [(len(HISTORY) + (2 if fault == "empty" else 0),)]


async def test_rewrite_answers_are_reduced_to_the_query_line() -> None:
    assert clean_query('Query: "погода Калининград брат"\nI resolved "там".') == (
        "погода Калининград брат"
    )
    assert clean_query("\n  Поисковый запрос: «собака Рыжик кличка»  ") == "собака Рыжик кличка"
    assert clean_query(" \n ") is None
    assert clean_query('""') is None
