"""The Russian recall test (bench/russian_recall.py) as a regression guard on the default setup."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import astuple
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import text

from llm_bot_core.api.app import create_app
from llm_bot_core.rag import memory, russian, thesaurus
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.search import Searcher, SearchOptions
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import make_settings
from tests.rag_helpers import has_pgvector

BENCH = Path(__file__).resolve().parent.parent / "bench" / "russian_recall.py"


def bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("russian_recall", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_facts_told_in_russian_come_back_when_asked_in_other_words(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    overrides: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                    "data_dir": tmp_path}
    if not await has_pgvector(clean_db):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    settings = make_settings(clean_db, llm_server.base_url, **overrides)

    result = await bench_module().evaluate(settings, fake_llm)

    # Measured 0.84 with the defaults (21/25, with or without lemmas on the full-text side;
    # 0.92 with RAG_QUERY_EXPANSION=true). The misses are paraphrases with no shared word
    # ("Кем я тружусь?" for "Я работаю бухгалтером"), where the small e5 model is weakest. The
    # bar leaves room for one more miss on another CPU.
    assert result["questions"] == 25
    assert result["recall"] >= 0.8, result["misses"]


# --- the paraphrase set (bench/russian_recall.py --set paraphrase) ----------------------------

TYPES = {"synonym", "hypernym", "word_form", "idiom", "negation", "number", "english_name"}


def test_paraphrase_set_has_every_type_and_a_stable_seeded_split() -> None:
    bench = bench_module()
    data = bench.load_paraphrase()
    facts = data["facts"]
    assert len(facts) >= 120
    assert {q["type"] for f in facts for q in f["questions"]} == TYPES
    assert all(1 <= len(f["questions"]) <= 2 for f in facts)
    # The split is the documented one: random.Random(seed).shuffle of the ids, 40 % tune.
    ids = [f["id"] for f in facts]
    random.Random(data["seed"]).shuffle(ids)
    tune = set(ids[: round(len(ids) * 0.4)])
    assert {f["id"] for f in facts if f["part"] == "tune"} == tune
    assert {f["part"] for f in facts} == {"tune", "report"}
    # The dialogue is laid out by the seed too: the same messages in the same order every run.
    plan = bench.paraphrase_plan(data)
    assert plan == bench.paraphrase_plan(data)
    told = [m for dialogue in plan for session in dialogue["sessions"] for m in session]
    assert all(f["text"] in told for f in facts)
    assert sum(len(d["questions"]) for d in plan) == sum(len(f["questions"]) for f in facts)


def test_final_set_is_apart_from_the_tuned_one() -> None:
    bench = bench_module()
    final = bench.load_paraphrase(bench.FINAL)
    tuned = bench.load_paraphrase()
    facts = final["facts"]
    assert len(facts) >= 30
    assert {f["part"] for f in facts} == {"final"}
    assert {q["type"] for f in facts for q in f["questions"]} <= TYPES
    # Nothing in it was seen while tuning: no fact, question or filler line in common.
    def lines(data: dict[str, Any]) -> set[str]:
        found = {f["text"] for f in data["facts"]}
        found |= {q["q"] for f in data["facts"] for q in f["questions"]}
        return found | set(data["filler"])

    assert not lines(final) & lines(tuned)
    plan = bench.paraphrase_plan(final)
    told = [m for dialogue in plan for session in dialogue["sessions"] for m in session]
    assert all(f["text"] in told for f in facts)


# The kinds of the sets written to the issue's list of paraphrase types.
ISSUE_KINDS = {"synonym", "word_form", "hypernym", "idiom", "number", "negation", "english_name"}
NEW_SETS = {
    "numbers": {"number_words", "number_digits", "ordinal", "date"},
    "blind": ISSUE_KINDS - {"english_name"},
    "dev2": ISSUE_KINDS - {"english_name"},
    **{name: ISSUE_KINDS
       for name in ("blind2", "blind3", "blind4", "blind5", "dev3", "dev4", "blind6")},
}
FACTS = {"numbers": 40, "blind": 40, "dev2": 48, "blind2": 50, "blind3": 50, "blind4": 50,
         "blind5": 50, "dev3": 50, "dev4": 50, "blind6": 50}


def _strings(value: Any) -> set[str]:
    """Every string in a loaded JSON value, whatever the file's layout."""
    if isinstance(value, str):
        return {value}
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return set().union(*(_strings(item) for item in items))


