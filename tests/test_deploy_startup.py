"""The base compose stack's startup, reproduced without Docker, then a message end to end.

Each Python service is started with exactly the command and environment the compose file gives
its container: the image's ENTRYPOINT and ENV (from the Dockerfile), `.env` through `env_file`,
then `environment:`. The package runs from a wheel built from this checkout (what the image's
`pip install` installs), not from the source tree. What Docker would provide is mapped:

- service hostnames go to 127.0.0.1: `postgres_llm_bot` is the machine's PostgreSQL (a database
  made for this test), `redis` the machine's Redis;
- all containers share one network namespace here, so a service listening on its container port
  (the backend's PORT=8080) gets a free port instead, and URLs naming it follow;
- the image's /data (DATA_DIR and WORKDIR) is a fresh directory per container.

Services start in `depends_on` order and only once their dependencies are healthy (by running
the healthcheck command of the compose file) or completed; one-shot services must exit 0.
Directus is not started here (issue 5's tests run a real one) and nothing here depends on it.
The Telegram bot joins automatically once the package has the `bot` subcommand, talking to a
fake Bot API server; until then the test sends the bot's request to the backend itself.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from llm_bot_core.cli import build_parser
from llm_bot_core.db.engine import normalize_url
from llm_bot_core.testing.fake_llm import FakeLLM, FakeLLMServer
from tests.conftest import _admin, unavailable
from tests.deploy_support import (
    BASE_COMPOSE,
    ROOT,
    Project,
    container_environment,
    exec_form,
    image_env,
    load_project,
    parse_dockerfile,
)

pytestmark = [pytest.mark.celery]

MACHINE_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
BOT_TOKEN = "123456:TEST-token"
THRESHOLD = 4  # messages per summary: two exchanges
EXTERNAL = {"postgres_llm_bot", "redis"}  # the machine's servers stand in for these
NOT_STARTED = {
    "directus": "a real Directus is started by issue 5's tests",
    "directus_provision": "needs the directus service",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_subcommand(name: str) -> bool:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert isinstance(action.choices, dict)
    return name in action.choices


@pytest.fixture(scope="module")
def image_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as the image installs it: a wheel built from what the Dockerfile copies."""
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = out.glob("llm_bot_core-*.whl")
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return site


@pytest.fixture(scope="module")
def stack_database() -> Iterator[str]:
    """A database of its own on the machine's PostgreSQL server."""
    admin_url = normalize_url(os.environ.get("TEST_DATABASE_URL") or MACHINE_PG)
    name = f"llmbot_compose_{uuid.uuid4().hex[:8]}"
    try:
        asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        unavailable(f"the machine's PostgreSQL is not reachable at {admin_url}: {exc!r}")
    yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@dataclass
