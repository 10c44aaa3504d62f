"""Russian recall, end to end through the chat API: does the fact reach the prompt's RAG block?

A user tells personal facts among small talk (and near-duplicate small talk) over several
sessions, each ended by /start; then, in a new session, asks about each fact in other words and
other word forms. The assistant's replies come from a fake OpenAI-compatible server cycling
generic answers ("Понятно!", "Хорошо, я запомню."), which are near duplicates too. Recall is the
share of questions whose fact appears in the prompt actually sent to the model, with the
product's defaults (top-K, similarity threshold, de-duplication). Prints one JSON object.

The sets: `memory` (bench/data/russian_memory.json, 25 questions, one user, the suite's
regression guard) and `paraphrase` (bench/data/russian_paraphrase.json: 122 facts told by six
users, 236 questions labelled by paraphrase type, split by a fixed seed into a `tune` part that
changes are chosen on and a `report` part that is only reported). And `final`
(bench/data/russian_final.json: 32 facts, 64 questions of the kinds the maintainers' held-out set
missed, written before the last ranking experiments and never used to choose anything: run with
the final defaults and only reported). And `numbers` (bench/data/russian_numbers.json: 40 facts
that carry a number, asked in the other form: words for digits, ordinals, dates; a seeded 50/50
`tune`/`report` split) and `blind` (bench/data/russian_blind.json: 40 facts of the held-out
set's miss kinds, written blind to the retrieval code; every fact's part is `blind`, only
reported) and `dev2` (bench/data/russian_dev2.json: 48 everyday facts of one user, 96 questions
in the held-out set's style, written blind to the retrieval code; every part is `tune`). And
`blind2`, `blind3`, `blind4`, `blind5` (50 facts of one user each, 100 questions, written blind
to the retrieval code and any result; only reported, their misses never read).
`--part` scores the facts of that part; `all` scores every fact.

`--data FILE` runs a set of your own (a held-out set written apart from this code). Only the
facts are required; the rest defaults as shown (one user, four facts to a session, each among
two filler lines drawn with the seed; the assistant's replies cycle generic answers):

    {"facts": [{"text": "Я работаю водителем автобуса.",
                "questions": ["Кем я тружусь?", {"q": "Я ведь баранку кручу?", "type": "idiom"}],
                "part": "report"}],
     "filler": ["Привет!", "Погода сегодня отличная."],
     "seed": 0, "users": 1, "facts_per_session": 4, "filler_per_fact": 2,
     "assistant_replies": ["Понятно!", "Хорошо, я запомню."]}

A question without a type counts as "unlabelled"; a fact without a part is "report".

    python bench/russian_recall.py [--set memory|paraphrase|final|numbers|blind|dev2|blind2|…]
                                   [--data FILE] [--part tune|report|all] [--misses]
                                   [--store pgvector|qdrant-local] [--embedder e5+use|e5|use]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from llm_bot_core.api.app import create_app
from llm_bot_core.config import Settings
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.memory.prompt import RECALL_FOOTER, RECALL_HEADER
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer

DATA_DIR = Path(__file__).resolve().parent / "data"
DATA = DATA_DIR / "russian_memory.json"
# The sets in the paraphrase format, by their --set name (bench/data/russian_<name>.json).
SETS = {name: DATA_DIR / f"russian_{name}.json"
        for name in ("paraphrase", "final", "numbers", "blind", "dev2", "blind2", "blind3",
                     "blind4", "blind5", "dev3", "dev4", "blind6")}
PARAPHRASE, FINAL, NUMBERS = SETS["paraphrase"], SETS["final"], SETS["numbers"]


def load() -> dict[str, Any]:
    """The 25-question set in its own format (sessions, questions pointing into them)."""
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def memory_plan(data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The 25-question set as one user's dialogue."""
    data = data or load()
    questions = [
        {"q": item["q"], "fact": data["sessions"][item["fact"][0]][item["fact"][1]],
         "type": "mixed", "part": "all"}
        for item in data["questions"]
    ]
    return [{"user": "ru-user", "chat": "ru-chat", "sessions": data["sessions"],
             "questions": questions}]


