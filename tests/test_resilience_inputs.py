"""Bad input: a schemathesis fuzz run of the whole API with zero 5xx, and huge bodies refused
before they are read whole (declared, chunked, and on a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable

from llm_bot_core.api.app import create_app
from llm_bot_core.api.limits import chat_body_limit
from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM
from llm_bot_core.testing.fake_transcription import FakeTranscription, FakeTranscriptionServer
from tests.voice_support import (  # noqa: F401 - fixtures
    fake_transcription_fixture,
    transcription_server_fixture,
)

EXAMPLES_PER_OPERATION = 60


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_fuzzed_requests_to_every_operation_never_get_a_server_error(
    settings: Settings,
    fake_llm: FakeLLM,
    transcription_server: FakeTranscriptionServer,
    fake_transcription: FakeTranscription,
) -> None:
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core.result import Ok

    # Voice configured (to the fake), as the LLM is: a 503 "not configured" is no input's fault.
    speech = settings.transcription.model_copy(
        update={"transcription_base_url": transcription_server.base_url}
    )
    app = create_app(settings.model_copy(update={"transcription": speech}))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    seen: dict[str, set[int]] = {}

    def fuzz(operation: Any, mode: GenerationMode) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @hypothesis_settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call()
            seen.setdefault(operation.label, set()).add(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400 and operation.path.startswith("/v1/"):
                assert response.json()["type"] == "error", response.text

        try:
            check()
        except Unsatisfiable:
            # GET endpoints without parameters have no way to be called "wrongly".
            assert mode == GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the app's own schema must parse
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)

    # The run reached the handlers, not only the validation layer.
    assert 200 in seen["POST /v1/chat/handle"]
    assert 200 in seen["POST /v1/chat/reset"]
    assert {422} & seen["POST /v1/chat/handle"]


async def _chunks(total: int, size: int, sent: list[int]) -> AsyncIterator[bytes]:
    yield b'{"user_id": "1", "chat_id": "2", "text": "'
    while sent[0] < total:
        sent[0] += size
        yield b"x" * size
    yield b'"}'


@pytest.mark.parametrize("path", ["/v1/chat/handle", "/v1/chat/reset"])
async def test_streamed_body_without_length_is_cut_off_at_the_limit(
    app_client: httpx.AsyncClient, settings: Settings, path: str
) -> None:
    sent = [0]
    response = await app_client.post(
        path,
        content=_chunks(50 * 1024 * 1024, 64 * 1024, sent),
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    # Refused after the limit, not after 50 MB; the chat endpoints' is larger: they take
    # pictures (MAX_IMAGES x IMAGE_MAX_BYTES).
    limit = chat_body_limit(settings) if path == "/v1/chat/handle" else None
    assert sent[0] <= (limit or settings.server.max_body_bytes) + 2 * 64 * 1024


@contextlib.asynccontextmanager
async def real_server(settings: Settings) -> AsyncIterator[int]:
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_config=None, lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_huge_upload_over_a_real_socket_is_refused_without_reading_it(
    settings: Settings, declared: bool
) -> None:
    total = 64 * 1024 * 1024
    async with real_server(settings) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        framing = f"Content-Length: {total}" if declared else "Transfer-Encoding: chunked"
        writer.write(
            f"POST /v1/chat/handle HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n".encode()
        )
        chunk = b"x" * (256 * 1024)
        written = 0
        # Read while writing, like a real client: the answer comes before the upload ends.
        answer = asyncio.create_task(reader.readline())
        with contextlib.suppress(ConnectionError, TimeoutError):
            while written < total and not answer.done():
                writer.write(chunk if declared else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.wait_for(writer.drain(), 5)
                written += len(chunk)
        status_line = await asyncio.wait_for(answer, 5)
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 413"), status_line
    # The server answered and hung up long before 64 MB crossed the socket.
    assert written < total // 2
