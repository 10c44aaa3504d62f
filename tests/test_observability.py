"""/metrics, the bare liveness endpoint, and the bot's request id in responses and JSON logs."""

from __future__ import annotations

import io
import logging

import httpx
import orjson
import pytest

from llm_bot_core.logs import setup_logging
from llm_bot_core.testing.fake_llm import FakeLLM
from tests.conftest import drain_jobs

pytestmark = pytest.mark.asyncio


def sample(exposition: str, name: str, **labels: str) -> float:
    """The value of one series in Prometheus text format (0 when absent)."""
    for line in exposition.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return 0.0


async def test_metrics_count_requests_by_route_llm_calls_tokens_and_pool(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    before = (await app_client.get("/metrics")).text
    for n in range(3):
        await app_client.post(
            "/v1/chat/handle", json={"user_id": "u", "chat_id": "c", "text": f"{n}"}
        )
    await app_client.get("/v1/no/such/route")
    await drain_jobs(app_client)
    response = await app_client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    handle = {"method": "POST", "route": "/v1/chat/handle", "status": "200"}
    assert grew("llmbot_http_request_duration_seconds_count", **handle) == 3
    # Unknown paths share one label instead of one series per path.
    assert grew("llmbot_http_request_duration_seconds_count", route="unmatched") == 1
    assert grew("llmbot_llm_request_duration_seconds_count", purpose="chat", outcome="ok") == 3
    assert grew("llmbot_llm_tokens_total", purpose="chat", kind="completion") > 0
    assert sample(after, "llmbot_db_pool_open") >= 1
    assert sample(after, "llmbot_db_pool_checked_out") == 0  # nothing held between requests


async def test_llm_failures_are_counted_by_error_code(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    before = (await app_client.get("/metrics")).text
    fake_llm.fail_next(1, status=500)
    await app_client.post("/v1/chat/handle", json={"user_id": "u", "chat_id": "c", "text": "x"})
    after = (await app_client.get("/metrics")).text
    labels = {"purpose": "chat", "outcome": "llm_unavailable"}
    assert (
        sample(after, "llmbot_llm_request_duration_seconds_count", **labels)
        - sample(before, "llmbot_llm_request_duration_seconds_count", **labels)
        == 1
    )


async def test_liveness_endpoint_touches_nothing(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/health/live")
    assert response.status_code == 200 and response.text == "ok"


async def test_request_id_from_the_bot_is_in_the_response_the_error_and_every_log_line(
    app_client: httpx.AsyncClient, fake_llm: FakeLLM
) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    setup_logging("INFO", "json")
    root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
    try:
        fake_llm.fail_next(1, status=503)  # makes the backend log a warning for this request
        request_id = "0f3c2a9e8b7d4c6a9e1f2b3c4d5e6f70"
        response = await app_client.post(
            "/v1/chat/handle",
            json={"user_id": "u", "chat_id": "c", "text": "hi"},
            headers={"X-Request-ID": request_id},
        )
        ok = await app_client.post(
            "/v1/chat/handle",
            json={"user_id": "u", "chat_id": "c", "text": "again"},
            headers={"X-Request-ID": "not a valid id"},
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    assert response.status_code == 502
    assert response.headers["X-Request-ID"] == request_id
    assert response.json()["request_id"] == request_id
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    mine = [line for line in lines if line.get("request_id") == request_id]
    assert any("llm_unavailable" in line["message"] for line in mine), lines
    # A malformed id from outside is replaced by a fresh one rather than echoed into logs.
    assert ok.headers["X-Request-ID"] != "not a valid id"
    assert len(ok.headers["X-Request-ID"]) == 32
