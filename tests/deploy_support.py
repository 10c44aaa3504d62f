"""Reading the deployment files the way Docker Compose and Docker do, without a Docker engine.

Compose's loader is not available here (the machine has the docker CLI without its compose
plugin), so this implements the parts of the Compose Specification our files use, following the
spec's text: interpolation (`${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`,
`${VAR?message}`, `${VAR:+alt}`, `$$`), `include` (a path or a list of paths merged like
`-f a -f b`), the merge rules for those lists, and the short/long forms of `environment`,
`depends_on` and `env_file`. Anything else in a file is kept as written.
"""

from __future__ import annotations

import copy
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE_COMPOSE = ROOT / "docker-compose.yml"
RAG_COMPOSE = ROOT / "docker-compose.rag.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

# The spec's services (SPEC.ru.md, "Основные компоненты").
SPEC_BASE_SERVICES = {
    "postgres_llm_bot", "backend", "directus", "redis", "celery_worker", "telegram_bot",
}
SPEC_RAG_SERVICES = SPEC_BASE_SERVICES | {"qdrant", "bge_embeddings"}


class MissingVariable(ValueError):
    """`${VAR:?message}` with VAR unset (or empty): compose refuses to start with the message."""


_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?|"
    r"(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


def _closing_brace(text: str, start: int) -> int:
    """Index of the `}` closing the expression whose body starts at `start` (nesting allowed)."""
    depth = 1
    i = start
    while i < len(text):
        if text.startswith("${", i):
            depth += 1
            i += 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unterminated ${{ in {text!r}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation of one string."""
    out: list[str] = []
    pos = 0
    while True:
        match = _VAR.search(text, pos)
        if match is None:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos : match.start()])
        if match.group("escaped"):
            out.append("$")
            pos = match.end()
            continue
        if match.group("named"):
            out.append(env.get(match.group("named"), ""))
            pos = match.end()
            continue
        name, op = match.group("braced"), match.group("op")
        end = _closing_brace(text, match.end())
        arg = text[match.end() : end]
        if op is None and arg:
            raise ValueError(f"bad substitution in {text!r}")
        value = env.get(name)
        unset_or_empty = value is None or value == ""
        if op is None:
            out.append(value or "")
        elif op in (":-", "-"):
            use_default = unset_or_empty if op == ":-" else value is None
            out.append(interpolate(arg, env) if use_default else str(value))
        elif op in (":?", "?"):
            if unset_or_empty if op == ":?" else value is None:
                raise MissingVariable(f"required variable {name} is missing a value: "
                                      f"{interpolate(arg, env)}")
            out.append(str(value))
        elif op in (":+", "+"):
            use_alt = not unset_or_empty if op == ":+" else value is not None
            out.append(interpolate(arg, env) if use_alt else "")
        pos = end + 1


def variables_in(text: str) -> set[str]:
    """Every variable a compose file interpolates (defaults' own variables included)."""
    names = set()
    for match in _VAR.finditer(text):
        name = match.group("braced") or match.group("named")
        if name:
            names.add(name)
    return names


def _interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, list):
        return [_interpolate_tree(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, env) for key, value in node.items()}
    return node


def _normalize_service(service: dict[str, Any]) -> dict[str, Any]:
    """Long forms, so merging and reading need one shape."""
    env = service.get("environment")
    if isinstance(env, list):
        mapping: dict[str, Any] = {}
        for item in env:
            key, sep, value = str(item).partition("=")
            mapping[key] = value if sep else None
        service["environment"] = mapping
    elif isinstance(env, dict):
        service["environment"] = {k: (None if v is None else str(v)) for k, v in env.items()}
    deps = service.get("depends_on")
    if isinstance(deps, list):
        service["depends_on"] = {name: {"condition": "service_started"} for name in deps}
    env_file = service.get("env_file")
    if env_file is not None:
        items = env_file if isinstance(env_file, list) else [env_file]
        service["env_file"] = [
            item if isinstance(item, dict) else {"path": item, "required": True} for item in items
        ]
    return service


_REPLACED = {"command", "entrypoint", "test", "image"}


def _merge(base: Any, override: Any, key: str = "") -> Any:
    """The spec's merge of two compose files: mappings merge, most sequences append."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(override, list) and key not in _REPLACED:
        return base + [item for item in override if item not in base]
    return copy.deepcopy(override)


def _read(path: Path, env: dict[str, str]) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text()) or {}
    model = _interpolate_tree(raw, env)
    for service in (model.get("services") or {}).values():
        _normalize_service(service)
    return model


@dataclass
class Project:
    """A resolved compose application model."""

    name: str
    services: dict[str, dict[str, Any]]
    volumes: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    def service(self, name: str) -> dict[str, Any]:
        return self.services[name]


def load_project(path: Path, env: dict[str, str]) -> Project:
    """Load a compose file with its includes, interpolated with `env` (shell env + .env)."""
    model = _read(path, env)
    files = [path]
    services: dict[str, dict[str, Any]] = {}
    volumes: dict[str, Any] = {}
    for entry in model.get("include") or []:
        paths = entry if isinstance(entry, str) else entry["path"]
        paths = [paths] if isinstance(paths, str) else paths
        merged: dict[str, Any] = {}
        for rel in paths:
            part = path.parent / rel
            files.append(part)
            merged = _merge(merged, _read(part, env))
        for name, service in (merged.get("services") or {}).items():
            if name in services and services[name] != service:
                raise ValueError(f"included files define conflicting service {name}")
            services[name] = service
        volumes.update(merged.get("volumes") or {})
    for name, service in (model.get("services") or {}).items():
        if name in services:
            # Compose refuses a service that both the file and one it includes define.
            raise ValueError(f"service {name} conflicts with an imported resource")
        services[name] = service
    volumes.update(model.get("volumes") or {})
    return Project(name=model.get("name", path.parent.name), services=services,
                   volumes=volumes, files=files)


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines as compose's env_file reads them (comments and blanks skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip("'\"")
    return values


def container_environment(
    service: dict[str, Any], project_dir: Path, dotenv: dict[str, str],
    image_env: dict[str, str],
) -> dict[str, str]:
    """What a container sees: image ENV, then env_file, then `environment` (compose's order).

    `dotenv` stands for the project's `.env`: the tests never write one into the repository.
    """
    env = dict(image_env)
    for item in service.get("env_file") or []:
        file_path = project_dir / item["path"]
        if item["path"] == ".env":
            env.update(dotenv)
        elif file_path.exists():
            env.update(read_env_file(file_path))
        elif item.get("required", True):
            raise FileNotFoundError(file_path)
    for key, value in (service.get("environment") or {}).items():
        if value is None:
            if key in dotenv:
                env[key] = dotenv[key]
        else:
            env[key] = value
    return env


# --- Dockerfile -------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == instruction]


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with continuation lines joined and ARGs resolved."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in lines:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            parts = rest.split()
            base = interpolate(parts[0], args)
            alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=alias))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


def image_env(stage: Stage) -> dict[str, str]:
    """The ENV of a stage (`ENV A=1 B=2` form)."""
    env: dict[str, str] = {}
    for value in stage.values("ENV"):
        for token in shlex.split(value):
            key, _, val = token.partition("=")
            env[key] = interpolate(val, env)
    return env


def exec_form(value: str) -> list[str]:
    """ENTRYPOINT/CMD in exec (JSON) form."""
    parsed = yaml.safe_load(value)
    assert isinstance(parsed, list), f"not in exec form: {value}"
    return [str(item) for item in parsed]


def _glob_regex(pattern: str) -> str:
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last matching rule wins;
    a rule matching a parent directory matches everything under it)."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _glob_regex((pattern[1:] if negate else pattern).strip("/"))
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded
