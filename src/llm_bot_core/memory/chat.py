"""The chat use case: store the message, assemble memory, ask the model, store the reply."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from llm_bot_core.background import BackgroundTasks
from llm_bot_core.config import MemorySettings, PictureSettings
from llm_bot_core.errors import CoreError
from llm_bot_core.llm.base import ChatMessage, ChatModel, Completion
from llm_bot_core.memory import store
from llm_bot_core.memory.facts import Profile, read_profile, related_facts
from llm_bot_core.memory.jobs import JobQueue
from llm_bot_core.memory.personas import Persona, PersonaCache
from llm_bot_core.memory.pictures import Picture, picture_text, record_pictures, with_pictures
from llm_bot_core.memory.prompt import GROUP_PROFILE_HEADER, PROFILE_HEADER, build_prompt
from llm_bot_core.memory.query_rewrite import QueryRewriter
from llm_bot_core.memory.speakers import GROUP_NOTE, chat_type_of, label_facts, label_turns
from llm_bot_core.memory.streaming import ReplyStream, ReplyText
from llm_bot_core.metrics import metered_completion, metered_stream
from llm_bot_core.rag.base import SemanticMemory
from llm_bot_core.usage.budget import Budgets
from llm_bot_core.usage.ledger import Account, UsageLedger

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    text: str
    session_id: uuid.UUID
    user_message_id: int
    assistant_message_id: int
    llm_seconds: float


@dataclass(frozen=True, slots=True)
class UserMessage:
    """A user's message, as `handle` and `stream` take it.

    `chat_type` None: the chat is private when its id is the user's id, else a group.
    `input_mode` "voice": `text` is a transcript; stored so, and marked so in the prompt.
    `pictures` (checked by memory/pictures.py) reach the model as image parts; `text` is
    then their caption and may be empty."""

    user_id: str
    chat_id: str
    text: str
    chat_type: str | None = None
    user_name: str | None = None
    input_mode: str = "text"
    pictures: Sequence[Picture] = ()


@dataclass(frozen=True, slots=True)
class _Turn:
    """A stored user message and the prompt that answers it."""

    user: store.Appended
    prompt: list[ChatMessage]
    user_id: str
    """Who wrote the message: the answer is stored as answering them."""
    chat_id: str
    account: Account
    persona: Persona
    pictures: int = 0
    """How many pictures the message carries (their description is queued after it)."""
    model: str | None = None
    """VISION_MODEL for a message with pictures (it reads them); else the persona's model."""

    def llm_options(self) -> dict[str, Any]:
        """The model and the persona's temperature; None leaves the configured ones."""
        return {
            "model": self.model or self.persona.model,
            "temperature": self.persona.temperature,
        }


