"""session state follows an edit of either column: is_active and closed_at stay consistent

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 04:00:00

An operator unticking "Is Active" in the admin panel left closed_at empty, and the CHECK
`closed_at_matches_state` refused the row: Directus reports a CHECK violation as a 500. The
other column now follows the one that was edited, whoever edits (Directus, psql, the backend,
which already writes both and is left unchanged): deactivating stamps closed_at, reactivating
clears it, setting closed_at on an active session closes it, clearing it reopens it (a second
active session of the chat is still refused, by the unique index, as a readable conflict).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION chat_sessions_state_follows_edit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.is_active IS DISTINCT FROM OLD.is_active THEN
        IF NEW.is_active THEN
            NEW.closed_at := NULL;
        ELSIF NEW.closed_at IS NULL THEN
            NEW.closed_at := now();
        END IF;
    ELSIF NEW.closed_at IS DISTINCT FROM OLD.closed_at THEN
        NEW.is_active := NEW.closed_at IS NULL;
    END IF;
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER chat_sessions_state_follows_edit BEFORE UPDATE OF is_active, closed_at "
        "ON chat_sessions FOR EACH ROW EXECUTE FUNCTION chat_sessions_state_follows_edit()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER chat_sessions_state_follows_edit ON chat_sessions")
    op.execute("DROP FUNCTION chat_sessions_state_follows_edit()")
