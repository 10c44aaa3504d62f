"""Leave-one-conversation-out cross-validation of recall's ranking on LoCoMo's dev conversations.

The conversations go through the project's own storage, indexing and search sides once (real
PostgreSQL + pgvector, the default embedder behind an on-disk cache, `bench/embedding_cache.py`);
each question's candidates from the dense and the full-text side are recorded at the deepest
rerank depth tried. Ranking (`rag.search.rank`, the function recall runs) is then replayed on
them: for every experiment (a set of ranking constants, each with the values tried) and every
fold, the constants are chosen on four conversations (held-in) by R@5 and reported on the fifth
(held-out). An experiment is kept only if its held-out mean beats the baseline's.

    python bench/locomo_cv.py                 # data: see bench/locomo_retrieval.py default_data()
    python bench/locomo_cv.py --conversations 3 --sessions 2     # a quick slice

Prints one JSON object. The final check runs the product's own search (`memory.search`) with
the constants now in `SearchOptions` over all dev conversations, which must equal its replay.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from embedding_cache import CachedEmbedder
from locomo_retrieval import (
    CATEGORIES,
    DEFAULT_DATA,
    normalise_evidence,
    run_on_database,
    store_conversation,
    vacuum,
)

from llm_bot_core.config import Settings
from llm_bot_core.db.engine import create_engine
from llm_bot_core.rag.base import Scope
from llm_bot_core.rag.embedders import Embedder, LocalEmbedder
from llm_bot_core.rag.indexing import Labels
from llm_bot_core.rag.memory import VectorSemanticMemory
from llm_bot_core.rag.pgvector_store import PgVectorStore
from llm_bot_core.rag.search import Candidate, SearchOptions, rank
from llm_bot_core.rag.vector_store import VectorStore

DEPTH = 120
"""Candidates recorded per side: the deepest rerank depth tried, and how deep the product's
"learned" fusion reads the dense side (its replay in `product_check` must equal the search)."""

# Ranking before this work (the product's defaults until then): every boost off. The
# experiments below tune reciprocal rank fusion ("rrf"), the ranking until 2026-12-02; the
# "learned" fusion that replaced it is fitted and cross-validated by bench/fusion_fit.py.
BASELINE = SearchOptions(
    limit=10,
    min_score=-1.0,
    fusion="rrf",
    date_boost=0.0,
    session_date_boost=0.0,
    question_weight=1.0,
    echo_new_words=None,
    candidates=40,
    repeat_weight=1.0,
    speaker_boost=0.0,
    self_boost=0.0,
)

# Today's defaults as a grid of one point each.
ON: dict[str, list[Any]] = {"date_boost": [1.0], "session_date_boost": [1.0]}

# The defaults since the question weight (docs/retrieval-experiments.md, E4).
TODAY: dict[str, list[Any]] = {**ON, "question_weight": [0.4], "echo_new_words": [5]}

# The defaults since the named speaker's boost.
NOW: dict[str, list[Any]] = {**TODAY, "speaker_boost": [1.0]}

# Each experiment: the constants it tunes and the values tried (the first is the neutral one,
# kept on ties, so a constant moves only when it helps the held-in folds).
EXPERIMENTS: dict[str, dict[str, list[Any]]] = {
    "baseline": {},
    "lexical weight": {"lexical_weight": [1.0, 0.5, 0.75, 1.25, 1.5, 2.0]},
    "rerank depth": {"candidates": [40, 20, 30, 60, 80]},
    "when → turns with a time": {"date_boost": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]},
    "named date → its sessions": {
        "session_date_boost": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0],
        "date_slack_days": [0, 3, 7, 14],
    },
    "neighbouring turns": {"neighbour_weight": [0.0, 0.1, 0.2, 0.3, 0.5]},
    "session diversity": {"session_diversity": [0.0, 0.1, 0.2, 0.3, 0.5]},
    "question-like turns": {"question_weight": [1.0, 0.9, 0.8, 0.7, 0.5]},
    # Low-information turns (issue 15, the Russian set's misses), on top of today's defaults
    # (the two date boosts on): the reference row, then each idea with the dates fixed.
    "defaults (date boosts on)": dict(ON),
    "defaults + assistant turns weigh less": {
        **ON, "assistant_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    },
    "defaults + question turns weigh less": {
        **ON, "question_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    },
    "defaults + question turns adding few words weigh less": {
        **ON,
        "question_weight": [1.0, 0.6, 0.4, 0.2],
        "echo_new_words": [5, 2, 3, 4, 6],
    },
    "defaults + near duplicates (Jaccard)": {**ON, "dedupe_jaccard": [0.75, 0.6, 0.5, 0.4, 0.3]},
    "defaults + user turn and its answer as one unit": {
        **ON,
        "answer_share": [0.0, 0.5, 1.0],
        "assistant_weight": [1.0, 0.5, 0.0],
    },
    # Repeated turns (issue 15, the Russian set's stock replies), on top of today's defaults.
    "today's defaults": dict(TODAY),
    "today + repeated turns weigh less": {
        **TODAY, "repeat_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    },
    "today + repeated turns x0.8 (fixed)": {**TODAY, "repeat_weight": [0.8]},
    "today + named speaker's turns": {
        **TODAY, "speaker_boost": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
    },
    "now (named speaker's turns on)": dict(NOW),
    "now + neighbouring turns": {
        **NOW, "neighbour_weight": [0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]
    },
    "now + session diversity": {**NOW, "session_diversity": [0.0, 0.1, 0.2, 0.3, 0.5]},
    "now + lexical weight": {**NOW, "lexical_weight": [1.0, 0.5, 0.75, 1.25, 1.5, 2.0]},
    "now + rerank depth": {**NOW, "candidates": [40, 20, 30, 60, 80]},
    "now + repeated turns weigh less": {
        **NOW, "repeat_weight": [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    },
    "now + repeated turns x0.2 (fixed, the Russian tune sets' choice)": {
        **NOW, "repeat_weight": [0.2]
    },
    # A first-person question favours the user's own first-person statements (issue 15, the
    # Russian sets' near-miss small talk about others), on top of today's defaults.
    "now + own statements for a question about the asker": {
        **NOW, "self_boost": [0.0, 0.25, 0.5, 1.0]
    },
    "now + own statements x1.5 (fixed, the Russian tune parts' choice)": {
        **NOW, "self_boost": [0.5]
    },
    "today + repeated turns x0.8, depth 60 (fixed)": {
        **TODAY, "repeat_weight": [0.8], "candidates": [60]
    },
}


# What an experiment must add to the held-out folds' mean R@5 to be kept: half a point. One
# question more or less in one fold moves that mean by ~0.001; half a point is a few questions
# in every fold, not a lucky one.
KEEP_GAIN = 0.005


@dataclass(frozen=True, slots=True)
class Question:
    conversation: str
    category: int
    text: str
    evidence: frozenset[int]
    dense: list[tuple[int, float]]
    lexical: list[tuple[int, float]]
    rows: dict[int, Candidate]


def recall(question: Question, options: SearchOptions) -> tuple[float, float]:
    hits = rank(question.text, question.dense, question.lexical, question.rows, options)
    found = [h.message_id for h in hits]
    n = len(question.evidence)
    return len(question.evidence & set(found[:5])) / n, len(question.evidence & set(found)) / n


def summary(
    questions: Iterable[Question], scores: dict[int, tuple[float, float]]
) -> dict[str, Any]:
    by_cat: dict[str, list[tuple[float, float]]] = {"all": []}
    for q in questions:
        by_cat["all"].append(scores[id(q)])
        by_cat.setdefault(str(q.category), []).append(scores[id(q)])
    return {
        name: {
            "r5": statistics.fmean(v[0] for v in values),
            "r10": statistics.fmean(v[1] for v in values),
            "n": len(values),
        }
        for name, values in by_cat.items()
    }


def evaluate(questions: list[Question], options: SearchOptions) -> dict[int, tuple[float, float]]:
    return {id(q): recall(q, options) for q in questions}


def spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "sd": round(statistics.pstdev(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def cross_validate(questions: list[Question], grid: dict[str, list[Any]]) -> dict[str, Any]:
    """Each fold: the grid point best on the other conversations, scored on this one."""
    conversations = sorted({q.conversation for q in questions})
    names = list(grid)
    points = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    # Every grid point is scored once on every question; folds then only aggregate.
    scored = [(p, evaluate(questions, replace(BASELINE, **p))) for p in points]
    folds = []
    for held_out in conversations:
        inside = [q for q in questions if q.conversation != held_out]
        outside = [q for q in questions if q.conversation == held_out]
        best, best_scores, best_r5 = scored[0][0], scored[0][1], -1.0
        for point, scores in scored:
            r5 = statistics.fmean(scores[id(q)][0] for q in inside)
            if r5 > best_r5 + 1e-9:
                best, best_scores, best_r5 = point, scores, r5
        folds.append(
            {
                "held_out": held_out,
                "chosen": best,
                "held_in": summary(inside, best_scores),
                "held_out_scores": summary(outside, best_scores),
            }
        )
    report = fold_report(folds)
    # Every grid point as a fixed choice (no tuning): its mean over the five conversations of
    # each conversation's R@5, the held-out figure of a constant chosen elsewhere (the Russian
    # set), comparable to the held-out means above.
    report["fixed_points"] = [
        {
            "point": point,
            "r5_mean_over_conversations": statistics.fmean(
                statistics.fmean(scores[id(q)][0] for q in questions if q.conversation == c)
                for c in conversations
            ),
        }
        for point, scores in scored
    ]
    return report


def fold_report(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over the folds of the held-in and the held-out scores, per category."""
    report: dict[str, Any] = {
        "folds": [{"held_out": f["held_out"], "chosen": f["chosen"]} for f in folds]
    }
    for side, key in (("held_in", "held_in"), ("held_out", "held_out_scores")):
        per_cat: dict[str, Any] = {}
        for cat in ["all", *map(str, CATEGORIES)]:
            present = [f[key][cat] for f in folds if cat in f[key]]
            if present:
                per_cat[cat] = {m: spread([p[m] for p in present]) for m in ("r5", "r10")}
        report[side] = per_cat
    return report


