"""Parsed deployment files (terraform/*.tf, cloudbuild.yaml, Dockerfile) shared by the tests in this folder."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2
import pytest

from tests.deploy.offline_plan import ROOT, TERRAFORM, Plan, Planner, require_tool, stage_tool


def load_hcl(path: Path) -> dict[str, Any]:
    """Parse one HCL file into plain Python values: unquoted strings, no comment or block markers."""
    try:
        from hcl2.utils import SerializationOptions
    except ImportError:  # python-hcl2 before 8 already returns unquoted strings
        with path.open() as handle:
            return dict(hcl2.load(handle))
    options = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
    with path.open() as handle:
        return dict(hcl2.load(handle, serialization_options=options))


@dataclass
class Terraform:
    """Every top-level block of the configuration, keyed the way Terraform addresses them."""

    resources: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    data: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    settings: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: body for (kind, name), body in self.resources.items() if kind == resource_type}

    def resource(self, resource_type: str, name: str) -> dict[str, Any]:
        assert (resource_type, name) in self.resources, f"terraform has no {resource_type}.{name}"
        return self.resources[(resource_type, name)]


def parse_terraform(directory: Path = TERRAFORM) -> Terraform:
    config = Terraform()
    for path in sorted(directory.glob("*.tf")):
        config.files[path.name] = path.read_text()
        document = load_hcl(path)
        for block in document.get("resource", []):
            for kind, instances in block.items():
                for name, body in instances.items():
                    config.resources[(kind, name)] = body
        for block in document.get("data", []):
            for kind, instances in block.items():
                for name, body in instances.items():
                    config.data[(kind, name)] = body
        for block in document.get("variable", []):
            config.variables.update(block)
        for block in document.get("output", []):
            config.outputs.update(block)
        for block in document.get("locals", []):
            config.locals.update(block)
        config.settings.extend(document.get("terraform", []))
    return config


@pytest.fixture(scope="session")
def terraform() -> Terraform:
    return parse_terraform()


def one(blocks: Any) -> dict[str, Any]:
    """The single nested block python-hcl2 wraps in a list."""
    assert isinstance(blocks, list) and len(blocks) == 1, f"expected exactly one block, got {blocks!r}"
    block = blocks[0]
    assert isinstance(block, dict)
    return block


def dynamic_blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The `content` of every `dynamic "<name>"` block in body, with its for_each expression added."""
    found = []
    for entry in body.get("dynamic", []):
        for label, dynamic in entry.items():
            if label == name:
                content = dict(one(dynamic["content"]))
                content["__for_each__"] = dynamic["for_each"]
                found.append(content)
    return found


def expression(value: Any) -> str:
    """An HCL expression as text, without the `${...}` python-hcl2 wraps it in."""
    text = str(value)
    match = re.fullmatch(r"\$\{(.*)\}", text, re.S)
    return match.group(1) if match else text


# --- offline plans (tests/deploy/offline_plan.py) -------------------------------------------------------------------

# Only the variables that have no default, plus access_groups, which must name someone.
REQUIRED_VARIABLES = {
    "project_id": "example-gateway",
    "oauth_desktop_client_id": "123456789012-abcdefghijklmnopqrstuvwxyz012345.apps.googleusercontent.com",
    "access_groups": ["claude-code-users@example.com"],
}
VARIABLE_SETS: dict[str, dict[str, Any] | Path] = {
    "defaults": REQUIRED_VARIABLES,
    "example": TERRAFORM / "examples" / "terraform.tfvars.example",
    "all-features": ROOT / "tests" / "deploy" / "all-features.tfvars",
}


@pytest.fixture(scope="session")
def planner(tmp_path_factory: pytest.TempPathFactory) -> Planner:
    require_tool()
    return Planner(stage_tool(tmp_path_factory.mktemp("terraform-offline")), tmp_path_factory.mktemp("tfvars"))


@pytest.fixture(scope="session", params=sorted(VARIABLE_SETS))
def plan(request: pytest.FixtureRequest, planner: Planner) -> Plan:
    """The plan of each variable set (one plan per set and session); a failed plan fails the tests that use it."""
    result = planner.plan(VARIABLE_SETS[request.param])
    assert result.ok, f"terraform plan of the {request.param} variables failed:\n" + "\n".join(result.errors)
    return result


@pytest.fixture(scope="session")
def all_features_plan(planner: Planner) -> Plan:
    result = planner.plan(VARIABLE_SETS["all-features"])
    assert result.ok, "terraform plan of all-features.tfvars failed:\n" + "\n".join(result.errors)
    return result
