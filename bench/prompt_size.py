"""Prompt size per turn: a LoCoMo conversation replayed through the backend vs sending it whole.

The backend runs in-process with its defaults (SHORT_HISTORY_LIMIT=8, SUMMARY_THRESHOLD=24,
in-process summaries) on an embedded PostgreSQL. Speaker A's turns are the user's messages; the
fake LLM answers each with speaker B's next turn(s) from the dataset, so the stored history is the
real conversation, and writes summaries of the size a real model would (capped at 300 words, as
the summary prompt asks). Each turn records the tokens of the prompt the backend sent, and the
tokens of the full history (system prompt and every earlier message) a memoryless bot would send.
Tokens are estimated as characters / 4 (no tokenizer download is possible here; the ratio between
the two curves does not depend on the estimate).

  python bench/prompt_size.py --data /path/to/locomo_dev.json --conversation 0
Prints one JSON object; --plot writes the PNG (matplotlib: pip install -e '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

DEFAULT_DATA = Path("/work/shared/bench/locomo/locomo_dev.json")
SUMMARY_WORDS = 300


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    # ~4 tokens of chat-format framing per message, as OpenAI's cookbook counts them.
    return sum(tokens(str(m.get("content", ""))) + 4 for m in messages)


def exchanges(conversation: dict[str, Any]) -> list[tuple[str, str]]:
    """(user text, assistant text) pairs: A's consecutive turns, then B's."""
    a = conversation["speaker_a"]
    turns: list[tuple[str, str]] = []
    n = 1
    while f"session_{n}" in conversation:
        for turn in conversation[f"session_{n}"]:
            text = turn["text"].strip()
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            who = "user" if turn["speaker"] == a else "assistant"
            if turns and turns[-1][0] == who:
                turns[-1] = (who, turns[-1][1] + "\n" + text)
            else:
                turns.append((who, text))
        n += 1
    pairs = []
    for i, (who, text) in enumerate(turns):
        if who == "user":
            reply = turns[i + 1][1] if i + 1 < len(turns) else "OK."
            pairs.append((text, reply))
    return pairs


async def replay(pairs: list[tuple[str, str]], limit: int | None, url: str) -> list[dict[str, Any]]:
    import httpx

    from llm_bot_core.api.app import create_app
    from llm_bot_core.config import DEFAULT_SYSTEM_PROMPT, Settings
    from llm_bot_core.db.migrate import upgrade_to_head_async
    from llm_bot_core.memory.prompt import SUMMARY_HEADER
    from llm_bot_core.testing.fake_llm import FakeLLMServer, is_summary_request

    next_reply = [""]

    def reply(messages: list[dict[str, Any]]) -> str:
        if is_summary_request(messages):
            body = messages[-1]["content"]
            previous = body.split("Previous summary:\n", 1)[1].split("\n\nNew messages:\n", 1)
            text = (previous[0] if previous[0] != "(none yet)" else "") + " " + previous[1]
            return " ".join(text.split()[-SUMMARY_WORDS:])
        return next_reply[0]

    rows: list[dict[str, Any]] = []
    with FakeLLMServer() as llm:
        llm.fake.reply = reply
        await upgrade_to_head_async(url)
        settings = Settings(
            _env_file=None,
            database_url=url,
            llm_base_url=llm.base_url,
            openrouter_model="bench",
            migrate_on_start=False,
            rag_enabled=False,
        )
        app = create_app(settings)
        history = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                for turn, (user, assistant) in enumerate(pairs[:limit], start=1):
                    next_reply[0] = assistant
                    history.append({"role": "user", "content": user})
                    response = await client.post(
                        "/v1/chat/handle",
                        json={"user_id": "u", "chat_id": "c", "chat_type": "private", "text": user},
                    )
                    response.raise_for_status()
                    sent = llm.fake.chat_requests[-1]["messages"]
                    rows.append(
                        {
                            "turn": turn,
                            "backend_tokens": prompt_tokens(sent),
                            "full_history_tokens": prompt_tokens(history),
                            "has_summary": SUMMARY_HEADER in sent[0]["content"],
                        }
                    )
                    history.append({"role": "assistant", "content": assistant})
                    await app.state.services.jobs.drain()
                    llm.fake.requests.clear()
    return rows


def plot(rows: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [r["turn"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    ax.plot(turns, [r["full_history_tokens"] for r in rows], label="full history every turn")
    ax.plot(
        turns,
        [r["backend_tokens"] for r in rows],
        label="LLM Bot Core: summary + last 8 messages",
    )
    ax.set_xlabel("turn (user message number)")
    ax.set_ylabel("prompt tokens (≈ chars / 4)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo JSON (not in the repo)")
    p.add_argument("--conversation", type=int, default=0, help="index in the file")
    p.add_argument("--turns", type=int, default=None, help="replay only the first N turns")
    p.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    args = p.parse_args(argv)

    sample = json.loads(args.data.read_text())[args.conversation]
    pairs = exchanges(sample["conversation"])
    with harness.postgres() as url:
        rows = harness.run_async(replay(pairs, args.turns, url))
    last = rows[-1]
    total_backend = sum(r["backend_tokens"] for r in rows)
    total_full = sum(r["full_history_tokens"] for r in rows)
    result = {
        "benchmark": "prompt_size",
        "dataset": f"LoCoMo {sample['sample_id']}",
        "turns": len(rows),
        "token_estimate": "characters / 4 + 4 per message",
        "settings": {"SHORT_HISTORY_LIMIT": 8, "SUMMARY_THRESHOLD": 24},
        "last_turn": {k: last[k] for k in ("backend_tokens", "full_history_tokens")},
        "max_backend_tokens": max(r["backend_tokens"] for r in rows),
        "total_tokens": {"backend": total_backend, "full_history": total_full},
        "total_ratio": round(total_backend / total_full, 3),
        "per_turn": rows,
    }
    if args.plot:
        plot(rows, f"Prompt size per turn, {result['dataset']} ({len(rows)} turns)", args.plot)
    if args.save:
        harness.save(args.save, result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_turn"}, indent=2))
    return result


if __name__ == "__main__":
    main()
