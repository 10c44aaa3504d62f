"""The REST contract of the specification, its error shape, and input validation."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import drain_jobs, make_settings, running_app

pytestmark = pytest.mark.asyncio


async def rows(db: AsyncEngine, sql: str, **params: object) -> list[tuple]:
    async with db.connect() as conn:
        return [tuple(r) for r in await conn.execute(text(sql), params)]


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["code"] == code
    assert body["message"]
    assert body["request_id"]
    return body


async def test_handle_answers_in_spec_shape_and_stores_both_messages(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    response = await app_client.post(
        "/v1/chat/handle",
        json={
            "user_id": "12345",
            "chat_id": "67890",
            "text": "Привет, расскажи, что ты умеешь?",
            "chat_type": "private",
            "user_name": "Alice",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "Echo: Привет, расскажи, что ты умеешь?", "type": "message"}
    assert response.headers["server-timing"].startswith("llm;dur=")
    stored = await rows(
        db, "SELECT role, content, tokens, user_id, user_name FROM messages ORDER BY id"
    )
    assert stored == [
        ("user", "Привет, расскажи, что ты умеешь?", None, "12345", "Alice"),
        ("assistant", "Echo: Привет, расскажи, что ты умеешь?", 6, "12345", None),
    ]
    sessions = await rows(
        db, "SELECT user_id, chat_id, is_active, messages_since_summary FROM chat_sessions"
    )
    assert sessions == [("12345", "67890", True, 2)]


async def test_numeric_ids_are_accepted_as_strings(
    app_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    response = await app_client.post(
        "/v1/chat/handle", json={"user_id": 12345, "chat_id": -100500, "text": "hi"}
    )
    assert response.status_code == 200, response.text
    # A chat id other than the user's, and no chat_type: a group, whose session has no owner.
    assert await rows(db, "SELECT user_id, chat_id, chat_type FROM chat_sessions") == [
        (None, "-100500", "group")
    ]


async def test_reset_by_chat_id_closes_session_and_next_message_opens_new_one(
    app_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await app_client.post("/v1/chat/handle", json={"user_id": "1", "chat_id": "c", "text": "a"})
    response = await app_client.post("/v1/chat/reset", json={"chat_id": "c"})
    assert response.json() == {"status": "ok", "reset_sessions": 1}
    closed = await rows(db, "SELECT is_active, closed_at IS NOT NULL FROM chat_sessions")
    assert closed == [(False, True)]

    await app_client.post("/v1/chat/handle", json={"user_id": "1", "chat_id": "c", "text": "b"})
    sessions = await rows(db, "SELECT is_active FROM chat_sessions ORDER BY created_at")
    assert sessions == [(False,), (True,)]


async def test_new_session_prompt_does_not_contain_previous_session(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    await app_client.post("/v1/chat/handle", json={"user_id": "1", "chat_id": "1", "text": "old"})
    await app_client.post("/v1/chat/reset", json={"chat_id": "1"})
    await app_client.post("/v1/chat/handle", json={"user_id": "1", "chat_id": "1", "text": "new"})
    contents = [m["content"] for m in fake_llm.chat_requests[-1]["messages"]]
    assert "old" not in contents
    assert contents[-1] == "new"


async def test_reset_by_session_id_and_unknown_ids(
    app_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    await app_client.post("/v1/chat/handle", json={"user_id": "1", "chat_id": "c", "text": "a"})
    [(session_id,)] = await rows(db, "SELECT id FROM chat_sessions")
    first = await app_client.post("/v1/chat/reset", json={"session_id": str(session_id)})
    assert first.json() == {"status": "ok", "reset_sessions": 1}
    again = await app_client.post("/v1/chat/reset", json={"session_id": str(session_id)})
    assert again.json() == {"status": "ok", "reset_sessions": 0}
    unknown = await app_client.post("/v1/chat/reset", json={"session_id": str(uuid.uuid4())})
    assert unknown.json() == {"status": "ok", "reset_sessions": 0}
    unknown_chat = await app_client.post("/v1/chat/reset", json={"chat_id": "never-seen"})
    assert unknown_chat.json() == {"status": "ok", "reset_sessions": 0}


async def test_health_reports_components(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["status"] == "ok"
    assert body["llm"]["status"] == "ok"
    assert body["broker"]["status"] == "disabled"


async def test_without_llm_the_backend_starts_explains_and_keeps_the_message(
    clean_db: str, db: AsyncEngine
) -> None:
    settings = make_settings(clean_db, None, openrouter_api_key=None)
    async with running_app(settings) as client:
        health = (await client.get("/health")).json()
        assert health["status"] == "ok"
        assert health["llm"]["status"] == "not_configured"
        assert "OPENROUTER_API_KEY" in health["llm"]["detail"]
        response = await client.post(
            "/v1/chat/handle", json={"user_id": "1", "chat_id": "c", "text": "hello"}
        )
    body = assert_error(response, 503, "llm_not_configured")
    assert "OPENROUTER_API_KEY" in body["message"] and "LLM_BASE_URL" in body["message"]
    assert await rows(db, "SELECT role, content FROM messages") == [("user", "hello")]


@pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        ({}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2"}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2", "text": ""}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2", "text": " \n\t "}, 422, "validation_error"),
        ({"user_id": "", "chat_id": "2", "text": "x"}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2" * 129, "text": "x"}, 422, "validation_error"),
        ({"user_id": ["1"], "chat_id": "2", "text": "x"}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2", "text": {"a": 1}}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2", "text": "x", "extra": 1}, 422, "validation_error"),
        ({"user_id": "1", "chat_id": "2", "text": "x" * 16001}, 413, "payload_too_large"),
        ([1, 2], 422, "validation_error"),
    ],
)
async def test_bad_handle_input_is_rejected_with_error_shape_and_stores_nothing(
    app_client: httpx.AsyncClient, db: AsyncEngine, payload: object, status: int, code: str
) -> None:
    response = await app_client.post("/v1/chat/handle", json=payload)
    assert_error(response, status, code)
    assert await rows(db, "SELECT count(*) FROM messages") == [(0,)]
    assert await rows(db, "SELECT count(*) FROM chat_sessions") == [(0,)]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"chat_id": "1", "session_id": str(uuid.UUID(int=1))},
        {"session_id": "not-a-uuid"},
        {"chat_id": ""},
        {"chat_id": None},
    ],
)
async def test_bad_reset_input_is_rejected(app_client: httpx.AsyncClient, payload: object) -> None:
    assert_error(await app_client.post("/v1/chat/reset", json=payload), 422, "validation_error")


async def test_invalid_json_and_unknown_routes(app_client: httpx.AsyncClient) -> None:
    response = await app_client.post(
        "/v1/chat/handle", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")
    assert_error(await app_client.get("/v1/nope"), 404, "not_found")
    assert_error(await app_client.get("/v1/chat/handle"), 405, "method_not_allowed")


async def test_oversized_body_is_rejected_before_parsing(app_client: httpx.AsyncClient) -> None:
    big = b'{"user_id": "1", "chat_id": "2", "text": "' + b"x" * 400_000 + b'"}'
    response = await app_client.post(
        "/v1/chat/handle", content=big, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_api_key_protects_v1_but_not_health(
    clean_db: str, llm_server: FakeLLMServer
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, backend_api_key="s3cret")
    async with running_app(settings) as client:
        payload = {"user_id": "1", "chat_id": "2", "text": "x"}
        assert_error(await client.post("/v1/chat/handle", json=payload), 401, "unauthorized")
        wrong = {"Authorization": "Bearer nope"}
        assert_error(
            await client.post("/v1/chat/reset", json={"chat_id": "2"}, headers=wrong),
            401,
            "unauthorized",
        )
        ok = await client.post(
            "/v1/chat/handle", json=payload, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert (await client.get("/health")).status_code == 200


async def test_concurrent_first_messages_open_exactly_one_session(
    app_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    async def send(i: int) -> int:
        r = await app_client.post(
            "/v1/chat/handle", json={"user_id": "u", "chat_id": "new-chat", "text": f"m{i}"}
        )
        return r.status_code

    statuses = await asyncio.gather(*(send(i) for i in range(50)))
    assert statuses == [200] * 50
    assert await rows(db, "SELECT count(*) FROM chat_sessions WHERE is_active") == [(1,)]
    assert await rows(db, "SELECT count(*) FROM chat_sessions") == [(1,)]
    assert await rows(db, "SELECT role, count(*) FROM messages GROUP BY role ORDER BY role") == [
        ("assistant", 50),
        ("user", 50),
    ]
    await drain_jobs(app_client)
    # The counter equals the messages not yet covered by a summary, whatever ran concurrently.
    [(counter, pending)] = await rows(
        db,
        "SELECT s.messages_since_summary, (SELECT count(*) FROM messages m"
        " WHERE m.session_id = s.id"
        " AND m.id > coalesce((SELECT max(last_message_id) FROM conversation_summaries c"
        " WHERE c.session_id = s.id), 0)) FROM chat_sessions s",
    )
    assert counter == pending
