"""Names in Latin and Cyrillic letters share a key on the full-text side (rag/translit.py)."""

from __future__ import annotations

import pytest

from llm_bot_core.rag import russian, translit

SAME_NAME = [
    ("Spotify", "Спотифай"),
    ("Netflix", "Нетфликс"),
    ("ThinkPad", "Тинкпад"),
    ("LitRes", "Литрес"),
    ("WhatsApp", "Вотсап"),
    ("YouTube", "Ютуб"),
    ("Jira", "Джира"),
    ("PlayStation", "Плейстейшн"),
    ("Chelsea", "Челси"),
    ("Google", "Гугл"),
    ("Xbox", "Иксбокс"),
]


@pytest.mark.parametrize(("latin", "cyrillic"), SAME_NAME)
def test_both_spellings_of_a_name_share_a_key(latin: str, cyrillic: str) -> None:
    assert translit.key(latin) is not None
    assert translit.key(latin) == translit.key(cyrillic)


def test_different_names_keep_different_keys() -> None:
    keys = {translit.key(latin) for latin, _ in SAME_NAME}
    assert len(keys) == len(SAME_NAME)


def test_a_key_of_one_consonant_would_join_unrelated_names_so_there_is_none() -> None:
    assert translit.key("Kia") is None
    assert translit.key("Киа") is None


def test_name_words_of_a_russian_text_get_keys_by_their_lemma() -> None:
    def keys(text: str) -> list[str]:
        return translit.keys(text, russian.lemma, russian.known)

    # Latin words, and a Cyrillic word pymorphy3 does not know, keyed by its lemma.
    assert keys("Слушаю всё в Spotify, смотрю Netflix.") == ["zqsptf", "zqntflks"]
    assert keys("Что я включаю в Спотифае?") == ["zqsptf"]
    # A capitalised word inside a sentence is a name; the sentence's first word and known
    # lowercase words are not.
    assert keys("Брат живёт в Казани. Сестра тоже.") == ["zqkzn"]
    assert keys("Я люблю гулять по вечерам.") == []


def test_english_texts_get_no_keys_so_their_full_text_is_unchanged() -> None:
    assert translit.keys("I listen to Spotify every day.", russian.lemma, russian.known) == []
    assert russian.lexical_text("I listen to Spotify") == "i listen to spotify"


def test_the_full_text_side_reads_a_name_with_its_key() -> None:
    assert russian.lexical_text("Смотрю Нетфликс.") == "смотреть нетфликс. zqntflks"
