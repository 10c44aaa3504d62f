"""Ranking experiments on a Russian recall set, replayed on recorded candidates.

`bench/russian_recall.py --set paraphrase` (or another `--set`) runs the whole product once
(fake chat model, e5, pgvector): here every call of `rag.search.rank` it makes is recorded with
what the two search sides found, and the questions' calls are then replayed with other ranking
constants. Nothing the ranking decides changes what is stored (the fake model's replies cycle
whatever the prompt holds), so the replay of a question is what the product would recall with
those constants. A question counts if its fact is among the recalled turns, as in the end-to-end
bench; the replay with the product's defaults must give the bench's own figure (`check` in the
output).

    python bench/russian_replay.py                 # record (~10 min), then replay; prints JSON
    python bench/russian_replay.py --calls .cache/russian_calls_paraphrase.pkl  # replay it
    python bench/russian_replay.py --depth 80     # record each side 80 deep (replays read less)
    python bench/russian_replay.py --set dev2     # another set of russian_recall's SETS

A deeper recording runs the bench with each side read that deep: its end-to-end figure and the
replay of its defaults (`check`, `replayed_defaults`) are of that deeper search, not of the
product's (`candidates=40`); bench/fusion_fit.py replays recordings at the product's depth.

A recording is saved as .cache/russian_calls_<set>.pkl unless `--save` says otherwise; replay
it with the same `--set`.

A recording keeps the options of its time; fields added to `SearchOptions` since then replay at
their defaults, and each experiment's first value is the neutral one it starts from. The
experiments tune the constants of reciprocal rank fusion and replay with `fusion="rrf"`, the
ranking they were chosen for; the replay of the defaults uses the product's ("learned" fusion,
whose weights `bench/fusion_fit.py` fits). Record `--depth 120` for it: it reads the dense side
that deep.

Constants are chosen on the `tune` part only (the neutral value kept on ties); the set's other
parts (`report` for the paraphrase set) are printed beside them and never used to choose. A set
without a `tune` part only replays the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import pickle
import shutil
import sys
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, fields, replace
from functools import partial
from pathlib import Path
from typing import Any
from unittest.mock import patch

from russian_recall import SETS, evaluate, load_paraphrase, paraphrase_plan

from llm_bot_core.config import Settings
from llm_bot_core.db.migrate import upgrade_to_head
from llm_bot_core.rag import memory, search
from llm_bot_core.rag.search import Learned, SearchOptions
from llm_bot_core.testing.fake_llm import FakeLLMServer

REPO = Path(__file__).resolve().parent.parent

# Each experiment: constants and the values tried, the first one neutral.
EXPERIMENTS: dict[str, dict[str, list[Any]]] = {
    "baseline": {},
    "assistant turns weigh less": {"assistant_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]},
    "question turns weigh less": {"question_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]},
    "near duplicates (Jaccard threshold)": {"dedupe_jaccard": [0.75, 0.6, 0.5, 0.4, 0.3]},
    "user turn + its answer as one unit": {
        "answer_share": [0.0, 0.5, 1.0],
        "assistant_weight": [1.0, 0.5, 0.0],
    },
}
EXPERIMENTS["repeated turns weigh less"] = {"repeat_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]}
EXPERIMENTS["rerank depth"] = {"candidates": [40, 60, 80]}
# A question about the asker favours their own first-person statements (the default since
# 2026-12-02 is 0.5; docs/retrieval-experiments.md).
EXPERIMENTS["own statements for a question about the asker"] = {
    "self_boost": [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]
}
# Tried after the single experiments: the two weights together, and each only for turns that
# add few content words beyond the question.
JOINT: dict[str, dict[str, list[Any]]] = {
    "repeated turns weigh less, rerank depth": {
        "repeat_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
        "candidates": [40, 60, 80],
    },
    "assistant + question weights": {
        "assistant_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
        "question_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
    },
    "assistant + question weights, only echoing turns": {
        "assistant_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
        "question_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0],
        "echo_new_words": [None, 0, 1, 2, 3],
    },
}


def record(settings: Settings, fake: Any,
           para: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the end-to-end bench on a set once; every `rank` call with its inputs and options."""
    calls: list[dict[str, Any]] = []
    original = search.rank

    def recording(query: str, dense: Any, lexical: Any, rows: Any, options: SearchOptions) -> Any:
        # The options by name: a pickled SearchOptions (slots) is read back by position, so
        # a field added in between would take another field's value.
        calls.append({"query": query, "dense": list(dense), "lexical": list(lexical),
                      "rows": dict(rows), "options": asdict(options)})
        return original(query, dense, lexical, rows, options)

    search.rank = recording
    try:
        result = asyncio.run(evaluate(settings, fake, plan=paraphrase_plan(para),
                                      replies=para["assistant_replies"]))
    finally:
        search.rank = original
    return calls, result


def questions(calls: list[dict[str, Any]], para: dict[str, Any]) -> list[dict[str, Any]]:
    """The recorded call of each question, in the plan's order (told messages are skipped)."""
    wanted = [item for dialogue in paraphrase_plan(para) for item in dialogue["questions"]]
    found, i = [], 0
    for call in calls:
        if i < len(wanted) and call["query"] == wanted[i]["q"]:
            found.append({**wanted[i], **call})
            i += 1
    if i != len(wanted):
        raise RuntimeError(f"matched {i} of {len(wanted)} questions to recorded calls")
    return found


