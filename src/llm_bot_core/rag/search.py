"""Hybrid search: dense vectors and BM25 over PostgreSQL full text, fused by a learned ranking
(exp(weights . features), `Learned`) or by reciprocal rank (`SearchOptions.fusion`).

The lexical side lives in the `embeddings` table whatever the vector store, so it works the same
with pgvector and Qdrant, and keeps answering (alone) when the embedder or the store is down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.rag import russian
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.dates import has_time_expression, is_temporal_question, named_dates
from llm_bot_core.rag.embedders import Embedder, Vector
from llm_bot_core.rag.russian import Expansion
from llm_bot_core.rag.vector_store import VectorStore

log = logging.getLogger(__name__)

RRF_K = 60
MIN_CONTENT_WORDS = 2
"""Turns with fewer content words are not recalled ("Ого!", "Понимаю.": nothing to remember)."""
# The full-text configuration drops pronouns and negations as stop words, so "Я никогда не
# курил." and "Я вегетарианец." counted one content word, as "Понимаю." does. A negated word is
# a fact ("never smoked" is not "smoked"), and so is a word a user says of themselves: a
# negation, or the first person in a user's statement, adds one to a turn that has a content
# word of its own.
_NEGATION = re.compile(
    r"(?<![\w-])(?:не|ни|нет|никогда|ничего|нисколько|нельзя|not|no|never|nothing|nobody)(?![\w-])"
    r"|n't\b",
    re.IGNORECASE,
)
_FIRST_PERSON = re.compile(
    r"(?<![\w-])(?:я|мне|меня|мной|мой|моя|моё|мое|мои|моего|моей|моих|мы|нам|нас|наш|наша|наше"
    r"|наши|i|i'm|me|my|we|our|us)(?![\w-])",
    re.IGNORECASE,
)


# Who a question or a statement is about: the speaker, when a first-person pronoun is its subject
# or object or (Russian) a verb is in the first person. Possessives do not count: "Моя мама живёт
# в Самаре" is about the mother, and counting them lost more tune questions than it found.
_SELF = re.compile(
    r"(?<![\w-])(?:я|мы|мне|меня|мной|нам|нас|нами|i|me|we|us)(?![\w-])", re.IGNORECASE
)
SELF_CHARS = 400
"""How much of a text is read for whom it speaks of: a chat statement's length; a pasted page
among the candidates is not scanned whole for each question."""


def about_self(text_: str) -> bool:
    """Whether the text speaks of its speaker: "Где я работаю?", "Живём за городом.", "I'm
    vegan."; not "Жена работает в банке." or "Моя мама живёт в Самаре."."""
    head = text_[:SELF_CHARS]
    # "US" is the country, not "us".
    if any(m.group(0) != "US" for m in _SELF.finditer(head)):
        return True
    return any(russian.first_person_verb(w) for w in _CYRILLIC.findall(head.lower()))


def is_question(content: str) -> bool:
    """Whether a turn asks (ends with "?"); a user turn that does not is a statement."""
    return content.rstrip().endswith("?")


def counted_words(lexemes: int, content: str, role: str = "user") -> int:
    """A turn's content words: its lexemes, plus one for a negation of a word of its own or,
    in a user's statement, for the first person ("Я вегетарианец.", "Мне 30.", "I'm vegan.";
    not "Я сластёна?", which asks)."""
    if 0 < lexemes < MIN_CONTENT_WORDS and (
        _NEGATION.search(content)
        or (role == "user" and not is_question(content) and _FIRST_PERSON.search(content))
    ):
        return lexemes + 1
    return lexemes

