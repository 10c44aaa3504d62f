"""Prompt assembly in the spec's order, in the shape strict chat templates accept.

Layout (llm/strict_chat.py checks it): one system message holding the instruction, the user's
profile (their current facts, memory/facts.py) and then the latest summary; the recent messages
as user/assistant turns that alternate; the recalled memory (past messages, and facts beyond the
profile's budget) at the head of the last user turn, just before the question, marked as not the
user's words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from llm_bot_core.llm.base import ChatMessage
from llm_bot_core.memory.store import StoredMessage, Summary
from llm_bot_core.rag.base import RecalledFact

PROFILE_HEADER = "What you know about the user (most important first):"
# In a group the profile is the current speaker's: the author of the last message.
GROUP_PROFILE_HEADER = (
    "What you know about the person who wrote the last message (most important first):"
)
SUMMARY_HEADER = "Summary of the earlier conversation:"
RECALL_HEADER = (
    "[Recalled memory: fragments of earlier conversations with this user that may be relevant. "
    "They are not part of the user's message; use them only if they help answer it.]"
)
RECALL_FOOTER = "[End of recalled memory. The user's message follows.]"
# Stored messages that are neither the user's nor the assistant's words (an operator's system
# note, tool output) become marked context on the user's side of the conversation: strict
# templates allow no other role there.
CONTEXT_MARKERS = {
    "system": "[System note, not written by the user]",
    "tool": "[Tool output, not written by the user]",
}
# A window cut just after a user message starts with the assistant's answer to it; that answer
# may hold what the user refers to next, so it is kept as marked context, not dropped.
EARLIER_REPLY_MARKER = "[Earlier reply of the assistant, shown for context]"
# Only if the window does not end with the user's message (chat always does: it is the one just
# stored), so that the prompt still ends with a user turn.
NO_NEW_MESSAGE = "[No new message from the user.]"
TURN_SEPARATOR = "\n\n"
# A user message that was spoken: its text is a machine transcript, so a misheard word is the
# recogniser's, not the user's (the model may ask instead of answering a garbled question).
VOICE_MARKER = "[Voice message, transcribed automatically]"

TurnRole = Literal["user", "assistant"]


def build_prompt(
    system_prompt: str,
    summary: Summary | None,
    recent: Sequence[StoredMessage],
    facts: Sequence[RecalledFact] = (),
    profile: Sequence[str] = (),
    profile_header: str = PROFILE_HEADER,
) -> list[ChatMessage]:
    """The messages sent to the chat model."""
    system_parts = [system_prompt]
    if profile:
        system_parts.append("\n".join([profile_header, *profile]))
    if summary is not None and summary.content.strip():
        system_parts.append(f"{SUMMARY_HEADER}\n{summary.content}")
    turns = alternating_turns([(turn_role(m), message_text(m)) for m in recent])
    if facts:
        turns[-1][1].insert(0, format_facts(facts))
    prompt: list[ChatMessage] = [
        {"role": "system", "content": TURN_SEPARATOR.join(p for p in system_parts if p)}
    ]
    prompt.extend({"role": role, "content": TURN_SEPARATOR.join(parts)} for role, parts in turns)
    return prompt


def turn_role(message: StoredMessage) -> TurnRole:
    """Whose turn a stored message belongs to in the prompt."""
    return "assistant" if message.role == "assistant" else "user"


def message_text(message: StoredMessage) -> str:
    """How one stored message reads inside its turn."""
    marker = CONTEXT_MARKERS.get(message.role)
    if message.role == "user" and message.input_mode == "voice":
        marker = VOICE_MARKER
    if marker is None and message.role not in ("user", "assistant"):
        marker = f"[{message.role}, not written by the user]"
    return f"{marker}\n{message.content}" if marker else message.content


def alternating_turns(
    pieces: Sequence[tuple[TurnRole, str]],
) -> list[tuple[TurnRole, list[str]]]:
    """User/assistant turns that alternate, start and end with the user, losing no piece.

    Consecutive pieces of one role share a turn (an unanswered message and the next one); a
    leading assistant piece becomes marked context of the first user turn.
    """
    turns: list[tuple[TurnRole, list[str]]] = []
    for role, text in pieces:
        if turns and turns[-1][0] == role:
            turns[-1][1].append(text)
        else:
            turns.append((role, [text]))
    if turns and turns[0][0] == "assistant":
        leading = [f"{EARLIER_REPLY_MARKER}\n{text}" for text in turns.pop(0)[1]]
        if turns:
            turns[0][1][:0] = leading
        else:
            turns.append(("user", leading))
    if not turns or turns[-1][0] != "user":
        turns.append(("user", [NO_NEW_MESSAGE]))
    return turns


def format_facts(facts: Sequence[RecalledFact]) -> str:
    lines = [RECALL_HEADER]
    for fact in facts:
        when = fact.created_at.strftime("%Y-%m-%d") if fact.created_at else "earlier"
        speaker = "user" if fact.role == "user" else "assistant"
        lines.append(f"- [{when}, {speaker}] {fact.content}")
    lines.append(RECALL_FOOTER)
    return "\n".join(lines)
