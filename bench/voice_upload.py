"""Latency of POST /v1/media/transcriptions against the real stack; prints one JSON object.

The stack is bench/load.py's (PostgreSQL, `llm-bot-core serve`), with the fake speech-to-text
server (`python -m llm_bot_core.testing.fake_transcription`, answering at once) as its own
process. What is measured is what the backend adds around the provider: the multipart upload,
reading the duration from the container, the budget check (one indexed SQL statement), the
provider call through the openai SDK, and the usage record.

1. Serial uploads of tests/fixtures/voice.ogg (3 s OGG/Opus, 7 KB, a typical voice message).
2. Serial uploads of a 60 s WAV (1.9 MB): the cost of a large body.
3. Throughput at `--concurrency` with the voice message.
4. In-process: reading the duration of the OGG and of a 20 MB WAV.

  python bench/voice_upload.py --save voice_upload     # about 20 seconds
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import harness
from tests.voice_support import VOICE_OGG, tone_wav

from llm_bot_core.media.audio import audio_duration


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--serial", type=int, default=300, help="uploads of the serial run")
    p.add_argument("--large", type=int, default=30, help="uploads of the 60 s WAV")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--requests", type=int, default=1000, help="uploads of the throughput run")
    p.add_argument("--database-url", default=None)
    p.add_argument("--save", default=None, help="also write bench/results/<SAVE>.json")
    return p.parse_args(argv)


async def upload(session: aiohttp.ClientSession, url: str, audio: bytes, n: int) -> float:
    form = aiohttp.FormData()
    form.add_field("user_id", f"u{n % 50}")
    form.add_field("chat_id", f"u{n % 50}")
    form.add_field("audio", audio, filename="voice.ogg", content_type="audio/ogg")
    started = time.perf_counter()
    async with session.post(url, data=form) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{response.status}: {await response.text()}")
    return time.perf_counter() - started


async def serial(url: str, audio: bytes, count: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        for n in range(10):  # warm-up: connections, the SDK's client, the plan cache
            await upload(session, url, audio, n)
        times = [await upload(session, url, audio, n) * 1000 for n in range(count)]
    return {"requests": count, "bytes": len(audio), "latency_ms": harness.pcts(times)}


async def throughput(url: str, audio: bytes, concurrency: int, total: int) -> dict[str, Any]:
    queue = iter(range(total))
    times: list[float] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for n in queue:
            times.append(await upload(session, url, audio, n) * 1000)

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": total,
        "rps": round(total / elapsed, 1),
        "latency_ms": harness.pcts(times),
    }


def parse_cost() -> dict[str, Any]:
    big = tone_wav(20 * 2**20 / 32_000)  # 20 MB of 16 kHz 16-bit mono
    result = {}
    for name, data, repeat in (("ogg_3s_us", VOICE_OGG, 2000), ("wav_20mb_us", big, 200)):
        started = time.perf_counter()
        for _ in range(repeat):
            audio_duration(data)
        result[name] = round((time.perf_counter() - started) / repeat * 1e6, 2)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    port = harness.free_port()
    stt = harness.Process(
        "fake-transcription",
        [sys.executable, "-m", "llm_bot_core.testing.fake_transcription", "--port", str(port)],
        dict(os.environ),
    )
    try:
        harness.wait_http(f"http://127.0.0.1:{port}/v1/models", stt)
        with (
            harness.postgres(args.database_url) as database_url,
            harness.fake_llm(0) as llm_url,
        ):
            env = harness.backend_env(
                database_url,
                llm_url,
                transcription_base_url=f"http://127.0.0.1:{port}/v1",
                usage_flush_interval_ms=200,
            )
            with harness.backend(env, workers=1) as base_url:
                url = f"{base_url}/v1/media/transcriptions"
                wav = tone_wav(60)
                result = {
                    "benchmark": "voice_upload",
                    "machine": harness.machine(),
                    "voice_ogg_serial": harness.run_async(serial(url, VOICE_OGG, args.serial)),
                    "wav_60s_serial": harness.run_async(serial(url, wav, args.large)),
                    "voice_ogg_concurrent": harness.run_async(
                        throughput(url, VOICE_OGG, args.concurrency, args.requests)
                    ),
                    "duration_parse": parse_cost(),
                }
    finally:
        stt.stop()
    return harness.emit(result, args.save)


if __name__ == "__main__":
    main()
