"""Who is who in a chat: the kind of a chat, and speaker labels for group prompts."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from llm_bot_core.memory.store import StoredMessage
from llm_bot_core.rag.base import RecalledFact

GROUP_NOTE = (
    "This is a group chat with several people. A message whose sender is known starts with "
    "their name in square brackets; answer the person who wrote the last message, and do not "
    "attribute one person's words to another."
)

_UNSAFE = re.compile(r"[\[\]\s]+")


def chat_type_of(chat_type: str | None, *, user_id: str, chat_id: str) -> str:
    """The chat's kind; without one, a chat whose id is the user's id is private (as Telegram's
    private chats are) and any other is a group."""
    if chat_type is not None:
        return chat_type
    return "private" if chat_id == user_id else "group"


def speaker(user_name: str | None) -> str | None:
    """A one-line label from the display name the client gave; None without one (a user id
    would be no name, and a client that sends none keeps its prompts as they were)."""
    name = _UNSAFE.sub(" ", user_name or "").strip()[:64]
    return name or None


def labelled(content: str, user_name: str | None) -> str:
    """ "[Name] content", or the content as it is when the speaker has no name."""
    name = speaker(user_name)
    return f"[{name}] {content}" if name else content


def label_turns(recent: Sequence[StoredMessage]) -> list[StoredMessage]:
    """User turns of a group read "[Name] text", so the model knows who said what."""
    return [
        dataclasses.replace(m, content=labelled(m.content, m.user_name)) if m.role == "user" else m
        for m in recent
    ]


def label_facts(facts: Sequence[RecalledFact]) -> list[RecalledFact]:
    """Recalled group messages carry their speaker's name the same way."""
    return [
        dataclasses.replace(f, content=labelled(f.content, f.user_name)) if f.role == "user" else f
        for f in facts
    ]
