"""Russian on the lexical side: lemmas, and the query's words' nearest neighbours.

Messages and questions reach PostgreSQL's full text as lemmas (pymorphy3), which the `russian`
configuration then stems: forms that snowball alone cannot join meet ("людей", "человек").

A question rarely repeats the fact's words ("Где я пашу?" for "Я работаю в Яндексе"), and
PostgreSQL's snowball stems only join forms of one word. Here each content word of the query
(found by pymorphy3) brings its nearest neighbours in the `navec` news vectors that natasha's
wheel ships (250k words, offline): "тружусь" brings "работать", "лоджии" brings "балкон",
"роллы" brings "суши". The lexical search then keeps only the neighbours this user has actually
written (their lexemes in `lexical_stats`) and weighs them below the query's own words.

Only the most frequent words are candidates, held as one normalised float32 matrix: a query's
new words are one matrix product (tens of milliseconds on a busy two-core machine, which is why
RAG_QUERY_EXPANSION is off by default), known words come from a cache, and the vectors load
once per searching process.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from llm_bot_core.rag import numbers, translit

log = logging.getLogger(__name__)

NAVEC_FILE = "data/emb/navec_news_v1_1B_250K_300d_100q.tar"
# The most frequent Cyrillic words of navec's vocabulary are the neighbour candidates: 30k in
# 36 MB. 15k halved the cost but lost recall on the paraphrase set's report part.
CANDIDATES = 30_000
PER_WORD = 6
"""Neighbours taken per query word, before the user's vocabulary filters them."""
MIN_SIMILARITY = 0.45
"""Cosine below which a neighbour is more often another topic than another word for this one."""
CACHE_WORDS = 20_000
"""Query words whose neighbours are kept (a few MB); the cache starts over past that."""
WEIGHT = 0.5
"""A neighbour's BM25 weight relative to a word of the query itself, times its similarity."""

# Words that carry the question's content: nouns, verbs, adjectives, adverbs. Pronouns,
# prepositions and particles ("я", "мой", "ли") have neighbours everywhere.
_CONTENT = frozenset({"NOUN", "VERB", "INFN", "ADJF", "ADJS", "ADVB", "PRTF", "PRTS", "GRND"})
# ... but not pronoun-like adjectives and adverbs ("какой", "мой", "где", "там").
_FUNCTION = frozenset({"Apro", "Ques", "Dmns", "Anph", "Subx"})
_WORD = re.compile(r"[а-яё]+(?:-[а-яё]+)*")


@dataclass(frozen=True, slots=True)
class Expansion:
    words: list[str]
    weights: list[float]


def merged(expansions: Iterable[Expansion]) -> Expansion:
    """Several expansions as one, each word with its highest weight."""
    best: dict[str, float] = {}
    for expansion in expansions:
        for word, weight in zip(expansion.words, expansion.weights, strict=True):
            best[word] = max(weight, best.get(word, 0.0))
    return Expansion(list(best), list(best.values()))


class Neighbours:
    """Nearest Russian words by navec vectors, restricted to the most frequent words."""

    def __init__(self, navec: Any, morph: Any, candidates: int = CANDIDATES) -> None:
        words: list[str] = navec.vocab.words
        counts = np.asarray(navec.vocab.counts)
        cyrillic = np.fromiter((_WORD.fullmatch(w) is not None for w in words), bool, len(words))
        ids = np.flatnonzero(cyrillic)
        ids = ids[np.argsort(-counts[ids], kind="stable")][:candidates]
        pq = navec.pq
        # Product quantisation: each vector is the concatenation of its subvectors' codes.
        matrix = pq.codes[np.arange(pq.qdim), pq.indexes[ids]].reshape(len(ids), -1)
        matrix = matrix.astype(np.float32)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
        self._matrix = matrix
        self._words = [words[i] for i in ids]
        self._navec = navec
        self._morph = morph
        self._cache: dict[tuple[str, int, float], list[tuple[str, float, str]]] = {}

    def _vector(self, word: str, lemma: str) -> np.ndarray | None:
        for key in (word, lemma):
            if key in self._navec:
                vector = np.asarray(self._navec[key], dtype=np.float32)
                norm = float(np.linalg.norm(vector))
                return vector / norm if norm else None
        return None

    def expand(
        self,
        query: str,
        per_word: int = PER_WORD,
        min_similarity: float = MIN_SIMILARITY,
        weight: float = WEIGHT,
    ) -> Expansion:
        """Neighbours of the query's content words, each weighted by `weight` x its similarity."""
        pairs = content_words(query)
        own = {lemma for _, lemma in pairs}
        best: dict[str, float] = {}
        for found in self._neighbours(pairs, per_word, min_similarity):
            for word, similarity, lemma in found:
                # Other forms of the query's own words are the stems' job already.
                if lemma not in own and similarity > best.get(word, 0.0):
                    best[word] = similarity
        return Expansion(list(best), [round(s * weight, 4) for s in best.values()])

    def clear_cache(self) -> None:
        self._cache.clear()

    def _neighbours(
        self, pairs: list[tuple[str, str]], per_word: int, min_similarity: float
    ) -> list[list[tuple[str, float, str]]]:
        """(neighbour, similarity, its lemma) per word; cached, as chat words recur."""
        keys = [(word, per_word, min_similarity) for word, _ in pairs]
        missing = [(k, pair) for k, pair in zip(keys, pairs, strict=True) if k not in self._cache]
        vectors = [
            (k, v) for k, (word, lemma) in missing if (v := self._vector(word, lemma)) is not None
        ]
        for k, _ in missing:
            self._cache[k] = []
        if vectors:
            scores = np.stack([v for _, v in vectors]) @ self._matrix.T
            for (k, _), row in zip(vectors, scores, strict=True):
                # One more than asked for: the word itself is usually its own nearest neighbour.
                top = np.argpartition(-row, per_word + 1)[: per_word + 1]
                found = []
                for j in top[np.argsort(-row[top])]:
                    if row[j] < min_similarity:
                        break
                    parse = self._morph.parse(self._words[j])[0]
                    if _is_content(parse):
                        found.append((self._words[j], float(row[j]), parse.normal_form))
                self._cache[k] = found
        if len(self._cache) > CACHE_WORDS:
            self._cache.clear()
        return [self._cache.get(k, []) for k in keys]


