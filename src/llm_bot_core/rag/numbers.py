"""Numbers said in words meet numbers written in digits on the full-text side.

"Мне тридцать семь, да?" shares no lexeme with "Мне 37 лет", nor "сорок четвёртый размер" with
"ношу 44-й", nor "двенадцатого апреля" with "12.04": a question about a number rarely writes it
the way the fact did. Before a text reaches PostgreSQL's full text (messages when indexed,
questions when searched) each number it says in words is appended in digits, and so are digit
forms PostgreSQL would split or keep whole ("45 000", "2 тысячи", "12.04.1990" → "45000",
"2000", "12 апрель 1990"). Both sides go through the same function, so either spelling meets the
other, and the words themselves stay for the texts that spell them alike.

Words are read by their pymorphy3 lemma ("четвёртого" → "четвёртый", "трое" → "трое").
Cardinals, ordinals and collectives combine in the usual order (hundreds, tens, units, then a
scale word: "две тысячи пятнадцатом" → 2015); a run that could not be one number ("два три")
gives each part alone. Hours join too: "18:00" also gives 6, "шесть вечера" (or "6 pm") 18.

English number words are not read: on LoCoMo (English, no question asks a number the other
way) they cost one question of 760 (product R@5 0.6691 → 0.6676), and no English set of ours
asks for them; the digit forms and hours above apply to any language.

Libraries were measured first: ru-word2number lists forms without ordinals, and damga's
inverse normaliser (130 MB of FSTs for seven languages) read "сорок четвёртого" as "40
четвёртого" and leaves ordinals under ten as words.
"""

from __future__ import annotations

import re
from collections.abc import Callable

_RU_UNITS = "ноль один два три четыре пять шесть семь восемь девять".split()
_RU_TEENS = ("десять одиннадцать двенадцать тринадцать четырнадцать пятнадцать шестнадцать "
             "семнадцать восемнадцать девятнадцать").split()
_RU_TENS = "двадцать тридцать сорок пятьдесят шестьдесят семьдесят восемьдесят девяносто".split()
_RU_HUNDREDS = "сто двести триста четыреста пятьсот шестьсот семьсот восемьсот девятьсот".split()
_RU_UNIT_ORD = "нулевой первый второй третий четвёртый пятый шестой седьмой восьмой девятый".split()
_RU_TEEN_ORD = ("десятый одиннадцатый двенадцатый тринадцатый четырнадцатый пятнадцатый "
                "шестнадцатый семнадцатый восемнадцатый девятнадцатый").split()
_RU_TEN_ORD = ("двадцатый тридцатый сороковой пятидесятый шестидесятый семидесятый "
               "восьмидесятый девяностый").split()
_RU_HUNDRED_ORD = ("сотый двухсотый трёхсотый четырёхсотый пятисотый шестисотый семисотый "
                   "восьмисотый девятисотый").split()
_RU_COLLECTIVE = "двое трое четверо пятеро шестеро семеро восьмеро девятеро десятеро".split()

# Word -> (value, place, ordinal). Place orders the parts of one number: hundreds (3) before
# tens (2) before units (0); a teen (1) takes the tens' and units' places together.
_Word = tuple[int, int, bool]
WORDS: dict[str, _Word] = {}
for _units, _teens, _tens, _ordinal in (
    (_RU_UNITS, _RU_TEENS, _RU_TENS, False),
    (_RU_UNIT_ORD, _RU_TEEN_ORD, _RU_TEN_ORD, True),
):
    WORDS |= {w: (i, 0, _ordinal) for i, w in enumerate(_units)}
    WORDS |= {w: (10 + i, 1, _ordinal) for i, w in enumerate(_teens)}
    WORDS |= {w: (20 + 10 * i, 2, _ordinal) for i, w in enumerate(_tens)}
