"""Tables of the specification: chat_sessions, messages, conversation_summaries, embeddings,
and the user facts of semantic memory (facts, fact_extraction)."""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    REAL,
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_MAX_LEN = 128
NAME_MAX_LEN = 256
# Telegram's chat types. Only "private" is a private chat; the others share one memory per chat.
CHAT_TYPES = ("private", "group", "supergroup", "channel")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class ChatSession(Base):
    __tablename__ = "chat_sessions"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    # The owner of a private chat's session. A group's session belongs to the chat: NULL, so
    # that erasing whoever spoke first does not take the group's session with them.
    user_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    chat_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), nullable=False)
    chat_type: Mapped[str] = mapped_column(
        String(16), nullable=False, server_default=text("'private'")
    )
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    messages_since_summary: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )

    __table_args__ = (
        # The invariant "at most one active session per chat" lives in the database, so that
        # concurrent first messages of a chat cannot open two sessions.
        Index(
            "uq_chat_sessions_active_chat",
            "chat_id",
            unique=True,
            postgresql_where=text("is_active"),
        ),
        Index("ix_chat_sessions_user_id", "user_id"),
        Index("ix_chat_sessions_chat_id_created_at", "chat_id", "created_at"),
        CheckConstraint("messages_since_summary >= 0", name="counter_not_negative"),
        CheckConstraint(
            "(is_active AND closed_at IS NULL) OR (NOT is_active AND closed_at IS NOT NULL)",
            name="closed_at_matches_state",
        ),
        CheckConstraint(
            "chat_type IN ('private', 'group', 'supergroup', 'channel')", name="chat_type_known"
        ),
        CheckConstraint("chat_type <> 'private' OR user_id IS NOT NULL", name="private_has_owner"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("chat_sessions.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # Whose turn this is: the author of a user message, the user an assistant message answers
    # (answers repeat what they answer, so erasing a user takes them too). `user_name` is the
    # display name the client gave with the message; group prompts label turns with it.
    user_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    user_name: Mapped[str | None] = mapped_column(String(NAME_MAX_LEN))
    # How the user gave the message: typed, or spoken and transcribed (migration 0010). The
    # content of a voice message is its transcript; the prompt marks it as spoken.
    input_mode: Mapped[str] = mapped_column(
        String(8), nullable=False, server_default=text("'text'")
    )
    # Pictures sent with the message (memory/pictures.py, migration 0011): a list of
    # {"kind": "image", "mime_type", "width", "height", "bytes", "description", "path"}; the
    # caption is the message's text. NULL for text messages.
    attachments: Mapped[list[dict[str, object]] | None] = mapped_column(JSONB)

    __table_args__ = (
        CheckConstraint("role IN ('user', 'assistant', 'system', 'tool')", name="role_known"),
        CheckConstraint("input_mode IN ('text', 'voice')", name="input_mode_known"),
        # Serves the short-term window (last N of a session) and summary chunks (after id X).
        Index("ix_messages_session_id_id", "session_id", "id"),
        # Erasing a user finds their messages in group sessions.
        Index("ix_messages_user_id", "user_id"),
    )


class ConversationSummary(Base):
    __tablename__ = "conversation_summaries"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("chat_sessions.id", ondelete="CASCADE"), nullable=False
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # A position in the messages id sequence rather than a foreign key: an operator may delete
    # the message it points at (in Directus) and the watermark must stay meaningful.
    last_message_id: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (
        # Two concurrent summarization jobs cannot both write version N+1.
        UniqueConstraint("session_id", "version", name="uq_conversation_summaries_version"),
        CheckConstraint("version >= 1", name="version_positive"),
    )


class EmbeddingRecord(Base):
    __tablename__ = "embeddings"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("chat_sessions.id", ondelete="CASCADE"), nullable=False
    )
    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    importance: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    # Scope of the search (denormalized so one index serves it), the embedding space the
    # vector lives in, and the lexical side of hybrid search. `user_id` is whose private memory
    # the message is, set for private chats only: a group's messages are the chat's memory
    # (found by `chat_id`) and must never turn up in a search of anyone's private memory.
    user_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    chat_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    model: Mapped[str | None] = mapped_column(String(200))
    lexemes: Mapped[str | None] = mapped_column(TSVECTOR)

    __table_args__ = (
        # One metadata row per indexed message: re-indexing upserts instead of duplicating.
        UniqueConstraint("message_id", name="uq_embeddings_message_id"),
        Index("ix_embeddings_session_id", "session_id"),
        Index("ix_embeddings_user_id", "user_id"),
        Index("ix_embeddings_chat_id", "chat_id"),
        Index("ix_embeddings_lexemes", "lexemes", postgresql_using="gin"),
    )


class OutboxColumns:
    """The lease bookkeeping of an outbox table (rag/indexing.py's Outbox claims by these)."""

    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    enqueued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class RagOutbox(OutboxColumns, Base):
    """Messages waiting to be indexed; filled by a trigger on messages (migration 0002)."""

    __tablename__ = "rag_outbox"

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_rag_outbox_next_attempt_at", "next_attempt_at"),)


class LlmUsage(Base):
    """One row per model call: who it was for, why, which model, its tokens and cost.

    Written in batches after the reply (usage/ledger.py). `user_id` and `chat_id` are null for
    calls nobody asked for (a group's summary) and after the user was erased (memory/erase.py
    keeps the accounting, anonymised).
    """

    __tablename__ = "llm_usage"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    user_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    chat_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(
        Integer, nullable=False, server_default=text("0")
    )
    # What the provider charged (OpenRouter, in credits = USD); null when it does not say.
    cost: Mapped[float | None] = mapped_column(Float)
    # Seconds of audio a transcription call was billed for (purpose "transcription"); null for
    # other calls. Providers price speech by the minute, not by tokens (migration 0010).
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    # For the dashboard's "top users by tokens" (one field to sum); computed by PostgreSQL.
    total_tokens: Mapped[int] = mapped_column(
        Integer, Computed("prompt_tokens + completion_tokens", persisted=True), nullable=False
    )

    __table_args__ = (
        # The budget check of every request and GET /v1/usage/users/{id}: one user's calls since
        # the start of their day, summed from the index alone.
        Index(
            "ix_llm_usage_user_id_created_at",
            "user_id",
            "created_at",
            postgresql_include=["prompt_tokens", "completion_tokens"],
        ),
        # Per-day totals (the dashboard's tokens and cost per day by model and purpose).
        Index("ix_llm_usage_created_at", "created_at"),
        CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0", name="tokens_not_negative"
        ),
    )


class BotUser(Base):
    """An operator's decisions about one user: a daily token limit of their own, or a ban.

    A row appears when a user's first model call is accounted; operators edit it in the admin
    panel. `daily_token_limit` null: USER_DAILY_TOKEN_LIMIT applies; 0: no limit.
    """

    __tablename__ = "bot_users"

    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    daily_token_limit: Mapped[int | None] = mapped_column(Integer)
    blocked: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        CheckConstraint(
            "daily_token_limit IS NULL OR daily_token_limit >= 0", name="limit_not_negative"
        ),
    )


