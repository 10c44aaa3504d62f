"""An OpenAI-compatible chat/embeddings server with deterministic answers and injectable faults.

Run standalone: `python -m llm_bot_core.testing.fake_llm --port 9999 --latency-ms 500`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llm_bot_core.llm.strict_chat import ALTERNATION_ERROR, chat_problems
from llm_bot_core.memory.extraction import EXTRACTION_SYSTEM_PROMPT
from llm_bot_core.memory.pictures import DESCRIBE_SYSTEM_PROMPT
from llm_bot_core.memory.prompt import TURN_SEPARATOR
from llm_bot_core.memory.query_rewrite import REWRITE_SYSTEM_PROMPT
from llm_bot_core.memory.summary import SUMMARY_SYSTEM_PROMPT
from llm_bot_core.testing.threaded import ThreadedServer

Reply = Callable[[list[dict[str, Any]]], str]


def is_summary_request(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[0].get("content") == SUMMARY_SYSTEM_PROMPT


def is_extraction_request(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[0].get("content") == EXTRACTION_SYSTEM_PROMPT


def is_description_request(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[0].get("content") == DESCRIBE_SYSTEM_PROMPT


def is_rewrite_request(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[0].get("content") == REWRITE_SYSTEM_PROMPT


def rewritten_message(messages: list[dict[str, Any]]) -> str:
    """The latest message a query rewrite request asks about."""
    return str(messages[-1]["content"]).rpartition("Latest message:\n")[2]


def text_of(content: Any) -> str:
    """A message's text: the string, or the text parts of OpenAI content parts."""
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return str(content or "")


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    """The data URLs of every image part of the request, in order."""
    return [
        part["image_url"]["url"]
        for m in messages
        if isinstance(m.get("content"), list)
        for part in m["content"]
        if part.get("type") == "image_url"
    ]


def decode_image(url: str) -> Any:
    """A `data:` URL's picture, opened with Pillow (raises if it is not a real picture)."""
    import base64
    import io

    from PIL import Image

    header, _, data = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise ValueError(f"not a base64 image data URL: {header[:40]}")
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


_COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}


def describe_image(url: str) -> str:
    """A deterministic description from the picture itself: its size and main colour."""
    image = decode_image(url).convert("RGB")
    pixel = image.resize((1, 1)).getpixel((0, 0))
    assert isinstance(pixel, tuple)
    colour = min(
        _COLOURS,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(pixel, _COLOURS[name], strict=True)),
    )
    return f"A mostly {colour} picture, {image.width}x{image.height} pixels."


# The scripted fact extractor: a sentence of a user message matching one of these states a
# fact; the fact's key (its content up to the value) finds the known fact it corrects.
# (pattern, content template, key) for statements; (pattern, key template) for retractions.
FACT_STATEMENTS = (
    (r"\bI live in ([^.!?\n]+)", "Lives in {0}", "Lives in "),
    (r"\bЯ живу в ([^.!?\n]+)", "Живёт в {0}", "Живёт в "),
    (r"\b[Mm]y (\w+) is ([^.!?\n]+)", "{0} is {1}", "{0} is "),
    (r"\b[Мм]еня зовут ([^.!?\n]+)", "Зовут {0}", "Зовут "),
    (r"\bI am allergic to ([^.!?\n]+)", "Allergic to {0}", "Allergic to {0}"),
)
FACT_RETRACTIONS = (
    (r"\bI no longer live in ([^.!?\n]+)", "Lives in {0}"),
    (r"\bЯ больше не живу в ([^.!?\n]+)", "Живёт в {0}"),
    (r"\bI am not allergic to ([^.!?\n]+)", "Allergic to {0}"),
)