@pytest.mark.parametrize("name", sorted(NEW_SETS))
def test_new_sets_load_and_are_written_apart_from_every_other_set(name: str) -> None:
    bench = bench_module()
    data = bench.load_paraphrase(bench.SETS[name])
    facts = data["facts"]
    assert len(facts) == FACTS[name] and data["users"] == 1
    assert all(len(f["questions"]) == 2 for f in facts)
    assert {q["type"] for f in facts for q in f["questions"]} <= NEW_SETS[name]
    plan = bench.paraphrase_plan(data)
    assert sum(len(d["questions"]) for d in plan) == 2 * FACTS[name]
    told = [m for dialogue in plan for session in dialogue["sessions"] for m in session]
    assert all(f["text"] in told for f in facts)
    # No fact or question is a line of any other set file, whatever its layout.
    said = {f["text"] for f in facts} | {q["q"] for f in facts for q in f["questions"]}
    for path in sorted((BENCH.parent / "data").glob("*.json")):
        if path != bench.SETS[name]:
            common = said & _strings(json.loads(path.read_text()))
            assert not common, (path.name, sorted(common))


def test_numbers_set_split_is_the_seeded_half_stated_in_about() -> None:
    bench = bench_module()
    data = bench.load_paraphrase(bench.NUMBERS)
    ids = [f["id"] for f in data["facts"]]
    assert f"random.Random({data['seed']}).sample(ids, 20)" in data["about"]
    tune = set(random.Random(data["seed"]).sample(ids, 20))
    assert {f["id"] for f in data["facts"] if f["part"] == "tune"} == tune
    assert {f["id"] for f in data["facts"] if f["part"] == "report"} == set(ids) - tune


@pytest.mark.parametrize("name", ["blind2", "blind3", "blind4", "blind5", "blind6"])
def test_blind_sets_are_only_reported(name: str) -> None:
    bench = bench_module()
    data = bench.load_paraphrase(bench.SETS[name])
    assert {f["part"] for f in data["facts"]} == {"blind"}
    assert "had not seen the retrieval code" in data["about"]


@pytest.mark.parametrize("name", ["dev3", "dev4"])
def test_new_tune_sets_are_tune_only(name: str) -> None:
    bench = bench_module()
    data = bench.load_paraphrase(bench.SETS[name])
    assert {f["part"] for f in data["facts"]} == {"tune"}
    assert "had not seen the retrieval code" in data["about"]


# --- a set of one's own (`--data FILE`) ------------------------------------------------------

OWN_SET: dict[str, Any] = {"facts": [
    {"text": "Я работаю водителем автобуса.",
     "questions": ["Кем я работаю?", {"q": "Я вожу автобус?", "type": "synonym"}]},
    {"text": "Моего кота зовут Барсик.", "questions": ["Как зовут моего кота?"], "part": "tune"},
], "filler": ["Привет!", "Погода сегодня отличная.", "Как дела?"]}


