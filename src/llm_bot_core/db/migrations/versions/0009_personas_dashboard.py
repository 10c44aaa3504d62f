"""personas without a restart, per-chat settings, failed jobs and the dashboard's daily usage

personas: operators' system prompts; exactly one is the default (a partial unique index, and a
trigger that clears the others when a persona becomes the default and refuses to leave none).
Every change NOTIFYs `personas_changed`, which every backend process LISTENs to.
chat_settings: the persona a chat chose with /mode. job_failures: background jobs that failed
for good. usage_daily: llm_usage summed per UTC day, model and purpose by a trigger, and
llm_usage.total_tokens, for the dashboard's panels.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One statement per execute: asyncpg prepares each, and a prepared statement holds one command.
_PERSONA_FUNCTIONS = (
    """
CREATE FUNCTION personas_one_default() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The clearing UPDATE below fires this trigger again: let it through.
    IF pg_trigger_depth() > 1 THEN
        RETURN COALESCE(NEW, OLD);
    END IF;
    IF TG_OP = 'DELETE' THEN
        IF OLD.is_default THEN
            RAISE EXCEPTION
                'The default persona cannot be deleted: make another one the default first.'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.is_default AND NOT NEW.is_default THEN
        RAISE EXCEPTION
            'One persona is always the default: make another one the default instead.'
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.is_default THEN
        UPDATE personas SET is_default = false WHERE is_default AND id <> NEW.id;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$
""",
    """
CREATE TRIGGER personas_one_default BEFORE INSERT OR UPDATE OR DELETE ON personas
    FOR EACH ROW EXECUTE FUNCTION personas_one_default()
""",
    """
CREATE FUNCTION personas_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('personas_changed', '');
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER personas_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON personas
    FOR EACH STATEMENT EXECUTE FUNCTION personas_notify()
""",
)

_USAGE_DAILY_FUNCTION = (
    """
CREATE FUNCTION usage_daily_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_daily AS d
        (day, model, purpose, calls, prompt_tokens, completion_tokens, total_tokens, cost)
    SELECT (n.created_at AT TIME ZONE 'UTC')::date, n.model, n.purpose, count(*),
           sum(n.prompt_tokens), sum(n.completion_tokens),
           sum(n.prompt_tokens + n.completion_tokens), sum(n.cost)
    FROM new_rows n
    GROUP BY 1, 2, 3
    ON CONFLICT (day, model, purpose) DO UPDATE SET
        calls = d.calls + EXCLUDED.calls,
        prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
        total_tokens = d.total_tokens + EXCLUDED.total_tokens,
        cost = CASE WHEN d.cost IS NULL AND EXCLUDED.cost IS NULL THEN NULL
                    ELSE COALESCE(d.cost, 0) + COALESCE(EXCLUDED.cost, 0) END;
    RETURN NULL;
END $$
""",
    """
CREATE TRIGGER usage_daily_add AFTER INSERT ON llm_usage
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_add()
""",
)


def upgrade() -> None:
    op.create_table(
        "personas",
        sa.Column("id", sa.Integer(), sa.Identity(always=False), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("is_default", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("selectable", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint(
            "temperature IS NULL OR (temperature >= 0 AND temperature <= 2)",
            name=op.f("ck_personas_temperature_range"),
        ),
        sa.CheckConstraint("btrim(name) <> ''", name=op.f("ck_personas_name_not_blank")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_personas")),
        sa.UniqueConstraint("name", name=op.f("uq_personas_name")),
    )
    op.create_index(
        "uq_personas_default",
        "personas",
        ["is_default"],
        unique=True,
        postgresql_where=sa.text("is_default"),
    )
    for statement in _PERSONA_FUNCTIONS:
        op.execute(statement)
    op.create_table(
        "chat_settings",
        sa.Column("chat_id", sa.String(128), nullable=False),
        sa.Column("persona_id", sa.Integer(), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["persona_id"],
            ["personas.id"],
            name=op.f("fk_chat_settings_persona_id_personas"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("chat_id", name=op.f("pk_chat_settings")),
    )
    op.create_index("ix_chat_settings_persona_id", "chat_settings", ["persona_id"])
    op.create_table(
        "job_failures",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column(
            "failed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("task", sa.String(200), nullable=False),
        sa.Column("arguments", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_failures")),
    )
    op.create_index("ix_job_failures_failed_at", "job_failures", ["failed_at"])
    op.add_column(
        "llm_usage",
        sa.Column(
            "total_tokens",
            sa.Integer(),
            sa.Computed("prompt_tokens + completion_tokens", persisted=True),
            nullable=False,
        ),
    )
    op.create_table(
        "usage_daily",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("calls", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "completion_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("total_tokens", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_daily")),
        sa.UniqueConstraint("day", "model", "purpose", name=op.f("uq_usage_daily_day")),
    )
    for statement in _USAGE_DAILY_FUNCTION:
        op.execute(statement)
    # The days before this migration, so the dashboard starts with the full history.
    op.execute(
        "INSERT INTO usage_daily "
        "(day, model, purpose, calls, prompt_tokens, completion_tokens, total_tokens, cost) "
        "SELECT (created_at AT TIME ZONE 'UTC')::date, model, purpose, count(*), "
        "sum(prompt_tokens), sum(completion_tokens), sum(prompt_tokens + completion_tokens), "
        "sum(cost) FROM llm_usage GROUP BY 1, 2, 3"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER usage_daily_add ON llm_usage")
    op.execute("DROP FUNCTION usage_daily_add()")
    op.drop_table("usage_daily")
    op.drop_column("llm_usage", "total_tokens")
    op.drop_index("ix_job_failures_failed_at", table_name="job_failures")
    op.drop_table("job_failures")
    op.drop_index("ix_chat_settings_persona_id", table_name="chat_settings")
    op.drop_table("chat_settings")
    op.drop_table("personas")
    op.execute("DROP FUNCTION personas_notify()")
    op.execute("DROP FUNCTION personas_one_default()")
