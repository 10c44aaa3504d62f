"""The LLM misbehaves: a documented error, the message kept, nothing half-written."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app

pytestmark = pytest.mark.asyncio

MSG = {"user_id": "u", "chat_id": "c", "chat_type": "private"}


@pytest.fixture(params=["http", "openai"])
def settings(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, request: pytest.FixtureRequest
) -> Settings:
    """Both LLM clients (LLM_CLIENT) must map every fault the same way."""
    return make_settings(clean_db, llm_server.base_url, llm_client=request.param)


async def stored(db: AsyncEngine) -> list[tuple[str, str]]:
    async with db.connect() as conn:
        return [
            tuple(r)
            for r in await conn.execute(text("SELECT role, content FROM messages ORDER BY id"))
        ]


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ({"status": 500}, "llm_unavailable"),
        ({"status": 503}, "llm_unavailable"),
        ({"status": 429}, "llm_unavailable"),
        ({"status": 0}, "llm_unavailable"),  # connection closed mid-request
        ({"status": 400}, "llm_bad_response"),
        ({"status": 401}, "llm_bad_response"),
    ],
)
async def test_provider_error_keeps_user_message_and_conversation_recovers(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM, fault: dict, code: str
) -> None:
    fake_llm.fail_next(1, **fault)
    failed = await app_client.post("/v1/chat/handle", json={**MSG, "text": "first"})
    assert failed.status_code == 502
    assert failed.json()["code"] == code
    assert await stored(db) == [("user", "first")]

    ok = await app_client.post("/v1/chat/handle", json={**MSG, "text": "second"})
    assert ok.json() == {"text": "Echo: second", "type": "message"}
    assert await stored(db) == [
        ("user", "first"),
        ("user", "second"),
        ("assistant", "Echo: second"),
    ]
    # The unanswered message is still part of the conversation the model sees, in one user
    # turn with the next: strict chat templates reject two user turns in a row.
    assert fake_llm.chat_requests[-1]["messages"][1:] == [
        {"role": "user", "content": "first\n\nsecond"}
    ]


async def test_timeout_is_reported_as_unavailable(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, llm_timeout=0.3)
    fake_llm.latency = 2.0
    async with running_app(settings) as client:
        response = await client.post("/v1/chat/handle", json={**MSG, "text": "slow"})
    assert response.status_code == 502
    assert response.json()["code"] == "llm_unavailable"
    assert await stored(db) == [("user", "slow")]


async def test_transient_errors_are_retried_with_backoff(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, llm_max_retries=2)
    fake_llm.fail_next(2, status=503)
    async with running_app(settings) as client:
        response = await client.post("/v1/chat/handle", json={**MSG, "text": "retry me"})
    assert response.json() == {"text": "Echo: retry me", "type": "message"}
    assert len(fake_llm.chat_requests) == 3


async def test_client_errors_are_not_retried(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, llm_max_retries=2)
    fake_llm.fail_next(1, status=400, body="bad request")
    async with running_app(settings) as client:
        response = await client.post("/v1/chat/handle", json={**MSG, "text": "x"})
    assert response.json()["code"] == "llm_bad_response"
    assert len(fake_llm.chat_requests) == 1


@pytest.mark.parametrize("answer", ["", "   \n  "])
async def test_empty_answer_is_a_bad_response_and_not_stored(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM, answer: str
) -> None:
    fake_llm.reply = lambda _messages: answer
    response = await app_client.post("/v1/chat/handle", json={**MSG, "text": "hi"})
    assert response.status_code == 502
    assert response.json()["code"] == "llm_bad_response"
    assert await stored(db) == [("user", "hi")]


async def test_very_long_answer_is_capped(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, max_reply_chars=1000)
    fake_llm.reply = lambda _messages: "word " * 100_000
    async with running_app(settings) as client:
        response = await client.post("/v1/chat/handle", json={**MSG, "text": "talk a lot"})
    assert response.status_code == 200
    assert len(response.json()["text"]) == 1000
    [_, (role, content)] = await stored(db)
    assert role == "assistant" and len(content) == 1000


@pytest.mark.parametrize(
    "body",
    [
        "<html>not json</html>",
        '{"foo": 1}',
        '{"choices": []}',
        "[1, 2]",
        '{"choices": [{"message": {"content": ["parts"]}}]}',
        '{"choices": [{"message": null}]}',
    ],
)
async def test_garbage_body_from_provider_is_a_bad_response(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM, body: str
) -> None:
    fake_llm.fail_next(1, status=200, body=body)
    response = await app_client.post("/v1/chat/handle", json={**MSG, "text": "hi"})
    assert response.status_code == 502
    assert response.json()["code"] == "llm_bad_response"
    assert await stored(db) == [("user", "hi")]
