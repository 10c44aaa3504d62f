"""Numbers said in words meet numbers written in digits on the full-text side (rag/numbers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_bot_core.rag import russian
from llm_bot_core.rag.numbers import spoken
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.test_rag_russian import bench_module, told


def said(text: str) -> list[str]:
    return spoken(text, russian.lemma)


@pytest.mark.parametrize(("phrase", "digits"), [
    ("Мне тридцать семь, да?", ["37"]),
    ("Я ношу сорок четвёртый размер", ["44"]),  # an ordinal ends the number
    ("обувь сорок четвёртого размера", ["44"]),  # any case: read by the lemma
    ("в две тысячи пятнадцатом году", ["2015"]),
    ("сто двадцать пять рублей", ["125"]),
    ("у меня трое детей", ["3"]),  # collectives
    ("триста тысяч", ["300000"]),
    ("полторы тысячи", ["1500"]),
    ("зарплата 45 000, хочу 2 тысячи", ["45000", "2000"]),  # digit forms PostgreSQL would split
    ("родилась 12.04.1990.", ["12", "апрель", "1990"]),  # a date meets "12 апреля 1990"
    ("ложусь в одиннадцать вечера", ["11", "23"]),  # an evening hour meets "23:00"
    ("заканчиваю в 18:00", ["6"]),  # ... and the reverse
    ("два три", ["2", "3"]),  # could not be one number: each alone
    ("двадцать пятнадцать", ["20", "15"]),
    ("She turned forty-four", []),  # English number words: not measured to help (module doc)
    ("at 6 pm", ["18"]),
    ("налей 1.5 литра", []),  # a decimal is no date
    ("Мне 37 лет, живу на 9-м этаже", []),  # digits PostgreSQL reads already
    ("Привет, как дела?", []),
])
def test_numbers_in_words_are_read_as_digits(phrase: str, digits: list[str]) -> None:
    assert said(phrase) == digits


def test_full_text_keeps_the_words_and_adds_the_digits() -> None:
    assert russian.lexical_text("Мне тридцать семь") == "я тридцать семь 37"
    assert russian.lexical_text("Мне 37 лет") == "я 37 год"


async def test_number_asked_in_words_finds_the_fact_told_in_digits(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    filler = bench_module().load_paraphrase()["filler"]
    fact = "Кстати, мне 37 лет."
    near = ["Моему брату 35 лет.", "Соседке недавно исполнилось 40 лет."]
    sessions = [[filler[0], near[0], fact, filler[45]], [filler[3], near[1], filler[38]]]
    question = "Сколько мне, тридцать семь?"
    async with told(clean_db, llm_server, fake_llm, tmp_path, "ru-num", sessions, fact) as (
        searcher, scope, fact_id,
    ):
        # "37" is the question's rarest word; the other ages differ. (The reply after the fact
        # is indexed with the fact as its context, and may stand beside it.)
        found = [mid for mid, _ in await searcher.lexical(question, scope, [], 5)]
        assert fact_id in found[:2]
        # Without the digits the question's words meet nothing of the fact but "я".
        monkeypatch.setattr(russian, "NUMBERS", False)
        found = [mid for mid, _ in await searcher.lexical(question, scope, [], 5)]
        assert fact_id not in found[:2]
