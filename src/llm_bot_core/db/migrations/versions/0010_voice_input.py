"""voice input: messages.input_mode ('text' | 'voice'), llm_usage.audio_seconds

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "messages",
        sa.Column("input_mode", sa.String(8), server_default=sa.text("'text'"), nullable=False),
    )
    op.create_check_constraint(
        op.f("ck_messages_input_mode_known"), "messages", "input_mode IN ('text', 'voice')"
    )
    op.add_column("llm_usage", sa.Column("audio_seconds", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("llm_usage", "audio_seconds")
    op.drop_constraint(op.f("ck_messages_input_mode_known"), "messages", type_="check")
    op.drop_column("messages", "input_mode")