def load_paraphrase(path: Path = PARAPHRASE) -> dict[str, Any]:
    """A set in the paraphrase format (any of SETS; russian_paraphrase.json by default)."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


DEFAULTS: dict[str, Any] = {"seed": 0, "users": 1, "facts_per_session": 4, "filler_per_fact": 2,
                           "filler": [], "assistant_replies": ["Понятно!", "Хорошо, я запомню."]}


class SetError(ValueError):
    """A set file that cannot be run, with what is wrong in it."""


def normalized(data: Any) -> dict[str, Any]:
    """A set of one's own (`--data`) in the full paraphrase format, or SetError saying why not.

    Fills in the defaults (DEFAULTS; a question's type "unlabelled", a fact's part "report",
    its id its place) and accepts a question as a plain string."""
    if not isinstance(data, dict) or not isinstance(data.get("facts"), list) or not data["facts"]:
        raise SetError('a set is a JSON object with a non-empty list "facts"')
    out = {**DEFAULTS, **data}
    for key in ("seed", "users", "facts_per_session", "filler_per_fact"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise SetError(f'"{key}" must be an integer, not {value!r}')
        if key != "seed" and value < 1:
            raise SetError(f'"{key}" must be at least 1, not {value}')
    for key in ("filler", "assistant_replies"):
        if not isinstance(out[key], list) or not all(
                isinstance(x, str) and x.strip() for x in out[key]):
            raise SetError(f'"{key}" must be a list of non-empty strings')
    if not out["assistant_replies"]:
        raise SetError('"assistant_replies" must not be empty')
    facts = []
    for i, fact in enumerate(out["facts"]):
        where = f"facts[{i}]"
        if not isinstance(fact, dict) or not isinstance(fact.get("text"), str) \
                or not fact["text"].strip():
            raise SetError(f'{where} must be an object with a non-empty "text"')
        questions = fact.get("questions")
        if not isinstance(questions, list) or not questions:
            raise SetError(f'{where} must have a non-empty list "questions"')
        asked = []
        for j, q in enumerate(questions):
            if isinstance(q, str):
                q = {"q": q}
            if not isinstance(q, dict) or not isinstance(q.get("q"), str) or not q["q"].strip():
                raise SetError(f'{where}.questions[{j}] must be a non-empty string or an '
                               'object with a non-empty "q"')
            asked.append({"type": "unlabelled", **q})
            if not isinstance(asked[-1]["type"], str) or not asked[-1]["type"]:
                raise SetError(f'{where}.questions[{j}]: "type" must be a non-empty string')
        facts.append({"id": i, "part": "report", **fact, "questions": asked})
        if not isinstance(facts[-1]["part"], str) or not facts[-1]["part"]:
            raise SetError(f'{where}: "part" must be a non-empty string')
    # A fact counts as recalled when its text is in the prompt's recalled block: no other line
    # said in the dialogue may hold it.
    lines = [*out["filler"], *(q["q"] for f in facts for q in f["questions"])]
    for i, fact in enumerate(facts):
        others = [f["text"] for j, f in enumerate(facts) if j != i]
        held = next((line for line in [*others, *lines] if fact["text"] in line), None)
        if held is not None:
            raise SetError(f'facts[{i}]: its text is also part of another line ({held!r}); '
                           "a fact is found in the prompt by its text")
    out["facts"] = facts
    return out


def paraphrase_plan(data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The paraphrase set as `users` dialogues, laid out by the file's seed.

    Every question is asked whatever `part` is scored (earlier questions are messages too, and
    compete for the prompt): a part's figure is the same alone or within `all`.
    """
    data = data or load_paraphrase()
    rng = random.Random(data["seed"])
    facts = data["facts"]
    per_user = -(-len(facts) // data["users"])
    plan = []
    for u in range(data["users"]):
        mine = facts[u * per_user : (u + 1) * per_user]
        sessions = []
        filler, per_fact = data["filler"], min(data["filler_per_fact"], len(data["filler"]))
        for start in range(0, len(mine), data["facts_per_session"]):
            session = [rng.choice(filler[:6])] if filler else []
            for fact in mine[start : start + data["facts_per_session"]]:
                lines = [*rng.sample(filler, per_fact), fact["text"]]
                rng.shuffle(lines)
                session += lines
            sessions.append(session)
        questions = [
            {"q": q["q"], "fact": fact["text"], "type": q["type"], "part": fact["part"],
             "id": fact["id"]}
            for fact in mine
            for q in fact["questions"]
        ]
        plan.append({"user": f"ru-para-{u}", "chat": f"ru-para-chat-{u}", "sessions": sessions,
                     "questions": questions})
    return plan


def expansion_ms(plan: list[dict[str, Any]]) -> dict[str, float] | None:
    """Latency of the Russian query expansion per question, its cache emptied first."""
    from llm_bot_core.rag import russian

    found = russian.neighbours()
    if found is None:
        return None
    found.clear_cache()
    times = []
    for dialogue in plan:
        for item in dialogue["questions"]:
            start = time.perf_counter()
            russian.expand(item["q"])
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50": round(statistics.median(times), 2),
            "p95": round(times[int(len(times) * 0.95)], 2), "questions": len(times)}


def _share(found: int, total: int) -> float:
    return round(found / total, 4) if total else 0.0


