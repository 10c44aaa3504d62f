"""`llm-bot-core serve` as `make run` starts it: embedded PostgreSQL, migrations, a real server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from llm_bot_core.cli import build_parser
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return response.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def test_serve_on_embedded_defaults_answers_through_an_openai_compatible_server(
    llm_server: FakeLLMServer, fake_llm: FakeLLM
) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="llmbot-run-"))
    data_dir.chmod(0o755)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "OPENROUTER_API_KEY")}
    env.update(DATA_DIR=str(data_dir), PORT=str(port), LLM_BASE_URL=llm_server.base_url,
               RAG_ENABLED="false")
    proc = subprocess.Popen([sys.executable, "-m", "llm_bot_core.cli", "run"], env=env,
                            cwd=data_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = wait_healthy(f"http://127.0.0.1:{port}/health", proc)
        assert health["status"] == "ok" and health["llm"]["status"] == "ok"
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/handle", timeout=10,
                              json={"user_id": "1", "chat_id": "2", "text": "hello"})
        assert response.json() == {"text": "Echo: hello", "type": "message"}
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0].decode()
    assert (data_dir / "postgres" / "PG_VERSION").exists()  # state kept under DATA_DIR
    # SIGTERM shuts the backend down gracefully and stops the embedded server with it.
    assert proc.returncode in (0, 143)
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert "backend listening on" in output


def test_every_documented_subcommand_exists() -> None:
    parser = build_parser()
    assert parser._subparsers is not None
    subcommands = parser._subparsers._group_actions[0].choices
    assert isinstance(subcommands, dict)
    assert {"serve", "worker", "migrate", "run"} <= set(subcommands)


@pytest.mark.parametrize("value", ["not-a-number", "-5"])
def test_bad_setting_is_reported_by_name(value: str) -> None:
    result = subprocess.run([sys.executable, "-m", "llm_bot_core.cli", "migrate"],
                            env={**os.environ, "SHORT_HISTORY_LIMIT": value},
                            capture_output=True, text=True, timeout=60,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 2
    assert "short_history_limit" in result.stderr.lower()
