"""The backend's settings: flat variable names (the spec's) routed into groups by area."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

from llm_bot_core.config import (
    ConfigError,
    LLMSettings,
    Settings,
    load_settings,
    setting_fields,
)

FIELDS = list(setting_fields())


def sample(field: FieldInfo) -> tuple[str, object]:
    """A valid non-default value: (as the environment spells it, as the field holds it)."""
    annotation: Any = field.annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    default = field.get_default(call_default_factory=True)
    if field.examples:  # a validated value (a time zone) has its own valid sample
        return str(field.examples[0]), field.examples[0]
    if typing.get_origin(annotation) is list:  # comma-separated in the environment
        return "first, second", ["first", "second"]
    if typing.get_origin(annotation) is Literal:
        choice = next(c for c in typing.get_args(annotation) if c != default)
        return str(choice), choice
    if annotation is bool:
        return ("false", False) if default is True else ("true", True)
    if annotation is int:
        return str(default + 1), default + 1
    if annotation is float:
        value = (default or 0.0) + 0.5
        return str(value), value
    if annotation is Path:
        return "/srv/sample", Path("/srv/sample")
    if annotation is SecretStr:
        return "sample-secret", "sample-secret"
    if annotation is str:
        return "sample_value", "sample_value"
    raise AssertionError(f"add a sample for {annotation!r} to this test")


def held(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


@pytest.fixture
def no_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for variable, _, _, _ in FIELDS:
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


@pytest.mark.parametrize(("variable", "group", "name", "field"), FIELDS, ids=[f[0] for f in FIELDS])
def test_each_variable_lands_in_its_group(
    variable: str, group: str, name: str, field: FieldInfo,
    monkeypatch: pytest.MonkeyPatch, no_dotenv: Path,
) -> None:
    raw, expected = sample(field)
    monkeypatch.setenv(variable, raw)
    settings = Settings()
    assert held(getattr(getattr(settings, group), name)) == expected
    # The same name works as a keyword argument (tests and benchmarks pass them flat).
    monkeypatch.delenv(variable)
    flat: dict[str, Any] = {variable.lower(): raw}
    assert held(getattr(getattr(Settings(**flat), group), name)) == expected


def test_spec_variables_keep_their_names(monkeypatch: pytest.MonkeyPatch, no_dotenv: Path) -> None:
    for variable, value in {
        "OPENROUTER_API_KEY": "sk-or", "OPENROUTER_MODEL": "vendor/model",
        "SHORT_HISTORY_LIMIT": "3", "SUMMARY_THRESHOLD": "7", "SUMMARY_NEW_MESSAGES_LIMIT": "9",
        "RAG_ENABLED": "true", "USE_CELERY_FOR_SUMMARY": "true",
        "CELERY_BROKER_URL": "redis://broker:6379/1",
    }.items():
        monkeypatch.setenv(variable, value)
    settings = Settings()
    assert settings.llm.openrouter_api_key == SecretStr("sk-or")
    assert settings.llm.chat_model == "vendor/model"
    assert (settings.memory.short_history_limit, settings.memory.summary_threshold,
            settings.memory.summary_new_messages_limit) == (3, 7, 9)
    assert settings.rag.rag_enabled is True
    assert settings.worker.use_celery_for_summary is True
    assert settings.worker.celery_broker_url == "redis://broker:6379/1"
    assert not hasattr(settings, "short_history_limit")  # read through the group only


def test_dotenv_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, no_dotenv: Path
) -> None:
    (no_dotenv / ".env").write_text(
        "OPENROUTER_MODEL=from-dotenv\nSHORT_HISTORY_LIMIT=3\nQDRANT_URL=\n"
        "BOT_TOKEN=123:abc\n"  # the bot's: ignored here
    )
    monkeypatch.setenv("SHORT_HISTORY_LIMIT", "5")
    monkeypatch.setenv("SERVER", "not json")  # a group's name is not a variable
    settings = Settings()
    assert settings.llm.chat_model == "from-dotenv"
    assert settings.memory.short_history_limit == 5
    assert settings.rag.qdrant_url is None  # blank means unset
    assert Settings(_env_file=None).llm.chat_model == "google/gemini-2.5-flash"


def test_keyword_arguments_outrank_the_environment_and_a_whole_group_outranks_flat_names(
    monkeypatch: pytest.MonkeyPatch, no_dotenv: Path
) -> None:
    monkeypatch.setenv("OPENROUTER_MODEL", "from-env")
    monkeypatch.setenv("LLM_TIMEOUT", "9")
    assert Settings(openrouter_model="kw").llm.chat_model == "kw"
    grouped = Settings(llm=LLMSettings(chat_model="group"), memory={"short_history_limit": 2})
    assert grouped.llm.chat_model == "group"
    assert grouped.llm.llm_timeout == 60.0  # an instance is taken whole: not the env's 9
    assert grouped.memory.short_history_limit == 2
    assert Settings(llm={"chat_model": "dict"}).llm.llm_timeout == 9.0  # a dict: only its keys
    with pytest.raises(ValidationError, match="no_such_setting"):
        Settings(memory={"no_such_setting": 1})


def test_invalid_values_are_reported_by_variable_name(
    monkeypatch: pytest.MonkeyPatch, no_dotenv: Path
) -> None:
    monkeypatch.setenv("SUMMARY_THRESHOLD", "0")
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SUMMARY_THRESHOLD: Input should be greater than or equal to 1" in message
    assert "LOG_FORMAT:" in message
    with pytest.raises(ConfigError, match="OPENROUTER_MODEL: Input should be a valid string"):
        load_settings(openrouter_model=5)


def test_secrets_are_not_shown(monkeypatch: pytest.MonkeyPatch, no_dotenv: Path) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-very-secret")
    settings = Settings()
    assert "very-secret" not in repr(settings)
    assert settings.llm.effective_api_key == "sk-or-very-secret"


def test_llm_derived_values() -> None:
    assert not LLMSettings().configured
    assert LLMSettings().effective_base_url == "https://openrouter.ai/api/v1"
    assert LLMSettings().effective_api_key == "not-needed"
    local = LLMSettings(llm_base_url="http://127.0.0.1:11434/v1", llm_api_key=SecretStr("k"))
    assert local.configured
    assert (local.effective_base_url, local.effective_api_key) == ("http://127.0.0.1:11434/v1", "k")


@pytest.mark.parametrize(
    ("env", "describing"),
    [
        ({}, True),
        ({"IMAGES_SUPPORTED": "false"}, False),
        ({"DESCRIBE_IMAGES": "false"}, False),
        ({"IMAGES_SUPPORTED": "false", "DESCRIBE_IMAGES": "true"}, False),
        ({"DESCRIBE_IMAGES": ""}, True),
    ],
)
def test_pictures_are_described_by_default_only_when_the_model_reads_them(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], describing: bool
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    pictures = Settings(_env_file=None).pictures
    assert pictures.describing is describing
