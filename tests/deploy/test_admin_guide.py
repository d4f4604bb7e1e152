"""docs/admin-guide.md names outputs, resources and variables that exist, and covers every task it must."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import ROOT, Terraform

GUIDE = (ROOT / "docs" / "admin-guide.md").read_text()


def test_outputs_named_in_the_guide_exist(terraform: Terraform) -> None:
    named = set(re.findall(r"terraform(?: -chdir=\S+)? output (?:-raw )?([a-z_]+)", GUIDE))
    assert named, "the guide should use terraform outputs"
    assert named <= set(terraform.outputs), f"unknown outputs: {sorted(named - set(terraform.outputs))}"


def test_target_addresses_in_the_guide_exist(terraform: Terraform) -> None:
    for address in re.findall(r"-target=([a-z0-9_]+)\.([a-z0-9_]+)", GUIDE):
        assert address in terraform.resources, f"-target={'.'.join(address)} does not exist"


def test_variables_set_in_the_guide_exist(terraform: Terraform) -> None:
    named = set(re.findall(r"`([a-z_]+) = [^`]+`", GUIDE))
    assert named <= set(terraform.variables), f"unknown variables: {sorted(named - set(terraform.variables))}"


@pytest.mark.parametrize(
    "topic",
    [
        "Prerequisites",
        "organisation",
        "Desktop app",
        "terraform apply",
        "gcloud secrets versions add",
        "Build and deploy",
        "Grant access",
        "claude-shim doctor",
        "Rotate the Anthropic key",
        "Revoke a person",
        "costs per group",
        "Groups Reader",
    ],
)
def test_guide_covers(topic: str) -> None:
    assert topic in GUIDE