class LexicalStat(Base):
    """Document frequencies of lexemes per search scope, kept by triggers on `embeddings` (0003).

    `scope` is `u:<user_id>` or `c:<chat_id>`. The row with the empty lexeme holds the scope's
    document count in `df` and its total lexeme count in `len`, so BM25's idf and average length
    are index lookups instead of counts over thousands of rows.
    """

    __tablename__ = "lexical_stats"

    scope: Mapped[str] = mapped_column(Text, primary_key=True)
    lexeme: Mapped[str] = mapped_column(Text, primary_key=True)
    df: Mapped[int] = mapped_column(BigInteger, nullable=False)
    len: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))


class Fact(Base):
    """An atomic fact about a user; a correction supersedes it instead of overwriting it.

    Current facts have `superseded_at` NULL. An update points the old version at its successor
    (`superseded_by`); a retraction sets `superseded_at` alone. `chat_id` is where the fact was
    learned when that was a group chat, NULL for private chats and facts written through the API
    or the admin panel: with FACTS_IN_GROUPS=false a group's prompt shows only its own facts.
    """

    __tablename__ = "facts"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), nullable=False)
    content: Mapped[str] = mapped_column(Text, nullable=False)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    # Positions in the messages id sequence, not foreign keys (like a summary's watermark):
    # erasing messages deletes the facts whose sources they were (memory/erase.py).
    source_message_ids: Mapped[list[int]] = mapped_column(
        ARRAY(BigInteger), nullable=False, server_default=text("'{}'")
    )
    importance: Mapped[float] = mapped_column(Float, nullable=False, server_default=text("0.5"))
    chat_id: Mapped[str | None] = mapped_column(String(ID_MAX_LEN))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    superseded_by: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("facts.id", ondelete="SET NULL")
    )
    # The content's lexemes under RAG_FTS_CONFIG, written with it by the app; an edit elsewhere
    # (Directus) resets them to NULL (trigger, migration 0006) and readers compute them instead.
    lexemes: Mapped[str | None] = mapped_column(TSVECTOR)

    __table_args__ = (
        CheckConstraint("source IN ('extracted', 'user', 'operator')", name="source_known"),
        CheckConstraint("importance >= 0 AND importance <= 1", name="importance_range"),
        CheckConstraint(
            "superseded_by IS NULL OR superseded_at IS NOT NULL", name="successor_needs_time"
        ),
        # The profile reads a user's current facts on every request.
        Index(
            "ix_facts_user_id_current", "user_id", postgresql_where=text("superseded_at IS NULL")
        ),
        # Erasing messages finds the facts derived from them.
        Index("ix_facts_source_message_ids", "source_message_ids", postgresql_using="gin"),
    )


