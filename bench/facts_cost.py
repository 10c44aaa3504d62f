"""Fact extraction cost per 100 user messages with the defaults, from the batch design.

Replays speaker A's turns of a LoCoMo conversation as the user's messages and builds exactly the
requests the extraction job sends (memory/extraction.py: one per FACTS_EVERY user messages, the
batch plus up to SIMILAR_FACTS known facts). What a real model answers is not known here, so the
known facts grow by --facts-per-batch facts of --fact-chars characters per batch (capped at
SIMILAR_FACTS, as the job sends at most that many), and each answer is that many operations.
Tokens are characters / 4 plus 4 per message, as bench/prompt_size.py counts them.

  python bench/facts_cost.py [--data locomo_dev.json] [--conversation 0] [--every 6]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from llm_bot_core.memory.extraction import SIMILAR_FACTS, Known, extraction_prompt

DEFAULT_DATA = Path("/work/shared/bench/locomo/locomo_dev.json")
MESSAGES = 100


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def user_turns(data: Path, conversation: int) -> list[str]:
    talk = json.loads(data.read_text())[conversation]["conversation"]
    speaker = talk["speaker_a"]
    turns: list[str] = []
    for number in range(1, 100):
        for turn in talk.get(f"session_{number}", []):
            if turn["speaker"] == speaker:
                turns.append(turn["text"])
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--conversation", type=int, default=0)
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--facts-per-batch", type=int, default=2)
    parser.add_argument("--fact-chars", type=int, default=40)
    args = parser.parse_args()
    turns = user_turns(args.data, args.conversation)[:MESSAGES]
    known: list[Known] = []
    calls = prompt = completion = 0
    for start in range(0, len(turns) - args.every + 1, args.every):
        batch = [(start + i, t) for i, t in enumerate(turns[start : start + args.every])]
        request = extraction_prompt(known[-SIMILAR_FACTS:], batch)
        calls += 1
        prompt += sum(tokens(str(m["content"])) + 4 for m in request)
        operation = {
            "op": "add",
            "fact": None,
            "content": "x" * args.fact_chars,
            "importance": 0.7,
            "messages": [1],
        }
        completion += tokens(json.dumps({"operations": [operation] * args.facts_per_batch}))
        known += [Known(len(known) + j, "x" * args.fact_chars) for j in range(args.facts_per_batch)]
    print(
        json.dumps(
            {
                "user_messages": len(turns),
                "facts_every": args.every,
                "calls": calls,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "tokens_per_call": round((prompt + completion) / max(calls, 1)),
                "assumed": {"facts_per_batch": args.facts_per_batch, "fact_chars": args.fact_chars},
            }
        )
    )


if __name__ == "__main__":
    main()
