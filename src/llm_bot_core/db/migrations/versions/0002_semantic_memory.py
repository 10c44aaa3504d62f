"""semantic memory: indexing outbox, scope and lexical columns of embeddings

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 02:00:00

The outbox is filled by a trigger in the same transaction that stores a message, so a message
can never be stored without being queued for indexing, whoever inserts it (backend, Directus,
an import). Vector tables are created at run time by the vector store, because their dimension
depends on the configured embedding model.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import TSVECTOR

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rag_outbox",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "enqueued_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            ondelete="CASCADE",
            name=op.f("fk_rag_outbox_message_id_messages"),
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_rag_outbox")),
    )
    op.create_index("ix_rag_outbox_next_attempt_at", "rag_outbox", ["next_attempt_at"])

    op.add_column("embeddings", sa.Column("user_id", sa.String(length=128), nullable=True))
    op.add_column("embeddings", sa.Column("chat_id", sa.String(length=128), nullable=True))
    op.add_column("embeddings", sa.Column("model", sa.String(length=200), nullable=True))
    op.add_column("embeddings", sa.Column("lexemes", TSVECTOR(), nullable=True))
    op.create_index("ix_embeddings_user_id", "embeddings", ["user_id"])
    op.create_index("ix_embeddings_chat_id", "embeddings", ["chat_id"])
    op.create_index("ix_embeddings_lexemes", "embeddings", ["lexemes"], postgresql_using="gin")

    op.execute(
        """
        CREATE FUNCTION rag_enqueue_message() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO rag_outbox (message_id) VALUES (NEW.id)
            ON CONFLICT (message_id) DO UPDATE SET next_attempt_at = now(), attempts = 0;
            RETURN NEW;
        END $$
        """
    )
    # Only conversation turns are remembered; an edited message (e.g. in Directus) is re-indexed.
    op.execute(
        """
        CREATE TRIGGER messages_rag_enqueue AFTER INSERT OR UPDATE OF content ON messages
        FOR EACH ROW WHEN (NEW.role IN ('user', 'assistant'))
        EXECUTE FUNCTION rag_enqueue_message()
        """
    )
    # Messages stored before this revision are queued too: the first start indexes history.
    op.execute(
        "INSERT INTO rag_outbox (message_id) SELECT id FROM messages "
        "WHERE role IN ('user', 'assistant') ON CONFLICT DO NOTHING"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_rag_enqueue ON messages")
    op.execute("DROP FUNCTION IF EXISTS rag_enqueue_message()")
    op.drop_index("ix_embeddings_lexemes", table_name="embeddings")
    op.drop_index("ix_embeddings_chat_id", table_name="embeddings")
    op.drop_index("ix_embeddings_user_id", table_name="embeddings")
    for column in ("lexemes", "model", "chat_id", "user_id"):
        op.drop_column("embeddings", column)
    op.drop_index("ix_rag_outbox_next_attempt_at", table_name="rag_outbox")
    op.drop_table("rag_outbox")
