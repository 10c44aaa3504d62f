"""LLM Markdown → Telegram HTML, split into messages Telegram accepts.

Telegram takes at most 4096 characters per message and rejects HTML whose tags it cannot
parse. Splitting works on the rendered HTML: a message ends at the best boundary that fits
(paragraph, line, sentence, word), every tag still open is closed at its end and reopened at
the start of the next one, so each message — code blocks included — is complete markup.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass

from chatgpt_md_converter import telegram_format

log = logging.getLogger(__name__)

TELEGRAM_MAX_CHARS = 4096

# Tags Telegram's HTML parse mode understands.
ALLOWED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
    }
)
_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]*)((?:\s[^<>]*)?)>")
_TOKEN = re.compile(r"<[^<>]*>|&(?:#[0-9]{1,7}|#x[0-9a-fA-F]{1,6}|[a-zA-Z]{2,8});|[<>&]|[^<>&]")
_SENTENCE_END = frozenset(".!?…;:")


class HtmlError(ValueError):
    """The text is not HTML that Telegram's parser would accept."""


@dataclass(frozen=True, slots=True)
class _Atom:
    html: str
    kind: str  # "open", "close" or "text"
    name: str = ""  # tag name for "open" and "close"
    char: str = ""  # what a text atom shows (an entity decoded)

    @property
    def size(self) -> int:
        return utf16_len(self.html)


def utf16_len(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def _atoms(markup: str) -> list[_Atom]:
    atoms: list[_Atom] = []
    stack: list[str] = []
    for token in _TOKEN.findall(markup):
        if token.startswith("<") and len(token) > 1:
            match = _TAG.fullmatch(token)
            if match is None:
                raise HtmlError(f"malformed tag {token!r}")
            closing, name, attrs = match.group(1), match.group(2).lower(), match.group(3)
            if name not in ALLOWED_TAGS:
                raise HtmlError(f"unsupported tag <{name}>")
            if closing:
                if not stack or stack[-1] != name:
                    raise HtmlError(f"</{name}> does not close the innermost open tag")
                stack.pop()
                atoms.append(_Atom(token, "close", name))
            else:
                if name == "a" and "href=" not in attrs:
                    raise HtmlError("<a> without href")
                stack.append(name)
                atoms.append(_Atom(token, "open", name))
        elif token in ("<", ">", "&"):
            raise HtmlError(f"unescaped {token!r}")
        else:
            atoms.append(_Atom(token, "text", char=html.unescape(token)))
    if stack:
        raise HtmlError(f"unclosed <{stack[-1]}>")
    return atoms


def check_html(markup: str) -> None:
    """Raise HtmlError unless `markup` is balanced HTML of Telegram's supported tags."""
    _atoms(markup)


def to_plain(markup: str) -> str:
    """The text a reader sees: tags dropped, entities decoded."""
    return html.unescape(re.sub(r"<[^<>]*>", "", markup))


def markdown_to_html(markdown: str) -> str:
    """Telegram HTML for an LLM's Markdown; the escaped source when conversion goes wrong."""
    try:
        rendered = telegram_format(markdown)
        check_html(rendered)
    except Exception as exc:  # the converter is regex-based: any odd input must still be sent
        log.info("markdown not converted (%s); sending it as plain text", exc)
        return html.escape(markdown, quote=False)
    return rendered


def split_html(markup: str, limit: int = TELEGRAM_MAX_CHARS) -> list[str]:
    """Valid HTML messages of at most `limit` UTF-16 units whose texts add up to `markup`'s."""
    if limit < 64:
        raise ValueError("limit must be at least 64")
    try:
        return _split(_atoms(markup), limit)
    except _NoProgress:
        # A single tag longer than a message (a huge link): keep the words, drop the markup.
        return _split(_atoms(html.escape(to_plain(markup), quote=False)), limit)


def format_answer(markdown: str, limit: int = TELEGRAM_MAX_CHARS) -> list[str]:
    """The messages to send for an answer: rendered, split, blank ones dropped."""
    return split_html(markdown_to_html(markdown), limit)


class _NoProgress(Exception):
    pass


def _split(atoms: list[_Atom], limit: int) -> list[str]:
    n = len(atoms)
    # Open tags before each position, and the cumulative size of the atoms up to it.
    stacks: list[tuple[_Atom, ...]] = [()]
    sizes = [0]
    for atom in atoms:
        stack = stacks[-1]
        if atom.kind == "open":
            stack = (*stack, atom)
        elif atom.kind == "close":
            stack = stack[:-1]
        stacks.append(stack)
        sizes.append(sizes[-1] + atom.size)
    priorities = [_boundary_priority(atoms, stacks, p) for p in range(n + 1)]

    chunks: list[str] = []
    start = 0
    while start < n:
        opening = "".join(a.html for a in stacks[start])
        base = utf16_len(opening) - sizes[start]
        end = _furthest_fit(stacks, sizes, base, start, n, limit)
        if end < n:
            end = _best_cut(priorities, start, end)
        if end <= start:
            raise _NoProgress
        body = "".join(a.html for a in atoms[start:end])
        chunk = (opening + body + _closing(stacks[end])).strip()
        if to_plain(chunk).strip():
            chunks.append(chunk)
        start = end
    return chunks


def _closing(stack: tuple[_Atom, ...]) -> str:
    return "".join(f"</{a.name}>" for a in reversed(stack))


def _furthest_fit(
    stacks: list[tuple[_Atom, ...]], sizes: list[int], base: int, start: int, n: int, limit: int
) -> int:
    best = start
    for end in range(start + 1, n + 1):
        body = base + sizes[end]
        if body > limit:
            break
        if body + sum(len(a.name) + 3 for a in stacks[end]) <= limit:
            best = end
    return best


# Lower bound of a cut, as a share of the space that fits, per boundary kind: a paragraph
# break may end a short message (so a code block that fits moves whole to the next one); a
# break inside a code block or a sentence only when the message is at least half full.
_MIN_FILL = {5: 0.0, 4: 0.15, 3: 0.25, 2: 0.5, 1: 0.5, 0: 0.5}


def _best_cut(priorities: list[int], start: int, end: int) -> int:
    span = end - start
    for priority in sorted(_MIN_FILL, reverse=True):
        lowest = start + max(1, int(span * _MIN_FILL[priority]))
        for position in range(end, lowest - 1, -1):
            if priorities[position] == priority:
                return position
    return end  # one unbroken word longer than a message: cut it


def _boundary_priority(atoms: list[_Atom], stacks: list[tuple[_Atom, ...]], p: int) -> int:
    """How good a place to end a message the position before atom `p` is (-1: not at all)."""
    if p == 0 or p == len(atoms):
        return -1
    before, after = atoms[p - 1], atoms[p]
    if before.kind == "open" or after.kind == "close":
        return -1  # would leave an empty tag, or split a closing run
    in_code = any(a.name in ("pre", "code") for a in stacks[p])
    if before.kind == "close" and before.name in ("pre", "blockquote"):
        return 5 if not in_code else -1
    char = before.char
    if char == "\n":
        if in_code:
            return 2
        previous = atoms[p - 2].char if p >= 2 else ""
        return 5 if previous == "\n" else 4
    if in_code:
        return -1
    if char.isspace():
        previous = atoms[p - 2].char if p >= 2 else ""
        return 1 if previous in _SENTENCE_END else 0
    return -1
