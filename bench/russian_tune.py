"""Ranking constants chosen on every Russian set's tune part at once, replayed on recordings.

`bench/russian_replay.py --set NAME` records a set's run once (`.cache/russian_calls_NAME.pkl`);
here every recording is replayed for each point of a grid. A point is scored by the questions
found on the tune parts together (paraphrase tune, numbers tune, dev2, blind); the report
parts (paraphrase report, numbers report, final, blind2, blind3, blind4) are printed as totals
per set and never used to choose. The chosen point is the first with the best tune total (the grid
lists the neutral and the mildest values first). Prints one JSON object.

    python bench/russian_replay.py --set dev2        # once per set, to record
    python bench/russian_tune.py --grid repeat_weight=1.0,0.8,0.4,0.2 --grid repeat_copies=2,3
"""

from __future__ import annotations

import argparse
import itertools
import json
import pickle
from pathlib import Path
from typing import Any

from russian_recall import SETS, load_paraphrase
from russian_replay import questions, score

REPO = Path(__file__).resolve().parent.parent
RECORDED = ("paraphrase", "numbers", "dev2", "blind", "final", "blind2", "blind3", "blind4")


def value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None if text == "None" else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                        help="a SearchOptions field and the values to try (repeatable)")
    parser.add_argument("--cache", type=Path, default=REPO / ".cache")
    args = parser.parse_args()
    grid = {name: [value(v) for v in values.split(",")]
            for name, values in (g.split("=", 1) for g in args.grid)}
    recorded = {name: questions(pickle.loads((args.cache / f"russian_calls_{name}.pkl")
                                             .read_bytes()), load_paraphrase(SETS[name]))
                for name in RECORDED if (args.cache / f"russian_calls_{name}.pkl").exists()}
    points = []
    for combination in itertools.product(*grid.values()):
        changes = dict(zip(grid, combination, strict=True))
        found = {name: score(qs, changes)["found"] for name, qs in recorded.items()}
        tune = sum(parts.get("tune", 0) for parts in found.values())
        report = sum(n for parts in found.values() for part, n in parts.items() if part != "tune")
        points.append({"changes": changes, "tune": tune, "report": report, "found": found})
    best = max(p["tune"] for p in points) if points else 0
    chosen = next((p for p in points if p["tune"] == best), None)
    print(json.dumps({"sets": list(recorded), "chosen": chosen, "points": points},
                     ensure_ascii=False))


if __name__ == "__main__":
    main()
