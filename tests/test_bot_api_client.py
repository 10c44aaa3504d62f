"""BackendClient against a scripted HTTP server: headers, typed errors, what is retried."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from llm_bot_core.bot.api_client import BackendClient, BackendError, BackendUnavailable, Done
from llm_bot_core.bot.config import BotSettings
from llm_bot_core.bot.handlers.chat import error_text
from llm_bot_core.bot.texts import t
from llm_bot_core.errors import ERROR_CODES, RETRYABLE_CODES
from tests.bot_support import free_port

pytestmark = pytest.mark.asyncio


class ScriptedBackend:
    """Answers each request with the next scripted (status, body); records the requests."""

    def __init__(self) -> None:
        self.script: list[tuple[int, Any]] = []
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.delay = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, dict(request.headers), await request.json()))
        if self.delay:
            import asyncio

            await asyncio.sleep(self.delay)
        status, body = self.script.pop(0) if self.script else (200, {"text": "ok",
                                                                      "type": "message"})
        if isinstance(body, str):
            return web.Response(status=status, text=body)
        if isinstance(body, bytes):  # a Server-Sent Events body
            return web.Response(status=status, body=body, content_type="text/event-stream")
        return web.json_response(body, status=status)


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedBackend, str]]:
    fake = ScriptedBackend()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield fake, f"http://127.0.0.1:{port}"
    await runner.cleanup()


def client_for(url: str, **overrides: Any) -> BackendClient:
    values: dict[str, Any] = {"bot_token": "1:x", "backend_url": url, "backend_retries": 3,
                              "backend_retry_backoff": 0.01, "backend_timeout": 5}
    values.update(overrides)
    return BackendClient(BotSettings(_env_file=None, **values))


def error(code: str, status: int) -> tuple[int, dict[str, Any]]:
    return status, {"type": "error", "code": code, "message": code, "request_id": "r"}


async def test_sends_the_spec_body_api_key_and_request_id(scripted) -> None:
    fake, url = scripted
    client = client_for(url, backend_api_key="s3cret")
    assert await client.handle_chat(user_id=7, chat_id=-100, text="hi", chat_type="group",
                                    user_name="Ann Lee", request_id="rid-1") == "ok"
    path, headers, body = fake.requests[0]
    assert path == "/v1/chat/handle"
    assert body == {"user_id": "7", "chat_id": "-100", "text": "hi", "chat_type": "group",
                    "user_name": "Ann Lee"}
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Request-ID"] == "rid-1"
    await client.aclose()


async def test_no_authorization_header_without_api_key(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    fake.script = [(200, {"status": "ok", "reset_sessions": 1})]
    assert await client.reset_chat(chat_id=5) == 1
    path, headers, body = fake.requests[0]
    assert (path, body) == ("/v1/chat/reset", {"chat_id": "5"})
    assert "Authorization" not in headers
    await client.aclose()


async def test_handle_retries_when_the_backend_stored_nothing(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    fake.script = [error("database_unavailable", 503), error("database_unavailable", 503)]
    assert await client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private") == "ok"
    assert len(fake.requests) == 3
    await client.aclose()


async def test_handle_does_not_repeat_a_message_the_backend_already_stored(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    fake.script = [error("llm_unavailable", 502)]
    with pytest.raises(BackendError) as caught:
        await client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private")
    assert (caught.value.status, caught.value.code) == (502, "llm_unavailable")
    assert len(fake.requests) == 1
    await client.aclose()


async def test_handle_read_timeout_is_not_repeated(scripted) -> None:
    fake, url = scripted
    fake.delay = 0.5
    client = client_for(url, backend_timeout=0.2)
    with pytest.raises(BackendUnavailable) as caught:
        await client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private")
    assert caught.value.maybe_processed and caught.value.timed_out
    assert len(fake.requests) == 1
    await client.aclose()


async def test_reset_retries_transient_failures(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    fake.script = [(502, "<html>Bad Gateway</html>"), error("database_unavailable", 503),
                   (200, {"status": "ok", "reset_sessions": 0})]
    assert await client.reset_chat(chat_id=5) == 0
    assert len(fake.requests) == 3
    await client.aclose()


@pytest.mark.parametrize("code", sorted(set(ERROR_CODES) - RETRYABLE_CODES))
async def test_only_retryable_codes_are_repeated(scripted, code: str) -> None:
    fake, url = scripted
    client = client_for(url)
    calls = (client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private"),
             client.reset_chat(chat_id=1))
    for call in calls:
        fake.requests.clear()
        fake.script = [error(code, ERROR_CODES[code].status)]
        with pytest.raises(BackendError) as caught:
            await call
        assert caught.value.code == code and not caught.value.retryable
        assert len(fake.requests) == 1
    await client.aclose()


@pytest.mark.parametrize(
    ("code", "key"),
    [("database_unavailable", "backend_unavailable"),
     ("vector_store_unavailable", "backend_unavailable"),
     ("internal_error", "error"), ("validation_error", "error"), ("session_gone", "error"),
     ("llm_unavailable", "llm_unavailable"), ("payload_too_large", "too_long")],
)
async def test_only_retryable_codes_say_temporarily_unavailable(code: str, key: str) -> None:
    exc = BackendError(ERROR_CODES[code].status, code, "m")
    assert error_text(exc, "en") == t(key, "en")
    assert (key == "backend_unavailable") == (code in RETRYABLE_CODES)


async def test_connection_refused_is_retried_then_reported_unavailable() -> None:
    client = client_for(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(BackendUnavailable) as caught:
        await client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private")
    assert not caught.value.maybe_processed
    await client.aclose()


async def test_validation_and_auth_errors_are_typed_and_not_retried(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    fake.script = [error("unauthorized", 401)]
    with pytest.raises(BackendError) as caught:
        await client.handle_chat(user_id=1, chat_id=1, text="x", chat_type="private")
    assert caught.value.code == "unauthorized"
    assert len(fake.requests) == 1
    await client.aclose()


async def collect(client: BackendClient) -> list[str | Done]:
    events = client.stream_chat(user_id=1, chat_id=2, text="x", chat_type="private")
    return [item async for item in events]


async def test_stream_yields_deltas_then_done_after_retrying_what_stored_nothing(
    scripted,
) -> None:
    fake, url = scripted
    client = client_for(url)
    events = (b'event: delta\ndata: {"text": "Hel"}\n\nevent: delta\ndata: {"text": "lo"}\n\n'
              b'event: done\ndata: {"text": "Hello", "type": "message"}\n\n')
    fake.script = [error("database_unavailable", 503), (200, events)]
    assert await collect(client) == ["Hel", "lo", Done("Hello")]
    assert [r[0] for r in fake.requests] == ["/v1/chat/stream"] * 2
    await client.aclose()


async def test_stream_failures_after_it_started_are_raised_not_repeated(scripted) -> None:
    fake, url = scripted
    client = client_for(url)
    failed = (b'event: delta\ndata: {"text": "Hel"}\n\nevent: error\ndata: {"type": "error", '
              b'"code": "llm_unavailable", "message": "gone", "request_id": "r1"}\n\n')
    cut = b'event: delta\ndata: {"text": "Hel"}\n\n'
    fake.script = [(200, failed), (200, cut), error("llm_unavailable", 502)]
    with pytest.raises(BackendError) as caught:
        await collect(client)
    assert (caught.value.code, caught.value.request_id) == ("llm_unavailable", "r1")
    with pytest.raises(BackendUnavailable) as ended:
        await collect(client)
    assert ended.value.maybe_processed
    with pytest.raises(BackendError) as refused:  # before the stream: a JSON error, as handle
        await collect(client)
    assert (refused.value.status, refused.value.code) == (502, "llm_unavailable")
    assert len(fake.requests) == 3
    await client.aclose()