# BM25 (k1 = 1.2, b = 0.75, each query term counted once per message: chat turns are short).
# Document frequencies are those of the scope (`lexical_stats`, kept by triggers), so "what is
# common" is this user's vocabulary. Candidates are the messages sharing a rare term with the
# query (in at most RARE_SHARE of the scope's messages, or the query's rarest terms if it has
# no rare one); common terms still add their weight to a candidate's score. A message that
# shares only common words would score below those anyway, and reading the thousands of
# messages that contain a user's own name is what made the query slow.
RARE_SHARE = 0.05
# The full-text side and the boosts read at most this much of a query (the dense side reads
# less: E5_QUERY_TOKENS). A long message used as a query (a pasted text, a flood) otherwise has
# PostgreSQL weigh its thousands of terms against the scope, for a bag of words that matches
# everything a little.
LEXICAL_QUERY_CHARS = 2000
_BM25 = """
WITH terms AS MATERIALIZED (
    SELECT lexeme, max(weight) AS weight FROM (
        SELECT lexeme, 1.0::float8 AS weight
        FROM unnest(to_tsvector(CAST(:cfg AS regconfig), :query))
        UNION ALL
        SELECT (unnest(to_tsvector(CAST(:cfg AS regconfig), x.word))).lexeme, x.weight
        FROM unnest(CAST(:words AS text[]), CAST(:word_weights AS float8[])) AS x(word, weight)
    ) t GROUP BY lexeme
),
stats AS MATERIALIZED (
    SELECT s.lexeme, s.df::float8 AS df, c.df::float8 AS n,
           c.len::float8 / greatest(c.df, 1) AS avgdl, t.weight
    FROM lexical_stats c
    JOIN lexical_stats s ON s.scope = c.scope
    JOIN terms t ON t.lexeme = s.lexeme
    WHERE c.scope = :scope AND c.lexeme = '' AND s.df > 0
),
weights AS MATERIALIZED (
    SELECT to_tsquery('simple', quote_literal(lexeme)) AS tq,
           ln(1 + (n - df + 0.5) / (df + 0.5)) * weight AS idf,
           df <= greatest(n * :rare_share, (SELECT min(df) FROM stats)) AS rare, avgdl
    FROM stats
),
candidates AS MATERIALIZED (
    SELECT string_agg(tq::text, ' | ')::tsquery AS tq, max(avgdl) AS avgdl
    FROM weights WHERE rare
)
SELECT e.message_id,
       (SELECT sum(w.idf) FROM weights w WHERE e.lexemes @@ w.tq) * 2.2
       / (1 + 1.2 * (0.25 + 0.75 * length(e.lexemes) / greatest(c.avgdl, 1))) AS score
FROM embeddings e, candidates c
WHERE {where} AND e.lexemes @@ c.tq
  AND e.message_id <> ALL(CAST(:exclude AS bigint[])) AND e.importance > 0
ORDER BY score DESC
LIMIT :limit
"""

# The scope is checked again here, against the database: a vector store's copy of the scope
# columns may lag behind it (Qdrant payloads written before a migration, until re-indexed), and
# what reaches a prompt must be in scope by the rows themselves.
# Content words are counted only where the importance indexing gave the message leaves the count
# open: below FEW_WORDS_IMPORTANCE (indexing.py's rule gives one content word at most 1/6 + 0.2,
# two at least 1/3 for the user and 1/6 for the assistant). Above it the count is given as
# MIN_CONTENT_WORDS, "enough": a to_tsvector per candidate took ~3 of the query's 6 ms at 10,000
# messages per user. An operator who raised a message's importance has it recalled.
FEW_WORDS_IMPORTANCE = 0.4
_HYDRATE = """
    SELECT m.id, m.role, m.content, m.created_at,
           CASE WHEN e.importance >= :sure THEN :enough
                ELSE length(to_tsvector(CAST(:cfg AS regconfig), m.content)) END AS content_words,
           m.user_id, m.user_name, m.session_id, {neighbours}
    FROM messages m JOIN embeddings e ON e.message_id = m.id
    WHERE m.id = ANY(CAST(:ids AS bigint[])) AND {where}
"""
_NEIGHBOURS = """
           (SELECT max(p.id) FROM messages p
            WHERE p.session_id = m.session_id AND p.id < m.id) AS prev_id,
           (SELECT min(p.id) FROM messages p
            WHERE p.session_id = m.session_id AND p.id > m.id) AS next_id"""


@dataclass(frozen=True, slots=True)
class Hit:
    message_id: int
    role: str
    content: str
    created_at: datetime | None
    score: float
    """The fused rank score (higher is better); not comparable across queries."""
    dense: float | None
    """Cosine similarity to the query, when the dense side found it."""
    user_id: str | None = None
    """Who said it (a user turn) or was answered (an assistant turn)."""
    user_name: str | None = None


FEATURES = (
    "dense_z", "lexical_rank", "lexical_score", "statement_rank", "question", "echo_question",
    "assistant", "repeated", "own", "date", "session_date", "speaker",
)
"""What "learned" fusion reads of a candidate, in `features()`' order (Learned documents each)."""


