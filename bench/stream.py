"""Streaming benchmark of /v1/chat/stream against the real stack; prints one JSON object.

The stack is bench/load.py's (PostgreSQL, the fake LLM in its own process, `llm-bot-core serve`).

1. Time to first token at concurrency 1: the fake LLM waits `--first-chunk-ms` before its first
   chunk. `ttft_overhead_ms` is what the stack adds on top of that delay, measured by the server:
   `Server-Timing: app;dur=` (request in -> response start, which is sent with the first delta)
   minus `llm;dur=` (model call -> its first delta). `ttft_overhead_client_ms` is the client's
   time to the first `delta` event minus the configured delay: it adds the LLM client's own
   HTTP round trip to the fake, loopback and the load generator's scheduling (an upper bound).
2. Throughput at `--concurrency` with a 0 ms LLM: /v1/chat/handle and /v1/chat/stream driven
   alternately on the same backend, `--repeat` pairs; `ratio` = stream / handle throughput of
   the pair with the median ratio.

  python bench/stream.py --save stream        # about 2 minutes
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--first-chunk-ms", type=float, default=50.0, help="fake LLM's first delay")
    p.add_argument("--serial-requests", type=int, default=300, help="requests of the TTFT run")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--chats", type=int, default=200)
    p.add_argument("--messages", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=15.0, help="per throughput run")
    p.add_argument("--repeat", type=int, default=3, help="handle/stream pairs")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--llm-client", choices=["openai", "http"], default="openai")
    p.add_argument("--database-url", default=None)
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    return p.parse_args(argv)


async def first_tokens(base_url: str, requests: int, delay_ms: float) -> dict[str, Any]:
    """Serial streamed requests: server- and client-measured overhead before the first delta."""
    server: list[float] = []
    client: list[float] = []
    errors = 0
    url = f"{base_url}/v1/chat/stream"
    async with aiohttp.ClientSession() as session:
        for n in range(requests + 20):
            body = {"user_id": "ttft", "chat_id": f"ttft-{n // 10}", "text": f"message {n}"}
            t0 = time.perf_counter()
            async with session.post(url, json=body) as response:
                first = await response.content.readuntil(b"\n\n")
                elapsed = time.perf_counter() - t0
                rest = await response.read()
            if not first.startswith(b"event: delta") or b"event: done" not in rest:
                errors += 1
                continue
            if n < 20:
                continue  # warm-up: connections, code paths, PostgreSQL's caches
            timing = harness.server_timing(response.headers)
            server.append((timing["app"] - timing["llm"]) * 1000)
            client.append(elapsed * 1000 - delay_ms)
    return {
        "first_chunk_ms": delay_ms,
        "requests": len(server),
        "errors": errors,
        "ttft_overhead_ms": harness.pcts(server),
        "ttft_overhead_client_ms": harness.pcts(client),
    }


async def throughput_pair(base_url: str, args: argparse.Namespace, tag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    paths = ["/v1/chat/handle", "/v1/chat/stream"]
    # Alternate which goes first: the database grows during a run, so the second pays more.
    for path in paths if int(tag[1:]) % 2 == 0 else paths[::-1]:
        name = path.rsplit("/", 1)[1]
        cpu_before = harness.CPU.snapshot()
        samples = await harness.drive_chats(
            base_url, tag=f"{tag}-{name}", chats=args.chats, messages=args.messages,
            concurrency=args.concurrency, max_seconds=args.max_seconds, path=path,
        )  # fmt: skip
        out[name] = harness.summarize(samples)
        # CPU milliseconds per answered request in each process of the stack.
        out[name]["cpu_ms_per_request"] = harness.CPU.per_request(
            cpu_before, harness.CPU.snapshot(), samples.ok
        )
    out["ratio"] = round(out["stream"]["throughput_rps"] / out["handle"]["throughput_rps"], 3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    env_extra = {"LLM_CLIENT": args.llm_client}
    with harness.postgres(args.database_url) as db_url:
        with harness.fake_llm(args.first_chunk_ms) as llm_url:
            env = harness.backend_env(db_url, llm_url, **env_extra)
            with harness.backend(env, args.workers) as base_url:
                ttft = harness.run_async(
                    first_tokens(base_url, args.serial_requests, args.first_chunk_ms)
                )
        with harness.fake_llm(0.0) as llm_url:
            env = harness.backend_env(db_url, llm_url, **env_extra)
            with harness.backend(env, args.workers) as base_url:
                harness.run_async(
                    harness.drive_chats(
                        base_url, tag="warm", chats=args.concurrency, messages=2,
                        concurrency=args.concurrency, max_seconds=20,
                        path="/v1/chat/stream",
                    )
                )  # fmt: skip
                pairs = [
                    harness.run_async(throughput_pair(base_url, args, f"r{n}"))
                    for n in range(args.repeat)
                ]
    headline = sorted(pairs, key=lambda p: p["ratio"])[(len(pairs) - 1) // 2]  # (lower) median
    result: dict[str, Any] = {
        "benchmark": "stream",
        "llm_client": args.llm_client,
        "workers": args.workers,
        "machine": harness.machine(),
        **ttft,
        "concurrency": args.concurrency,
        "handle_rps": headline["handle"]["throughput_rps"],
        "stream_rps": headline["stream"]["throughput_rps"],
        "ratio": headline["ratio"],
        "ratios": [p["ratio"] for p in pairs],
        "errors": ttft["errors"] + sum(p[k]["errors"] for p in pairs for k in ("handle", "stream")),
        "pairs": pairs,
    }
    return harness.emit(result, args.save)


if __name__ == "__main__":
    main()
