"""Russian synonyms, hypernyms and hyponyms for the full-text side (Wiktionary's thesaurus).

A question often names the same thing with another word ("тачка" for "машина", "супруга" for
"жена"), the category for the item ("овощи" for "помидоры", "жильё" for "квартира") or the
item for the category ("опята" for "грибы"). The `wiki-ru-wordnet` package ships Wiktionary's
Russian thesaurus as one SQLite file (offline; 94k lemmas in 105k synsets, 53k hypernym links).
Each content word of the question brings the other words of its synsets, their hypernyms and
their hyponyms; the lexical search keeps only those this user has actually written (their
lexemes in `lexical_stats`) and weighs them below the question's own words, as it does the
navec neighbours (rag/russian.py). Unlike those, a lookup is an indexed read of a small
in-memory copy (tens of microseconds), not a matrix product, so it is on by default.

A colloquial word often has no synonym listed but a definition in plain words: "сластёна" is
"тот, кто любит сладкое", "ящик" is colloquially a "телевизор", "вкалывать" is "работать".
The head words of the definitions of a question word's colloquial, slang, figurative or
diminutive senses come in too, weighed lower still (GLOSS).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from llm_bot_core.rag import russian
from llm_bot_core.rag.russian import Expansion

log = logging.getLogger(__name__)

DB_FILE = "database/wikiwordnet.db"
SYNONYM = 0.8
"""A synonym's BM25 weight relative to a word of the question itself."""
HYPERNYM = 0.8
"""The weight of a question word's category ("собака" for "овчарка")."""
HYPONYM = 0.8
"""The weight of an item of the question word's category ("помидор" for "овощ")."""
GLOSS = 0.3
"""The weight of a word from the definition of a question word's colloquial sense ("сластёна":
"тот, кто любит сладкое"; "ящик": "телевизор")."""
GLOSS_WORDS = 6
"""Content words read from the start of each definition (its head words; the rest qualifies)."""
MAX_HYPONYMS = 150
"""A synset with more hyponym words than this is a catalogue ("имя": 18,699 names), not a
category a question narrows: its hyponyms are left out (they would cost time, not add recall)."""


_SCHEMA = """
CREATE TABLE words (sid INTEGER NOT NULL, lemma TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE glosses (key TEXT NOT NULL, gloss TEXT NOT NULL);
CREATE TABLE links (sid INTEGER NOT NULL, hyper INTEGER NOT NULL);
"""
_INDEXES = """
CREATE INDEX words_key ON words (key);
CREATE INDEX words_sid ON words (sid);
CREATE INDEX links_sid ON links (sid);
CREATE INDEX links_hyper ON links (hyper);
CREATE INDEX glosses_key ON glosses (key);
CREATE TABLE below AS
    SELECT l.hyper AS sid, count(*) AS n FROM links l JOIN words w ON w.sid = l.sid
    GROUP BY l.hyper;
CREATE INDEX below_sid ON below (sid);
"""
# The lemma's synsets' words, their hypernyms' words and (unless a catalogue) their hyponyms'.
_RELATED = """
WITH s AS (SELECT DISTINCT sid FROM words WHERE key = ?1)
SELECT w.lemma, 'synonym' FROM s JOIN words w ON w.sid = s.sid
UNION ALL
SELECT w.lemma, 'hypernym' FROM s JOIN links l ON l.sid = s.sid JOIN words w ON w.sid = l.hyper
UNION ALL
SELECT w.lemma, 'hyponym' FROM s JOIN links l ON l.hyper = s.sid JOIN words w ON w.sid = l.sid
WHERE coalesce((SELECT n FROM below b WHERE b.sid = s.sid), 0) <= ?2
"""


def _key(word: str) -> str:
    return word.lower().replace("ё", "е")


_DEFINITION = 4
"""The definition's place in the file's `definition` field ("лемма~ru~лемма~ru~DEF~id~id")."""
_TEMPLATE = re.compile(r"\{\{([^{}]*)\}\}")
_LINK = re.compile(r"\[\[([^\]|]*)(?:\|[^\]]*)?\]\]")
_ASIDE = re.compile(r"\([^()]*\)|''[^']*''")
# The senses read for their definitions: colloquial, slang, figurative, diminutive, or "the
# same as" another word. Such a sense names in plain words what a chat says another way
# ("пахать": "{{перен.}}, {{разг.}} тяжело работать"); a plain or technical sense's definition
# ("пахать": "взрыхлять, возделывать землю") would bring words the question did not mean.
_STYLE = re.compile(
    r"\{\{(?:разг|п|прост|жарг|перен|неодобр|пренебр|шутл|ирон|вульг|умласк|уменьш|сленг|фам"
    r"|сниж|эвф|груб)\.?[|}]|\{\{=\|"
)


def _template(match: re.Match[str]) -> str:
    """"{{=|спать}}" says "the same as спать"; other templates are labels ("{{разг.}}")."""
    inner = match.group(1)
    return " " + inner[2:] if inner.startswith("=|") else " "


