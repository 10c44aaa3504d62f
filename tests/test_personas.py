"""Personas: operators' system prompts reach the next answer without a restart, in every process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import Settings
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings, running_app
from tests.test_cli import free_port, wait_healthy

SEED = "You are the seeded assistant."


async def _sql(db: AsyncEngine, sql: str, **params: object) -> list[tuple]:
    async with db.begin() as conn:
        result = await conn.execute(text(sql), params)
        return [tuple(r) for r in result] if result.returns_rows else []


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> float:
    """Seconds until `check` holds; fails after `timeout`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def _system(request: dict) -> str:
    messages = request["messages"]
    assert messages[0]["role"] == "system"
    return str(messages[0]["content"])


@pytest.fixture
def persona_settings(clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM) -> Settings:
    # A long periodic reload: only the notification can explain a change seen within seconds.
    return make_settings(
        clean_db, llm_server.base_url, system_prompt=SEED, persona_reload_seconds=600
    )


async def test_system_prompt_seeds_the_one_default_persona(
    persona_settings: Settings, db: AsyncEngine
) -> None:
    async with running_app(persona_settings) as client:
        listed = (await client.get("/v1/personas")).json()["personas"]
    async with running_app(persona_settings):  # a second start seeds nothing more
        pass
    rows = await _sql(db, "SELECT name, instruction, is_default, selectable FROM personas")
    assert rows == [("Default", SEED, True, True)]
    assert listed == [{"id": 1, "name": "Default", "is_default": True}]