@dataclass(frozen=True, slots=True)
class Learned:
    """The weights of "learned" fusion: a turn's score is exp(sum of feature x weight).

    Fitted by bench/fusion_fit.py on the Russian sets' tune parts and LoCoMo's five dev
    conversations together (the softmax cross-entropy of the evidence among each question's
    candidates), and cross-validated there: conversations and Russian tune sets left out in
    turn, the Russian report parts only reported (docs/retrieval-experiments.md)."""

    dense_z: float
    """The turn's cosine as a standard score among the dense side's `candidates` best (a turn
    the dense side did not reach: the lowest cosine read)."""
    lexical_rank: float
    """60 / (61 + its full-text rank); 0 if the full-text side did not find it."""
    lexical_score: float
    """Its BM25 score over the full-text side's best; 0 if not found."""
    statement_rank: float
    """60 / (61 + its rank among the dense side's turns that are not questions), for the first
    `candidates` of those within `statement_depth` (they are candidates too): a user's earlier
    questions sit close to any new question and filled 57 % of the dense side's best."""
    question: float
    """A turn that asks (ends with "?")."""
    echo_question: float
    """A question adding at most `echo_new_words` content words to the query."""
    assistant: float
    repeated: float
    """Said again among the candidates (`repeat_copies` near duplicates)."""
    own: float
    """The asker's own statement about themselves, for a question about the asker."""
    date: float
    """A "when" question, and a turn that says when something happened."""
    session_date: float
    """A question naming a period, and a turn said in it."""
    speaker: float
    """A question naming one of the candidates' speakers, and that speaker's turn."""
    statement_depth: int = 120

    def vector(self, lexical_weight: float = 1.0) -> tuple[float, ...]:
        """The weights in FEATURES' order, the full-text side's scaled by `lexical_weight`."""
        return tuple(
            getattr(self, name) * (lexical_weight if name.startswith("lexical") else 1.0)
            for name in FEATURES
        )


LEARNED = Learned(
    dense_z=0.83, lexical_rank=0.37, lexical_score=2.18, statement_rank=-1.03, question=-2.13,
    echo_question=-2.58, assistant=-0.27, repeated=-2.74, own=1.81, date=2.02,
    session_date=3.8, speaker=2.93,
)


