"""One key for a name in Latin letters and in Cyrillic ones ("Spotify" and "Спотифай").

Russian chat names brands, apps, games and bands in either script: a user writes "слушаю всё в
Spotify" and later asks "что я слушаю в Спотифае?". Neither full-text spelling meets the other,
and e5 and USE join only some such pairs. Each name word of a Russian text also gets a key both
spellings share: the word in Latin letters with English spellings made phonetic ("ph" -> f,
"x" -> ks, "c" -> k or s, "w" -> v, "j" -> dzh) and Cyrillic letters transliterated, then
without vowels (where the two spellings differ most) and without doubled letters:
"Spotify", "Спотифай" -> "sptf"; "Netflix", "Нетфликс" -> "ntflks"; "Google", "Гугл" -> "gl".

Name words are a Russian text's Latin words and the Cyrillic words pymorphy3 does not know or
that are capitalised inside a sentence ("Литрес", "Спотифае"; a Cyrillic word is keyed by its
lemma, so "Спотифаем" keys as "Спотифай"). A text without Cyrillic letters gets no keys: English
texts (LoCoMo) are untouched, where any word would be a "name".
"""

from __future__ import annotations

import re
from collections.abc import Callable

PREFIX = "zq"
"""Marks a key among the lexical text's words (no Russian or English word starts so)."""
MIN_CONSONANTS = 2
"""A shorter key ("Kia" -> "k") would join unrelated names."""

_CYRILLIC = re.compile(r"[а-яё]", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z]+|[А-Яа-яЁё]+(?:-[А-Яа-яЁё]+)*|[.!?…]")
_CYR = dict(
    zip(
        "абвгдеёжзийклмнопрстуфхцчшщъыьэюя",
        "a b v g d e e zh z i i k l m n o p r s t u f h ts ch sh sh _ i _ e u a".split(),
        strict=True,
    )
)
# English spellings, in this order, as a Russian ear writes them.
_LATIN = [
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        ("tion", "shn"),
        ("sch", "sh"),
        ("tch", "ch"),
        ("ph", "f"),
        ("wh", "v"),
        ("th", "t"),
        ("ck", "k"),
        ("qu", "kv"),
        ("q", "k"),
        ("x", "ks"),
        ("w", "v"),
        ("j", "dzh"),
        # "ch" stays as it is ("Chelsea", "Челси").
        ("c(?!h)(?=[eiy])", "s"),
        ("c(?!h)", "k"),
        ("y", "i"),
    )
]
_VOWELS = re.compile(r"[aeiou_]")
_DOUBLED = re.compile(r"(.)\1+")


def key(word: str) -> str | None:
    """The word's shared key (with PREFIX), or None when it has too few consonants."""
    lowered = word.lower()
    if _CYRILLIC.search(lowered):
        spelled = "".join(_CYR.get(ch, "") for ch in lowered)
    else:
        spelled = lowered
        for pattern, replacement in _LATIN:
            spelled = pattern.sub(replacement, spelled)
    skeleton = _DOUBLED.sub(r"\1", _VOWELS.sub("", spelled))
    return PREFIX + skeleton if len(skeleton) >= MIN_CONSONANTS else None


def keys(text: str, lemma: Callable[[str], str], known: Callable[[str], bool]) -> list[str]:
    """The keys of a Russian text's name words, in order, each once."""
    if not _CYRILLIC.search(text):
        return []
    found: dict[str, None] = {}
    sentence_start = True
    for token in _TOKEN.findall(text):
        if token in ".!?…":
            sentence_start = True
            continue
        first, sentence_start = sentence_start, False
        if token.isascii():
            if len(token) < 3:
                continue
            name = token
        else:
            lowered = token.lower()
            capitalised = token[0].isupper() and not first
            if not capitalised and known(lowered):
                continue
            name = lemma(lowered)
        found_key = key(name)
        if found_key is not None:
            found[found_key] = None
    return list(found)