async def test_a_persona_edited_in_sql_is_the_next_system_message_without_a_restart(
    persona_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async with running_app(persona_settings) as client:
        message = {"user_id": "u1", "chat_id": "u1", "text": "hello"}
        assert (await client.post("/v1/chat/handle", json=message)).status_code == 200
        assert _system(fake_llm.chat_requests[-1]).startswith(SEED)

        await _sql(db, "UPDATE personas SET instruction = 'You are a pirate.' WHERE is_default")
        cache = client.app.state.services.personas  # type: ignore[attr-defined]

        async def seen() -> bool:
            return bool(cache.default().instruction == "You are a pirate.")

        await _eventually(seen, timeout=3)
        assert (await client.post("/v1/chat/handle", json=message)).status_code == 200
        system = _system(fake_llm.chat_requests[-1])
        assert system.startswith("You are a pirate.")
        assert SEED not in system


async def test_a_chat_chooses_a_selectable_persona_and_its_model_and_temperature_are_used(
    persona_settings: Settings, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    await _sql(
        db,
        "INSERT INTO personas (name, instruction, model, temperature, selectable) VALUES "
        "('Teacher', 'You are a patient teacher.', 'teacher-model', 0.2, true), "
        "('Hidden', 'Operators only.', NULL, NULL, false)",
    )
    async with running_app(persona_settings) as client:
        listed = (await client.get("/v1/personas")).json()["personas"]
        # Operators' personas were there first; the default is seeded beside them.
        assert [p["name"] for p in listed] == ["Teacher", "Default"]
        teacher = next(p for p in listed if p["name"] == "Teacher")
        hidden = (await _sql(db, "SELECT id FROM personas WHERE name = 'Hidden'"))[0][0]

        before = (await client.get("/v1/chats/c1/persona")).json()
        assert before["chosen"] is False and before["persona"]["name"] == "Default"

        missing = await client.put("/v1/chats/c1/persona", json={"persona_id": 9999})
        assert missing.status_code == 404
        assert missing.json()["code"] == "persona_not_found"
        assert missing.json()["message"]
        not_offered = await client.put("/v1/chats/c1/persona", json={"persona_id": hidden})
        assert not_offered.status_code == 404
        assert not_offered.json()["code"] == "persona_not_found"

        chosen = await client.put("/v1/chats/c1/persona", json={"persona_id": teacher["id"]})
        assert chosen.status_code == 200, chosen.text
        assert chosen.json() == {"chat_id": "c1", "persona": teacher, "chosen": True}
        assert (await client.get("/v1/chats/c1/persona")).json()["chosen"] is True

        await client.post("/v1/chat/handle", json={"user_id": "u", "chat_id": "c1", "text": "q"})
        request = fake_llm.chat_requests[-1]
        assert _system(request).startswith("You are a patient teacher.")
        assert request["model"] == "teacher-model"
        assert request["temperature"] == 0.2

        # Another chat still has the default, with the configured model.
        await client.post("/v1/chat/handle", json={"user_id": "v", "chat_id": "c2", "text": "q"})
        request = fake_llm.chat_requests[-1]
        assert _system(request).startswith(SEED)
        assert request["model"] == "test-model"
        assert "temperature" not in request

        # The operator deletes the persona: the chat falls back to the default.
        await _sql(db, "DELETE FROM personas WHERE name = 'Teacher'")
        cache = client.app.state.services.personas  # type: ignore[attr-defined]

        async def gone() -> bool:
            return all(p.name != "Teacher" for p in cache.selectable())

        await _eventually(gone, timeout=3)
        await client.post("/v1/chat/handle", json={"user_id": "u", "chat_id": "c1", "text": "q"})
        assert _system(fake_llm.chat_requests[-1]).startswith(SEED)


async def test_exactly_one_default_is_kept_by_the_database(
    persona_settings: Settings, db: AsyncEngine
) -> None:
    async with running_app(persona_settings):
        pass
    await _sql(db, "INSERT INTO personas (name, instruction, is_default) VALUES ('B', 'b', true)")
    assert await _sql(db, "SELECT name FROM personas WHERE is_default") == [("B",)]
    with pytest.raises(DBAPIError, match="always the default"):
        await _sql(db, "UPDATE personas SET is_default = false WHERE name = 'B'")
    with pytest.raises(DBAPIError, match="cannot be deleted"):
        await _sql(db, "DELETE FROM personas WHERE name = 'B'")
    await _sql(db, "UPDATE personas SET is_default = true WHERE name = 'Default'")
    assert await _sql(db, "SELECT name FROM personas WHERE is_default") == [("Default",)]
    await _sql(db, "DELETE FROM personas WHERE name = 'B'")
    with pytest.raises(DBAPIError, match="temperature_range"):
        await _sql(db, "INSERT INTO personas (name, instruction, temperature) VALUES ('C', 'c', 3)")


# This test database's persona listener (the machine's server holds other test databases too).
LISTENER = "query LIKE 'LISTEN%personas_changed%' AND datname = current_database()"


async def test_the_listener_reconnects_after_its_connection_is_killed(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, db: AsyncEngine
) -> None:
    settings = make_settings(clean_db, llm_server.base_url, persona_reload_seconds=1)
    async with running_app(settings) as client:
        cache = client.app.state.services.personas  # type: ignore[attr-defined]

        async def listening() -> bool:
            rows = await _sql(db, f"SELECT count(*) FROM pg_stat_activity WHERE {LISTENER}")
            return bool(rows[0][0] == 1)

        # The listener connects on its own connection in the background: wait until it listens.
        await _eventually(listening, timeout=10)
        killed = await _sql(
            db, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {LISTENER}"
        )
        assert killed == [(True,)]
        await _sql(db, "UPDATE personas SET instruction = 'After the outage.' WHERE is_default")

        async def seen() -> bool:
            return bool(cache.default().instruction == "After the outage.")

        await _eventually(seen, timeout=10)
        await _eventually(listening, timeout=10)


async def test_erasing_a_user_forgets_their_private_chats_persona_but_not_a_groups(
    persona_settings: Settings, db: AsyncEngine
) -> None:
    await _sql(db, "INSERT INTO personas (name, instruction) VALUES ('T', 't')")
    async with running_app(persona_settings) as client:
        teacher = next(
            p["id"] for p in (await client.get("/v1/personas")).json()["personas"]
            if p["name"] == "T"
        )
        for chat in ("42", "-100"):
            message = {"user_id": "42", "chat_id": chat, "text": "x"}
            await client.post("/v1/chat/handle", json=message)
            await client.put(f"/v1/chats/{chat}/persona", json={"persona_id": teacher})
        assert (await client.delete("/v1/memory/users/42")).status_code == 200
    assert await _sql(db, "SELECT chat_id FROM chat_settings") == [("-100",)]


# --- a running backend with two worker processes ---------------------------------------------


@pytest.fixture
def two_workers(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> Iterator[str]:
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="llmbot-personas-"))
    env = {k: v for k, v in os.environ.items() if k not in ("OPENROUTER_API_KEY",)}
    env.update(
        DATABASE_URL=clean_db,
        DATA_DIR=str(log_dir),
        PORT=str(port),
        LLM_BASE_URL=llm_server.base_url,
        LLM_MAX_RETRIES="0",
        RAG_ENABLED="false",
        SYSTEM_PROMPT=SEED,
        PERSONA_RELOAD_SECONDS="600",
    )
    log = (log_dir / "backend.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_bot_core.cli", "serve", "--workers", "2"],
        env=env, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


async def test_two_worker_processes_both_answer_with_the_edited_persona_within_seconds(
    two_workers: str, db: AsyncEngine, fake_llm: FakeLLM
) -> None:
    async def listeners() -> bool:
        rows = await _sql(db, f"SELECT count(*) FROM pg_stat_activity WHERE {LISTENER}")
        return bool(rows[0][0] == 2)

    await _eventually(listeners, timeout=30)  # each worker process listens on its own

    async with httpx.AsyncClient(base_url=two_workers, timeout=30) as client:

        async def ask(n: int) -> None:
            body = {"user_id": f"u{n}", "chat_id": f"u{n}", "text": "hi"}
            response = await client.post("/v1/chat/handle", json=body)
            assert response.status_code == 200, response.text

        await asyncio.gather(*(ask(n) for n in range(8)))
        assert all(_system(r).startswith(SEED) for r in fake_llm.chat_requests)

        await _sql(
            db, "UPDATE personas SET instruction = 'You speak like a pirate.' WHERE is_default"
        )
        changed_at = time.monotonic()
        fake_llm.requests.clear()
        await asyncio.sleep(1.0)  # "within seconds": the bound this test holds the backend to
        # Many concurrent requests so that both processes answer some of them.
        await asyncio.gather(*(ask(n) for n in range(24)))
        elapsed = time.monotonic() - changed_at

    systems = [_system(r) for r in fake_llm.chat_requests]
    assert len(systems) == 24
    assert all(s.startswith("You speak like a pirate.") for s in systems), systems
    assert elapsed < 10