def scripted_facts(messages: list[dict[str, Any]]) -> str:
    """Fact operations derived from the batch by FACT_STATEMENTS and FACT_RETRACTIONS."""
    body = messages[-1]["content"]
    known_part, _, new_part = body.partition("New messages of the user:")
    known = [
        (int(m.group(1)), m.group(2)) for m in re.finditer(r"^\[(\d+)\] (.+)$", known_part, re.M)
    ]
    operations: list[dict[str, Any]] = []
    for m in re.finditer(r"^\[(\d+)\] (.+)$", new_part, re.M):
        number, line = int(m.group(1)), m.group(2)
        for pattern, key_template in FACT_RETRACTIONS:
            for found in re.finditer(pattern, line):
                key = key_template.format(*(g.strip() for g in found.groups()))
                for fact_id, content in known:
                    if content.casefold() == key.casefold():
                        operations.append(_op("delete", fact_id, None, number))
        for pattern, template, key_template in FACT_STATEMENTS:
            for found in re.finditer(pattern, line):
                groups = [g.strip() for g in found.groups()]
                content = template.format(
                    *[
                        g.capitalize() if i == 0 and "{0} is" in template else g
                        for i, g in enumerate(groups)
                    ]
                )
                key = content[: len(key_template.format(*groups))]
                same = [f for f, c in known if c.casefold() == content.casefold()]
                older = [f for f, c in known if c.casefold().startswith(key.casefold())]
                if same:
                    continue
                if older:
                    operations.append(_op("update", older[0], content, number))
                else:
                    operations.append(_op("add", None, content, number))
    return json.dumps({"operations": operations}, ensure_ascii=False)


def _op(op: str, fact: int | None, content: str | None, number: int) -> dict[str, Any]:
    return {"op": op, "fact": fact, "content": content, "importance": 0.7, "messages": [number]}