def median_choice(folds: list[dict[str, Any]]) -> dict[str, Any]:
    """The product default: per constant, the median of the values the folds chose."""
    names = folds[0]["chosen"].keys()
    return {n: statistics.median_low([f["chosen"][n] for f in folds]) for n in names}


# --- collecting candidates through the product's own search sides -----------------------------


def trim(data: list[dict[str, Any]], sessions: int) -> list[dict[str, Any]]:
    """Each conversation cut to its first `sessions` sessions (and the questions they answer)."""
    if not sessions:
        return data
    out = []
    for sample in data:
        conv = {
            k: v
            for k, v in sample["conversation"].items()
            if not k.startswith("session_") or int(k.split("_")[1]) <= sessions
        }
        out.append({**sample, "conversation": conv})
    return out


async def collect(
    data: list[dict[str, Any]], database_url: str, workdir: Path, embedder: Embedder
) -> tuple[list[Question], VectorSemanticMemory, dict[str, dict[int, str]], dict[str, Any]]:
    settings = Settings(
        _env_file=None,
        database_url=database_url,
        data_dir=workdir,
        rag_enabled=True,
        db_pool_size=4,
    )
    engine = create_engine(database_url, settings.storage)

    async def open_store(e: Embedder) -> VectorStore:
        return PgVectorStore(engine, e)

    memory = VectorSemanticMemory(engine, embedder, open_store, settings.rag)
    indexer, searcher = await memory.ready()
    ids: dict[str, dict[int, str]] = {}
    started = time.perf_counter()
    turns = 0
    for sample in data:
        ids[sample["sample_id"]] = await store_conversation(engine, sample)
        conv = sample["conversation"]
        indexer.labels = Labels(user=conv["speaker_a"], assistant=conv["speaker_b"])
        turns += await memory.sweep(batch=64)
    index_seconds = time.perf_counter() - started
    await vacuum(engine)
    store = memory._store
    assert store is not None
    questions: list[Question] = []
    skipped = {"repaired_ids": 0, "skipped_ids": 0, "questions_without_usable_evidence": 0}
    for sample in data:
        dia_of = ids[sample["sample_id"]]
        mid_of = {dia: mid for mid, dia in dia_of.items()}
        scope = Scope(user_id=sample["sample_id"])
        for qa in sample["qa"]:
            if qa.get("category") not in CATEGORIES:
                continue
            evidence, fixed, dropped = normalise_evidence(qa.get("evidence", []), set(mid_of))
            skipped["repaired_ids"] += fixed
            skipped["skipped_ids"] += dropped
            if not evidence:
                skipped["questions_without_usable_evidence"] += 1
                continue
            question = str(qa["question"])
            vector = await embedder.embed_query(question)
            dense = await store.search(vector, scope, [], DEPTH)
            lexical = await searcher.lexical(question, scope, [], DEPTH)
            pool = list(dict.fromkeys([m for m, _ in dense] + [m for m, _ in lexical]))
            rows = await searcher.candidates(pool, scope)
            questions.append(
                Question(
                    sample["sample_id"],
                    int(qa["category"]),
                    question,
                    frozenset(mid_of[e] for e in evidence),
                    dense,
                    lexical,
                    rows,
                )
            )
    info = {"turns_indexed": turns, "index_s": round(index_seconds, 1), "evidence": skipped}
    return questions, memory, ids, info


