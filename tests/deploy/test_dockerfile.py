"""The Dockerfile: pinned base, non-root user, no secrets, `claude-gateway serve` as the entrypoint."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT

SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.I)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return _instructions()


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(index for index, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[last_from:]


def _base_image(instructions: list[tuple[str, str]]) -> str:
    args = [rest for keyword, rest in instructions if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert len(args) == 1, "the base image is one ARG, shared by every stage"
    return args[0].split("=", 1)[1]


def test_base_image_is_pinned_to_an_exact_python_release(instructions: list[tuple[str, str]]) -> None:
    image = _base_image(instructions)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", image), image
    for keyword, rest in instructions:
        if keyword == "FROM":
            assert rest.split()[0] == "${PYTHON_IMAGE}", f"FROM {rest} does not use the pinned base"


def test_base_python_satisfies_requires_python(instructions: list[tuple[str, str]]) -> None:
    version = re.match(r"python:(\d+)\.(\d+)", _base_image(instructions))
    assert version
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    minimum = re.match(r">=\s*(\d+)\.(\d+)", requires)
    assert minimum
    assert (int(version[1]), int(version[2])) >= (int(minimum[1]), int(minimum[2]))


def test_cloud_build_tests_on_the_python_the_image_ships(instructions: list[tuple[str, str]]) -> None:
    build: dict[str, Any] = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert build["substitutions"]["_PYTHON_IMAGE"] == _base_image(instructions)


def test_runs_as_a_non_root_user(instructions: list[tuple[str, str]]) -> None:
    users = [rest for keyword, rest in _final_stage(instructions) if keyword == "USER"]
    assert users, "the final stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


def test_entrypoint_is_claude_gateway_serve_in_exec_form(instructions: list[tuple[str, str]]) -> None:
    entrypoints = [rest for keyword, rest in _final_stage(instructions) if keyword == "ENTRYPOINT"]
    assert entrypoints, "the final stage must set ENTRYPOINT"
    # Exec form: the gateway is PID 1 and gets SIGTERM itself (a shell would swallow it).
    assert json.loads(entrypoints[-1]) == ["claude-gateway", "serve"]
    assert not any(keyword == "CMD" for keyword, _ in _final_stage(instructions))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert "claude-gateway" in scripts


def test_no_secrets_are_baked_in(instructions: list[tuple[str, str]]) -> None:
    for keyword, rest in instructions:
        if keyword in {"ENV", "ARG"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", rest) or [rest.split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), f"{keyword} {name} looks like a secret"
        if keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|\.pem\b|\.tfvars|credentials|\.json\b", rest), f"{keyword} {rest}"


def test_docker_context_is_an_allow_list_of_what_the_wheel_needs(instructions: list[tuple[str, str]]) -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", ".dockerignore must start by excluding everything"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for keyword, rest in instructions
        if keyword == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert copied <= allowed, f"COPY of paths excluded by .dockerignore: {sorted(copied - allowed)}"
    for path in allowed:
        assert (ROOT / path).exists(), f".dockerignore allows {path}, which does not exist"
