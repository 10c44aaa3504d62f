"""Errors mapped by cause, with real conditions: a refused connection is a 503, a value the
database refuses is a 422, a broken schema or a violated constraint is a 500 with the request
id, and every code comes from the one table (llm_bot_core.errors)."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.api.app import create_app
from llm_bot_core.config import Settings
from llm_bot_core.errors import ERROR_CODES
from llm_bot_core.logs import setup_logging
from llm_bot_core.testing.fake_llm import FakeLLMServer
from tests.bot_support import free_port
from tests.conftest import _admin, make_settings, running_app
from tests.test_api import assert_error, rows

pytestmark = pytest.mark.asyncio

REQUEST_ID = "5b0f3c2a9e8b7d4c6a9e1f2b3c4d5e6f"


@contextmanager
def json_logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "json")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        yield stream
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def lines_of(stream: io.StringIO, request_id: str) -> list[dict]:
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("request_id") == request_id]


async def test_refused_connection_is_database_unavailable(llm_server: FakeLLMServer) -> None:
    closed = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/postgres"
    async with running_app(make_settings(closed, llm_server.base_url)) as client:
        handle = await client.post(
            "/v1/chat/handle",
            json={"user_id": "u", "chat_id": "c", "text": "hi"},
            headers={"X-Request-ID": REQUEST_ID},
        )
        erase = await client.delete("/v1/memory/users/u")
    body = assert_error(handle, 503, "database_unavailable")
    assert body["request_id"] == REQUEST_ID
    assert_error(erase, 503, "database_unavailable")


async def test_nul_byte_in_a_path_id_is_the_clients_error_and_the_database_stays_usable(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.delete("/v1/memory/users/%00")
    body = assert_error(response, 422, "validation_error")
    assert "0x00" in body["message"]  # PostgreSQL's reason, not a guess
    message = {"user_id": "u", "chat_id": "c", "chat_type": "private", "text": "x"}
    ok = await app_client.post("/v1/chat/handle", json=message)
    assert ok.status_code == 200
    assert (await app_client.delete("/v1/memory/users/u")).json()["deleted_sessions"] == 1


@pytest.mark.parametrize(
    ("break_sql", "repair_sql"),
    [
        (  # an integrity error: a constraint the message violates
            "ALTER TABLE messages ADD CONSTRAINT test_no_boom CHECK (content <> 'boom')",
            "ALTER TABLE messages DROP CONSTRAINT IF EXISTS test_no_boom",
        ),
        (  # a programming error: the request's statement names a table that is gone
            "ALTER TABLE conversation_summaries RENAME TO test_renamed_summaries",
            "ALTER TABLE IF EXISTS test_renamed_summaries RENAME TO conversation_summaries",
        ),
    ],
    ids=["check-violation", "missing-table"],
)
async def test_database_bug_is_internal_error_with_request_id_in_body_and_log(
    settings: Settings, db: AsyncEngine, break_sql: str, repair_sql: str
) -> None:
    url = str(settings.storage.database_url)
    async with running_app(settings) as client:
        await _admin(url, break_sql)
        try:
            with json_logs() as stream:
                response = await client.post(
                    "/v1/chat/handle",
                    json={"user_id": "u", "chat_id": "c", "text": "boom"},
                    headers={"X-Request-ID": REQUEST_ID},
                )
        finally:
            await _admin(url, repair_sql)
        body = assert_error(response, 500, "internal_error")
        assert body["request_id"] == REQUEST_ID
        assert response.headers["X-Request-ID"] == REQUEST_ID
        logged = lines_of(stream, REQUEST_ID)
        assert any(line["level"] == "ERROR" for line in logged), stream.getvalue()
        # A bug is not an outage: the pool's connections are fine and the next request works.
        again = await client.post(
            "/v1/chat/handle", json={"user_id": "u", "chat_id": "c", "text": "fine"}
        )
    assert again.status_code == 200, again.text
    assert ("fine",) in await rows(db, "SELECT content FROM messages")


@pytest.mark.parametrize("depth", [5_000, 100_000])
async def test_deeply_nested_json_is_invalid_json(
    app_client: httpx.AsyncClient, depth: int
) -> None:
    body = b'{"user_id": "1", "chat_id": "2", "text": ' + b"[" * depth + b"]" * depth + b"}"
    response = await app_client.post(
        "/v1/chat/handle", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_json")


async def test_body_limit_answer_has_the_request_id(app_client: httpx.AsyncClient) -> None:
    big = b'{"user_id": "1", "chat_id": "2", "text": "' + b"x" * 400_000 + b'"}'
    response = await app_client.post(
        "/v1/chat/handle",
        content=big,
        headers={"content-type": "application/json", "X-Request-ID": REQUEST_ID},
    )
    body = assert_error(response, 413, "payload_too_large")
    assert body["request_id"] == REQUEST_ID


async def test_openapi_responses_come_from_the_error_table(settings: Settings) -> None:
    paths = create_app(settings).openapi()["paths"]
    for path, method in [("/v1/chat/handle", "post"), ("/v1/memory/users/{user_id}", "delete")]:
        responses = paths[path][method]["responses"]
        documented = {
            code.strip(): int(status)
            for status, answer in responses.items()
            if status[0] in "45"
            for code in answer["description"].split(",")
        }
        documented.pop("Validation Error", None)  # FastAPI's own 422 entry, same status
        assert documented, responses
        for code, status in documented.items():
            assert ERROR_CODES[code].status == status, (path, code)
    handle = paths["/v1/chat/handle"]["post"]["responses"]
    assert "database_unavailable" in handle["503"]["description"]
    assert "internal_error" in handle["500"]["description"]
