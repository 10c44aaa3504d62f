"""facts are indexed through an outbox like messages; erasing or editing a message removes what
was derived from it, whoever does it

Revision ID: 0012
Revises: 0008
Create Date: 2026-12-01 10:00:00

Issue 14. `fact_outbox` is filled by a trigger on facts (an insert, a content edit, a
supersession), so an operator's edit in the admin panel is re-indexed like a message edit.
The indexer (rag/fact_index.py) writes `fact_embeddings` (one vector per current fact, in the
embedding space named by `model`) and the fact's `lexemes`; a superseded fact loses its vector.
Deleting a fact deletes its vector and its outbox row (ON DELETE CASCADE).

A message deleted by anyone (the backend's erasure, an operator in Directus or psql, a cascade
from its session) takes with it the facts drawn from it and the summaries that covered it (every
summary version from the first that covered it on: each is built on the previous one); the
session's counter is recounted from the remaining watermark, so the next summary is built from
the remaining messages. An edit of a message's content does the same: the summaries and facts
made from the old wording go.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ENQUEUE_FACT = """
CREATE FUNCTION fact_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fact_outbox (fact_id) VALUES (NEW.id)
    ON CONFLICT (fact_id) DO UPDATE SET next_attempt_at = now(), attempts = 0;
    RETURN NEW;
END $$
"""

# `{gone}`: (id, session_id) of the messages erased or edited. The facts drawn from them; the
# summaries of a session from the first that covered one of them on; then the counter of the
# sessions that still exist.
_FORGET_DERIVED = """
    DELETE FROM facts WHERE source_message_ids && ARRAY(SELECT g.id FROM {gone} g);
    DELETE FROM conversation_summaries c
    USING (SELECT g.session_id, min(g.id) AS first FROM {gone} g GROUP BY g.session_id) f
    WHERE c.session_id = f.session_id AND c.last_message_id >= f.first;
    UPDATE chat_sessions s SET messages_since_summary = (
        SELECT count(*) FROM messages m WHERE m.session_id = s.id AND m.id > coalesce(
            (SELECT max(last_message_id) FROM conversation_summaries c
             WHERE c.session_id = s.id), 0))
    WHERE s.id IN (SELECT g.session_id FROM {gone} g);
"""

_MESSAGES_DELETED = f"""
CREATE FUNCTION messages_forget_derived_on_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {_FORGET_DERIVED.format(gone="old_rows")}
    RETURN NULL;
END $$
"""

_MESSAGE_EDITED = f"""
CREATE FUNCTION messages_forget_derived_on_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A picture's description replacing its placeholder (memory/pictures.py) adds to what the
    -- message says and retracts nothing: what was derived from it stays.
    IF current_setting('llmbot.describing', true) = 'on' THEN
        RETURN NULL;
    END IF;
    {_FORGET_DERIVED.format(gone="(SELECT NEW.id AS id, NEW.session_id AS session_id)")}
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    op.create_table(
        "fact_outbox",
        sa.Column("fact_id", sa.BigInteger(), nullable=False),
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
            ["fact_id"], ["facts.id"], ondelete="CASCADE", name=op.f("fk_fact_outbox_fact_id_facts")
        ),
        sa.PrimaryKeyConstraint("fact_id", name=op.f("pk_fact_outbox")),
    )
    op.create_index("ix_fact_outbox_next_attempt_at", "fact_outbox", ["next_attempt_at"])
    op.create_table(
        "fact_embeddings",
        sa.Column("fact_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("embedding", sa.ARRAY(sa.REAL()), nullable=False),
        sa.ForeignKeyConstraint(
            ["fact_id"],
            ["facts.id"],
            ondelete="CASCADE",
            name=op.f("fk_fact_embeddings_fact_id_facts"),
        ),
        sa.PrimaryKeyConstraint("fact_id", name=op.f("pk_fact_embeddings")),
    )
    op.create_index("ix_fact_embeddings_user_id", "fact_embeddings", ["user_id"])
    op.execute(_ENQUEUE_FACT)
    op.execute(
        "CREATE TRIGGER facts_enqueue AFTER INSERT OR UPDATE OF content, superseded_at ON facts "
        "FOR EACH ROW EXECUTE FUNCTION fact_enqueue()"
    )
    op.execute("INSERT INTO fact_outbox (fact_id) SELECT id FROM facts WHERE superseded_at IS NULL")
    op.execute(_MESSAGES_DELETED)
    op.execute(
        "CREATE TRIGGER messages_forget_derived_on_delete AFTER DELETE ON messages "
        "REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION messages_forget_derived_on_delete()"
    )
    op.execute(_MESSAGE_EDITED)
    op.execute(
        "CREATE TRIGGER messages_forget_derived_on_edit AFTER UPDATE OF content ON messages "
        "FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content) "
        "EXECUTE FUNCTION messages_forget_derived_on_edit()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_forget_derived_on_edit ON messages")
    op.execute("DROP FUNCTION IF EXISTS messages_forget_derived_on_edit()")
    op.execute("DROP TRIGGER IF EXISTS messages_forget_derived_on_delete ON messages")
    op.execute("DROP FUNCTION IF EXISTS messages_forget_derived_on_delete()")
    op.execute("DROP TRIGGER IF EXISTS facts_enqueue ON facts")
    op.execute("DROP FUNCTION IF EXISTS fact_enqueue()")
    op.drop_index("ix_fact_embeddings_user_id", table_name="fact_embeddings")
    op.drop_table("fact_embeddings")
    op.drop_index("ix_fact_outbox_next_attempt_at", table_name="fact_outbox")
    op.drop_table("fact_outbox")
