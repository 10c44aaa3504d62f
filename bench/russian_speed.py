"""Russian search latency at 10,000 messages per user, the thesaurus off and on, interleaved.

A Russian set's users tell their sessions through the chat API (fake chat model, local e5,
pgvector on an embedded PostgreSQL), as `bench/russian_recall.py` does; each user is then grown
to `--pad-to` messages with copies of the other users' indexed turns (vectors and lexemes
copied, as `bench/locomo_retrieval.py --pad-to` does) and the database is VACUUM ANALYZEd.
Every question of the set is then searched `--rounds` times through the product's search, once
with the thesaurus's weights at 0 (no expansion; `--off GLOSS` zeroes only the weight of the
definitions' words) and once at the defaults, the order alternating
from question to question. The first round is reported apart (`cold`: the thesaurus's words
lemmatised for the first time); LoCoMo's English questions get no Russian expansion, so this is
where its cost shows. `--compare fusion` alternates the ranking instead, the thesaurus at its
defaults: "off" is reciprocal rank fusion (`fusion="rrf"`, the dense side read 40 deep), "on"
the default "learned" fusion (read 120 deep for statements). Prints one JSON object.

    python bench/russian_speed.py [--set paraphrase] [--pad-to 10000] [--rounds 3]
                                  [--embedder e5+use|e5|use] [--off SYNONYM,...,GLOSS]
                                  [--compare thesaurus|fusion]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import patch

from locomo_retrieval import pad_user, percentile, run_on_database, vacuum
from russian_recall import SETS, evaluate, load_paraphrase, paraphrase_plan

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.rag import memory as memory_module
from llm_bot_core.rag import thesaurus
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.factory import build_semantic_memory
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.search import SearchOptions
from llm_bot_core.testing.fake_llm import FakeLLMServer

WEIGHTS = ("SYNONYM", "HYPERNYM", "HYPONYM", "GLOSS")


def _summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 0.5), 2), "p95": round(percentile(values, 0.95), 2),
            "searches": len(values)}


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    data = load_paraphrase(SETS[args.which])
    plan = paraphrase_plan(data)
    with FakeLLMServer() as server:
        settings = Settings(
            _env_file=None, database_url=database_url, data_dir=workdir,
            llm_base_url=server.base_url, migrate_on_start=False, rag_enabled=True,
            rag_embedder="local", local_embedding_model=args.embedder, db_pool_size=4)
        await evaluate(settings, server.fake, plan=plan, replies=data["assistant_replies"])
    engine = create_engine(database_url, settings.storage)
    memory = await build_semantic_memory(settings.rag, engine, data_dir=workdir, sweeper=False)
    if not isinstance(memory, VectorSemanticMemory):
        raise SystemExit("semantic memory did not start (see the log)")
    await memory.ready()
    store = memory._store
    if not isinstance(store, PgVectorStore):
        raise SystemExit("padding is measured on pgvector")
    sizes = [await pad_user(engine, store.table, d["user"], args.pad_to) for d in plan]
    await vacuum(engine)
    defaults = {name: getattr(thesaurus, name) for name in WEIGHTS}
    timings: dict[str, dict[str, list[float]]] = {
        "cold": {"off": [], "on": []}, "warm": {"off": [], "on": []}}
    expanded = 0
    n = 0
    for round_ in range(args.rounds):
        for dialogue in plan:
            scope = Scope(user_id=dialogue["user"])
            for item in dialogue["questions"]:
                n += 1
                for mode in (("off", "on") if n % 2 else ("on", "off")):
                    ranking = SearchOptions
                    if args.compare == "fusion" and mode == "off":
                        ranking = partial(SearchOptions, fusion="rrf")  # type: ignore[assignment]
                    elif args.compare == "thesaurus":
                        for name in args.off:
                            setattr(thesaurus, name, defaults[name] if mode == "on" else 0.0)
                    with patch.object(memory_module, "SearchOptions", ranking):
                        started = time.perf_counter()
                        await memory.search(item["q"], scope)
                        elapsed = (time.perf_counter() - started) * 1000
                    timings["cold" if round_ == 0 else "warm"][mode].append(elapsed)
                if round_ == 0:
                    expanded += bool(thesaurus.expand(item["q"]).words)
    await memory.aclose()
    await engine.dispose()
    return {
        "set": args.which, "compare": args.compare, "embedder": memory._embedder.name,
        "messages_per_user": min(sizes), "users": len(plan),
        "questions": sum(len(d["questions"]) for d in plan), "rounds": args.rounds,
        "questions_expanded": expanded,
        "off": ["fusion=rrf"] if args.compare == "fusion" else list(args.off),
        "search_ms": {when: {mode: _summary(v) for mode, v in by.items()}
                      for when, by in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", choices=tuple(SETS), default="paraphrase", dest="which")
    parser.add_argument("--pad-to", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--embedder", choices=("e5+use", "e5", "use"), default="e5+use")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--off", type=lambda v: tuple(v.split(",")), default=WEIGHTS,
                        help="the thesaurus weights set to 0 in the 'off' mode (default: all; "
                             "GLOSS alone measures the definitions' words)")
    parser.add_argument("--compare", choices=("thesaurus", "fusion"), default="thesaurus",
                        help="what 'off' and 'on' differ in")
    args = parser.parse_args()
    if not set(args.off) <= set(WEIGHTS):
        parser.error(f"--off takes names among {', '.join(WEIGHTS)}")
    run_on_database(run, args, prefix="ru-speed-")


if __name__ == "__main__":
    main()
