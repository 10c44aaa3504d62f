"""Fact extraction off the reply path: a user's new messages, in batches, into facts.

One model call per batch of FACTS_EVERY user messages of one chat. The call gets the batch and
the user's current facts most similar to it, and answers with operations: add a fact, update a
known one (the new version supersedes it), delete one (the user retracted it); saying nothing
about a fact means it is already known. One call instead of mem0's extract-then-decide pair:
half the calls, and the model sees the messages when it decides.

The watermark (`fact_extraction.last_message_id`, per user and chat) moves in the transaction
that writes the batch's facts, and only if it still is where the batch was read: a concurrent
job or a worker killed mid-batch can neither skip nor repeat a message. A malformed answer is
asked again once, then the batch is skipped (watermark moved, `skipped_batches` counted, a log
line and llmbot_fact_batches_total{outcome="skipped"}) so one bad batch cannot stall the user's
extraction forever; an unreachable model moves nothing and the job is retried.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.config import MemorySettings
from llm_bot_core.llm.base import ChatMessage, ChatModel, Completion, LLMBadResponse
from llm_bot_core.memory.facts import (
    insert_fact,
    is_duplicate,
    lock_user_facts,
    supersede,
)
from llm_bot_core.metrics import FACT_BATCHES, UsageAccount, metered_completion
from llm_bot_core.rag.base import DisabledSemanticMemory, SemanticMemory
from llm_bot_core.usage.ledger import UsageLedger

log = logging.getLogger(__name__)

EXTRACTION_SYSTEM_PROMPT = (
    "You keep a list of atomic facts about a user (name, family, work, home, health, "
    "preferences, plans, dates). You get the facts already known, each with its number, and "
    "the user's new messages, each with its number. Answer with JSON only: "
    '{"operations": [...]} where each operation is one of '
    '{"op": "add", "content": "<fact>", "importance": <0..1>, "messages": [<numbers>]}, '
    '{"op": "update", "fact": <known fact number>, "content": "<corrected fact>", '
    '"importance": <0..1>, "messages": [<numbers>]}, '
    '{"op": "delete", "fact": <known fact number>, "messages": [<numbers>]}. '
    "Add only facts the user states about themselves, one short sentence each, in the language "
    "the user writes in. Update a known fact when the new messages change it (a move, a new "
    "job); delete it when the user says it is not true any more. Say nothing about facts "
    'already known. No facts: {"operations": []}.'
)
SIMILAR_FACTS = 20

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["operations"],
    "properties": {
        "operations": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["op", "fact", "content", "importance", "messages"],
                "properties": {
                    "op": {"type": "string", "enum": ["add", "update", "delete"]},
                    "fact": {"type": ["integer", "null"]},
                    "content": {"type": ["string", "null"]},
                    "importance": {"type": ["number", "null"]},
                    "messages": {"type": "array", "items": {"type": "integer"}},
                },
            },
        }
    },
}
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {"name": "fact_operations", "strict": True, "schema": _SCHEMA},
}


class Operation(BaseModel):
    op: Literal["add", "update", "delete"]
    fact: int | None = None
    content: str | None = Field(default=None, max_length=2000)
    importance: float | None = None
    messages: list[int] = Field(default_factory=list)


class Operations(BaseModel):
    operations: list[Operation]


@dataclass(frozen=True, slots=True)
class Known:
    id: int
    content: str


@dataclass
class ExtractionRun:
    batches: int = 0
    skipped: int = 0
    added: int = 0
    updated: int = 0
    deleted: int = 0
    tokens: int = 0
    ignored: list[str] = field(default_factory=list)


# The other authors of a group chat with user messages past their watermark (a private chat has
# one author). Only sessions of the group: their messages carry authors.
_GROUP_AUTHORS = text(
    """
    SELECT m.user_id FROM messages m JOIN chat_sessions s ON s.id = m.session_id
    LEFT JOIN fact_extraction w ON w.user_id = m.user_id AND w.chat_id = s.chat_id
    WHERE s.chat_id = :chat_id AND s.chat_type <> 'private' AND m.role = 'user'
      AND m.user_id IS NOT NULL AND m.user_id <> :user_id
      AND m.id > coalesce(w.last_message_id, 0)
    GROUP BY m.user_id ORDER BY min(m.id)
    """
)
_ENSURE = text(
    "INSERT INTO fact_extraction (user_id, chat_id) VALUES (:user_id, :chat_id) "
    "ON CONFLICT DO NOTHING"
)
_WATERMARK = text(
    "SELECT last_message_id FROM fact_extraction WHERE user_id = :user_id AND chat_id = :chat_id"
)
_LOCK_WATERMARK = text(
    "SELECT last_message_id FROM fact_extraction "
    "WHERE user_id = :user_id AND chat_id = :chat_id FOR UPDATE"
)
# The user's own messages (their author, migration 0005) in this chat after the watermark, oldest
# first, with whether the chat is private (its sessions' kind).
_BATCH = text(
    """
    SELECT m.id, m.content, s.chat_type = 'private' FROM messages m
    JOIN chat_sessions s ON s.id = m.session_id
    WHERE m.user_id = :user_id AND s.chat_id = :chat_id AND m.role = 'user' AND m.id > :after
    ORDER BY m.id LIMIT :limit
    """
)
# Current facts by lexical similarity to the batch, then the newest: what the model must see
# to tell a correction or a repeat from a new fact. In a group, with FACTS_IN_GROUPS=false, only
# the facts learned there: private facts must not be copied into what the group's prompt shows.
_SIMILAR = text(
    """
    WITH q AS (
        SELECT to_tsquery('simple', nullif(string_agg(quote_literal(l), ' | '), '')) AS q
        FROM unnest(tsvector_to_array(to_tsvector(CAST(:cfg AS regconfig), :batch))) l
    )
    SELECT f.id, f.content FROM facts f CROSS JOIN q
    WHERE f.user_id = :user_id AND f.superseded_at IS NULL AND (:all_chats OR f.chat_id = :chat_id)
    ORDER BY coalesce(ts_rank(coalesce(f.lexemes, to_tsvector(CAST(:cfg AS regconfig), f.content)),
                              q.q), 0) DESC,
             f.created_at DESC, f.id DESC
    LIMIT :limit
    """
)
# Key-share locks on the batch's messages: erasing them waits for this transaction, and messages
# erased before it are not cited as any fact's source.
_KEEP_MESSAGES = text(
    "SELECT id FROM messages WHERE id = ANY(CAST(:ids AS bigint[])) FOR KEY SHARE"
)
_ADVANCE = text(
    """
    UPDATE fact_extraction SET last_message_id = :watermark, calls = calls + :calls,
        prompt_tokens = prompt_tokens + :prompt,
        completion_tokens = completion_tokens + :completion,
        skipped_batches = skipped_batches + :skipped, updated_at = now()
    WHERE user_id = :user_id AND chat_id = :chat_id
    """
)


def extraction_prompt(
    known: Sequence[Known], batch: Sequence[tuple[int, str]]
) -> list[ChatMessage]:
    """The request for one batch: known facts numbered by id, messages numbered 1..n."""
    facts = "\n".join(f"[{k.id}] {k.content}" for k in known) or "(none yet)"
    messages = "\n".join(f"[{i}] {content}" for i, (_, content) in enumerate(batch, 1))
    body = f"Known facts:\n{facts}\n\nNew messages of the user:\n{messages}"
    return [
        {"role": "system", "content": EXTRACTION_SYSTEM_PROMPT},
        {"role": "user", "content": body},
    ]


def parse_operations(answer: str) -> list[Operation]:
    """The operations of an answer; raises ValueError when it is not the promised JSON."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end < start:
        raise ValueError("no JSON object in the answer")
    try:
        return Operations.model_validate(orjson.loads(answer[start : end + 1])).operations
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ValueError(f"malformed operations: {exc}") from exc


