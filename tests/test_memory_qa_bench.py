"""bench/memory_qa.py keeps working: a LoCoMo slice replayed through the real backend (fake LLM)
and graded by a fake judge, run as the command it is, its JSON checked."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_bot_core.testing.fake_llm import (
    FakeLLM,
    FakeLLMServer,
    default_reply,
    is_extraction_request,
    is_summary_request,
)
from tests.bot_support import BackendServer, backend_fixture, rows  # noqa: F401 - fixtures

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[1]
LOCOMO = ROOT.parent.parent / "shared" / "bench" / "locomo" / "locomo_dev.json"
if not LOCOMO.exists():  # the work tree's usual place, or the main checkout's
    LOCOMO = Path("/work/shared/bench/locomo/locomo_dev.json")


def oracle_reader(messages: list[dict[str, Any]]) -> str:
    """Answers with everything the prompt holds: correct exactly when memory put the answer
    into the prompt (window, summary, facts, recall)."""
    if is_extraction_request(messages) or is_summary_request(messages):
        return default_reply(messages)
    return "I remember: " + " ".join(str(m["content"]) for m in messages)


def gold_in_answer(messages: list[dict[str, Any]]) -> str:
    """The fake judge: CORRECT when the gold answer appears in the generated one."""
    body = messages[-1]["content"]
    gold = re.search(r"^Gold answer: (.*)$", body, re.M)
    answer = re.search(r"^Generated answer: (.*)", body, re.M | re.S)
    assert gold and answer, body
    return "CORRECT" if gold.group(1).casefold() in answer.group(1).casefold() else "WRONG"


@pytest.fixture
def judge() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLM(reply=gold_in_answer)) as server:
        yield server


@pytest.mark.skipif(not LOCOMO.exists(), reason="LoCoMo data not available")
async def test_memory_qa_on_a_locomo_slice_prints_scores_and_token_use(
    backend: BackendServer, fake_llm: FakeLLM, judge: FakeLLMServer, db: AsyncEngine
) -> None:
    fake_llm.reply = oracle_reader
    command = [
        sys.executable, str(ROOT / "bench" / "memory_qa.py"),
        "--backend-url", backend.url, "--judge-base-url", judge.base_url,
        "--judge-model", "fake-judge", "--data", str(LOCOMO),
        "--conversations", "1", "--sessions", "2", "--questions", "4",
        "--settle", "0.5", "--details",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert result["dialogues"] == 1 and result["sessions"] == 2
    assert result["turns_replayed"] == 18 + 17  # conv-26's first two sessions
    assert result["questions"] == 4 == len(result["items"])
    assert 0 <= result["correct"] <= 4
    assert result["accuracy"] == round(result["correct"] / 4, 4)
    assert sum(c["questions"] for c in result["by_category"].values()) == 4
    for item in result["items"]:
        assert item["answer"].startswith("I remember: ")
        assert item["prompt_tokens"] > 0  # from the backend's /metrics, per question
        assert item["full_history_tokens"] > 0
    tokens = result["tokens"]
    assert tokens["per_question_prompt_mean"] > 0
    assert tokens["per_question_full_history_mean"] > 0
    assert tokens["replay_by_purpose"]["chat"]["prompt"] > 0
    assert tokens["judge"]["prompt"] > 0
    # Every graded question went to the judge, and the judge agreed with the printed verdicts.
    graded = [r for r in judge.fake.requests if r.get("_kind") != "embeddings"]
    assert len(graded) == 4
    # Everything was said through the API: the replayed turns and the questions are stored.
    stored = await rows(db, "SELECT count(*) FROM messages WHERE role = 'user'")
    assert stored == [(35 + 4,)]


async def test_memory_qa_reads_the_documented_format_and_scores_a_fact_carried_across_sessions(
    backend: BackendServer, fake_llm: FakeLLM, judge: FakeLLMServer, tmp_path: Path
) -> None:
    fake_llm.reply = oracle_reader
    chatter = ["Hi there!", "The weather is nice.", "I had tea.", "Work was long.", "Ok."]
    dialogues = {"dialogues": [{
        "id": "rex",
        "sessions": [
            {"date": "2026-05-01", "turns": [{"text": "My dog is Rex."}]
             + [{"text": t} for t in chatter]},
            {"turns": [{"speaker": "Me", "text": "Nothing new today."}]},
        ],
        "questions": [
            {"question": "What is my dog's name?", "answer": "Rex", "category": "pets"},
            {"question": "Where do I work?", "answer": "Siemens", "category": "work"},
        ],
    }]}
    data = tmp_path / "dialogues.json"
    data.write_text(json.dumps(dialogues))
    command = [
        sys.executable, str(ROOT / "bench" / "memory_qa.py"),
        "--backend-url", backend.url, "--judge-base-url", judge.base_url,
        "--data", str(data), "--settle", "1", "--details",
    ]
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)

    assert result["turns_replayed"] == 7 and result["facts_stored"] == 1
    # The dog's name crossed the reset between sessions as a fact; the employer was never said.
    assert result["by_category"] == {
        "pets": {"questions": 1, "correct": 1, "accuracy": 1.0},
        "work": {"questions": 1, "correct": 0, "accuracy": 0.0},
    }
    assert result["accuracy"] == 0.5
    pets = result["items"][0]
    assert "Dog is Rex" in pets["answer"]
    # The whole dialogue is a few dozen tokens here; the prompt (instruction, profile) is not
    # smaller, which is why the ratio is reported rather than assumed.
    assert pets["full_history_tokens"] > 0 and pets["prompt_tokens"] > 0