WORDS |= {w: (100 * (i + 1), 3, False) for i, w in enumerate(_RU_HUNDREDS)}
WORDS |= {w: (100 * (i + 1), 3, True) for i, w in enumerate(_RU_HUNDRED_ORD)}
WORDS |= {w: (i + 2, 0, False) for i, w in enumerate(_RU_COLLECTIVE)}
SCALES: dict[str, tuple[int, bool]] = {
    "тысяча": (1000, False), "тысячный": (1000, True), "миллион": (10**6, False),
    "миллионный": (10**6, True), "миллиард": (10**9, False),
    # "двухтысячный" (the year 2000, "в двухтысячном") is its own word.
    "двухтысячный": (2000, True),
}
EVENING = frozenset({"вечер", "pm"})
"""Words after an hour that put it past noon."""
MONTHS = ("январь февраль март апрель май июнь июль август сентябрь октябрь ноябрь "
          "декабрь").split()

_TOKEN = re.compile(
    r"\d+(?:[ \u00a0]\d{3})+(?!\d)"  # 45 000
    r"|\d{1,2}:\d\d(?!\d)"  # 18:00
    r"|\d{1,2}\.\d\d(?:\.\d{2,4})?(?!\d|\.\d)"  # 12.04, 12.04.1990
    r"|\d+|[а-яё]+|[a-z]+|[^\sа-яёa-z\d]+|\s+"
)
# What may stand between the parts of one number: spaces, a hyphen.
_JOINER = re.compile(r"\s+|\s*-\s*")


def spoken(text: str, lemma: Callable[[str], str]) -> list[str]:
    """The numbers `text` says in words or in split digit forms, as digit strings."""
    found: list[str] = []
    run: list[tuple[int, int | None, bool]] = []
    digits: int | None = None
    half = False
    for token in _TOKEN.findall(text.lower()):
        if _JOINER.fullmatch(token):
            continue
        if token.isdigit():
            _flush(run, found)
            digits, half = int(token), False
            continue
        if token[0].isdigit():
            _flush(run, found)
            found += _digit_form(token)
            digits, half = None, False
            continue
        word = lemma(token) if "а" <= token[0] <= "я" or token[0] == "ё" else token
        if word in SCALES:
            value, ordinal = SCALES[word]
            if digits is not None and not run:
                found.append(str(digits * value))
            elif half:  # "полторы тысячи"
                found.append(str(value * 3 // 2))
            else:
                run.append((value, None, ordinal))
        elif word in WORDS:
            run.append(WORDS[word])
        else:
            before = len(found)
            _flush(run, found)
            hour = int(found[-1]) if len(found) > before else digits
            if word in EVENING and hour is not None and 1 <= hour <= 11:
                found.append(str(hour + 12))  # "шесть вечера" meets "18:00"
        digits, half = None, word == "полтора"
    _flush(run, found)
    return found


def _digit_form(token: str) -> list[str]:
    if ":" in token:  # "18:00" meets "шесть вечера", "6 pm"
        hour = int(token.split(":")[0])
        return [str(hour - 12)] if 13 <= hour <= 23 else []
    if "." in token:
        day, month, *year = token.split(".")
        if 1 <= int(day) <= 31 and 1 <= int(month) <= 12:
            return [str(int(day)), MONTHS[int(month) - 1], *year]
        return []
    return ["".join(ch for ch in token if ch.isdigit())]


def _flush(run: list[tuple[int, int | None, bool]], found: list[str]) -> None:
    """Read `run` as one or more numbers; empties it."""
    total = group = 0
    place = 9  # the place the next part must stay below
    started = False
    for value, part_place, ordinal in run:
        if part_place is None:  # a scale: multiplies what came before it
            total += (group or 1) * value
            group, place, started = 0, 9, True
        elif part_place < place and not (place == 2 and part_place == 1):
            group += value
            place, started = (-1 if part_place == 1 else part_place), True
        else:  # cannot continue this number: it ends, a new one starts
            found.append(str(total + group))
            total, group, place = 0, value, (-1 if part_place == 1 else part_place)
        if ordinal and part_place is not None:
            place = -1  # an ordinal is the last part ("сорок четвёртый")
    if started:
        found.append(str(total + group))
    run.clear()