class Container:
    name: str
    argv: list[str]
    env: dict[str, str]
    workdir: Path
    healthcheck: list[str] | None
    one_shot: bool
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.workdir,
                                         stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def healthy(self) -> bool:
        assert self.healthcheck is not None
        kind, *rest = self.healthcheck
        argv = ["sh", "-c", rest[0]] if kind == "CMD-SHELL" else rest
        try:
            result = subprocess.run(argv, env=self.env, cwd=self.workdir, capture_output=True,
                                    timeout=30)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Stack:
    """Starts a compose project's services as processes, in dependency order."""

    def __init__(self, project: Project, dotenv: dict[str, str], hosts: dict[str, str],
                 site: Path, workdir: Path) -> None:
        self.project = project
        self.dotenv = dotenv
        self.hosts = hosts  # "service:port" -> "127.0.0.1:port"
        self.site = site
        self.workdir = workdir
        _, stages = parse_dockerfile()
        self.image_env = image_env(stages[-1])
        self.entrypoint = exec_form(stages[-1].values("ENTRYPOINT")[-1])
        self.containers: dict[str, Container] = {}
        self.state: dict[str, str] = {}

    def rewrite(self, value: str) -> str:
        for name, target in self.hosts.items():
            value = re.sub(rf"(?<=[/@]){re.escape(name)}(?=[/:]|$)", target, value)
        return value

    def container(self, name: str) -> Container:
        service = self.project.services[name]
        data = self.workdir / name
        data.mkdir()
        env = container_environment(service, BASE_COMPOSE.parent, self.dotenv, self.image_env)
        env = {k: self.rewrite(v) for k, v in env.items()}
        for port_spec in service.get("ports") or []:
            container_port = str(port_spec).rsplit(":", 1)[1]
            if env.get("PORT") == container_port:
                env["PORT"] = self.hosts[f"{name}:{container_port}"].rsplit(":", 1)[1]
        # What Docker and the image provide: the virtualenv on PATH, /data, the hostname.
        venv_bin = str(Path(sys.executable).parent)
        env["PATH"] = env["PATH"].replace("/opt/venv/bin", venv_bin) + os.environ["PATH"]
        env.update(DATA_DIR=str(data), HOME=str(data), HOSTNAME=socket.gethostname(),
                   PYTHONPATH=str(self.site))
        argv = [self.rewrite(arg) for arg in (service.get("entrypoint") or self.entrypoint)
                + service["command"]]
        test = (service.get("healthcheck") or {}).get("test")
        return Container(name=name, argv=argv, env=env, workdir=data,
                         log_path=self.workdir / f"{name}.log",
                         healthcheck=[self.rewrite(t) for t in test] if test else None,
                         one_shot=service.get("restart") == "no")

    def order(self) -> list[str]:
        done: list[str] = []

        def visit(name: str) -> None:
            if name in done:
                return
            for dep in self.project.services[name].get("depends_on") or {}:
                visit(dep)
            done.append(name)

        for name in self.project.services:
            visit(name)
        return done

    def wait_dependencies(self, name: str) -> None:
        for dep, spec in (self.project.services[name].get("depends_on") or {}).items():
            wanted = {"service_healthy": "healthy",
                      "service_completed_successfully": "completed"}[spec["condition"]]
            assert self.state.get(dep) == wanted, f"{name} needs {dep} {wanted}: {self.state}"

    def up(self, skip: dict[str, str]) -> None:
        for name in self.order():
            if name in EXTERNAL:
                self.state[name] = "healthy"
                continue
            if name in skip:
                self.state[name] = f"skipped: {skip[name]}"
                continue
            self.wait_dependencies(name)
            container = self.containers[name] = self.container(name)
            container.start()
            assert container.proc is not None
            if container.one_shot:
                code = container.proc.wait(120)
                assert code == 0, f"{name} exited {code}:\n{container.log()[-3000:]}"
                self.state[name] = "completed"
                continue
            deadline = time.monotonic() + 90
            while not container.healthy():
                assert container.proc.poll() is None, (
                    f"{name} exited {container.proc.returncode}:\n{container.log()[-3000:]}")
                assert time.monotonic() < deadline, (
                    f"{name} never became healthy:\n{container.log()[-3000:]}")
                time.sleep(0.5)
            self.state[name] = "healthy"

    def down(self) -> None:
        for container in reversed(list(self.containers.values())):
            container.stop()

    def memory_mb(self) -> dict[str, float]:
        """Resident memory of each running service with its child processes (for the docs)."""
        import psutil

        sizes = {}
        for name, container in self.containers.items():
            if container.proc is None or container.proc.poll() is not None:
                continue
            root = psutil.Process(container.proc.pid)
            procs = [root, *root.children(recursive=True)]
            sizes[name] = round(sum(p.memory_info().rss for p in procs) / 2**20, 1)
        return sizes

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{c.log()[-2500:]}" for n, c in self.containers.items())


async def conversation_rows(database_url: str, chat_id: str) -> dict[str, Any]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            messages = (await conn.execute(text(
                "SELECT m.role, m.content FROM messages m JOIN chat_sessions s "
                "ON s.id = m.session_id WHERE s.chat_id = :c ORDER BY m.id"), {"c": chat_id})).all()
            summaries = (await conn.execute(text(
                "SELECT cs.version, cs.content FROM conversation_summaries cs JOIN chat_sessions s "
                "ON s.id = cs.session_id WHERE s.chat_id = :c ORDER BY cs.version"),
                {"c": chat_id})).all()
    finally:
        await engine.dispose()
    return {"messages": [tuple(r) for r in messages], "summaries": [tuple(r) for r in summaries]}


