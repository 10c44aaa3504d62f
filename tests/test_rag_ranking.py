"""Recall's ranking on its own: dates in questions and turns, and each boost of `rank`."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, date, datetime
from typing import Any, cast

import pytest

from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.dates import (
    NamedDate,
    has_time_expression,
    is_temporal_question,
    named_dates,
)
from llm_bot_core.rag.search import (
    FEATURES,
    LEARNED,
    Candidate,
    Hit,
    Searcher,
    SearchOptions,
    _jaccard,
    _named_speaker,
    _repeated,
    about_self,
    counted_words,
    features,
    rank,
)

MAY_8 = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
JULY_2 = datetime(2023, 7, 2, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("question", "temporal"),
    [
        ("When did Caroline go to the support group?", True),
        ("What year did she move to Sweden?", True),
        ("How long ago was her birthday?", True),
        ("Когда Аня переехала в Казань?", True),
        ("В каком году ты закончил школу?", True),
        ("What did Caroline research?", False),
        ("Где работает мой брат?", False),
    ],
)
def test_temporal_questions_are_told_apart_from_others(question: str, temporal: bool) -> None:
    assert is_temporal_question(question) is temporal


@pytest.mark.parametrize(
    ("turn", "carries"),
    [
        ("I went to a LGBTQ support group yesterday.", True),
        ("We painted a sunrise last week!", True),
        ("She was born in 1994.", True),
        ("It was on 8 May.", True),
        ("Вчера ходили в кино.", True),
        ("Переехал в марте.", True),
        ("I may go there some time.", False),  # "may" the verb is no month
        ("Мама приготовила маленький пирог.", False),  # nor are "мама", "маленький"
        ("That painting looks lovely.", False),
    ],
)
def test_time_expressions_are_found_in_english_and_russian(turn: str, carries: bool) -> None:
    assert has_time_expression(turn) is carries


def test_named_dates_are_read_with_day_month_and_year_in_either_order() -> None:
    assert named_dates("What did she show on October 13, 2023?") == [NamedDate(10, 13, 2023)]
    assert named_dates("What happened on 8 May, 2023?") == [NamedDate(5, 8, 2023)]
    assert named_dates("What setback did she face in October 2023?") == [
        NamedDate(10, None, 2023)
    ]
    assert named_dates("When did Melanie go camping in June?") == [NamedDate(6, None, None)]
    assert named_dates("Что было 8 мая 2023 года?") == [NamedDate(5, 8, 2023)]
    assert named_dates("Куда мы ездили в августе?") == [NamedDate(8, None, None)]
    assert named_dates("How many times did she go to the beach in 2023?") == [
        NamedDate(None, None, 2023)
    ]
    assert named_dates("Which book did she read?") == []
    assert named_dates("I may come") == []


def test_a_named_period_covers_its_days_and_the_slack_after_it_only() -> None:
    june = NamedDate(6, None, None)
    assert june.covers(date(2023, 6, 30))
    assert not june.covers(date(2023, 7, 2))
    assert june.covers(date(2023, 7, 2), slack_days=3)  # told a couple of days later
    assert not june.covers(date(2023, 5, 31), slack_days=30)  # never before it
    day = NamedDate(5, 8, 2023)
    assert day.covers(date(2023, 5, 8)) and not day.covers(date(2024, 5, 8))


def candidate(mid: int, content: str, *, session: str = "s1", when: datetime = MAY_8,
              prev_id: int | None = None, next_id: int | None = None) -> Candidate:
    return Candidate(message_id=mid, role="user", content=content, created_at=when,
                     content_words=len(content.split()), session_id=session,
                     prev_id=prev_id, next_id=next_id)


# Reciprocal rank fusion with every boost off: each test turns on the one it checks. (The
# default "learned" fusion has its weights fitted together; its tests are further below.)
OPTIONS = SearchOptions(
    limit=3,
    min_score=-1.0,
    fusion="rrf",
    date_boost=0.0,
    session_date_boost=0.0,
    question_weight=1.0,
    echo_new_words=None,
    repeat_weight=1.0,
    repeat_copies=2,
    speaker_boost=0.0,
    self_boost=0.0,
)


def ids(hits: list[Hit]) -> list[int]:
    return [h.message_id for h in hits]


def test_a_negation_or_a_users_first_person_counts_as_a_content_word_of_a_turn_with_one() -> None:
    assert counted_words(1, "Я никогда не курил.") == 2
    assert counted_words(1, "I don't smoke.") == 2
    assert counted_words(1, "Нечасто курю.") == 1  # "не" only as a word of its own
    assert counted_words(1, "Понимаю.") == 1
    assert counted_words(0, "No, not yet!") == 0  # nothing negated: nothing to remember
    assert counted_words(3, "Я не люблю сладкое.") == 3
    # What a user says of themselves is a fact too ("я", "мне", "мой" are stop words).
    assert counted_words(1, "Я вегетарианец.") == 2
    assert counted_words(1, "Мне 30.") == 2
    assert counted_words(1, "I'm vegan.") == 2
    assert counted_words(1, "Я понимаю.", "assistant") == 1  # the bot's own first person
    assert counted_words(1, "Привет!") == 1
    assert counted_words(1, "Я сластёна?") == 1  # a question, not a statement


def test_fusion_orders_by_both_sides_and_keeps_the_threshold_and_the_filters() -> None:
    rows = {
        1: candidate(1, "I adore hiking in the mountains"),
        2: candidate(2, "Hiking boots are on sale"),
        3: candidate(3, "Ok"),  # no content to remember
        4: candidate(4, "I adore hiking in the mountains!"),  # near duplicate of 1
        5: candidate(5, "Mountains make me calm"),
    }
    dense = [(2, 0.9), (1, 0.85), (3, 0.84), (4, 0.83), (5, 0.5)]
    lexical = [(1, 3.0)]
    hits = rank("hiking", dense, lexical, rows, OPTIONS)
    assert ids(hits) == [1, 2, 5]  # found by both sides first
    strict = rank("hiking", dense, lexical, rows, replace(OPTIONS, min_score=0.8))
    assert ids(strict) == [1, 2]  # 5 is a dense-only match below the threshold


def test_a_when_question_favours_the_turn_that_says_when() -> None:
    rows = {
        1: candidate(1, "The support group was so inspiring"),
        2: candidate(2, "I went to the support group yesterday"),
    }
    dense = [(1, 0.9), (2, 0.88)]
    boosted = replace(OPTIONS, date_boost=0.3)
    assert ids(rank("When did she go to the support group?", dense, [], rows, OPTIONS)) == [1, 2]
    assert ids(rank("When did she go to the support group?", dense, [], rows, boosted)) == [2, 1]
    # Only a "when" question gets the boost.
    assert ids(rank("What was the support group like?", dense, [], rows, boosted)) == [1, 2]


def test_a_named_date_favours_turns_of_the_sessions_held_then() -> None:
    rows = {
        1: candidate(1, "We went camping by the lake", when=MAY_8, session="may"),
        2: candidate(2, "Camping with the kids was fun", when=JULY_2, session="july"),
    }
    dense = [(1, 0.9), (2, 0.88)]
    question = "What did Melanie do camping in June?"
    on_time = replace(OPTIONS, session_date_boost=0.5)
    assert ids(rank(question, dense, [], rows, on_time)) == [1, 2]  # July 2 is not in June
    late = replace(on_time, date_slack_days=7)
    assert ids(rank(question, dense, [], rows, late)) == [2, 1]


def test_a_turn_next_to_a_strong_hit_rises_with_the_neighbour_weight() -> None:
    rows = {
        1: candidate(1, "Did you finally adopt the puppy?", next_id=2),
        2: candidate(2, "Yes, we named him Max", prev_id=1),
        3: candidate(3, "Puppies need a lot of walks"),
    }
    dense = [(1, 0.9), (3, 0.89), (2, 0.8)]
    assert ids(rank("puppy name", dense, [], rows, OPTIONS)) == [1, 3, 2]
    near = replace(OPTIONS, neighbour_weight=0.3)
    assert ids(rank("puppy name", dense, [], rows, near)) == [1, 2, 3]


def test_session_diversity_lets_another_session_in() -> None:
    rows = {
        1: candidate(1, "Running a marathon in spring", session="a"),
        2: candidate(2, "Training for the marathon daily", session="a"),
        3: candidate(3, "Marathon medal hangs on the wall", session="b"),
    }
    dense = [(1, 0.9), (2, 0.89), (3, 0.88)]
    two = replace(OPTIONS, limit=2)
    assert ids(rank("marathon", dense, [], rows, two)) == [1, 2]
    assert ids(rank("marathon", dense, [], rows, replace(two, session_diversity=0.3))) == [1, 3]


def test_a_turn_that_is_itself_a_question_weighs_less() -> None:
    rows = {
        1: candidate(1, "Where do you work these days?"),
        2: candidate(2, "I work at a bakery downtown"),
    }
    dense = [(1, 0.9), (2, 0.89)]
    assert ids(rank("Where does she work?", dense, [], rows, OPTIONS)) == [1, 2]
    demoted = replace(OPTIONS, question_weight=0.8)
    assert ids(rank("Where does she work?", dense, [], rows, demoted)) == [2, 1]


def test_the_rerank_depth_cuts_each_side_before_fusion() -> None:
    rows = {i: candidate(i, f"turn number {i} here") for i in range(1, 5)}
    dense = [(1, 0.9), (2, 0.8), (3, 0.7), (4, 0.6)]
    assert ids(rank("q", dense, [], rows, replace(OPTIONS, limit=4, candidates=2))) == [1, 2]


def test_the_date_boosts_are_on_by_default_as_cross_validation_chose() -> None:
    rows = {
        1: candidate(1, "The support group was so inspiring"),
        2: candidate(2, "I went to the support group yesterday"),
    }
    dense = [(1, 0.9), (2, 0.88)]
    defaults = SearchOptions(limit=3, min_score=-1.0)
    assert (defaults.date_boost, defaults.session_date_boost) == (1.0, 1.0)
    assert ids(rank("When did she go to the support group?", dense, [], rows, defaults)) == [2, 1]


def test_assistant_turns_weigh_less_with_the_assistant_weight() -> None:
    rows = {
        1: replace(candidate(1, "Рад слышать, расскажи ещё!"), role="assistant"),
        2: candidate(2, "Я работаю стоматологом в клинике"),
    }
    dense = [(1, 0.9), (2, 0.89)]
    assert ids(rank("Кем я тружусь?", dense, [], rows, replace(OPTIONS, limit=2))) == [1, 2]
    demoted = replace(OPTIONS, assistant_weight=0.5)
    assert ids(rank("Кем я тружусь?", dense, [], rows, demoted)) == [2, 1]
    # The weight touches assistant turns only: a user turn in first place stays first.
    rows[1] = candidate(1, "Рад слышать, расскажи ещё!")
    assert ids(rank("Кем я тружусь?", dense, [], rows, demoted)) == [1, 2]


def test_only_turns_echoing_the_question_are_demoted_when_echo_words_are_set() -> None:
    rows = {
        1: candidate(1, "Где ты работаешь сейчас?"),  # the question again, nothing new
        2: candidate(2, "Где работает твоя сестра, в больнице или в аптеке?"),  # new content
        3: candidate(3, "Работаю бухгалтером на заводе"),
    }
    dense = [(1, 0.9), (2, 0.89), (3, 0.88)]
    question = "Где я работаю?"
    everywhere = replace(OPTIONS, question_weight=0.5)
    assert ids(rank(question, dense, [], rows, everywhere)) == [3, 1, 2]
    echo_only = replace(everywhere, echo_new_words=1)
    # "сейчас" is the one new word of turn 1: demoted; turn 2 brings four and keeps its score.
    assert ids(rank(question, dense, [], rows, echo_only)) == [2, 3, 1]


def test_a_lower_jaccard_threshold_collapses_looser_near_duplicates() -> None:
    rows = {
        1: candidate(1, "Как дела у тебя сегодня?"),
        2: candidate(2, "Как дела у тебя вечером?"),
        3: candidate(3, "Моя собака Рыжик любит гулять"),
    }
    dense = [(1, 0.9), (2, 0.89), (3, 0.8)]
    two = replace(OPTIONS, limit=2)
    assert ids(rank("собака", dense, [], rows, two)) == [1, 2]  # Jaccard 4/6 < 0.75: both kept
    assert ids(rank("собака", dense, [], rows, replace(two, dedupe_jaccard=0.6))) == [1, 3]


def test_by_default_a_question_turn_adding_little_gives_way_to_the_fact() -> None:
    # The defaults of reciprocal rank fusion ("learned" fusion: further below).
    defaults = SearchOptions(limit=2, min_score=-1.0, fusion="rrf")
    assert (defaults.question_weight, defaults.echo_new_words) == (0.4, 5)
    assert (defaults.assistant_weight, defaults.answer_share) == (1.0, 0.0)  # not kept
    rows = {
        1: candidate(1, "Кем работает моя сестра?"),  # an earlier question: crowds the fact
        2: candidate(2, "Какая у меня машина?"),
        3: candidate(3, "Я работаю стоматологом"),
        # A question that tells a lot keeps its score: six new content words.
        4: candidate(4, "Помнишь, мы с сестрой летом ездили в Казань на машине к бабушке?"),
    }
    dense = [(1, 0.9), (2, 0.89), (3, 0.88)]
    assert ids(rank("Кем я тружусь?", dense, [], rows, replace(OPTIONS, limit=2))) == [1, 2]
    assert ids(rank("Кем я тружусь?", dense, [], rows, defaults)) == [3, 1]
    dense = [(4, 0.9), (3, 0.88)]
    # (The asker's own statement would rise by the self boost too: off here, for the weight.)
    own_off = replace(defaults, self_boost=0.0)
    assert ids(rank("Кем я тружусь?", dense, [], rows, own_off)) == [4, 3]


def test_a_user_turn_rises_with_the_score_of_the_reply_answering_it() -> None:
    rows = {
        1: candidate(1, "Я работаю стоматологом", next_id=2),
        2: replace(candidate(2, "Здорово, расскажи ещё про работу!", prev_id=1), role="assistant"),
        3: candidate(3, "Мой друг тоже работает врачом"),
    }
    dense = [(2, 0.9), (3, 0.89), (1, 0.8)]
    pair = replace(OPTIONS, answer_share=1.0, assistant_weight=0.0)
    assert ids(rank("Кем я работаю?", dense, [], rows, OPTIONS)) == [2, 3, 1]
    # The reply found by meaning brings up the turn it answers, and gives up its own place.
    assert ids(rank("Кем я работаю?", dense, [], rows, pair)) == [1, 3, 2]
    # A user turn followed by another user turn gets nothing.
    rows[2] = candidate(2, "Здорово, расскажи ещё про работу!", prev_id=1)
    plain_pair = replace(pair, assistant_weight=1.0)
    assert ids(rank("Кем я работаю?", dense, [], rows, plain_pair)) == [2, 3, 1]


def reply_said_twice() -> dict[int, Candidate]:
    """A stock reply said twice, the fact asked about, and a near miss about someone else."""
    return {
        1: replace(candidate(1, "Рад слышать!"), role="assistant"),
        2: replace(candidate(2, "Рад слышать!", session="s2"), role="assistant"),
        3: candidate(3, "Я работаю стоматологом в частной клинике"),
        4: candidate(4, "Мой друг тоже работает врачом"),
    }


def test_a_stock_reply_said_again_gives_way_to_a_fact_told_once() -> None:
    rows = reply_said_twice()
    dense = [(1, 0.9), (2, 0.89), (4, 0.88), (3, 0.87)]
    two = replace(OPTIONS, limit=2)
    # Without the weight the reply takes a place (its copy is de-duplicated away).
    assert ids(rank("Кем я тружусь?", dense, [], rows, two)) == [1, 4]
    # Said twice, it weighs less; the turns said once keep their order.
    assert ids(rank("Кем я тружусь?", dense, [], rows, replace(two, repeat_weight=0.5))) == [4, 3]
    # Said once, the same reply keeps its place.
    del rows[2]
    dense = [(1, 0.9), (4, 0.88), (3, 0.87)]
    assert ids(rank("Кем я тружусь?", dense, [], rows, replace(two, repeat_weight=0.5))) == [1, 4]


def test_by_default_a_reply_said_three_times_gives_way_but_a_fact_told_twice_does_not() -> None:
    # The defaults of reciprocal rank fusion but the self boost (which would lift the fact, a
    # statement of the asker's).
    defaults = SearchOptions(limit=2, min_score=-1.0, fusion="rrf", self_boost=0.0)
    assert (defaults.repeat_weight, defaults.repeat_copies) == (0.4, 3)
    rows = reply_said_twice()
    dense = [(1, 0.9), (2, 0.89), (4, 0.88), (3, 0.87)]
    # Said twice: kept as it is (a fact told twice would be, too).
    assert ids(rank("Кем я тружусь?", dense, [], rows, defaults)) == [1, 4]
    rows[5] = replace(candidate(5, "Рад слышать!", session="s3"), role="assistant")
    dense.insert(2, (5, 0.885))
    assert ids(rank("Кем я тружусь?", dense, [], rows, defaults)) == [4, 3]


def test_a_near_duplicate_by_the_jaccard_threshold_counts_as_said_again() -> None:
    rows = {
        1: candidate(1, "Здорово, расскажи ещё!"),
        2: candidate(2, "Здорово, расскажи ещё что-нибудь!"),  # Jaccard 3/5: not repeated at 0.75
        3: candidate(3, "У меня высокое давление, пью таблетки"),
    }
    dense = [(1, 0.9), (2, 0.89), (3, 0.85)]
    once = replace(OPTIONS, limit=1, repeat_weight=0.5)
    assert ids(rank("Какие у меня проблемы со здоровьем?", dense, [], rows, once)) == [1]
    looser = replace(once, dedupe_jaccard=0.6)
    assert ids(rank("Какие у меня проблемы со здоровьем?", dense, [], rows, looser)) == [3]


def test_turns_said_again_are_the_pairs_a_full_comparison_finds() -> None:
    # The search compares only turns sharing one of their rarest words; it must find what
    # comparing every pair finds, for any threshold and number of copies (turns of no word
    # at all, "!!!", are all alike).
    rng = random.Random(7)
    vocabulary = ["как", "дела", "рад", "слышать", "здорово", "расскажи", "ещё", "кот", "дом"]
    rows = {
        mid: candidate(mid, " ".join(rng.sample(vocabulary, rng.randint(0, 6))) or "!!!")
        for mid in range(80)
    }
    words = {mid: set(row.content.split()) - {"!!!"} for mid, row in rows.items()}
    for threshold in (0.0, 0.3, 0.5, 0.6, 0.75, 0.8, 1.0):
        for least in (2, 3, 4):
            copies = {
                a: 1 + sum(b != a and _jaccard(words[a], words[b]) >= threshold for b in rows)
                for a in rows
            }
            expected = {a for a, n in copies.items() if n >= least}
            assert _repeated(dict.fromkeys(rows, 1.0), rows, threshold, least) == expected


def said_by(mid: int, content: str, name: str | None) -> Candidate:
    return replace(candidate(mid, content), user_name=name)


@pytest.mark.parametrize(("question", "named"), [
    ("What did Caroline research?", "Caroline"),
    ("What is Melanie's hobby?", "Melanie"),  # the possessive is a word of its own
    ("Что Маша говорила про отпуск?", "Маша"),
    ("Что ты сказал Маше?", "Маша"),  # Russian case forms of the first name
    ("Дай Ивану ключи", "Иван Петров"),  # ... read by the first name
    ("Is it the same as before?", None),  # "same" is not "Sam"
    ("Машина сломалась?", None),  # a longer word that starts like a name
    ("What did Caroline and Melanie do together?", None),  # two speakers named: no boost
    ("What did she research?", None),
])
def test_a_question_names_one_speaker_by_first_name_in_any_case(
    question: str, named: str | None,
) -> None:
    rows = [said_by(i, "x", n)
            for i, n in enumerate(["Caroline", "Melanie", "Маша", "Иван Петров", "Sam", None, " "])]
    assert _named_speaker(question, rows) == named


def test_a_question_naming_a_speaker_favours_that_speakers_turns_by_default() -> None:
    rows = {
        1: said_by(1, "I started researching adoption agencies last week", "Melanie"),
        2: said_by(2, "I have been researching adoption agencies lately", "Caroline"),
    }
    dense = [(1, 0.9), (2, 0.88)]
    defaults = SearchOptions(limit=3, min_score=-1.0)
    assert defaults.speaker_boost == 1.0
    assert ids(rank("What did Caroline research?", dense, [], rows, OPTIONS)) == [1, 2]
    assert ids(rank("What did Caroline research?", dense, [], rows, defaults)) == [2, 1]
    # A question naming no speaker, or one whose turns are not among the candidates: no change.
    assert ids(rank("What did she research?", dense, [], rows, defaults)) == [1, 2]
    assert ids(rank("What did Gina research?", dense, [], rows, defaults)) == [1, 2]


@pytest.mark.parametrize(("text", "about"), [
    ("Чем я зарабатываю на жизнь?", True),
    ("Где мы с супругой живём летом?", True),
    ("Меня мучает бессонница.", True),
    ("Работаю водителем автобуса.", True),  # the verb's person alone
    ("I'm vegan.", True),
    ("Where do we live?", True),
    ("Жена работает в банке.", False),
    ("Моя мама живёт в Самаре.", False),  # a possessive: about the mother
    ("Где работает моя жена?", False),
    ("Which US cities did John visit?", False),  # the country, not "us"
])
def test_a_text_about_its_speaker_is_told_from_one_about_others(text: str, about: bool) -> None:
    assert about_self(text) is about


def test_a_question_about_the_asker_favours_their_own_statements_by_default() -> None:
    rows = {
        1: candidate(1, "Жена работает в банке."),
        2: candidate(2, "Я работаю водителем автобуса."),
        3: candidate(3, "Где я работал до армии?"),  # a question of the user's: not a statement
        4: replace(candidate(4, "Я тоже работаю по выходным."), role="assistant"),
    }
    dense = [(1, 0.9), (3, 0.89), (4, 0.885), (2, 0.88)]
    defaults = SearchOptions(limit=4, min_score=-1.0)
    assert defaults.self_boost == 0.5
    off = replace(OPTIONS, limit=4)
    on = replace(off, self_boost=0.5)
    assert ids(rank("Чем я зарабатываю?", dense, [], rows, off)) == [1, 3, 4, 2]
    assert ids(rank("Чем я зарабатываю?", dense, [], rows, on)) == [2, 1, 3, 4]
    # A question about someone else: no change.
    assert ids(rank("Где работает моя жена?", dense, [], rows, on)) == [1, 3, 4, 2]


async def test_in_a_group_only_the_askers_own_statements_get_the_self_boost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a group every member's turns are "user" turns: another member's "I" is not the
    asker. The boost goes to the asker's own statements, and to none when the asker is
    unknown; in a private memory every user turn is the asker's."""
    rows = {
        1: replace(candidate(1, "Жена работает в банке."), user_id="alice"),
        2: replace(candidate(2, "Я работаю водителем автобуса."), user_id="bob"),
        3: replace(candidate(3, "Я работаю в школе."), user_id="alice"),
    }
    engine = cast(Any, type("Engine", (), {"execution_options": lambda self, **_: self})())
    searcher = Searcher(engine, cast(Any, None), cast(Any, None), "russian")

    async def candidates(ids_: Any, scope: Scope, *, neighbours: bool = True) -> Any:
        return rows

    monkeypatch.setattr(searcher, "candidates", candidates)
    dense = [(1, 0.9), (2, 0.89), (3, 0.88)]
    on = replace(OPTIONS, self_boost=0.5)
    question = "Чем я зарабатываю?"
    group = Scope(chat_id="g1")
    assert ids(await searcher._fuse(dense, [], group, on, question)) == [1, 2, 3]
    alice = replace(on, asker="alice")
    assert ids(await searcher._fuse(dense, [], group, alice, question)) == [3, 1, 2]
    bob = replace(on, asker="bob")
    assert ids(await searcher._fuse(dense, [], group, bob, question)) == [2, 1, 3]
    # Private: the user's memory alone (older rows carry no user id), the asker aside.
    private = await searcher._fuse(dense, [], Scope(user_id="alice"), alice, question)
    assert ids(private) == [2, 3, 1]


