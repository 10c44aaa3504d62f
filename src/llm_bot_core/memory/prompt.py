"""Prompt assembly in the spec's order: system, summary, recent messages, recalled facts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from llm_bot_core.llm.base import ChatMessage, Role
from llm_bot_core.memory.store import StoredMessage, Summary

SUMMARY_HEADER = "Summary of the earlier conversation:"
RECALL_HEADER = (
    "Recalled memory: fragments of earlier conversations with this user that may be relevant. "
    "Use them only if they help answer the last message."
)

_CHAT_ROLES: dict[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True, slots=True)
class RecalledFact:
    """A fragment found by semantic memory, with where and when it was said."""

    message_id: int
    role: str
    content: str
    created_at: datetime | None
    score: float


def build_prompt(
    system_prompt: str,
    summary: Summary | None,
    recent: Sequence[StoredMessage],
    facts: Sequence[RecalledFact] = (),
) -> list[ChatMessage]:
    """The messages sent to the chat model."""
    prompt: list[ChatMessage] = [{"role": "system", "content": system_prompt}]
    if summary is not None and summary.content.strip():
        prompt.append({"role": "system", "content": f"{SUMMARY_HEADER}\n{summary.content}"})
    for message in recent:
        # Tool output has no tool_call id to attach to here; it is shown as context instead.
        role = _CHAT_ROLES.get(message.role, "system")
        prompt.append({"role": role, "content": message.content})
    if facts:
        prompt.append({"role": "system", "content": format_facts(facts)})
    return prompt


def format_facts(facts: Sequence[RecalledFact]) -> str:
    lines = [RECALL_HEADER]
    for fact in facts:
        when = fact.created_at.strftime("%Y-%m-%d") if fact.created_at else "earlier"
        speaker = "user" if fact.role == "user" else "assistant"
        lines.append(f"- [{when}, {speaker}] {fact.content}")
    return "\n".join(lines)