def test_a_set_of_ones_own_needs_only_its_facts_and_gets_the_defaults() -> None:
    bench = bench_module()
    data = bench.normalized(OWN_SET)
    plan = bench.paraphrase_plan(data)
    assert len(plan) == 1 and data["assistant_replies"] == bench.DEFAULTS["assistant_replies"]
    told = [m for session in plan[0]["sessions"] for m in session]
    assert told.count("Я работаю водителем автобуса.") == 1
    assert len(told) == 1 + 2 * (1 + 2)  # one greeting, each fact among two filler lines
    asked = [(q["q"], q["type"], q["part"]) for q in plan[0]["questions"]]
    assert asked == [("Кем я работаю?", "unlabelled", "report"),
                     ("Я вожу автобус?", "synonym", "report"),
                     ("Как зовут моего кота?", "unlabelled", "tune")]
    # No filler at all: the facts alone, one session per four.
    bare = bench.paraphrase_plan(bench.normalized({"facts": OWN_SET["facts"]}))
    assert bare[0]["sessions"] == [["Я работаю водителем автобуса.", "Моего кота зовут Барсик."]]
    # A full set file is run exactly as --set runs it.
    for name in bench.SETS:
        full = bench.load_paraphrase(bench.SETS[name])
        assert bench.paraphrase_plan(bench.normalized(full)) == bench.paraphrase_plan(full)


@pytest.mark.parametrize(("bad", "says"), [
    ([], '"facts"'),
    ({"facts": []}, '"facts"'),
    ({"facts": [{"questions": ["Кто я?"]}]}, 'facts[0] must be an object with a non-empty "text"'),
    ({"facts": [{"text": "Я врач."}]}, 'facts[0] must have a non-empty list "questions"'),
    ({"facts": [{"text": "Я врач.", "questions": [" "]}]}, "facts[0].questions[0]"),
    ({"facts": [{"text": "Я врач.", "questions": [{"type": "synonym"}]}]}, "questions[0]"),
    ({"facts": OWN_SET["facts"], "users": 0}, '"users" must be at least 1'),
    ({"facts": OWN_SET["facts"], "seed": "x"}, '"seed" must be an integer'),
    ({"facts": OWN_SET["facts"], "filler": ["ok", 3]}, '"filler" must be a list'),
    ({"facts": OWN_SET["facts"], "assistant_replies": []}, '"assistant_replies" must not'),
    ({"facts": [OWN_SET["facts"][0], OWN_SET["facts"][0]]}, "also part of another line"),
    ({"facts": [{"text": "Я врач.", "questions": ["Кто я?"]}], "filler": ["Я врач. Шучу."]},
     "facts[0]: its text is also part of another line ('Я врач. Шучу.')"),
    ({"facts": [{"text": "Я врач.", "questions": ["Я врач.?"]}]}, "also part of another line"),
    ({"facts": [{"text": "Я врач.", "questions": ["Кто я?"], "part": 3}]}, '"part" must be'),
    ({"facts": [{"text": "Я врач.", "questions": [{"q": "Кто я?", "type": None}]}]},
     '"type" must be'),
])
def test_a_set_that_cannot_be_run_is_refused_saying_why(bad: Any, says: str) -> None:
    bench = bench_module()
    with pytest.raises(bench.SetError, match=re.escape(says)):
        bench.normalized(bad)