async def evaluate(settings: Settings, fake: FakeLLM, data: dict[str, Any] | None = None,
                   plan: list[dict[str, Any]] | None = None,
                   replies: list[str] | None = None, part: str = "all") -> dict[str, Any]:
    """Run every user's dialogue through a fresh app and score the questions of `part`."""
    if plan is None:
        plan = memory_plan(data)
    cycle = itertools.cycle(replies or (data or load())["assistant_replies"])
    fake.reply = lambda messages: next(cycle)
    app = create_app(settings)
    misses: list[dict[str, Any]] = []
    counts: dict[str, dict[str, list[int]]] = {"type": defaultdict(lambda: [0, 0]),
                                               "part": defaultdict(lambda: [0, 0])}
    found = total = 0
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b")
        jobs = app.state.services.jobs
        for dialogue in plan:

            async def say(message: str, dialogue: dict[str, Any] = dialogue) -> None:
                response = await client.post(
                    "/v1/chat/handle",
                    json={"user_id": dialogue["user"], "chat_id": dialogue["chat"],
                          "chat_type": "private", "text": message})
                response.raise_for_status()
                await jobs.drain()

            for session in dialogue["sessions"]:
                for message in session:
                    await say(message)
                await client.post("/v1/chat/reset", json={"chat_id": dialogue["chat"]})
            for item in dialogue["questions"]:
                await say(item["q"])
                last_turn = fake.chat_requests[-1]["messages"][-1]["content"]
                block = (last_turn.split(RECALL_FOOTER, 1)[0]
                         if last_turn.startswith(RECALL_HEADER) else "")
                hit = item["fact"] in block
                if part not in ("all", item["part"]):
                    continue
                total += 1
                found += hit
                for key in ("type", "part"):
                    counts[key][item[key]][0] += hit
                    counts[key][item[key]][1] += 1
                if not hit:
                    misses.append({"question": item["q"], "fact": item["fact"],
                                   "type": item["type"], "part": item["part"],
                                   "recalled": block.splitlines()[1:]})
            await client.post("/v1/chat/reset", json={"chat_id": dialogue["chat"]})
        await client.aclose()
        description = getattr(app.state.services.semantic, "description", "off")
    by = {key: {name: {"recall": _share(*c), "found": c[0], "questions": c[1]}
                for name, c in sorted(value.items())}
          for key, value in counts.items()}
    return {"questions": total, "recall": _share(found, total), "found": found,
            "by_part": by["part"], "by_type": by["type"],
            "semantic_memory": description, "top_k": settings.rag.rag_top_k, "misses": misses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=("memory", *SETS), default="memory", dest="which")
    parser.add_argument("--data", type=Path, metavar="FILE",
                        help="a set of your own in the paraphrase format (see above)")
    parser.add_argument("--part", choices=("tune", "report", "all"), default="all",
                        help="score the questions of the facts of this part (all are asked)")
    parser.add_argument("--store", choices=("pgvector", "qdrant-local"), default="pgvector")
    parser.add_argument("--embedder", choices=("e5+use", "e5", "use"), default="e5+use")
    parser.add_argument("--misses", action="store_true", help="list the questions missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.data is not None or args.which in SETS:
        if args.data is None:
            para = load_paraphrase(SETS[args.which])
        else:
            try:
                para = normalized(json.loads(args.data.read_text()))
            except (OSError, ValueError) as exc:  # SetError and json's errors are ValueErrors
                parser.error(f"--data {args.data}: {exc}")
            args.which = str(args.data)
        plan, replies = paraphrase_plan(para), para["assistant_replies"]
    else:
        plan, replies = memory_plan(), load()["assistant_replies"]
    parts = {item["part"] for dialogue in plan for item in dialogue["questions"]}
    if args.part not in ("all", *parts):
        source = f"--data {args.data}" if args.data is not None else f"--set {args.which}"
        parser.error(f"{source} has no part {args.part!r} (its parts: "
                     f"{', '.join(sorted(parts))}); use --part all")
    workdir = Path(tempfile.mkdtemp(prefix="ru-recall-"))
    workdir.chmod(0o755)
    try:
        from llm_bot_core.db.embedded import start_embedded_postgres

        url = start_embedded_postgres(workdir)
        upgrade_to_head(url)
        with FakeLLMServer() as server:
            settings = Settings(
                _env_file=None, database_url=url, data_dir=workdir, llm_base_url=server.base_url,
                migrate_on_start=False, rag_enabled=True, rag_embedder="local",
                local_embedding_model=args.embedder,
                qdrant_path=workdir / "qdrant" if args.store == "qdrant-local" else None)
            result = asyncio.run(evaluate(settings, server.fake, plan=plan, replies=replies,
                                          part=args.part))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"set": args.which, "part": args.part, **result,
              "expansion_cold_ms": expansion_ms(plan)}
    if not args.misses:
        result["misses"] = [m["question"] for m in result["misses"]]
    print(json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