class FactOutbox(OutboxColumns, Base):
    """Facts waiting to be (re)indexed or to lose their vector; filled by a trigger on facts
    (migration 0012), so an operator's edit is indexed like a message edit."""

    __tablename__ = "fact_outbox"

    fact_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("facts.id", ondelete="CASCADE"), primary_key=True
    )

    __table_args__ = (Index("ix_fact_outbox_next_attempt_at", "next_attempt_at"),)


class FactEmbedding(Base):
    """The vector of a current fact in the embedding space `model` (rag/fact_index.py).

    A user has few facts, so they are ranked exactly in the app, whatever the vector store;
    deleting the fact deletes its vector (ON DELETE CASCADE).
    """

    __tablename__ = "fact_embeddings"

    fact_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("facts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    embedding: Mapped[list[float]] = mapped_column(ARRAY(REAL), nullable=False)

    __table_args__ = (Index("ix_fact_embeddings_user_id", "user_id"),)


class FactExtraction(Base):
    """Per user and chat: the extraction watermark and what extraction has cost so far.

    `chat_id` is the chat the messages were written in. Every user message with an id above
    `last_message_id` has not been considered yet; a batch moves the watermark in the
    transaction that writes its facts. The counters are for operators: tokens per user is
    `SELECT user_id, sum(prompt_tokens + completion_tokens) FROM fact_extraction GROUP BY 1`.
    """

    __tablename__ = "fact_extraction"

    user_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    chat_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    last_message_id: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    calls: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    skipped_batches: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )


class PendingPicture(Base):
    """The pictures of a message still waiting for their description (memory/pictures.py).

    The row holds the re-encoded JPEGs only until the description is written, in the same
    transaction that deletes it: a job killed meanwhile leaves it for the next one.
    """

    __tablename__ = "pending_pictures"

    message_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    images: Mapped[list[bytes]] = mapped_column(ARRAY(LargeBinary), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (Index("ix_pending_pictures_created_at", "created_at"),)
class Persona(Base):
    """An operator's system prompt: the instruction and, when set, the model and temperature.

    Exactly one is the default (migration 0009: a partial unique index, and a trigger that
    clears the others and refuses to leave none); a change NOTIFYs every backend process
    (memory/personas.py). Selectable ones are offered to users by /mode.
    """

    __tablename__ = "personas"

    id: Mapped[int] = mapped_column(Integer, Identity(always=False), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    instruction: Mapped[str] = mapped_column(Text, nullable=False)
    model: Mapped[str | None] = mapped_column(String(200))
    temperature: Mapped[float | None] = mapped_column(Float)
    is_default: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    selectable: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (
        Index(
            "uq_personas_default", "is_default", unique=True, postgresql_where=text("is_default")
        ),
        CheckConstraint(
            "temperature IS NULL OR (temperature >= 0 AND temperature <= 2)",
            name="temperature_range",
        ),
        CheckConstraint("btrim(name) <> ''", name="name_not_blank"),
    )


class ChatSetting(Base):
    """What a chat chose for itself: its persona (/mode); null or no row: the default."""

    __tablename__ = "chat_settings"

    chat_id: Mapped[str] = mapped_column(String(ID_MAX_LEN), primary_key=True)
    persona_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("personas.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )

    __table_args__ = (Index("ix_chat_settings_persona_id", "persona_id"),)


class JobFailure(Base):
    """A background job that failed for good (its retries spent): for the dashboard."""

    __tablename__ = "job_failures"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    failed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, server_default=func.now()
    )
    task: Mapped[str] = mapped_column(String(200), nullable=False)
    arguments: Mapped[str] = mapped_column(Text, nullable=False)
    error: Mapped[str] = mapped_column(Text, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("1"))

    __table_args__ = (Index("ix_job_failures_failed_at", "failed_at"),)


class UsageDaily(Base):
    """llm_usage summed per UTC day, model and purpose; kept by a trigger (migration 0009)."""

    __tablename__ = "usage_daily"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    day: Mapped[date] = mapped_column(Date, nullable=False)
    model: Mapped[str] = mapped_column(String(200), nullable=False)
    purpose: Mapped[str] = mapped_column(String(32), nullable=False)
    calls: Mapped[int] = mapped_column(Integer, nullable=False, server_default=text("0"))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    completion_tokens: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    total_tokens: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    cost: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("day", "model", "purpose"),)


chat_sessions = ChatSession.__table__
messages = Message.__table__
conversation_summaries = ConversationSummary.__table__
embeddings = EmbeddingRecord.__table__
rag_outbox = RagOutbox.__table__
llm_usage = LlmUsage.__table__
bot_users = BotUser.__table__
facts = Fact.__table__
fact_extraction = FactExtraction.__table__
pending_pictures = PendingPicture.__table__
fact_outbox = FactOutbox.__table__
fact_embeddings = FactEmbedding.__table__
personas = Persona.__table__
chat_settings = ChatSetting.__table__
job_failures = JobFailure.__table__
usage_daily = UsageDaily.__table__
