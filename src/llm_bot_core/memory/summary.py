"""Progressive summaries: each version covers only the messages after the previous watermark."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.config import MemorySettings
from llm_bot_core.llm.base import ChatMessage, ChatModel
from llm_bot_core.memory.speakers import speaker
from llm_bot_core.memory.store import StoredMessage, Summary
from llm_bot_core.metrics import metered_completion
from llm_bot_core.usage.ledger import UsageLedger

log = logging.getLogger(__name__)

SUMMARY_SYSTEM_PROMPT = (
    "You maintain a running summary of a conversation between a user and an assistant (or, in "
    "a group chat, several people named in brackets: keep who said what). "
    "You get the previous summary (possibly empty) and the new messages. Write the updated "
    "summary in the language the user writes in: keep facts about the user (names, "
    "preferences, plans, dates), decisions, promises and open questions; drop small talk. "
    "Write plain prose or short bullet points, at most 300 words, nothing else."
)

_LATEST = text(
    "SELECT version, content, last_message_id FROM conversation_summaries "
    "WHERE session_id = :session_id ORDER BY version DESC LIMIT 1"
)
# In a group, the user turns are named by their speakers (see summary_prompt).
_CHUNK = text(
    "SELECT m.id, m.role, m.content, m.user_id, m.user_name, s.chat_type <> 'private' "
    "FROM messages m JOIN chat_sessions s ON s.id = m.session_id "
    "WHERE m.session_id = :session_id AND m.id > :after ORDER BY m.id LIMIT :limit"
)
_OWNER = text("SELECT user_id, chat_id FROM chat_sessions WHERE id = :session_id")
_PENDING = text("SELECT count(*) FROM messages WHERE session_id = :session_id AND id > :after")
_LOCK_SESSION = text("SELECT id FROM chat_sessions WHERE id = :session_id FOR UPDATE")
_INSERT = text(
    "INSERT INTO conversation_summaries (session_id, version, content, last_message_id) "
    "VALUES (:session_id, :version, :content, :last_message_id) "
    "ON CONFLICT (session_id, version) DO NOTHING RETURNING id"
)
# Runs after the row lock: under READ COMMITTED this statement sees every message whose
# counter increment committed before us, so the counter equals the true backlog.
_RECOUNT = text(
    "UPDATE chat_sessions SET messages_since_summary = "
    "(SELECT count(*) FROM messages WHERE session_id = :session_id AND id > :after) "
    "WHERE id = :session_id"
)


@dataclass(frozen=True, slots=True)
class SummaryRun:
    versions_written: int
    pending_after: int


def summary_prompt(
    previous: Summary | None, chunk: Sequence[StoredMessage], *, group: bool = False
) -> list[ChatMessage]:
    """The request that turns the previous summary and a chunk of messages into the next one.

    In a group, user turns are named by their speakers (when the client gave their names), so
    the summary keeps who said what."""
    lines = [
        f"[{(speaker(m.user_name) if group and m.role == 'user' else None) or m.role}] {m.content}"
        for m in chunk
    ]
    previous_text = previous.content if previous else "(none yet)"
    body = f"Previous summary:\n{previous_text}\n\nNew messages:\n" + "\n".join(lines)
    return [
        {"role": "system", "content": SUMMARY_SYSTEM_PROMPT},
        {"role": "user", "content": body},
    ]


async def summarize_session(
    engine: AsyncEngine,
    model: ChatModel,
    settings: MemorySettings,
    session_id: uuid.UUID,
    *,
    ledger: UsageLedger,
) -> SummaryRun:
    """Write summary versions until fewer than SUMMARY_THRESHOLD messages remain unsummarized.

    Idempotent and safe to run concurrently: a version is written only if the one it extends is
    still the latest (unique session_id+version), so no message is summarized twice or skipped.
    """
    written = 0
    async with engine.connect() as conn:
        owner = (await conn.execute(_OWNER, {"session_id": session_id})).first()
    if owner is None:
        return SummaryRun(versions_written=0, pending_after=0)  # deleted before we started
    # The summary is made for the session's user: it counts towards their day's budget.
    account = ledger.account(owner[0], owner[1])
    while True:
        async with engine.connect() as conn:
            latest_row = (await conn.execute(_LATEST, {"session_id": session_id})).first()
            previous = Summary(*latest_row) if latest_row else None
            after = previous.last_message_id if previous else 0
            pending = (
                await conn.execute(_PENDING, {"session_id": session_id, "after": after})
            ).scalar_one()
            if pending < settings.summary_threshold:
                await conn.rollback()
                if written == 0:
                    # Queued on a counter that overstated the backlog (set by hand, say): put
                    # it back to the truth, or it keeps queueing jobs like this one, and the
                    # queue's memo of it (dispatch.py) holds back the job that is due later.
                    async with engine.begin() as tx:
                        await tx.execute(_LOCK_SESSION, {"session_id": session_id})
                        # Under the lock summaries are written: the watermark is final here.
                        latest = (await tx.execute(_LATEST, {"session_id": session_id})).first()
                        current = latest[2] if latest else 0
                        await tx.execute(_RECOUNT, {"session_id": session_id, "after": current})
                return SummaryRun(versions_written=written, pending_after=pending)
            rows = list(
                await conn.execute(
                    _CHUNK,
                    {
                        "session_id": session_id,
                        "after": after,
                        "limit": settings.summary_new_messages_limit,
                    },
                )
            )
            group = bool(rows and rows[0][5])
            chunk = [
                StoredMessage(id=r[0], role=r[1], content=r[2], user_id=r[3], user_name=r[4])
                for r in rows
            ]
            await conn.rollback()  # no connection is held across the LLM call

        completion = await metered_completion(
            model,
            "summary",
            summary_prompt(previous, chunk, group=group),
            account=account,
            model=settings.summary_model,
        )
        version = (previous.version if previous else 0) + 1
        watermark = chunk[-1].id
        try:
            async with engine.begin() as conn:
                if (await conn.execute(_LOCK_SESSION, {"session_id": session_id})).first() is None:
                    return SummaryRun(versions_written=written, pending_after=0)  # deleted
                inserted = (
                    await conn.execute(
                        _INSERT,
                        {
                            "session_id": session_id,
                            "version": version,
                            "content": completion.text,
                            "last_message_id": watermark,
                        },
                    )
                ).first()
                if inserted is None:
                    # Another job wrote this version first; re-read and continue from its watermark.
                    log.info(
                        "summary v%s of %s already written by another job", version, session_id
                    )
                    continue
                await conn.execute(_RECOUNT, {"session_id": session_id, "after": watermark})
        except IntegrityError:  # the session vanished between the lock and the insert
            return SummaryRun(versions_written=written, pending_after=0)
        written += 1
        log.info(
            "summary v%s of session %s covers %d messages up to id %d",
            version,
            session_id,
            len(chunk),
            watermark,
        )