def parts(qs: list[dict[str, Any]]) -> list[str]:
    """The set's parts, `tune` first, then the others in the order the questions meet them."""
    found = list(dict.fromkeys(q["part"] for q in qs))
    return sorted(found, key=lambda p: p != "tune")


def score(qs: list[dict[str, Any]], changes: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, list[int]] = {p: [0, 0] for p in parts(qs)}
    for q in qs:
        options = replace(_current(q["options"]), **changes)
        hits = search.rank(q["query"], q["dense"], q["lexical"], q["rows"], options)
        hit = any(q["fact"] in h.content for h in hits)
        out[q["part"]][0] += hit
        out[q["part"]][1] += 1
    f = {p: round(c[0] / c[1], 4) for p, c in out.items()}
    return {**f, "found": {p: c[0] for p, c in out.items()},
            "all": round(sum(c[0] for c in out.values()) / sum(c[1] for c in out.values()), 4)}


def _current(options: dict[str, Any]) -> SearchOptions:
    """A recorded call's options with the fields added since the recording at their defaults
    (`asdict` recorded the learned weights as a dict too)."""
    found = {f.name: options.get(f.name, f.default) for f in fields(SearchOptions)}
    if isinstance(found["learned"], dict):
        found["learned"] = Learned(**found["learned"])
    return SearchOptions(**found)


def choose(qs: list[dict[str, Any]], grid: dict[str, list[Any]]) -> dict[str, Any]:
    """Coordinate ascent on the tune part (two passes), the neutral values kept on ties; in
    reciprocal rank fusion, the ranking these constants belong to."""
    point = {k: v[0] for k, v in grid.items()}
    best = score(qs, {**RRF, **point})
    tried = []
    for _ in range(2):
        for name, values in grid.items():
            for value in values:
                trial = {**point, name: value}
                s = score(qs, {**RRF, **trial})
                tried.append({"changes": trial, **s})
                if s["tune"] > best["tune"] + 1e-9:
                    point, best = trial, s
    return {"chosen": point, **best, "grid": tried}


RRF = {"fusion": "rrf"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=Path, default=None,
                        help="replay this recording instead of running the bench")
    parser.add_argument("--set", choices=tuple(SETS), default="paraphrase", dest="which",
                        help="the set of bench/russian_recall.py to record and replay")
    parser.add_argument("--save", type=Path, default=None,
                        help="where to keep the recording (.cache/russian_calls_<set>.pkl)")
    parser.add_argument("--grids", action="store_true", help="print every grid point tried")
    parser.add_argument("--depth", type=int, default=None,
                        help="record with each side read this deep (replays may read less)")
    parser.add_argument("--expansion", action="store_true",
                        help="record with RAG_QUERY_EXPANSION on")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    para = load_paraphrase(SETS[args.which])
    save = args.save or REPO / ".cache" / f"russian_calls_{args.which}.pkl"
    bench: dict[str, Any] | None = None
    if args.calls:
        calls = pickle.loads(args.calls.read_bytes())
    else:
        workdir = Path(tempfile.mkdtemp(prefix="ru-replay-"))
        workdir.chmod(0o755)
        try:
            from llm_bot_core.db.embedded import start_embedded_postgres

            url = start_embedded_postgres(workdir)
            upgrade_to_head(url)
            with FakeLLMServer() as server:
                settings = Settings(
                    _env_file=None, database_url=url, data_dir=workdir,
                    llm_base_url=server.base_url, migrate_on_start=False, rag_enabled=True,
                    rag_embedder="local", local_embedding_model="e5+use",
                    rag_query_expansion=args.expansion)
                # The product's options, each side read deeper: replays may read less of it.
                deeper = (patch.object(memory, "SearchOptions",
                                       partial(SearchOptions, candidates=args.depth))
                          if args.depth else nullcontext())
                with deeper:
                    calls, bench = record(settings, server.fake, para)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_bytes(pickle.dumps(calls))
    qs = questions(calls, para)
    result: dict[str, Any] = {"questions": len(qs), "calls": len(calls), "experiments": {}}
    base = score(qs, {})
    result["replayed_defaults"] = base
    if bench is not None:
        result["check"] = {"bench_all": bench["recall"], "replay_all": base["all"],
                           "equal": abs(bench["recall"] - base["all"]) < 1e-9}
    # Constants are chosen on `tune`: a set without it only replays the defaults.
    experiments = {**EXPERIMENTS, **JOINT} if "tune" in base else {}
    rrf_base = score(qs, RRF)
    result["replayed_rrf"] = rrf_base
    for name, grid in experiments.items():
        report = choose(qs, grid) if grid else {"chosen": {}, **rrf_base, "grid": []}
        if not args.grids:
            report.pop("grid")
        for part in [*parts(qs)[1:], "tune"]:
            report[f"{part}_gain"] = round(report[part] - rrf_base[part], 4)
        result["experiments"][name] = report
    print(json.dumps(result, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