async def extract_facts(
    engine: AsyncEngine,
    model: ChatModel,
    settings: MemorySettings,
    user_id: str,
    chat_id: str,
    *,
    fts_config: str,
    ledger: UsageLedger,
    semantic: SemanticMemory | None = None,
) -> ExtractionRun:
    """Extract facts from every full batch of the user's messages in a chat past the watermark,
    and in a group of every other member's with a full batch too.

    Idempotent and safe to run concurrently (see the module docstring).
    """
    run = ExtractionRun()
    if not settings.facts_every:
        return run
    semantic = semantic or DisabledSemanticMemory()
    # A group's message counter is the chat's, so the trigger lands on whoever spoke at that
    # moment: the job serves every member who has a full batch waiting.
    async with engine.connect() as conn:
        others = [
            r[0]
            for r in await conn.execute(_GROUP_AUTHORS, {"chat_id": chat_id, "user_id": user_id})
        ]
    for author in [user_id, *others]:
        # Each member's batch is their own cost (and counts against their daily budget).
        account = ledger.account(author, chat_id)
        await _extract_for(
            engine, model, settings, fts_config, author, chat_id, run, account, semantic
        )
    return run


async def _extract_for(
    engine: AsyncEngine,
    model: ChatModel,
    settings: MemorySettings,
    fts_config: str,
    user_id: str,
    chat_id: str,
    run: ExtractionRun,
    account: UsageAccount,
    semantic: SemanticMemory,
) -> None:
    every = settings.facts_every
    key = {"user_id": user_id, "chat_id": chat_id}
    while True:
        async with engine.connect() as conn:
            after = (await conn.execute(_WATERMARK, key)).scalar_one_or_none() or 0
            found = list(
                await conn.execute(
                    _BATCH, {"user_id": user_id, "chat_id": chat_id, "after": after, "limit": every}
                )
            )
            if len(found) < every:
                await conn.rollback()
                return
            batch = [(r[0], r[1]) for r in found]
            private = all(r[2] for r in found)
            known = await _similar(conn, settings, fts_config, user_id, chat_id, private, batch)
            await conn.rollback()  # no connection is held across the LLM call

        operations, completions = await _ask(
            model, settings, extraction_prompt(known, batch), account
        )
        # Near duplicates by meaning, checked before the write transaction: embedding is a
        # call out, and no connection is held across one.
        adds = [(op.content or "").strip() for op in operations or () if op.op == "add"]
        flags = await semantic.duplicate_facts(
            user_id,
            adds,
            threshold=settings.facts_duplicate_similarity,
            # The facts the model was shown: in a group, by default, only the group's own.
            chat_id=None if private or settings.facts_in_groups else chat_id,
        )
        said = {c for c, dup in zip(adds, flags, strict=True) if dup}
        async with engine.begin() as conn:
            # The user's lock first, as erasure takes it: whichever comes second sees the
            # other's result (erased facts, or facts to erase).
            await lock_user_facts(conn, user_id)
            await conn.execute(_ENSURE, key)
            current = (await conn.execute(_LOCK_WATERMARK, key)).scalar_one()
            spent = {
                "calls": len(completions),
                "prompt": sum(c.prompt_tokens or 0 for c in completions),
                "completion": sum(c.completion_tokens or 0 for c in completions),
            }
            if current != after:
                # Another job did this batch; what this one paid is still the user's cost.
                await conn.execute(_ADVANCE, {**key, **spent, "watermark": current, "skipped": 0})
                log.info(
                    "facts of %s in %s: batch after %s done by another job", user_id, chat_id, after
                )
                continue
            if operations is not None:
                alive = await conn.execute(_KEEP_MESSAGES, {"ids": [m for m, _ in batch]})
                present = {r[0] for r in alive}
                batch_left = [(m, c) for m, c in batch if m in present]
                await _apply(
                    conn,
                    run,
                    user_id,
                    None if private else chat_id,
                    batch,
                    batch_left,
                    known,
                    operations,
                    fts_config,
                    said,
                )
            await conn.execute(
                _ADVANCE,
                {
                    **key,
                    **spent,
                    "watermark": batch[-1][0],
                    "skipped": int(operations is None),
                },
            )
        run.batches += 1
        run.tokens += sum((c.prompt_tokens or 0) + (c.completion_tokens or 0) for c in completions)
        if operations is None:
            run.skipped += 1
            FACT_BATCHES.labels("skipped").inc()
            log.warning(
                "facts of %s in %s: malformed answers twice, skipped messages %s-%s",
                user_id,
                chat_id,
                batch[0][0],
                batch[-1][0],
            )
        else:
            FACT_BATCHES.labels("ok").inc()


