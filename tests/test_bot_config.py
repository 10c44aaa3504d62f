"""Bot settings from the environment, and the `bot` / `run` entry points."""

from __future__ import annotations

import pytest

from llm_bot_core import cli
from llm_bot_core.bot.config import BotConfigError, load_bot_settings


def test_missing_bot_token_is_named_in_the_error(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("BOT_TOKEN", raising=False)
    with pytest.raises(BotConfigError, match="BOT_TOKEN is not set"):
        load_bot_settings()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("ALLOWED_USER_IDS", "1, 2 3")
    monkeypatch.setenv("BACKEND_URL", "http://backend:8080/")
    monkeypatch.setenv("WEBHOOK_URL", "https://bot.example.com/telegram/hook")
    settings = load_bot_settings()
    assert settings.bot_token.get_secret_value() == "123:abc"
    assert settings.allowed_user_ids == frozenset({1, 2, 3})
    assert settings.allowed_chat_ids == frozenset()
    assert settings.backend_url == "http://backend:8080"
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert settings.webhook_path == "/telegram/hook"
    assert settings.access_restricted


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("RATE_LIMIT_MESSAGES", "-1")
    with pytest.raises(BotConfigError, match="RATE_LIMIT_MESSAGES"):
        load_bot_settings()


def test_bot_command_without_token_exits_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BOT_TOKEN", raising=False)
    assert cli.main(["bot"]) == 2
    assert "BOT_TOKEN is not set" in capsys.readouterr().err


def test_run_starts_the_bot_beside_the_backend_only_with_a_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    monkeypatch.chdir(tmp_path)
    started: list[tuple[list[str], dict[str, str]]] = []

    class FakePopen:
        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            started.append((argv, env))

        def terminate(self) -> None: ...

        def wait(self, timeout: float) -> int:
            return 0

    monkeypatch.setattr(cli.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(cli, "cmd_serve", lambda settings, args: 0)
    monkeypatch.delenv("BOT_TOKEN", raising=False)
    assert cli.main(["run"]) == 0
    assert started == []

    monkeypatch.setenv("BOT_TOKEN", "123:abc")
    monkeypatch.setenv("BACKEND_URL", "http://backend:8080")
    assert cli.main(["run", "--host", "0.0.0.0", "--port", "9001"]) == 0
    argv, env = started[0]
    assert argv[-2:] == ["llm_bot_core.cli", "bot"]
    assert env["BACKEND_URL"] == "http://127.0.0.1:9001"
