"""POST /v1/chat/stream: deltas then done, the same memory effects as handle, failures."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.bot_support import BackendServer
from tests.conftest import drain_jobs, make_settings, running_app
from tests.test_observability import sample

pytestmark = pytest.mark.asyncio

MSG = {"user_id": "u", "chat_id": "c"}


@pytest.fixture(params=["http", "openai"])
def settings(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, request: pytest.FixtureRequest
) -> Settings:
    """Both LLM clients (LLM_CLIENT) must stream the same way."""
    return make_settings(clean_db, llm_server.base_url, llm_client=request.param)


def parse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], orjson.loads(fields["data"])))
    return events


async def stream(client: httpx.AsyncClient, message: str) -> tuple[httpx.Response, list[Any]]:
    response = await client.post("/v1/chat/stream", json={**MSG, "text": message})
    return response, parse_events(response.text) if response.status_code == 200 else []


async def stored(db: AsyncEngine) -> list[tuple[str, str]]:
    async with db.connect() as conn:
        result = await conn.execute(text("SELECT role, content FROM messages ORDER BY id"))
        return [(r[0], r[1]) for r in result]


async def test_stream_sends_deltas_then_done_and_stores_exactly_the_done_text(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    fake_llm.chunk_chars, fake_llm.chunk_delay = 3, 0.01
    response, events = await stream(app_client, "tell me something")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 3
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    assert events[-1][1] == {"text": "Echo: tell me something", "type": "message"}
    assert deltas == events[-1][1]["text"]
    assert await stored(db) == [("user", "tell me something"), ("assistant", deltas)]
    request = fake_llm.chat_requests[-1]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}


async def test_streamed_answer_has_the_memory_effects_of_handle(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, summary_threshold=4)
    async with running_app(settings) as client:
        await client.post("/v1/chat/handle", json={**MSG, "text": "first"})
        _, events = await stream(client, "second")
        assert events[-1][0] == "done"
        await drain_jobs(client)
        metrics = (await client.get("/metrics")).text
    async with db.connect() as conn:
        summaries = (await conn.execute(text("SELECT count(*) FROM conversation_summaries"))).one()
    assert summaries == (1,)  # the fourth message of the session triggered the summary
    assert len(fake_llm.summary_requests) == 1
    assert sample(metrics, "llmbot_llm_tokens_total", purpose="chat", kind="completion") > 0
    assert sample(metrics, "llmbot_llm_first_token_seconds_count", purpose="chat") >= 1


@pytest.mark.parametrize("mode", ["drop", "error"])
async def test_provider_failure_mid_answer_is_an_error_event_and_no_partial_answer_is_stored(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM, mode: str
) -> None:
    fake_llm.chunk_chars = 4
    fake_llm.fail_stream_next(2, mode)
    response, events = await stream(app_client, "first question")

    assert response.status_code == 200
    assert [name for name, _ in events] == ["delta", "error"]
    assert events[0][1]["text"] == "Echo: fi"  # the two chunks sent before the failure
    error = events[-1][1]
    assert error["type"] == "error" and error["code"] == "llm_unavailable"
    assert error["request_id"] == response.headers["x-request-id"]
    assert await stored(db) == [("user", "first question")]

    _, events = await stream(app_client, "second")
    assert events[-1] == ("done", {"text": "Echo: second", "type": "message"})
    # The unanswered message is kept, in one user turn with the next (as after a failed handle).
    assert fake_llm.chat_requests[-1]["messages"][1:] == [
        {"role": "user", "content": "first question\n\nsecond"}
    ]


@pytest.mark.parametrize(
    ("provider_status", "code"), [(500, "llm_unavailable"), (400, "llm_bad_response")]
)
async def test_failure_before_the_first_token_is_an_ordinary_json_error(
    app_client: httpx.AsyncClient, db: AsyncEngine, fake_llm: FakeLLM, provider_status: int,
    code: str,
) -> None:  # fmt: skip
    fake_llm.fail_next(1, status=provider_status)
    response = await app_client.post("/v1/chat/stream", json={**MSG, "text": "hello"})
    assert response.status_code == 502
    assert response.headers["content-type"] == "application/json"
    assert response.json()["code"] == code and response.json()["type"] == "error"
    assert await stored(db) == [("user", "hello")]


async def test_stream_validates_its_body_like_handle(
    app_client: httpx.AsyncClient, db: AsyncEngine
) -> None:
    too_long = await app_client.post("/v1/chat/stream", json={**MSG, "text": "x" * 16001})
    blank = await app_client.post("/v1/chat/stream", json={**MSG, "text": "   "})
    extra = await app_client.post("/v1/chat/stream", json={**MSG, "text": "hi", "x": 1})
    assert (too_long.status_code, too_long.json()["code"]) == (413, "payload_too_large")
    assert (blank.status_code, blank.json()["code"]) == (422, "validation_error")
    assert (extra.status_code, extra.json()["code"]) == (422, "validation_error")
    assert await stored(db) == []
    # From the app, not GET /openapi.json: that route has no template label in /metrics.
    openapi = app_client.app.openapi()  # type: ignore[attr-defined]
    documented = openapi["paths"]["/v1/chat/stream"]
    assert "text/event-stream" in documented["post"]["responses"]["200"]["content"]


async def test_a_broken_stream_is_retried_before_its_first_token_only(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, llm_max_retries=1)
    fake_llm.fail_stream_next(0, "drop")  # dropped before any text: tried again
    async with running_app(settings) as client:
        _, events = await stream(client, "one")
        assert events[-1] == ("done", {"text": "Echo: one", "type": "message"})
        assert len(fake_llm.chat_requests) == 2

        fake_llm.fail_stream_next(1, "drop")  # dropped after text was sent: not repeated
        _, events = await stream(client, "two")
        assert events[-1][1]["code"] == "llm_unavailable"
        assert len(fake_llm.chat_requests) == 3
    assert await stored(db) == [("user", "one"), ("assistant", "Echo: one"), ("user", "two")]


async def test_deltas_done_and_stored_text_agree_when_the_answer_is_stripped_and_cut(
    clean_db: str, db: AsyncEngine, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, max_reply_chars=100)
    answer = "  \n  " + " ".join(f"word{i}  \n" for i in range(60)) + "  \n"
    fake_llm.reply = lambda messages: answer
    fake_llm.chunk_chars, fake_llm.chunk_delay = 5, 0.002
    async with running_app(settings) as client:
        handled = (await client.post("/v1/chat/handle", json={**MSG, "text": "a"})).json()
        _, events = await stream(client, "b")
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    done = events[-1][1]["text"]
    assert deltas == done == handled["text"] == answer.strip()[:100]
    assert await stored(db) == [("user", "a"), ("assistant", done), ("user", "b"),
                                ("assistant", done)]  # fmt: skip


async def test_client_gone_mid_stream_the_answer_is_completed_and_stored(
    settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    fake_llm.chunk_chars, fake_llm.chunk_delay = 2, 0.05
    with BackendServer(settings) as backend:
        async with httpx.AsyncClient(base_url=backend.url) as client:
            async with client.stream(
                "POST", "/v1/chat/stream", json={**MSG, "text": "a long enough question"}
            ) as response:
                async for chunk in response.aiter_text():
                    assert chunk.startswith("event: delta")
                    break  # the client hangs up after the first delta
        # The answer takes about a second to generate; it is stored once complete.
        for _ in range(100):
            if len(await stored(db)) == 2:
                break
            await asyncio.sleep(0.05)
    assert await stored(db) == [
        ("user", "a long enough question"),
        ("assistant", "Echo: a long enough question"),
    ]


async def test_fallback_model_answers_when_the_main_one_is_unavailable(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(
        clean_db, llm_server.base_url, llm_fallback_models="fb-one, fb-two"
    )
    async with running_app(settings) as client:
        fake_llm.fail_next(1, status=503)
        handled = await client.post("/v1/chat/handle", json={**MSG, "text": "plain"})
        fake_llm.fail_next(2, status=503)
        _, events = await stream(client, "streamed")
        fake_llm.fail_next(1, status=400)  # a bad request is not unavailability: no fallback
        refused = await client.post("/v1/chat/handle", json={**MSG, "text": "bad"})
        metrics = (await client.get("/metrics")).text

    assert handled.json()["text"] == "Echo: plain"
    assert events[-1] == ("done", {"text": "Echo: streamed", "type": "message"})
    assert refused.json()["code"] == "llm_bad_response"
    assert [r["model"] for r in fake_llm.chat_requests] == [
        "test-model", "fb-one", "test-model", "fb-one", "fb-two", "test-model"]  # fmt: skip
    assert sample(metrics, "llmbot_llm_answers_total", purpose="chat", model="fb-one") >= 1
    assert sample(metrics, "llmbot_llm_answers_total", purpose="chat", model="fb-two") >= 1


async def test_no_fallback_once_the_stream_has_sent_text(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, llm_fallback_models="fb-one")
    fake_llm.fail_stream_next(1, "drop")
    async with running_app(settings) as client:
        _, events = await stream(client, "hello")
    assert events[-1][0] == "error"
    assert [r["model"] for r in fake_llm.chat_requests] == ["test-model"]