# "learned" fusion, the default: exp(weights . features), the weights fitted by
# bench/fusion_fit.py.
LEARNED_OPTIONS = SearchOptions(limit=3, min_score=-1.0)


def test_learned_fusion_is_the_default_and_reads_the_dense_side_deeper_for_statements() -> None:
    assert LEARNED_OPTIONS.fusion == "learned"
    assert LEARNED_OPTIONS.dense_read == LEARNED.statement_depth == 120
    assert OPTIONS.dense_read == OPTIONS.candidates == 40
    assert len(LEARNED.vector()) == len(FEATURES)
    # RAG_LEXICAL_WEIGHT scales the full-text side's two weights, and only those.
    halved = dict(zip(FEATURES, LEARNED.vector(0.5), strict=True))
    assert halved["lexical_rank"] == LEARNED.lexical_rank * 0.5
    assert halved["lexical_score"] == LEARNED.lexical_score * 0.5
    assert halved["dense_z"] == LEARNED.dense_z


def test_features_describe_each_sides_finding_and_the_signals() -> None:
    rows = {
        1: candidate(1, "Где я работаю?"),
        2: candidate(2, "Я работаю стоматологом"),
        3: candidate(3, "Сосед работает в банке"),
    }
    dense = [(1, 0.9), (2, 0.8), (3, 0.7)]
    lexical = [(3, 4.0), (2, 2.0)]
    found = features("Где я работаю?", dense, lexical, rows, LEARNED_OPTIONS)
    assert list(found) == [1, 2, 3]
    by_name = {mid: dict(zip(FEATURES, f, strict=True)) for mid, f in found.items()}
    # Cosines 0.9 / 0.8 / 0.7: standard scores +1.22 / 0 / -1.22.
    assert [round(by_name[m]["dense_z"], 2) for m in (1, 2, 3)] == [1.22, 0.0, -1.22]
    assert by_name[3]["lexical_rank"] == 60 / 61 and by_name[2]["lexical_rank"] == 60 / 62
    assert (by_name[3]["lexical_score"], by_name[2]["lexical_score"]) == (1.0, 0.5)
    assert by_name[1]["lexical_rank"] == by_name[1]["lexical_score"] == 0.0
    # The question is no statement: turn 2 is the first statement, turn 3 the second.
    assert (by_name[1]["statement_rank"], by_name[2]["statement_rank"]) == (0.0, 60 / 61)
    assert by_name[3]["statement_rank"] == 60 / 62
    assert by_name[1]["question"] == by_name[1]["echo_question"] == 1.0
    # A question about the asker: their own statement about themselves, not the neighbour's.
    assert (by_name[2]["own"], by_name[3]["own"]) == (1.0, 0.0)
    # Only the asker's: in a group, another member's "I" is not the asker's...
    group = replace(LEARNED_OPTIONS, asker="someone else")
    assert dict(zip(FEATURES, features("Где я работаю?", dense, lexical, rows, group)[2],
                    strict=True))["own"] == 0.0
    # ... and a group's search without an asker (self boost 0) has no `own` at all.
    unknown = replace(LEARNED_OPTIONS, self_boost=0.0)
    assert dict(zip(FEATURES, features("Где я работаю?", dense, lexical, rows, unknown)[2],
                    strict=True))["own"] == 0.0


