"""group chats: every message has its author, a session knows its chat's kind

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 04:00:00

Before this revision a group's messages were all stored as the messages of whoever opened the
session, and indexed as that user's memory: recalled in their private chat, and erased (or not)
with them. Now:
- `messages.user_id` is the author of a user turn (the user answered, for an assistant turn).
  Messages stored before get the session's user: the only author known for them.
- `chat_sessions.chat_type` is the chat's kind. Existing sessions are classified by the rule
  the API applies when a client does not say: a chat whose id is the user's id is private (as
  Telegram's private chats are), any other is a group. A group's session has no owner
  (`user_id` NULL).
- `embeddings.user_id` (whose private memory a message is) is cleared for group messages, in
  the lexical statistics (by their triggers) and in pgvector tables too. Qdrant payloads cannot
  be reached from here: the group messages are queued for indexing again, which rewrites them,
  and search checks every hit against `embeddings` meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Vector tables are created at run time by the pgvector store (rag_hvec_*, and rag_vec_* of
# older versions), one per embedding space; every one of them holds the scope columns.
_VECTOR_TABLES = """
    SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema() AND c.relkind = 'r'
      AND (c.relname LIKE 'rag\\_hvec\\_%' OR c.relname LIKE 'rag\\_vec\\_%')
"""


def _each_vector_table(statement: str) -> None:
    """Run `statement` (with %1$I for the table name) on every pgvector table."""
    op.execute(
        f"""
        DO $$
        DECLARE t text;
        BEGIN
            FOR t IN {_VECTOR_TABLES} LOOP
                EXECUTE format($f${statement}$f$, t);
            END LOOP;
        END $$
        """
    )


def upgrade() -> None:
    op.add_column(
        "chat_sessions",
        sa.Column(
            "chat_type", sa.String(length=16), server_default=sa.text("'private'"), nullable=False
        ),
    )
    op.create_check_constraint(
        op.f("ck_chat_sessions_chat_type_known"),
        "chat_sessions",
        "chat_type IN ('private', 'group', 'supergroup', 'channel')",
    )
    op.add_column("messages", sa.Column("user_id", sa.String(length=128), nullable=True))
    op.add_column("messages", sa.Column("user_name", sa.String(length=256), nullable=True))

    op.execute("UPDATE chat_sessions SET chat_type = 'group' WHERE chat_id <> user_id")
    # Setting user_id does not touch `content`: the indexing trigger does not fire here.
    op.execute(
        "UPDATE messages m SET user_id = s.user_id FROM chat_sessions s WHERE s.id = m.session_id"
    )
    op.create_index("ix_messages_user_id", "messages", ["user_id"])

    op.alter_column("chat_sessions", "user_id", existing_type=sa.String(length=128), nullable=True)
    op.execute("UPDATE chat_sessions SET user_id = NULL WHERE chat_type <> 'private'")
    op.create_check_constraint(
        op.f("ck_chat_sessions_private_has_owner"),
        "chat_sessions",
        "chat_type <> 'private' OR user_id IS NOT NULL",
    )

    # A group message is nobody's private memory; the statistics triggers move its lexemes out
    # of the user's scope.
    op.execute(
        """
        UPDATE embeddings e SET user_id = NULL FROM chat_sessions s
        WHERE s.id = e.session_id AND s.chat_type <> 'private' AND e.user_id IS NOT NULL
        """
    )
    _each_vector_table("ALTER TABLE %1$I ALTER COLUMN user_id DROP NOT NULL")
    _each_vector_table(
        "UPDATE %1$I v SET user_id = NULL FROM chat_sessions s "
        "WHERE s.id = v.session_id AND s.chat_type <> 'private' AND v.user_id IS NOT NULL"
    )
    op.execute(
        """
        INSERT INTO rag_outbox (message_id)
        SELECT m.id FROM messages m JOIN chat_sessions s ON s.id = m.session_id
        WHERE s.chat_type <> 'private' AND m.role IN ('user', 'assistant')
        ON CONFLICT (message_id) DO UPDATE SET next_attempt_at = now(), attempts = 0
        """
    )


def downgrade() -> None:
    # The earlier schema keys everything by the session's user: a group's session goes back to
    # the author of its first message (or the chat, when nobody is known).
    op.drop_constraint(op.f("ck_chat_sessions_private_has_owner"), "chat_sessions", type_="check")
    op.execute(
        """
        UPDATE chat_sessions s SET user_id = coalesce(
            (SELECT m.user_id FROM messages m
             WHERE m.session_id = s.id AND m.user_id IS NOT NULL ORDER BY m.id LIMIT 1),
            s.chat_id)
        WHERE s.user_id IS NULL
        """
    )
    op.execute(
        "UPDATE embeddings e SET user_id = s.user_id FROM chat_sessions s "
        "WHERE s.id = e.session_id AND e.user_id IS NULL"
    )
    _each_vector_table(
        "UPDATE %1$I v SET user_id = s.user_id FROM chat_sessions s "
        "WHERE s.id = v.session_id AND v.user_id IS NULL"
    )
    _each_vector_table("ALTER TABLE %1$I ALTER COLUMN user_id SET NOT NULL")
    op.alter_column("chat_sessions", "user_id", existing_type=sa.String(length=128), nullable=False)
    op.drop_index("ix_messages_user_id", table_name="messages")
    op.drop_column("messages", "user_name")
    op.drop_column("messages", "user_id")
    op.drop_constraint(op.f("ck_chat_sessions_chat_type_known"), "chat_sessions", type_="check")
    op.drop_column("chat_sessions", "chat_type")
