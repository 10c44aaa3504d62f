"""user facts: the facts table and the per user+chat extraction watermark and cost counters

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 04:00:00

Issue 14. Facts are user-keyed, not session-keyed: erasing a session deletes the facts whose
source messages it held, erasing a user deletes them all (memory/erase.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "facts",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column(
            "source_message_ids",
            postgresql.ARRAY(sa.BigInteger()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("importance", sa.Float(), server_default=sa.text("0.5"), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.BigInteger(), nullable=True),
        sa.Column("lexemes", postgresql.TSVECTOR(), nullable=True),
        sa.CheckConstraint(
            "source IN ('extracted', 'user', 'operator')", name=op.f("ck_facts_source_known")
        ),
        sa.CheckConstraint(
            "importance >= 0 AND importance <= 1", name=op.f("ck_facts_importance_range")
        ),
        sa.CheckConstraint(
            "superseded_by IS NULL OR superseded_at IS NOT NULL",
            name=op.f("ck_facts_successor_needs_time"),
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by"],
            ["facts.id"],
            name=op.f("fk_facts_superseded_by_facts"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facts")),
    )
    op.create_index(
        "ix_facts_user_id_current",
        "facts",
        ["user_id"],
        postgresql_where=sa.text("superseded_at IS NULL"),
    )
    op.create_index(
        "ix_facts_source_message_ids",
        "facts",
        ["source_message_ids"],
        postgresql_using="gin",
    )
    # The app writes `lexemes` with the content under RAG_FTS_CONFIG, which the database does
    # not know; an edit that changes the content alone (an operator in Directus) clears them,
    # so readers compute them from the content instead of matching stale ones.
    op.execute(
        """
        CREATE FUNCTION facts_lexemes_follow_content() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.content IS DISTINCT FROM OLD.content
               AND NEW.lexemes IS NOT DISTINCT FROM OLD.lexemes THEN
                NEW.lexemes := NULL;
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER facts_lexemes_follow_content BEFORE UPDATE ON facts "
        "FOR EACH ROW EXECUTE FUNCTION facts_lexemes_follow_content()"
    )
    op.create_table(
        "fact_extraction",
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("last_message_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("calls", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("skipped_batches", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("user_id", "chat_id", name=op.f("pk_fact_extraction")),
    )


def downgrade() -> None:
    op.drop_table("fact_extraction")
    op.execute("DROP TRIGGER IF EXISTS facts_lexemes_follow_content ON facts")
    op.execute("DROP FUNCTION IF EXISTS facts_lexemes_follow_content()")
    op.drop_index("ix_facts_source_message_ids", table_name="facts")
    op.drop_index("ix_facts_user_id_current", table_name="facts")
    op.drop_table("facts")