async def _similar(
    conn: AsyncConnection,
    settings: MemorySettings,
    fts_config: str,
    user_id: str,
    chat_id: str,
    private: bool,
    batch: Sequence[tuple[int, str]],
) -> list[Known]:
    rows = await conn.execute(
        _SIMILAR,
        {
            "cfg": fts_config,
            "batch": "\n".join(c for _, c in batch),
            "user_id": user_id,
            "all_chats": private or settings.facts_in_groups,
            "chat_id": chat_id,
            "limit": SIMILAR_FACTS,
        },
    )
    return [Known(r[0], r[1]) for r in rows]


async def _ask(
    model: ChatModel, settings: MemorySettings, prompt: list[ChatMessage], account: UsageAccount
) -> tuple[list[Operation] | None, list[Completion]]:
    """The operations, or None after two unusable answers. The first try asks for structured
    output; a provider that refuses it (4xx) or an unparsable answer gets one plain retry."""
    completions: list[Completion] = []
    for response_format in (RESPONSE_FORMAT, None):
        try:
            completion = await metered_completion(
                model,
                "facts",
                prompt,
                account=account,
                model=settings.effective_facts_model,
                response_format=response_format,
            )
        except LLMBadResponse as exc:
            log.info("fact extraction answer unusable (%s)", exc)
            continue
        completions.append(completion)
        try:
            return parse_operations(completion.text), completions
        except ValueError as exc:
            log.info("fact extraction answer malformed (%s)", exc)
    return None, completions


