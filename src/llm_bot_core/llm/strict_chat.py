"""The one shape of prompt that strict chat templates accept, and a checker for it.

Servers that render the model's own chat template (vLLM, llama.cpp with --jinja, TGI) reject
what the template does not allow: the templates of Mistral, Gemma, Llama 2 and many fine-tunes
raise "Conversation roles must alternate user/assistant/user/assistant/..." and accept a system
message only first. Every prompt the project builds therefore is one system message, then
user/assistant turns that alternate, starting and ending with a user turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The text the Mistral/Llama 2 templates raise, as vLLM and llama.cpp pass it on.
ALTERNATION_ERROR = "Conversation roles must alternate user/assistant/user/assistant/..."


def chat_problems(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Why a strict chat template would reject these messages; empty when it accepts them."""
    if not messages:
        return ["the prompt is empty"]
    problems: list[str] = []
    if messages[0].get("role") != "system":
        problems.append(f"message 0 is {messages[0].get('role')!r}, not the system message")
    previous: str | None = None
    previous_index = 0
    for index, message in enumerate(messages):
        role = message.get("role")
        if not _has_text(message.get("content"), role):
            problems.append(f"message {index} ({role}) has no text content")
        if index == 0 and role == "system":
            continue
        if role == "system":
            problems.append(f"message {index} is a system message; only the first may be one")
            continue
        if role not in ("user", "assistant"):
            problems.append(f"message {index} has role {role!r}; only user and assistant turns")
            continue
        if previous is None and role != "user":
            problems.append(f"message {index} opens the conversation as {role}, not user")
        elif role == previous:
            problems.append(f"messages {previous_index} and {index} are both {role} turns")
        previous, previous_index = role, index
    if previous is None:
        problems.append("there is no user turn")
    elif previous != "user":
        problems.append("the prompt ends with an assistant turn, not the user's")
    return problems


def _has_text(content: Any, role: Any) -> bool:
    """Text, or (a user turn with pictures) OpenAI content parts holding a text part."""
    if isinstance(content, str):
        return True
    if role != "user" or not isinstance(content, list) or not content:
        return False
    kinds = [part.get("type") if isinstance(part, dict) else None for part in content]
    return "text" in kinds and all(kind in ("text", "image_url") for kind in kinds)


def assert_strict_chat(messages: Sequence[Mapping[str, Any]]) -> None:
    """Raise ValueError naming every problem if a strict chat template would reject `messages`."""
    problems = chat_problems(messages)
    if problems:
        raise ValueError(f"{ALTERNATION_ERROR}: " + "; ".join(problems))