@dataclass(frozen=True, slots=True)
class SearchOptions:
    limit: int
    min_score: float
    lexical_weight: float = 1.0
    """The full-text side's weight (RAG_LEXICAL_WEIGHT): scales its terms in either fusion."""
    candidates: int = 40
    """How deep each side's ranking is read (the rerank depth)."""
    fusion: str = "learned"
    """How the two sides and the boosts are combined. "learned": a turn's score is
    exp(weights . features), the features and their fitted weights in `Learned` (the
    default since 2026-12-02). "rrf": reciprocal rank fusion times the boosts and weights
    below, the ranking before (bench/locomo_cv.py's and bench/russian_replay.py's experiments
    tune it)."""
    learned: Learned = LEARNED
    """The weights of "learned" fusion."""
    dedupe_jaccard: float = 0.75
    # The boosts and weights below are those of "rrf" fusion; "learned" fusion weighs the same
    # signals by `Learned` and reads here only how they are found (echo_new_words,
    # repeat_copies, date_slack_days, asker; a self boost of 0 turns its `own` off).
    # Language-independent boosts, each off at its neutral value. The two date boosts are on:
    # LoCoMo's leave-one-conversation-out cross-validation kept them (+0.041 R@5 on held-out
    # folds) and these are the medians of the folds' choices. The question weight is on for
    # question turns adding at most five content words to the query: chosen on the Russian
    # set's tune part (report part 0.843 -> 0.886), LoCoMo held-out R@5 unchanged (0.672 ->
    # 0.673). The others stay off (docs/retrieval-experiments.md).
    date_boost: float = 1.0
    """A "when" question: score x (1 + this) for turns that say when something happened."""
    session_date_boost: float = 1.0
    """A question naming a date: score x (1 + this) for turns said in that period."""
    date_slack_days: int = 0
    """How many days after a named period its events may still be told."""
    neighbour_weight: float = 0.0
    """Share of the better neighbouring turn's score a turn receives."""
    session_diversity: float = 0.0
    """Discount per hit already taken from the same session (0: none)."""
    question_weight: float = 0.4
    """Score factor of a turn that is itself a question (it rarely holds the answer). Earlier
    questions of the user sit close to any new question and crowded facts out of the prompt."""
    assistant_weight: float = 1.0
    """Score factor of an assistant turn (the bot's replies are mostly generic)."""
    answer_share: float = 0.0
    """Share of the score of the assistant turn answering it that a user turn receives (the
    pair as one unit: a reply found by meaning brings up what it answered)."""
    echo_new_words: int | None = 5
    """If set, the two factors above apply only to turns adding at most this many content words
    beyond the question's own (a turn that brings something new keeps its score)."""
    repeat_weight: float = 0.4
    """Score factor of a turn said again among the candidates (`repeat_copies` near duplicates
    by `dedupe_jaccard`): greetings and stock replies recur, a fact is rarely told three times.
    Chosen on the three Russian tune parts together (188 -> 192 of 232); the report parts gained
    5 (the blind set 52 -> 57 of 80, the others unchanged); LoCoMo unchanged
    (docs/retrieval-experiments.md)."""
    repeat_copies: int = 3
    """How many copies among the candidates make a turn "said again". Three, not two: a user
    who tells a fact twice must not see it recalled less (two gained 2 more tune questions)."""
    self_boost: float = 0.5
    """A question about the asker, in the first person ("Чем я зарабатываю?", "Where do we
    live?"): score x (1 + this) for the asker's own statements in the first person ("Я работаю
    водителем") over what they said of others ("Жена работает в банке") and over questions.
    Chosen on the Russian tune parts (285 -> 290 of 312; the report parts and blind4 487 -> 494
    of 544); docs/retrieval-experiments.md."""
    asker: str | None = None
    """Whose statements the self boost favours, by `Candidate.user_id`. None: every user turn
    (a private memory is one user's); a group's search without an asker gets no self boost,
    as another member's "I" is not the asker's (0 turns "learned" fusion's `own` off too)."""
    speaker_boost: float = 1.0
    """A question naming one of the candidates' speakers ("What did Alice say about…", "Что
    Маша говорила…"): score x (1 + this) for that speaker's turns. On LoCoMo 95 % of the
    questions that name one speaker have all their evidence in that speaker's turns; the
    cross-validation kept it (held-out R@5 0.673 -> 0.699), 1.0 is the folds' median."""

    @property
    def dense_read(self) -> int:
        """How many of the dense side's best turns a search reads: "learned" fusion looks
        further for statements (Learned.statement_depth)."""
        if self.fusion == "learned":
            return max(self.learned.statement_depth, self.candidates)
        return self.candidates

    @property
    def reads_neighbours(self) -> bool:
        """Whether a boost reads each candidate's neighbouring turns (Candidate.prev_id)."""
        return self.neighbour_weight > 0 or self.answer_share > 0