async def _apply(
    conn: AsyncConnection,
    run: ExtractionRun,
    user_id: str,
    scope: str | None,
    batch: Sequence[tuple[int, str]],
    present: Sequence[tuple[int, str]],
    known: Sequence[Known],
    operations: Sequence[Operation],
    fts_config: str,
    said: Set[str] = frozenset(),
) -> None:
    # `scope`: facts learned in a private chat carry no chat; a group's carry it, so the
    # group's prompt can show only those.
    known_ids = {k.id for k in known}
    contents = [k.content for k in known]
    alive = {m for m, _ in present}
    for op in operations:
        cited = [batch[i - 1][0] for i in op.messages if 1 <= i <= len(batch)]
        sources = [m for m in cited or [m for m, _ in batch] if m in alive]
        if not sources:
            run.ignored.append(f"{op.op} drawn from erased messages")
            continue
        importance = 0.5 if op.importance is None else op.importance
        content = (op.content or "").strip()
        if op.op == "delete":
            if op.fact in known_ids and await supersede(conn, user_id, op.fact, successor=None):
                run.deleted += 1
            else:
                run.ignored.append(f"delete of unknown fact {op.fact}")
            continue
        if not content or is_duplicate(content, contents):
            run.ignored.append(f"{op.op} of a known or empty fact: {content[:80]!r}")
            continue
        if op.op == "add" and content in said:
            # Only adds: a correction is close to what it corrects by design.
            run.ignored.append(f"add of a near duplicate by meaning: {content[:80]!r}")
            continue
        new = await insert_fact(
            conn,
            user_id,
            content,
            source="extracted",
            importance=importance,
            fts_config=fts_config,
            chat_id=scope,
            message_ids=sources,
        )
        contents.append(content)
        if op.op == "update" and op.fact in known_ids:
            await supersede(conn, user_id, op.fact, successor=new.id)
            run.updated += 1
        else:
            run.added += 1
