"""Question answering from memory, end to end: replay dialogues through the HTTP API, ask the
questions through `/v1/chat/handle`, score the answers with an LLM judge. Prints one JSON object.

    # the backend running with the model under test (any OpenAI-compatible endpoint)
    python bench/memory_qa.py --backend-url http://127.0.0.1:8080 --api-key "$BACKEND_API_KEY" \\
        --judge-base-url https://api.openai.com/v1 --judge-model gpt-4o-mini \\
        --conversations 1 --questions 20                  # LoCoMo, a slice
    python bench/memory_qa.py --backend-url ... --data my_dialogues.json --judge-...

Each dialogue is one user (`user_id` = `<prefix>-<dialogue id>`) in their private chat (chat id =
user id, as in Telegram): every turn is sent as that user's message ("Speaker: text" when the
turn names a speaker; the session's date before its first turn), and the chat is reset
(`/v1/chat/reset`) between sessions, so what crosses sessions is long-term memory (facts,
summaries, recall), not the short-term window. After the replay the script waits until the
user's facts stop changing (extraction runs off the reply path), then asks each question after
another reset (a question sees no other question) and gives the judge the question, the gold
answer and the bot's answer. The user's earlier data is erased first, so a re-run starts clean.

Tokens: per question, the chat prompt tokens the provider reported (the difference of the
backend's `llmbot_llm_tokens_total{purpose="chat"}` in `/metrics` around the question; questions
are asked one at a time, so nothing else is counted) against sending the whole dialogue instead
(every replayed turn, without the bot's replies to them, plus the question): estimated as
characters / 4 (`full_history_estimator`), or counted by the judge's provider
(`--full-history-exact`: one extra call per question with the whole history, `max_tokens=1`;
that costs about as much input as the full-history baseline would).

Data: LoCoMo (default: /work/shared/bench/locomo/locomo_dev.json; CC BY-NC 4.0, evaluation
only, never copied here; categories 1-4 by default, 5 is adversarial), or dialogues in this
format (a JSON list, or {"dialogues": [...]}):

    {"id": "anna",
     "sessions": [{"date": "2026-05-01",                        # optional, free text
                   "turns": [{"speaker": "Anna", "text": "I moved to Berlin."}]}],  # speaker
     "questions": [{"question": "Where does Anna live?", "answer": "Berlin",          # optional
                    "category": "single-hop"}]}                                        # optional
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"
CHARS_PER_TOKEN = 4
QUESTION_PROMPT = "Answer briefly, from what you remember of our conversations: {question}"
JUDGE_SYSTEM = (
    "You grade answers of a chat assistant with memory. Given a question, the gold answer and "
    "the generated answer, reply CORRECT if the generated answer states the gold answer's "
    "content (wording, extra detail and date formats may differ; a relative date that matches "
    "is correct), otherwise WRONG. Reply with one word: CORRECT or WRONG."
)


@dataclass(frozen=True, slots=True)
class Turn:
    text: str
    speaker: str | None = None

    def message(self) -> str:
        return f"{self.speaker}: {self.text}" if self.speaker else self.text


@dataclass(frozen=True, slots=True)
class Session:
    turns: list[Turn]
    date: str | None = None


@dataclass(frozen=True, slots=True)
class Question:
    question: str
    answer: str
    category: str = "all"
    session: int = 0  # the last session its evidence is in (0: unknown)


@dataclass(frozen=True, slots=True)
class Dialogue:
    id: str
    sessions: list[Session]
    questions: list[Question] = field(default_factory=list)


# --- data ----------------------------------------------------------------------------------


def load(path: Path, categories: set[str]) -> list[Dialogue]:
    """LoCoMo (a list of samples with `conversation`) or dialogues in the documented format."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    items = raw["dialogues"] if isinstance(raw, dict) else raw
    if items and "conversation" in items[0]:
        return [_locomo(sample, categories) for sample in items]
    return [_dialogue(item) for item in items]


