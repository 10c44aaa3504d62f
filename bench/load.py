"""Load benchmark of /v1/chat/handle against the real stack; prints one JSON object.

Starts PostgreSQL, the fake OpenAI-compatible LLM (its own process, fixed latency) and the backend
as `make run` does (`llm-bot-core serve --workers N`), then drives many concurrent chats through
/v1/chat/handle with an async HTTP client. For each (LLM latency, concurrency) it reports
throughput, latency percentiles, errors, and the backend's own overhead per request, measured by
the server: `Server-Timing: app;dur=` (request in to response out) minus `llm;dur=` (the LLM
call). `overhead_client_ms` is the client-measured latency minus `llm`: it adds the loopback
network and the load generator's scheduling, an upper bound.
In the same run it loads GET /health/live (same app, no DB, no LLM) at the same concurrency,
for `--floor-seconds` before and after each handle run: `floor_rps` is their mean, and `ratio`
= handle throughput / floor throughput.

The top-level numbers are the headline: throughput, latency, floor and ratio of the 0 ms run at
the highest concurrency, overhead of the concurrency-1 run. With `--repeat N` (3 with `--quick`)
each is the run of median ratio (median overhead at concurrency 1), and `headline_runs` lists
all of them; every run is in `runs`.

  python bench/load.py --quick                 # 0 ms LLM, concurrency 1 and 50, 3 runs, < 2 min
  python bench/load.py                         # 0 and 500 ms, concurrency 1, 50, 100, 200
  python bench/load.py --latency-ms 500 --concurrency 100 --chats 200 --messages 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="0 ms LLM, concurrency 1 and 50, < 2 min")
    p.add_argument(
        "--latency-ms", type=float, nargs="+", default=None, help="fake LLM latencies (0 500)"
    )
    p.add_argument(
        "--concurrency", type=int, nargs="+", default=None, help="concurrent users (1 50 100 200)"
    )
    p.add_argument("--chats", type=int, default=None, help="chats per run (default 200)")
    p.add_argument("--messages", type=int, default=None, help="messages per chat (default 30)")
    p.add_argument(
        "--serial-requests",
        type=int,
        default=None,
        help="requests of a concurrency-1 run (default 300 at 0 ms, 60 otherwise)",
    )
    p.add_argument(
        "--max-seconds", type=float, default=60.0, help="stop issuing requests after this per run"
    )
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (--workers of serve)")
    p.add_argument(
        "--floor-seconds",
        type=float,
        default=3.0,
        help="seconds of /health/live load before and after each handle run (the floor)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per (latency, concurrency); the headline is the median run (default 1, "
        "--quick 3)",
    )
    p.add_argument("--database-url", default=None, help="use this server (a fresh database in it)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra backend setting, e.g. --set SUMMARY_THRESHOLD=24 (repeatable)",
    )
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    args = p.parse_args(argv)
    if args.quick:
        args.latency_ms = args.latency_ms or [0.0]
        args.concurrency = args.concurrency or [1, 50]
        args.chats = args.chats or 200
        args.messages = args.messages or 10
        args.max_seconds = min(args.max_seconds, 25.0)
        args.floor_seconds = min(args.floor_seconds, 2.0)
        args.repeat = args.repeat or 3
    args.repeat = max(1, args.repeat or 1)
    args.latency_ms = args.latency_ms or [0.0, 500.0]
    args.concurrency = args.concurrency or [1, 50, 100, 200]
    args.chats = args.chats or 200
    args.messages = args.messages or 30
    return args


def settings_from(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        out[name.strip().upper()] = value
    return out


async def one_run(
    base_url: str, args: argparse.Namespace, latency_ms: float, concurrency: int, tag: str
) -> dict[str, Any]:
    # Warm up connections, code paths and PostgreSQL's caches before measuring.
    await harness.drive_chats(
        base_url, tag=f"{tag}-warm", chats=concurrency, messages=2, concurrency=concurrency,
        max_seconds=20,
    )  # fmt: skip
    if concurrency == 1:
        serial = args.serial_requests or (300 if latency_ms == 0 else 60)
        chats, messages = max(1, serial // 10), min(10, serial)
    else:
        chats, messages = args.chats, args.messages
    # The floor brackets the handle run, so a slow or fast moment of a shared machine weighs
    # on both sides of the ratio alike.
    before = await harness.drive_floor(
        base_url, seconds=args.floor_seconds, concurrency=concurrency
    )
    cpu_before = harness.CPU.snapshot()
    samples = await harness.drive_chats(
        base_url,
        tag=tag,
        chats=chats,
        messages=messages,
        concurrency=concurrency,
        max_seconds=args.max_seconds,
    )
    cpu = harness.CPU.per_request(cpu_before, harness.CPU.snapshot(), samples.ok)
    after = await harness.drive_floor(base_url, seconds=args.floor_seconds, concurrency=concurrency)
    result = {
        "llm_latency_ms": latency_ms,
        "concurrency": concurrency,
        **harness.summarize(samples),
    }
    floors = [f.ok / f.elapsed for f in (before, after) if f.elapsed]
    result["floor_rps"] = round(sum(floors) / len(floors), 1) if floors else 0.0
    result["floor_rps_before_after"] = [round(f, 1) for f in floors]
    result["ratio"] = (
        round(result["throughput_rps"] / result["floor_rps"], 3) if result["floor_rps"] else None
    )
    # CPU milliseconds per handled request in each process of the stack; with all of them on
    # one idle machine, cpus * 1000 / total is the throughput the CPU alone would allow.
    result["cpu_ms_per_request"] = cpu
    if cpu.get("total"):
        result["cpu_bound_rps_idle_machine"] = round((os.cpu_count() or 1) * 1000 / cpu["total"])
    return result


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    def value(run: dict[str, Any]) -> float:
        v = run[key]["p50"] if key == "overhead_ms" else run[key]
        return float(v or 0.0)

    ordered = sorted(runs, key=value)
    return ordered[(len(ordered) - 1) // 2]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    extra = settings_from(args.set)
    runs: list[dict[str, Any]] = []
    with harness.postgres(args.database_url) as db_url:
        for latency in args.latency_ms:
            with harness.fake_llm(latency) as llm_url:
                env = harness.backend_env(db_url, llm_url, **extra)
                with harness.backend(env, args.workers) as base_url:
                    for concurrency in args.concurrency:
                        for repeat in range(args.repeat):
                            tag = f"l{int(latency)}-c{concurrency}-r{repeat}"
                            run = harness.run_async(
                                one_run(base_url, args, latency, concurrency, tag)
                            )
                            run["repeat"] = repeat
                            runs.append(run)
                            print(json.dumps(run), file=sys.stderr, flush=True)

    zero = [r for r in runs if r["llm_latency_ms"] == 0] or runs
    top = max(r["concurrency"] for r in zero)
    # On a shared machine one run can land in a moment when the host is busy; with --repeat
    # the headline is the run of median ratio (and of median overhead at concurrency 1).
    headline = _median_run([r for r in zero if r["concurrency"] == top], "ratio")
    serial_runs = [r for r in zero if r["concurrency"] == 1]
    serial = _median_run(serial_runs, "overhead_ms") if serial_runs else headline
    result: dict[str, Any] = {
        "benchmark": "load",
        "quick": args.quick,
        "workers": args.workers,
        "settings": extra,
        "machine": harness.machine(),
        "throughput_rps": headline["throughput_rps"],
        "latency_ms": headline["latency_ms"],
        "overhead_ms": serial["overhead_ms"],
        "errors": sum(r["errors"] for r in runs),
        "floor_rps": headline["floor_rps"],
        "ratio": headline["ratio"],
        "headline": {"llm_latency_ms": 0, "concurrency": headline["concurrency"]},
        "headline_runs": {
            "ratio": [r["ratio"] for r in zero if r["concurrency"] == top],
            "throughput_rps": [r["throughput_rps"] for r in zero if r["concurrency"] == top],
        },
        "runs": runs,
    }
    return harness.emit(result, args.save)


if __name__ == "__main__":
    main()