class Searcher:
    def __init__(
        self,
        engine: AsyncEngine,
        embedder: Embedder,
        store: VectorStore,
        fts_config: str,
        expand: Callable[[str], Expansion] | None = None,
    ) -> None:
        # Every read is one statement: autocommit saves the BEGIN and ROLLBACK round trips.
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._embedder = embedder
        self._store = store
        self._cfg = fts_config
        # Words near the query's own (rag/russian.py), searched with a lower weight; the SQL
        # keeps only those in the scope's vocabulary.
        self._expand = expand

    async def search(
        self,
        query: str,
        scope: Scope,
        exclude: Sequence[int],
        options: SearchOptions,
        *,
        rewrite: str | None = None,
        embedded: Callable[[Vector], None] | None = None,
    ) -> list[Hit]:
        """The most relevant messages in `scope`; either side may fail, the other still answers.

        `rewrite` (RAG_QUERY_REWRITE): the message as a standalone query. The dense side then
        embeds it alone (a short, self-contained query is what e5 was trained on; the two
        together would blur it and pass the short-query lane's length), and the lexical side
        and the boosts read the message and the rewrite together: its words only add.
        `embedded` is given the query's vector, once made (recall ranks facts with it too)."""
        # The full-text side and the boosts read the beginning of a long message (their regular
        # expressions over 16,000 characters took ~10 ms of the event loop per search).
        query = query[:LEXICAL_QUERY_CHARS]
        if rewrite:  # first, so that a cut keeps it
            dense_query, query = rewrite, f"{rewrite}\n{query}"
        else:
            dense_query = query
        # The query embedding runs first and alone: the local model spreads a forward pass over
        # every core, and a database query beside it slowed both. The two database queries
        # then run side by side on two connections.
        failures: list[BaseException] = []
        sides = {}
        try:
            vector = await self._embedder.embed_query(dense_query)
            if embedded is not None:
                embedded(vector)
            sides["dense"] = self._store.search(vector, scope, exclude, options.dense_read)
        except Exception as exc:
            failures.append(exc)
        if options.lexical_weight > 0:
            sides["lexical"] = self.lexical(query, scope, exclude, options.candidates)
        gathered = await asyncio.gather(*sides.values(), return_exceptions=True)
        results = dict(zip(sides, gathered, strict=True))
        failures += [r for r in results.values() if isinstance(r, BaseException)]
        found = {name: r for name, r in results.items() if not isinstance(r, BaseException)}
        for failure in failures:
            log.warning("search side unavailable: %r", failure)
        if not found:
            raise failures[0]
        dense, lexical = found.get("dense", []), found.get("lexical", [])
        return await self._fuse(dense, lexical, scope, options, query)

    async def lexical(
        self, query: str, scope: Scope, exclude: Sequence[int], limit: int
    ) -> list[tuple[int, float]]:
        column, value = scope.field()
        if column not in ("user_id", "chat_id"):
            raise ValueError("lexical search is scoped by user_id or chat_id")
        # The statistics of the narrowest scope column: a group's (or a private chat's)
        # vocabulary, or a user's across their private chats.
        where, params = scope.where("e.")
        sql = text(_BM25.format(where=where))
        # Lemmas and the expansion off the event loop: a long query's lemmas took milliseconds
        # that every other request waited for.
        terms, expansion = await asyncio.to_thread(self._terms, query[:LEXICAL_QUERY_CHARS])
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                sql,
                {
                    **params,
                    "cfg": self._cfg,
                    "query": terms,
                    "exclude": list(exclude),
                    "limit": limit,
                    "scope": f"{column[0]}:{value}",
                    "rare_share": RARE_SHARE,
                    "words": expansion.words,
                    "word_weights": expansion.weights,
                },
            )
            return [(int(r[0]), float(r[1])) for r in rows]

    def _terms(self, query: str) -> tuple[str, Expansion]:
        """What the full-text side searches for: the query's lemmas, and its expansion."""
        expansion = self._expand(query) if self._expand is not None else Expansion([], [])
        return russian.lexical_text(query), expansion

    async def _fuse(
        self,
        dense: list[tuple[int, float]],
        lexical: list[tuple[int, float]],
        scope: Scope,
        options: SearchOptions,
        query: str = "",
    ) -> list[Hit]:
        ids = list(dict.fromkeys([mid for mid, _ in dense] + [mid for mid, _ in lexical]))
        rows = await self.candidates(ids, scope, neighbours=options.reads_neighbours)
        if scope.user_id is not None:
            # A private memory: every user turn in it is the asker's (older rows carry no id).
            options = replace(options, asker=None)
        elif options.asker is None:
            # A group's memory, asker unknown: its user turns are every member's.
            options = replace(options, self_boost=0.0)
        return rank(query, dense, lexical, rows, options)

    async def candidates(
        self, ids: Sequence[int], scope: Scope, *, neighbours: bool = True
    ) -> dict[int, Candidate]:
        """What ranking needs to know of these messages (those still in scope); `neighbours`:
        with the ids of the turns before and after each (the boosts that read them are off by
        default, and the two lookups per candidate cost ~1 ms)."""
        if not ids:
            return {}
        where, params = scope.where("e.")
        sql = _HYDRATE.format(where=where, neighbours=_NEIGHBOURS if neighbours else "NULL, NULL")
        async with self._engine.connect() as conn:
            found = await conn.execute(
                text(sql),
                {
                    **params,
                    "ids": list(ids),
                    "cfg": self._cfg,
                    "sure": FEW_WORDS_IMPORTANCE,
                    "enough": MIN_CONTENT_WORDS,
                },
            )
            return {
                r[0]: Candidate(
                    message_id=r[0],
                    role=r[1],
                    content=r[2],
                    created_at=r[3],
                    content_words=counted_words(r[4], r[2], r[1]),
                    user_id=r[5],
                    user_name=r[6],
                    session_id=str(r[7]),
                    prev_id=r[8],
                    next_id=r[9],
                )
                for r in found
            }


