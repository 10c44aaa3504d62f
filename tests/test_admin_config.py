"""How `llm-bot-core admin` derives Directus's environment from the backend's settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_bot_core.admin.install import DirectusInstall
from llm_bot_core.admin.run import directus_config
from llm_bot_core.admin.server import database_env, directus_env, load_or_create_secrets
from llm_bot_core.config import Settings


def test_embedded_postgres_socket_directory_becomes_db_host() -> None:
    env = database_env("postgresql+asyncpg://postgres:@/postgres?host=/tmp/pg-run")
    assert env == {"DB_CLIENT": "pg", "DB_HOST": "/tmp/pg-run", "DB_PORT": "5432",
                   "DB_DATABASE": "postgres", "DB_USER": "postgres"}


def test_tcp_url_with_password_and_ssl() -> None:
    env = database_env("postgres://bot:p%40ss@db.internal:6543/llm?sslmode=require")
    assert env["DB_HOST"] == "db.internal"
    assert env["DB_PORT"] == "6543"
    assert env["DB_DATABASE"] == "llm"
    assert env["DB_USER"] == "bot"
    assert env["DB_PASSWORD"] == "p@ss"
    assert env["DB_SSL"] == "true"


def test_generated_secrets_survive_restarts_and_are_private(tmp_path: Path) -> None:
    first = load_or_create_secrets(tmp_path / "directus")
    assert load_or_create_secrets(tmp_path / "directus") == first
    assert os.stat(tmp_path / "directus" / "secrets.json").st_mode & 0o077 == 0


def test_directus_gets_our_port_not_the_backends_and_none_of_our_generic_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "8080")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("REDIS", "redis://elsewhere")
    settings = Settings(_env_file=None, data_dir=tmp_path, directus_port=9055,
                        admin_email="ops@example.com", admin_password="from-env")
    config = directus_config(settings, "postgresql+asyncpg://u:p@127.0.0.1:5432/db")
    install = DirectusInstall(root=tmp_path, node=tmp_path / "bin" / "node",
                              cli=tmp_path / "cli.js", version="12.4.0")
    env = directus_env(config, install)
    assert env["PORT"] == "9055"
    assert env["PUBLIC_URL"] == "http://127.0.0.1:9055"
    assert env["ADMIN_EMAIL"] == "ops@example.com"
    assert env["ADMIN_PASSWORD"] == "from-env"
    assert env["LOG_LEVEL"] == "info"
    assert env["TELEMETRY"] == "false"
    assert "REDIS" not in env
    assert env["PATH"].startswith(str(tmp_path / "bin"))
    assert env["KEY"] and env["SECRET"] and env["KEY"] != env["SECRET"]


def test_nothing_is_written_under_data_dir_when_every_secret_is_given(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, admin_password="a",
                        directus_key="k", directus_secret="s")
    config = directus_config(settings, "postgresql+asyncpg://u:p@db:5432/db")
    assert (config.admin_password, config.key, config.secret) == ("a", "k", "s")
    assert not (tmp_path / "directus").exists()
