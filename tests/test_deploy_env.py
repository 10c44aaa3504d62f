"""`.env.example`, the settings classes and README's configuration table name the same variables.

The settings are read from the code (every pydantic-settings class in the package's `config`
modules), so a new setting fails this test until it is documented in all three places.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

import llm_bot_core
from llm_bot_core.config import Settings, setting_fields
from tests.deploy_support import ENV_EXAMPLE, RAG_COMPOSE, ROOT, load_project, variables_in

README = ROOT / "README.md"
TABLE_START, TABLE_END = "<!-- config-table:start -->", "<!-- config-table:end -->"
_ASSIGNMENT = re.compile(r"^(?:#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def settings_classes() -> list[type[BaseSettings]]:
    """Every BaseSettings subclass defined in a `config`/`settings` module of the package."""
    found: list[type[BaseSettings]] = []
    for info in pkgutil.walk_packages(llm_bot_core.__path__, "llm_bot_core."):
        if info.name.rsplit(".", 1)[-1] not in ("config", "settings"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, BaseSettings)
                    and value is not BaseSettings and value.__module__ == module.__name__):
                found.append(value)
    return found


def env_name(cls: type[BaseSettings], field: str) -> str:
    alias = cls.model_fields[field].validation_alias
    if isinstance(alias, str):
        return alias.upper()
    return (str(cls.model_config.get("env_prefix") or "") + field).upper()


def settings_variables() -> dict[str, object]:
    """Variable name -> default, over all settings classes (the backend's, group by group)."""
    variables: dict[str, object] = {}
    for cls in settings_classes():
        if cls is Settings:  # its fields are the groups; their fields are the variables
            for name, _, _, info in setting_fields():
                variables[name] = info.get_default(call_default_factory=True)
            continue
        for field, info in cls.model_fields.items():
            variables[env_name(cls, field)] = info.get_default(call_default_factory=True)
    return variables


def compose_variables() -> set[str]:
    files = load_project(RAG_COMPOSE, {k: "x" for k in (
        "POSTGRES_PASSWORD", "BOT_TOKEN", "ADMIN_PASSWORD", "DIRECTUS_KEY", "DIRECTUS_SECRET"
    )}).files
    return set().union(*(variables_in(f.read_text()) for f in files))


def env_example_entries(path: Path = ENV_EXAMPLE) -> list[tuple[str, str, str]]:
    """(name, value, explanation) for every `VAR=value` or `# VAR=value` line."""
    entries = []
    previous = ""
    for line in path.read_text().splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if match:
            explanation = previous[1:].strip() if previous.startswith("#") else ""
            entries.append((match.group(1), match.group(2), explanation))
        previous = line.strip()
    return entries


def env_example_variables() -> list[str]:
    return [name for name, _, _ in env_example_entries()]


def rendered(default: object) -> str:
    if default is None or default is PydanticUndefined:  # unset, or required
        return ""
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, set | frozenset | list | tuple):  # comma-separated in the environment
        return ",".join(sorted(str(item) for item in default))
    return str(default)


def test_settings_classes_are_found() -> None:
    assert "Settings" in {cls.__name__ for cls in settings_classes()}


def test_env_example_lists_every_setting_and_every_compose_variable_once() -> None:
    names = env_example_variables()
    duplicates = {n for n in names if names.count(n) > 1}
    assert not duplicates, f"listed twice: {duplicates}"
    expected = set(settings_variables()) | compose_variables()
    assert not expected - set(names), f"missing from .env.example: {sorted(expected - set(names))}"
    assert not set(names) - expected, (
        f".env.example lists variables nothing reads: {sorted(set(names) - expected)}")


def test_every_variable_has_a_one_line_explanation() -> None:
    for name, _, explanation in env_example_entries():
        assert len(explanation) > 10, f"{name} has no explanation line above it"


def test_defaults_in_env_example_are_the_settings_defaults() -> None:
    settings = settings_variables()
    for name, value, _ in env_example_entries():
        if name in settings and name != "SYSTEM_PROMPT":  # a paragraph; shown empty
            if name in compose_variables() and settings[name] is None:
                continue  # a secret compose requires: no default anywhere
            assert value == rendered(settings[name]), f"{name}: {value!r} != {settings[name]!r}"


def readme_table_variables() -> list[str]:
    text = README.read_text()
    if TABLE_START not in text or TABLE_END not in text:
        pytest.fail(f"README.md has no configuration table between {TABLE_START} and "
                    f"{TABLE_END}")
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    return re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", table, flags=re.M)


def test_readme_configuration_table_lists_the_same_variables() -> None:
    if not README.exists():
        pytest.skip("README.md is not written yet")
    in_readme = readme_table_variables()
    in_example = env_example_variables()
    assert sorted(set(in_readme)) == sorted(set(in_example)), (
        f"only in README: {sorted(set(in_readme) - set(in_example))}; "
        f"only in .env.example: {sorted(set(in_example) - set(in_readme))}")


def test_readme_configuration_table_groups_variables_as_the_settings_do() -> None:
    """Each sub-table headed `settings.<group>` lists exactly that group's variables."""
    table = README.read_text().split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    listed: dict[str, set[str]] = {}
    group = None
    for line in table.splitlines():
        if heading := re.match(r"^\*\*.*?`settings\.([a-z]+)`", line):
            group = heading.group(1)
        elif line.startswith("**"):
            group = None  # a part that is not a Settings group (the bot's, compose's)
        elif (row := re.match(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", line)) and group:
            listed.setdefault(group, set()).add(row.group(1))
    expected: dict[str, set[str]] = {}
    for name, group_name, _, _ in setting_fields():
        expected.setdefault(group_name, set()).add(name)
    assert listed == expected
