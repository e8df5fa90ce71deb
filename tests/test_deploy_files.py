"""The deploy files say what the README promises: Redis that keeps its data, scalable workers with a warm
shutdown, Flower behind auth, the sandbox only in dev, every setting in .env.example, and no secrets anywhere."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from refold_dispatch.config import Settings
from tests.support import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
SECRET_NAME = re.compile(r"(API_KEY|SECRET|PASSWORD|BASIC_AUTH|_TOKEN)$")
# A Refold key (tk_/pk_ and more key-ish characters), or a whole value shaped like user:password.
SECRET_VALUE = re.compile(r"\b[tp]k_[A-Za-z0-9_]{4,}|^[A-Za-z][\w.-]*:(?=[^:$\s/@]*[A-Za-z])[^:$\s/@]{6,}$")
ENV_LINE = re.compile(r"^(#\s?)?([A-Z][A-Z0-9_]*)=(.*)$")


def _strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def _seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration))


# --- docker-compose.yml ------------------------------------------------------------------------------------


def test_compose_has_the_four_services() -> None:
    assert set(SERVICES) == {"redis", "worker", "flower", "sandbox"}


def test_redis_keeps_its_data_and_never_evicts() -> None:
    redis = SERVICES["redis"]
    command = " ".join(redis["command"])

    assert redis["image"].startswith("redis:7")
    assert "--appendonly yes" in command
    assert "--appendfsync everysec" in command
    assert "--maxmemory-policy noeviction" in command
    assert any(volume.endswith(":/data") for volume in redis["volumes"])
    assert redis["volumes"][0].split(":")[0] in COMPOSE["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_workers_scale_and_shut_down_warmly() -> None:
    worker = SERVICES["worker"]

    assert worker["build"] == "."
    assert worker["command"] == ["refold-dispatch", "worker"]
    assert worker["environment"]["REFOLD_REDIS_URL"] == "redis://redis:6379/0"
    assert [entry["path"] for entry in worker["env_file"]] == [".env"]
    assert worker["restart"] == "unless-stopped"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    # Longer than the task time limit, so SIGTERM's warm shutdown finishes the job in hand.
    assert _seconds(worker["stop_grace_period"]) > Settings.model_fields["task_time_limit_seconds"].default
    # Replicas need no fixed name and no host port.
    assert "container_name" not in worker
    assert "ports" not in worker


def test_flower_requires_basic_auth_from_the_environment() -> None:
    flower = SERVICES["flower"]

    assert flower["command"][:4] == ["celery", "-A", "refold_dispatch.worker", "flower"]
    assert "--port=5555" in flower["command"]
    assert flower["ports"] == ["5555:5555"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")


def test_the_sandbox_is_for_dev_only() -> None:
    sandbox = SERVICES["sandbox"]

    assert sandbox["profiles"] == ["dev"]
    assert all("profiles" not in service for name, service in SERVICES.items() if name != "sandbox")
    assert sandbox["command"][:3] == ["python", "-m", "refold_dispatch.sandbox"]
    assert all(port.startswith("127.0.0.1:") for port in sandbox["ports"])


def test_compose_holds_no_secrets() -> None:
    for path, value in _strings(COMPOSE):
        assert not SECRET_VALUE.search(value), f"{path} looks like a secret: {value!r}"
    for name, service in SERVICES.items():
        for variable, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(variable):
                assert str(value).startswith("${"), f"{name}.{variable} must come from the environment"


def test_the_compose_specification_accepts_the_file() -> None:
    # No Docker engine (or compose plugin) here: the compose_spec library (bindings of the Rust crate that
    # implements the Compose Specification) checks the file against the spec instead of `docker compose config`.
    import compose_spec

    project = compose_spec.PyCompose.from_yaml((ROOT / "docker-compose.yml").read_text())
    project.validate()
    assert sorted(project.service_names()) == ["flower", "redis", "sandbox", "worker"]


def test_the_specification_check_can_fail() -> None:
    import compose_spec

    with pytest.raises(ValueError, match="restart"):
        compose_spec.PyCompose.from_yaml("services:\n  w:\n    image: x\n    restart: sometimes\n")


# --- Procfile, Dockerfile, .dockerignore -------------------------------------------------------------------


def test_procfile_process_types() -> None:
    processes = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip() and ":" in line
    )

    assert set(processes) == {"worker", "flower"}
    assert processes["worker"] == "refold-dispatch worker --concurrency ${WORKER_CONCURRENCY:-4}"
    assert processes["flower"].startswith("celery -A refold_dispatch.worker flower")
    assert "--port=$PORT" in processes["flower"]
    assert "--basic-auth=$FLOWER_BASIC_AUTH" in processes["flower"]


def test_the_console_script_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    assert project["scripts"]["refold-dispatch"] == "refold_dispatch.cli:main"


def test_dockerfile_builds_a_locked_non_root_image() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line for line in dockerfile.splitlines() if line and not line.startswith("#")]

    assert instructions[0] == "FROM python:3.11-slim"
    assert "astral-sh/uv" in dockerfile
    syncs = [line for line in instructions if "uv sync" in line]
    assert syncs
    assert all(
        all(flag in line for flag in ("--locked", "--no-dev", "--extra flower", "--extra sandbox")) for line in syncs
    )
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("root", "0")
    assert not re.search(r"^(ENV|ARG)\s+\S*(KEY|SECRET|PASSWORD|TOKEN)", dockerfile, re.MULTILINE)
    assert 'CMD ["refold-dispatch", "worker"]' in instructions


def test_dockerignore_keeps_secrets_and_clutter_out() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}

    assert {".env", ".git", ".venv"} <= ignored


# --- .env.example ------------------------------------------------------------------------------------------


def _env_example() -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment line above it), for set and commented-out lines alike."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    found: dict[str, tuple[str, str]] = {}
    for number, line in enumerate(lines):
        match = ENV_LINE.match(line)
        if match:
            found[match.group(2)] = (match.group(3), lines[number - 1] if number else "")
    return found


def test_env_example_lists_every_setting_with_a_comment() -> None:
    listed = _env_example()

    missing = [f"REFOLD_{name.upper()}" for name in Settings.model_fields if f"REFOLD_{name.upper()}" not in listed]
    assert missing == []
    assert "FLOWER_BASIC_AUTH" in listed
    for name, (_, above) in listed.items():
        assert above.startswith("#"), f"{name} needs a comment saying what it is"
        assert not ENV_LINE.match(above), f"{name} needs its own comment, not its neighbour's line"


def test_env_example_shows_the_real_defaults() -> None:
    listed = _env_example()

    for name, field in Settings.model_fields.items():
        value = listed[f"REFOLD_{name.upper()}"][0]
        if name == "api_key":
            assert value == "", "the example must not carry a key"
            continue
        values: dict[str, Any] = {name: value}
        parsed = Settings(_env_file=None, **values)
        assert getattr(parsed, name) == field.default, f"REFOLD_{name.upper()}={value} is not the default"


def test_env_example_holds_no_secrets() -> None:
    for name, (value, _) in _env_example().items():
        assert not SECRET_VALUE.search(value), f"{name} looks like a secret"
        if SECRET_NAME.search(name):
            assert value == "", f"{name} must be empty in the example"
