"""Telegram's HTML parse mode as the fake Bot API server applies it.

Written apart from the bot's own formatter on purpose: the tests check one against the other.
"""

from __future__ import annotations

import html
import re

_TAGS = {
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
_HTML_TOKEN = re.compile(r"<(/?)([^\s<>/]+)([^<>]*)>|&([^;\s<>&]{1,10});|([<>&])|([^<>&]+)")


class EntityParseError(ValueError):
    pass


def parse_telegram_html(text: str) -> str:
    """The text Telegram would show for `text` in HTML parse mode; EntityParseError if rejected."""
    out: list[str] = []
    stack: list[str] = []
    for match in _HTML_TOKEN.finditer(text):
        closing, name, attrs, entity, bare, plain = match.groups()
        offset = len(text[: match.start()].encode())
        if name is not None:
            name = name.lower()
            if name not in _TAGS:
                raise EntityParseError(f'Unsupported start tag "{name}" at byte offset {offset}')
            if closing:
                if not stack:
                    raise EntityParseError(f"Unexpected end tag at byte offset {offset}")
                if stack[-1] != name:
                    raise EntityParseError(
                        f"Unmatched end tag at byte offset {offset}, "
                        f'expected "</{stack[-1]}>", found "</{name}>"'
                    )
                stack.pop()
            else:
                if name == "a" and "href" not in attrs:
                    raise EntityParseError(f"Can't find href in <a> at byte offset {offset}")
                stack.append(name)
        elif entity is not None:
            decoded = html.unescape(f"&{entity};")
            if decoded == f"&{entity};":
                raise EntityParseError(
                    f'Unsupported HTML entity "&{entity};" at byte offset {offset}'
                )
            out.append(decoded)
        elif bare is not None:
            if bare == "&":
                raise EntityParseError(f"Unclosed entity at byte offset {offset}")
            raise EntityParseError(f'Unexpected "{bare}" at byte offset {offset}')
        else:
            out.append(plain)
    if stack:
        raise EntityParseError(f'Can\'t find end tag corresponding to start tag "{stack[-1]}"')
    return "".join(out)


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2
