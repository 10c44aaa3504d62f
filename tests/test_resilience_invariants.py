"""Concurrency invariants after a burst of chats, resets and summaries, checked by SQL."""

from __future__ import annotations

import asyncio
import random

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import drain_jobs, make_settings, running_app

pytestmark = pytest.mark.asyncio

CHATS = 12
MESSAGES = 14
THRESHOLD = 4
CHUNK_LIMIT = 5


async def rows(db: AsyncEngine, sql: str) -> list[tuple]:
    async with db.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql))]


async def load(client: httpx.AsyncClient) -> tuple[list[str], list[str]]:
    """Every chat talks at once; some users press /start in the middle. Returns the texts that
    were acknowledged (200) and the ones that were not."""
    acked: list[str] = []
    failed: list[str] = []
    rng = random.Random(7)

    async def chat(c: int, sender: int) -> None:
        for n in range(MESSAGES):
            if rng.random() < 0.08:
                reset = await client.post("/v1/chat/reset", json={"chat_id": f"chat-{c}"})
                assert reset.status_code == 200
            body = {"user_id": f"user-{c}", "chat_id": f"chat-{c}", "chat_type": "private",
                    "text": f"c{c} s{sender} m{n}"}
            response = await client.post("/v1/chat/handle", json=body)
            (acked if response.status_code == 200 else failed).append(body["text"])

    # Two requests per chat at a time as well, like a user double-sending.
    await asyncio.gather(
        *(chat(c, 0) for c in range(CHATS)), *(chat(c, 1) for c in range(CHATS // 2))
    )
    return acked, failed


async def test_after_concurrent_load_every_invariant_holds_in_the_database(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db,
        llm_server.base_url,
        summary_threshold=THRESHOLD,
        summary_new_messages_limit=CHUNK_LIMIT,
        short_history_limit=4,
    )
    fake_llm.latency = 0.005
    fake_llm.summary_latency = 0.05  # summaries overlap with the chat traffic
    async with running_app(settings) as client:
        acked, failed = await load(client)
        await drain_jobs(client)
        # Summaries that became due during the drain (the counter may still be at threshold).
        for c in range(CHATS):
            await client.post(
                "/v1/chat/handle", json={"user_id": f"u{c}", "chat_id": f"chat-{c}", "text": "end"}
            )
        await drain_jobs(client)
    assert failed == []

    # One active session per chat.
    assert (
        await rows(
            db,
            "SELECT chat_id FROM chat_sessions WHERE is_active"
            " GROUP BY chat_id HAVING count(*) > 1",
        )
        == []
    )
    # Every acknowledged message is stored exactly once, and its reply too, in the same session.
    stored = await rows(
        db,
        "SELECT u.content, count(*), count(DISTINCT a.id) FROM messages u "
        "LEFT JOIN messages a ON a.session_id = u.session_id AND a.role = 'assistant' "
        "  AND a.content = 'Echo: ' || u.content "
        "WHERE u.role = 'user' AND u.content <> 'end' GROUP BY u.content",
    )
    by_text = {content: (n, replies) for content, n, replies in stored}
    assert sorted(by_text) == sorted(acked)
    assert all(n == 1 and replies == 1 for n, replies in by_text.values()), by_text
    # The counter of every session is exactly its unsummarized backlog.
    assert (
        await rows(
            db,
            "SELECT s.id FROM chat_sessions s WHERE s.messages_since_summary <> ("
            " SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.id > coalesce("
            "  (SELECT max(last_message_id) FROM conversation_summaries c"
            "   WHERE c.session_id = s.id), 0))",
        )
        == []
    )
    # Summary versions are 1..n per session, and each covers the next THRESHOLD..CHUNK_LIMIT
    # messages after the previous watermark, ending on one of them: no gap, no overlap.
    chunks = await rows(
        db,
        "SELECT c.session_id, c.version, c.last_message_id,"
        "  (SELECT count(*) FROM messages m WHERE m.session_id = c.session_id"
        "     AND m.id > coalesce(p.last_message_id, 0) AND m.id <= c.last_message_id),"
        "  EXISTS (SELECT 1 FROM messages m WHERE m.id = c.last_message_id"
        "     AND m.session_id = c.session_id),"
        "  row_number() OVER (PARTITION BY c.session_id ORDER BY c.version)"
        " FROM conversation_summaries c LEFT JOIN conversation_summaries p"
        "  ON p.session_id = c.session_id AND p.version = c.version - 1",
    )
    assert len(chunks) >= CHATS  # every chat went past the threshold at least once
    for _session, version, _watermark, covered, ends_on_own_message, position in chunks:
        assert version == position
        assert THRESHOLD <= covered <= CHUNK_LIMIT
        assert ends_on_own_message
    # What each summary request was asked to cover is exactly one version's chunk.
    asked = sorted(
        tuple(r["messages"][-1]["content"].split("New messages:\n", 1)[1].split("\n"))
        for r in fake_llm.summary_requests
    )
    written = sorted(
        tuple(f"[{role}] {content}" for role, content in chunk)
        for chunk in await chunk_contents(db)
    )
    assert asked == written


async def chunk_contents(db: AsyncEngine) -> list[list[tuple[str, str]]]:
    chunks = await rows(
        db,
        "SELECT c.session_id, coalesce(p.last_message_id, 0), c.last_message_id"
        " FROM conversation_summaries c LEFT JOIN conversation_summaries p"
        "  ON p.session_id = c.session_id AND p.version = c.version - 1",
    )
    out = []
    for session_id, after, upto in chunks:
        async with db.connect() as conn:
            result = await conn.execute(
                text(
                    "SELECT role, content FROM messages WHERE session_id = :s"
                    " AND id > :a AND id <= :u ORDER BY id"
                ),
                {"s": session_id, "a": after, "u": upto},
            )
            out.append([(r[0], r[1]) for r in result])
    return out


async def test_shutdown_drops_queued_summaries_which_stay_due(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db, llm_server.base_url, summary_threshold=2, summary_concurrency=1
    )
    fake_llm.summary_latency = 1.0
    started = asyncio.get_running_loop().time()
    async with running_app(settings) as client:
        for c in range(5):
            body = {"user_id": "u", "chat_id": f"q{c}", "text": "hello"}
            assert (await client.post("/v1/chat/handle", json=body)).status_code == 200
    # One summary was running and is finished; the four waiting for the slot were dropped.
    assert asyncio.get_running_loop().time() - started < 4
    [(written,)] = await rows(db, "SELECT count(*) FROM conversation_summaries")
    [(still_due,)] = await rows(
        db, "SELECT count(*) FROM chat_sessions WHERE messages_since_summary >= 2"
    )
    assert written <= 2 and written + still_due == 5