def _dialogue(item: dict[str, Any]) -> Dialogue:
    sessions = [
        Session([Turn(t["text"], t.get("speaker")) for t in s["turns"]], s.get("date"))
        for s in item["sessions"]
    ]
    questions = [
        Question(q["question"], str(q["answer"]), str(q.get("category", "all")))
        for q in item.get("questions", [])
    ]
    return Dialogue(str(item["id"]), sessions, questions)


def _locomo(sample: dict[str, Any], categories: set[str]) -> Dialogue:
    conv = sample["conversation"]
    sessions: list[Session] = []
    n = 1
    while f"session_{n}" in conv:
        turns = []
        for turn in conv[f"session_{n}"]:
            text = turn["text"]
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            turns.append(Turn(text, turn["speaker"]))
        sessions.append(Session(turns, conv.get(f"session_{n}_date_time")))
        n += 1
    questions = []
    for qa in sample["qa"]:
        category = str(qa.get("category"))
        if category not in categories or "answer" not in qa:
            continue
        evidence = [int(m.group(1)) for e in qa.get("evidence", []) for m in
                    re.finditer(r"D:?(\d+):", e)]
        questions.append(
            Question(qa["question"], str(qa["answer"]), category, max(evidence, default=0))
        )
    return Dialogue(str(sample["sample_id"]), sessions, questions)


def sliced(dialogue: Dialogue, sessions: int | None, questions: int | None) -> Dialogue:
    """The first `sessions` sessions, and the first `questions` questions answerable from them
    (a LoCoMo question whose evidence lies in a later session is left out)."""
    kept = dialogue.sessions[:sessions] if sessions else dialogue.sessions
    asked = [q for q in dialogue.questions if not sessions or q.session <= len(kept)]
    return Dialogue(dialogue.id, kept, asked[:questions] if questions else asked)


def estimate_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN + 1


# --- the backend and the judge ---------------------------------------------------------------


_TOKENS = re.compile(
    r'^llmbot_llm_tokens_total\{(?=[^}]*kind="(\w+)")(?=[^}]*purpose="(\w+)")[^}]*\} (\S+)$',
    re.M,
)


class Backend:
    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    async def say(self, user: str, chat: str, text: str) -> str:
        body = {"user_id": user, "chat_id": chat, "text": text}
        response = await self.http.post("/v1/chat/handle", json=body)
        response.raise_for_status()
        return str(response.json()["text"])

    async def reset(self, chat: str) -> None:
        (await self.http.post("/v1/chat/reset", json={"chat_id": chat})).raise_for_status()

    async def facts(self, user: str) -> list[str]:
        response = await self.http.get(f"/v1/memory/users/{user}/facts")
        response.raise_for_status()
        return [f["content"] for f in response.json()["facts"]]

    async def erase(self, user: str) -> None:
        (await self.http.delete(f"/v1/memory/users/{user}")).raise_for_status()

    async def tokens(self) -> dict[tuple[str, str], float] | None:
        """{(purpose, kind): tokens so far}, or None when /metrics is not readable."""
        try:
            response = await self.http.get("/metrics")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return {(p, k): float(v) for k, p, v in _TOKENS.findall(response.text)}

    async def aclose(self) -> None:
        await self.http.aclose()


def token_delta(
    before: dict[tuple[str, str], float] | None, after: dict[tuple[str, str], float] | None
) -> dict[str, dict[str, int]] | None:
    if before is None or after is None:
        return None
    out: dict[str, dict[str, int]] = {}
    for (purpose, kind), value in after.items():
        spent = int(value - before.get((purpose, kind), 0.0))
        if spent:
            out.setdefault(purpose, {})[kind] = spent
    return out