@dataclass(frozen=True, slots=True)
class Candidate:
    """A message found by either side, with what ranking reads of it."""

    message_id: int
    role: str
    content: str
    created_at: datetime | None
    content_words: int
    """Exact below MIN_CONTENT_WORDS; MIN_CONTENT_WORDS for a message whose importance shows it
    has that many or more (FEW_WORDS_IMPORTANCE)."""
    user_id: str | None = None
    user_name: str | None = None
    session_id: str = ""
    prev_id: int | None = None
    """The turn before it in its session (whether found or not)."""
    next_id: int | None = None


def rank(
    query: str,
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    rows: Mapping[int, Candidate],
    options: SearchOptions,
) -> list[Hit]:
    """Fuse the two sides' rankings and pick the hits; a pure function of what the sides found.

    The benchmarks replay it on recorded candidates to tune and cross-validate its constants.
    """
    lexical = lexical[: options.candidates]
    dense = dense[: options.dense_read]
    if options.fusion == "learned":
        weights = options.learned.vector(options.lexical_weight)
        fused = {
            mid: math.exp(sum(f * w for f, w in zip(found, weights, strict=True)))
            for mid, found in features(query, dense, lexical, rows, options).items()
        }
    else:
        fused = {}
        for rank_, (mid, _) in enumerate(dense):
            fused[mid] = fused.get(mid, 0.0) + 1.0 / (RRF_K + rank_ + 1)
        for rank_, (mid, _) in enumerate(lexical):
            fused[mid] = fused.get(mid, 0.0) + options.lexical_weight / (RRF_K + rank_ + 1)
    cosine = dict(dense)
    lexical_ids = {mid for mid, _ in lexical}
    kept = {
        mid: score
        for mid, score in fused.items()
        if mid in rows and clears_threshold(mid, cosine, lexical_ids, options.min_score)
    }
    scores = _adjust(query, kept, rows, options)
    order = sorted(scores, key=lambda mid: scores[mid], reverse=True)
    hits: list[Hit] = []
    seen: list[set[str]] = []
    per_session: dict[str, int] = {}
    while order and len(hits) < options.limit:
        # Diversity: each hit already taken from a session discounts that session's others, so
        # a multi-hop question's second piece of evidence can surface from another session.
        if options.session_diversity > 0:
            best = max(
                order,
                key=lambda mid: (
                    scores[mid]
                    * (1 - options.session_diversity) ** per_session.get(rows[mid].session_id, 0)
                ),
            )
            order.remove(best)
        else:
            best = order.pop(0)
        row = rows[best]
        if row.content_words < MIN_CONTENT_WORDS:
            # "Ого!", "Ок", "Понимаю.": short texts sit close to every short question in
            # embedding space, yet there is nothing in them to remember.
            continue
        words = _words(row.content)
        # Near-duplicate small talk ("как дела?" x 20) must not crowd out the one fact.
        if any(_jaccard(words, other) >= options.dedupe_jaccard for other in seen):
            continue
        seen.append(words)
        per_session[row.session_id] = per_session.get(row.session_id, 0) + 1
        hits.append(
            Hit(
                message_id=best,
                role=row.role,
                content=row.content,
                created_at=row.created_at,
                score=scores[best],
                dense=cosine.get(best),
                user_id=row.user_id,
                user_name=row.user_name,
            )
        )
    return hits


def clears_threshold(
    mid: int, cosine: Mapping[int, float], lexical_ids: Collection[int], min_score: float
) -> bool:
    """Whether a candidate may reach the prompt by the similarity threshold: the threshold
    keeps dense-only near misses out; a message that also shares rare words with the question
    (found by the full-text side) has earned its place."""
    return mid in lexical_ids or cosine.get(mid, -1.0) >= min_score


def _adjust(
    query: str, fused: dict[int, float], rows: Mapping[int, Candidate], options: SearchOptions
) -> dict[int, float]:
    """The fused scores after the boosts and weights (each off at its neutral value)."""
    scores = dict(fused)
    if options.neighbour_weight > 0:
        # A turn next to a strong hit is often its other half ("Did you go?" / "Yes, in May").
        for mid in fused:
            row = rows[mid]
            near = max(fused.get(row.prev_id or 0, 0.0), fused.get(row.next_id or 0, 0.0))
            scores[mid] += options.neighbour_weight * near
    if options.answer_share > 0:
        for mid in fused:
            answer = rows.get(rows[mid].next_id or 0)
            if rows[mid].role == "user" and answer is not None and answer.role == "assistant":
                scores[mid] += options.answer_share * fused.get(answer.message_id, 0.0)
    if options.fusion == "learned":  # the boosts are features of its score
        return scores
    wanted = {
        name for name, option in _OPTION.items() if getattr(options, option) != _NEUTRAL[name]
    }
    for mid, found in signals(query, fused, rows, options, wanted).items():
        factor = 1.0
        for name in ("date", "session_date", "speaker"):
            if name in found:
                factor += getattr(options, _OPTION[name])
        if "echo_question" in found:
            factor *= options.question_weight
        if "assistant" in found and "echo" in found:
            factor *= options.assistant_weight
        if "repeated" in found:
            factor *= options.repeat_weight
        if "own" in found:
            factor *= 1 + options.self_boost
        scores[mid] *= factor
    return scores