def test_the_bench_refuses_a_bad_set_file_before_starting_anything(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    for content, says in (("{not json", "Expecting property name"),
                          (json.dumps({"facts": [{"text": "Я врач."}]}), '"questions"')):
        path.write_text(content)
        run = subprocess.run([sys.executable, str(BENCH), "--data", str(path)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 2, run.stderr
        assert f"--data {path}: " in run.stderr and says in run.stderr
        assert "Traceback" not in run.stderr
    run = subprocess.run([sys.executable, str(BENCH), "--data", str(tmp_path / "missing.json")],
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "No such file" in run.stderr


async def test_a_set_of_ones_own_runs_end_to_end(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    bench = bench_module()
    data = bench.normalized(OWN_SET)
    overrides: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                    "data_dir": tmp_path}
    if not await has_pgvector(clean_db):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    settings = make_settings(clean_db, llm_server.base_url, **overrides)
    result = await bench.evaluate(settings, fake_llm, plan=bench.paraphrase_plan(data),
                                  replies=data["assistant_replies"])
    # Three questions sharing their fact's words: each reaches the prompt.
    assert (result["questions"], result["found"]) == (3, 3), result["misses"]
    assert result["by_part"]["tune"] == {"recall": 1.0, "found": 1, "questions": 1}
    assert result["by_type"]["unlabelled"]["questions"] == 2


@pytest.mark.parametrize("name", ["dev2", "blind"])
def test_sets_whose_misses_were_read_are_only_for_tuning(name: str) -> None:
    # The first blind set became a tune set when its misses were read (2026-12-02).
    bench = bench_module()
    data = bench.load_paraphrase(bench.SETS[name])
    assert {f["part"] for f in data["facts"]} == {"tune"}
    plan = bench.paraphrase_plan(data)
    assert {item["part"] for d in plan for item in d["questions"]} == {"tune"}


def test_query_words_bring_their_neighbours_but_pronouns_bring_none() -> None:
    expander = russian.neighbours()
    assert expander is not None, "natasha's navec vectors are a dependency"
    work = russian.expand("Кем я тружусь?")
    assert "работать" in work.words
    assert all(0 < w < 1 for w in work.weights)  # below a word of the query itself
    assert "суши" in russian.expand("Какие роллы я пробовал?").words
    # Lemmas: an inflected question word is found by its lemma, and its own other forms
    # (the stems' job) are not added.
    assert [lemma for _, lemma in russian.content_words("Какие роллы я пробовал?")] == [
        "ролл", "пробовать"]
    assert not any(w.startswith("ролл") for w in russian.expand("Какие роллы").words)
    assert russian.expand("Какой мой? Где там я?").words == []


async def test_paraphrased_questions_find_facts_through_expanded_full_text(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Questions sharing no word with their fact, which the dense side alone missed in the
    # baseline run (bench/results/russian_paraphrase_baseline.json), told among the set's
    # filler and near misses.
    bench = bench_module()
    data = bench.load_paraphrase()
    facts = {
        "У меня на балконе растут помидоры и огурцы.": ("Что у меня на лоджии?", "synonym"),
        "Я никогда не ел суши.": ("Какие роллы я пробовал?", "negation"),
        "Я работаю стоматологом в частной клинике.": ("Кем я тружусь?", "synonym"),
    }
    filler = data["filler"]
    sessions = [[filler[i], fact, filler[-i - 1], filler[i + 20]] for i, fact in enumerate(facts)]
    questions = [{"q": q, "fact": fact, "type": kind, "part": "all"}
                 for fact, (q, kind) in facts.items()]

    async def recall(expansion: bool) -> dict[str, Any]:
        # A user of its own per run: the other run's questions must not be recalled.
        plan = [{"user": f"ru-exp-{expansion}", "chat": f"ru-exp-chat-{expansion}",
                 "sessions": sessions, "questions": questions}]
        # e5 alone, no thesaurus, reciprocal rank fusion without the self boost: the setup
        # whose dense side missed these (the default's USE share, thesaurus and learned
        # fusion find "Кем я тружусь?" without navec).
        monkeypatch.setattr(memory, "SearchOptions",
                            partial(SearchOptions, self_boost=0.0, fusion="rrf"))
        overrides: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                        "data_dir": tmp_path, "rag_query_expansion": expansion,
                                        "rag_thesaurus": False, "local_embedding_model": "e5"}
        if not await has_pgvector(clean_db):
            overrides["qdrant_path"] = tmp_path / f"qdrant-{expansion}"
        settings = make_settings(clean_db, llm_server.base_url, **overrides)
        result: dict[str, Any] = await bench.evaluate(
            settings, fake_llm, plan=plan, replies=data["assistant_replies"])
        return result

    plain = await recall(False)
    expanded = await recall(True)
    assert expanded["found"] == 3, expanded["misses"]
    # The dense side alone ranks small talk above the fact: "тружусь" needed "работать".
    assert [m["question"] for m in plain["misses"]] == ["Кем я тружусь?"]
    assert set(expanded["by_type"]) == {"synonym", "negation"}


def test_full_text_reads_lemmas_so_forms_snowball_cannot_join_meet() -> None:
    assert russian.lemmatize("Я шёл домой") == "я идти домой"
    assert russian.lemmatize("Людей") == "человек"
    assert russian.lemmatize("Мою собаку зовут Рыжик, ей 5 лет") == (
        "мой собака звать рыжик, она 5 год")
    assert russian.lemmatize("Where is John?") == "where is john?"  # other scripts as they are


@asynccontextmanager
async def told(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path,
    user: str, sessions: list[list[str]], fact: str,
) -> AsyncIterator[tuple[Searcher, Scope, int]]:
    """`sessions` told by `user` through the API and indexed; the searcher, the user's scope
    and the id of the message `fact`. Only told: a question searched here is not a message."""
    bench = bench_module()
    plan = [{"user": user, "chat": f"{user}-chat", "sessions": sessions, "questions": []}]
    overrides: dict[str, object] = {"rag_enabled": True, "rag_embedder": "local",
                                    "data_dir": tmp_path}
    if not await has_pgvector(clean_db):
        overrides["qdrant_path"] = tmp_path / "qdrant"
    settings = make_settings(clean_db, llm_server.base_url, **overrides)
    replies = bench.load_paraphrase()["assistant_replies"]
    await bench.evaluate(settings, fake_llm, plan=plan, replies=replies)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        _, searcher = await app.state.services.semantic.ready()
        async with app.state.services.engine.connect() as conn:
            fact_id = (await conn.execute(
                text("SELECT id FROM messages WHERE content = :c"), {"c": fact})).scalar_one()
        yield searcher, Scope(user_id=user), fact_id


def among_filler(fact: str) -> list[list[str]]:
    """Two sessions of the paraphrase set's small talk, `fact` told in the first."""
    filler = bench_module().load_paraphrase()["filler"]
    return [[filler[0], filler[40], fact, filler[45]], [filler[3], filler[50], filler[38]]]


async def lexical_ids(searcher: Searcher, scope: Scope, question: str) -> list[int]:
    """The five best of the full-text side alone."""
    return [mid for mid, _ in await searcher.lexical(question, scope, [], 5)]


# Each: the user, the fact, a question whose words meet it on the full-text side only through
# one mechanism, and the module attributes that switch that mechanism off.
JOINED_BY: dict[str, tuple[str, str, str, list[tuple[ModuleType, str, object]]]] = {
    # "детей" is a form of "ребёнок" (snowball alone: "дет" and "ребенк"); a baseline miss.
    "lemmas": ("ru-lemma", "Мы планируем второго ребёнка в следующем году.", "Мы хотим детей?",
               [(russian, "LEMMAS", False)]),
    # "овощ" brings "помидор", which this user wrote.
    "thesaurus": ("ru-thes", "У меня на балконе растут помидоры и огурцы.",
                  "Какие овощи я сажаю?",
                  [(thesaurus, weight, 0.0) for weight in ("SYNONYM", "HYPERNYM", "HYPONYM")]),
    # "сластёна" is defined, in its colloquial sense, as "тот, кто любит сладкое".
    "gloss": ("ru-gloss", "Я не люблю сладкое, даже торты.", "Я сластёна?",
              [(thesaurus, "GLOSS", 0.0)]),
    # A brand told in Latin letters, asked in Cyrillic (an inflected form), and the other way.
    "names": ("ru-names", "Подкасты слушаю только в Spotify, подписка семейная.",
              "Что я включаю в Спотифае?", [(russian, "NAMES", False)]),
    "names back": ("ru-names-back", "Мой ноутбук — старый Тинкпад, ему семь лет.",
                   "Я печатаю на ThinkPad?", [(russian, "NAMES", False)]),
}


@pytest.mark.parametrize("mechanism", JOINED_BY)
async def test_full_text_joins_question_and_fact_through_lemmas_and_the_thesaurus(
    clean_db: str, llm_server: FakeLLMServer, fake_llm: FakeLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, mechanism: str,
) -> None:
    user, fact, question, switches = JOINED_BY[mechanism]
    async with told(clean_db, llm_server, fake_llm, tmp_path, user, among_filler(fact),
                    fact) as (searcher, scope, fact_id):
        # The full-text side alone finds the fact...
        assert fact_id in await lexical_ids(searcher, scope, question)
        # ... and misses it with the mechanism off (without lemmatising the question, its
        # stems miss the lemmas the fact was indexed by; without the thesaurus, no shared word).
        for module, name, value in switches:
            monkeypatch.setattr(module, name, value)
        assert fact_id not in await lexical_ids(searcher, scope, question)


# --- the thesaurus (rag/thesaurus.py) -------------------------------------------------------


def test_thesaurus_brings_synonyms_categories_and_items_but_not_catalogues() -> None:
    assert thesaurus.thesaurus() is not None, "wiki-ru-wordnet is a dependency"
    car = thesaurus.expand("Какого цвета моя тачка?")
    assert "машина" in car.words  # a synonym
    assert all(0 < w < 1 for w in car.weights)  # below a word of the query itself
    assert {"помидор", "томат"} <= set(thesaurus.expand("Какие овощи я выращиваю?").words)
    assert "гриб" in thesaurus.expand("Я люблю жареные опята?").words  # the category
    # "имя" has thousands of names below it: a catalogue, not a category a question narrows.
    assert "ольга" not in thesaurus.expand("Как имя моей супруги?").words
    assert thesaurus.expand("Какой мой? Где там я?").words == []
    assert thesaurus.expand("What did Alice say about her dog?").words == []  # Russian only
    # Its own word is the stems' job, in any form.
    assert not any(w.startswith("овощ") for w in thesaurus.expand("Какие овощи").words)


def test_definitions_lose_their_examples_labels_and_markup() -> None:
    field = ("пахать~ru~пахать~ru~{{перен.}}, {{разг.}} [[тяжело]] [[работать|работал]], "
             "много ''(на совесть)'' {{пример|Пашет {{выдел|день}} и ночь.|автор}}~41431~89512")
    assert thesaurus._definition(field).replace(",", " ").split() == ["тяжело", "работать", "много"]
    assert thesaurus._definition("дрыхнуть~ru~дрыхнуть~ru~{{прост.}} {{=|спать}}~1~2").split() \
        == ["спать"]


def test_colloquial_senses_bring_the_words_they_are_defined_by() -> None:
    gloss = [dict(zip(*astuple(thesaurus.expand(q)), strict=True))
             for q in ("Я сластёна?", "Какие передачи по ящику я смотрю?", "Я много вкалываю?")]
    assert gloss[0]["сладкое"] == thesaurus.GLOSS  # "тот, кто любит сладкое"
    assert gloss[1]["телевизор"] == thesaurus.GLOSS  # "ящик", colloquially
    # Only colloquial, slang, figurative or "the same as" senses are read: "вкалывать" in its
    # plain sense is "протыкать, вводить внутрь".
    assert "протыкать" not in gloss[2] and "внутрь" not in gloss[2]
    assert "работать" in gloss[2]


def test_the_thesaurus_and_navec_neighbours_merge_each_word_at_its_highest_weight() -> None:
    settings = make_settings("postgresql+asyncpg://unused/x", "http://127.0.0.1:9",
                             rag_thesaurus=True, rag_query_expansion=True).rag
    expand = memory.expander(settings)
    assert expand is not None
    question = "Какие овощи я выращиваю?"
    both = dict(zip(*astuple(expand(question)), strict=True))
    alone = [dict(zip(*astuple(e), strict=True))
             for e in (thesaurus.expand(question), russian.expand(question))]
    assert set(both) == set(alone[0]) | set(alone[1])
    assert all(w == max(a.get(word, 0.0) for a in alone) for word, w in both.items())
    assert memory.expander(settings.model_copy(
        update={"rag_thesaurus": False, "rag_query_expansion": False})) is None
    assert memory.expander(settings.model_copy(
        update={"rag_query_expansion": False})) is thesaurus.expand
