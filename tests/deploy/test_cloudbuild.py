"""cloudbuild.yaml: ids on every step, _UPPER substitutions, test before push, commit-tagged image, safe deploy."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT, Terraform, expression

IMAGE_TAG = "${_IMAGE_URI}:$COMMIT_SHA"


@pytest.fixture(scope="module")
def build() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def steps(build: dict[str, Any]) -> dict[str, dict[str, Any]]:
    by_id = {step.get("id"): step for step in build["steps"]}
    assert len(by_id) == len(build["steps"]), "step ids must be unique"
    return by_id


def test_every_step_has_an_id(build: dict[str, Any]) -> None:
    for index, step in enumerate(build["steps"]):
        assert step.get("id"), f"step {index} ({step.get('name')}) has no id"


def test_substitutions_are_upper_case_with_underscore(build: dict[str, Any]) -> None:
    assert build["substitutions"]
    for name in build["substitutions"]:
        assert re.fullmatch(r"_[A-Z][A-Z0-9_]*", name), f"substitution {name!r} must be _UPPER"


def test_every_substitution_used_is_declared(build: dict[str, Any]) -> None:
    text = (ROOT / "cloudbuild.yaml").read_text()
    used = set(re.findall(r"\$\{?(_[A-Z0-9_]+)", text))
    assert used <= set(build["substitutions"]), f"undeclared: {sorted(used - set(build['substitutions']))}"


def test_step_images_are_substitutions(build: dict[str, Any]) -> None:
    for step in build["steps"]:
        assert re.fullmatch(r"\$\{_[A-Z0-9_]+\}", step["name"]), f"step {step['id']} image must be a substitution"


def test_pipeline_has_test_build_push_deploy(steps: dict[str, dict[str, Any]]) -> None:
    assert {"test", "build", "push", "deploy"} <= set(steps)


def test_tests_run_the_readme_test_command(steps: dict[str, dict[str, Any]]) -> None:
    assert "scripts/test" in steps["test"]["args"]


def test_nothing_is_pushed_unless_tests_and_build_pass(steps: dict[str, dict[str, Any]]) -> None:
    assert set(steps["push"]["waitFor"]) == {"test", "build"}
    assert steps["deploy"]["waitFor"] == ["push"]


def test_image_is_tagged_pushed_and_deployed_by_commit(steps: dict[str, dict[str, Any]]) -> None:
    assert f"--tag={IMAGE_TAG}" in steps["build"]["args"]
    assert steps["push"]["args"] == ["push", IMAGE_TAG]
    assert f"--image={IMAGE_TAG}" in steps["deploy"]["args"]


def test_image_uri_points_at_artifact_registry(build: dict[str, Any]) -> None:
    uri = build["substitutions"]["_IMAGE_URI"]
    assert uri == "${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPOSITORY}/${_IMAGE}"
    assert build["options"]["dynamicSubstitutions"] is True


def test_deploy_only_updates_the_existing_service(steps: dict[str, dict[str, Any]]) -> None:
    deploy = steps["deploy"]
    assert deploy["entrypoint"] == "gcloud"
    assert deploy["args"][:4] == ["run", "services", "update", "${_SERVICE}"]
    assert "--region=${_REGION}" in deploy["args"]


def test_no_step_weakens_access() -> None:
    text = (ROOT / "cloudbuild.yaml").read_text()
    for flag in ("--allow-unauthenticated", "--no-invoker-iam-check", "--no-iap", "--ingress", "allUsers"):
        assert flag not in text


def test_build_runs_as_a_user_service_account_friendly_config(build: dict[str, Any]) -> None:
    assert build["options"]["logging"] == "CLOUD_LOGGING_ONLY"


def test_defaults_match_terraform(build: dict[str, Any], terraform: Terraform) -> None:
    substitutions = build["substitutions"]
    assert substitutions["_REGION"] == terraform.variables["region"]["default"]
    assert substitutions["_SERVICE"] == terraform.variables["name"]["default"]
    assert substitutions["_REPOSITORY"] == terraform.variables["artifact_registry_repository_id"]["default"]


def test_terraform_prints_the_command_that_runs_this_pipeline(terraform: Terraform) -> None:
    command = expression(terraform.outputs["cloud_build_command"]["value"])
    for part in ("gcloud builds submit", "--config=cloudbuild.yaml", "--service-account=", "COMMIT_SHA=", "_SERVICE="):
        assert part in command