# "rrf" fusion: the option behind each signal, and its neutral value (a signal not looked for).
_OPTION = {"date": "date_boost", "session_date": "session_date_boost",
           "speaker": "speaker_boost", "echo_question": "question_weight",
           "assistant": "assistant_weight", "repeated": "repeat_weight", "own": "self_boost"}
_NEUTRAL = {"date": 0.0, "session_date": 0.0, "speaker": 0.0, "echo_question": 1.0,
            "assistant": 1.0, "repeated": 1.0, "own": 0.0}


def features(
    query: str,
    dense: Sequence[tuple[int, float]],
    lexical: Sequence[tuple[int, float]],
    rows: Mapping[int, Candidate],
    options: SearchOptions,
) -> dict[int, tuple[float, ...]]:
    """Each candidate's features for "learned" fusion, in FEATURES' order (see Learned).

    Candidates: the dense side's `candidates` best, its first `candidates` turns that are not
    questions (`dense` is read deeper for them), and the full-text side's (`lexical`)."""
    depth = options.candidates
    top = [c for _, c in dense[:depth]]
    mean = statistics.fmean(top) if top else 0.0
    spread = statistics.pstdev(top) if len(top) > 1 else 0.0
    floor = min((c for _, c in dense), default=0.0)
    statements = [mid for mid, _ in dense if mid in rows and not is_question(rows[mid].content)]
    statement_rank = {mid: r for r, mid in enumerate(statements[:depth])}
    lexical_rank = {mid: r for r, (mid, _) in enumerate(lexical)}
    bm25 = dict(lexical)
    best = max(bm25.values(), default=0.0)
    ids = [
        mid
        for mid in dict.fromkeys([m for m, _ in dense[:depth]] + [*statement_rank, *lexical_rank])
        if mid in rows
    ]
    cosine = dict(dense)
    # A self boost of 0 turns the asker's own statements off here too: a group's search
    # without an asker, where another member's "I" is not the asker's (Searcher._fuse).
    wanted = _SIGNALS if options.self_boost > 0 else _SIGNALS - {"own"}
    flags = signals(query, ids, rows, options, wanted)
    out = {}
    for mid in ids:
        found = flags[mid]
        out[mid] = (
            (cosine.get(mid, floor) - mean) / spread if spread > 0 else 0.0,
            RRF_K / (RRF_K + lexical_rank[mid] + 1) if mid in lexical_rank else 0.0,
            bm25.get(mid, 0.0) / best if best > 0 else 0.0,
            RRF_K / (RRF_K + statement_rank[mid] + 1) if mid in statement_rank else 0.0,
            *(float(name in found) for name in FEATURES[4:]),
        )
    return out


_SIGNALS = frozenset(FEATURES[4:])