def wait_until(check: Any, timeout: float, what: str, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def test_base_stack_starts_in_order_and_a_message_becomes_an_answer_and_a_summary(
    image_site: Path, stack_database: str, redis_url: str, llm_server: FakeLLMServer,
    fake_llm: FakeLLM, tmp_path: Path,
) -> None:
    pg = make_url(stack_database)
    redis = httpx.URL(redis_url)
    backend_port = free_port()
    with_bot = has_subcommand("bot")
    telegram = None
    if with_bot:
        from llm_bot_core.testing.fake_telegram import FakeTelegram, FakeTelegramServer

        telegram = FakeTelegramServer(FakeTelegram(token=BOT_TOKEN)).start()

    # The shell's variables and .env as a user would write them for `docker compose up`.
    shell = {
        "POSTGRES_USER": pg.username or "postgres",
        "POSTGRES_PASSWORD": pg.password or "trust-auth-ignores-it",
        "POSTGRES_DB": pg.database or "",
        "BOT_TOKEN": BOT_TOKEN,
        "ADMIN_PASSWORD": "admin-password",
        "DIRECTUS_KEY": "k" * 32,
        "DIRECTUS_SECRET": "s" * 32,
    }
    dotenv = {
        **shell,
        "LLM_BASE_URL": llm_server.base_url,  # the fake instead of OpenRouter
        "OPENROUTER_MODEL": "test-model",
        "LLM_MAX_RETRIES": "0",
        "SUMMARY_THRESHOLD": str(THRESHOLD),
        # Its own queue on the shared Redis, so no other test's worker takes these jobs.
        "CELERY_QUEUE": f"compose-{uuid.uuid4().hex[:8]}",
        # The compose PostgreSQL image has pgvector; this machine's server has not, and the
        # local-embedding fallback would put a Qdrant directory in each "container". Semantic
        # memory has its own tests (issue 3).
        "RAG_ENABLED": "false",
        "LOG_FORMAT": "text",
    }
    if telegram is not None:
        dotenv["TELEGRAM_API_URL"] = telegram.base_url
    project = load_project(BASE_COMPOSE, shell)
    hosts = {
        "postgres_llm_bot:5432": f"{pg.host or '127.0.0.1'}:{pg.port or 5432}",
        "redis:6379": f"{redis.host}:{redis.port or 6379}",
        "backend:8080": f"127.0.0.1:{backend_port}",
    }
    stack = Stack(project, dotenv, hosts, image_site, tmp_path)
    skip = dict(NOT_STARTED)
    if not with_bot:
        skip["telegram_bot"] = "the `bot` subcommand comes with issue 4"
    for name in ("backend", "celery_worker", "telegram_bot"):
        assert not set(project.services[name].get("depends_on") or {}) & set(NOT_STARTED)

    try:
        stack.up(skip)
        backend = stack.containers["backend"]
        # The services run the wheel's code, as in the image, not this checkout's src/.
        where = subprocess.run(
            ["python", "-c", "import llm_bot_core; print(llm_bot_core.__file__)"],
            env=backend.env, cwd=backend.workdir, capture_output=True, text=True, check=True)
        assert where.stdout.startswith(str(image_site)), where.stdout
        assert stack.state["migrate"] == "completed"
        assert {stack.state[n] for n in ("backend", "celery_worker")} == {"healthy"}
        health = httpx.get(f"http://127.0.0.1:{backend_port}/health", timeout=5).json()
        assert health["database"]["status"] == "ok" and health["broker"]["status"] == "ok"

        words = ["first message", "second message"]
        if telegram is not None:
            assert stack.state["telegram_bot"] == "healthy"
            chat_id = "1001"
            for i, said in enumerate(words, 1):
                telegram.fake.send_text(said, chat_id=int(chat_id), user_id=int(chat_id))
                wait_until(lambda i=i: len(telegram.fake.sent_texts(int(chat_id))) >= i, 60,
                           f"the bot's answer #{i}", stack)
            sent = telegram.fake.sent_texts(int(chat_id))
            assert [t for t in sent if "Echo:" in t] == [f"Echo: {w}" for w in words]
        else:
            chat_id = "compose-chat"
            for said in words:
                response = httpx.post(f"http://127.0.0.1:{backend_port}/v1/chat/handle",
                                      json={"user_id": "u1", "chat_id": chat_id, "text": said},
                                      timeout=30)
                assert response.status_code == 200, response.text
                assert response.json()["text"] == f"Echo: {said}"

        rows = wait_until(
            lambda: (r := asyncio.run(conversation_rows(stack_database, chat_id)))["summaries"]
            and r, 60, "a summary from the worker", stack)
        assert rows["messages"] == [
            ("user", "first message"), ("assistant", "Echo: first message"),
            ("user", "second message"), ("assistant", "Echo: second message")]
        assert rows["summaries"][0][0] == 1
        assert "Summary of 4 new messages" in rows["summaries"][0][1]
        # The backend queued it (USE_CELERY_FOR_SUMMARY=true); the worker did it.
        assert "memory.summarize_session" in stack.containers["celery_worker"].log()
        assert len(fake_llm.summary_requests) == 1
        print(f"resident memory (MB): {stack.memory_mb()}")
    finally:
        stack.down()
        if telegram is not None:
            try:
                telegram.stop()
            except TimeoutError:  # a poll still open; the server thread is a daemon
                pass