class Judge:
    """An OpenAI-compatible chat completions endpoint that grades answers."""

    def __init__(self, base_url: str, api_key: str | None, model: str, timeout: float) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                      timeout=timeout)
        self.model = model
        self.prompt_tokens = 0
        self.completion_tokens = 0

    async def _complete(self, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
        body = {"model": self.model, "messages": messages, "temperature": 0,
                "max_tokens": max_tokens}
        for attempt in range(3):
            response = await self.http.post("/chat/completions", json=body)
            if response.status_code < 500 and response.status_code != 429:
                break
            await asyncio.sleep(2**attempt)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        usage = data.get("usage") or {}
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)
        return data

    async def grade(self, question: str, gold: str, answer: str) -> bool:
        content = (f"Question: {question}\nGold answer: {gold}\nGenerated answer: {answer}")
        data = await self._complete(
            [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}],
            max_tokens=5,
        )
        verdict = str(data["choices"][0]["message"]["content"] or "").upper()
        return "CORRECT" in verdict and "WRONG" not in verdict

    async def count_prompt(self, text: str) -> int:
        """The provider's token count of `text` as one user message (max_tokens=1)."""
        data = await self._complete([{"role": "user", "content": text}], max_tokens=1)
        return int((data.get("usage") or {}).get("prompt_tokens") or 0)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the run -------------------------------------------------------------------------------


async def settle_facts(backend: Backend, user: str, quiet: float, limit: float) -> int:
    """Wait until the user's facts have not changed for `quiet` seconds (or `limit` passed)."""
    deadline = time.monotonic() + limit
    last = await backend.facts(user)
    stable_since = time.monotonic()
    while time.monotonic() - stable_since < quiet and time.monotonic() < deadline:
        await asyncio.sleep(min(1.0, quiet / 4))
        now = await backend.facts(user)
        if now != last:
            last, stable_since = now, time.monotonic()
    return len(last)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    categories = {c.strip() for c in args.categories.split(",")}
    dialogues = load(Path(args.data), categories)[: args.conversations or None]
    dialogues = [sliced(d, args.sessions, args.questions) for d in dialogues]
    backend = Backend(args.backend_url, args.api_key, args.timeout)
    judge = Judge(args.judge_base_url, args.judge_api_key, args.judge_model, args.timeout)
    items: list[dict[str, Any]] = []
    replay_tokens: list[dict[str, dict[str, int]] | None] = []
    turns = facts = 0
    started = time.monotonic()
    replay_seconds = 0.0
    try:
        for dialogue in dialogues:
            user = f"{args.user_prefix}-{dialogue.id}"
            # A private chat (chat id = user id), as Telegram has it: the profile shows there.
            chat = qa_chat = user
            await backend.erase(user)  # a re-run starts from nothing
            replay_started = time.monotonic()
            before = await backend.tokens()
            history: list[str] = []
            for session in dialogue.sessions:
                await backend.reset(chat)
                for index, turn in enumerate(session.turns):
                    text = turn.message()
                    if index == 0 and session.date:
                        text = f"[{session.date}] {text}"
                    await backend.say(user, chat, text)
                    history.append(text)
                    turns += 1
            facts += await settle_facts(backend, user, args.settle, args.settle_limit)
            replay_tokens.append(token_delta(before, await backend.tokens()))
            replay_seconds += time.monotonic() - replay_started
            full_history = "\n".join(history)
            for question in dialogue.questions:
                asked = QUESTION_PROMPT.format(question=question.question)
                await backend.reset(qa_chat)
                before = await backend.tokens()
                answer = await backend.say(user, qa_chat, asked)
                spent = token_delta(before, await backend.tokens())
                baseline_text = f"{full_history}\n{asked}"
                baseline = (
                    await judge.count_prompt(baseline_text)
                    if args.full_history_exact
                    else estimate_tokens(baseline_text)
                )
                correct = await judge.grade(question.question, question.answer, answer)
                items.append({
                    "dialogue": dialogue.id,
                    "category": question.category,
                    "question": question.question,
                    "gold": question.answer,
                    "answer": answer,
                    "correct": correct,
                    "prompt_tokens": (spent or {}).get("chat", {}).get("prompt")
                    if spent is not None else None,
                    "full_history_tokens": baseline,
                })
    finally:
        await backend.aclose()
        await judge.aclose()
    return report(args, dialogues, items, replay_tokens, turns, facts,
                  replay_seconds, time.monotonic() - started, judge)