def signals(
    query: str,
    ids: Iterable[int],
    rows: Mapping[int, Candidate],
    options: SearchOptions,
    wanted: Collection[str],
) -> dict[int, frozenset[str]]:
    """Which of the `wanted` signals each candidate has (Learned documents them; "echo": a
    question or an assistant turn adding at most `echo_new_words` content words to the query,
    looked for with "echo_question" or "assistant")."""
    ids = list(ids)
    temporal = "date" in wanted and is_temporal_question(query)
    asked = content_words(query) if options.echo_new_words is not None else set()
    named = named_dates(query) if "session_date" in wanted else []
    speaker = _named_speaker(query, rows.values()) if "speaker" in wanted else None
    about_asker = "own" in wanted and about_self(query)
    repeated = (
        _repeated(ids, rows, options.dedupe_jaccard, options.repeat_copies)
        if "repeated" in wanted
        else set()
    )
    out = {}
    for mid in ids:
        row = rows[mid]
        found = set()
        if temporal and has_time_expression(row.content):
            found.add("date")
        if named and row.created_at is not None:
            day = row.created_at.date()
            if any(d.covers(day, options.date_slack_days) for d in named):
                found.add("session_date")
        if speaker is not None and row.user_name == speaker:
            found.add("speaker")
        asks = is_question(row.content)
        assistant = row.role == "assistant" and "assistant" in wanted
        # Counted only where read: a question's or an assistant turn's new words.
        if (asks and "echo_question" in wanted) or assistant:
            if (
                options.echo_new_words is None
                or len(content_words(row.content) - asked) <= options.echo_new_words
            ):
                found.add("echo")
        if asks and "question" in wanted:
            found.add("question")
        if asks and "echo" in found and "echo_question" in wanted:
            found.add("echo_question")
        if assistant:
            found.add("assistant")
        if mid in repeated:
            found.add("repeated")
        if about_asker and row.role == "user" and not asks:
            if options.asker in (None, row.user_id) and about_self(row.content):
                found.add("own")
        out[mid] = frozenset(found)
    return out


def _named_speaker(query: str, rows: Iterable[Candidate]) -> str | None:
    """The one speaker among the candidates' that the question names, if exactly one.

    By first name, as written or in a Russian case form ("Маши", "Машей" for "Маша"; "Ивану"
    for "Иван"); English possessives split off as their own word ("Caroline's")."""
    words = {w.lower() for w in _WORD.findall(query)}
    names = {row.user_name for row in rows if row.user_name}
    named = {name for name in names if _names((name.split() or [""])[0].lower(), words)}
    return named.pop() if len(named) == 1 else None


def _names(first: str, words: set[str]) -> bool:
    if first in words:
        return True
    stem = first[:-1] if first[-1:] in "аяеиоуыюь" else first
    return len(stem) >= 3 and any(
        w.startswith(stem) and 0 < len(w) - len(stem) <= 2 and _CYRILLIC.fullmatch(w[len(stem):])
        for w in words
    )


def _repeated(
    ids: Iterable[int], rows: Mapping[int, Candidate], threshold: float, least: int = 2
) -> set[int]:
    """The candidates with at least `least` - 1 near duplicates among the others.

    Only pairs that can reach `threshold` are compared (prefix filtering, as in Bayardo et al.,
    "Scaling up all pairs similarity search"): with each word set ordered rarest word first,
    two sets of Jaccard index t or more share a word among the first |x| - ceil(t |x|) + 1 of
    each. Comparing every pair took 60 % of ranking (~3 ms of a search at 64 candidates)."""
    words = {mid: _words(rows[mid].content) for mid in ids}
    if threshold <= 0:  # every pair, words in common or not
        return set(words) if len(words) >= least else set()
    df = Counter(w for found in words.values() for w in found)
    rarest_first = {w: i for i, w in enumerate(sorted(df, key=lambda w: (df[w], w)))}
    copies: dict[int, int] = {}
    empty = [mid for mid, found in words.items() if not found]
    if len(empty) > 1:  # no words at all: all alike (_jaccard)
        copies.update((mid, len(empty)) for mid in empty)
    by_word: dict[str, list[int]] = {}
    for mid, found in words.items():
        if not found:
            continue
        ordered = sorted(found, key=rarest_first.__getitem__)
        prefix = ordered[: len(found) - math.ceil(threshold * len(found) - 1e-9) + 1]
        for other in {o for w in prefix for o in by_word.get(w, ())}:
            if _jaccard(found, words[other]) >= threshold:
                copies[mid] = copies.get(mid, 1) + 1
                copies[other] = copies.get(other, 1) + 1
        for w in prefix:
            by_word.setdefault(w, []).append(mid)
    return {mid for mid, n in copies.items() if n >= least}


def content_words(text_: str) -> set[str]:
    # Language-independent: numbers and words of four letters or more (function words are
    # mostly shorter), compared by their first five letters so that inflected forms
    # ("работаю", "работает") match the question's own words.
    return {w[:5] for w in _WORD.findall(text_.lower()) if len(w) >= 4 or w.isdigit()}


_WORD = re.compile(r"\w+", re.UNICODE)
_CYRILLIC = re.compile(r"[а-яё]+")


def _words(content: str) -> set[str]:
    return set(_WORD.findall(content.lower()))


def _jaccard(a: set[str], b: set[str]) -> float:
    if not a or not b:
        return 1.0 if a == b else 0.0
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared)
