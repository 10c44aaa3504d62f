"""lexical statistics: per-scope document frequencies for BM25, kept by triggers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 05:00:00

Counting a lexeme's documents within a user's memory took a GIN scan and a heap visit per
matching row: at 10k messages per user, BM25's idf counts and the scoring join were 10-25 ms per
search. The counts now live in `lexical_stats`, updated in the statement that changes
`embeddings`, whoever changes it (the indexer, a cascade from deleting a user, Directus).

Each change is applied as one sorted upsert of deltas, so concurrent statements lock the rows
they share in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The deltas of a set of embeddings rows (`rows` with a `sign` column): per scope, +/-1 per
# lexeme and, under the empty lexeme, +/-1 document and +/- its length.
_DELTAS = """
    SELECT k.scope, l.lexeme, r.sign AS df, 0 AS len
    FROM rows r
    CROSS JOIN LATERAL (VALUES ('u:' || r.user_id), ('c:' || r.chat_id)) k(scope)
    CROSS JOIN LATERAL unnest(r.lexemes) l
    WHERE k.scope IS NOT NULL
    UNION ALL
    SELECT k.scope, '', r.sign, r.sign * length(r.lexemes)
    FROM rows r
    CROSS JOIN LATERAL (VALUES ('u:' || r.user_id), ('c:' || r.chat_id)) k(scope)
    WHERE k.scope IS NOT NULL AND r.lexemes IS NOT NULL
"""

# Continues a `WITH rows AS (...)` of the trigger: applies the deltas of `rows`, and returns the
# keys whose count fell to zero.
_APPLY = f"""
    , d AS ({_DELTAS}),
    up AS (
        INSERT INTO lexical_stats AS t (scope, lexeme, df, len)
        SELECT scope, lexeme, sum(df), sum(len) FROM d
        GROUP BY scope, lexeme HAVING sum(df) <> 0 OR sum(len) <> 0
        ORDER BY scope, lexeme
        ON CONFLICT (scope, lexeme)
            DO UPDATE SET df = t.df + EXCLUDED.df, len = t.len + EXCLUDED.len
        RETURNING t.scope, t.lexeme, t.df
    )
    SELECT array_agg(scope), array_agg(lexeme) FROM up WHERE df <= 0
"""


def upgrade() -> None:
    op.create_table(
        "lexical_stats",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("lexeme", sa.Text(), nullable=False),
        sa.Column("df", sa.BigInteger(), nullable=False),
        sa.Column("len", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("scope", "lexeme", name=op.f("pk_lexical_stats")),
    )
    # Each branch names only the transition tables its trigger declares; PL/pgSQL plans a
    # statement when it first runs, so the other branches never see undeclared tables.
    op.execute(
        f"""
        CREATE FUNCTION lexical_stats_apply() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            gone_scopes text[];
            gone_lexemes text[];
        BEGIN
            IF TG_OP = 'INSERT' THEN
                WITH rows AS (SELECT user_id, chat_id, lexemes, 1 AS sign FROM new_rows)
                {_APPLY} INTO gone_scopes, gone_lexemes;
            ELSIF TG_OP = 'DELETE' THEN
                WITH rows AS (SELECT user_id, chat_id, lexemes, -1 AS sign FROM old_rows)
                {_APPLY} INTO gone_scopes, gone_lexemes;
            ELSE
                WITH rows AS (SELECT user_id, chat_id, lexemes, 1 AS sign FROM new_rows
                              UNION ALL
                              SELECT user_id, chat_id, lexemes, -1 FROM old_rows)
                {_APPLY} INTO gone_scopes, gone_lexemes;
            END IF;
            IF gone_scopes IS NOT NULL THEN
                DELETE FROM lexical_stats
                WHERE (scope, lexeme) IN (SELECT * FROM unnest(gone_scopes, gone_lexemes))
                  AND df <= 0;
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER embeddings_lexical_stats_insert AFTER INSERT ON embeddings "
        "REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_apply()"
    )
    op.execute(
        "CREATE TRIGGER embeddings_lexical_stats_update AFTER UPDATE ON embeddings "
        "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_apply()"
    )
    op.execute(
        "CREATE TRIGGER embeddings_lexical_stats_delete AFTER DELETE ON embeddings "
        "REFERENCING OLD TABLE AS old_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_apply()"
    )
    # TRUNCATE fires no row or statement DELETE triggers of its own kind: empty the counts too.
    op.execute(
        """
        CREATE FUNCTION lexical_stats_clear() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM lexical_stats;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER embeddings_lexical_stats_truncate AFTER TRUNCATE ON embeddings "
        "FOR EACH STATEMENT EXECUTE FUNCTION lexical_stats_clear()"
    )
    # What is already indexed.
    op.execute(
        f"""
        WITH rows AS (SELECT user_id, chat_id, lexemes, 1 AS sign FROM embeddings),
        d AS ({_DELTAS})
        INSERT INTO lexical_stats (scope, lexeme, df, len)
        SELECT scope, lexeme, sum(df), sum(len) FROM d GROUP BY scope, lexeme
        """
    )


def downgrade() -> None:
    for op_name in ("insert", "update", "delete", "truncate"):
        op.execute(f"DROP TRIGGER IF EXISTS embeddings_lexical_stats_{op_name} ON embeddings")
    op.execute("DROP FUNCTION IF EXISTS lexical_stats_apply()")
    op.execute("DROP FUNCTION IF EXISTS lexical_stats_clear()")
    op.drop_table("lexical_stats")