def report(
    args: argparse.Namespace,
    dialogues: list[Dialogue],
    items: list[dict[str, Any]],
    replay_tokens: list[dict[str, dict[str, int]] | None],
    turns: int,
    facts: int,
    replay_seconds: float,
    seconds: float,
    judge: Judge,
) -> dict[str, Any]:
    by_category: dict[str, dict[str, Any]] = {}
    for item in items:
        cat = by_category.setdefault(item["category"], {"questions": 0, "correct": 0})
        cat["questions"] += 1
        cat["correct"] += int(item["correct"])
    for cat in by_category.values():
        cat["accuracy"] = round(cat["correct"] / cat["questions"], 4)
    prompts = [i["prompt_tokens"] for i in items if i["prompt_tokens"] is not None]
    full = [i["full_history_tokens"] for i in items]
    replay: dict[str, dict[str, int]] = {}
    for delta in replay_tokens:
        for purpose, kinds in (delta or {}).items():
            for kind, value in kinds.items():
                replay.setdefault(purpose, {}).setdefault(kind, 0)
                replay[purpose][kind] += value
    result: dict[str, Any] = {
        "benchmark": "memory_qa",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data),
        "backend_url": args.backend_url,
        "judge_model": args.judge_model,
        "dialogues": len(dialogues),
        "sessions": sum(len(d.sessions) for d in dialogues),
        "turns_replayed": turns,
        "facts_stored": facts,
        "questions": len(items),
        "correct": sum(int(i["correct"]) for i in items),
        "accuracy": round(sum(int(i["correct"]) for i in items) / len(items), 4) if items else None,
        "by_category": dict(sorted(by_category.items())),
        "tokens": {
            "per_question_prompt_mean": round(statistics.fmean(prompts), 1) if prompts else None,
            "per_question_prompt_max": max(prompts) if prompts else None,
            "per_question_full_history_mean": round(statistics.fmean(full), 1) if full else None,
            "per_question_full_history_max": max(full) if full else None,
            "prompt_vs_full_history": round(statistics.fmean(prompts) / statistics.fmean(full), 4)
            if prompts and full else None,
            "full_history_estimator": "provider" if args.full_history_exact
            else f"characters / {CHARS_PER_TOKEN}",
            "replay_by_purpose": replay or None,
            "judge": {"prompt": judge.prompt_tokens, "completion": judge.completion_tokens},
        },
        "seconds": {"replay": round(replay_seconds, 1), "total": round(seconds, 1)},
    }
    if args.details:
        result["items"] = items
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend-url", default=env("MEMORY_QA_BACKEND_URL", "http://127.0.0.1:8080"))
    p.add_argument("--api-key", default=env("BACKEND_API_KEY"), help="the backend's bearer token")
    p.add_argument("--judge-base-url", default=env("JUDGE_BASE_URL", "https://api.openai.com/v1"))
    p.add_argument("--judge-api-key", default=env("JUDGE_API_KEY"))
    p.add_argument("--judge-model", default=env("JUDGE_MODEL", "gpt-4o-mini"))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="LoCoMo or the documented format")
    p.add_argument("--conversations", type=int, default=0, help="the first N dialogues (0: all)")
    p.add_argument("--sessions", type=int, default=0, help="the first N sessions of each")
    p.add_argument("--questions", type=int, default=0, help="at most N questions per dialogue")
    p.add_argument("--categories", default="1,2,3,4", help="LoCoMo categories to ask")
    p.add_argument("--user-prefix", default="memqa")
    p.add_argument("--settle", type=float, default=5.0,
                   help="seconds without new facts before the questions")
    p.add_argument("--settle-limit", type=float, default=300.0)
    p.add_argument("--full-history-exact", action="store_true",
                   help="count the full history's tokens with the judge's provider (costs)")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--details", action="store_true", help="include every question's answer")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    result = asyncio.run(run(parse_args(argv)))
    json.dump(result, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
