"""an edit of a current fact's content keeps the old version as history

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 04:20:00

The backend corrects a fact by writing a new row and superseding the old one (memory/facts.py).
An operator in the admin panel (or psql) edits the row in place instead; without this trigger
the old wording would be lost. Now such an edit copies the old version to a new row that points
at the edited one (`superseded_by`, `superseded_at`), and the edited row becomes the operator's
(`source` 'operator', `created_at` now). It keeps its source messages: erasing them still
removes what was derived from them, the operator's wording included. The fact keeps its id, so
the panel's form stays on it, and "delete with history" (the API, /forget) finds the copy
through `superseded_by`. A superseded version is history: editing its content is refused. The
profile reads current rows on every request, so the edit is in the next prompt without any
re-indexing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FUNCTION = """
CREATE FUNCTION facts_edit_keeps_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.superseded_at IS NOT NULL THEN
        RAISE EXCEPTION 'fact % is an earlier version: history is not edited', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO facts (user_id, content, source, source_message_ids, importance, chat_id,
                       created_at, superseded_at, superseded_by)
    VALUES (OLD.user_id, OLD.content, OLD.source, OLD.source_message_ids, OLD.importance,
            OLD.chat_id, OLD.created_at, now(), OLD.id);
    NEW.source := 'operator';
    NEW.created_at := now();
    RETURN NEW;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute(
        "CREATE TRIGGER facts_edit_keeps_history BEFORE UPDATE OF content ON facts "
        "FOR EACH ROW WHEN (OLD.content IS DISTINCT FROM NEW.content) "
        "EXECUTE FUNCTION facts_edit_keeps_history()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER facts_edit_keeps_history ON facts")
    op.execute("DROP FUNCTION facts_edit_keeps_history()")
