"""pictures: messages.attachments and the pictures waiting for their description

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("attachments", postgresql.JSONB(), nullable=True))
    op.create_table(
        "pending_pictures",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("images", postgresql.ARRAY(sa.LargeBinary()), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_pending_pictures_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_pending_pictures")),
    )
    op.create_index("ix_pending_pictures_created_at", "pending_pictures", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_pending_pictures_created_at", table_name="pending_pictures")
    op.drop_table("pending_pictures")
    op.drop_column("messages", "attachments")
