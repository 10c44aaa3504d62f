"""The compose stacks, checked without a Docker engine: schema, services, variables, health.

Both files are validated against the Compose Specification's JSON schema (the copy vendored in
check-jsonschema) as written and after include/merge/interpolation, then cross-checked.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from importlib.resources import files
from typing import Any

import jsonschema
import pytest

from llm_bot_core.cli import build_parser
from tests.deploy_support import (
    BASE_COMPOSE,
    RAG_COMPOSE,
    ROOT,
    SPEC_BASE_SERVICES,
    SPEC_RAG_SERVICES,
    MissingVariable,
    Project,
    exec_form,
    load_project,
    parse_dockerfile,
    variables_in,
)
from tests.test_deploy_env import env_example_variables, settings_variables

OUR_IMAGE = "llm-bot-core:local"
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "BOT_TOKEN", "ADMIN_PASSWORD", "DIRECTUS_KEY",
                    "DIRECTUS_SECRET")
SECRETS = {name: f"test-{name.lower()}" for name in REQUIRED_SECRETS}
STACKS = {"base": BASE_COMPOSE, "rag": RAG_COMPOSE}

# What the third-party images carry, for their healthchecks. Sources: the images' Dockerfiles
# (PostgreSQL and Redis official images; directus/directus is node:22-alpine; qdrant/qdrant is
# debian-slim with bash and coreutils but no curl or wget; michaelf34/infinity *-cpu is
# ubuntu:22.04 with curl installed and its virtualenv on PATH).
IMAGE_TOOLS = {
    "pgvector/pgvector": {"sh", "pg_isready", "psql"},
    "redis": {"sh", "redis-cli"},
    "directus/directus": {"sh", "node", "wget"},
    "qdrant/qdrant": {"sh", "bash", "head", "grep"},
    "michaelf34/infinity": {"sh", "bash", "curl", "python"},
}
SHELL_BUILTINS = {"exec", "printf", "echo", "[", "test", "true", "false", "exit"}

# Started, not waited for: the first start of bge_embeddings downloads the model (minutes), and
# the backend and worker degrade without it (replies without recalled memory, indexing queued).
SOFT_DEPENDENCIES = {("backend", "bge_embeddings"), ("celery_worker", "bge_embeddings")}
# One-shot services: run to completion, no healthcheck, no restart.
ONE_SHOTS = {"migrate", "directus_provision"}
# Subcommands being built in other issues; until they exist their services are skipped.
PENDING_SUBCOMMANDS = {"bot": "issue 4 (Telegram bot)", "admin": "issue 5 (Directus)"}


def project(stack: str, **env: str) -> Project:
    return load_project(STACKS[stack], {**SECRETS, **env})


def our_services(p: Project) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in p.services.items() if "build" in s}


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert isinstance(action.choices, dict)
    return set(action.choices)


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    schema_file = files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    return json.loads(schema_file.read_text())


# --- 1. the Compose Specification -------------------------------------------------------------


def test_compose_files_as_written_match_the_compose_specification() -> None:
    sources = [BASE_COMPOSE, RAG_COMPOSE, *load_project(RAG_COMPOSE, SECRETS).files[1:]]
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         *map(str, dict.fromkeys(sources))],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("stack", STACKS)
def test_resolved_stacks_match_the_compose_specification(
    stack: str, compose_schema: dict[str, Any]
) -> None:
    p = project(stack)
    model = {"name": p.name, "services": p.services, "volumes": p.volumes}
    jsonschema.validate(model, compose_schema)


# --- 2. services, order, health ----------------------------------------------------------------


def test_every_service_of_the_spec_exists_under_its_name() -> None:
    assert SPEC_BASE_SERVICES <= set(project("base").services)
    assert SPEC_RAG_SERVICES <= set(project("rag").services)


def test_both_stacks_are_one_project_sharing_the_data_volumes() -> None:
    base, rag = project("base"), project("rag")
    assert base.name == rag.name, "a different project name would mean different volumes"
    assert set(base.volumes) <= set(rag.volumes)
    for name in base.services:
        if name not in ("backend", "celery_worker"):
            assert rag.services[name] == base.services[name], name


def test_rag_stack_points_backend_and_worker_at_qdrant_and_bge_m3() -> None:
    rag = project("rag")
    for name in ("backend", "celery_worker"):
        env = rag.service(name)["environment"]
        assert env["RAG_ENABLED"] == "true"
        assert env["QDRANT_URL"] == "http://qdrant:6333"
        assert env["EMBEDDINGS_BASE_URL"] == "http://bge_embeddings:7998"
        assert env["OPENAI_EMBEDDING_MODEL"] == "BAAI/bge-m3"
        deps = rag.service(name)["depends_on"]
        assert deps["qdrant"]["condition"] == "service_healthy"
        assert deps["bge_embeddings"]["condition"] == "service_started"  # see SOFT_DEPENDENCIES
    infinity = rag.service("bge_embeddings")
    command = infinity["command"]
    assert command[command.index("--model-id") + 1] == "BAAI/bge-m3"
    assert command[command.index("--port") + 1] == "7998"
    assert any(v.endswith(":/qdrant/storage") for v in rag.service("qdrant")["volumes"])


@pytest.mark.parametrize("stack", STACKS)
def test_long_running_services_have_healthchecks_and_restart_policies(stack: str) -> None:
    for name, service in project(stack).services.items():
        if name in ONE_SHOTS:
            assert service["restart"] == "no", name
            continue
        assert service.get("restart") in ("unless-stopped", "always"), name
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"


@pytest.mark.parametrize("stack", STACKS)
def test_dependencies_wait_for_health_or_completion(stack: str) -> None:
    services = project(stack).services
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            condition = spec["condition"]
            if dep in ONE_SHOTS:
                assert condition == "service_completed_successfully", (name, dep)
            elif (name, dep) in SOFT_DEPENDENCIES:
                assert condition == "service_started", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
                assert "healthcheck" in services[dep], (name, dep)


def test_migrations_run_once_before_backend_worker_and_directus() -> None:
    services = project("base").services
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("backend", "celery_worker", "directus"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully")
    # The backend does not migrate again on its own (MIGRATE_ON_START), the worker never does.
    assert services["backend"]["environment"]["MIGRATE_ON_START"] == "false"


def test_worker_summarizes_and_the_bot_polls_the_backend_service() -> None:
    services = project("base").services
    assert services["celery_worker"]["environment"]["USE_CELERY_FOR_SUMMARY"] == "true"
    assert services["backend"]["environment"]["USE_CELERY_FOR_SUMMARY"] == "true"
    assert services["telegram_bot"]["environment"]["BACKEND_URL"] == "http://backend:8080"
    assert "WEBHOOK_URL" not in services["telegram_bot"]["environment"]  # long polling


def test_postgres_image_has_pgvector_and_a_named_volume() -> None:
    pg = project("base").service("postgres_llm_bot")
    assert pg["image"].startswith("pgvector/pgvector:")
    volume = pg["volumes"][0].split(":")
    assert volume[0] in project("base").volumes and volume[1] == "/var/lib/postgresql/data"


def test_directus_shares_the_backends_database_and_is_provisioned_automatically() -> None:
    services = project("base").services
    directus = services["directus"]["environment"]
    db_url = services["backend"]["environment"]["DATABASE_URL"]
    assert f"@{directus['DB_HOST']}:{directus['DB_PORT']}/{directus['DB_DATABASE']}" in db_url
    assert f"//{directus['DB_USER']}:{directus['DB_PASSWORD']}@" in db_url
    assert directus["TELEMETRY"] == "false"
    provision = services["directus_provision"]
    assert provision["command"] == ["admin", "--provision-only", "http://directus:8055"]
    assert provision["depends_on"]["directus"]["condition"] == "service_healthy"


# --- 3. secrets and variables ------------------------------------------------------------------


@pytest.mark.parametrize("secret", REQUIRED_SECRETS)
def test_stack_refuses_to_start_without_each_secret(secret: str) -> None:
    for stack in STACKS:
        env = {k: v for k, v in SECRETS.items() if k != secret}
        with pytest.raises(MissingVariable, match=rf"\b{secret}\b.*set {secret} in \.env"):
            load_project(STACKS[stack], env)
        with pytest.raises(MissingVariable):  # empty counts as missing (`:?`)
            load_project(STACKS[stack], {**env, secret: ""})


def test_no_secret_has_a_default_value() -> None:
    secret_name = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|^KEY$")
    for path in load_project(RAG_COMPOSE, SECRETS).files:
        for match in re.finditer(r"\$\{([A-Z0-9_]+)(:?[-?+])?", path.read_text()):
            name, op = match.groups()
            if secret_name.search(name):
                assert op in (":?", "?"), f"{path.name}: ${{{name}}} must be required"


def test_every_interpolated_variable_is_documented_in_env_example() -> None:
    documented = set(env_example_variables())
    for path in load_project(RAG_COMPOSE, SECRETS).files:
        missing = variables_in(path.read_text()) - documented
        assert not missing, f"{path.name} uses undocumented variables: {sorted(missing)}"


def test_python_services_set_only_variables_our_settings_read() -> None:
    """A misspelt name in `environment:` would be silently ignored by the container."""
    known = set(settings_variables())
    for name, service in our_services(project("rag")).items():
        command = service["command"][0]
        if command not in subcommands() and command in PENDING_SUBCOMMANDS:
            continue  # its settings class arrives with the subcommand
        unknown = set(service.get("environment") or {}) - known
        assert not unknown, f"{name} sets {unknown}, which no settings class reads"


# --- 4. commands: real entry points, healthchecks that exist -----------------------------------


def _entrypoint() -> list[str]:
    _, stages = parse_dockerfile()
    return exec_form(stages[-1].values("ENTRYPOINT")[-1])


def _our_service_names() -> list[str]:
    return sorted(our_services(project("rag")))


@pytest.mark.parametrize("name", _our_service_names())
def test_each_python_service_runs_a_real_subcommand_of_the_package(name: str) -> None:
    service = project("rag").service(name)
    assert service["image"] == OUR_IMAGE and service["build"]["context"] == "."
    entrypoint = service.get("entrypoint") or _entrypoint()
    scripts = {ep.name for ep in metadata.entry_points(group="console_scripts")
               if ep.value.startswith("llm_bot_core.")}
    assert entrypoint[0] in scripts
    command = service["command"]
    if command[0] not in subcommands() and command[0] in PENDING_SUBCOMMANDS:
        pytest.skip(f"`{command[0]}` comes with {PENDING_SUBCOMMANDS[command[0]]}")
    try:
        build_parser().parse_args(command)
    except SystemExit as exc:
        pytest.fail(f"`llm-bot-core {' '.join(command)}` is not a valid command ({exc})")


def test_the_services_run_the_expected_subcommands() -> None:
    commands = {name: s["command"][0] for name, s in our_services(project("base")).items()}
    assert commands == {"migrate": "migrate", "backend": "serve", "celery_worker": "worker",
                        "telegram_bot": "bot", "directus_provision": "admin"}


def _programs(test: list[str]) -> list[str]:
    """Programs a healthcheck runs: the executable, or each command of a shell line."""
    if test[0] == "CMD":
        argv = test[1:]
        if argv[0] in ("bash", "sh") and argv[1] == "-c":
            return [argv[0], *_shell_programs(argv[2])]
        return [argv[0]]
    return ["sh", *_shell_programs(test[1])]


def _shell_programs(line: str) -> list[str]:
    """The first word of each command in a shell line, command substitutions included."""
    programs = []
    for inner in re.findall(r"\$\(([^()]*)\)", line):
        programs += _shell_programs(inner)
    lexer = shlex.shlex(re.sub(r"\$\([^()]*\)", "X", line), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    at_start = True
    for token in lexer:
        if token in (";", "&&", "||", "|", "&"):
            at_start = True
        elif at_start:
            at_start = False
            if token not in SHELL_BUILTINS:
                programs.append(token)
    return programs


@pytest.mark.parametrize("stack", STACKS)
def test_healthcheck_commands_exist_in_their_images(stack: str) -> None:
    scripts = {ep.name for ep in metadata.entry_points(group="console_scripts")}
    for name, service in project(stack).services.items():
        test = (service.get("healthcheck") or {}).get("test")
        if not test:
            continue
        if service["image"] == OUR_IMAGE:
            # The image is python-slim plus our virtualenv: python, sh and console scripts.
            available = {"python", "sh", *scripts}
        else:
            repo = service["image"].split(":")[0]
            available = IMAGE_TOOLS[repo]
        missing = set(_programs(test)) - available
        assert not missing, f"{name}: {missing} not in {service['image']}"


def test_python_healthchecks_are_valid_python() -> None:
    for name, service in project("rag").services.items():
        test = (service.get("healthcheck") or {}).get("test", [])
        if test[:3] == ["CMD", "python", "-c"]:
            compile(test[3], f"<{name} healthcheck>", "exec")


# --- 5. ports ----------------------------------------------------------------------------------


def published_ports(p: Project) -> dict[str, tuple[int, int]]:
    ports = {}
    for name, service in p.services.items():
        for spec in service.get("ports") or []:
            host, container = str(spec).rsplit(":", 1)
            ports[name] = (int(host.rsplit(":", 1)[-1]), int(container))
    return ports


def test_published_ports_are_the_specs() -> None:
    assert published_ports(project("base")) == {"backend": (8080, 8080),
                                                  "directus": (8055, 8055)}
    assert published_ports(project("rag")) == {
        "backend": (8080, 8080), "directus": (8055, 8055), "qdrant": (6333, 6333),
        "bge_embeddings": (7998, 7998)}
    backend = project("base").service("backend")
    assert backend["environment"]["PORT"] == str(published_ports(project("base"))["backend"][1])


def test_published_ports_follow_their_variables() -> None:
    p = project("rag", BACKEND_PORT="18080", DIRECTUS_PORT="18055", QDRANT_PORT="16333",
                EMBEDDINGS_PORT="17998")
    assert {k: v[0] for k, v in published_ports(p).items()} == {
        "backend": 18080, "directus": 18055, "qdrant": 16333, "bge_embeddings": 17998}


@pytest.mark.parametrize("doc", ["README.md", "docs/deployment.md"])
def test_ports_in_the_docs_match_the_compose_files(doc: str) -> None:
    path = ROOT / doc
    if not path.exists():
        pytest.skip(f"{doc} is not written yet")
    content = path.read_text()
    mentioned = {int(p) for p in re.findall(r"(?:localhost|127\.0\.0\.1):(\d{4,5})", content)}
    ports = {name: host for name, (host, _) in published_ports(project("rag")).items()}
    assert set(ports.values()) <= mentioned, (
        f"{doc} does not mention ports {set(ports.values()) - mentioned}")
    # A line that names one of our services next to a local address gives that service's port.
    labels = {"backend": r"\bbackend\b", "directus": r"\bdirectus\b", "qdrant": r"\bqdrant\b",
              "bge_embeddings": r"\bembeddings\b"}
    for line in content.splitlines():
        named = [n for n, label in labels.items() if re.search(label, line, re.I)]
        found = re.findall(r"(?:localhost|127\.0\.0\.1):(\d{4,5})", line)
        if len(named) == 1 and found:
            assert {int(p) for p in found} == {ports[named[0]]}, line