def test_learned_fusion_finds_a_statement_that_questions_crowded_out() -> None:
    # Forty earlier questions sit closer to the new question than the fact does.
    rows = {i: candidate(i, f"Какой у меня номер {i}?") for i in range(1, 41)}
    rows[99] = candidate(99, "Я окончил политех.")
    dense = [(i, 0.9 - i * 0.001) for i in range(1, 41)] + [(99, 0.84)]
    question = "Какой вуз у меня за плечами?"
    assert 99 not in ids(rank(question, dense, [], rows, replace(OPTIONS, limit=5)))
    assert ids(rank(question, dense, [], rows, replace(LEARNED_OPTIONS, limit=5)))[0] == 99


def test_learned_fusion_keeps_what_the_boosts_did() -> None:
    rows = {
        1: candidate(1, "The support group was so inspiring"),
        2: candidate(2, "I went to the support group yesterday"),
    }
    dense = [(1, 0.9), (2, 0.88)]
    assert ids(rank("When did she go to the support group?", dense, [], rows,
                    LEARNED_OPTIONS)) == [2, 1]
    assert ids(rank("What was the support group like?", dense, [], rows,
                    LEARNED_OPTIONS)) == [1, 2]
    # A stock reply said three times gives way to the facts told once.
    replies = reply_said_twice()
    replies[5] = replace(candidate(5, "Рад слышать!", session="s3"), role="assistant")
    dense = [(1, 0.9), (2, 0.89), (5, 0.885), (4, 0.88), (3, 0.87)]
    two = replace(LEARNED_OPTIONS, limit=2)
    assert set(ids(rank("Кем я тружусь?", dense, [], replies, two))) == {3, 4}


def test_the_lexical_weight_turns_the_full_text_side_down_in_learned_fusion() -> None:
    rows = {
        1: candidate(1, "I adore hiking in the mountains"),
        2: candidate(2, "Boots are on sale downtown"),
    }
    dense = [(2, 0.9), (1, 0.6)]
    lexical = [(1, 3.0)]
    assert ids(rank("hiking", dense, lexical, rows, LEARNED_OPTIONS)) == [1, 2]
    vectors_only = replace(LEARNED_OPTIONS, lexical_weight=0.0)
    assert ids(rank("hiking", dense, lexical, rows, vectors_only)) == [2, 1]
