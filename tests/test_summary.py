"""Progressive summaries: watermarks, chunking, idempotency, and the prompt that uses them."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_bot_core.config import Settings
from llm_bot_core.llm.openai_compat import OpenAIChatModel
from llm_bot_core.memory.prompt import EARLIER_REPLY_MARKER, SUMMARY_HEADER
from llm_bot_core.memory.summary import summarize_session
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from llm_bot_core.usage.ledger import UsageLedger
from tests.conftest import drain_jobs, make_settings, running_app

pytestmark = pytest.mark.asyncio

THRESHOLD = 6
WINDOW = 4


async def fetch(db: AsyncEngine, sql: str, **params: object) -> list[tuple]:
    async with db.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


def summarized_lines(fake: FakeLLM) -> list[list[str]]:
    """The "[role] content" lines each summary request was asked to cover."""
    chunks = []
    for request in fake.summary_requests:
        body = request["messages"][-1]["content"]
        new_part = body.split("New messages:\n", 1)[1]
        chunks.append(new_part.splitlines())
    return chunks


async def assert_chunks_cover_each_message_once(db: AsyncEngine, fake: FakeLLM) -> None:
    summaries = await fetch(
        db, "SELECT version, last_message_id FROM conversation_summaries ORDER BY version"
    )
    assert [v for v, _ in summaries] == list(range(1, len(summaries) + 1))
    watermarks = [w for _, w in summaries]
    assert watermarks == sorted(watermarks) and len(set(watermarks)) == len(watermarks)
    covered = [line for chunk in summarized_lines(fake) for line in chunk]
    expected = [
        f"[{role}] {content}"
        for role, content in await fetch(
            db,
            "SELECT role, content FROM messages WHERE id <= :w ORDER BY id",
            w=watermarks[-1] if watermarks else 0,
        )
    ]
    assert covered == expected  # in order, none twice, none skipped


async def converse(
    client: httpx.AsyncClient, turns: int, chat_id: str = "c", start: int = 0
) -> None:
    for i in range(start, start + turns):
        response = await client.post(
            "/v1/chat/handle", json={"user_id": "u", "chat_id": chat_id, "chat_type": "private",
                  "text": f"message {i}"}
        )
        assert response.status_code == 200, response.text
        await drain_jobs(client)


@pytest.fixture
def summary_settings(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    return make_settings(
        clean_db, llm_server.base_url, summary_threshold=THRESHOLD, short_history_limit=WINDOW
    )


async def test_three_thresholds_of_messages_make_three_versions_and_prompt_uses_latest(
    summary_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(summary_settings) as client:
        # Each turn stores two messages (user + assistant): 3 x THRESHOLD messages in all.
        await converse(client, turns=3 * THRESHOLD // 2)
        summaries = await fetch(
            db,
            "SELECT version, last_message_id, content FROM conversation_summaries ORDER BY version",
        )
        assert [(v, w) for v, w, _ in summaries] == [(1, 6), (2, 12), (3, 18)]
        await assert_chunks_cover_each_message_once(db, fake_llm)
        assert await fetch(db, "SELECT messages_since_summary FROM chat_sessions") == [(0,)]

        await converse(client, turns=1, start=100)
    prompt = fake_llm.chat_requests[-1]["messages"]
    assert prompt[0] == {
        "role": "system",
        "content": (f"{summary_settings.memory.system_prompt}\n\n{SUMMARY_HEADER}\n"
                    f"{summaries[-1][2]}"),
    }
    # The window the model saw ends with the new user message (its reply was stored after).
    recent = await fetch(
        db,
        "SELECT role, content FROM messages WHERE id < "
        "(SELECT max(id) FROM messages) ORDER BY id DESC LIMIT :n",
        n=WINDOW,
    )
    # An even window opens with the reply to a message outside it: that reply leads the first
    # user turn as marked context, so the turns still alternate and nothing is lost.
    (_, earlier_reply), (_, question), (_, reply), (_, new) = reversed(recent)
    assert prompt[1:] == [
        {"role": "user", "content": f"{EARLIER_REPLY_MARKER}\n{earlier_reply}\n\n{question}"},
        {"role": "assistant", "content": reply},
        {"role": "user", "content": new},
    ]
    assert new == "message 100"


async def test_summary_covers_only_messages_after_watermark_in_chunks(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    # A backlog of 12 messages with chunks of at most 5: v1 = 1..5, v2 = 6..10, and the 2 left
    # are fewer than the threshold, so they wait.
    settings = make_settings(
        clean_db, llm_server.base_url, summary_threshold=3, summary_new_messages_limit=5
    )
    session_id = await seed_session(db, 12)
    model = OpenAIChatModel(settings.llm)
    engine = create_async_engine(clean_db)
    ledger = UsageLedger(engine)
    try:
        run = await summarize_session(engine, model, settings.memory, session_id, ledger=ledger)
        await ledger.aclose()
    finally:
        await engine.dispose()
        await model.aclose()
    assert (run.versions_written, run.pending_after) == (2, 2)
    # Each summary call is accounted to the session's user and chat.
    assert (
        await fetch(
            db, "SELECT user_id, chat_id, purpose, model, completion_tokens > 0 FROM llm_usage"
        )
        == [("u", "c", "summary", "test-model", True)] * 2
    )
    assert await fetch(
        db, "SELECT version, last_message_id FROM conversation_summaries ORDER BY version"
    ) == [(1, 5), (2, 10)]
    assert await fetch(db, "SELECT messages_since_summary FROM chat_sessions") == [(2,)]
    assert [len(c) for c in summarized_lines(fake_llm)] == [5, 5]
    # The second request extends the first summary rather than starting over.
    assert "Summary of 5 new messages" in fake_llm.summary_requests[1]["messages"][-1]["content"]
    await assert_chunks_cover_each_message_once(db, fake_llm)


async def test_concurrent_summary_jobs_write_no_duplicate_version_and_leave_no_gap(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db, llm_server.base_url, summary_threshold=4, summary_new_messages_limit=4
    )
    session_id = await seed_session(db, 17)
    fake_llm.latency = 0.05  # make the jobs overlap while each one waits for the model
    model = OpenAIChatModel(settings.llm)
    engine = create_async_engine(clean_db)
    ledger = UsageLedger(engine)
    try:
        runs = await asyncio.gather(
            *(
                summarize_session(engine, model, settings.memory, session_id, ledger=ledger)
                for _ in range(5)
            )
        )
        # And once more after they finished: nothing left to do, nothing written.
        again = await summarize_session(engine, model, settings.memory, session_id, ledger=ledger)
        await ledger.aclose()
    finally:
        await engine.dispose()
        await model.aclose()
    assert sum(r.versions_written for r in runs) == 4
    assert again.versions_written == 0
    assert await fetch(
        db, "SELECT version, last_message_id FROM conversation_summaries ORDER BY version"
    ) == [(1, 4), (2, 8), (3, 12), (4, 16)]
    assert await fetch(db, "SELECT messages_since_summary FROM chat_sessions") == [(1,)]


async def test_summary_of_deleted_session_stops_quietly(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, summary_threshold=2)
    session_id = await seed_session(db, 4)
    model = OpenAIChatModel(settings.llm)
    engine = create_async_engine(clean_db)
    ledger = UsageLedger(engine)
    fake_llm.latency = 0.2

    async def delete_meanwhile() -> None:
        await asyncio.sleep(0.05)
        async with db.begin() as conn:
            await conn.execute(text("DELETE FROM chat_sessions WHERE id = :id"), {"id": session_id})

    try:
        run, _ = await asyncio.gather(
            summarize_session(engine, model, settings.memory, session_id, ledger=ledger),
            delete_meanwhile(),
        )
        await ledger.aclose()
    finally:
        await engine.dispose()
        await model.aclose()
    assert run.versions_written == 0
    assert await fetch(db, "SELECT count(*) FROM conversation_summaries") == [(0,)]
    # The call was made, and paid for, although its summary was not kept.
    assert await fetch(db, "SELECT user_id, purpose FROM llm_usage") == [("u", "summary")]


async def seed_session(db: AsyncEngine, count: int) -> uuid.UUID:
    """A session with `count` alternating messages, stored as the backend would."""
    async with db.begin() as conn:
        session_id = (
            await conn.execute(
                text(
                    "INSERT INTO chat_sessions (user_id, chat_id, messages_since_summary) "
                    "VALUES ('u', 'c', :n) RETURNING id"
                ),
                {"n": count},
            )
        ).scalar_one()
        for i in range(count):
            await conn.execute(
                text("INSERT INTO messages (session_id, role, content) VALUES (:s, :r, :c)"),
                {"s": session_id, "r": "user" if i % 2 == 0 else "assistant", "c": f"m{i + 1}"},
            )
    return session_id