def _definition(field: str) -> str:
    """A sense's definition without its examples, labels and wiki markup."""
    parts = field.split("~")
    text = parts[_DEFINITION] if len(parts) > _DEFINITION else field
    text = text.split("{{пример", 1)[0]
    while True:
        cleaned = _TEMPLATE.sub(_template, text)
        if cleaned == text:
            break
        text = cleaned
    return _ASIDE.sub(" ", _LINK.sub(r"\1", text))


class Thesaurus:
    """The thesaurus's words and links, copied into an indexed in-memory SQLite database.

    The package's file (150 MB, mostly definitions) has no index on lemmas; the copy keeps
    what a lookup reads in ~15 MB (Python dictionaries of the same took 117 MB)."""

    def __init__(
        self,
        synsets: Iterable[tuple[int, str]],
        hypernyms: Iterable[tuple[int, int]],
        definitions: Iterable[tuple[str, str]] = (),
    ) -> None:
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
        # Multi-word entries ("домашнее животное") would add their common words alone.
        db.executemany(
            "INSERT INTO words VALUES (?, ?, ?)",
            ((sid, lemma.lower(), _key(lemma)) for sid, lemma in synsets if " " not in lemma),
        )
        db.executemany(
            "INSERT INTO glosses VALUES (?, ?)",
            (
                (_key(lemma), _definition(text))
                for lemma, text in definitions
                # A proper name is not a sense of the word ("Паша", a river, for "пашу").
                if " " not in lemma and lemma[:1].islower() and _STYLE.search(text)
            ),
        )
        db.executemany("INSERT INTO links VALUES (?, ?)", hypernyms)
        db.executescript(_INDEXES)
        self._db = db
        # One connection, used by the search threads in turn: a lookup takes microseconds.
        self._lock = threading.Lock()
        # A lemma's definition words, lemmatised once: words recur in chat.
        self._glossed: dict[tuple[str, int], frozenset[str]] = {}

    @classmethod
    def load(cls, path: Path) -> Thesaurus:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return cls(
                db.execute("SELECT synset_id, lemma FROM synsets"),
                db.execute("SELECT sid, hypersid FROM hypernyms"),
                # Each sense's definition up to its examples (the bulk of the file).
                db.execute(
                    "SELECT lemma, substr(definition, 1,"
                    " instr(definition || '{{пример', '{{пример') - 1) FROM synsets"
                ),
            )
        finally:
            db.close()

    def related(
        self, lemma: str, synonym: float, hypernym: float, hyponym: float
    ) -> dict[str, float]:
        """Words related to `lemma`, each with the weight of its closest relation."""
        with self._lock:
            rows = self._db.execute(_RELATED, (_key(lemma), MAX_HYPONYMS)).fetchall()
        weights = {"synonym": synonym, "hypernym": hypernym, "hyponym": hyponym}
        found: dict[str, float] = {}
        for word, relation in rows:
            weight = weights[relation]
            if weight > found.get(word, 0.0):
                found[word] = weight
        return found

    def glossed(self, lemma: str, limit: int = GLOSS_WORDS) -> frozenset[str]:
        """The head content words of the definitions of `lemma`'s colloquial senses, as lemmas."""
        cached = self._glossed.get((lemma, limit))
        if cached is not None:
            return cached
        with self._lock:
            rows = self._db.execute(
                "SELECT gloss FROM glosses WHERE key = ?", (_key(lemma),)
            ).fetchall()
        found = frozenset(
            lem for (text,) in rows for _, lem in russian.content_words(text)[:limit]
        )
        if len(self._glossed) >= russian.CACHE_WORDS:
            self._glossed.clear()
        self._glossed[(lemma, limit)] = found
        return found

    def expand(
        self,
        query: str,
        synonym: float = SYNONYM,
        hypernym: float = HYPERNYM,
        hyponym: float = HYPONYM,
        gloss: float = GLOSS,
    ) -> Expansion:
        """The related words of the query's content words, as the lexical side takes them."""
        own = {_key(lemma) for _, lemma in russian.content_words(query)}
        best: dict[str, float] = {}
        for lemma in own:
            related = self.related(lemma, synonym, hypernym, hyponym)
            if gloss > 0:
                for word in self.glossed(lemma):
                    related[word] = max(related.get(word, 0.0), gloss)
            for word, weight in related.items():
                # As the indexed text has it: the lemma pymorphy3 gives (its ё included).
                target = russian.lemma(word)
                if len(target) >= 3 and _key(target) not in own and weight > best.get(target, 0):
                    best[target] = weight
        return Expansion(list(best), list(best.values()))


def thesaurus_path() -> Path | None:
    """Where wiki-ru-wordnet's package put its database (without importing it)."""
    return russian.package_file("wiki_ru_wordnet", DB_FILE)


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> Thesaurus | None:
    path = thesaurus_path()
    if path is None:
        log.warning("wiki-ru-wordnet not installed: the Russian thesaurus is off")
        return None
    return Thesaurus.load(path)


def thesaurus() -> Thesaurus | None:
    """The process's thesaurus, loaded on first use (under a second); None when not installed."""
    with _lock:
        return _load()


def expand(query: str) -> Expansion:
    """The query's expansion with the default weights; empty when the package is missing."""
    found = thesaurus()
    if found is None:
        return Expansion([], [])
    return found.expand(query, SYNONYM, HYPERNYM, HYPONYM, GLOSS)