def default_reply(messages: list[dict[str, Any]]) -> str:
    if is_extraction_request(messages):
        return scripted_facts(messages)
    if is_description_request(messages):
        return " ".join(describe_image(url) for url in image_urls(messages))
    if is_rewrite_request(messages):
        return rewritten_message(messages)  # the message itself: a rewrite that adds nothing
    if is_summary_request(messages):
        body = messages[-1]["content"]
        new = [line for line in body.splitlines() if line.startswith("[")]
        return f"Summary of {len(new)} new messages. Last: {new[-1][:80] if new else ''}"
    last_user = next((text_of(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")
    # The newest message closes the last user turn, set off by a blank line from recalled memory
    # or an earlier unanswered message before it; a multi-paragraph message echoes its last one.
    return f"Echo: {last_user.rpartition(TURN_SEPARATOR)[2]}"


def hashed_embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector; equal texts get equal vectors."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [((digest[i % 32] ^ (i * 31)) % 255) / 127.0 - 1.0 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


@dataclass
class FakeLLM:
    """State and behaviour of the fake; tests mutate it between requests."""

    latency: float = 0.0
    summary_latency: float | None = None
    reply: Reply = default_reply
    embedding_dim: int = 64
    requests: list[dict[str, Any]] = field(default_factory=list)
    _failures: list[tuple[int, str]] = field(default_factory=list)
    hang: bool = False
    embeddings_down: bool = False
    """While set, /v1/embeddings answers 503 (an embedding server outage)."""
    strict: bool = False
    """While set, a chat request a strict chat template rejects answers 400, as vLLM does."""
    prompt_violations: list[tuple[list[dict[str, Any]], list[str]]] = field(default_factory=list)
    """Every chat request a strict chat template would reject, with the problems found."""
    malformed_facts: int = 0
    """The next this many fact extraction requests get an answer that is not JSON."""
    facts_latency: float | None = None
    rewrite_latency: float | None = None
    # Streaming (`"stream": true`): the answer in chunks of `chunk_chars` characters, the first
    # after `latency`, each next one `chunk_delay` seconds later.
    chunk_chars: int = 8
    chunk_delay: float = 0.0
    _stream_faults: list[tuple[int, str]] = field(default_factory=list)
    usage: tuple[int, int] | None = None
    """(prompt, completion) tokens every chat answer reports; None: counted from the words."""
    cost: float | None = None
    """When set, every chat answer reports this cost in `usage`, as OpenRouter does."""
    vision: bool = True
    """False: a request with image parts answers 404 as OpenRouter does for a text-only model."""

    def fail_next(self, count: int = 1, status: int = 500, body: str = "upstream error") -> None:
        """The next `count` chat requests answer `status` (0: close the connection)."""
        self._failures.extend([(status, body)] * count)

    def fail_stream_next(self, after_chunks: int, mode: str = "drop", count: int = 1) -> None:
        """The next `count` streamed answers break after `after_chunks` content chunks: the
        connection is dropped (`drop`) or an OpenRouter-style error chunk is sent (`error`)."""
        self._stream_faults.extend([(after_chunks, mode)] * count)

    def reset(self) -> None:
        self.latency = 0.0
        self.chunk_chars = 8
        self.chunk_delay = 0.0
        self._stream_faults.clear()
        self.summary_latency = None
        self.reply = default_reply
        self.requests.clear()
        self._failures.clear()
        self.hang = False
        self.embeddings_down = False
        self.strict = False
        self.prompt_violations.clear()
        self.usage = None
        self.cost = None
        self.malformed_facts = 0
        self.facts_latency = None
        self.rewrite_latency = None
        self.vision = True

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r.get("_kind") == "chat"
            and not is_summary_request(r["messages"])
            and not is_extraction_request(r["messages"])
            and not is_description_request(r["messages"])
            and not is_rewrite_request(r["messages"])
        ]

    @property
    def rewrite_requests(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r.get("_kind") == "chat" and is_rewrite_request(r["messages"])
        ]

    @property
    def description_requests(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r.get("_kind") == "chat" and is_description_request(r["messages"])
        ]

    @property
    def fact_requests(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r.get("_kind") == "chat" and is_extraction_request(r["messages"])
        ]

    @property
    def summary_requests(self) -> list[dict[str, Any]]:
        return [
            r
            for r in self.requests
            if r.get("_kind") == "chat" and is_summary_request(r["messages"])
        ]

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        body["_kind"] = "chat"
        self.requests.append(body)
        messages = body.get("messages", [])
        problems = chat_problems(messages)
        if problems:
            self.prompt_violations.append((messages, problems))
            if self.strict:
                message = f"{ALTERNATION_ERROR} ({'; '.join(problems)})"
                error = {"message": message, "type": "BadRequestError", "code": 400}
                return web.json_response({"error": error}, status=400)
        delay = self.latency
        if self.summary_latency is not None and is_summary_request(messages):
            delay = self.summary_latency
        if self.facts_latency is not None and is_extraction_request(messages):
            delay = self.facts_latency
        if self.rewrite_latency is not None and is_rewrite_request(messages):
            delay = self.rewrite_latency
        # Decided on arrival: a slow request still sleeping from an earlier test must not
        # consume a failure queued for the next one.
        failure = self._failures.pop(0) if self._failures else None
        if self.hang:
            await asyncio.sleep(3600)
        if delay:
            await asyncio.sleep(delay)
        if failure is not None:
            status, text = failure
            if status == 0:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            if status == 200:  # a "successful" answer whose body is not what the protocol says
                return web.Response(text=text, content_type="application/json")
            return web.json_response({"error": {"message": text, "code": status}}, status=status)
        if not self.vision and image_urls(messages):
            message = "No endpoints found that support image input"
            return web.json_response({"error": {"message": message, "code": 404}}, status=404)
        for url in image_urls(messages):
            try:
                decode_image(url)
            except Exception as exc:  # a real provider refuses a broken picture the same way
                error = {"message": f"Invalid image data: {exc}", "code": 400}
                return web.json_response({"error": error}, status=400)
        if self.malformed_facts and is_extraction_request(messages):
            self.malformed_facts -= 1
            content = "Sure! Here are the facts: - lives somewhere"
        else:
            content = self.reply(messages)
        prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in messages)
        usage = self._usage(prompt_tokens, content)
        if body.get("stream"):
            return await self._stream(request, body, content, usage)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    def _usage(self, prompt_tokens: int, content: str) -> dict[str, Any]:
        """What an answer reports it used: counted words, or the tokens and cost set above."""
        completion_tokens = len(content.split())
        if self.usage is not None:
            prompt_tokens, completion_tokens = self.usage
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        if self.cost is not None:
            usage["cost"] = self.cost
        return usage

    async def _stream(
        self, request: web.Request, body: dict[str, Any], content: str, usage: dict[str, Any]
    ) -> web.StreamResponse:
        """`chat.completion.chunk` events as OpenAI sends them, the usage chunk, `[DONE]`."""
        fault = self._stream_faults.pop(0) if self._stream_faults else None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        base = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
        }

        # Frames wait in `pending` until a pause (or the end) flushes them in one write, as a
        # server that has the whole answer at once sends it.
        pending: list[bytes] = []

        def frame(chunk: dict[str, Any]) -> None:
            pending.append(b"data: " + json.dumps({**base, **chunk}).encode() + b"\n\n")

        async def flush() -> None:
            await response.write(b"".join(pending))
            pending.clear()

        size = max(1, self.chunk_chars)
        pieces = [content[i : i + size] for i in range(0, len(content), size)]
        frame({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        for index, piece in enumerate(pieces):
            if fault is not None and index == fault[0]:
                if fault[1] == "drop":
                    await flush()
                    assert request.transport is not None
                    request.transport.close()
                    return response
                frame(
                    {
                        "error": {"code": 502, "message": "upstream provider failed"},
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "error"}],
                    }
                )
                pending.append(b"data: [DONE]\n\n")
                await flush()
                return response
            if index and self.chunk_delay:
                await flush()
                await asyncio.sleep(self.chunk_delay)
            frame({"choices": [{"index": 0, "delta": {"content": piece}}]})
        frame({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            frame({"choices": [], "usage": usage})
        pending.append(b"data: [DONE]\n\n")
        await flush()
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await request.json()
        body["_kind"] = "embeddings"
        self.requests.append(body)
        if self.embeddings_down:
            return web.json_response({"error": {"message": "embeddings down"}}, status=503)
        if self._failures:
            status, text = self._failures.pop(0)
            return web.json_response({"error": {"message": text}}, status=status)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dim = int(body.get("dimensions") or self.embedding_dim)
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model", "fake-embedding"),
                "data": [
                    {"object": "embedding", "index": i, "embedding": hashed_embedding(t, dim)}
                    for i, t in enumerate(inputs)
                ],
                "usage": {"prompt_tokens": 0, "total_tokens": 0},
            }
        )

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", self.chat)
            app.router.add_post(f"{prefix}/embeddings", self.embeddings)
            app.router.add_get(f"{prefix}/models", self.models)
        return app


class FakeLLMServer(ThreadedServer):
    """Runs a FakeLLM on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, fake: FakeLLM | None = None, port: int = 0) -> None:
        super().__init__(port)
        self.fake = fake or FakeLLM()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def build_app(self) -> web.Application:
        return self.fake.app()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9999)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--summary-latency-ms", type=float, default=None)
    parser.add_argument(
        "--strict", action="store_true", help="reject prompts a strict chat template rejects"
    )
    parser.add_argument("--chunk-chars", type=int, default=8, help="streamed chunk size")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="between chunks")
    args = parser.parse_args()
    fake = FakeLLM(
        latency=args.latency_ms / 1000,
        strict=args.strict,
        chunk_chars=args.chunk_chars,
        chunk_delay=args.chunk_delay_ms / 1000,
    )
    if args.summary_latency_ms is not None:
        fake.summary_latency = args.summary_latency_ms / 1000
    # Keep no request log in a long benchmark run.
    fake.requests = _Discard()
    web.run_app(fake.app(), host=args.host, port=args.port, access_log=None, print=None)


class _Discard(list[Any]):
    def append(self, _: Any) -> None:
        return None


if __name__ == "__main__":
    main()
