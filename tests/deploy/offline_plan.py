"""A real `terraform plan` of terraform/ with no network, through ../shared/tools/terraform-offline.

The tool serves the google providers' schemas to Terraform from a stand-in plugin, so Terraform itself type-checks
the configuration, evaluates every variable validation and precondition, and plans the values tests then read
(`terraform show -json`). Only the Google APIs' own checks are out of reach.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[2]
TERRAFORM = ROOT / "terraform"
TOOL = ROOT.parent / "shared" / "tools" / "terraform-offline"
VIEWS = ROOT / "gateway" / "admin" / "views"
# Schemas of the resource types terraform/ uses that the tool's schema_google.json (made before they were used)
# lacks, generated the way its README says from cdktn-provider-google 20.3.1. Types the tool has win.
EXTRA_SCHEMA = Path(__file__).with_name("provider_schema_extra.json")

# A plan is a few seconds; the first use of the tool also builds its venv (pip install tf, grpcio, ...).
PLAN_TIMEOUT_S = 600


def require_tool() -> None:
    """Skip on a laptop without the tool or terraform; in CI (CI set) their absence is a failure, never a skip."""
    missing = []
    if not (TOOL / "plan.sh").is_file():
        missing.append(f"{TOOL / 'plan.sh'} (the read-only shared/ checkout beside the repository)")
    if shutil.which("terraform") is None:
        missing.append("a terraform binary on PATH")
    if not missing:
        return
    skip_or_fail("offline terraform plan needs " + " and ".join(missing))


def skip_or_fail(reason: str) -> NoReturn:
    """Skip on a laptop; in CI (the CI variable set) a missing tool fails, so these checks never silently vanish."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run this check", pytrace=False)
    pytest.skip(reason)


def stage_tool(directory: Path) -> Path:
    """A copy of the tool whose google schema also holds EXTRA_SCHEMA's types; returns its plan.sh.

    plan.sh reads its schemas from its own folder, which is read-only here, and has no option to name another.
    """
    for name in ("plan.sh", "fakeprov.py", "schema_google_beta.json"):
        shutil.copyfile(TOOL / name, directory / name)
    (directory / "plan.sh").chmod(0o755)
    schema = json.loads((TOOL / "schema_google.json").read_text())
    for kind, body in json.loads(EXTRA_SCHEMA.read_text())["resource_schemas"].items():
        schema["resource_schemas"].setdefault(kind, body)
    (directory / "schema_google.json").write_text(json.dumps(schema))
    return directory / "plan.sh"


def tfvars(variables: dict[str, Any]) -> str:
    """A .tfvars text; JSON values are valid HCL values (strings, numbers, lists, objects)."""
    return "".join(f"{name} = {json.dumps(value)}\n" for name, value in variables.items())


@dataclass
class Plan:
    """What one `terraform plan` said: success, its error diagnostics, and `terraform show -json` when it planned."""

    ok: bool
    output: str
    seconds: float
    shown: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        """`summary: detail` of every error diagnostic (plan.sh prints Terraform's -json lines that hold one)."""
        found = []
        for line in self.output.splitlines():
            start = line.find("{")
            if start < 0:
                continue
            try:
                message = json.loads(line[start:])
            except ValueError:
                continue
            diagnostic = message.get("diagnostic") if isinstance(message, dict) else None
            if isinstance(diagnostic, dict) and diagnostic.get("severity") == "error":
                found.append(f"{diagnostic.get('summary')}: {diagnostic.get('detail', '')}")
        return list(dict.fromkeys(found))  # the last line repeats the first error

    @property
    def to_add(self) -> int:
        match = re.search(r"Plan: (\d+) to add", self.output)
        assert match, f"no resource count in:\n{self.output[-2000:]}"
        return int(match.group(1))

    @property
    def variables(self) -> dict[str, Any]:
        return {name: entry.get("value") for name, entry in self.shown["variables"].items()}

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        """Planned values of every resource instance, by address (the root module has no child modules)."""
        return {item["address"]: item["values"] for item in self.shown["planned_values"]["root_module"]["resources"]}

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return {address: values for address, values in self.resources.items() if address.split(".")[0] == kind}

    def value(self, address: str, attribute: str) -> Any:
        """A planned attribute; one known only after apply is named by what it refers to, e.g.
        `ref:google_service_account.gateway.member`."""
        change = next(item["change"] for item in self.shown["resource_changes"] if item["address"] == address)
        if change["after_unknown"].get(attribute) is True:
            config_address = re.sub(r"\[[^\]]*\]$", "", address)
            resource = next(
                item for item in self.shown["configuration"]["root_module"]["resources"]
                if item["address"] == config_address
            )  # fmt: skip
            references = resource["expressions"].get(attribute, {}).get("references", [])
            return f"ref:{references[0]}" if references else "unknown"
        return change["after"].get(attribute)


class Planner:
    """Runs plans through the staged tool, once per distinct set of variables in a test session."""

    def __init__(self, plan_sh: Path, workdir: Path) -> None:
        self.plan_sh = plan_sh
        self.workdir = workdir
        self.cache: dict[str, Plan] = {}

    def plan(self, variables: dict[str, Any] | Path) -> Plan:
        text = variables.read_text() if isinstance(variables, Path) else tfvars(variables)
        if text not in self.cache:
            self.cache[text] = self._run(text, len(self.cache))
        return self.cache[text]

    def _run(self, text: str, number: int) -> Plan:
        var_file = self.workdir / f"set-{number}.tfvars"
        var_file.write_text(text)
        shown = self.workdir / f"set-{number}.json"
        env = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}
        env.update(
            PLAN_JSON=str(shown),
            # plan.sh prints a few lines around each error; as -json lines they carry the validation's message.
            TF_CLI_ARGS_plan="-json",
            TF_IN_AUTOMATION="1",
            # plan.sh plans a copy of terraform/ alone; the views come from the checkout's gateway/admin/views.
            TF_VAR_security_views_dir=str(VIEWS),
        )
        started = time.monotonic()
        result = subprocess.run(
            [str(self.plan_sh), str(TERRAFORM), str(var_file)],
            capture_output=True,
            text=True,
            env=env,
            timeout=PLAN_TIMEOUT_S,
        )
        seconds = time.monotonic() - started
        output = result.stdout + result.stderr
        if result.returncode == 2:  # the tool itself could not run (its venv could not be installed)
            pytest.fail(f"terraform-offline could not run:\n{output[-4000:]}", pytrace=False)
        plan = Plan(ok=result.returncode == 0, output=output, seconds=seconds)
        if plan.ok:
            plan.shown = json.loads(shown.read_text())
        return plan
