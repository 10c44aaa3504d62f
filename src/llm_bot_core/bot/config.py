"""The bot's settings: its own process, talking to the backend only over HTTP."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TELEGRAM_API_URL = "https://api.telegram.org"

# Comma- or space-separated ids in the environment (`ALLOWED_USER_IDS=1,2 3`), not JSON.
IdSet = Annotated[frozenset[int], NoDecode]


class BotConfigError(ValueError):
    """A missing or invalid bot setting, with a message naming the variable."""


class BotSettings(BaseSettings):
    """Every setting of the Telegram bot (see README's configuration table)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    bot_token: SecretStr = Field(description="Token from @BotFather.")
    backend_url: str = "http://127.0.0.1:8080"
    backend_api_key: SecretStr | None = None
    backend_timeout: float = Field(default=120.0, gt=0)
    backend_retries: int = Field(default=3, ge=1, le=10, description="Attempts per request.")
    backend_retry_backoff: float = Field(default=0.5, ge=0)

    telegram_api_url: str = TELEGRAM_API_URL
    telegram_max_retries: int = Field(default=3, ge=0, le=20)
    telegram_max_retry_after: float = Field(default=60.0, ge=0)
    typing_interval: float = Field(default=4.0, gt=0)
    stream_replies: bool = Field(
        default=True,
        description="Private chats: show the answer as it is generated (sendMessageDraft).",
    )
    # Telegram allows a bot about one message per second in a chat; drafts are held to the same
    # pace (and to any 429 retry_after), which still shows the answer growing.
    stream_draft_interval: float = Field(default=1.0, ge=0.1, le=30)

    # Voice messages (handlers/voice.py): transcribed by the backend, which holds the keys.
    show_transcript: bool = Field(
        default=True, description="Quote the recognised text before answering a voice message."
    )
    # The backend reads the same two variables; the bot checks them before downloading.
    voice_max_seconds: int = Field(default=300, ge=1, le=24 * 3600)
    voice_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    allowed_user_ids: IdSet = Field(default_factory=frozenset)
    allowed_chat_ids: IdSet = Field(default_factory=frozenset)
    rate_limit_messages: int = Field(default=0, ge=0, description="0: no limit.")
    rate_limit_window: float = Field(default=60.0, gt=0)

    webhook_url: str | None = None
    webhook_host: str = "0.0.0.0"
    webhook_port: int = Field(default=8081, ge=1, le=65535)
    webhook_secret: SecretStr | None = None
    polling_timeout: int = Field(default=30, ge=0, le=50)

    @field_validator("allowed_user_ids", "allowed_chat_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(int(part) for part in value.replace(",", " ").split())
        return value

    @field_validator("webhook_url", "backend_api_key", "webhook_secret", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("backend_url", "telegram_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("bot_token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("BOT_TOKEN is empty")
        return value

    @property
    def access_restricted(self) -> bool:
        return bool(self.allowed_user_ids or self.allowed_chat_ids)

    @property
    def webhook_path(self) -> str:
        """The local path the webhook server listens on: the path of WEBHOOK_URL."""
        assert self.webhook_url is not None
        return urlsplit(self.webhook_url).path or "/"


def load_bot_settings(**overrides: object) -> BotSettings:
    """BotSettings from the environment and `.env`; BotConfigError names what is wrong."""
    try:
        return BotSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        missing = [str(e["loc"][0]).upper() for e in exc.errors() if e["type"] == "missing"]
        if "BOT_TOKEN" in missing:
            raise BotConfigError(
                "BOT_TOKEN is not set: create a bot with @BotFather and put "
                "BOT_TOKEN=123456:ABC... in .env (or the environment)"
            ) from exc
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise BotConfigError(f"invalid bot settings: {problems}") from exc