class ChatService:
    """Handles one user message end to end; holds no DB connection while the model thinks."""

    def __init__(
        self,
        *,
        engine: AsyncEngine,
        model: ChatModel,
        semantic: SemanticMemory,
        jobs: JobQueue,
        settings: MemorySettings,
        ledger: UsageLedger,
        budgets: Budgets,
        fts_config: str,
        personas: PersonaCache,
        pictures: PictureSettings | None = None,
        data_dir: Path = Path("data"),
        rewriter: QueryRewriter | None = None,
    ) -> None:
        # Each statement of the use case is atomic on its own, so autocommit saves the
        # BEGIN/COMMIT round trips without weakening any invariant.
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._model = model
        self._semantic = semantic
        self._jobs = jobs
        self._settings = settings
        # The text search configuration of semantic memory (RAG_FTS_CONFIG): facts are
        # ranked against the message with the same one.
        self._fts_config = fts_config
        self._streams = BackgroundTasks(_log_failure)
        self._ledger = ledger
        self._budgets = budgets
        self._pictures = pictures or PictureSettings()
        self._data_dir = data_dir  # KEEP_IMAGES keeps pictures under it
        self._personas = personas
        # RAG_QUERY_REWRITE: None when off (no model call before recall) or semantic memory is.
        self._rewriter = rewriter if semantic.enabled else None

    async def handle(self, message: UserMessage) -> Reply:
        """Answer a user message; the user message is stored even if the model then fails.

        Raises UserBlocked or BudgetExceeded, storing nothing, when the user may not write."""
        turn = await self._begin(message)
        try:
            completion = await metered_completion(
                self._model, "chat", turn.prompt, account=turn.account, **turn.llm_options()
            )
        finally:
            # Queued whatever happens: the user message counts towards the summary and is
            # worth remembering even when the model failed to answer it.
            self._after_store(turn.user, turn)
        answer = completion.text[: self._settings.max_reply_chars]
        return await self._finish(turn, answer, completion)

    async def stream(self, message: UserMessage) -> ReplyStream[Reply]:
        """Answer a user message as it is generated: deltas, then the stored Reply.

        The memory effects are those of `handle`. The generation does not depend on the reader:
        if it goes away, the answer is still completed and stored (as `handle` stores an answer
        whose client hung up). A model failure mid-answer stores no assistant message, so
        nothing half-written is kept; the user message stays, as after a failed `handle`.
        """
        turn = await self._begin(message)
        reply: ReplyStream[Reply] = ReplyStream()
        self._streams.spawn(reply.produce(self._generate(turn, reply)), name="chat.stream")
        return reply

    async def finish_within(self, grace: float) -> None:
        """At shutdown: answers still being generated get `grace` seconds to be stored; the
        rest are cancelled, which stores no assistant message (as a failed model call)."""
        await self._streams.finish_within(grace)

    async def _generate(self, turn: _Turn, reply: ReplyStream[Reply]) -> Reply:
        text = ReplyText(self._settings.max_reply_chars)
        completion: Completion | None = None
        started = time.perf_counter()
        try:
            # Read to the end even once MAX_REPLY_CHARS is reached: the usage chunk comes last.
            async for item in metered_stream(
                self._model, "chat", turn.prompt, account=turn.account, **turn.llm_options()
            ):
                if isinstance(item, Completion):
                    completion = item
                    continue
                if reply.first_delta_seconds is None:
                    reply.first_delta_seconds = time.perf_counter() - started
                piece = text.feed(item)
                if piece:
                    reply.push(piece)
        finally:
            self._after_store(turn.user, turn)
        assert completion is not None  # a stream ends with its Completion or raises
        return await self._finish(turn, text.text, completion)

    async def _begin(self, message: UserMessage) -> _Turn:
        """Store the user message and build the prompt from the chat's memory; refuse (storing
        nothing) a blocked user or one whose day's budget is spent."""
        settings = self._settings
        user_id, chat_id, pictures = message.user_id, message.chat_id, message.pictures
        day_start, _ = self._budgets.window()
        gate = store.Gate(
            day_start=day_start,
            default_limit=self._budgets.default_limit,
            pending_tokens=self._budgets.pending_tokens(user_id, day_start),
        )
        caption = text = message.text
        if pictures:
            # Stored as a line per picture and the caption; the description job fills them in.
            text = picture_text(caption, [None] * len(pictures))
        try:
            async with self._autocommit.connect() as conn:
                user, summary, recent = await store.append_user_message_with_context(
                    conn,
                    user_id=user_id,
                    chat_id=chat_id,
                    content=text,
                    limit=max(settings.short_history_limit, 1),
                    chat_type=chat_type_of(message.chat_type, user_id=user_id, chat_id=chat_id),
                    user_name=message.user_name,
                    gate=gate,
                    input_mode=message.input_mode,
                )
                if pictures:
                    await record_pictures(
                        conn,
                        message_id=user.message_id,
                        session_id=user.session_id,
                        caption=caption,
                        pictures=pictures,
                        settings=self._pictures,
                        data_dir=self._data_dir,
                    )
                profile = await self._profile(
                    conn, user, user_id=user_id, chat_id=chat_id, text=text
                )
                persona = await self._personas.for_chat(conn, chat_id)
        except store.Refused as refused:
            raise self._budgets.refusal(
                blocked=refused.blocked, spent=refused.spent, limit=refused.limit
            ) from None
        if settings.short_history_limit == 0:
            recent = recent[-1:]  # the window is off, but the model must see the question

        account = self._ledger.account(user_id, chat_id)
        rewrite = None
        if self._rewriter is not None:
            # The message's own words (a picture's caption): no call for a bare picture.
            rewrite = await self._rewriter.rewrite(
                caption if pictures else text,
                [m for m in recent if m.id != user.message_id],
                account=account,
                chat_model=persona.model,
            )
        # The session's kind decides, not this request's: a client cannot turn a group's
        # session into a private one and pull someone's private memory into the group.
        facts = await self._semantic.recall(
            user_id=user_id,
            chat_id=chat_id,
            private=user.private,
            session_id=user.session_id,
            query=text,
            exclude_message_ids=[m.id for m in recent],
            fact_ids=profile.overflow_ids,
            rewrite=rewrite,
        )
        # Facts past the profile's budget, by shared words and by meaning; the profile's own
        # facts are never among them.
        related, facts = related_facts(profile.related, facts)
        # The chat's persona (/mode) or the default one; operators edit them without a restart.
        system_prompt, profile_header = persona.instruction, PROFILE_HEADER
        if not user.private:
            system_prompt = f"{system_prompt}\n\n{GROUP_NOTE}"
            profile_header = GROUP_PROFILE_HEADER
            recent, facts = label_turns(recent), label_facts(facts)
        prompt = build_prompt(
            system_prompt,
            summary,
            recent,
            [*related, *facts],
            profile.lines,
            profile_header,
        )
        return _Turn(
            user,
            with_pictures(prompt, pictures),
            user_id=user_id,
            chat_id=chat_id,
            account=account,
            pictures=len(pictures),
            model=self._pictures.vision_model if pictures else None,
            persona=persona,
        )

    async def _finish(self, turn: _Turn, answer: str, completion: Completion) -> Reply:
        """Store the answer in the turn's session and queue its memory jobs."""
        async with self._autocommit.connect() as conn:
            assistant = await store.append_message_to_session(
                conn,
                session_id=turn.user.session_id,
                role="assistant",
                content=answer,
                tokens=completion.completion_tokens,
                user_id=turn.user_id,
            )
        if assistant is None:  # the session was deleted while the model was answering
            raise SessionGone(turn.user.session_id)
        self._after_store(assistant, turn)
        return Reply(
            text=answer,
            session_id=turn.user.session_id,
            user_message_id=turn.user.message_id,
            assistant_message_id=assistant.message_id,
            llm_seconds=completion.seconds,
        )

    async def reset(
        self, *, chat_id: str | None = None, session_id: uuid.UUID | None = None
    ) -> int:
        """Close the active session of a chat, or one session by id; returns how many closed."""
        async with self._autocommit.connect() as conn:
            if chat_id is not None:
                closed = await store.close_sessions_of_chat(conn, chat_id)
            elif session_id is not None:
                closed = await store.close_session(conn, session_id)
            else:  # pragma: no cover - the API schema requires one of them
                raise ValueError("chat_id or session_id is required")
        return len(closed)

    async def _profile(
        self, conn: AsyncConnection, user: store.Appended, *, user_id: str, chat_id: str, text: str
    ) -> Profile:
        settings = self._settings
        # In a group the profile is the current speaker's, and by default only what they said
        # in that group: facts from private chats stay private. The session's kind decides,
        # not the request's (as for recall).
        return await read_profile(
            conn,
            user_id=user_id,
            chat_id=chat_id,
            all_chats=user.private or settings.facts_in_groups,
            fts_config=self._fts_config,
            message=text,
            budget=settings.profile_tokens,
        )

    def _after_store(self, appended: store.Appended, turn: _Turn) -> None:
        self._jobs.index([appended.message_id])
        if turn.pictures and appended is turn.user and self._pictures.describing:
            self._jobs.describe_pictures([appended.message_id])
        if appended.messages_since_summary >= self._settings.summary_threshold:
            self._jobs.summarize(appended.session_id, appended.messages_since_summary)
        every = self._settings.facts_every
        # The counter passes every value between two summaries, and a user message and its
        # answer are two of them: this fires about once per FACTS_EVERY user messages. The job
        # counts what is really pending past its watermark, so a missed trigger costs nothing.
        if every and appended.messages_since_summary % (2 * every) == 0:
            self._jobs.extract_facts(turn.user_id, turn.chat_id)


def _log_failure(task: asyncio.Task[Any], exc: BaseException) -> None:
    # ReplyStream hands the answer's own failures to its reader: this is a bug.
    log.error("%s failed: %r", task.get_name(), exc, exc_info=exc)


class SessionGone(CoreError):
    """The session a reply belongs to was deleted (e.g. by an operator) mid-request."""

    code = "session_gone"

    def __init__(self, session_id: uuid.UUID) -> None:
        super().__init__(f"session {session_id} was deleted while the answer was generated")