async def product_check(memory: VectorSemanticMemory, questions: list[Question]) -> dict[str, Any]:
    """The product's search end to end with its current defaults (threshold off, 10 ranked)."""
    scores = {}
    for q in questions:
        hits = await memory.search(q.text, Scope(user_id=q.conversation), limit=10, min_score=-1.0)
        found = [h.message_id for h in hits]
        n = len(q.evidence)
        scores[id(q)] = (len(q.evidence & set(found[:5])) / n, len(q.evidence & set(found)) / n)
    return summary(questions, scores)


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


async def run(args: argparse.Namespace, database_url: str, workdir: Path) -> dict[str, Any]:
    data = json.loads(Path(args.data).read_text())  # noqa: ASYNC240 - once, before timing
    if args.conversations:
        data = data[: args.conversations]
    data = trim(data, args.sessions)
    embedder = CachedEmbedder(LocalEmbedder("e5+use"), Path(args.cache))
    questions, memory, _, info = await collect(data, database_url, workdir, embedder)
    result: dict[str, Any] = {
        "data": str(args.data),
        "embedder": embedder.name,
        "conversations": [s["sample_id"] for s in data],
        "questions": len(questions),
        **info,
        "embedding_cache": {"hits": embedder.hits, "misses": embedder.misses},
        "experiments": {},
    }
    chosen = [n for n in (args.only or EXPERIMENTS)]
    baseline_out = defaults_out = None
    started = time.perf_counter()
    for name in chosen:
        report = cross_validate(questions, EXPERIMENTS[name])
        out = report["held_out"]["all"]["r5"]["mean"]
        if name == "baseline":
            baseline_out = out
        if name == "defaults (date boosts on)":
            defaults_out = out
        report["held_out_gain_r5"] = round(out - baseline_out, 4) if baseline_out else None
        if name.startswith("defaults +") and defaults_out is not None:
            # Measured against today's defaults, not the ranking before the date boosts.
            report["held_out_gain_over_defaults_r5"] = round(out - defaults_out, 4)
        report["default"] = median_choice(report["folds"]) if EXPERIMENTS[name] else {}
        result["experiments"][name] = report
    kept = {
        name: r["default"]
        for name, r in result["experiments"].items()
        if not name.startswith(("baseline", "defaults"))
        and (r["held_out_gain_r5"] or 0) >= KEEP_GAIN
    }
    result["kept"] = kept
    if kept and len(kept) > 1:
        # The kept constants together, each tried around its own grid, chosen per fold again.
        grid = {k: v for name in kept for k, v in EXPERIMENTS[name].items()}
        joint = coordinate_cv(questions, grid)
        joint["held_out_gain_r5"] = round(
            joint["held_out"]["all"]["r5"]["mean"] - (baseline_out or 0), 4
        )
        result["experiments"]["together (kept)"] = joint
    result["replay_s"] = round(time.perf_counter() - started, 1)
    result["product_defaults"] = {
        "options": {
            k: getattr(SearchOptions(limit=10, min_score=-1.0), k)
            for k in (
                "lexical_weight",
                "candidates",
                "date_boost",
                "session_date_boost",
                "date_slack_days",
                "neighbour_weight",
                "session_diversity",
                "question_weight",
                "echo_new_words",
                "assistant_weight",
                "answer_share",
                "speaker_boost",
                "repeat_weight",
                "repeat_copies",
                "self_boost",
            )
        },
        "all_dev": await product_check(memory, questions),
        "replayed": summary(
            questions, evaluate(questions, SearchOptions(limit=10, min_score=-1.0))
        ),
    }
    await memory.aclose()
    return rounded(result)