def package_file(package: str, relative: str) -> Path | None:
    """A data file an installed package ships, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / relative
        if path.exists():
            return path
    return None


def navec_path() -> Path | None:
    """Where natasha's wheel put the navec vectors (without importing natasha itself)."""
    return package_file("natasha", NAVEC_FILE)


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load() -> Neighbours | None:
    path = navec_path()
    if path is None:
        log.warning("natasha's navec vectors not installed: Russian query expansion is off")
        return None
    from navec import Navec

    return Neighbours(Navec.load(str(path)), _morph(), CANDIDATES)


def neighbours() -> Neighbours | None:
    """The process's expander, loaded on first use (about a second); None when not installed."""
    with _lock:
        return _load()


def expand(query: str) -> Expansion:
    """The query's expansion with the default constants; empty when navec is not installed."""
    found = neighbours()
    if found is None:
        return Expansion([], [])
    return found.expand(query, PER_WORD, MIN_SIMILARITY, WEIGHT)


LEMMAS = True
"""Index and search Russian words by their lemma (pymorphy3), which snowball then stems.

Snowball cuts endings and cannot join "шёл" and "идти", "людей" and "человек", or tell "стекла"
(glass) from "стекла" (flowed); a lemma first does. Measured on the paraphrase set's tune part
(docs/retrieval-experiments.md) before it was kept.
"""


@lru_cache(maxsize=1)
def _morph() -> Any:
    import pymorphy3

    return pymorphy3.MorphAnalyzer()


@lru_cache(maxsize=100_000)
def lemma(word: str) -> str:
    """The word's lemma (pymorphy3's normal form of its likeliest parse)."""
    found: str = _morph().parse(word)[0].normal_form
    return found


def _is_content(parse: Any) -> bool:
    return parse.tag.POS in _CONTENT and not (_FUNCTION & parse.tag.grammemes)


def content_words(query: str) -> list[tuple[str, str]]:
    """(word, lemma) for each content word of the query, once per lemma."""
    seen: set[str] = set()
    found = []
    for word in _WORD.findall(query.lower()):
        if len(word) < 3:
            continue
        parse = _morph().parse(word)[0]
        if not _is_content(parse) or parse.normal_form in seen:
            continue
        seen.add(parse.normal_form)
        found.append((word, parse.normal_form))
    return found


def lemmatize(text: str) -> str:
    """The text with each Russian word replaced by its lemma: what the full-text side reads."""
    if not LEMMAS:
        return text
    return _WORD.sub(lambda m: lemma(m.group(0)), text.lower())


@lru_cache(maxsize=100_000)
def first_person_verb(word: str) -> bool:
    """Whether the word's likeliest parse is a verb in the first person ("живу", "работаем")."""
    tag = _morph().parse(word)[0].tag
    return tag.POS == "VERB" and "1per" in tag


NUMBERS = True
"""Append the numbers a text says in words (or in split digit forms) in digits: rag/numbers.py."""
NAMES = True
"""Append a key of each name word shared by its Latin and Cyrillic spellings: rag/translit.py."""


@lru_cache(maxsize=100_000)
def known(word: str) -> bool:
    """Whether pymorphy3's dictionary has the word (a brand in Cyrillic usually is not)."""
    found: bool = _morph().word_is_known(word)
    return found


def lexical_text(text: str) -> str:
    """What the full-text side reads of a message or a question: lemmas, numbers also in
    digits, names also by their key for either script."""
    base = lemmatize(text)
    found = numbers.spoken(text, lemma) if NUMBERS else []
    if NAMES:
        found += translit.keys(text, lemma, known)
    return f"{base} {' '.join(found)}" if found else base