def coordinate_cv(questions: list[Question], grid: dict[str, list[Any]]) -> dict[str, Any]:
    """Like cross_validate for several constants at once: per fold, coordinate ascent on the
    held-in conversations (two passes over the constants), scored on the held-out one."""
    conversations = sorted({q.conversation for q in questions})
    cache: dict[tuple[tuple[str, Any], ...], dict[int, tuple[float, float]]] = {}

    def scores_of(point: dict[str, Any]) -> dict[int, tuple[float, float]]:
        key = tuple(sorted(point.items()))
        if key not in cache:
            cache[key] = evaluate(questions, replace(BASELINE, **point))
        return cache[key]

    folds = []
    for held_out in conversations:
        inside = [q for q in questions if q.conversation != held_out]
        outside = [q for q in questions if q.conversation == held_out]
        point = {k: v[0] for k, v in grid.items()}

        def r5(p: dict[str, Any], inside: list[Question] = inside) -> float:
            s = scores_of(p)
            return statistics.fmean(s[id(q)][0] for q in inside)

        best = r5(point)
        for _ in range(2):
            for name, values in grid.items():
                for value in values:
                    trial = {**point, name: value}
                    score = r5(trial)
                    if score > best + 1e-9:
                        point, best = trial, score
        final = scores_of(point)
        folds.append(
            {
                "held_out": held_out,
                "chosen": point,
                "held_in": summary(inside, final),
                "held_out_scores": summary(outside, final),
            }
        )
    report = fold_report(folds)
    report["default"] = median_choice(folds)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="a file in LoCoMo's format")
    parser.add_argument("--conversations", type=int, default=0, help="only the first N (≥ 2)")
    parser.add_argument("--sessions", type=int, default=0, help="only each one's first N sessions")
    parser.add_argument(
        "--only",
        action="append",
        choices=list(EXPERIMENTS),
        help="run these experiments (repeatable; baseline first for gains)",
    )
    parser.add_argument(
        "--cache",
        default=str(Path(__file__).resolve().parent.parent / ".cache" / "embeddings.sqlite"),
    )
    parser.add_argument(
        "--database-url",
        default=None,
        help="a PostgreSQL with pgvector; default: an embedded one in a temp dir",
    )
    run_on_database(run, parser.parse_args(), prefix="locomo-cv-")


if __name__ == "__main__":
    main()
